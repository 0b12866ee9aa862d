//! SGD with momentum over flat buffers, with the two learning-rate groups of the spec.
//!
//! Gradients travel between workers as one flat buffer in a fixed parameter order (the model's
//! visit order, identical in every process). The master weights and the momentum are flat
//! buffers in the same layout, so the update is torch's `SGD(momentum, dampening=0,
//! weight_decay)`, v ← μ·v + (g + λ·p); p ← p − lr·v, as a few element-wise operations over the
//! whole model (one fused kernel under Burn's fusion), and the model's parameters are views of
//! the weights. It is written here rather than taken from Burn for that, and so that momentum
//! checkpoints by parameter name.

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, DType, FloatDType, Tensor, TensorData};
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};
use swinfc_model::weights::{StateDict, WeightsError, load_state_dict, state_dict};
use swinfc_model::{FusedKernels, ParamGroup, SwinFc, TrainBackend};

use crate::config::Precision;
use crate::sync::{CheckError, ELEMENT_TOLERANCE};

/// Where each parameter starts in a flat buffer is a multiple of this many elements. The model's
/// parameters are `narrow`s of the flat master weights (f32) or of their bf16 cast, and a
/// CubeBackend `narrow` is a view rather than a copy where its start and its end fall on the
/// device's memory alignment (512 B on CUDA: burn-cubecl 0.21 `kernel/index/slice.rs`): 256
/// elements are 1 KiB in f32 and 512 B in bf16, so every parameter whose size is a multiple of
/// 128 (256 in bf16) is a view, and the others are one small copy each. The gaps hold zeros:
/// they add nothing to a sum, a norm or an update.
pub const ALIGN: usize = 256;

/// One parameter in flat order.
#[derive(Debug, Clone)]
pub struct ParamSlot {
    pub id: ParamId,
    /// PyTorch name (`layers.0.blocks.1.attn.qkv.weight`).
    pub name: String,
    /// A multiple of [`ALIGN`].
    pub offset: usize,
    pub numel: usize,
    pub group: ParamGroup,
}

/// The flat layout of a model's parameters, in visit order, each starting at a multiple of
/// [`ALIGN`].
#[derive(Debug, Clone)]
pub struct FlatLayout {
    pub slots: Vec<ParamSlot>,
    /// A multiple of [`ALIGN`]: the last parameter is followed by zeros too.
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
                offset = (offset + numel).next_multiple_of(ALIGN);
                slot
            })
            .collect();
        Self { slots, len: offset }
    }

    /// The number of parameter values (the gaps not counted).
    pub fn parameters(&self) -> usize {
        self.slots.iter().map(|s| s.numel).sum()
    }

    /// One tensor per slot, in slot order, written into a buffer of zeros: [len]. One fill and
    /// one copy per slot on a GPU (a `cat` with the gaps as parts would add a fill per gap).
    fn concat<B: FusedKernels>(&self, parts: Vec<Tensor<B, 1>>) -> Tensor<B, 1> {
        let first = parts.first().expect("a model has parameters");
        let (device, dtype) = (first.device(), first.dtype());
        let parts = self.slots.iter().map(|s| s.offset).zip(parts).collect();
        B::write_flat(self.len, parts, &device, dtype)
    }

    /// `model` with each parameter replaced by its slot of `flat` ([len]), a view.
    fn views<B: AutodiffBackend>(&self, model: SwinFc<B>, flat: &Tensor<B::InnerBackend, 1>) -> SwinFc<B> {
        model.map(&mut Views {
            flat,
            layout: self,
            index: 0,
        })
    }

    /// Elements of parameters in the new-module group (learning rate `lr_new`).
    fn new_group<B: Backend>(&self, device: &B::Device) -> Tensor<B, 1, Bool> {
        let mut mask = vec![false; self.len];
        for slot in self.slots.iter().filter(|s| s.group == ParamGroup::New) {
            mask[slot.offset..slot.offset + slot.numel].fill(true);
        }
        Tensor::from_data(TensorData::new(mask, [self.len]), device)
    }
}

/// Concatenates the gradients in `layout` (zeros for a parameter without one): [len], in f32
/// whatever the model computes in, because the sum over ranks and the update are done in f32.
pub fn flatten_grads<B: TrainBackend>(
    model: &SwinFc<B>,
    grads: &GradientsParams,
    layout: &FlatLayout,
) -> Tensor<B::InnerBackend, 1> {
    let mut parts = Vec::new();
    model.visit(&mut CollectGrads::<B> {
        grads,
        parts: &mut parts,
    });
    layout.concat(parts).cast(FloatDType::F32)
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
            None => Tensor::zeros([n], (&param.val().device(), param.val().dtype())),
        };
        self.parts.push(grad);
    }
}

