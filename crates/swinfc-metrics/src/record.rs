//! The records a worker sends its launcher (`ControlClient::report`), one JSON object each, told
//! apart by `kind`. `swinfc-train` builds these types and serialises them; [`crate::Telemetry::report`]
//! parses them back.
//!
//! ```json
//! {"kind": "step", "step": 12, "samples": 8, "epoch": 0, "epoch_progress_ratio": 0.4,
//!  "loss": 2.31, "loss_components": {"backbone_ce": 2.0, "stage2_ce": 2.1, "stage3_ce": 2.2,
//!                                    "stage4_ce": 2.3, "contrastive": 0.05},
//!  "lr": {"backbone": 0.0004, "new": 0.004}, "grad_norm": 1.7, "nonfinite": 0, "seconds": 0.52,
//!  "phases": {"data_wait": 0.01, "forward": 0.2, "backward": 0.25, "grad_sync": 0.04,
//!             "optimizer": 0.01, "other": 0.01},
//!  "allreduce_seconds": 0.03, "allreduce_bytes": 4000000, "skipped": {"truncated": 1}}
//! {"kind": "eval", "split": "test", "result": {"step": 12, "samples": 100,
//!  "combined": 0.5, "backbone": 0.4, "stage2": 0.1, "stage3": 0.2, "stage4": 0.3}}
//! {"kind": "checkpoint", "ok": true, "step": 12, "reason": "periodic",
//!  "bytes": 1234, "blocking_seconds": 0.2, "write_seconds": 1.1, "total_seconds": 1.3}
//! {"kind": "checkpoint", "ok": false, "step": 12, "reason": "periodic", "bytes": 0,
//!  "blocking_seconds": 0.2, "write_seconds": 0.0, "total_seconds": 0.0, "error": "..."}
//! ```
//! The sender's rank is not in the record: the control connection it arrives on says it.
//! - `step`: the optimizer steps completed after this one. `loss`, `loss_components` and
//!   `grad_norm` are already means over all ranks (they travel in the gradient all-reduce), `null`
//!   when not finite; `nonfinite` is 1 when this step was skipped for a non-finite loss or gradient.
//!   `samples` and everything timed are this rank's. `phases` add up to `seconds`. `skipped` counts
//!   the training images this rank skipped since its previous step record, by [`SkipReason`]
//!   (`empty file`, `io error`, `unknown format`, `truncated`, `decode error`).
//! - `eval`: the same result on every rank (counts are all-reduced); `result` is `EvalResult`.
//! - `checkpoint`: rank 0 only, when a background save finishes. `reason` is a [`SaveReason`]; `blocking_seconds` is how long training waited (copy to host and
//!   serialisation), `write_seconds` the background write, `total_seconds` from the start of the
//!   blocking part to the end of the write.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One worker record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Step(StepRecord),
    Eval(EvalRecord),
    Checkpoint(CheckpointRecord),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub samples: u64,
    pub epoch: u64,
    pub epoch_progress_ratio: f64,
    pub loss: Option<f64>,
    pub loss_components: LossComponents,
    pub lr: LearningRates,
    pub grad_norm: Option<f64>,
    pub nonfinite: u64,
    pub seconds: f64,
    pub phases: Phases,
    pub allreduce_seconds: f64,
    pub allreduce_bytes: u64,
    #[serde(default)]
    pub skipped: BTreeMap<SkipReason, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossComponents {
    pub backbone_ce: Option<f64>,
    pub stage2_ce: Option<f64>,
    pub stage3_ce: Option<f64>,
    pub stage4_ce: Option<f64>,
    pub contrastive: Option<f64>,
}

impl LossComponents {
    /// (component label, value), in the order of [`crate::catalogue::LOSS_COMPONENTS`].
    pub fn labelled(&self) -> [(&'static str, Option<f64>); 5] {
        [
            ("backbone_ce", self.backbone_ce),
            ("stage2_ce", self.stage2_ce),
            ("stage3_ce", self.stage3_ce),
            ("stage4_ce", self.stage4_ce),
            ("contrastive", self.contrastive),
        ]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LearningRates {
    pub backbone: f64,
    pub new: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phases {
    pub data_wait: f64,
    pub forward: f64,
    pub backward: f64,
    pub grad_sync: f64,
    pub optimizer: f64,
    pub other: f64,
}

impl Phases {
    /// (phase label, seconds), in the order of [`crate::catalogue::PHASES`].
    pub fn labelled(&self) -> [(&'static str, f64); 6] {
        [
            ("data_wait", self.data_wait),
            ("forward", self.forward),
            ("backward", self.backward),
            ("grad_sync", self.grad_sync),
            ("optimizer", self.optimizer),
            ("other", self.other),
        ]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    pub split: String,
    pub result: EvalResult,
}

/// Top-1 accuracy of each head on the evaluated split (`swinfc_train::evaluate`'s result).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub step: u64,
    pub samples: u64,
    pub combined: f64,
    pub backbone: f64,
    pub stage2: f64,
    pub stage3: f64,
    pub stage4: f64,
}

impl EvalResult {
    /// (head label, accuracy), in the order of [`crate::catalogue::HEADS`].
    pub fn labelled(&self) -> [(&'static str, f64); 5] {
        [
            ("combined", self.combined),
            ("backbone", self.backbone),
            ("stage2", self.stage2),
            ("stage3", self.stage3),
            ("stage4", self.stage4),
        ]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub ok: bool,
    pub step: u64,
    pub reason: SaveReason,
    #[serde(default)]
    pub bytes: u64,
    pub blocking_seconds: f64,
    #[serde(default)]
    pub write_seconds: f64,
    #[serde(default)]
    pub total_seconds: f64,
    #[serde(default)]
    pub error: Option<String>,
}

/// Why a checkpoint is saved: the `reason` label of `swinfc_checkpoints_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveReason {
    /// `checkpoint.every_steps`.
    Periodic,
    /// The launcher asked to stop after this step (drain on a signal).
    Preemption,
    /// The last step of the run.
    Final,
}

impl SaveReason {
    pub const ALL: [SaveReason; 3] = [SaveReason::Periodic, SaveReason::Preemption, SaveReason::Final];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            SaveReason::Periodic => "periodic",
            SaveReason::Preemption => "preemption",
            SaveReason::Final => "final",
        }
    }
}

/// Why the loader skipped a training image: the keys of [`StepRecord::skipped`]. Finer than the
/// metric's label, so events.jsonl keeps what the decoder saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SkipReason {
    #[serde(rename = "empty file")]
    EmptyFile,
    #[serde(rename = "io error")]
    IoError,
    #[serde(rename = "unknown format")]
    UnknownFormat,
    #[serde(rename = "truncated")]
    Truncated,
    #[serde(rename = "decode error")]
    DecodeError,
}

impl SkipReason {
    /// The `reason` label of `swinfc_data_samples_skipped_total`, one of
    /// [`crate::catalogue::SKIP_REASONS`].
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::EmptyFile => "empty",
            SkipReason::IoError => "missing",
            SkipReason::UnknownFormat | SkipReason::Truncated | SkipReason::DecodeError => "decode",
        }
    }
}
