//! The lines of `events.jsonl`: [`crate::Telemetry`] writes them and [`crate::plot`] reads them
//! back, both through these types, so the file has one schema.
//!
//! ```json
//! {"ts": 1767000000.123, "kind": "step", "step": 40, "epoch": 1, "loss": 2.67, ...}
//! ```
//! Every line is an object with `ts` (Unix seconds) and a `kind` that selects the rest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalogue::{RestartReason, RunState};
use crate::record::{CheckpointRecord, LearningRates, LossComponents};

/// One line of `events.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventLine {
    pub ts: f64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    /// Rank 0's step, every `metrics.log_every` steps and at the last one.
    Step(StepEvent),
    Eval(EvalEvent),
    /// A background save finished (the worker's record as it came).
    Checkpoint(CheckpointRecord),
    Restart {
        reason: RestartReason,
        detail: String,
        replayed_steps: u64,
    },
    /// The launcher received a signal (`SIGTERM`, `SIGUSR1`, ...).
    Signal {
        signal: String,
    },
    State {
        state: RunState,
    },
    /// The last line of a run.
    End {
        state: RunState,
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepEvent {
    pub step: u64,
    pub epoch: u64,
    pub loss: Option<f64>,
    pub loss_components: LossComponents,
    pub lr: LearningRates,
    pub grad_norm: Option<f64>,
    /// All ranks' samples per second since the previous step line.
    pub samples_per_second: f64,
    /// Absent from lines written before it was added; the plot does not need it.
    #[serde(default)]
    pub step_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalEvent {
    pub step: u64,
    pub split: String,
    pub samples: u64,
    /// Top-1 by head label ([`crate::catalogue::HEADS`]).
    pub accuracy: BTreeMap<String, f64>,
}
