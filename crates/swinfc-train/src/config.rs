//! The run configuration: one YAML file with the sections `run`, `model`, `loss`, `data`, `train`,
//! `eval`, `checkpoint` and `metrics`, plus `--set key=value` overrides. Every key is known by
//! name; anything else is an error naming its dotted path.

use std::path::{Path, PathBuf};

use serde_yaml::Value;
use sha2::{Digest, Sha256};
use swinfc_config::{ConfigError, Section, read_document};
use swinfc_data::{DataConfig, DataError, Dataset, open_dataset};
use swinfc_model::{LossConfig, ModelConfig};

use crate::RunDir;

#[derive(Debug, Clone, PartialEq)]
pub struct RunSection {
    pub name: String,
    pub dir: RunDir,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Bf16,
}

/// Where a GPU worker sums its gradients with the other ranks (`train.gradient_sum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradientSum {
    /// On the device (NCCL) on a GPU; through the host on a CPU worker, whose device it is.
    Device,
    /// Through host memory and the TCP ring on every backend: two workers sharing one GPU
    /// (NCCL refuses two ranks on one device), or a node without NCCL.
    Host,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainSection {
    pub global_batch: usize,
    pub micro_batch: usize,
    pub total_steps: u64,
    pub warmup_steps: u64,
    pub lr_backbone: f64,
    pub lr_new: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Global-norm clip; 0 disables clipping.
    pub grad_clip: f64,
    pub precision: Precision,
    pub gradient_sum: GradientSum,
    /// Pretrained backbone weights (official, timm or ours); none means random init.
    pub pretrained: Option<PathBuf>,
    /// Consecutive non-finite steps tolerated before the run stops.
    pub max_nonfinite_steps: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EvalSection {
    /// 0: only at the end of training.
    pub every_steps: u64,
    pub split: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointSection {
    /// 0: only at the end (and on preemption).
    pub every_steps: u64,
    pub keep_last: usize,
    /// Also keep the checkpoint with the best combined top-1.
    pub keep_best: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSection {
    pub listen: String,
    /// Steps between step-summary records.
    pub log_every: u64,
}

/// A validated run configuration, and the resolved YAML it came from.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub run: RunSection,
    pub model: ModelConfig,
    pub loss: LossConfig,
    /// The `data:` section, parsed (by swinfc-data) with the rest, so every consumer and
    /// `--dry-run` see one validated value.
    pub data: DataConfig,
    pub train: TrainSection,
    pub eval: EvalSection,
    pub checkpoint: CheckpointSection,
    pub metrics: MetricsSection,
    /// The document after overrides: what is written to the run directory and hashed.
    pub resolved: Value,
}

impl TrainConfig {
    /// Reads `path`, applies `overrides` (`train.lr_new=0.01`; values are YAML) and validates.
    /// Errors name the file and the key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut doc = read_document(path, overrides)?;
        absolutize(&mut doc, ["run", "dir"])?;
        absolutize(&mut doc, ["data", "root"])?;
        Self::from_yaml(doc)
    }

    pub fn from_yaml(doc: Value) -> Result<Self, ConfigError> {
        let mut root = Section::root(&doc)?;
        let model: Value = root.required("model")?;
        let loss: Option<Value> = root.take("loss")?;
        let data: Value = root.required("data")?;
        let [run, train, eval, checkpoint, metrics] =
            ["run", "train", "eval", "checkpoint", "metrics"].map(|name| root.take::<Value>(name));
        root.finish()?;
        let model = ModelConfig::from_yaml(&model)?;
        let loss = LossConfig::from_yaml(loss.as_ref())?;

        let mut s = Section::new(run?.as_ref(), "run")?;
        let run = RunSection {
            name: s.required("name")?,
            dir: RunDir::new(s.required::<PathBuf>("dir")?),
            seed: s.get("seed", 0)?,
        };
        s.finish()?;

        let mut s = Section::new(train?.as_ref(), "train")?;
        let precision = s.choice(
            "precision",
            &[("fp32", Precision::Fp32), ("bf16", Precision::Bf16)],
        )?;
        let gradient_sum = s.choice(
            "gradient_sum",
            &[("device", GradientSum::Device), ("host", GradientSum::Host)],
        )?;
        let train = TrainSection {
            global_batch: s.required("global_batch")?,
            micro_batch: s.required("micro_batch")?,
            total_steps: s.required("total_steps")?,
            warmup_steps: s.get("warmup_steps", 0)?,
            lr_backbone: s.required("lr_backbone")?,
            lr_new: s.required("lr_new")?,
            momentum: s.get("momentum", 0.9)?,
            weight_decay: s.get("weight_decay", 0.0)?,
            grad_clip: s.get("grad_clip", 0.0)?,
            precision: precision.unwrap_or(Precision::Fp32),
            gradient_sum: gradient_sum.unwrap_or(GradientSum::Device),
            pretrained: s.get("pretrained", None)?,
            max_nonfinite_steps: s.get("max_nonfinite_steps", 5)?,
        };
        s.finish()?;

        let mut s = Section::new(eval?.as_ref(), "eval")?;
        let eval = EvalSection {
            every_steps: s.get("every_steps", 0)?,
            split: s.get("split", "test".to_string())?,
        };
        s.finish()?;

        let mut s = Section::new(checkpoint?.as_ref(), "checkpoint")?;
        let checkpoint = CheckpointSection {
            every_steps: s.get("every_steps", 0)?,
            keep_last: s.get("keep_last", 2)?,
            keep_best: s.get("keep_best", true)?,
        };
        s.finish()?;

        let mut s = Section::new(metrics?.as_ref(), "metrics")?;
        let metrics = MetricsSection {
            listen: s.get("listen", "127.0.0.1:9420".to_string())?,
            log_every: s.get("log_every", 10)?,
        };
        s.finish()?;

        let data = DataConfig::from_yaml(&data)?;
        let cfg = Self {
            run,
            model,
            loss,
            data,
            train,
            eval,
            checkpoint,
            metrics,
            resolved: doc.clone(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.train;
        if t.micro_batch == 0 || t.global_batch == 0 {
            return Err(ConfigError::new(
                "train.micro_batch",
                "batch sizes must be at least 1",
            ));
        }
        if !t.global_batch.is_multiple_of(t.micro_batch) {
            return Err(ConfigError::new(
                "train.global_batch",
                format!(
                    "{} is not a multiple of train.micro_batch {}",
                    t.global_batch, t.micro_batch
                ),
            ));
        }
        if t.total_steps == 0 {
            return Err(ConfigError::new("train.total_steps", "must be at least 1"));
        }
        if t.warmup_steps > t.total_steps {
            return Err(ConfigError::new(
                "train.warmup_steps",
                "exceeds train.total_steps",
            ));
        }
        for (key, value) in [
            ("train.lr_backbone", t.lr_backbone),
            ("train.lr_new", t.lr_new),
            ("train.weight_decay", t.weight_decay),
            ("train.grad_clip", t.grad_clip),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(ConfigError::new(
                    key,
                    format!("{value} must be a finite number ≥ 0"),
                ));
            }
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return Err(ConfigError::new(
                "train.momentum",
                format!("{} must be in [0, 1)", t.momentum),
            ));
        }
        if self.data.crop != self.model.img_size {
            return Err(ConfigError::new(
                "data.crop",
                format!(
                    "{} differs from model.img_size {}: the model takes the crop as it is",
                    self.data.crop, self.model.img_size
                ),
            ));
        }
        if let Some(synthetic) = &self.data.synthetic {
            self.check_classes(synthetic.classes)?;
        }
        if self.eval.split != "test" {
            return Err(ConfigError::new("eval.split", "only `test` is supported"));
        }
        if self.checkpoint.keep_last == 0 {
            return Err(ConfigError::new(
                "checkpoint.keep_last",
                "must keep at least one checkpoint",
            ));
        }
        Ok(())
    }

    /// Opens the dataset (its index files, not its images) and checks its classes against the
    /// model's: the launcher does it before starting workers, so a wrong root or class count is
    /// reported once, not by every worker after a model build.
    pub fn open_dataset(&self) -> Result<Dataset, DataError> {
        let dataset = open_dataset(&self.data)?;
        self.check_classes(dataset.classes.len())?;
        Ok(dataset)
    }

    /// More dataset classes than `model.num_classes` cannot train (labels past the head); fewer
    /// only waste outputs, which is allowed with a warning.
    fn check_classes(&self, classes: usize) -> Result<(), ConfigError> {
        let heads = self.model.num_classes;
        if classes > heads {
            return Err(ConfigError::new(
                "model.num_classes",
                format!("{heads} is fewer than the dataset's {classes} classes (data:)"),
            ));
        }
        if classes < heads {
            tracing::warn!(
                model_classes = heads,
                dataset_classes = classes,
                "model.num_classes exceeds the dataset's classes: the extra outputs are never a label"
            );
        }
        Ok(())
    }

    /// Micro-batches each worker accumulates per optimizer step: global / (world · micro).
    pub fn grad_accum(&self, world_size: usize) -> Result<usize, ConfigError> {
        let (global, micro) = (self.train.global_batch, self.train.micro_batch);
        if world_size == 0 || !global.is_multiple_of(world_size * micro) {
            return Err(ConfigError::new(
                "train.global_batch",
                format!(
                    "{global} is not divisible by world_size {world_size} × micro_batch {micro} = {}",
                    world_size * micro
                ),
            ));
        }
        Ok(global / (world_size * micro))
    }

    /// The resolved YAML, as written into the run directory.
    pub fn resolved_yaml(&self) -> String {
        serde_yaml::to_string(&self.resolved).expect("a parsed YAML document serialises")
    }

    /// sha256 of the resolved YAML: recorded in checkpoints to notice a changed config on resume.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.resolved_yaml().as_bytes()))
    }
}

/// Makes the path at `section.key` absolute (against the working directory), so the resolved
/// config a run stores means the same wherever it is read from (eval, a resume from elsewhere).
fn absolutize(doc: &mut Value, [section, key]: [&str; 2]) -> Result<(), ConfigError> {
    let Some(Value::String(path)) = doc.get_mut(section).and_then(|s| s.get_mut(key)) else {
        return Ok(());
    };
    let absolute = std::path::absolute(&*path)
        .map_err(|e| ConfigError::new(format!("{section}.{key}"), format!("{path}: {e}")))?;
    *path = absolute.to_string_lossy().into_owned();
    Ok(())
}
