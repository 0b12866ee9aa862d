//! SGD with momentum over a flat gradient buffer, with the two learning-rate groups of the spec.
//!
//! Gradients travel between workers as one flat buffer in a fixed parameter order (the model's
//! visit order, identical in every process). The update is torch's `SGD(momentum, dampening=0,
//! weight_decay)`: v ← μ·v + (g + λ·p); p ← p − lr·v. It is written here rather than taken from
//! Burn so that momentum lives in the same flat order and checkpoints by parameter name.

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};
use swinfc_model::weights::{StateDict, WeightsError, load_state_dict, state_dict};
use swinfc_model::{ParamGroup, SwinFc};

use crate::config::Precision;
use crate::sync::{CheckError, ELEMENT_TOLERANCE};

/// One parameter in flat order.
#[derive(Debug, Clone)]
pub struct ParamSlot {
    pub id: ParamId,
    /// PyTorch name (`layers.0.blocks.1.attn.qkv.weight`).
    pub name: String,
    pub offset: usize,
    pub numel: usize,
    pub group: ParamGroup,
}

/// The flat layout of a model's parameters, in visit order.
#[derive(Debug, Clone)]
pub struct FlatLayout {
    pub slots: Vec<ParamSlot>,
    pub len: usize,
}

impl FlatLayout {
    pub fn of<B: Backend>(model: &SwinFc<B>) -> Self {
        let mut offset = 0;
        let slots = model
            .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
            .into_iter()
            .map(|s| {
                let numel = s.shape.num_elements();
                let slot = ParamSlot {
                    id: s.tensor_id.expect("collected parameters carry their id"),
                    group: ParamGroup::of(&s.full_path()),
                    name: s.full_path(),
                    offset,
                    numel,
                };
                offset += numel;
                slot
            })
            .collect();
        Self { slots, len: offset }
    }
}

/// Concatenates the gradients in flat order (zeros for a parameter without one): [len], in f32
/// whatever the model computes in, because the sum over ranks and the update are done in f32.
pub fn flatten_grads<B: AutodiffBackend>(
    model: &SwinFc<B>,
    grads: &GradientsParams,
) -> Tensor<B::InnerBackend, 1> {
    let mut parts = Vec::new();
    model.visit(&mut CollectGrads::<B> {
        grads,
        parts: &mut parts,
    });
    Tensor::cat(parts, 0).cast(FloatDType::F32)
}

struct CollectGrads<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    parts: &'a mut Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for CollectGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let n = param.shape().num_elements();
        let grad = match self.grads.get::<B::InnerBackend, D>(param.id) {
            Some(g) => g.reshape([n]),
            None => Tensor::zeros([n], &param.val().device()),
        };
        self.parts.push(grad);
    }
}

/// Host values → a flat f32 tensor on `device` (f32 even where the device's default is bf16).
pub fn flat_tensor<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), (device, DType::F32))
}

/// The copy of `model` that runs forward and backward when the run computes in a lower precision
/// than the f32 master weights the optimizer updates: the same parameters (and ids, so its
/// gradients flatten in the same order) cast to `precision`. `None` for fp32: the model itself computes.
pub fn compute_copy<B: AutodiffBackend>(model: &SwinFc<B>, precision: Precision) -> Option<SwinFc<B>> {
    let dtype = match precision {
        Precision::Fp32 => return None,
        Precision::Bf16 => FloatDType::BF16,
    };
    Some(model.clone().map(&mut CastParams { dtype }))
}

struct CastParams {
    dtype: FloatDType,
}

impl<B: AutodiffBackend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        // A new leaf: gradients stop here rather than flowing into the f32 master copy.
        let cast = Tensor::from_inner(tensor.inner().cast(self.dtype)).require_grad();
        Param::from_mapped_value(id, cast, mapper)
    }
}

/// Hyper-parameters of one update.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    pub lr_backbone: f64,
    pub lr_new: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

