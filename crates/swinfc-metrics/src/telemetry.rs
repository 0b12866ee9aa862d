//! [`Telemetry`]: what the launcher holds for the life of a run. It turns worker records and
//! launcher events into the catalogue's metrics and into `events.jsonl` lines, and serves
//! `/metrics`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{Recorder, counter, gauge, histogram, with_local_recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::MetricsError;
use crate::catalogue::*;
use crate::event::{EvalEvent, Event, EventLine, StepEvent};
use crate::http::{Server, reachable};
use crate::lock;
use crate::record::{CheckpointRecord, EvalRecord, Record, SaveReason, StepRecord};
use crate::seconds::SecondsCounters;

/// The file Prometheus' `file_sd_configs` reads this exporter's address from.
pub const TARGETS_FILE: &str = "prometheus-targets.json";
/// One JSON object per line: step summaries, evals, checkpoints, restarts, signals, state changes
/// and, last, the end of the run with its reason.
pub const EVENTS_FILE: &str = "events.jsonl";

/// What a run is, for `swinfc_run_info` and the constant labels.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Stable across restarts and requeues (the `run_id` label on every series).
    pub run_id: String,
    /// The config's file stem (the `experiment` label on every series).
    pub experiment: String,
    pub model: String,
    pub dataset: String,
    pub world_size: usize,
    pub target_steps: u64,
    /// A step summary goes to `events.jsonl` every this many steps (0 counts as 1).
    pub log_every: u64,
    /// β of the stage-2, -3 and -4 cross-entropies; the backbone CE and the contrastive term weigh 1.
    pub loss_weights: [f64; 3],
    pub version: String,
}

/// The file in the run directory that keeps `run_id` across restarts and requeues (the launcher
/// writes it).
pub const RUN_ID_FILE: &str = "run_id";

/// The run's exporter, event log and progress bookkeeping. Send + Sync: share it by reference or
/// `Arc` between the supervisor and the control server's report handler.
pub struct Telemetry {
    recorder: PrometheusRecorder,
    info: RunInfo,
    addr: SocketAddr,
    targets: PathBuf,
    events: Mutex<File>,
    /// The state last written to `events.jsonl`, so each change is one line.
    state: Mutex<Option<RunState>>,
    progress: Mutex<Progress>,
    seconds: Arc<SecondsCounters>,
    // Dropped last: stops serving only after everything above is final.
    _server: Server,
}

