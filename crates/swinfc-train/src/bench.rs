//! `swinfc bench train-step`: the time of one training step — forward, losses, backward, the
//! gradient flattening and host copy that feed the all-reduce, clipping and the flat SGD update —
//! on random inputs, with the same pieces [`crate::train`] uses, so the figure is what training
//! costs per micro-batch on one worker (world size 1, so no network time).

use std::time::Instant;

use burn::nn::{LayerNormConfig, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, ElementConversion, Int, Tensor, TensorData};
use serde::Serialize;
use serde_yaml::Value;
use swinfc_comm::LocalCollective;
use swinfc_model::fused::{gelu, layer_norm, softmax};
use swinfc_model::{
    ConfigError, LossConfig, ModelConfig, TrainBackend, model_and_loss_from_yaml, swinfc_loss,
};

use crate::optim::{FlatLayout, Sgd, StepSettings, flatten_grads};
use crate::sync::GradSync;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub micro_batch: usize,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first (allocator, caches, kernel compilation on CUDA).
    pub warmup: usize,
    pub seed: u64,
}

/// Seconds of each phase of one step.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StepPhases {
    /// Forward and the losses.
    pub forward: f64,
    /// Backward and the collection of gradients by parameter.
    pub backward: f64,
    /// Flattening to one buffer, the host copy the all-reduce reads, the norm and clipping.
    pub flatten: f64,
    /// The flat SGD update of every parameter.
    pub optimizer: f64,
}

impl StepPhases {
    pub fn total(&self) -> f64 {
        self.forward + self.backward + self.flatten + self.optimizer
    }
}

/// The timed steps of a run and their summary.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub micro_batch: usize,
    pub image_size: usize,
    pub parameters: usize,
    pub steps: usize,
    pub warmup: usize,
    pub step_seconds_median: f64,
    pub step_seconds_min: f64,
    pub step_seconds_max: f64,
    pub step_seconds_p10: f64,
    pub step_seconds_p90: f64,
    pub images_per_second: f64,
    /// Median of each phase over the timed steps.
    pub phases_median: StepPhases,
    /// Total loss of the last step: a finite value shows the step did real work.
    pub last_loss: f32,
}

/// The parts of a run config a benchmark reads: `model:`, `loss:` and `train.micro_batch` (a
/// bench config needs no `data:` or `run:` section).
pub fn config_from_yaml(doc: &Value) -> Result<(ModelConfig, LossConfig, usize), ConfigError> {
    let (model, loss) = model_and_loss_from_yaml(doc)?;
    let micro_batch = doc
        .get("train")
        .and_then(|t| t.get("micro_batch"))
        .ok_or_else(|| ConfigError::new("train.micro_batch", "missing"))?
        .as_u64()
        .filter(|&b| b > 0)
        .ok_or_else(|| ConfigError::new("train.micro_batch", "expected a positive integer"))?;
    Ok((model, loss, micro_batch as usize))
}

impl BenchReport {
    /// The human-readable table; bench/torch/train_step.py prints the same rows.
    pub fn table(&self) -> String {
        let p = &self.phases_median;
        format!(
            "micro-batch {} at {}x{}, {:.2} M parameters, {} timed steps after {} warm-up\n\
             step seconds  median {:.4}  p10 {:.4}  p90 {:.4}  min {:.4}  max {:.4}\n\
             images/s      {:.2}\n\
             phases (median s)  forward+loss {:.4}  backward {:.4}  grad flatten+clip {:.4}  optimizer {:.4}\n",
            self.micro_batch,
            self.image_size,
            self.image_size,
            self.parameters as f64 / 1e6,
            self.steps,
            self.warmup,
            self.step_seconds_median,
            self.step_seconds_p10,
            self.step_seconds_p90,
            self.step_seconds_min,
            self.step_seconds_max,
            self.images_per_second,
            p.forward,
            p.backward,
            p.flatten,
            p.optimizer,
        )
    }
}

