//! NCCL for GPU workers, through cudarc's low-level `result`/`sys` layer.
//!
//! libcuda and libnccl are loaded at run time (cudarc's dynamic loading), so this builds and its
//! error paths run on machines without CUDA. Before any CUDA or NCCL call we check that both
//! libraries load ([`libraries_present`]) and return [`CommError::LibraryMissing`] otherwise:
//! cudarc would panic on the first call instead.
//!
//! The communicator is non-blocking (`blocking = 0` in its config), and every call is followed by
//! polling `ncclCommGetAsyncError` (and the stream) against a deadline; on an error or at the
//! deadline the communicator is aborted (`ncclCommAbort`) and the call returns an error, so a
//! dead peer never hangs a worker.
//!
//! Rendezvous: rank 0 draws the unique id, the 128 bytes travel hex-encoded through the control
//! server's key-value store, which is scoped by generation, so no id is reused across restart rounds.

#[cfg(feature = "cuda")]
mod tensor;
#[cfg(feature = "cuda")]
pub use tensor::{FlatPtr, cuda_flat_ptr};

use std::ffi::{CStr, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

use cudarc::driver::{result as dres, sys as dsys};
use cudarc::nccl::sys as nsys;
use tracing::{info, warn};

use crate::CommError;
use crate::client::ControlClient;
use crate::protocol::{hex_decode, hex_encode};

const ID_KEY: &str = "swinfc-comm/nccl-id";

/// Whether libcuda and libnccl can be loaded: `(driver, nccl)`.
pub fn libraries_present() -> (bool, bool) {
    // SAFETY: these only try to dlopen the libraries; no symbol is called.
    unsafe { (dsys::is_culib_present(), nsys::is_culib_present()) }
}

/// The error for a given `(driver, nccl)` presence, split out so it is testable everywhere.
fn check_libraries(present: (bool, bool)) -> Result<(), CommError> {
    match present {
        (false, _) => Err(CommError::LibraryMissing {
            lib: "libcuda (the NVIDIA driver)",
            hint: "NCCL needs an NVIDIA GPU and driver; use CPU workers (TCP ring) on this machine",
        }),
        (true, false) => Err(CommError::LibraryMissing {
            lib: "libnccl",
            hint: "cudarc looks for libnccl.so but not libnccl.so.2 (what pip's nvidia-nccl-cu* ships): \
                   put a libnccl.so link to it in a directory on LD_LIBRARY_PATH",
        }),
        (true, true) => Ok(()),
    }
}

/// NCCL's 128-byte unique id, which every rank needs to join one communicator.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NcclId(pub [u8; 128]);

impl NcclId {
    /// Draws a new id (rank 0 does this once per generation).
    pub fn generate() -> Result<Self, CommError> {
        check_libraries(libraries_present())?;
        let id = cudarc::nccl::result::get_uniqueid()
            .map_err(|e| CommError::Nccl(format!("ncclGetUniqueId: {e:?}")))?;
        Ok(Self::from_sys(&id))
    }

    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self, CommError> {
        let v = hex_decode(s.trim()).ok_or_else(|| CommError::Invalid("NCCL id is not hex".into()))?;
        let b: [u8; 128] = v
            .try_into()
            .map_err(|v: Vec<u8>| CommError::Invalid(format!("NCCL id has {} bytes, not 128", v.len())))?;
        Ok(Self(b))
    }

    // `c_char` is signed on x86 and unsigned on ARM; `as` reinterprets the bits either way.
    fn from_sys(id: &nsys::ncclUniqueId) -> Self {
        Self(id.internal.map(|c| c as u8))
    }

    fn to_sys(&self) -> nsys::ncclUniqueId {
        nsys::ncclUniqueId {
            internal: self.0.map(|b| b as std::ffi::c_char),
        }
    }
}

fn driver_err(what: &str) -> impl FnOnce(dres::DriverError) -> CommError + '_ {
    move |e| CommError::Nccl(format!("{what}: {e:?}"))
}

