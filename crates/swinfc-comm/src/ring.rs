//! The TCP ring: all-reduce (reduce-scatter + all-gather), broadcast and barrier over persistent
//! connections to the two ring neighbours. For CPU workers, tests, and as a fallback.
//!
//! - Each neighbour link is used in both directions: a large all-reduce sends half of the buffer
//!   clockwise (rank r → r+1) and half counter-clockwise (r → r−1), each on its own "lane" with its
//!   own thread. Within a lane a sender thread writes while the lane's thread reads and reduces,
//!   and data moves in chunks: a chunk reduced in one step is queued for the next step at once
//!   (pipelining).
//! - In a lane, segment c of its half is summed once, along the lane starting at position c:
//!   `((x_c + x_{c+1}) + x_{c+2}) + …`, then copied to every rank. So every rank ends with the same
//!   bits, and the same inputs always give the same result.
//! - Every operation starts with a header (operation, sequence number, length, root) checked
//!   against the left neighbour's, so ranks that call different operations fail loudly instead of
//!   exchanging garbage.
//! - Sockets have read and write timeouts. The first error shuts both links down, so the
//!   neighbours fail at once too and the failure travels around the ring instead of waiting for
//!   each rank's timeout. A hung (not dead) rank stalls the pipeline behind it, so the first
//!   timeout may fire on a rank that waits for a neighbour of the hung one; the launcher's
//!   heartbeats say which rank stopped making progress.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tracing::{debug, info, warn};

use crate::client::ControlClient;
use crate::protocol::JobToken;
use crate::{Collective, CommError};

/// Bytes per pipelined chunk: small enough that the next hop starts early, big enough that the
/// per-chunk overhead (a channel message, a syscall) stays negligible.
const CHUNK_BYTES: usize = 256 * 1024;
/// All-reduces of at least this many elements use both lanes; smaller ones are latency-bound and
/// not worth a second thread.
const TWO_LANES_MIN: usize = 1 << 18;
/// Socket buffer size asked for (the kernel may cap it, e.g. at `net.core.rmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;
const HELLO_MAGIC: &[u8; 8] = b"SWFCRNG1";
/// Magic, token, sender's rank, world size, generation.
const HELLO_LEN: usize = 8 + 32 + 8 + 8 + 8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
enum Op {
    AllReduce = 1,
    Broadcast = 2,
    BroadcastBytes = 3,
    Barrier = 4,
}

enum SendJob {
    Data(Vec<u8>),
    /// Answered once everything queued before it is written (or writing failed).
    Flush(mpsc::Sender<Result<(), String>>),
}

/// One direction around the ring: we send to `send_rank` and receive from `recv_rank`.
struct Lane {
    /// Our position along this direction (the rank clockwise, `(W − rank) mod W` counter-clockwise).
    pos: usize,
    world: usize,
    send_rank: usize,
    recv_rank: usize,
    recv: TcpStream,
    jobs: mpsc::Sender<SendJob>,
    sender: Option<std::thread::JoinHandle<()>>,
    recv_buf: Vec<u8>,
    timeout: Duration,
    /// Both sockets, to shut them down on a failure in this lane, which also stops the other lane.
    kill: [TcpStream; 2],
}

impl Lane {
    fn new(
        pos: usize,
        world: usize,
        (send_rank, send): (usize, &TcpStream),
        (recv_rank, recv): (usize, &TcpStream),
        timeout: Duration,
    ) -> Result<Self, CommError> {
        let clone = |s: &TcpStream, peer: usize| {
            s.try_clone()
                .map_err(|e| CommError::io(format!("rank {peer}"), e))
        };
        let (jobs, rx) = mpsc::channel();
        let out = clone(send, send_rank)?;
        let sender = std::thread::Builder::new()
            .name("swinfc-ring-tx".into())
            .spawn(move || sender_loop(out, rx))
            .map_err(|e| CommError::io("ring sender thread", e))?;
        Ok(Self {
            pos,
            world,
            send_rank,
            recv_rank,
            recv: clone(recv, recv_rank)?,
            jobs,
            sender: Some(sender),
            recv_buf: Vec::new(),
            timeout,
            kill: [clone(send, send_rank)?, clone(recv, recv_rank)?],
        })
    }

    fn enqueue(&self, bytes: Vec<u8>) -> Result<(), CommError> {
        self.jobs
            .send(SendJob::Data(bytes))
            .map_err(|_| CommError::Closed {
                peer: format!("ring sender to rank {}", self.send_rank),
            })
    }

