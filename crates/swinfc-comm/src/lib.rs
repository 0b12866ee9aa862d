//! Collectives and the control protocol of swinfc.
//!
//! - [`Collective`]: all-reduce (sum), broadcast, barrier and abort, implemented by [`TcpRing`]
//!   (CPU workers; persistent TCP links between ring neighbours) and [`LocalCollective`] (world size
//!   1). GPU workers reduce device buffers with [`nccl::NcclComm`] (on Burn CUDA tensors with the
//!   `cuda` feature) and keep a [`TcpRing`] for host-side broadcasts and barriers.
//! - The control plane: [`ControlServer`] (async, hosted by the node-0 launcher, or on its own
//!   thread through [`ServerHandle`]) and the blocking [`ControlClient`] a worker uses for
//!   rendezvous, a key-value store scoped by restart round ("generation"), named barriers,
//!   heartbeats, metrics reports and the launcher's commands. The other nodes' launchers link to
//!   node 0's through [`NodeClient`]: reports up, commands down, across restart rounds.
//!
//! This crate knows nothing about models or training: it moves `f32`s and bytes.

pub mod client;
mod error;
mod frame;
pub mod nccl;
pub mod protocol;
pub mod ring;
pub mod server;

pub use client::{ControlClient, NodeClient, WorkerIdentity};
pub use error::CommError;
pub use protocol::{
    EXIT_PERMANENT, JobOutcome, JobToken, NodeCommand, NodeReport, Phase, Resume, ServerCommand, Signal,
};
pub use ring::TcpRing;
pub use server::{ControlServer, ServerEvent, ServerHandle};

/// Collective operations among the `world_size` workers of one generation. Every rank must call
/// the same operations in the same order with the same lengths (the TCP ring checks this). A
/// failure (peer gone, timeout, abort) leaves the collective unusable: the launcher restarts the
/// round.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// In-place sum over ranks; the result is bit-identical on every rank.
    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]) -> Result<(), CommError>;
    /// Copies `root`'s `buf` into every rank's `buf` (all of the same length).
    fn broadcast_f32(&mut self, root: usize, buf: &mut [f32]) -> Result<(), CommError>;
    /// Copies `root`'s bytes to every rank; receivers' vectors are resized to the root's length.
    fn broadcast_bytes(&mut self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CommError>;
    /// Returns once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<(), CommError>;
    /// Gives up: later calls fail, and peers blocked on us fail promptly instead of at their timeout.
    fn abort(&mut self);
}

/// World size 1: every operation is a no-op.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalCollective;

impl Collective for LocalCollective {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&mut self, _: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }
    fn broadcast_f32(&mut self, root: usize, _: &mut [f32]) -> Result<(), CommError> {
        check_local_root(root)
    }
    fn broadcast_bytes(&mut self, root: usize, _: &mut Vec<u8>) -> Result<(), CommError> {
        check_local_root(root)
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        Ok(())
    }
    fn abort(&mut self) {}
}

fn check_local_root(root: usize) -> Result<(), CommError> {
    if root != 0 {
        return Err(CommError::Invalid(format!(
            "broadcast root {root} outside world size 1"
        )));
    }
    Ok(())
}
