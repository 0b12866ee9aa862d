//! Benchmarks run by hand (`swinfc bench`, docs/benchmarks.md).
//!
//! `swinfc bench train-step`: the time of training steps on one worker (world size 1, so no
//! network time) on a fixed random batch. It runs [`Trainer::train_step`], the step
//! [`swinfc_train::train`] runs, in its profiling mode, so each phase is what training spends on
//! it per micro-batch. `swinfc bench ops`: the ops that step spends its time in, one at a time.
//! `swinfc bench probe` ([`probe`]): one step on a device against the CPU, stage by stage.
//!
//! Owns: the benchmark settings, timing and reports. Must not: train, read a dataset, or change
//! the step it times — it calls swinfc-train's, so a bench measures exactly what training runs.

pub mod probe;
pub mod threads;

use std::time::Instant;

use burn::nn::{LayerNormConfig, LinearConfig};
use burn::tensor::{Distribution, Tensor};
use serde::Serialize;
use serde_yaml::Value;
use swinfc_comm::LocalCollective;
use swinfc_config::{ConfigError, Section};
use swinfc_data::Batch;
use swinfc_metrics::record::Phases;
use swinfc_model::drop_path::splitmix64;
use swinfc_model::fused::{gelu, layer_norm, matmul, mean_dim, permute, softmax};
use swinfc_model::{LossConfig, ModelConfig, SwinFc, TrainBackend, model_and_loss_from_yaml};

use swinfc_train::TrainError;
use swinfc_train::config::{GradientSum, Precision, TrainSection};
use swinfc_train::optim::Sgd;
use swinfc_train::step::{StepConfig, Trainer};
use swinfc_train::sync::GradSync;

use crate::threads::{Snapshot, ThreadCpu};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub micro_batch: usize,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first (allocator, caches, kernel compilation on CUDA).
    pub warmup: usize,
    pub seed: u64,
    /// As `train.precision`: bf16 computes on a bf16 copy of the f32 weights.
    pub precision: Precision,
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
    /// Median of each phase over the timed steps (their meaning: [`swinfc_train::step`]).
    pub phases_median: Phases,
    /// Total loss and gradient norm of the last step: finite values show the step did real work.
    pub last_loss: f32,
    pub last_grad_norm: f64,
    /// CPU time per timed step of each thread that had some, busiest first (Linux only).
    pub thread_cpu_per_step: Vec<ThreadCpu>,
}

/// The parts of a run config a benchmark reads: `model:`, `loss:` and `train.micro_batch` (a
/// bench config needs no `data:` or `run:` section).
pub fn config_from_yaml(doc: &Value) -> Result<(ModelConfig, LossConfig, usize), ConfigError> {
    let (model, loss) = model_and_loss_from_yaml(doc)?;
    // Only `micro_batch` is read, so `finish` (unknown keys) is left to a training run's parse.
    let mut train = Section::new(doc.get("train"), "train")?;
    let micro_batch: std::num::NonZeroUsize = train.required("micro_batch")?;
    Ok((model, loss, micro_batch.get()))
}

impl BenchReport {
    /// The human-readable table; bench/torch/train_step.py prints the same rows (without the
    /// data and other phases, and the threads).
    pub fn table(&self) -> String {
        let p = &self.phases_median;
        // The busiest few by name; a CPU backend's pool is many threads of one name.
        let shown = 4;
        let mut threads: Vec<String> = self
            .thread_cpu_per_step
            .iter()
            .take(shown)
            .map(|t| format!("{} {:.4}", t.name, t.seconds))
            .collect();
        let rest = &self.thread_cpu_per_step[shown.min(self.thread_cpu_per_step.len())..];
        if !rest.is_empty() {
            let seconds: f64 = rest.iter().map(|t| t.seconds).sum();
            threads.push(format!("{} others {seconds:.4}", rest.len()));
        }
        let table = format!(
            "micro-batch {} at {}x{}, {:.2} M parameters, {} timed steps after {} warm-up\n\
             step seconds  median {:.4}  p10 {:.4}  p90 {:.4}  min {:.4}  max {:.4}\n\
             images/s      {:.2}\n\
             phases (median s)  data {:.4}  forward+loss {:.4}  backward {:.4}  grad sync+clip {:.4}  \
             optimizer {:.4}  other {:.4}\n",
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
            p.data_wait,
            p.forward,
            p.backward,
            p.grad_sync,
            p.optimizer,
            p.other,
        );
        format!("{table}CPU s per step by thread  {}\n", threads.join("  "))
    }
}

