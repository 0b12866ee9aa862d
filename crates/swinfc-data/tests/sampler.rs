//! Sampler properties over many (world, accum, micro, epoch, resume point) combinations.

use std::collections::HashMap;

use proptest::prelude::*;
use swinfc_data::sampler::epoch_permutation;
use swinfc_data::{SampleRef, TrainStream, eval_shard};

/// Every micro-batch of `step`, rank-major (rank 0's micro-steps first).
fn step_micro_batches(
    s: &TrainStream,
    step_start: u64,
    world: usize,
    accum: usize,
    micro: usize,
) -> Vec<Vec<SampleRef>> {
    (0..world)
        .flat_map(|r| (0..accum).map(move |a| (r, a)))
        .map(|(r, a)| s.micro_batch_at(step_start, r, world, accum, micro, a))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn ranks_union_is_the_global_batch(
        seed in any::<u64>(), len in 1usize..60, world in 1usize..5, accum in 1usize..4,
        micro in 1usize..6, step in 0u64..40,
    ) {
        let s = TrainStream::new(seed, len);
        let b = world * accum * micro;
        let joined: Vec<SampleRef> = (0..world)
            .flat_map(|r| (0..accum).map(move |a| (r, a)))
            .flat_map(|(r, a)| s.micro_batch(step, r, world, accum, micro, a))
            .collect();
        prop_assert_eq!(joined, s.slice(step * b as u64, b));
    }

    #[test]
    fn every_sample_exactly_once_per_epoch(
        seed in any::<u64>(), len in 1usize..50, world in 1usize..4, accum in 1usize..3,
        micro in 1usize..5, epochs in 1u64..4,
    ) {
        let s = TrainStream::new(seed, len);
        let b = (world * accum * micro) as u64;
        let steps = (epochs * len as u64).div_ceil(b);
        let mut seen: HashMap<u64, Vec<usize>> = HashMap::new();
        for step in 0..steps {
            for mb in step_micro_batches(&s, step * b, world, accum, micro) {
                for r in mb {
                    seen.entry(r.epoch).or_default().push(r.index);
                }
            }
        }
        for e in 0..epochs {
            let mut got = seen.remove(&e).unwrap_or_default();
            got.sort();
            prop_assert_eq!(got, (0..len).collect::<Vec<_>>(), "epoch {}", e);
        }
        // Only the epoch after the last full one may be partial, and never repeats itself.
        for (_, mut rest) in seen {
            let n = rest.len();
            rest.sort();
            rest.dedup();
            prop_assert_eq!(rest.len(), n);
        }
    }

    #[test]
    fn resume_from_any_position_continues_exactly(
        seed in any::<u64>(), len in 1usize..40, micro in 1usize..5,
        w1 in 1usize..4, a1 in 1usize..3, w2 in 1usize..4, a2 in 1usize..3,
        stop in 0u64..30, more in 1u64..20,
    ) {
        // A run with (w1, a1) stops after `stop` steps; the resumed run — a fresh stream, maybe
        // another world size and accumulation, same micro-batch — starts at the saved position.
        let before = TrainStream::new(seed, len);
        let b1 = (w1 * a1 * micro) as u64;
        let mut stream: Vec<SampleRef> = (0..stop)
            .flat_map(|st| step_micro_batches(&before, st * b1, w1, a1, micro))
            .flatten()
            .collect();
        let pos = stop * b1;
        let after = TrainStream::new(seed, len);
        let b2 = (w2 * a2 * micro) as u64;
        for st in 0..more {
            stream.extend(step_micro_batches(&after, pos + st * b2, w2, a2, micro).into_iter().flatten());
        }
        prop_assert_eq!(stream.len() as u64, pos + more * b2);
        prop_assert_eq!(stream, TrainStream::new(seed, len).slice(0, (pos + more * b2) as usize));
        // Same world: resuming at step `stop` reproduces the uninterrupted run's micro-batches.
        prop_assert_eq!(
            step_micro_batches(&after, pos, w1, a1, micro),
            step_micro_batches(&before, stop * b1, w1, a1, micro)
        );
    }

    #[test]
    fn two_ranks_equal_two_accumulation_steps(
        seed in any::<u64>(), len in 1usize..50, micro in 1usize..6, step in 0u64..50,
    ) {
        let s = TrainStream::new(seed, len);
        prop_assert_eq!(
            step_micro_batches(&s, step * 2 * micro as u64, 2, 1, micro),
            step_micro_batches(&s, step * 2 * micro as u64, 1, 2, micro)
        );
        for k in 0..2 {
            prop_assert_eq!(
                s.micro_batch(step, k, 2, 1, micro, 0),
                s.micro_batch(step, 0, 1, 2, micro, k)
            );
        }
    }

    #[test]
    fn eval_shards_partition_the_test_split(len in 0usize..200, world in 1usize..9) {
        let mut all = Vec::new();
        let mut sizes = Vec::new();
        for r in 0..world {
            let shard = eval_shard(len, r, world);
            sizes.push(shard.len());
            all.extend(shard);
        }
        prop_assert_eq!(all, (0..len).collect::<Vec<_>>());
        let (lo, hi) = (sizes.iter().min().copied(), sizes.iter().max().copied());
        prop_assert!(hi.unwrap_or(0) - lo.unwrap_or(0) <= 1);
    }
}

#[test]
fn epochs_are_different_permutations() {
    let p0 = epoch_permutation(42, 0, 1000);
    let p1 = epoch_permutation(42, 1, 1000);
    let mut sorted = p0.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_ne!(p0, p1);
    assert_ne!(p0, epoch_permutation(43, 0, 1000));
    assert_eq!(p0, epoch_permutation(42, 0, 1000));
}

#[test]
fn an_epoch_tail_continues_into_the_next_epoch() {
    let s = TrainStream::new(1, 5);
    let mb = s.micro_batch(1, 0, 1, 1, 3, 0); // positions 3..6
    assert_eq!(mb.iter().map(|r| r.epoch).collect::<Vec<_>>(), [0, 0, 1]);
    assert_eq!(s.epoch_of(5), 1);
}