    /// Reads exactly `len` bytes from `recv_rank` into `self.recv_buf[..len]`.
    fn recv(&mut self, len: usize) -> Result<(), CommError> {
        if self.recv_buf.len() < len {
            self.recv_buf.resize(len, 0);
        }
        self.recv
            .read_exact(&mut self.recv_buf[..len])
            .map_err(|e| link_error(self.recv_rank, e, self.timeout))
    }

    /// Waits until the sender thread has written everything queued so far.
    fn flush(&self) -> Result<(), CommError> {
        let peer = self.send_rank;
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(SendJob::Flush(tx))
            .map_err(|_| CommError::Closed {
                peer: format!("rank {peer}"),
            })?;
        match rx.recv_timeout(self.timeout) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CommError::Io {
                peer: format!("rank {peer}"),
                source: std::io::Error::other(e),
            }),
            Err(_) => Err(CommError::Timeout {
                what: format!("sending to rank {peer}"),
                timeout: self.timeout,
            }),
        }
    }

    /// Runs `f`; on failure shuts both links down so everyone blocked on them fails at once.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, CommError>) -> Result<T, CommError> {
        let r = f(self);
        if r.is_err() {
            for s in &self.kill {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        r
    }

    /// Reduce-scatter then all-gather of `buf` along this lane.
    fn all_reduce(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        let (w, r, n) = (self.world, self.pos, buf.len());
        let seg = |s: usize| (s * n / w)..((s + 1) * n / w);
        let chunk = CHUNK_BYTES / 4;
        // Step 0 of reduce-scatter sends our own segment.
        for c in seg(r).step_by(chunk) {
            let end = (c + chunk).min(seg(r).end);
            self.enqueue(encode_f32(&buf[c..end]))?;
        }
        let steps = 2 * (w - 1);
        for t in 0..steps {
            // Reduce-scatter receives segment r-t-1, all-gather segment r-(t-(w-1)); either way it
            // is exactly the segment sent at step t+1.
            let (recv_seg, reducing) = if t < w - 1 {
                ((r + 2 * w - t - 1) % w, true)
            } else {
                ((r + 2 * w - (t - (w - 1))) % w, false)
            };
            let range = seg(recv_seg);
            let mut c = range.start;
            while c < range.end {
                let end = (c + chunk).min(range.end);
                self.recv((end - c) * 4)?;
                let dst = &mut buf[c..end];
                let src = &self.recv_buf[..(end - c) * 4];
                if reducing {
                    // The partial sum arrives from upstream; adding our value extends the chain.
                    for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                        *d += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                } else {
                    for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                        *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                if t + 1 < steps {
                    let bytes = if reducing { encode_f32(dst) } else { src.to_vec() };
                    self.enqueue(bytes)?;
                }
                c = end;
            }
        }
        self.flush()
    }

    /// Broadcast of `len` bytes from `root` (a rank; only used on the clockwise lane, where
    /// positions are ranks), in chunks: the root produces chunks with `produce`, every other rank
    /// hands them to `consume` and forwards them unless the next rank is the root.
    fn broadcast_raw(
        &mut self,
        root: usize,
        len: usize,
        mut produce: impl FnMut(std::ops::Range<usize>) -> Vec<u8>,
        mut consume: impl FnMut(std::ops::Range<usize>, &[u8]),
    ) -> Result<(), CommError> {
        let forward = self.send_rank != root;
        for c in (0..len).step_by(CHUNK_BYTES) {
            let range = c..(c + CHUNK_BYTES).min(len);
            if self.pos == root {
                self.enqueue(produce(range))?;
            } else {
                self.recv(range.len())?;
                let bytes = &self.recv_buf[..range.len()];
                consume(range, bytes);
                if forward {
                    self.enqueue(bytes.to_vec())?;
                }
            }
        }
        self.flush()
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // Closing the job channel ends the sender thread once its queue is written.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, tx));
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
    }
}

struct Links {
    /// Clockwise: send to rank + 1, receive from rank − 1.
    cw: Lane,
    /// Counter-clockwise: send to rank − 1, receive from rank + 1.
    ccw: Lane,
}

/// Ring collective over TCP. World size 1 needs no links and every operation is a no-op.
pub struct TcpRing {
    rank: usize,
    world: usize,
    timeout: Duration,
    links: Option<Links>,
    seq: u64,
    /// Set by the first failure; every later call fails with it.
    broken: Option<String>,
}

fn key(rank: usize) -> String {
    format!("swinfc-comm/ring/{rank}")
}

impl TcpRing {
    /// Rendezvous through the control server: publish our listening address under this
    /// generation's keys, connect to the right neighbour, accept the left one. `timeout` bounds the
    /// rendezvous and becomes the timeout of every later operation ([`set_timeout`](Self::set_timeout)).
    ///
    /// We listen on the local address of our control connection, so in a multi-node job the
    /// control server must be reached through an address other nodes can reach too (not 127.0.0.1).
    pub fn connect(control: &mut ControlClient, timeout: Duration) -> Result<Self, CommError> {
        let (rank, world) = (control.rank(), control.world_size());
        let mut ring = Self {
            rank,
            world,
            timeout,
            links: None,
            seq: 0,
            broken: None,
        };
        if world == 1 {
            return Ok(ring);
        }
        let deadline = Instant::now() + timeout;
        let token = control.token().clone();
        // Listen on the interface that reaches the control server: other hosts can reach it too.
        let ip = control.local_ip()?;
        let listener = Socket::new(Domain::for_address(SocketAddr::new(ip, 0)), Type::STREAM, None)
            .map_err(|e| CommError::io("ring listener", e))?;
        // Set before listen: the receive window scale is fixed at the handshake.
        let _ = listener.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = listener.set_send_buffer_size(SOCKET_BUFFER);
        listener
            .bind(&SocketAddr::new(ip, 0).into())
            .and_then(|()| listener.listen(16))
            .and_then(|()| listener.set_nonblocking(true))
            .map_err(|e| CommError::io("ring listener", e))?;
        let addr = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| CommError::Invalid("ring listener has no IP address".into()))?;
        control.kv_set(&key(rank), &addr.to_string())?;

        let (next_rank, prev_rank) = ((rank + 1) % world, (rank + world - 1) % world);
        let left = deadline.saturating_duration_since(Instant::now());
        let next_addr: SocketAddr =
            control
                .kv_wait(&key(next_rank), left)?
                .parse()
                .map_err(|_| CommError::Protocol {
                    peer: format!("rank {next_rank}"),
                    reason: "bad ring address".into(),
                })?;
        let mut next = connect_next(next_addr, next_rank, deadline)?;
        let mut hello = Vec::with_capacity(HELLO_LEN);
        hello.extend_from_slice(HELLO_MAGIC);
        hello.extend_from_slice(token.as_bytes());
        hello.extend_from_slice(&(rank as u64).to_le_bytes());
        hello.extend_from_slice(&(world as u64).to_le_bytes());
        hello.extend_from_slice(&control.generation().to_le_bytes());
        next.write_all(&hello)
            .map_err(|e| CommError::io(format!("rank {next_rank}"), e))?;
        let prev = accept_prev(
            &listener,
            &token,
            (prev_rank, world, control.generation()),
            deadline,
            timeout,
        )?;

        for (s, peer) in [(&next, next_rank), (&prev, prev_rank)] {
            s.set_nodelay(true)
                .and_then(|()| s.set_read_timeout(Some(timeout)))
                .and_then(|()| s.set_write_timeout(Some(timeout)))
                .map_err(|e| CommError::io(format!("rank {peer}"), e))?;
        }
        let cw = Lane::new(rank, world, (next_rank, &next), (prev_rank, &prev), timeout)?;
        let ccw = Lane::new(
            (world - rank) % world,
            world,
            (prev_rank, &prev),
            (next_rank, &next),
            timeout,
        )?;
        ring.links = Some(Links { cw, ccw });
        info!(rank, world, %addr, "ring connected");
        Ok(ring)
    }

    /// Timeout of each blocking step of an operation.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Timeout of each blocking step of later operations (a read or write that makes no progress).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), CommError> {
        self.timeout = timeout;
        if let Some(l) = &mut self.links {
            for lane in [&mut l.cw, &mut l.ccw] {
                lane.timeout = timeout;
                for s in &lane.kill {
                    s.set_read_timeout(Some(timeout))
                        .and_then(|()| s.set_write_timeout(Some(timeout)))
                        .map_err(|e| CommError::io("ring link", e))?;
                }
            }
        }
        Ok(())
    }

    /// Runs one operation on the links; any failure marks the ring broken and shuts the links down,
    /// so the neighbours fail at once too.
    fn run(&mut self, f: impl FnOnce(&mut Links, u64) -> Result<(), CommError>) -> Result<(), CommError> {
        if let Some(why) = &self.broken {
            return Err(CommError::Aborted(Some(why.clone())));
        }
        let Some(links) = &mut self.links else {
            return Err(CommError::Invalid("ring has no links".into()));
        };
        self.seq += 1;
        let r = f(links, self.seq);
        if let Err(e) = &r {
            warn!(rank = self.rank, "ring operation failed: {e}");
            self.shut_down(e.to_string());
        }
        r
    }

    fn shut_down(&mut self, why: String) {
        self.broken.get_or_insert(why);
        if let Some(l) = &self.links {
            for s in &l.cw.kill {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    fn check_root(&self, root: usize) -> Result<(), CommError> {
        if root >= self.world {
            return Err(CommError::Invalid(format!(
                "broadcast root {root} outside world size {}",
                self.world
            )));
        }
        Ok(())
    }
}

/// Sends our header clockwise and checks the left neighbour's equals it.
fn header(lane: &mut Lane, op: Op, seq: u64, count: u64, root: u64) -> Result<(), CommError> {
    let mine = [op as u64, seq, count, root];
    lane.enqueue(mine.iter().flat_map(|x| x.to_le_bytes()).collect())?;
    lane.recv(32)?;
    let theirs: Vec<u64> = lane.recv_buf[..32]
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    if theirs[..] != mine[..] {
        return Err(CommError::Mismatch {
            peer: lane.recv_rank,
            reason: format!("(op, seq, count, root) {theirs:?} there, {mine:?} here ({op:?})"),
        });
    }
    Ok(())
}

fn all_reduce(links: &mut Links, seq: u64, buf: &mut [f32], op: Op) -> Result<(), CommError> {
    let Links { cw, ccw } = links;
    cw.guarded(|l| header(l, op, seq, buf.len() as u64, 0))?;
    if buf.len() < TWO_LANES_MIN {
        return cw.guarded(|l| l.all_reduce(buf));
    }
    // Every rank splits at the same point (lengths were just checked equal).
    let (first, second) = buf.split_at_mut(buf.len() / 2);
    std::thread::scope(|s| {
        let other = std::thread::Builder::new()
            .name("swinfc-ring-ccw".into())
            .spawn_scoped(s, || ccw.guarded(|l| l.all_reduce(second)))
            .map_err(|e| CommError::io("ring lane thread", e))?;
        let a = cw.guarded(|l| l.all_reduce(first));
        let b = other
            .join()
            .unwrap_or_else(|_| Err(CommError::Invalid("ring lane thread panicked".into())));
        match (a, b) {
            (Ok(()), Ok(())) => Ok(()),
            // The first failure shuts both lanes down, so the other lane then sees a closed socket;
            // a timeout is the root cause worth reporting (it names the silent peer).
            (Err(e @ CommError::Timeout { .. }), _) | (_, Err(e @ CommError::Timeout { .. })) => Err(e),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    })
}

impl Collective for TcpRing {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        if self.world == 1 {
            return Ok(());
        }
        self.run(|l, seq| all_reduce(l, seq, buf, Op::AllReduce))
    }

    fn broadcast_f32(&mut self, root: usize, buf: &mut [f32]) -> Result<(), CommError> {
        self.check_root(root)?;
        if self.world == 1 {
            return Ok(());
        }
        let rank = self.rank;
        self.run(|l, seq| {
            l.cw.guarded(|lane| {
                header(lane, Op::Broadcast, seq, buf.len() as u64, root as u64)?;
                let len = buf.len() * 4;
                if rank == root {
                    let data: &[f32] = buf;
                    lane.broadcast_raw(
                        root,
                        len,
                        |r| encode_f32(&data[r.start / 4..r.end / 4]),
                        |_, _| {},
                    )
                } else {
                    lane.broadcast_raw(
                        root,
                        len,
                        |_| Vec::new(),
                        |r, b| {
                            for (d, x) in buf[r.start / 4..r.end / 4].iter_mut().zip(b.chunks_exact(4)) {
                                *d = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                            }
                        },
                    )
                }
            })
        })
    }

    fn broadcast_bytes(&mut self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CommError> {
        self.check_root(root)?;
        if self.world == 1 {
            return Ok(());
        }
        let rank = self.rank;
        self.run(|l, seq| {
            l.cw.guarded(|lane| {
                // Only the root knows the length, so it travels as the first 8 bytes.
                header(lane, Op::BroadcastBytes, seq, 0, root as u64)?;
                let root_len = (bytes.len() as u64).to_le_bytes();
                let mut len = root_len;
                lane.broadcast_raw(root, 8, |_| root_len.to_vec(), |_, b| len.copy_from_slice(b))?;
                let n = usize::try_from(u64::from_le_bytes(len)).map_err(|_| CommError::Protocol {
                    peer: format!("rank {root}"),
                    reason: "broadcast length overflows".into(),
                })?;
                if rank == root {
                    let data: &[u8] = bytes;
                    lane.broadcast_raw(root, n, |r| data[r].to_vec(), |_, _| {})
                } else {
                    bytes.clear();
                    bytes.resize(n, 0);
                    lane.broadcast_raw(root, n, |_| Vec::new(), |r, b| bytes[r].copy_from_slice(b))
                }
            })
        })
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        if self.world == 1 {
            return Ok(());
        }
        // Nobody's result is complete before everybody has contributed, so an all-reduce of one
        // value is a barrier.
        self.run(|l, seq| all_reduce(l, seq, &mut [0.0], Op::Barrier))
    }

    fn abort(&mut self) {
        self.shut_down("aborted by this rank".into());
    }
}

impl Drop for TcpRing {
    fn drop(&mut self) {
        // Every operation flushed its sends, so nothing is lost; the shutdown wakes the peers.
        self.shut_down("dropped".into());
    }
}

fn encode_f32(xs: &[f32]) -> Vec<u8> {
    let mut v = vec![0u8; xs.len() * 4];
    for (d, x) in v.chunks_exact_mut(4).zip(xs) {
        d.copy_from_slice(&x.to_le_bytes());
    }
    v
}

fn link_error(peer: usize, e: std::io::Error, timeout: Duration) -> CommError {
    use std::io::ErrorKind::*;
    match e.kind() {
        // Socket timeouts surface as WouldBlock on Unix, TimedOut on Windows.
        WouldBlock | TimedOut => CommError::Timeout {
            what: format!("data from rank {peer}"),
            timeout,
        },
        UnexpectedEof => CommError::Closed {
            peer: format!("rank {peer}"),
        },
        _ => CommError::io(format!("rank {peer}"), e),
    }
}

fn sender_loop(mut out: TcpStream, jobs: mpsc::Receiver<SendJob>) {
    // After a write error, keep answering flushes with it so the caller never waits in vain.
    let mut failed: Option<String> = None;
    while let Ok(job) = jobs.recv() {
        match job {
            SendJob::Data(b) => {
                if failed.is_none()
                    && let Err(e) = out.write_all(&b)
                {
                    debug!("ring send failed: {e}");
                    failed = Some(e.to_string());
                }
            }
            SendJob::Flush(done) => {
                let _ = done.send(failed.clone().map_or(Ok(()), Err));
            }
        }
    }
}

fn tune(s: &Socket) {
    // Best effort: the kernel caps these at its limits, and smaller buffers only cost speed.
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
}

fn connect_next(addr: SocketAddr, peer: usize, deadline: Instant) -> Result<TcpStream, CommError> {
    loop {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
            .map_err(|e| CommError::io(format!("rank {peer}"), e))?;
        tune(&s);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        match s.connect_timeout(&addr.into(), left) {
            Ok(()) => return Ok(s.into()),
            Err(e) if Instant::now() >= deadline => {
                return Err(CommError::io(format!("rank {peer} at {addr}"), e));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Accepts connections until one proves to be our left neighbour of this job and generation.
fn accept_prev(
    listener: &Socket,
    token: &JobToken,
    (peer, world, generation): (usize, usize, u64),
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, CommError> {
    loop {
        match listener.accept() {
            Ok((s, from)) => {
                let from = from.as_socket().map(|a| a.to_string()).unwrap_or_default();
                let mut s: TcpStream = s.into();
                // A stranger that connects and stays silent must not use up the rendezvous.
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(100), Duration::from_secs(5));
                let mut hello = [0u8; HELLO_LEN];
                let ok = s.set_nonblocking(false).is_ok()
                    && s.set_read_timeout(Some(left)).is_ok()
                    && s.read_exact(&mut hello).is_ok()
                    && &hello[..8] == HELLO_MAGIC
                    && token.matches(&hello[8..40])
                    && hello[40..48] == (peer as u64).to_le_bytes()
                    && hello[48..56] == (world as u64).to_le_bytes()
                    && hello[56..64] == generation.to_le_bytes();
                // Buffer sizes are inherited from the listener.
                if ok {
                    return Ok(s);
                }
                warn!(%from, "ring connection that is not rank {peer} of this job and generation refused");
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(CommError::Timeout {
                        what: format!("rank {peer} to connect to our ring listener"),
                        timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(CommError::io("ring listener", e)),
        }
    }
}