/// Runs `warmup + steps` training steps of the model of `model_cfg` on one random batch, summing
/// gradients through `grad_sync` as a worker on that backend does.
pub fn train_step<B: TrainBackend>(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
    grad_sync: GradSync<B::InnerBackend>,
    device: &B::Device,
) -> Result<BenchReport, TrainError> {
    let model = model_cfg.init::<B>(settings.seed, device);
    let mut trainer = trainer(model, loss_cfg, settings, grad_sync, device);
    time_steps(&mut trainer, &random_batch(model_cfg, settings), settings)
}

/// The CPU worker's step: Flex, gradients summed on the host.
pub fn train_step_cpu(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
) -> Result<BenchReport, TrainError> {
    use burn::backend::{Autodiff, Flex, flex::FlexDevice};
    train_step::<Autodiff<Flex>>(model_cfg, loss_cfg, settings, GradSync::Host, &FlexDevice)
}

/// The GPU worker's step on GPU 0: CUDA, gradients summed on the device, bf16 as in training.
#[cfg(feature = "cuda")]
pub fn train_step_cuda(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
) -> Result<BenchReport, TrainError> {
    use burn::backend::{Autodiff, Cuda};
    let device = swinfc_train::worker::cuda_device(settings.precision)?;
    let grad_sync = GradSync::Device(Box::new(LocalCollective));
    train_step::<Autodiff<Cuda>>(model_cfg, loss_cfg, settings, grad_sync, &device)
}

/// The GPU worker's step on Burn's wgpu backend: CubeBackend with fusion, as the CUDA build, on
/// any Vulkan device (Mesa's software driver on a machine without a GPU); gradients summed on
/// the device, fp32.
#[cfg(feature = "wgpu")]
pub fn train_step_wgpu(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
) -> Result<BenchReport, TrainError> {
    use burn::backend::{Autodiff, Wgpu};
    let grad_sync = GradSync::Device(Box::new(LocalCollective));
    train_step::<Autodiff<Wgpu>>(model_cfg, loss_cfg, settings, grad_sync, &Default::default())
}

/// A trainer of `model` that profiles its phases, with the paper's optimiser settings.
pub fn trainer<B: TrainBackend>(
    model: SwinFc<B>,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
    grad_sync: GradSync<B::InnerBackend>,
    device: &B::Device,
) -> Trainer<B> {
    let sgd = Sgd::new(&model);
    let b = settings.micro_batch;
    // The paper's optimiser settings (configs/cub.yaml); the values do not change the work done.
    let train = TrainSection {
        global_batch: b,
        micro_batch: b,
        total_steps: (settings.warmup + settings.steps) as u64,
        warmup_steps: 0,
        lr_backbone: 0.002,
        lr_new: 0.005,
        momentum: 0.9,
        weight_decay: 1e-4,
        grad_clip: 1.0,
        precision: settings.precision,
        gradient_sum: GradientSum::Device,
        pretrained: None,
        // A skipped step would be timed without its update: stop at the first.
        max_nonfinite_steps: 0,
    };
    let config = StepConfig {
        seed: settings.seed,
        grad_accum: 1,
        train,
        loss: loss_cfg.clone(),
        profile: true,
    };
    Trainer::new(model, sgd, grad_sync, config, 0, device.clone())
}

/// One micro-batch of images uniform in [-1, 1) (keyed by `settings.seed`; the values do not
/// change the work done). Labels repeat over a few classes so the contrastive loss has positive
/// pairs, as real batches do.
pub fn random_batch(model_cfg: &ModelConfig, settings: &BenchSettings) -> Batch {
    let (b, size) = (settings.micro_batch, model_cfg.img_size);
    let shape = [b, 3, size, size];
    let images = (0..shape.iter().product::<usize>() as u64)
        .map(|i| (splitmix64(settings.seed ^ splitmix64(i)) >> 40) as f32 / (1 << 23) as f32 - 1.0)
        .collect();
    Batch {
        images,
        labels: (0..b)
            .map(|i| (i % model_cfg.num_classes.min(4)) as i64)
            .collect(),
        shape,
        skipped: Vec::new(),
        indices: (0..b).collect(),
        seq: 0,
    }
}

