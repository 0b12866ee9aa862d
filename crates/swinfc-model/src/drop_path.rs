//! Stochastic depth whose randomness is keyed, not drawn from a global RNG.
//!
//! A key is derived by the trainer from (seed, step, micro-batch); each residual branch mixes in
//! its own stream number. The same sample therefore drops the same branches whatever the number
//! of processes or threads, which is what makes N-worker and 1-worker training agree.

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// Per-sample keep mask scaled by 1/(1-p), as timm's `drop_path`; identity without a key.
pub fn drop_path<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    rate: f64,
    key: Option<u64>,
    stream: u64,
) -> Tensor<B, D> {
    let Some(key) = key else { return x };
    if rate <= 0.0 {
        return x;
    }
    let batch = x.dims()[0];
    let mut state = key ^ splitmix64(stream.wrapping_add(0x5157_4146_4344_5250));
    let keep_scale = (1.0 / (1.0 - rate)) as f32;
    let mask: Vec<f32> = (0..batch)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let u = (splitmix64(state) >> 40) as f64 / (1u64 << 24) as f64;
            if u < rate { 0.0 } else { keep_scale }
        })
        .collect();
    let mut shape = [1usize; D];
    shape[0] = batch;
    x.clone() * Tensor::<B, D>::from_data(TensorData::new(mask, shape), &x.device())
}

/// SplitMix64's output function: a cheap, well-mixed hash of a 64-bit state.
pub fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
