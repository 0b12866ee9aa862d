//! `swinfc bench probe`: one training step on a device backend and on the CPU (Flex) from the
//! same weights and batch, compared stage by stage, so a device that computes wrong numbers shows
//! where it parts from the CPU. CUDA training once did not learn and nobody knew why
//! (performance.md §3): the stages follow a gradient from `backward` to the updated weights, and
//! the device's own sums are compared with the host's f64 sums of the same values.
//!
//! With `--backend cpu` both sides are Flex: every difference must be zero, which checks the probe.

use burn::backend::{Autodiff, Flex, flex::FlexDevice};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};
use serde::Serialize;
use swinfc_comm::LocalCollective;
use swinfc_model::weights::{load_state_dict, state_dict};
use swinfc_model::{LossConfig, ModelConfig, SwinFc, TrainBackend, swinfc_loss};
use swinfc_train::TrainError;
use swinfc_train::config::Precision;
use swinfc_train::optim::{FlatLayout, Sgd, StepSettings, flatten_grads};
use swinfc_train::step::loss_terms;
use swinfc_train::sync::GradSync;

use swinfc_data::Batch;

use crate::{BenchSettings, random_batch};

/// The `narrow`ed views (offset, length) whose sums of squares are compared: offsets aligned to
/// 512 bytes (CUDA's pitch) and not, lengths that are a multiple of the 4-wide vectors kernels
/// read and not; `HALF` stands for half the buffer. Each is cut to fit the buffer.
const HALF: usize = usize::MAX;
const NARROW_VIEWS: [(usize, usize); 10] = [
    (0, HALF),
    (1, HALF),
    (37, HALF),
    (128, HALF),
    (129, HALF),
    (0, 4096),
    (0, 4099),
    (0, 65536),
    (0, 65539),
    (128, 65536),
];

/// One compared stage.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    /// Largest absolute difference.
    pub max_abs: f64,
    /// Largest difference relative to the reference's magnitude (per tensor: its largest |value|).
    pub max_rel: f64,
    /// The tensor where `max_rel` is (`-` for a scalar).
    pub worst: String,
    /// Above this `max_rel`, the stage parts from the reference.
    pub tolerance: f64,
}

impl Stage {
    /// Differs beyond its tolerance (a NaN difference does).
    pub fn parts(&self) -> bool {
        self.max_rel.is_nan() || self.max_rel > self.tolerance
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub backend: String,
    pub precision: String,
    pub parameters: usize,
    pub elements: usize,
    pub stages: Vec<Stage>,
}

impl ProbeReport {
    /// The first stage, in step order, that parts from its reference.
    pub fn first_parting(&self) -> Option<&Stage> {
        self.stages.iter().find(|s| s.parts())
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "probe: one step on {} ({}) against the CPU from the same weights and batch; {} \
             parameters, {} values\n{:<58} {:>11} {:>11} {:>9}  worst\n",
            self.backend,
            self.precision,
            self.parameters,
            self.elements,
            "stage",
            "max abs",
            "max rel",
            "tolerance"
        );
        for stage in &self.stages {
            s.push_str(&format!(
                "{:<58} {:>11.3e} {:>11.3e} {:>9.0e}  {}{}\n",
                stage.name,
                stage.max_abs,
                stage.max_rel,
                stage.tolerance,
                stage.worst,
                if stage.parts() { "  <- PARTS" } else { "" }
            ));
        }
        match self.first_parting() {
            Some(stage) => s.push_str(&format!(
                "first stage that parts: {} (at {})\n",
                stage.name, stage.worst
            )),
            None => s.push_str("every stage agrees within its tolerance\n"),
        }
        s
    }
}

/// What one side of the probe computed, read back to the host.
struct Side {
    /// The backbone's intermediate outputs in forward order: the patch embedding, each stage.
    trace: Vec<(String, Vec<f32>)>,
    /// The backbone's logits (before FSM), FSM's chosen token positions, the three stage heads'
    /// logits (after it).
    logits_swin: Vec<f32>,
    fsm_indices: Vec<i64>,
    logits_stages: Vec<f32>,
    losses: Vec<f32>,
    /// Each parameter's gradient straight from `backward` (its own shape, read in logical order).
    param_grads: Vec<Vec<f32>>,
    /// The flat buffer the step sums (`flatten_grads`), read back.
    flat: Vec<f32>,
    /// The device's sums of squares of that buffer: `powi_scalar(2).sum()`, `(x * x).sum()`.
    sum_sq_powi: f64,
    sum_sq_mul: f64,
    /// Sums of squares of `narrow`ed views of it, at [`NARROW_VIEWS`].
    narrow_sum_sq: Vec<f64>,
    /// The step's sync (the device path on a device, the host path on the CPU): norm, clipped.
    norm: f64,
    clipped: Vec<f32>,
    /// The updated parameters, by name.
    updated: Vec<(String, Vec<f32>)>,
}