/// Host values → a flat f32 tensor on `device` (f32 even where the device's default is bf16).
pub fn flat_tensor<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), (device, DType::F32))
}

/// Hyper-parameters of one update.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    pub lr_backbone: f64,
    pub lr_new: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

/// The f32 master weights and their momentum, each one flat buffer in a [`FlatLayout`], so that
/// an update is a few element-wise passes over the whole model (fused into one kernel where the
/// backend fuses) rather than a chain of small operations per parameter. The model's parameters
/// are views of the master weights (or of their one cast to the compute precision).
pub struct Sgd<B: AutodiffBackend> {
    layout: FlatLayout,
    /// [len], f32.
    weights: Tensor<B::InnerBackend, 1>,
    /// [len], f32 whatever the device's default float type: momentum accumulates small updates.
    velocity: Tensor<B::InnerBackend, 1>,
    /// [len]: true where the learning rate is `lr_new`.
    new_group: Tensor<B::InnerBackend, 1, Bool>,
}

impl<B: TrainBackend> Sgd<B> {
    /// Zero momentum; the master weights are `model`'s, in f32.
    pub fn new(model: &SwinFc<B>) -> Self {
        let layout = FlatLayout::of(model);
        let weights = flat_values(model.valid(), &layout);
        let velocity = Tensor::zeros([layout.len], (&weights.device(), DType::F32));
        Self::from_parts(layout, weights, velocity)
    }

    fn from_parts(
        layout: FlatLayout,
        weights: Tensor<B::InnerBackend, 1>,
        velocity: Tensor<B::InnerBackend, 1>,
    ) -> Self {
        let new_group = layout.new_group(&weights.device());
        Self {
            layout,
            weights,
            velocity,
            new_group,
        }
    }

    pub fn layout(&self) -> &FlatLayout {
        &self.layout
    }

    /// Applies one update with the (already averaged and clipped) flat gradient; `model` gives
    /// the structure, its parameters become views of the updated master weights.
    pub fn step(
        &mut self,
        model: SwinFc<B>,
        grad: Tensor<B::InnerBackend, 1>,
        settings: StepSettings,
    ) -> SwinFc<B> {
        self.update(grad, settings);
        self.master(model)
    }

    /// [`Sgd::step`], and the updated weights and momentum compared with the same update computed
    /// on the host from copies of the same values (the device check of [`crate::sync`]): an
    /// element that differs by more than 1e-6 relative is an error naming its parameter.
    pub fn step_checked(
        &mut self,
        model: SwinFc<B>,
        grad: Tensor<B::InnerBackend, 1>,
        settings: StepSettings,
    ) -> Result<SwinFc<B>, CheckError> {
        let before = [self.weights.clone(), self.velocity.clone(), grad.clone()].map(host_f32);
        self.update(grad, settings);
        let after = [self.weights.clone(), self.velocity.clone()].map(host_f32);
        for slot in &self.layout.slots {
            let lr = match slot.group {
                ParamGroup::Backbone => settings.lr_backbone,
                ParamGroup::New => settings.lr_new,
            };
            let range = slot.offset..slot.offset + slot.numel;
            let values =
                [&before[0], &before[1], &before[2], &after[0], &after[1]].map(|v| &v[range.clone()]);
            if let Some(mismatch) = check_update(&slot.name, values, lr, settings) {
                return Err(mismatch);
            }
        }
        Ok(self.master(model))
    }

    /// torch's `SGD(momentum, dampening=0, weight_decay)` over the flat buffers:
    /// v ← μ·v + (g + λ·p); p ← p − lr·v, lr by group.
    fn update(&mut self, grad: Tensor<B::InnerBackend, 1>, s: StepSettings) {
        let p = self.weights.clone();
        let d = if s.weight_decay != 0.0 {
            grad + p.clone().mul_scalar(s.weight_decay)
        } else {
            grad
        };
        let v = self.velocity.clone().mul_scalar(s.momentum) + d;
        let lr_v = v
            .clone()
            .mul_scalar(s.lr_backbone)
            .mask_where(self.new_group.clone(), v.clone().mul_scalar(s.lr_new));
        self.weights = p - lr_v;
        self.velocity = v;
    }

    /// `model` with the master weights as its parameters (each a view, in f32).
    fn master(&self, model: SwinFc<B>) -> SwinFc<B> {
        self.layout.views(model, &self.weights)
    }