/// Times `settings.warmup + settings.steps` steps of `trainer` on `batch`.
fn time_steps<B: TrainBackend>(
    trainer: &mut Trainer<B>,
    batch: &Batch,
    settings: &BenchSettings,
) -> Result<BenchReport, TrainError> {
    let mut timed = Vec::with_capacity(settings.steps);
    let mut last = None;
    let mut threads = None;
    for step in 0..settings.warmup + settings.steps {
        if step == settings.warmup {
            threads = Some(Snapshot::take());
        }
        let outcome = trainer.train_step(
            std::iter::once(Ok(batch.clone())),
            step as u64,
            false,
            &mut LocalCollective,
        )?;
        if step >= settings.warmup {
            timed.push((outcome.seconds, outcome.phases.clone()));
        }
        last = Some(outcome);
    }

    let median = |f: fn(&(f64, Phases)) -> f64| {
        let mut v: Vec<f64> = timed.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let mut seconds: Vec<f64> = timed.iter().map(|(s, _)| *s).collect();
    seconds.sort_by(f64::total_cmp);
    let step_median = percentile(&seconds, 0.5);
    Ok(BenchReport {
        micro_batch: settings.micro_batch,
        image_size: batch.shape[2],
        parameters: trainer.sgd().layout().parameters(),
        steps: settings.steps,
        warmup: settings.warmup,
        step_seconds_median: step_median,
        step_seconds_min: seconds.first().copied().unwrap_or(f64::NAN),
        step_seconds_max: seconds.last().copied().unwrap_or(f64::NAN),
        step_seconds_p10: percentile(&seconds, 0.1),
        step_seconds_p90: percentile(&seconds, 0.9),
        images_per_second: settings.micro_batch as f64 / step_median,
        phases_median: Phases {
            data_wait: median(|(_, p)| p.data_wait),
            forward: median(|(_, p)| p.forward),
            backward: median(|(_, p)| p.backward),
            grad_sync: median(|(_, p)| p.grad_sync),
            optimizer: median(|(_, p)| p.optimizer),
            other: median(|(_, p)| p.other),
        },
        last_loss: last.as_ref().map_or(f32::NAN, |o| o.losses.total),
        last_grad_norm: last.as_ref().map_or(f64::NAN, |o| o.grad_norm),
        thread_cpu_per_step: threads
            .map(|t| t.since())
            .unwrap_or_default()
            .into_iter()
            .map(|t| ThreadCpu {
                seconds: t.seconds / settings.steps as f64,
                ..t
            })
            .collect(),
    })
}

/// The ops that dominate the CPU train step, one at a time on the tiny config's shapes
/// (micro-batch 8, stage 1 and the stage-2 branch), forward + backward, each as the model computes
/// it (`swinfc_model::fused`; the linears are Burn's `Linear`): which kernels the step's time goes
/// to. bench/torch/ops.py times the same ops in PyTorch. Returns (op, median ms).
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
            op_ms(reps, &q, |x| matmul(x.clone(), x.swap_dims(2, 3))),
        ),
        (
            "window partition [8,32,32,32]",
            op_ms(reps, &tokens, |x| {
                permute(x.reshape([8, 8, 4, 8, 4, 32]), [0, 1, 3, 2, 4, 5]).reshape([8, 1024, 32])
            }),
        ),
        (
            "mean over tokens (dim 1) [8,256,256]",
            op_ms(reps, &branch, |x| mean_dim(x, 1).repeat_dim(1, 256)),
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
        // Named, so that the report's CPU time by thread tells the pool from the main thread.
        .thread_name(|i| format!("rayon-{i}"))
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
        assert_eq!(
            config_from_yaml(&doc).unwrap_err().key(),
            Some("train.micro_batch")
        );
    }

    fn tiny() -> (ModelConfig, BenchSettings) {
        let mut cfg = ModelConfig::preset("tiny").expect("preset");
        cfg.img_size = 32;
        cfg.embed_dim = 16;
        cfg.branch_dim = 32;
        let settings = BenchSettings {
            micro_batch: 2,
            steps: 2,
            warmup: 1,
            seed: 0,
            precision: Precision::Fp32,
        };
        (cfg, settings)
    }

    #[test]
    fn a_tiny_step_runs_and_reports_finite_times() {
        let (cfg, settings) = tiny();
        let r = train_step_cpu(&cfg, &LossConfig::new(), &settings).expect("finite steps");
        assert!(r.last_loss.is_finite() && r.last_grad_norm.is_finite());
        assert!(r.step_seconds_median > 0.0 && r.images_per_second > 0.0);
        assert!(r.step_seconds_min <= r.step_seconds_median && r.step_seconds_median <= r.step_seconds_max);
        let p = &r.phases_median;
        assert!(p.forward > 0.0 && p.backward > 0.0 && p.grad_sync > 0.0 && p.optimizer > 0.0);
    }

    /// The bench times the step training runs: from the same weights and batch, the bench's steps
    /// (profiled) and training's (not profiled) give bit-identical losses, norms and weights.
    #[test]
    fn the_bench_runs_the_training_step() {
        use burn::backend::{Autodiff, Flex, flex::FlexDevice};
        use swinfc_model::weights::{safetensors_bytes, state_dict};
        type B = Autodiff<Flex>;
        let (cfg, settings) = tiny();
        // One initialisation for both: `init` seeds the backend's global RNG, which tests running
        // in parallel share.
        let model = cfg.init::<B>(settings.seed, &FlexDevice);
        let batch = random_batch(&cfg, &settings);
        let loss = LossConfig::new();
        let mut bench = trainer(model.clone(), &loss, &settings, GradSync::Host, &FlexDevice);
        let report = time_steps(&mut bench, &batch, &settings).expect("finite steps");

        let sgd = Sgd::new(&model);
        let config = StepConfig {
            profile: false,
            ..bench.config().clone()
        };
        let mut training = Trainer::new(model, sgd, GradSync::Host, config, 0, FlexDevice);
        let mut last = None;
        for step in 0..(settings.warmup + settings.steps) as u64 {
            let micro_batches = std::iter::once(Ok(batch.clone()));
            last = Some(training.train_step(micro_batches, step, false, &mut LocalCollective));
        }
        let last = last.expect("steps ran").expect("finite steps");
        assert_eq!(
            (report.last_loss, report.last_grad_norm),
            (last.losses.total, last.grad_norm)
        );
        let bytes = |t: &Trainer<B>| safetensors_bytes(&state_dict(t.model()), None).expect("f32 tensors");
        assert!(bytes(&bench) == bytes(&training), "the weights differ");
    }

    /// The GPU workers' step (gradients, norm and clip on the device, its first step checked
    /// against the host) run through the same generic code on Flex trains like the CPU workers'
    /// host path: the same losses and weights within f32 summation differences.
    #[test]
    fn the_device_path_trains_like_the_host_path() {
        use burn::backend::{Autodiff, Flex, flex::FlexDevice};
        use swinfc_model::weights::state_dict;
        type B = Autodiff<Flex>;
        let (cfg, settings) = tiny();
        let model = cfg.init::<B>(settings.seed, &FlexDevice);
        let batch = random_batch(&cfg, &settings);
        let loss = LossConfig::new();
        let run = |grad_sync| {
            let mut trainer = trainer(model.clone(), &loss, &settings, grad_sync, &FlexDevice);
            let losses: Vec<(f32, f64)> = (0..4)
                .map(|step| {
                    let outcome = trainer
                        .train_step(
                            std::iter::once(Ok(batch.clone())),
                            step,
                            false,
                            &mut LocalCollective,
                        )
                        .expect("the device check passes on Flex");
                    (outcome.losses.total, outcome.grad_norm)
                })
                .collect();
            (losses, state_dict(trainer.model()))
        };
        let (host_losses, host) = run(GradSync::Host);
        let (device_losses, device) = run(GradSync::Device(Box::new(LocalCollective)));
        for ((hl, hn), (dl, dn)) in host_losses.iter().zip(&device_losses) {
            assert!((hl - dl).abs() <= 1e-4 * hl.abs(), "loss {hl} vs {dl}");
            assert!((hn - dn).abs() <= 1e-4 * hn, "norm {hn} vs {dn}");
        }
        for (name, h) in &host {
            let d = &device[name];
            let scale = h.data.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = h
                .data
                .iter()
                .zip(&d.data)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= 1e-4 * scale.max(1e-3), "{name}: {diff} (scale {scale})");
        }
    }
}
