//! `swinfc bench probe --backend wgpu` as a test: one training step of a small SwinFC on Burn's
//! wgpu backend (CubeBackend with fusion, the CUDA build's code path) through Mesa's software
//! Vulkan driver, and on the CPU from the same weights and batch, compared stage by stage: the
//! forward trace, the losses, every parameter's gradient, the flat buffer, the device sums, the
//! norm, the clipped gradient and the updated weights. Built only with `--features wgpu`.
//!
//! Its last stage is one token, with drop-path on: the shapes where Burn 0.21's fusion was found
//! computing wrongly (swinfc-model's tests/wgpu.rs has each case).
#![cfg(feature = "wgpu")]

use swinfc_bench::BenchSettings;
use swinfc_bench::probe::probe_wgpu;
use swinfc_model::{LossConfig, ModelConfig};
use swinfc_train::config::Precision;

/// With Burn's fusion (as training runs) and without it.
#[test]
fn a_training_step_on_wgpu_agrees_with_the_cpu_at_every_stage() {
    let cfg = ModelConfig {
        img_size: 32,
        embed_dim: 8,
        branch_dim: 16,
        ea_memory: 4,
        num_classes: 4,
        drop_path: 0.2,
        ..ModelConfig::preset("tiny").expect("a preset")
    };
    let settings = BenchSettings {
        micro_batch: 2,
        steps: 1,
        warmup: 0,
        seed: 0,
        precision: Precision::Fp32,
    };
    for fusion in [true, false] {
        let report = probe_wgpu(&cfg, &LossConfig::new(), &settings, 1.0, fusion).expect("the probe runs");
        eprint!("{}", report.table());
        assert!(report.first_parting().is_none(), "{}", report.table());
    }
}
