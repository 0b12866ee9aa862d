//! The metric catalogue of metrics.md: the one list that names, types, labels and help texts come
//! from, so the exporter, the dashboards' test and the docs cannot drift apart.

/// How a metric is exposed to Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Integer counter, kept by the `metrics` registry.
    Counter,
    /// Counter of seconds: fractional, which the `metrics` facade's `u64` counters cannot hold, so
    /// the exporter keeps these itself and appends them to the registry's rendering.
    SecondsCounter,
    Gauge,
    /// Histogram with the buckets of [`buckets`].
    Histogram,
}

impl Kind {
    /// The `# TYPE` of the exposition format.
    pub fn prometheus_type(self) -> &'static str {
        match self {
            Kind::Counter | Kind::SecondsCounter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct MetricSpec {
    pub name: &'static str,
    pub kind: Kind,
    /// Label names besides the constant `run_id` and `experiment`.
    pub labels: &'static [&'static str],
    pub help: &'static str,
    /// The base unit the name ends with, if any (`seconds`, `bytes`, `ratio`).
    pub unit: Option<&'static str>,
}

pub const RUN_INFO: &str = "swinfc_run_info";
pub const RUN_STATE: &str = "swinfc_run_state";
pub const RUN_ATTEMPT: &str = "swinfc_run_attempt";
pub const WORLD_SIZE: &str = "swinfc_world_size";
pub const TRAIN_STEP: &str = "swinfc_train_step";
pub const TRAIN_TARGET_STEPS: &str = "swinfc_train_target_steps";
pub const TRAIN_EPOCH: &str = "swinfc_train_epoch";
pub const TRAIN_EPOCH_PROGRESS: &str = "swinfc_train_epoch_progress_ratio";
pub const TRAIN_SAMPLES: &str = "swinfc_train_samples_total";
pub const TRAIN_STEPS: &str = "swinfc_train_steps_total";
pub const TRAIN_REPLAYED_STEPS: &str = "swinfc_train_replayed_steps_total";
pub const TRAIN_STEP_DURATION: &str = "swinfc_train_step_duration_seconds";
pub const TRAIN_STEP_PHASE: &str = "swinfc_train_step_phase_seconds_total";
pub const TRAIN_LOSS: &str = "swinfc_train_loss";
pub const TRAIN_LOSS_COMPONENT: &str = "swinfc_train_loss_component";
pub const TRAIN_LOSS_WEIGHT: &str = "swinfc_train_loss_weight";
pub const TRAIN_NONFINITE: &str = "swinfc_train_nonfinite_loss_total";
pub const OPTIMIZER_LR: &str = "swinfc_optimizer_learning_rate";
pub const OPTIMIZER_GRAD_NORM: &str = "swinfc_optimizer_grad_norm";
pub const DATA_SKIPPED: &str = "swinfc_data_samples_skipped_total";
pub const EVAL_ACCURACY: &str = "swinfc_eval_accuracy_ratio";
pub const EVAL_BEST_ACCURACY: &str = "swinfc_eval_best_accuracy_ratio";
pub const EVAL_SAMPLES: &str = "swinfc_eval_samples";
pub const CHECKPOINT_DURATION: &str = "swinfc_checkpoint_duration_seconds";
pub const CHECKPOINT_SIZE: &str = "swinfc_checkpoint_size_bytes";
pub const CHECKPOINTS: &str = "swinfc_checkpoints_total";
pub const CHECKPOINT_LAST_SUCCESS: &str = "swinfc_checkpoint_last_success_timestamp_seconds";
pub const CHECKPOINT_LAST_STEP: &str = "swinfc_checkpoint_last_step";
pub const WORKER_RESTARTS: &str = "swinfc_worker_restarts_total";
pub const RECOVERY_DURATION: &str = "swinfc_recovery_duration_seconds";
pub const WORKER_UP: &str = "swinfc_worker_up";
pub const WORKER_LAST_PROGRESS: &str = "swinfc_worker_last_progress_timestamp_seconds";
pub const ALLREDUCE_SECONDS: &str = "swinfc_allreduce_seconds_total";
pub const ALLREDUCE_BYTES: &str = "swinfc_allreduce_bytes_total";

/// The launcher's state machine (operations.md): the `state` label of `swinfc_run_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Starting,
    Running,
    Draining,
    /// Rank 0 writes the final checkpoint after the last step.
    Checkpointing,
    Restarting,
    Evaluating,
    Finished,
    /// Drained after a signal, with a checkpoint at the drain step: the run resumes from it.
    Preempted,
    Failed,
}