/// Runs the probe of `model_cfg` on backend `D` (`backend` names it in the report).
pub fn probe<D: TrainBackend>(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
    max_norm: f64,
    backend: &str,
    device: &D::Device,
) -> Result<ProbeReport, TrainError> {
    type Cpu = Autodiff<Flex>;
    let reference = model_cfg.init::<Cpu>(settings.seed, &FlexDevice);
    let (model, _) = load_state_dict(
        model_cfg.init::<D>(settings.seed, device),
        &state_dict(&reference),
    )?;
    let layout = FlatLayout::of(&reference);
    let batch = random_batch(model_cfg, settings);
    let cpu = side::<Cpu>(
        reference,
        &batch,
        loss_cfg,
        Precision::Fp32,
        max_norm,
        GradSync::Host,
        &FlexDevice,
    )?;
    let dev = side::<D>(
        model,
        &batch,
        loss_cfg,
        settings.precision,
        max_norm,
        GradSync::Device(Box::new(LocalCollective)),
        device,
    )?;

    let vs_cpu = match settings.precision {
        // GELU's backward on CubeBackend is the tanh approximation's (burn.md §11): ~1e-3.
        Precision::Fp32 => 1e-2,
        Precision::Bf16 => 1e-1,
    };
    let names: Vec<&str> = layout.slots.iter().map(|s| s.name.as_str()).collect();
    let per_param = |flat: &[f32]| -> Vec<Vec<f32>> {
        layout
            .slots
            .iter()
            .map(|s| flat[s.offset..s.offset + s.numel].to_vec())
            .collect()
    };
    let host_sum_sq = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
    let mut stages: Vec<Stage> = dev
        .trace
        .iter()
        .zip(&cpu.trace)
        .map(|((name, got), (_, want))| compare(&format!("forward: {name}"), &[(name, got, want)], vs_cpu))
        .collect();
    stages.extend([
        compare(
            "forward: backbone logits",
            &[("logits_swin", &dev.logits_swin, &cpu.logits_swin)],
            vs_cpu,
        ),
        // FSM picks tokens by rank: once it picks others, nothing after it can agree.
        selection("forward: tokens FSM selects", &dev.fsm_indices, &cpu.fsm_indices),
        compare(
            "forward: stage heads' logits",
            &[("logits_stages", &dev.logits_stages, &cpu.logits_stages)],
            vs_cpu,
        ),
        compare("loss terms", &[("losses", &dev.losses, &cpu.losses)], vs_cpu),
        compare_tensors(
            "gradients from backward",
            &names,
            &dev.param_grads,
            &cpu.param_grads,
            vs_cpu,
        ),
        // Within the device: the flat buffer must hold exactly the values backward produced.
        compare_tensors(
            "device: flat buffer against its own per-parameter gradients",
            &names,
            &per_param(&dev.flat),
            &dev.param_grads,
            1e-6,
        ),
        compare_tensors(
            "flat buffer",
            &names,
            &per_param(&dev.flat),
            &per_param(&cpu.flat),
            vs_cpu,
        ),
    ]);
    let host = host_sum_sq(&dev.flat);
    stages.push(scalar(
        "device: powi_scalar(2).sum() of the flat buffer vs host f64",
        dev.sum_sq_powi,
        host,
        1e-4,
    ));
    stages.push(scalar(
        "device: (x * x).sum() of the flat buffer vs host f64",
        dev.sum_sq_mul,
        host,
        1e-4,
    ));
    for (view, got) in NARROW_VIEWS.iter().zip(&dev.narrow_sum_sq) {
        let (start, len) = narrow_range(dev.flat.len(), *view);
        let want = host_sum_sq(&dev.flat[start..start + len]);
        let name = format!("device: sum of squares of narrow({start}, {len}) vs host f64");
        stages.push(scalar(&name, *got, want, 1e-4));
    }
    stages.push(scalar(
        "gradient norm (device path vs CPU host path)",
        dev.norm,
        cpu.norm,
        vs_cpu,
    ));
    stages.push(compare_tensors(
        "averaged, clipped gradient",
        &names,
        &per_param(&dev.clipped),
        &per_param(&cpu.clipped),
        vs_cpu,
    ));
    let updated_names: Vec<&str> = cpu.updated.iter().map(|(n, _)| n.as_str()).collect();
    let values = |side: &Side| side.updated.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();
    stages.push(compare_tensors(
        "updated parameters",
        &updated_names,
        &values(&dev),
        &values(&cpu),
        vs_cpu,
    ));

    Ok(ProbeReport {
        backend: backend.to_string(),
        precision: format!("{:?}", settings.precision).to_lowercase(),
        parameters: layout.slots.len(),
        elements: layout.parameters(),
        stages,
    })
}

