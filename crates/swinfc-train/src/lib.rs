//! The swinfc worker: run configuration, the optimizer and its schedule, the training step,
//! evaluation and checkpoints.
//!
//! Owns: everything a worker process does with a model replica. Must not: spawn processes or
//! handle signals (the launcher does), or open listening ports.

pub mod checkpoint;
pub mod config;
pub mod inference;
pub mod optim;
mod run_dir;
pub mod step;
pub mod sync;
pub mod trainer;
pub mod worker;

pub use config::TrainConfig;
pub use run_dir::{RunDir, RunDirError, RunDirLock};
pub use step::{Losses, StepConfig, StepOutcome, Trainer};
/// What [`trainer::evaluate`] returns. Defined in swinfc-metrics because it travels in the eval
/// record to the launcher, and swinfc-metrics cannot depend on this crate.
pub use swinfc_metrics::record::EvalResult;
pub use trainer::{Link, Resume, RunSummary, TrainError, train};
pub use worker::{run_local, run_worker};