impl RunState {
    pub const ALL: [RunState; 9] = [
        RunState::Starting,
        RunState::Running,
        RunState::Draining,
        RunState::Checkpointing,
        RunState::Restarting,
        RunState::Evaluating,
        RunState::Finished,
        RunState::Preempted,
        RunState::Failed,
    ];

    /// The `state` label value.
    pub fn label(self) -> &'static str {
        match self {
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Draining => "draining",
            RunState::Checkpointing => "checkpointing",
            RunState::Restarting => "restarting",
            RunState::Evaluating => "evaluating",
            RunState::Finished => "finished",
            RunState::Preempted => "preempted",
            RunState::Failed => "failed",
        }
    }
}

/// Why workers were restarted within the job: the `reason` label of `swinfc_worker_restarts_total`.
/// A preemption is not among them: it drains and ends the job, and the requeued job is a new
/// attempt, not a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartReason {
    Crash,
    Hang,
}

impl RestartReason {
    pub const ALL: [RestartReason; 2] = [RestartReason::Crash, RestartReason::Hang];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            RestartReason::Crash => "crash",
            RestartReason::Hang => "hang",
        }
    }
}

/// Label values (metrics.md: labels are small enums only).
pub const PHASES: [&str; 6] = [
    "data_wait",
    "forward",
    "backward",
    "grad_sync",
    "optimizer",
    "other",
];
pub const LOSS_COMPONENTS: [&str; 5] = [
    "backbone_ce",
    "stage2_ce",
    "stage3_ce",
    "stage4_ce",
    "contrastive",
];
pub const PARAM_GROUPS: [&str; 2] = ["backbone", "new"];
pub const SKIP_REASONS: [&str; 3] = ["decode", "missing", "empty"];
pub const HEADS: [&str; 5] = ["combined", "backbone", "stage2", "stage3", "stage4"];
pub const CHECKPOINT_PHASES: [&str; 3] = ["blocking", "write", "total"];
pub const CHECKPOINT_RESULTS: [&str; 2] = ["success", "failure"];

const fn spec(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
    unit: Option<&'static str>,
) -> MetricSpec {
    MetricSpec {
        name,
        kind,
        labels,
        help,
        unit,
    }
}

const SECONDS: Option<&str> = Some("seconds");
const BYTES: Option<&str> = Some("bytes");
const RATIO: Option<&str> = Some("ratio");

use Kind::{Counter, Gauge, Histogram, SecondsCounter};
use serde::{Deserialize, Serialize};

