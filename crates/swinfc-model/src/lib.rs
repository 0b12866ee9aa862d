//! SwinFC in Burn, generic over the backend: the Swin backbone, EACA, FFM, FSM, the per-stage
//! heads and the losses, with model configs and weight import/export.
//!
//! Owns: tensors and the math of swinfc-model.md, and reading/writing weight files.
//! Must not: do any other file I/O, know about processes, ranks or training loops.

pub mod backend;
pub mod config;
pub mod drop_path;
pub mod eaca;
pub mod ffm;
pub mod fsm;
pub mod fused;
pub mod loss;
pub mod model;
pub mod probe;
pub mod swin;
pub mod weights;

pub use config::{LossConfig, ModelConfig, StageGeometry, model_and_loss_from_yaml};
pub use fused::{FusedKernels, FusedOps, TrainBackend};
pub use loss::{LossParts, swinfc_loss};
pub use model::{ParamGroup, SwinFc, SwinFcOutput};