/// Runs `warmup + steps` training steps of the model of `model_cfg` on one random batch.
pub fn train_step<B: TrainBackend>(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
    device: &B::Device,
) -> BenchReport {
    let (b, size) = (settings.micro_batch, model_cfg.img_size);
    let mut model = model_cfg.init::<B>(settings.seed, device);
    let layout = FlatLayout::of(&model);
    let parameters = layout.len;
    let mut sgd = Sgd::<B>::new(layout, device);
    let images = Tensor::<B, 4>::random([b, 3, size, size], Distribution::Normal(0.0, 1.0), device);
    // Labels repeat over a few classes so the contrastive loss has positive pairs, as real batches do.
    let labels: Vec<i64> = (0..b)
        .map(|i| (i % model_cfg.num_classes.min(4)) as i64)
        .collect();
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [b]), device);
    // The paper's optimiser settings (configs/cub.yaml); the values do not change the work done.
    let step_settings = StepSettings {
        lr_backbone: 0.002,
        lr_new: 0.005,
        momentum: 0.9,
        weight_decay: 1e-4,
    };

    let mut phases = Vec::with_capacity(settings.steps);
    let mut last_loss = f32::NAN;
    for step in 0..settings.warmup + settings.steps {
        let t0 = Instant::now();
        let out = model.forward(images.clone(), Some(step as u64));
        let parts = swinfc_loss(&out, labels.clone(), loss_cfg);
        // Reading the loss waits for the forward on asynchronous backends, as the trainer's
        // loss logging does.
        last_loss = parts.total.clone().into_scalar().elem::<f32>();
        let t1 = Instant::now();
        let grads = GradientsParams::from_grads(parts.total.backward(), &model);
        B::sync(device).expect("the device is healthy");
        let t2 = Instant::now();
        // A CPU worker's gradient path at world size 1: host copy, norm, clip.
        let synced = GradSync::Host
            .average(flatten_grads(&model, &grads), &[], 1, 1.0, &mut LocalCollective)
            .expect("world size 1 has no peers to fail");
        let t3 = Instant::now();
        model = sgd.step(model, synced.grad, step_settings);
        B::sync(device).expect("the device is healthy");
        let t4 = Instant::now();
        if step >= settings.warmup {
            phases.push(StepPhases {
                forward: (t1 - t0).as_secs_f64(),
                backward: (t2 - t1).as_secs_f64(),
                flatten: (t3 - t2).as_secs_f64(),
                optimizer: (t4 - t3).as_secs_f64(),
            });
        }
    }

    let mut totals: Vec<f64> = phases.iter().map(StepPhases::total).collect();
    totals.sort_by(f64::total_cmp);
    let phase_median = |f: fn(&StepPhases) -> f64| {
        let mut v: Vec<f64> = phases.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let median = percentile(&totals, 0.5);
    BenchReport {
        micro_batch: b,
        image_size: size,
        parameters,
        steps: settings.steps,
        warmup: settings.warmup,
        step_seconds_median: median,
        step_seconds_min: totals.first().copied().unwrap_or(f64::NAN),
        step_seconds_max: totals.last().copied().unwrap_or(f64::NAN),
        step_seconds_p10: percentile(&totals, 0.1),
        step_seconds_p90: percentile(&totals, 0.9),
        images_per_second: b as f64 / median,
        phases_median: StepPhases {
            forward: phase_median(|p| p.forward),
            backward: phase_median(|p| p.backward),
            flatten: phase_median(|p| p.flatten),
            optimizer: phase_median(|p| p.optimizer),
        },
        last_loss,
    }
}