/// Every metric the exporter serves (metrics.md, "Catalogue").
pub const CATALOGUE: &[MetricSpec] = &[
    spec(
        RUN_INFO,
        Gauge,
        &["model", "dataset", "world_size", "version"],
        "Run metadata; always 1.",
        None,
    ),
    spec(
        RUN_STATE,
        Gauge,
        &["state"],
        "1 for the launcher's current state, 0 for the others.",
        None,
    ),
    spec(RUN_ATTEMPT, Gauge, &[], "1 + in-job restarts + requeues.", None),
    spec(WORLD_SIZE, Gauge, &[], "Number of ranks.", None),
    spec(
        TRAIN_STEP,
        Gauge,
        &[],
        "Optimizer steps completed (goes back after a rollback).",
        None,
    ),
    spec(
        TRAIN_TARGET_STEPS,
        Gauge,
        &[],
        "Optimizer steps the run trains for.",
        None,
    ),
    spec(
        TRAIN_EPOCH,
        Gauge,
        &[],
        "Current epoch of the training stream.",
        None,
    ),
    spec(
        TRAIN_EPOCH_PROGRESS,
        Gauge,
        &[],
        "Samples consumed in the current epoch / epoch size.",
        RATIO,
    ),
    spec(
        TRAIN_SAMPLES,
        Counter,
        &["rank"],
        "Training samples processed; sum(rate()) is throughput.",
        None,
    ),
    spec(
        TRAIN_STEPS,
        Counter,
        &[],
        "Optimizer steps executed, replays included.",
        None,
    ),
    spec(
        TRAIN_REPLAYED_STEPS,
        Counter,
        &[],
        "Steps redone after a rollback (lost work).",
        None,
    ),
    spec(
        TRAIN_STEP_DURATION,
        Histogram,
        &["rank"],
        "Wall time per optimizer step.",
        SECONDS,
    ),
    spec(
        TRAIN_STEP_PHASE,
        SecondsCounter,
        &["rank", "phase"],
        "Step time spent in each phase.",
        SECONDS,
    ),
    spec(
        TRAIN_LOSS,
        Histogram,
        &[],
        "Total loss L_total, mean over ranks, once per step.",
        None,
    ),
    spec(
        TRAIN_LOSS_COMPONENT,
        Histogram,
        &["component"],
        "Unweighted loss terms, mean over ranks.",
        None,
    ),
    spec(
        TRAIN_LOSS_WEIGHT,
        Gauge,
        &["component"],
        "Weight of each loss term in L_total.",
        None,
    ),
    spec(
        TRAIN_NONFINITE,
        Counter,
        &[],
        "Steps whose loss or gradient was NaN or infinite.",
        None,
    ),
    spec(
        OPTIMIZER_LR,
        Gauge,
        &["param_group"],
        "Current learning rate of each parameter group.",
        None,
    ),
    spec(
        OPTIMIZER_GRAD_NORM,
        Histogram,
        &[],
        "Global L2 norm of the gradient before clipping.",
        None,
    ),
    spec(
        DATA_SKIPPED,
        Counter,
        &["rank", "reason"],
        "Training images skipped because they could not be read.",
        None,
    ),
    spec(
        EVAL_ACCURACY,
        Gauge,
        &["split", "head"],
        "Top-1 accuracy of the last evaluation.",
        RATIO,
    ),
    spec(
        EVAL_BEST_ACCURACY,
        Gauge,
        &["split", "head"],
        "Best top-1 accuracy so far.",
        RATIO,
    ),
    spec(
        EVAL_SAMPLES,
        Gauge,
        &["split"],
        "Samples in the last evaluation (the split size).",
        None,
    ),
    spec(
        CHECKPOINT_DURATION,
        Histogram,
        &["phase"],
        "Checkpoint time; blocking = training paused.",
        SECONDS,
    ),
    spec(
        CHECKPOINT_SIZE,
        Gauge,
        &[],
        "Size of the last committed checkpoint.",
        BYTES,
    ),
    spec(
        CHECKPOINTS,
        Counter,
        &["reason", "result"],
        "Checkpoint saves by reason and result.",
        None,
    ),
    spec(
        CHECKPOINT_LAST_SUCCESS,
        Gauge,
        &[],
        "Unix time of the last committed checkpoint.",
        SECONDS,
    ),
    spec(
        CHECKPOINT_LAST_STEP,
        Gauge,
        &[],
        "Step of the last committed checkpoint.",
        None,
    ),
    spec(
        WORKER_RESTARTS,
        Counter,
        &["reason"],
        "In-job worker restarts by reason.",
        None,
    ),
    spec(
        RECOVERY_DURATION,
        Histogram,
        &["reason"],
        "Failure detected to first step after the restart.",
        SECONDS,
    ),
    spec(
        WORKER_UP,
        Gauge,
        &["rank"],
        "1 while the worker is alive and registered.",
        None,
    ),
    spec(
        WORKER_LAST_PROGRESS,
        Gauge,
        &["rank"],
        "Unix time of the worker's last completed step.",
        SECONDS,
    ),
    spec(
        ALLREDUCE_SECONDS,
        SecondsCounter,
        &["rank"],
        "Time spent in gradient all-reduce.",
        SECONDS,
    ),
    spec(
        ALLREDUCE_BYTES,
        Counter,
        &["rank"],
        "Gradient all-reduce payload.",
        BYTES,
    ),
];

/// The catalogue entry of `name`.
pub fn spec_of(name: &str) -> Option<&'static MetricSpec> {
    CATALOGUE.iter().find(|s| s.name == name)
}

/// Histogram buckets of `name` (metrics.md: step 0.01 … 30 s, checkpoint 0.1 … 600 s, recovery
/// 1 … 1800 s; losses and norms span decades, so they get log-spaced buckets too).
pub fn buckets(name: &str) -> &'static [f64] {
    match name {
        TRAIN_STEP_DURATION => &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        CHECKPOINT_DURATION => &[
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ],
        RECOVERY_DURATION => &[1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0],
        TRAIN_LOSS | TRAIN_LOSS_COMPONENT => {
            &[0.01, 0.03, 0.1, 0.3, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 50.0]
        }
        _ => &[0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0],
    }
}
