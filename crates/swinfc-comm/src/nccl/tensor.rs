//! NCCL in place on a Burn CUDA tensor (burn.md §10).
//!
//! The worker concatenates its flattened gradients into one tensor (`cat`), reduces it here,
//! then splits it back. `Cuda` is `Fusion<CubeBackend<..>>` (burn's `fusion` feature), so the
//! buffer is reached through the fusion client. Ordering, in [`cuda_flat_ptr`] and the methods below:
//! 1. The fusion client runs every queued operation of the tensor's stream and hands out the cube
//!    tensor behind it. Our clone keeps the tensor's reference count above one, so fusion treats
//!    the handle as read-only and keeps it registered: the in-place write is what `t` reads next.
//! 2. `cat` produced a fresh dense buffer (checked: f32, contiguous, large enough).
//! 3. `get_resource` comes **before** `sync`: it makes cubecl's stream wait for the stream that
//!    produced the buffer and pins the buffer's slice.
//! 4. `sync` makes the host wait until cubecl's stream is drained, so the values are final.
//! 5. NCCL runs on its own stream; we poll until `cuStreamQuery` reports it done (or abort at
//!    the deadline), so the buffer is no longer in use when we return.
//! 6. Only then is the [`FlatPtr`] dropped and may Burn touch the tensor again.
//!
//! Validity: cubecl reuses a slice only when its reference count is at most 1. The pin and our
//! tensor clone each hold a reference, and slices never move, so `ptr` stays valid while the
//! `FlatPtr` lives.

use std::time::Duration;

use burn::backend::Cuda;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::Runtime;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl_runtime::server::ComputeServer;
use cubecl_runtime::storage::{ComputeStorage, ManagedResource};

use super::NcclComm;
use crate::CommError;

/// The backend under `Cuda`'s fusion layer.
type Cube = CubeBackend<CudaRuntime, f32, i32, u8>;

type Pin = ManagedResource<
    <<<CudaRuntime as Runtime>::Server as ComputeServer>::Storage as ComputeStorage>::Resource,
>;

/// A device address of a Burn tensor's buffer, pinned while this lives.
pub struct FlatPtr {
    pub ptr: u64,
    pub numel: usize,
    _pin: Pin,
    _tensor: CubeTensor<CudaRuntime>,
}

/// Device address of a dense f32 1-D CUDA tensor, after every pending write to it has finished.
pub fn cuda_flat_ptr(t: &Tensor<Cuda, 1>) -> Result<FlatPtr, CommError> {
    // A change of `Cuda`'s definition (fusion off, another cube backend) fails to compile here
    // rather than misbehave.
    let TensorPrimitive::Float(fused) = t.clone().into_primitive() else {
        return Err(CommError::Invalid(
            "NCCL needs an f32 tensor, got a quantized one".into(),
        ));
    };
    let client = fused.client.clone();
    let c: CubeTensor<CudaRuntime> = client.resolve_tensor_float::<Cube>(fused);
    let numel = c.meta.num_elements();
    if c.dtype != DType::F32 || !c.is_contiguous() || (c.handle.size_in_used() as usize) < numel * 4 {
        return Err(CommError::Invalid(
            "NCCL needs a dense f32 tensor (cat the gradients first)".into(),
        ));
    }
    let pin = c
        .client
        .get_resource(c.handle.clone())
        .map_err(|e| CommError::Nccl(format!("cubecl get_resource: {e:?}")))?;
    burn_cubecl::cubecl::future::block_on(c.client.sync())
        .map_err(|e| CommError::Nccl(format!("cubecl sync: {e:?}")))?;
    Ok(FlatPtr {
        ptr: pin.resource().ptr,
        numel,
        _pin: pin,
        _tensor: c,
    })
}

impl NcclComm {
    /// In-place sum over ranks of a dense f32 CUDA tensor on this communicator's device.
    pub fn all_reduce_sum_tensor(&mut self, t: &Tensor<Cuda, 1>, timeout: Duration) -> Result<(), CommError> {
        let flat = cuda_flat_ptr(t)?;
        // SAFETY: `flat` pins a live dense buffer of `numel` f32, drained of pending writes, and
        // outlives the call, which returns only once the GPU is done with it.
        unsafe { self.all_reduce_sum_f32_inplace(flat.ptr, flat.numel, timeout) }
    }

    /// In-place broadcast of a dense f32 CUDA tensor from `root`.
    pub fn broadcast_tensor(
        &mut self,
        root: usize,
        t: &Tensor<Cuda, 1>,
        timeout: Duration,
    ) -> Result<(), CommError> {
        let flat = cuda_flat_ptr(t)?;
        // SAFETY: as in `all_reduce_sum_tensor`.
        unsafe { self.broadcast_f32_inplace(flat.ptr, flat.numel, root, timeout) }
    }
}