/// What is carried from one record to the next.
#[derive(Default)]
struct Progress {
    /// Best accuracy so far by (split, head).
    best: BTreeMap<(String, &'static str), f64>,
    /// Samples of all ranks since `window_start`, for the throughput of the next step summary.
    window_samples: u64,
    window_start: Option<Instant>,
}

impl Telemetry {
    /// Binds `listen` (`host:port`, port 0 picks one), serves `/metrics` from a thread, writes
    /// `run_dir/prometheus-targets.json` and opens `run_dir/events.jsonl` for appending (a requeued
    /// run continues the same file).
    pub fn start(listen: &str, run_dir: &Path, info: RunInfo) -> Result<Telemetry, MetricsError> {
        std::fs::create_dir_all(run_dir).map_err(MetricsError::io(run_dir))?;
        let listener = TcpListener::bind(listen).map_err(|source| MetricsError::Bind {
            listen: listen.to_string(),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| MetricsError::Bind {
            listen: listen.to_string(),
            source,
        })?;

        let mut builder = PrometheusBuilder::new()
            .add_global_label("run_id", &info.run_id)
            .add_global_label("experiment", &info.experiment);
        for spec in CATALOGUE.iter().filter(|s| s.kind == Kind::Histogram) {
            builder = builder.set_buckets_for_metric(Matcher::Full(spec.name.into()), buckets(spec.name))?;
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let seconds = Arc::new(SecondsCounters::new(vec![
            ("run_id", info.run_id.clone()),
            ("experiment", info.experiment.clone()),
        ]));

        let events_path = run_dir.join(EVENTS_FILE);
        let events = File::options()
            .create(true)
            .append(true)
            .open(&events_path)
            .map_err(MetricsError::io(&events_path))?;
        let rendered = seconds.clone();
        let server =
            Server::spawn(listener, move || render(&handle, &rendered)).map_err(MetricsError::io(run_dir))?;
        // Only once something answers there: Prometheus may read the file at once.
        let targets = run_dir.join(TARGETS_FILE);
        write_targets(&targets, addr)?;
        info!(%addr, targets = %targets.display(), "serving /metrics");
        let telemetry = Telemetry {
            recorder,
            info,
            addr,
            targets,
            events: Mutex::new(events),
            state: Mutex::new(None),
            progress: Mutex::new(Progress::default()),
            seconds,
            _server: server,
        };
        telemetry.register_catalogue();
        Ok(telemetry)
    }

    /// The bound address (the real port when `listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `state` the one `swinfc_run_state` series at 1, and logs it if it changed.
    pub fn set_state(&self, state: RunState) {
        self.record(|| set_state_gauges(state));
        let changed = lock(&self.state).replace(state) != Some(state);
        if changed {
            self.event(Event::State { state });
        }
    }

    /// `swinfc_run_attempt`: 1 + in-job restarts + requeues, as the launcher counts them.
    pub fn set_attempt(&self, attempt: u64) {
        self.record(|| gauge!(RUN_ATTEMPT).set(attempt as f64));
    }

    pub fn worker_up(&self, rank: usize, up: bool) {
        self.record(|| gauge!(WORKER_UP, "rank" => rank.to_string()).set(if up { 1.0 } else { 0.0 }));
    }

    /// A worker's step, eval or checkpoint record (schema in [`crate::record`]). Run-wide values
    /// (steps, loss, learning rate, evals, checkpoints) are taken from rank 0 only, so each step
    /// counts once; per-rank values from every rank. The record is decoded here once and returned
    /// typed for the caller's own use; one that does not parse is logged and dropped (`None`): a
    /// worker of another version must not take the launcher down.
    pub fn report(&self, rank: usize, record: &Value) -> Option<Record> {
        let record = Record::deserialize(record)
            .inspect_err(|e| warn!(rank, error = %e, "dropping a worker record that does not parse"))
            .ok()?;
        match &record {
            Record::Step(step) => self.step(rank, step),
            Record::Eval(eval) if rank == 0 => self.eval(eval),
            Record::Checkpoint(checkpoint) if rank == 0 => self.checkpoint(checkpoint),
            _ => {}
        }
        Some(record)
    }

    /// Workers were restarted from the latest checkpoint; `replayed_steps` is the work redone.
    pub fn restart(&self, reason: RestartReason, detail: &str, replayed_steps: u64) {
        self.record(|| {
            counter!(WORKER_RESTARTS, "reason" => reason.label()).increment(1);
            counter!(TRAIN_REPLAYED_STEPS).increment(replayed_steps);
        });
        self.event(Event::Restart {
            reason,
            detail: detail.to_string(),
            replayed_steps,
        });
    }

    /// The first step after a restart completed, `seconds` after the failure was detected.
    pub fn recovered(&self, reason: RestartReason, seconds: f64) {
        self.record(|| histogram!(RECOVERY_DURATION, "reason" => reason.label()).record(seconds));
    }

    /// The launcher received a signal (`SIGTERM`, `SIGUSR1`, ...).
    pub fn signal(&self, name: &str) {
        self.event(Event::Signal {
            signal: name.to_string(),
        });
    }

    /// The drained job asked Slurm to requeue it: `Err` holds why Slurm refused.
    pub fn requeue(&self, job: &str, result: Result<(), &str>) {
        self.event(Event::Requeue {
            job: job.to_string(),
            ok: result.is_ok(),
            error: result.err().map(str::to_string),
        });
    }

    /// Ends the run: final state, the `end` line (the last of `events.jsonl`, giving `reason`),
    /// and the targets file removed so Prometheus stops scraping. `/metrics` is served until this
    /// returns, so a last scrape before it still sees everything.
    pub fn finish(self, state: RunState, reason: &str) {
        self.set_state(state);
        self.event(Event::End {
            state,
            reason: reason.to_string(),
        });
        if let Err(e) = std::fs::remove_file(&self.targets) {
            warn!(path = %self.targets.display(), error = %e, "removing the Prometheus targets file");
        }
    }

    /// The exposition `/metrics` serves, rendered now.
    pub fn render(&self) -> String {
        render(&self.recorder.handle(), &self.seconds)
    }

    fn step(&self, rank: usize, r: &StepRecord) {
        let rank_label = rank.to_string();
        let now = unix_now();
        self.record(|| {
            counter!(TRAIN_SAMPLES, "rank" => rank_label.clone()).increment(r.samples);
            histogram!(TRAIN_STEP_DURATION, "rank" => rank_label.clone()).record(r.seconds);
            counter!(ALLREDUCE_BYTES, "rank" => rank_label.clone()).increment(r.allreduce_bytes);
            for (reason, n) in &r.skipped {
                counter!(DATA_SKIPPED, "rank" => rank_label.clone(), "reason" => reason.label())
                    .increment(*n);
            }
            gauge!(WORKER_LAST_PROGRESS, "rank" => rank_label.clone()).set(now);
            if rank != 0 {
                return;
            }
            counter!(TRAIN_STEPS).increment(1);
            counter!(TRAIN_NONFINITE).increment(r.nonfinite);
            gauge!(TRAIN_STEP).set(r.step as f64);
            gauge!(TRAIN_EPOCH).set(r.epoch as f64);
            gauge!(TRAIN_EPOCH_PROGRESS).set(r.epoch_progress_ratio);
            // A NaN would poison the histogram's sum for good; `nonfinite` counts it instead.
            if let Some(loss) = r.loss.filter(|l| l.is_finite()) {
                histogram!(TRAIN_LOSS).record(loss);
            }
            for (component, value) in r.loss_components.labelled() {
                if let Some(v) = value.filter(|v| v.is_finite()) {
                    histogram!(TRAIN_LOSS_COMPONENT, "component" => component).record(v);
                }
            }
            if let Some(norm) = r.grad_norm.filter(|n| n.is_finite()) {
                histogram!(OPTIMIZER_GRAD_NORM).record(norm);
            }
            for (group, lr) in PARAM_GROUPS.into_iter().zip([r.lr.backbone, r.lr.new]) {
                gauge!(OPTIMIZER_LR, "param_group" => group).set(lr);
            }
        });
        for (phase, secs) in r.phases.labelled() {
            self.seconds.add(
                TRAIN_STEP_PHASE,
                vec![("rank", rank_label.clone()), ("phase", phase.into())],
                secs,
            );
        }
        self.seconds
            .add(ALLREDUCE_SECONDS, vec![("rank", rank_label)], r.allreduce_seconds);

        let throughput = {
            let mut progress = lock(&self.progress);
            // The first window starts when the first reported step did.
            let start = *progress.window_start.get_or_insert_with(|| {
                let now = Instant::now();
                Duration::try_from_secs_f64(r.seconds)
                    .ok()
                    .and_then(|d| now.checked_sub(d))
                    .unwrap_or(now)
            });
            progress.window_samples += r.samples;
            let due = rank == 0
                && (r.step.is_multiple_of(self.info.log_every.max(1)) || r.step == self.info.target_steps);
            due.then(|| {
                let elapsed = start.elapsed().as_secs_f64();
                let rate = if elapsed > 0.0 {
                    progress.window_samples as f64 / elapsed
                } else {
                    0.0
                };
                progress.window_samples = 0;
                progress.window_start = Some(Instant::now());
                rate
            })
        };
        if let Some(samples_per_second) = throughput {
            // Samples that accumulated between scrapes are drained into the histograms here, so a
            // run nobody scrapes does not grow without bound.
            self.recorder.handle().run_upkeep();
            self.event(Event::Step(StepEvent {
                step: r.step,
                epoch: r.epoch,
                loss: r.loss,
                loss_components: r.loss_components.clone(),
                lr: r.lr.clone(),
                grad_norm: r.grad_norm,
                samples_per_second,
                step_seconds: r.seconds,
            }));
        }
    }

    fn eval(&self, r: &EvalRecord) {
        let split = r.split.clone();
        let mut progress = lock(&self.progress);
        let best = &mut progress.best;
        self.record(|| {
            for (head, accuracy) in r.result.labelled() {
                gauge!(EVAL_ACCURACY, "split" => split.clone(), "head" => head).set(accuracy);
                let b = best.entry((split.clone(), head)).or_insert(accuracy);
                *b = b.max(accuracy);
                gauge!(EVAL_BEST_ACCURACY, "split" => split.clone(), "head" => head).set(*b);
            }
            gauge!(EVAL_SAMPLES, "split" => split.clone()).set(r.result.samples as f64);
        });
        drop(progress);
        self.event(Event::Eval(EvalEvent::from(r)));
    }

    fn checkpoint(&self, r: &CheckpointRecord) {
        let reason = r.reason.label();
        let result = if r.ok { "success" } else { "failure" };
        self.record(|| {
            counter!(CHECKPOINTS, "reason" => reason, "result" => result).increment(1);
            // Training paused whether or not the write then succeeded.
            histogram!(CHECKPOINT_DURATION, "phase" => "blocking").record(r.blocking_seconds);
            if r.ok {
                histogram!(CHECKPOINT_DURATION, "phase" => "write").record(r.write_seconds);
                histogram!(CHECKPOINT_DURATION, "phase" => "total").record(r.total_seconds);
                gauge!(CHECKPOINT_SIZE).set(r.bytes as f64);
                gauge!(CHECKPOINT_LAST_SUCCESS).set(unix_now());
                gauge!(CHECKPOINT_LAST_STEP).set(r.step as f64);
            }
        });
        self.event(Event::Checkpoint(r.clone()));
    }

    /// Every catalogue series whose label values are known up front, at its zero, so dashboards
    /// and alerts see a flat line rather than no data before the first event.
    fn register_catalogue(&self) {
        for spec in CATALOGUE {
            match spec.kind {
                Kind::Counter => self
                    .recorder
                    .describe_counter(spec.name.into(), None, spec.help.into()),
                Kind::Gauge => self
                    .recorder
                    .describe_gauge(spec.name.into(), None, spec.help.into()),
                Kind::Histogram => self
                    .recorder
                    .describe_histogram(spec.name.into(), None, spec.help.into()),
                Kind::SecondsCounter => {}
            }
        }
        let info = &self.info;
        let ranks: Vec<String> = (0..info.world_size).map(|r| r.to_string()).collect();
        self.record(|| {
            gauge!(RUN_INFO, "model" => info.model.clone(), "dataset" => info.dataset.clone(),
                "world_size" => info.world_size.to_string(), "version" => info.version.clone())
            .set(1.0);
            set_state_gauges(RunState::Starting);
            gauge!(RUN_ATTEMPT).set(1.0);
            gauge!(WORLD_SIZE).set(info.world_size as f64);
            gauge!(TRAIN_TARGET_STEPS).set(info.target_steps as f64);
            gauge!(TRAIN_STEP).set(0.0);
            let weights = [
                1.0,
                info.loss_weights[0],
                info.loss_weights[1],
                info.loss_weights[2],
                1.0,
            ];
            for (component, weight) in LOSS_COMPONENTS.into_iter().zip(weights) {
                gauge!(TRAIN_LOSS_WEIGHT, "component" => component).set(weight);
                let _ = histogram!(TRAIN_LOSS_COMPONENT, "component" => component);
            }
            let _ = counter!(TRAIN_STEPS);
            let _ = counter!(TRAIN_REPLAYED_STEPS);
            let _ = counter!(TRAIN_NONFINITE);
            let _ = histogram!(TRAIN_LOSS);
            let _ = histogram!(OPTIMIZER_GRAD_NORM);
            for rank in &ranks {
                let _ = counter!(TRAIN_SAMPLES, "rank" => rank.clone());
                let _ = counter!(ALLREDUCE_BYTES, "rank" => rank.clone());
                let _ = histogram!(TRAIN_STEP_DURATION, "rank" => rank.clone());
                for reason in SKIP_REASONS {
                    let _ = counter!(DATA_SKIPPED, "rank" => rank.clone(), "reason" => reason);
                }
            }
            for reason in SaveReason::ALL {
                for result in CHECKPOINT_RESULTS {
                    let _ = counter!(CHECKPOINTS, "reason" => reason.label(), "result" => result);
                }
            }
            for phase in CHECKPOINT_PHASES {
                let _ = histogram!(CHECKPOINT_DURATION, "phase" => phase);
            }
            for reason in RestartReason::ALL {
                let _ = counter!(WORKER_RESTARTS, "reason" => reason.label());
                let _ = histogram!(RECOVERY_DURATION, "reason" => reason.label());
            }
        });
        for rank in ranks {
            for phase in PHASES {
                self.seconds.add(
                    TRAIN_STEP_PHASE,
                    vec![("rank", rank.clone()), ("phase", phase.into())],
                    0.0,
                );
            }
            self.seconds.add(ALLREDUCE_SECONDS, vec![("rank", rank)], 0.0);
        }
    }

    fn record(&self, f: impl FnOnce()) {
        with_local_recorder(&self.recorder, f);
    }

    /// Appends one line to `events.jsonl`; a full disk is logged, never fatal to the run.
    fn event(&self, event: Event) {
        let line = EventLine {
            ts: (unix_now() * 1000.0).round() / 1000.0,
            event,
        };
        let mut text = match serde_json::to_string(&line) {
            Ok(text) => text,
            Err(e) => return warn!(error = %e, "encoding an {EVENTS_FILE} line"),
        };
        text.push('\n');
        // One write per line on an append-mode file: lines never interleave, and each is on its
        // way to disk before the next record is handled.
        if let Err(e) = lock(&self.events).write_all(text.as_bytes()) {
            warn!(error = %e, "writing {EVENTS_FILE}");
        }
    }
}

fn set_state_gauges(state: RunState) {
    for s in RunState::ALL {
        gauge!(RUN_STATE, "state" => s.label()).set(if s == state { 1.0 } else { 0.0 });
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `[{"targets": ["host:port"], "labels": {}}]`, replaced atomically so Prometheus never reads half
/// a file. No labels: `run_id` and `experiment` are already on every series.
fn write_targets(path: &Path, addr: SocketAddr) -> Result<(), MetricsError> {
    let target = reachable(addr).to_string();
    let body = json!([{"targets": [target], "labels": {}}]).to_string();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, body).map_err(MetricsError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(MetricsError::io(path))
}

/// The registry's exposition followed by the seconds counters'.
fn render(handle: &PrometheusHandle, seconds: &SecondsCounters) -> String {
    let mut text = handle.render();
    seconds.render_into(&mut text);
    text
}
