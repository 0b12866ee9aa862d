//! The GPU worker's training step on Burn's wgpu backend (CubeBackend with fusion, the CUDA
//! build's code path) through Mesa's software Vulkan driver, against the CPU worker's from the
//! same weights and batch: `swinfc bench probe --backend wgpu` as a test (one step compared stage
//! by stage: the forward trace, the losses, every parameter's gradient, the flat buffer, the
//! device sums, the norm, the clipped gradient and the updated weights), and two whole steps of
//! the trainer (device-side sync with its first-step check, against the host path). Built only
//! with `--features wgpu`.
//!
//! Its last stage is one token, with drop-path on: the shapes where Burn 0.21's fusion was found
//! computing wrongly (swinfc-model's tests/wgpu.rs has each case).
#![cfg(feature = "wgpu")]

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Flex, Wgpu, flex::FlexDevice};
use burn::module::AutodiffModule;
use swinfc_bench::probe::probe_wgpu;
use swinfc_bench::{BenchSettings, random_batch, trainer};
use swinfc_comm::LocalCollective;
use swinfc_model::weights::{StateDict, load_state_dict, state_dict};
use swinfc_model::{LossConfig, ModelConfig, SwinFc, TrainBackend};
use swinfc_train::config::Precision;
use swinfc_train::step::Losses;
use swinfc_train::sync::GradSync;

/// The minimal model (its last stage one token), with drop-path on.
fn small() -> (ModelConfig, BenchSettings) {
    let cfg = ModelConfig {
        drop_path: 0.2,
        ..ModelConfig::minimal()
    };
    let settings = BenchSettings {
        micro_batch: 2,
        steps: 1,
        warmup: 0,
        seed: 0,
        precision: Precision::Fp32,
    };
    (cfg, settings)
}

/// With Burn's fusion (as training runs) and without it.
#[test]
fn a_training_step_on_wgpu_agrees_with_the_cpu_at_every_stage() {
    let (cfg, settings) = small();
    for fusion in [true, false] {
        let report = probe_wgpu(&cfg, &LossConfig::new(), &settings, 1.0, fusion).expect("the probe runs");
        eprint!("{}", report.table());
        assert!(report.first_parting().is_none(), "{}", report.table());
    }
}

/// Two steps of the trainer: the losses within 1e-4 of the CPU's, and each tensor's change of
/// weights within 1e-3 of the CPU's largest change in it (the changes are small next to the
/// weights: compared as weights, a gradient 50 % off would hide under rounding).
#[test]
fn two_trainer_steps_on_wgpu_equal_the_cpus() {
    let (cfg, _) = small();
    let cpu_model = cfg.init::<Autodiff<Flex>>(5, &FlexDevice);
    let weights = state_dict(&cpu_model.valid());
    let gpu_model = cfg.init::<Autodiff<Wgpu>>(5, &WgpuDevice::default());
    let (gpu_model, _) = load_state_dict(gpu_model, &weights).expect("same architecture");
    fn two_steps<B: TrainBackend>(
        model: SwinFc<B>,
        grad_sync: GradSync<B::InnerBackend>,
        device: &B::Device,
    ) -> (Vec<Losses>, StateDict) {
        let (cfg, settings) = small();
        let mut trainer = trainer(model, &LossConfig::new(), &settings, grad_sync, device);
        let batch = random_batch(&cfg, &settings);
        let losses = (0..2)
            .map(|step| {
                let batches = std::iter::once(Ok(batch.clone()));
                let outcome = trainer
                    .train_step(batches, step, false, &mut LocalCollective)
                    .expect("a finite step, and on wgpu the first step's device check passes");
                assert!(outcome.applied);
                outcome.losses
            })
            .collect();
        (losses, state_dict(&trainer.model().valid()))
    }
    let (cpu_losses, cpu) = two_steps(cpu_model, GradSync::Host, &FlexDevice);
    let device_sync = GradSync::Device(Box::new(LocalCollective));
    let (gpu_losses, gpu) = two_steps(gpu_model, device_sync, &WgpuDevice::default());
    for (g, c) in gpu_losses.iter().zip(&cpu_losses) {
        assert!(
            (g.total - c.total).abs() <= 1e-4 * c.total.abs(),
            "{g:?} against {c:?}"
        );
    }
    let mut off = Vec::new();
    for (name, c) in &cpu {
        let start = &weights[name].data;
        let change = |t: &[f32]| -> Vec<f32> { t.iter().zip(start).map(|(a, b)| a - b).collect() };
        let (c, g) = (change(&c.data), change(&gpu[name].data));
        let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = g.iter().zip(&c).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        if diff > 1e-3 * scale + 1e-8 {
            off.push(format!("{name}: {diff:e} of {scale:e}"));
        }
    }
    assert!(off.is_empty(), "{} of {} tensors: {off:#?}", off.len(), cpu.len());
}