/// The start and length of `view` in a buffer of `len` values, cut to fit it.
fn narrow_range(len: usize, (offset, length): (usize, usize)) -> (usize, usize) {
    let start = offset.min(len.saturating_sub(1));
    let length = if length == HALF { len / 2 } else { length };
    (start, length.min(len - start).max(1))
}

/// Forward, losses, backward, flatten, sync and update of `model` on one side.
fn side<B: TrainBackend>(
    model: SwinFc<B>,
    batch: &Batch,
    loss_cfg: &LossConfig,
    precision: Precision,
    max_norm: f64,
    mut grad_sync: GradSync<B::InnerBackend>,
    device: &B::Device,
) -> Result<Side, TrainError> {
    let n = batch.shape[0];
    let images = Tensor::<B, 4>::from_data(TensorData::new(batch.images.clone(), batch.shape), device);
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(batch.labels.clone(), [n]), device);
    let mut sgd = Sgd::new(&model);
    let copy = sgd.compute_copy(&model, precision);
    let compute = copy.as_ref().unwrap_or(&model);
    let trace = backbone_trace(compute, images.clone());
    let output = compute.forward(images, Some(0x5EED));
    let logits_swin = host(output.logits_swin.clone().inner().flatten(0, 1));
    let fsm_indices = output
        .fsm_indices
        .clone()
        .inner()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("converted to i64");
    let logits_stages = output
        .logits_stages
        .iter()
        .flat_map(|l| host(l.clone().inner().flatten(0, 1)))
        .collect();
    let parts = swinfc_loss(&output, labels, loss_cfg);
    let losses = host(loss_terms(&parts));
    let grads = GradientsParams::from_grads(parts.total.backward(), compute);
    let mut param_grads = Vec::new();
    compute.visit(&mut ReadGrads::<B> {
        grads: &grads,
        out: &mut param_grads,
        backend: std::marker::PhantomData,
    });
    let flat = flatten_grads(compute, &grads, sgd.layout());
    let flat_host = host(flat.clone());
    let sum_sq_powi = f64::from(host(flat.clone().powi_scalar(2).sum())[0]);
    let sum_sq_mul = f64::from(host((flat.clone() * flat.clone()).sum())[0]);
    let narrow_sum_sq = NARROW_VIEWS
        .iter()
        .map(|&view| {
            let (start, len) = narrow_range(flat_host.len(), view);
            f64::from(host(flat.clone().narrow(0, start, len).powi_scalar(2).sum())[0])
        })
        .collect();

    let extra = Tensor::zeros([1], device);
    let synced = grad_sync
        .average(flat, extra, 1, max_norm, &mut LocalCollective, None)
        .map_err(TrainError::from)?;
    let clipped = host(synced.grad.clone());
    let step = StepSettings {
        lr_backbone: 0.01,
        lr_new: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
    };
    let updated = state_dict(&sgd.step(model, synced.grad, step))
        .into_iter()
        .map(|(name, t)| (name, t.data))
        .collect();
    Ok(Side {
        trace,
        logits_swin,
        fsm_indices,
        logits_stages,
        losses,
        param_grads,
        flat: flat_host,
        sum_sq_powi,
        sum_sq_mul,
        narrow_sum_sq,
        norm: synced.norm,
        clipped,
        updated,
    })
}

/// The patch embedding's and each stage's output of an evaluation-mode forward (no drop-path),
/// so a forward that parts is found at its first block.
fn backbone_trace<B: TrainBackend>(model: &SwinFc<B>, images: Tensor<B, 4>) -> Vec<(String, Vec<f32>)> {
    let flat = |x: Tensor<B, 4>| host(x.inner().flatten(0, 3));
    let mut x = model.patch_embed.forward(images);
    let mut trace = vec![("patch embedding".to_string(), flat(x.clone()))];
    for (i, layer) in model.layers.iter().enumerate() {
        x = layer.forward(x, None).0;
        trace.push((format!("stage {} output", i + 1), flat(x.clone())));
    }
    trace
}

