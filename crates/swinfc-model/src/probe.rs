//! The logic of `swinfc forward`, the verification tool: one evaluation-mode forward (and
//! optionally backward) of a model on given images, with every intermediate the parity contract
//! names (logits of each head, FSM's indices, each loss term, each parameter's gradient) returned
//! under fixed keys. Users port weights with it; our parity tests compare it with PyTorch.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::Path;

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

use crate::config::LossConfig;
use crate::fused::TrainBackend;
use crate::loss::swinfc_loss;
use crate::model::SwinFc;
use crate::weights::{WeightsError, file_error, state_dict};

/// A host tensor of one of the two element types the probe files use.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeTensor {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    I64 { shape: Vec<usize>, data: Vec<i64> },
}

/// The probe's inputs: `images` f32 [B, 3, H, W] and `labels` i64 [B].
pub struct ProbeInput {
    pub images: TensorData,
    pub labels: TensorData,
}

/// Reads `images` and `labels` from a safetensors file, checking dtypes and shapes.
pub fn read_probe_input(path: &Path) -> Result<ProbeInput, WeightsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| file_error(path, e))?;
    let get = |name: &str, dtype: Dtype, rank: usize| {
        let view = file
            .tensor(name)
            .map_err(|_| file_error(path, format!("no tensor `{name}`")))?;
        if view.dtype() != dtype || view.shape().len() != rank {
            return Err(file_error(
                path,
                format!(
                    "`{name}` must be {dtype:?} of rank {rank}, found {:?} {:?}",
                    view.dtype(),
                    view.shape()
                ),
            ));
        }
        let dtype = if dtype == Dtype::F32 {
            burn::tensor::DType::F32
        } else {
            burn::tensor::DType::I64
        };
        Ok(TensorData::from_bytes_vec(
            view.data().to_vec(),
            view.shape().to_vec(),
            dtype,
        ))
    };
    let images = get("images", Dtype::F32, 4)?;
    let labels = get("labels", Dtype::I64, 1)?;
    if images.shape[0] != labels.shape[0] || images.shape[1] != 3 {
        return Err(file_error(
            path,
            format!(
                "`images` {:?} must be [B, 3, H, W] with B = len(labels) = {}",
                images.shape, labels.shape[0]
            ),
        ));
    }
    Ok(ProbeInput { images, labels })
}

pub fn write_probe_output(path: &Path, tensors: &BTreeMap<String, ProbeTensor>) -> Result<(), WeightsError> {
    let raw: Vec<(&String, Dtype, &Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| match t {
            ProbeTensor::F32 { shape, data } => (
                name,
                Dtype::F32,
                shape,
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            ProbeTensor::I64 { shape, data } => (
                name,
                Dtype::I64,
                shape,
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        })
        .collect();
    let views = raw
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            Ok((name.as_str(), TensorView::new(*dtype, shape.to_vec(), bytes)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| file_error(path, e))?;
    let bytes = safetensors::serialize(views, None).map_err(|e| file_error(path, e))?;
    std::fs::write(path, bytes).map_err(|e| file_error(path, e))
}

/// Runs the model in evaluation mode (no drop-path) and returns the named outputs; with `grads`,
/// also `grad.<name>` (PyTorch layout) of every parameter from backward of `loss.total`.
pub fn probe<B: TrainBackend>(
    model: &SwinFc<B>,
    input: ProbeInput,
    loss_cfg: &LossConfig,
    grads: bool,
) -> BTreeMap<String, ProbeTensor> {
    let dev = model
        .devices()
        .into_iter()
        .next()
        .expect("a model lives on a device");
    let images = Tensor::<B, 4>::from_data(input.images, &dev);
    let labels = Tensor::<B, 1, Int>::from_data(input.labels, &dev);
    let out = model.forward(images, None);
    let loss = swinfc_loss(&out, labels, loss_cfg);

    let mut result = BTreeMap::new();
    let [z2, z3, z4] = out.logits_stages.clone();
    let floats = [
        ("logits.swin", out.logits_swin.clone()),
        ("logits.stage2", z2),
        ("logits.stage3", z3),
        ("logits.stage4", z4),
        ("logits.combined", out.logits_combined()),
    ];
    for (name, t) in floats {
        result.insert(name.to_string(), f32_tensor(t));
    }
    let [s2, s3, s4] = loss.stage_ce.clone();
    let scalars = [
        ("loss.total", loss.total.clone()),
        ("loss.backbone_ce", loss.backbone_ce.clone()),
        ("loss.stage2_ce", s2),
        ("loss.stage3_ce", s3),
        ("loss.stage4_ce", s4),
        ("loss.contrastive", loss.contrastive.clone()),
    ];
    for (name, t) in scalars {
        result.insert(name.to_string(), f32_tensor(t));
    }
    let indices = out.fsm_indices.clone().into_data();
    result.insert(
        "fsm.indices".to_string(),
        ProbeTensor::I64 {
            shape: indices.shape.to_vec(),
            data: indices
                .convert::<i64>()
                .to_vec::<i64>()
                .expect("converted to i64"),
        },
    );

    if grads {
        let gradients = GradientsParams::from_grads(loss.total.backward(), model);
        let grad_model = model.valid().map(&mut GradsAsValues::<B> {
            grads: &gradients,
            _backend: PhantomData,
        });
        for (name, t) in state_dict(&grad_model) {
            result.insert(
                format!("grad.{name}"),
                ProbeTensor::F32 {
                    shape: t.shape,
                    data: t.data,
                },
            );
        }
    }
    result
}

fn f32_tensor<B: Backend, const D: usize>(t: Tensor<B, D>) -> ProbeTensor {
    let data = t.into_data().convert::<f32>();
    ProbeTensor::F32 {
        shape: data.shape.to_vec(),
        data: data.to_vec::<f32>().expect("converted to f32"),
    }
}

/// Replaces each parameter's value by its gradient (zeros where it has none), so the gradients
/// can be written under the parameters' names and layouts.
struct GradsAsValues<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    _backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleMapper<B::InnerBackend> for GradsAsValues<'_, B> {
    fn map_float<const D: usize>(
        &mut self,
        param: Param<Tensor<B::InnerBackend, D>>,
    ) -> Param<Tensor<B::InnerBackend, D>> {
        let (id, tensor, mapper) = param.consume();
        let grad = self
            .grads
            .get::<B::InnerBackend, D>(id)
            .unwrap_or_else(|| tensor.zeros_like());
        Param::from_mapped_value(id, grad, mapper)
    }
}
