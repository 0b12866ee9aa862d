//! How `swinfc` reports an error: its message on one line, then one line saying what to do about
//! it (the launcher's hints are `LaunchError::hint`). The message says what is wrong and names
//! the key, file or holder; the hint only adds the next step.

use swinfc_config::ConfigError;
use swinfc_data::DataError;
use swinfc_metrics::MetricsError;
use swinfc_model::weights::WeightsError;
use swinfc_train::{RunDirError, TrainError};

/// `error` and its causes on one line, each cause once: most of our errors already print their
/// source (`PATH: No such file`), which anyhow's `{:#}` would repeat.
pub fn message(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// The next step for `error`, judged by the first error in its chain this binary knows.
pub fn for_error(error: &anyhow::Error) -> &'static str {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<TrainError>() {
            return train(e);
        }
        if let Some(e) = cause.downcast_ref::<RunDirError>() {
            return run_dir(e);
        }
        if let Some(e) = cause.downcast_ref::<ConfigError>() {
            return config(e);
        }
        if let Some(e) = cause.downcast_ref::<DataError>() {
            return data(e);
        }
        if cause.is::<WeightsError>() {
            return WEIGHTS;
        }
        if cause.is::<MetricsError>() {
            return "`swinfc plot RUN_DIR` reads RUN_DIR/events.jsonl, which swinfc-launch writes: \
                    check the run directory";
        }
    }
    "`swinfc help` lists the commands and their arguments; RUST_LOG=debug shows what led to the error"
}

fn config(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::File { .. } => {
            "check the config's path, or its YAML at the line named; configs/ holds an example for \
             each dataset"
        }
        ConfigError::Key { .. } => {
            "fix that key in the config or its --set; `swinfc-launch --dry-run CONFIG` checks a whole \
             config without training"
        }
    }
}

const WEIGHTS: &str = "pass an official Microsoft or timm Swin checkpoint (.pth or .safetensors) or one \
                       swinfc wrote; `swinfc import-weights IN -o OUT --config CONFIG` checks one against a \
                       model";

fn train(e: &TrainError) -> &'static str {
    match e {
        TrainError::Config(e) => config(e),
        TrainError::Data(e) => data(e),
        TrainError::Weights(_) => WEIGHTS,
        TrainError::Checkpoint(_) | TrainError::Resume(_) => {
            "pass --checkpoint a step directory (RUN_DIR/checkpoints/step-N) or a run directory \
             that holds one; an earlier step of the run may still verify"
        }
        TrainError::NonFinite(_) | TrainError::NonFiniteWeights { .. } => {
            "lower train.lr_backbone/train.lr_new or set train.grad_clip, then run the same command: \
             it resumes from the newest checkpoint"
        }
        TrainError::NoReadableImages { .. } | TrainError::DataRanOut { .. } => {
            "`swinfc data check CONFIG` lists every unreadable image; fix or remove them"
        }
        TrainError::DeviceCheck(_) => {
            "a bug of the GPU path, not of your run: train on CPU workers (--cpu N) meanwhile, and \
             report the message with the output of `swinfc bench probe --backend cuda --config CONFIG`"
        }
        TrainError::LastSaveFailed { .. } => {
            "free space or fix the permissions of run.dir, then run the same command: it resumes \
             from the newest checkpoint"
        }
        TrainError::Io { .. } => "check that the path above exists and can be read (or written)",
        _ => "run the same command again: it resumes from the newest checkpoint; RUST_LOG=debug shows more",
    }
}

fn run_dir(e: &RunDirError) -> &'static str {
    match e {
        // Its message already says what to do (wait, resume, overwrite, another run.dir).
        RunDirError::Busy { .. } | RunDirError::HasCheckpoints { .. } => {
            "nothing was started and nothing was changed"
        }
        RunDirError::Io { .. } => {
            "check that run.dir exists and is writable, then run the same command again"
        }
    }
}

fn data(e: &DataError) -> &'static str {
    match e {
        DataError::Config(e) => config(e),
        _ => {
            "check data.root and the file named above (datasets.md describes each layout); \
             `swinfc data check CONFIG` reads the whole dataset"
        }
    }
}