/// Each parameter's gradient as `backward` left it (zeros where there is none), read in order.
struct ReadGrads<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    out: &'a mut Vec<Vec<f32>>,
    backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ReadGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let n = param.shape().num_elements();
        self.out
            .push(match self.grads.get::<B::InnerBackend, D>(param.id) {
                Some(g) => g
                    .cast(FloatDType::F32)
                    .into_data()
                    .to_vec::<f32>()
                    .expect("cast to f32"),
                None => vec![0.0; n],
            });
    }
}

fn host<B: burn::tensor::backend::Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.cast(FloatDType::F32)
        .into_data()
        .to_vec::<f32>()
        .expect("cast to f32")
}

/// Tensor by tensor: the largest difference relative to each reference tensor's largest value,
/// or to a thousandth of the stage's largest value where that is larger: a gradient that is zero
/// but for rounding (CA's conv biases shift a softmax's input along its axis) would otherwise
/// part on noise, while a tensor a thousand times smaller than the stage's largest that is wrong
/// by 1 % of itself or more still parts.
fn compare_tensors(
    stage: &str,
    names: &[&str],
    got: &[Vec<f32>],
    want: &[Vec<f32>],
    tolerance: f64,
) -> Stage {
    let triples: Vec<(&str, &Vec<f32>, &Vec<f32>)> = names
        .iter()
        .zip(got)
        .zip(want)
        .map(|((n, g), w)| (*n, g, w))
        .collect();
    let refs: Vec<(&str, &[f32], &[f32])> = triples
        .iter()
        .map(|(n, g, w)| (*n, g.as_slice(), w.as_slice()))
        .collect();
    compare(stage, &refs, tolerance)
}

fn compare(stage: &str, tensors: &[(&str, &[f32], &[f32])], tolerance: f64) -> Stage {
    let mut result = Stage {
        name: stage.to_string(),
        max_abs: 0.0,
        max_rel: 0.0,
        worst: "-".into(),
        tolerance,
    };
    let largest = |values: &[f32]| values.iter().fold(0f64, |m, w| m.max(f64::from(w.abs())));
    let floor = 1e-3
        * tensors
            .iter()
            .map(|(_, _, want)| largest(want))
            .fold(0f64, f64::max);
    for (name, got, want) in tensors {
        let scale = largest(want).max(floor);
        // A length mismatch or a NaN on one side only is as far apart as values get.
        let abs = if got.len() == want.len() {
            got.iter()
                .zip(*want)
                .map(|(g, w)| match (g.is_nan(), w.is_nan()) {
                    (false, false) => f64::from(g - w).abs(),
                    (true, true) => 0.0,
                    _ => f64::INFINITY,
                })
                .fold(0f64, f64::max)
        } else {
            f64::INFINITY
        };
        let rel = abs / scale.max(1e-30);
        result.max_abs = result.max_abs.max(abs);
        if rel > result.max_rel {
            result.max_rel = rel;
            result.worst = name.to_string();
        }
    }
    result
}

/// Discrete choices: the share of positions that differ, which must be none.
fn selection(stage: &str, got: &[i64], want: &[i64]) -> Stage {
    let differ = if got.len() == want.len() {
        got.iter().zip(want).filter(|(g, w)| g != w).count()
    } else {
        want.len().max(1)
    };
    Stage {
        name: stage.to_string(),
        max_abs: differ as f64,
        max_rel: differ as f64 / want.len().max(1) as f64,
        worst: format!("{differ} of {} differ", want.len()),
        tolerance: 0.0,
    }
}

fn scalar(stage: &str, got: f64, want: f64, tolerance: f64) -> Stage {
    let abs = if got.is_nan() == want.is_nan() && !got.is_nan() {
        (got - want).abs()
    } else if got.is_nan() && want.is_nan() {
        0.0
    } else {
        f64::INFINITY
    };
    Stage {
        name: stage.to_string(),
        max_abs: abs,
        max_rel: abs / want.abs().max(1e-30),
        worst: format!("{got:.6e} vs {want:.6e}"),
        tolerance,
    }
}

/// Both sides on the CPU: every stage must agree exactly (a check of the probe itself).
pub fn probe_cpu(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
    max_norm: f64,
) -> Result<ProbeReport, TrainError> {
    probe::<Autodiff<Flex>>(model_cfg, loss_cfg, settings, max_norm, "cpu (flex)", &FlexDevice)
}

