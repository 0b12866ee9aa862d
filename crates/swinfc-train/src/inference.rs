//! Using a trained checkpoint: `swinfc eval` (top-1 of every head on the test split) and
//! `swinfc predict` (top-k classes of image files). A checkpoint carries its resolved config and
//! class names, so a step directory alone is enough to predict.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::backend::{Autodiff, Flex, flex::FlexDevice};
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};
use swinfc_comm::LocalCollective;
use swinfc_data::augment::Pipeline;
use swinfc_data::decode::decode_bytes;
use swinfc_data::open_dataset;
use swinfc_model::SwinFc;
use swinfc_model::weights::{load_state_dict, read_state_dict};

use crate::EvalResult;
use crate::RunDir;
use crate::checkpoint::{CLASSES, CONFIG, MODEL, latest_valid, verify};
use crate::config::TrainConfig;
use crate::trainer::{TrainError, evaluate};

type B = Autodiff<Flex>;

/// A checkpoint directory, or a run directory (its newest checkpoint that verifies).
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf, TrainError> {
    let direct = match verify(path) {
        Ok(_) => return Ok(path.to_path_buf()),
        Err(e) => e,
    };
    [RunDir::new(path).checkpoints(), path.to_path_buf()]
        .iter()
        .find_map(|root| latest_valid(root))
        .map(|(dir, _)| dir)
        // For a checkpoint directory the reason is its own check; for a run directory each
        // skipped checkpoint's reason was logged as a warning.
        .ok_or_else(|| {
            TrainError::Resume(format!(
                "{}: no checkpoint that verifies (as a checkpoint: {direct})",
                path.display()
            ))
        })
}

fn load_model(dir: &Path, cfg: &TrainConfig) -> Result<SwinFc<B>, TrainError> {
    let model = cfg.model.init::<B>(cfg.run.seed, &FlexDevice);
    let (model, _) = load_state_dict(model, &read_state_dict(&dir.join(MODEL))?)?;
    Ok(model)
}

/// The config the checkpoint was trained with.
pub fn checkpoint_config(dir: &Path) -> Result<TrainConfig, TrainError> {
    Ok(TrainConfig::load(&dir.join(CONFIG), &[])?)
}

/// Evaluates `checkpoint` on the test split of `cfg`'s dataset, in this process.
pub fn evaluate_checkpoint(
    checkpoint: &Path,
    cfg: &TrainConfig,
) -> Result<(PathBuf, EvalResult), TrainError> {
    let dir = resolve_checkpoint(checkpoint)?;
    let state = verify(&dir)?;
    let model = load_model(&dir, cfg)?;
    let data_cfg = &cfg.data;
    let dataset = Arc::new(open_dataset(data_cfg)?);
    let result = evaluate(
        &model,
        &dataset,
        data_cfg,
        cfg,
        state.step,
        &mut LocalCollective,
        &FlexDevice,
    )?;
    Ok((dir, result))
}

/// One image's top classes with their probabilities (softmax of the combined logits).
#[derive(Debug, Clone)]
pub struct Prediction {
    pub path: PathBuf,
    pub top: Vec<(String, f64)>,
}

/// Predicts the `k` most likely classes of each image with the test-time transform.
pub fn predict(checkpoint: &Path, images: &[PathBuf], k: usize) -> Result<Vec<Prediction>, TrainError> {
    let dir = resolve_checkpoint(checkpoint)?;
    let cfg = checkpoint_config(&dir)?;
    let classes: Vec<String> = {
        let path = dir.join(CLASSES);
        let bytes = std::fs::read(&path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| TrainError::Resume(format!("{}: {e}", path.display())))?
    };
    let model = load_model(&dir, &cfg)?;
    let pipeline = Pipeline::new(&cfg.data);
    let side = pipeline.crop();
    let mut predictions = Vec::new();
    for path in images {
        let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        let image = decode_bytes(&bytes)
            .map_err(|e| TrainError::Resume(format!("{}: {} ({})", path.display(), e.kind, e.detail)))?;
        let mut pixels = vec![0.0f32; pipeline.image_len()];
        pipeline.test(&image, &mut pixels);
        let x = Tensor::<Flex, 4>::from_data(TensorData::new(pixels, [1, 3, side, side]), &FlexDevice);
        let out = burn::module::AutodiffModule::valid(&model).forward(x, None);
        let probs = softmax(out.logits_combined(), 1)
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]));
        let top = order
            .into_iter()
            .take(k)
            .map(|c| {
                (
                    classes.get(c).cloned().unwrap_or_else(|| format!("class {c}")),
                    probs[c] as f64,
                )
            })
            .collect();
        predictions.push(Prediction {
            path: path.clone(),
            top,
        });
    }
    Ok(predictions)
}