/// The ops that dominate the CPU train step, one at a time on the tiny config's shapes
/// (micro-batch 8, stage 1 and the stage-2 branch), forward + backward: which kernels the step's
/// time goes to. bench/torch/ops.py times the same ops in PyTorch. Returns (op, median ms).
///
/// Each op's loss is `sum(op(x) * g)` with a fixed random `g`, so its backward starts from a
/// dense gradient, as inside the network (a bare `sum()` would start from a broadcast one).
pub fn ops<B: TrainBackend>(reps: usize, device: &B::Device) -> Vec<(&'static str, f64)> {
    let normal = Distribution::Normal(0.0, 1.0);
    let tokens = Tensor::<B, 3>::random([8, 1024, 32], normal, device);
    let hidden = Tensor::<B, 3>::random([8, 1024, 128], normal, device);
    let scores = Tensor::<B, 4>::random([512, 1, 16, 16], normal, device);
    let q = Tensor::<B, 4>::random([512, 1, 16, 32], normal, device);
    let branch = Tensor::<B, 3>::random([8, 256, 256], normal, device);
    let norm = LayerNormConfig::new(32).init::<B>(device);
    let fc1 = LinearConfig::new(32, 128).init::<B>(device);
    let fc2 = LinearConfig::new(128, 32).init::<B>(device);
    vec![
        (
            "layer_norm(32) [8,1024,32]",
            op_ms(reps, &tokens, |x| layer_norm(&norm, x)),
        ),
        (
            "linear 32->128->32 [8,1024,32]",
            op_ms(reps, &tokens, |x| fc2.forward(fc1.forward(x))),
        ),
        ("gelu [8,1024,128]", op_ms(reps, &hidden, gelu)),
        (
            "softmax(-1) [512,1,16,16]",
            op_ms(reps, &scores, |x| softmax(x, 3)),
        ),
        (
            "q@k^T [512,1,16,32]x[512,1,32,16]",
            op_ms(reps, &q, |x| x.clone().matmul(x.swap_dims(2, 3))),
        ),
        (
            "window partition [8,32,32,32]",
            op_ms(reps, &tokens, |x| {
                x.reshape([8, 8, 4, 8, 4, 32])
                    .permute([0, 1, 3, 2, 4, 5])
                    .reshape([8, 1024, 32])
            }),
        ),
        (
            "mean over tokens (dim 1) [8,256,256]",
            op_ms(reps, &branch, |x| x.mean_dim(1).repeat_dim(1, 256)),
        ),
        (
            "softmax(dim 1) [8,256,256]",
            op_ms(reps, &branch, |x| softmax(x, 1)),
        ),
    ]
}

fn op_ms<B: TrainBackend, const D: usize>(
    reps: usize,
    x: &Tensor<B, D>,
    op: impl Fn(Tensor<B, D>) -> Tensor<B, D>,
) -> f64 {
    let device = x.device();
    let g = Tensor::<B, D>::random(op(x.clone()).shape(), Distribution::Normal(0.0, 1.0), &device).detach();
    let run = || {
        let x = x.clone().detach().require_grad();
        let grads = (op(x.clone()) * g.clone()).sum().backward();
        let grad = x.grad(&grads).expect("x has a gradient");
        B::sync(&device).expect("the device is healthy");
        grad
    };
    run();
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            drop(run());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    percentile(&times, 0.5)
}

/// Linear interpolation between the closest ranks (numpy's default), on sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => {
            let pos = q * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

/// Sizes the thread pool that Burn's CPU backend (Flex) runs its kernels on: rayon's global pool.
/// Must run before the first tensor operation; fails if the pool already exists.
pub fn set_cpu_threads(threads: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
}

/// Threads in the pool the CPU kernels use.
pub fn cpu_threads() -> usize {
    rayon::current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.5);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert!((percentile(&v, 0.1) - 1.3).abs() < 1e-12);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn config_reads_micro_batch_and_rejects_its_absence() {
        let doc: Value = serde_yaml::from_str("{model: {preset: tiny}, train: {micro_batch: 8}}").unwrap();
        let (model, _, micro) = config_from_yaml(&doc).expect("valid");
        assert_eq!((model.img_size, micro), (128, 8));
        let doc: Value = serde_yaml::from_str("{model: {preset: tiny}}").unwrap();
        assert_eq!(config_from_yaml(&doc).unwrap_err().key, "train.micro_batch");
    }

    #[test]
    fn a_tiny_step_runs_and_reports_finite_times() {
        use burn::backend::{Autodiff, Flex, flex::FlexDevice};
        let mut cfg = ModelConfig::preset("tiny").expect("preset");
        cfg.img_size = 32;
        cfg.embed_dim = 16;
        cfg.branch_dim = 32;
        let settings = BenchSettings {
            micro_batch: 2,
            steps: 2,
            warmup: 1,
            seed: 0,
        };
        let r = train_step::<Autodiff<Flex>>(&cfg, &LossConfig::new(), &settings, &FlexDevice);
        assert!(r.last_loss.is_finite());
        assert!(r.step_seconds_median > 0.0 && r.images_per_second > 0.0);
        assert!(r.step_seconds_min <= r.step_seconds_median && r.step_seconds_median <= r.step_seconds_max);
    }
}