/// Burn's wgpu backend (CubeBackend, as CUDA) against the CPU: the GPU code path on a machine
/// without a GPU (Mesa's lavapipe). fp32 only. `fusion`: through Burn's fusion, as training
/// runs, or every operation its own kernel.
#[cfg(feature = "wgpu")]
pub fn probe_wgpu(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
    max_norm: f64,
    fusion: bool,
) -> Result<ProbeReport, TrainError> {
    use burn::backend::{Wgpu, wgpu::WgpuDevice};
    use swinfc_model::backend::WgpuUnfused;
    let device = WgpuDevice::default();
    match fusion {
        true => probe::<Autodiff<Wgpu>>(model_cfg, loss_cfg, settings, max_norm, "wgpu", &device),
        false => probe::<Autodiff<WgpuUnfused>>(
            model_cfg,
            loss_cfg,
            settings,
            max_norm,
            "wgpu, no fusion",
            &device,
        ),
    }
}

/// GPU 0 against the CPU, set up for `settings.precision` as a worker is; without `fusion`,
/// every operation is its own kernel (fp32 only).
#[cfg(feature = "cuda")]
pub fn probe_cuda(
    model_cfg: &ModelConfig,
    loss_cfg: &LossConfig,
    settings: &BenchSettings,
    max_norm: f64,
    fusion: bool,
) -> Result<ProbeReport, TrainError> {
    use burn::backend::Cuda;
    use swinfc_model::backend::CudaUnfused;
    let device = swinfc_train::worker::cuda_device(settings.precision)?;
    match fusion {
        true => probe::<Autodiff<Cuda>>(model_cfg, loss_cfg, settings, max_norm, "cuda:0", &device),
        false => probe::<Autodiff<CudaUnfused>>(
            model_cfg,
            loss_cfg,
            settings,
            max_norm,
            "cuda:0, no fusion",
            &device,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> (ModelConfig, BenchSettings) {
        let cfg = ModelConfig {
            drop_path: 0.1,
            ..ModelConfig::minimal()
        };
        let settings = BenchSettings {
            micro_batch: 2,
            steps: 1,
            warmup: 0,
            seed: 3,
            precision: Precision::Fp32,
        };
        (cfg, settings)
    }

    /// CPU against CPU: what both sides compute alike is equal to the bit, the device-path sums
    /// (f32 on the "device", f64 on the host) agree within their tolerance, and nothing parts.
    #[test]
    fn the_cpu_agrees_with_itself_at_every_stage() {
        let (cfg, settings) = minimal();
        let report = probe_cpu(&cfg, &LossConfig::new(), &settings, 1.0).expect("a step");
        assert!(report.first_parting().is_none(), "{}", report.table());
        let exact = [
            "forward: backbone logits",
            "forward: tokens FSM selects",
            "loss terms",
            "gradients from backward",
            "flat buffer",
        ];
        for stage in report.stages.iter().filter(|s| exact.contains(&s.name.as_str())) {
            assert_eq!(stage.max_abs, 0.0, "{}", report.table());
        }
        assert!(
            report.stages.iter().any(|s| s.name.contains("narrow(129,")),
            "{}",
            report.table()
        );
        assert!(
            report
                .table()
                .ends_with("every stage agrees within its tolerance\n")
        );
    }

    /// What a broken device looks like to the comparison: a NaN on one side, a value turned into
    /// its sign, a buffer of the wrong length.
    #[test]
    fn a_difference_beyond_tolerance_parts_and_names_the_tensor() {
        let want = [0.5f32, -2.0, 0.25];
        let same = compare("s", &[("a", &want, &want)], 1e-6);
        assert!(!same.parts() && same.max_abs == 0.0);
        for got in [
            vec![0.5f32, f32::NAN, 0.25],
            vec![1.0, -1.0, 1.0],
            vec![0.5, -2.0],
        ] {
            let stage = compare("s", &[("a", &want, &want), ("b", &got, &want)], 1e-2);
            assert!(stage.parts(), "{got:?}: {stage:?}");
            assert_eq!(stage.worst, "b");
        }
        // Rounding noise on a gradient that is zero does not part; a small tensor that is wrong does.
        let (zero, noise) = ([1e-9f32, -1e-9], [3e-9f32, 0.0]);
        let stage = compare("s", &[("a", &want, &want), ("zero", &noise, &zero)], 1e-2);
        assert!(!stage.parts(), "{stage:?}");
        let (small, off) = ([1e-2f32], [1.5e-2f32]);
        let stage = compare("s", &[("a", &want, &want), ("small", &off, &small)], 1e-2);
        assert!(stage.parts() && stage.worst == "small", "{stage:?}");
        assert!(scalar("n", f64::NAN, 1.0, 1e-2).parts());
        assert!(!scalar("n", 1.0 + 1e-6, 1.0, 1e-4).parts());
        assert!(scalar("n", 0.5, 1.0, 1e-4).parts());
    }
}