/// Ok(true) for success, Ok(false) for "in progress" (non-blocking communicators), else the
/// error with NCCL's last message.
fn check(r: nsys::ncclResult_t, comm: nsys::ncclComm_t, what: &str) -> Result<bool, CommError> {
    match r {
        nsys::ncclResult_t::ncclSuccess => Ok(true),
        nsys::ncclResult_t::ncclInProgress => Ok(false),
        e => {
            // SAFETY: ncclGetLastError accepts a null or live comm and returns a static C string.
            let msg = unsafe {
                let p = nsys::ncclGetLastError(comm);
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            Err(CommError::Nccl(format!("{what}: {e:?} {msg}")))
        }
    }
}

/// One NCCL communicator on one device, with its own CUDA stream.
pub struct NcclComm {
    comm: nsys::ncclComm_t,
    stream: dsys::CUstream,
    ctx: dsys::CUcontext,
    dev: dsys::CUdevice,
    rank: usize,
    world: usize,
    /// Set once aborted: the communicator must not be used or destroyed again.
    dead: bool,
}

// SAFETY: the raw handles are only used from the thread that owns the value (`&mut self`), and
// each call makes the context current first.
unsafe impl Send for NcclComm {}

impl NcclComm {
    /// Rendezvous through the control server (rank 0 publishes the id) and [`init`](Self::init).
    pub fn connect(
        control: &mut ControlClient,
        ordinal: usize,
        timeout: Duration,
    ) -> Result<Self, CommError> {
        check_libraries(libraries_present())?;
        let id = if control.rank() == 0 {
            let id = NcclId::generate()?;
            control.kv_set(ID_KEY, &id.to_hex())?;
            id
        } else {
            NcclId::from_hex(&control.kv_wait(ID_KEY, timeout)?)?
        };
        Self::init(ordinal, control.rank(), control.world_size(), &id, timeout)
    }

    /// `ncclCommInitRankConfig` (non-blocking) on device `ordinal`'s primary context, which is
    /// the one cubecl uses, so device pointers of Burn tensors are valid in it.
    pub fn init(
        ordinal: usize,
        rank: usize,
        world: usize,
        id: &NcclId,
        timeout: Duration,
    ) -> Result<Self, CommError> {
        check_libraries(libraries_present())?;
        if rank >= world {
            return Err(CommError::Invalid(format!(
                "rank {rank} outside world size {world}"
            )));
        }
        dres::init().map_err(driver_err("cuInit"))?;
        let dev = dres::device::get(ordinal as c_int).map_err(driver_err("cuDeviceGet"))?;
        // SAFETY: dev is a valid device handle; released in Drop.
        let ctx =
            unsafe { dres::primary_ctx::retain(dev) }.map_err(driver_err("cuDevicePrimaryCtxRetain"))?;
        let mut me = Self {
            comm: null_mut(),
            stream: null_mut(),
            ctx,
            dev,
            rank,
            world,
            dead: false,
        };
        // SAFETY: ctx was just retained.
        unsafe { dres::ctx::set_current(ctx) }.map_err(driver_err("cuCtxSetCurrent"))?;
        me.stream = dres::stream::create(dres::stream::StreamKind::NonBlocking)
            .map_err(driver_err("cuStreamCreate"))?;
        // NCCL_CONFIG_INITIALIZER with blocking = 0. NCCL reads min(size, its own size) bytes and
        // honours `version`, so older libraries (>= 2.14) accept this newer layout.
        const UNDEF: c_int = c_int::MIN;
        let mut cfg = nsys::ncclConfig_t {
            size: size_of::<nsys::ncclConfig_t>(),
            magic: 0xcafebeef,
            version: 23000,
            blocking: 0,
            cgaClusterSize: UNDEF,
            minCTAs: UNDEF,
            maxCTAs: UNDEF,
            netName: null(),
            splitShare: UNDEF,
            trafficClass: UNDEF,
            commName: null(),
            collnetEnable: UNDEF,
            CTAPolicy: UNDEF,
            shrinkShare: UNDEF,
            nvlsCTAs: UNDEF,
            nChannelsPerNetPeer: UNDEF,
            nvlinkCentricSched: UNDEF,
            graphUsageMode: UNDEF,
            numRmaCtx: UNDEF,
            maxP2pPeers: UNDEF,
        };
        // SAFETY: all pointers are valid for the call; NCCL copies the config.
        let r = unsafe {
            nsys::ncclCommInitRankConfig(&mut me.comm, world as c_int, id.to_sys(), rank as c_int, &mut cfg)
        };
        check(r, me.comm, "ncclCommInitRankConfig").map_err(|e| me.fail(e))?;
        // In progress until every rank has joined.
        me.poll(timeout, "every rank to join the NCCL communicator", |s| s.idle())?;
        info!(rank, world, ordinal, "NCCL communicator ready");
        Ok(me)
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    /// In-place sum over all ranks of `count` f32 at device address `ptr`; returns when the GPU is done.
    ///
    /// # Safety
    /// `ptr` must be a live device allocation of at least `count` f32 in this device's primary
    /// context, which nothing else reads or writes until this returns.
    pub unsafe fn all_reduce_sum_f32_inplace(
        &mut self,
        ptr: u64,
        count: usize,
        timeout: Duration,
    ) -> Result<(), CommError> {
        let b = ptr as *mut c_void;
        self.launch(timeout, "ncclAllReduce", |comm, stream| unsafe {
            nsys::ncclAllReduce(
                b,
                b,
                count,
                nsys::ncclDataType_t::ncclFloat32,
                nsys::ncclRedOp_t::ncclSum,
                comm,
                stream,
            )
        })
    }

    /// In-place broadcast of `count` f32 at `ptr` from `root`.
    ///
    /// # Safety
    /// As for [`all_reduce_sum_f32_inplace`](Self::all_reduce_sum_f32_inplace).
    pub unsafe fn broadcast_f32_inplace(
        &mut self,
        ptr: u64,
        count: usize,
        root: usize,
        timeout: Duration,
    ) -> Result<(), CommError> {
        if root >= self.world {
            return Err(CommError::Invalid(format!(
                "broadcast root {root} outside world size {}",
                self.world
            )));
        }
        let b = ptr as *mut c_void;
        self.launch(timeout, "ncclBroadcast", |comm, stream| unsafe {
            nsys::ncclBroadcast(
                b,
                b,
                count,
                nsys::ncclDataType_t::ncclFloat32,
                root as c_int,
                comm,
                stream,
            )
        })
    }

    /// Aborts the communicator; every later call fails. Peers' calls fail at their deadline.
    pub fn abort(&mut self) {
        if !self.dead && !self.comm.is_null() {
            warn!(rank = self.rank, "aborting the NCCL communicator");
            // SAFETY: the comm is live and not yet aborted; a panic from the loader is contained.
            let _ = catch_unwind(AssertUnwindSafe(|| unsafe { nsys::ncclCommAbort(self.comm) }));
        }
        self.dead = true;
    }

    /// Enqueues one collective on our stream, then waits (polling, bounded by `timeout`) until it is
    /// enqueued and the GPU has finished it: NCCL's documented loop for non-blocking communicators.
    fn launch(
        &mut self,
        timeout: Duration,
        what: &str,
        call: impl FnOnce(nsys::ncclComm_t, nsys::cudaStream_t) -> nsys::ncclResult_t,
    ) -> Result<(), CommError> {
        if self.dead {
            return Err(CommError::Aborted(Some(
                "the NCCL communicator was aborted".into(),
            )));
        }
        // SAFETY: ctx is retained for our lifetime.
        unsafe { dres::ctx::set_current(self.ctx) }.map_err(driver_err("cuCtxSetCurrent"))?;
        let r = call(self.comm, self.stream as nsys::cudaStream_t);
        check(r, self.comm, what).map_err(|e| self.fail(e))?;
        self.poll(timeout, what, |s| s.idle())?;
        self.poll(timeout, what, |s| {
            if !s.idle()? {
                return Ok(false);
            }
            // SAFETY: our stream is live.
            match unsafe { dsys::cuStreamQuery(s.stream) } {
                dsys::CUresult::CUDA_SUCCESS => Ok(true),
                dsys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
                e => Err(CommError::Nccl(format!("{what}: stream error {e:?}"))),
            }
        })
    }

    /// True when no operation is in progress; an asynchronous error becomes `Err`.
    fn idle(&self) -> Result<bool, CommError> {
        let mut st = nsys::ncclResult_t::ncclSuccess;
        // SAFETY: comm is live (callers check `dead`).
        let r = unsafe { nsys::ncclCommGetAsyncError(self.comm, &mut st) };
        check(r, self.comm, "ncclCommGetAsyncError")?;
        check(st, self.comm, "NCCL asynchronous error")
    }

    /// Polls `f` until true. An error or the deadline aborts the communicator.
    fn poll(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Self) -> Result<bool, CommError>,
    ) -> Result<(), CommError> {
        let deadline = Instant::now() + timeout;
        loop {
            match f(self) {
                Ok(true) => return Ok(()),
                Ok(false) if Instant::now() >= deadline => {
                    return Err(self.fail(CommError::Timeout {
                        what: format!("NCCL: {what}"),
                        timeout,
                    }));
                }
                Ok(false) => std::thread::sleep(Duration::from_micros(50)),
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    fn fail(&mut self, e: CommError) -> CommError {
        self.abort();
        e
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Never panics: a failure here must not mask the error that ended the run.
        let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
            let _ = dres::ctx::set_current(self.ctx);
            if !self.comm.is_null() && !self.dead {
                let finalized = check(nsys::ncclCommFinalize(self.comm), self.comm, "ncclCommFinalize")
                    .is_ok()
                    && self
                        .poll(Duration::from_secs(10), "finalize", |s| s.idle())
                        .is_ok();
                if finalized {
                    nsys::ncclCommDestroy(self.comm);
                } else {
                    self.abort();
                }
            }
            if !self.stream.is_null() {
                let _ = dres::stream::destroy(self.stream);
            }
            let _ = dres::primary_ctx::release(self.dev);
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_id_round_trips_through_hex_and_c_chars() {
        let mut b = [0u8; 128];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i * 37 % 256) as u8; // covers bytes >= 128, negative as signed c_char
        }
        let id = NcclId(b);
        let hex = id.to_hex();
        assert_eq!(hex.len(), 256);
        assert_eq!(NcclId::from_hex(&hex).unwrap(), id);
        assert_eq!(NcclId::from_sys(&id.to_sys()), id);
        assert!(NcclId::from_hex(&hex[..254]).is_err());
        assert!(NcclId::from_hex(&"g".repeat(256)).is_err());
    }

    #[test]
    fn config_has_the_nccl_2_30_layout() {
        // NCCL reads `size` bytes of it; a layout change in cudarc would silently shift fields.
        assert_eq!(size_of::<nsys::ncclConfig_t>(), 96);
    }

    #[test]
    fn missing_libraries_give_a_clear_error() {
        let e = check_libraries((false, true)).unwrap_err();
        assert!(
            matches!(e, CommError::LibraryMissing { .. }) && e.to_string().contains("libcuda"),
            "{e}"
        );
        let e = check_libraries((true, false)).unwrap_err();
        assert!(
            e.to_string().contains("libnccl.so.2") && e.to_string().contains("LD_LIBRARY_PATH"),
            "{e}"
        );
        assert!(check_libraries((true, true)).is_ok());
        // On a machine without the libraries, the public entry points fail the same way, no panic.
        if libraries_present() != (true, true) {
            let id = NcclId([0; 128]);
            assert!(matches!(
                NcclComm::init(0, 0, 1, &id, Duration::from_secs(1)),
                Err(CommError::LibraryMissing { .. })
            ));
            assert!(matches!(
                NcclId::generate(),
                Err(CommError::LibraryMissing { .. })
            ));
        }
    }
}
