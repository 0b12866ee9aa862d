//! The lines of `events.jsonl`: [`crate::Telemetry`] writes them and [`crate::plot`] reads them
//! back, both through these types, so the file has one schema.
//!
//! ```json
//! {"ts": 1767000000.123, "kind": "step", "step": 40, "epoch": 1, "loss": 2.67, ...}
//! ```
//! Every line is an object with `ts` (Unix seconds) and a `kind` that selects the rest.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::MetricsError;
use crate::catalogue::{RestartReason, RunState};
use crate::record::{CheckpointRecord, EvalRecord, LearningRates, LossComponents};

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
    /// The launcher received a signal (`SIGTERM`, `SIGUSR1`, ...): one line per scheduler event,
    /// however many of the job's processes it reached.
    Signal {
        signal: String,
    },
    /// The drained job asked Slurm to put it back in the queue (`scontrol requeue JOB`); `error`
    /// says why Slurm refused.
    Requeue {
        job: String,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
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

impl From<&EvalRecord> for EvalEvent {
    fn from(r: &EvalRecord) -> EvalEvent {
        EvalEvent {
            step: r.result.step,
            split: r.split.clone(),
            samples: r.result.samples,
            accuracy: r
                .result
                .labelled()
                .into_iter()
                .map(|(head, accuracy)| (head.to_string(), accuracy))
                .collect(),
        }
    }
}

/// A run's step lines and evals read back from its `events.jsonl`, by step.
#[derive(Debug, Default)]
pub struct History {
    pub steps: BTreeMap<u64, StepEvent>,
    pub evals: BTreeMap<u64, EvalEvent>,
}

impl History {
    pub fn read(path: &Path) -> Result<History, MetricsError> {
        let text = std::fs::read_to_string(path).map_err(MetricsError::io(path))?;
        Ok(History::parse(&text, path))
    }

    /// `path` only names the file in warnings.
    pub fn parse(events: &str, path: &Path) -> History {
        let mut history = History::default();
        for (i, line) in events.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let event: EventLine = match serde_json::from_str(line) {
                Ok(e) => e,
                // The last line of a run that was killed mid-write is torn; the rest is still useful.
                Err(e) => {
                    warn!(path = %path.display(), line = i + 1, error = %e, "skipping an unreadable event");
                    continue;
                }
            };
            // After a rollback, steps are replayed: the later line for a step replaces the earlier one.
            match event.event {
                Event::Step(step) => {
                    history.steps.insert(step.step, step);
                }
                Event::Eval(eval) => {
                    history.evals.insert(eval.step, eval);
                }
                _ => {}
            }
        }
        history
    }
}
