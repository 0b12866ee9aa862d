//! The distributed sampler (ARCHITECTURE.md, "Data sharding and resume").
//!
//! The training stream is the concatenation of per-epoch permutations of the train indices, each
//! seeded by (seed, epoch). Global step `s` takes stream positions `[s·B, (s+1)·B)` with
//! `B = world·accum·micro`; micro-batch `rank·accum + a` of the step is rank `rank`'s `a`-th
//! accumulation micro-step. An epoch's tail simply continues into the next epoch, so no sample is
//! dropped or duplicated. The only state is the stream position (which implies the epoch): every
//! function here is a pure function of its arguments, so a resume — even with another world size,
//! as long as the resumed run starts at the same position — continues exactly.

use std::ops::Range;

use crate::rng::{Rng, TAG_SHUFFLE};

/// One element of the training stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleRef {
    pub epoch: u64,
    /// Index into the train split.
    pub index: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainStream {
    seed: u64,
    train_len: usize,
}

/// The permutation of `0..len` for `epoch` (Fisher–Yates driven by our keyed RNG).
pub fn epoch_permutation(seed: u64, epoch: u64, len: usize) -> Vec<usize> {
    let mut rng = Rng::keyed(&[seed, TAG_SHUFFLE, epoch]);
    let mut perm: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = rng.below_inclusive(i as u64) as usize;
        perm.swap(i, j);
    }
    perm
}

impl TrainStream {
    pub fn new(seed: u64, train_len: usize) -> Self {
        assert!(train_len > 0, "TrainStream over an empty train split");
        TrainStream { seed, train_len }
    }

    pub fn train_len(&self) -> usize {
        self.train_len
    }

    /// The epoch that stream position `pos` falls in.
    pub fn epoch_of(&self, pos: u64) -> u64 {
        pos / self.train_len as u64
    }

    /// Stream positions `[start, start + len)`. Costs one permutation (O(train_len)) per epoch
    /// the range touches: negligible beside a training step, and it keeps the stream stateless.
    pub fn slice(&self, start: u64, len: usize) -> Vec<SampleRef> {
        let n = self.train_len as u64;
        let mut out = Vec::with_capacity(len);
        let mut pos = start;
        let end = start + len as u64;
        while pos < end {
            let epoch = pos / n;
            let perm = epoch_permutation(self.seed, epoch, self.train_len);
            let stop = end.min((epoch + 1) * n);
            out.extend((pos..stop).map(|p| SampleRef {
                epoch,
                index: perm[(p - epoch * n) as usize],
            }));
            pos = stop;
        }
        out
    }

    /// Micro-batch `a` (0..accum) of `rank` (0..world) at global `step`: stream positions
    /// `[step·B + (rank·accum + a)·micro, +micro)` with `B = world·accum·micro`.
    pub fn micro_batch(
        &self,
        step: u64,
        rank: usize,
        world: usize,
        accum: usize,
        micro: usize,
        a: usize,
    ) -> Vec<SampleRef> {
        let global = (world * accum * micro) as u64;
        self.micro_batch_at(step * global, rank, world, accum, micro, a)
    }

    /// As [`Self::micro_batch`], for the step that starts at stream position `step_start`. A run
    /// resumed with another world size keeps counting from the saved position, not from
    /// `step · B` with the new `B`.
    pub fn micro_batch_at(
        &self,
        step_start: u64,
        rank: usize,
        world: usize,
        accum: usize,
        micro: usize,
        a: usize,
    ) -> Vec<SampleRef> {
        assert!(
            rank < world && a < accum,
            "rank {rank}/{world}, micro-step {a}/{accum}"
        );
        self.slice(step_start + ((rank * accum + a) * micro) as u64, micro)
    }
}

/// Test-split shard of `rank` of `world`: contiguous, every index exactly once across ranks, no
/// padding; the first `test_len % world` ranks get one more.
pub fn eval_shard(test_len: usize, rank: usize, world: usize) -> Range<usize> {
    assert!(rank < world, "rank {rank} of world {world}");
    let base = test_len / world;
    let extra = test_len % world;
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start..start + len
}