    /// The copy of `model` that runs forward and backward when the run computes in a lower
    /// precision than the f32 master weights: one cast of the flat master weights, each
    /// parameter a view of it with the same id (so that its gradients flatten in the same
    /// order). `None` for fp32: the model itself computes.
    pub fn compute_copy(&self, model: &SwinFc<B>, precision: Precision) -> Option<SwinFc<B>> {
        let dtype = match precision {
            Precision::Fp32 => return None,
            Precision::Bf16 => FloatDType::BF16,
        };
        Some(
            self.layout
                .views(model.clone(), &self.weights.clone().cast(dtype)),
        )
    }

    /// Momentum buffers by parameter name, in PyTorch layout (as `model.safetensors`).
    pub fn state_dict(&self, model: &SwinFc<B>) -> StateDict {
        state_dict(&self.layout.views(model.clone(), &self.velocity).valid())
    }

    /// Restores buffers written by [`Sgd::state_dict`]; every parameter must be present. The
    /// master weights are `model`'s.
    pub fn load_state_dict(model: &SwinFc<B>, dict: &StateDict) -> Result<Self, WeightsError> {
        let (loaded, report) = load_state_dict(model.valid(), dict)?;
        if let Some(key) = report.initialised.first() {
            return Err(WeightsError::MissingBackbone { key: key.clone() });
        }
        let layout = FlatLayout::of(model);
        let weights = flat_values(model.valid(), &layout);
        let velocity = flat_values(loaded, &layout);
        Ok(Self::from_parts(layout, weights, velocity))
    }
}

/// A module's parameter values as one flat f32 buffer in `layout`.
fn flat_values<B: FusedKernels>(module: SwinFc<B>, layout: &FlatLayout) -> Tensor<B, 1> {
    let mut parts = Vec::new();
    module.visit(&mut CollectValues { out: &mut parts });
    layout.concat(parts).cast(FloatDType::F32)
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

/// Replaces each parameter by its view of `flat` (its slot, reshaped) as a new leaf: gradients
/// stop there rather than flowing into whatever the parameter was before.
struct Views<'a, B: Backend> {
    flat: &'a Tensor<B, 1>,
    layout: &'a FlatLayout,
    index: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Views<'_, B::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let slot = &self.layout.slots[self.index];
        self.index += 1;
        let view = self
            .flat
            .clone()
            .narrow(0, slot.offset, slot.numel)
            .reshape(tensor.shape());
        Param::from_mapped_value(id, Tensor::from_inner(view).require_grad(), mapper)
    }
}

/// One parameter's update, `[p, v, g, p_new, v_new]` read back from the device, against the
/// same update in f32 on the host.
fn check_update(
    name: &str,
    [p, v, g, p_new, v_new]: [&[f32]; 5],
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

/// Linear warmup to `base` over `warmup` steps, then cosine to 0 at `total` (step is 0-based).
pub fn learning_rate(step: u64, base: f64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    0.5 * base * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: StepSettings = StepSettings {
        lr_backbone: 0.1,
        lr_new: 0.5,
        momentum: 0.9,
        weight_decay: 0.01,
    };

    /// The host's check accepts the update computed as `Sgd::update` does, and names the
    /// parameter and the element when one value is off by 1e-4.
    #[test]
    fn a_wrong_update_is_caught_naming_the_parameter() {
        let (p, v, g) = ([1.0f32, -2.0, 0.5], [0.1f32, 0.2, -0.3], [0.3f32, -0.1, 0.0]);
        let lr = SETTINGS.lr_new;
        let v_new: Vec<f32> = (0..3).map(|i| 0.9 * v[i] + (g[i] + 0.01 * p[i])).collect();
        let p_new: Vec<f32> = (0..3).map(|i| p[i] - lr as f32 * v_new[i]).collect();
        assert!(check_update("x", [&p, &v, &g, &p_new, &v_new], lr, SETTINGS).is_none());
        let (mut p_off, mut v_off) = (p_new.clone(), v_new.clone());
        p_off[2] += 1e-4;
        v_off[2] += 1e-4;
        for (p_got, v_got) in [(&p_off, &v_new), (&p_new, &v_off)] {
            let values = [&p[..], &v, &g, p_got, v_got];
            let e =
                check_update("eaca.s2.ca.conv_w.weight", values, lr, SETTINGS).expect("the check catches it");
            assert_eq!(
                (e.stage, e.parameter.as_str()),
                ("SGD update", "eaca.s2.ca.conv_w.weight")
            );
            assert!(e.detail.starts_with("element 2:"), "{e}");
        }
    }
}
