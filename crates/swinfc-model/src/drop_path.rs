//! Stochastic depth whose randomness is keyed, not drawn from a global RNG.
//!
//! A key is derived by the trainer from (seed, step, micro-batch); each residual branch mixes in
//! its own stream number. The same sample therefore drops the same branches whatever the number
//! of processes or threads, which is what makes N-worker and 1-worker training agree.

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// Every residual branch's per-sample keep mask for one forward pass, scaled by 1/(1-p) as
/// timm's `drop_path`. They are computed on the host and uploaded as one tensor, so that a pass
/// costs one upload rather than one per branch (48 on Swin-B, each a wait on a GPU).
pub struct DropMasks<B: Backend> {
    /// [2·blocks, batch]: row 2i is block i's attention branch, row 2i + 1 its MLP branch.
    masks: Tensor<B, 2>,
}

impl<B: Backend> DropMasks<B> {
    /// `rates[i]`: block i's drop rate (a block of rate 0 gets rows of ones, never applied).
    /// `None` when no rate is above 0: nothing would be dropped, so nothing is uploaded.
    pub fn new(key: u64, rates: &[f64], batch: usize, device: &B::Device) -> Option<Self> {
        if rates.iter().all(|&r| r <= 0.0) {
            return None;
        }
        let streams = 2 * rates.len();
        let values = (0..streams)
            .flat_map(|stream| keep_factors(key, rates[stream / 2], stream as u64, batch))
            .collect();
        Some(Self {
            masks: Tensor::from_data(TensorData::new(values, [streams, batch]), device),
        })
    }
}

/// `x` [batch, …] with stream `stream`'s samples dropped; `x` itself without masks (evaluation)
/// or at rate 0.
pub fn drop_path<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    rate: f64,
    masks: Option<&DropMasks<B>>,
    stream: usize,
) -> Tensor<B, D> {
    let Some(masks) = masks else { return x };
    if rate <= 0.0 {
        return x;
    }
    let mut shape = [1usize; D];
    shape[0] = x.dims()[0];
    x * masks.masks.clone().narrow(0, stream, 1).reshape(shape)
}

/// One stream's factors: 0 for a dropped sample, 1/(1-rate) for a kept one.
fn keep_factors(key: u64, rate: f64, stream: u64, batch: usize) -> Vec<f32> {
    if rate <= 0.0 {
        return vec![1.0; batch];
    }
    let mut state = key ^ splitmix64(stream.wrapping_add(0x5157_4146_4344_5250));
    let keep_scale = (1.0 / (1.0 - rate)) as f32;
    (0..batch)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let u = (splitmix64(state) >> 40) as f64 / (1u64 << 24) as f64;
            if u < rate { 0.0 } else { keep_scale }
        })
        .collect()
}

/// SplitMix64's output function: a cheap, well-mixed hash of a 64-bit state.
pub fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::backend::flex::FlexDevice;

    use super::*;

    #[test]
    fn no_masks_are_made_when_every_rate_is_zero() {
        assert!(DropMasks::<Flex>::new(7, &[0.0, 0.0, 0.0], 4, &FlexDevice).is_none());
        assert!(DropMasks::<Flex>::new(7, &[0.0, 0.1], 4, &FlexDevice).is_some());
    }

    /// Each sample of a branch is dropped (0) or kept and scaled by 1/(1 − p), the same way for
    /// the same key; a block of rate 0 in the same pass passes through.
    #[test]
    fn a_branch_drops_or_scales_whole_samples_by_its_key() {
        let (rate, batch) = (0.5, 64);
        let x = Tensor::<Flex, 2>::ones([batch, 3], &FlexDevice);
        let masks = |key| DropMasks::<Flex>::new(key, &[0.0, rate], batch, &FlexDevice).unwrap();
        let rows = |key, stream, rate| -> Vec<f32> {
            let y = drop_path(x.clone(), rate, Some(&masks(key)), stream);
            y.into_data().to_vec().unwrap()
        };
        let dropped = rows(11, 2, rate);
        for sample in dropped.chunks_exact(3) {
            assert!(sample == [0.0; 3] || sample == [2.0; 3], "{sample:?}");
        }
        assert!(dropped.contains(&0.0) && dropped.contains(&2.0));
        assert_eq!(dropped, rows(11, 2, rate));
        assert_ne!(dropped, rows(12, 2, rate));
        assert_eq!(rows(11, 0, 0.0), vec![1.0; 3 * batch]);
    }
}