/// Momentum buffers, flat per parameter in visit order, and that order's layout (fixed for a
/// model, so it is computed once rather than every step).
pub struct Sgd<B: AutodiffBackend> {
    layout: FlatLayout,
    velocity: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> Sgd<B> {
    pub fn new(layout: FlatLayout, device: &burn::tensor::Device<B::InnerBackend>) -> Self {
        let velocity = layout
            .slots
            .iter()
            // f32 whatever the device's default float type: momentum accumulates small updates.
            .map(|s| Tensor::zeros([s.numel], (device, DType::F32)))
            .collect();
        Self { layout, velocity }
    }

    pub fn layout(&self) -> &FlatLayout {
        &self.layout
    }

    /// Applies one update with the (already averaged and clipped) flat gradient.
    pub fn step(
        &mut self,
        model: SwinFc<B>,
        grad: Tensor<B::InnerBackend, 1>,
        settings: StepSettings,
    ) -> SwinFc<B> {
        self.update(model, grad, settings, false).0
    }

    /// [`Sgd::step`], and every updated parameter and momentum buffer compared with the same
    /// update computed on the host from copies of the same values (the device check of
    /// [`crate::sync`]): a parameter that differs by more than 1e-6 relative is an error naming it.
    pub fn step_checked(
        &mut self,
        model: SwinFc<B>,
        grad: Tensor<B::InnerBackend, 1>,
        settings: StepSettings,
    ) -> Result<SwinFc<B>, CheckError> {
        match self.update(model, grad, settings, true) {
            (model, None) => Ok(model),
            (_, Some(mismatch)) => Err(mismatch),
        }
    }

    fn update(
        &mut self,
        model: SwinFc<B>,
        grad: Tensor<B::InnerBackend, 1>,
        settings: StepSettings,
        check: bool,
    ) -> (SwinFc<B>, Option<CheckError>) {
        let mut update = Update {
            layout: &self.layout,
            grad,
            velocity: &mut self.velocity,
            settings,
            index: 0,
            check,
            mismatch: None,
        };
        let model = model.map(&mut update);
        (model, update.mismatch)
    }

    /// Momentum buffers by parameter name, in PyTorch layout (as `model.safetensors`).
    pub fn state_dict(&self, model: &SwinFc<B>) -> StateDict {
        let as_values = model.valid().map(&mut ReplaceValues::<B::InnerBackend> {
            values: &self.velocity,
            index: 0,
        });
        state_dict(&as_values)
    }

    /// Restores buffers written by [`Sgd::state_dict`]; every parameter must be present.
    pub fn load_state_dict(model: &SwinFc<B>, dict: &StateDict) -> Result<Self, WeightsError> {
        let (loaded, report) = load_state_dict(model.valid(), dict)?;
        if let Some(key) = report.initialised.first() {
            return Err(WeightsError::MissingBackbone { key: key.clone() });
        }
        let mut velocity = Vec::new();
        loaded.visit(&mut CollectValues { out: &mut velocity });
        Ok(Self {
            layout: FlatLayout::of(model),
            velocity,
        })
    }
}

struct Update<'a, B: AutodiffBackend> {
    layout: &'a FlatLayout,
    grad: Tensor<B::InnerBackend, 1>,
    velocity: &'a mut Vec<Tensor<B::InnerBackend, 1>>,
    settings: StepSettings,
    index: usize,
    /// Compare each parameter's update with the host's; the first that differs is kept.
    check: bool,
    mismatch: Option<CheckError>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let slot = &self.layout.slots[self.index];
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let s = self.settings;
        let lr = match slot.group {
            ParamGroup::Backbone => s.lr_backbone,
            ParamGroup::New => s.lr_new,
        };
        // The update is computed in f32 like the gradient and momentum, and stored back in the
        // parameter's own type (a no-op for the f32 master weights of training).
        let dtype = tensor.dtype();
        let p = tensor.inner().reshape([slot.numel]).cast(FloatDType::F32);
        let g = self.grad.clone().narrow(0, slot.offset, slot.numel);
        let d = if s.weight_decay != 0.0 {
            g + p.clone().mul_scalar(s.weight_decay)
        } else {
            g
        };
        let before = self.check.then(|| (p.clone(), self.velocity[self.index].clone()));
        let v = self.velocity[self.index].clone().mul_scalar(s.momentum) + d;
        let p_new = p - v.clone().mul_scalar(lr);
        if let Some((p, v_old)) = before.filter(|_| self.mismatch.is_none()) {
            let g = self.grad.clone().narrow(0, slot.offset, slot.numel);
            let host = [p, v_old, g, p_new.clone(), v.clone()].map(host_f32);
            self.mismatch = check_update(&slot.name, &host, lr, s);
        }
        self.velocity[self.index] = v;
        self.index += 1;
        let updated = Tensor::from_inner(p_new.reshape(shape).cast(dtype)).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// One parameter's update, `[p, v, g, p_new, v_new]` read back from the device, against the
/// same update in f32 on the host.
fn check_update(
    name: &str,
    [p, v, g, p_new, v_new]: &[Vec<f32>; 5],
    lr: f64,
    s: StepSettings,
) -> Option<CheckError> {
    let (lr, momentum, decay) = (lr as f32, s.momentum as f32, s.weight_decay as f32);
    for i in 0..p.len() {
        let v_want = momentum * v[i] + (g[i] + decay * p[i]);
        let p_want = p[i] - lr * v_want;
        let close = |got: f32, want: f32, scale: f32| (got - want).abs() <= ELEMENT_TOLERANCE as f32 * scale;
        let scale = p[i].abs() + (lr * v_want).abs() + f32::MIN_POSITIVE;
        if !close(v_new[i], v_want, v_want.abs() + g[i].abs() + f32::MIN_POSITIVE)
            || !close(p_new[i], p_want, scale)
        {
            return Some(CheckError {
                stage: "SGD update",
                parameter: name.to_string(),
                detail: format!(
                    "element {i}: parameter {:e} against {p_want:e}, momentum {:e} against {v_want:e}",
                    p_new[i], v_new[i]
                ),
            });
        }
    }
    None
}

fn host_f32<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data()
        .to_vec::<f32>()
        .expect("parameters are updated in f32")
}

struct ReplaceValues<'a, B: Backend> {
    values: &'a [Tensor<B, 1>],
    index: usize,
}

impl<B: Backend> ModuleMapper<B> for ReplaceValues<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let value = self.values[self.index].clone().reshape(tensor.shape());
        self.index += 1;
        Param::from_mapped_value(id, value, mapper)
    }
}

struct CollectValues<'a, B: Backend> {
    out: &'a mut Vec<Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for CollectValues<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let n = param.shape().num_elements();
        self.out.push(param.val().reshape([n]));
    }
}

/// Linear warmup to `base` over `warmup` steps, then cosine to 0 at `total` (step is 0-based).
pub fn learning_rate(step: u64, base: f64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    0.5 * base * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
}
