//! One worker's training run, top to bottom as the algorithm: agree on where to start, build
//! identical replicas, then per step: data → forward → losses → backward → all-reduce → step
//! ([`Trainer::train_step`]) → metrics → checkpoint, with evaluation every `eval.every_steps` and
//! at the end.

use std::collections::BTreeMap;
use std::iter;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::ExecutionError;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use sha2::{Digest, Sha256};
pub use swinfc_comm::Resume;
use swinfc_comm::{Collective, CommError, ControlClient, Phase, ServerCommand};
use swinfc_config::ConfigError;
use swinfc_data::decode::DecodeKind;
use swinfc_data::{
    BatchRequest, DataConfig, DataError, Dataset, Loader, PROBE_TRAIN_IMAGES, TrainStream, eval_shard,
    probe_train,
};
use swinfc_metrics::record::{CheckpointRecord, EvalRecord, EvalResult, Record, SkipReason, StepRecord};
use swinfc_model::weights::{
    StateDict, WeightsError, load_pretrained, load_state_dict, safetensors_bytes, state_dict,
    state_dict_from_bytes,
};
use swinfc_model::{SwinFc, TrainBackend};
use tracing::{info, warn};

use crate::checkpoint::{
    CLASSES, CONFIG, CheckpointData, CheckpointError, CheckpointWriter, Disk, MODEL, OPTIMIZER, SaveReason,
    SaveResult, TrainState, latest_valid, verify,
};
use crate::config::TrainConfig;
use crate::optim::Sgd;
use crate::step::{StepConfig, StepOutcome, Trainer};
use crate::sync::{CheckError, GradSync, SyncError};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Resume(String),
    #[error("replicas differ after the initial broadcast (rank {rank})")]
    Replicas { rank: usize },
    #[error("{0} consecutive steps had a non-finite loss or gradient; stopping")]
    NonFinite(u32),
    #[error("the training data ran out during step {step}")]
    DataRanOut { step: u64 },
    #[error(
        "none of the {tried} train images sampled before training could be read (first: {path}: \
         {reason}); `swinfc data check CONFIG` lists every unreadable image of the dataset"
    )]
    NoReadableImages {
        tried: usize,
        path: String,
        reason: String,
    },
    #[error("device: {0}")]
    Device(#[from] ExecutionError),
    #[error(transparent)]
    DeviceCheck(#[from] CheckError),
    #[error(
        "the {reason} checkpoint of step {step} could not be written: {error}; earlier checkpoints \
         are intact, the steps after them are not saved: free space or fix the directory, then \
         resume"
    )]
    LastSaveFailed {
        step: u64,
        reason: &'static str,
        error: CheckpointError,
    },
    #[error(
        "step {step}: `{tensor}` holds a non-finite value; no checkpoint is written from these \
         weights (the previous ones are the resume points): lower the learning rates or check the \
         data"
    )]
    NonFiniteWeights { step: u64, tensor: String },
    #[error("aborted by the launcher")]
    Aborted,
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl From<SyncError> for TrainError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::Comm(e) => TrainError::Comm(e),
            SyncError::Check(e) => TrainError::DeviceCheck(e),
        }
    }
}

impl TrainError {
    /// Whether running the same command again would fail the same way: a restart cannot fix it.
    pub fn is_permanent(&self) -> bool {
        match self {
            TrainError::Config(_)
            | TrainError::Weights(_)
            | TrainError::Resume(_)
            | TrainError::NonFinite(_)
            | TrainError::NonFiniteWeights { .. }
            | TrainError::NoReadableImages { .. }
            | TrainError::DeviceCheck(_)
            | TrainError::LastSaveFailed { .. } => true,
            // A loader thread's panic or an I/O error may pass; bad data does not.
            TrainError::Data(e) => !matches!(e, DataError::Io { .. } | DataError::Internal(_)),
            _ => false,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Optimizer steps completed.
    pub steps: u64,
    pub last_eval: Option<EvalResult>,
    /// Stopped by the launcher's `stop after step k` (preemption) rather than finishing.
    pub preempted: bool,
}

/// Where a worker's records and heartbeats go, and where its stop commands come from.
pub enum Link<'a> {
    /// A launched job's worker: the control connection to its launcher.
    Launcher(&'a mut ControlClient),
    /// `swinfc train`: records go to a function of this process (its console); nothing asks it
    /// to stop, so it has no heartbeats either.
    Local(&'a mut dyn FnMut(&Record)),
}

impl Link<'_> {
    pub(crate) fn launcher(&mut self) -> Option<&mut ControlClient> {
        match self {
            Link::Launcher(control) => Some(control),
            Link::Local(_) => None,
        }
    }

    fn report(&mut self, record: Record) -> Result<(), TrainError> {
        match self {
            Link::Launcher(control) => {
                let value =
                    serde_json::to_value(record).expect("records have string keys and no custom serialisers");
                Ok(control.report(value)?)
            }
            Link::Local(observe) => {
                observe(&record);
                Ok(())
            }
        }
    }

    fn heartbeat(&mut self, step: u64, phase: Phase) -> Result<(), TrainError> {
        if let Some(control) = self.launcher() {
            control.heartbeat(step, phase)?;
        }
        Ok(())
    }
}

/// Trains on this worker. Every rank calls it with the same config and its own collective;
/// `link` carries its records to the launcher or the local console; `grad_sync` says where the
/// gradients are summed (host and `comm`, or on the device).
pub fn train<B: TrainBackend>(
    cfg: &TrainConfig,
    resume: &Resume,
    comm: &mut dyn Collective,
    mut link: Link,
    grad_sync: GradSync<B::InnerBackend>,
    device: &B::Device,
) -> Result<RunSummary, TrainError> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let accum = cfg.grad_accum(world)?;
    let data_cfg = cfg.data.clone();
    let dataset = Arc::new(cfg.open_dataset()?);
    let (tried, unreadable) = probe_train(&dataset, PROBE_TRAIN_IMAGES);
    if let Some(first) = unreadable.first().filter(|_| unreadable.len() == tried) {
        return Err(TrainError::NoReadableImages {
            tried,
            path: first.path.clone(),
            reason: first.reason.clone(),
        });
    }
    if rank == 0 {
        write_resolved_config(cfg)?;
    }

    // Where to start: rank 0 decides, everyone follows with an identical replica.
    let start = agree_on_start(cfg, resume, comm)?;
    let (model, sgd) = build_replicas::<B>(cfg, start.as_ref(), comm, device)?;
    let start = start.map(|(_, state)| state);
    let streak = start.as_ref().map_or(0, |s| s.nonfinite_streak);
    let step_cfg = StepConfig::of_run(cfg, accum);
    let mut trainer = Trainer::new(model, sgd, grad_sync, step_cfg, streak, device.clone());
    let mut run = Run::new(cfg, data_cfg, dataset, world, start.as_ref());
    let mut loader = run.train_loader(rank, accum);
    let writer = (rank == 0).then(|| {
        let c = &cfg.checkpoint;
        CheckpointWriter::new(
            cfg.run.dir.checkpoints(),
            c.keep_last,
            c.keep_best,
            Box::new(Disk),
        )
    });
    let (total, mut step, mut stop_after) = (cfg.train.total_steps, run.first_step, None);
    info!(
        rank,
        world,
        accum,
        micro = cfg.train.micro_batch,
        step,
        "training"
    );

    while step < total {
        let stop_vote = poll_launcher(link.launcher(), step, &mut stop_after)?;
        // Data → forward → losses → backward → all-reduce → clip → SGD update.
        let outcome = trainer.train_step(iter::from_fn(|| loader.next()), step, stop_vote, comm)?;
        step = outcome.step;

        // Metrics.
        link.report(Record::Step(run.step_record(&outcome, loader.skip_counts())))?;
        if rank == 0 && (step % cfg.metrics.log_every.max(1) == 0 || step == total) {
            let (loss, grad_norm, lr) = (outcome.losses.total, outcome.grad_norm, outcome.lr.new);
            info!(rank, step, loss, grad_norm, lr, "step");
        }

        // Evaluation and checkpoints.
        let accuracy = maybe_evaluate(&mut run, &trainer, step, outcome.stopping, comm, &mut link)?;
        if let Some(writer) = &writer {
            maybe_save(writer, &run, &trainer, step, outcome.stopping, accuracy)?;
            report_saves(writer.finished(), &mut link)?;
        }
        if outcome.stopping {
            info!(rank, step, "stopping after this step as the launcher asked");
            break;
        }
    }
    drop(loader);
    link.heartbeat(step, Phase::Finishing)?;
    if let Some(writer) = writer {
        report_saves(writer.flush(), &mut link)?;
    }
    comm.barrier()?;
    Ok(RunSummary {
        steps: step,
        last_eval: run.last_eval,
        preempted: step < total,
    })
}

/// The run around the steps: its data, where the training stream stands, and what evaluation
/// has found so far.
struct Run<'a> {
    cfg: &'a TrainConfig,
    data_cfg: DataConfig,
    dataset: Arc<Dataset>,
    stream: TrainStream,
    world: usize,
    /// The step and the stream position this run started (or resumed) at.
    first_step: u64,
    stream_start: u64,
    /// Samples per step, over all ranks.
    global: u64,
    best: Option<f64>,
    last_eval: Option<EvalResult>,
    /// Loader skip counts already reported: records carry what was skipped since the previous one.
    skips_reported: BTreeMap<DecodeKind, u64>,
}

impl<'a> Run<'a> {
    fn new(
        cfg: &'a TrainConfig,
        data_cfg: DataConfig,
        dataset: Arc<Dataset>,
        world: usize,
        start: Option<&TrainState>,
    ) -> Self {
        Self {
            cfg,
            data_cfg,
            stream: TrainStream::new(cfg.run.seed, dataset.train.len()),
            dataset,
            world,
            first_step: start.map_or(0, |s| s.step),
            stream_start: start.map_or(0, |s| s.stream_position),
            global: cfg.train.global_batch as u64,
            best: start.and_then(|s| s.best_accuracy),
            last_eval: None,
            skips_reported: BTreeMap::new(),
        }
    }

    /// Samples of the training stream consumed after `step` steps: the whole resume state of
    /// the sampler.
    fn position(&self, step: u64) -> u64 {
        self.stream_start + (step - self.first_step) * self.global
    }

    /// This rank's micro-batches of every remaining step, in order.
    fn train_loader(&self, rank: usize, accum: usize) -> Loader {
        let (stream, world, micro) = (self.stream, self.world, self.cfg.train.micro_batch);
        let (first_step, stream_start, global) = (self.first_step, self.stream_start, self.global);
        let requests = (first_step..self.cfg.train.total_steps).flat_map(move |step| {
            let step_start = stream_start + (step - first_step) * global;
            (0..accum).map(move |a| {
                BatchRequest::Train(stream.micro_batch_at(step_start, rank, world, accum, micro, a))
            })
        });
        Loader::new(self.dataset.clone(), &self.data_cfg, self.cfg.run.seed, requests)
    }

    /// The step's record, given the loader's skip counts so far.
    fn step_record(&mut self, outcome: &StepOutcome, skips: BTreeMap<DecodeKind, u64>) -> StepRecord {
        let position = self.position(outcome.step);
        let train_len = self.stream.train_len().max(1) as u64;
        let mut skipped = BTreeMap::new();
        for (&kind, n) in &skips {
            let new = n - self.skips_reported.get(&kind).unwrap_or(&0);
            if new > 0 {
                *skipped.entry(skip_reason(kind)).or_default() += new;
            }
        }
        self.skips_reported = skips;
        outcome.record(
            self.stream.epoch_of(position),
            (position % train_len) as f64 / train_len as f64,
            skipped,
        )
    }
}

/// The record's reason for an image the loader could not read. The two crates do not know each
/// other; this match is their only link, so a kind added to either is a compile error here.
fn skip_reason(kind: DecodeKind) -> SkipReason {
    match kind {
        DecodeKind::EmptyFile => SkipReason::EmptyFile,
        DecodeKind::IoError => SkipReason::IoError,
        DecodeKind::UnknownFormat => SkipReason::UnknownFormat,
        DecodeKind::Truncated => SkipReason::Truncated,
        DecodeKind::DecodeError => SkipReason::DecodeError,
    }
}

/// A heartbeat, and the launcher's commands: returns this rank's vote to stop after `step`.
fn poll_launcher(
    control: Option<&mut ControlClient>,
    step: u64,
    stop_after: &mut Option<u64>,
) -> Result<bool, TrainError> {
    if let Some(control) = control {
        match control.poll_command()? {
            Some(ServerCommand::StopAfterStep(k)) => *stop_after = Some(k),
            Some(ServerCommand::Abort) => return Err(TrainError::Aborted),
            None => {}
        }
        control.heartbeat(step, Phase::Train)?;
    }
    Ok(stop_after.is_some_and(|k| step + 1 >= k))
}

/// Evaluates on the test split every `eval.every_steps` and after the last step, unless the run
/// is stopping; returns the combined top-1.
fn maybe_evaluate<B: TrainBackend>(
    run: &mut Run,
    trainer: &Trainer<B>,
    step: u64,
    stopping: bool,
    comm: &mut dyn Collective,
    link: &mut Link,
) -> Result<Option<f64>, TrainError> {
    let cfg = run.cfg;
    let every = cfg.eval.every_steps;
    if stopping || !(step == cfg.train.total_steps || (every > 0 && step.is_multiple_of(every))) {
        return Ok(None);
    }
    link.heartbeat(step, Phase::Eval)?;
    let copy = trainer.sgd().compute_copy(trainer.model(), cfg.train.precision);
    let model = copy.as_ref().unwrap_or(trainer.model());
    let result = evaluate(
        model,
        &run.dataset,
        &run.data_cfg,
        cfg,
        step,
        comm,
        trainer.device(),
    )?;
    info!(
        rank = comm.rank(),
        step,
        top1 = result.combined,
        backbone = result.backbone,
        samples = result.samples,
        "eval"
    );
    link.report(Record::Eval(EvalRecord {
        split: "test".into(),
        result,
    }))?;
    run.best = Some(run.best.map_or(result.combined, |b| b.max(result.combined)));
    run.last_eval = Some(result);
    Ok(Some(result.combined))
}

/// Hands rank 0's checkpoint to the background writer every `checkpoint.every_steps`, after the
/// last step and when the run is stopping.
fn maybe_save<B: TrainBackend>(
    writer: &CheckpointWriter,
    run: &Run,
    trainer: &Trainer<B>,
    step: u64,
    stopping: bool,
    accuracy: Option<f64>,
) -> Result<(), TrainError> {
    let started = Instant::now();
    let cfg = run.cfg;
    let every = cfg.checkpoint.every_steps;
    let reason = if step == cfg.train.total_steps {
        SaveReason::Final
    } else if stopping {
        SaveReason::Preemption
    } else if every > 0 && step.is_multiple_of(every) {
        SaveReason::Periodic
    } else {
        return Ok(());
    };
    let position = run.position(step);
    let state = TrainState {
        step,
        epoch: run.stream.epoch_of(position),
        stream_position: position,
        seed: cfg.run.seed,
        config_hash: cfg.hash(),
        world_size: run.world,
        micro_batch: cfg.train.micro_batch,
        global_batch: cfg.train.global_batch,
        accuracy,
        best_accuracy: run.best,
        nonfinite_streak: trainer.nonfinite_streak(),
    };
    let model = state_dict(trainer.model());
    // A resume point must be one: weights that are no longer numbers would be resumed forever.
    if let Some((name, _)) = model.iter().find(|(_, t)| t.data.iter().any(|v| !v.is_finite())) {
        return Err(TrainError::NonFiniteWeights {
            step,
            tensor: name.clone(),
        });
    }
    let data = checkpoint_data(
        model,
        trainer.sgd(),
        trainer.model(),
        state,
        cfg,
        &run.dataset.classes,
    );
    writer.submit(data, reason, started);
    Ok(())
}

fn write_resolved_config(cfg: &TrainConfig) -> Result<(), TrainError> {
    let io = |path: PathBuf| move |source| TrainError::Io { path, source };
    let root = cfg.run.dir.root();
    std::fs::create_dir_all(root).map_err(io(root.to_path_buf()))?;
    let path = cfg.run.dir.config();
    std::fs::write(&path, cfg.resolved_yaml()).map_err(io(path))
}

/// Rank 0 resolves the resume request; the others receive its answer.
fn agree_on_start(
    cfg: &TrainConfig,
    resume: &Resume,
    comm: &mut dyn Collective,
) -> Result<Option<(PathBuf, TrainState)>, TrainError> {
    let mut bytes = Vec::new();
    if comm.rank() == 0 {
        let found = match resume {
            Resume::None => None,
            Resume::Auto => latest_valid(&cfg.run.dir.checkpoints()),
            Resume::Path(dir) => Some((dir.clone(), verify(dir)?)),
        };
        if let Some((dir, state)) = &found {
            if state.micro_batch != cfg.train.micro_batch {
                return Err(TrainError::Resume(format!(
                    "{} was trained with train.micro_batch {}, the config says {}: the contrastive loss is \
                     per micro-batch, so it cannot change on resume",
                    dir.display(),
                    state.micro_batch,
                    cfg.train.micro_batch
                )));
            }
            if state.global_batch != cfg.train.global_batch {
                return Err(TrainError::Resume(format!(
                    "{} was trained with train.global_batch {}, the config says {}",
                    dir.display(),
                    state.global_batch,
                    cfg.train.global_batch
                )));
            }
            if state.config_hash != cfg.hash() {
                warn!(checkpoint = %dir.display(), "the config changed since this checkpoint was written");
            }
            info!(checkpoint = %dir.display(), step = state.step, "resuming");
        }
        bytes = serde_json::to_vec(&found).expect("serialisable");
    }
    comm.broadcast_bytes(0, &mut bytes)?;
    serde_json::from_slice(&bytes).map_err(|e| TrainError::Resume(format!("resume decision: {e}")))
}

/// Rank 0 builds the model (fresh, pretrained or from the checkpoint) and its optimizer state;
/// every rank receives the same bytes, and a hash check proves the replicas identical.
fn build_replicas<B: TrainBackend>(
    cfg: &TrainConfig,
    start: Option<&(PathBuf, TrainState)>,
    comm: &mut dyn Collective,
    device: &B::Device,
) -> Result<(SwinFc<B>, Sgd<B>), TrainError> {
    let model = cfg.model.init::<B>(cfg.run.seed, device);
    let (mut model_bytes, mut optim_bytes) = (Vec::new(), Vec::new());
    if comm.rank() == 0 {
        let read = |path: PathBuf| std::fs::read(&path).map_err(|source| TrainError::Io { path, source });
        (model_bytes, optim_bytes) = match start {
            Some((dir, _)) => (read(dir.join(MODEL))?, read(dir.join(OPTIMIZER))?),
            None => {
                let model = match &cfg.train.pretrained {
                    Some(path) => {
                        let (model, convert, load) = load_pretrained(model.clone(), path)?;
                        info!(path = %path.display(), layout = ?convert.layout, initialised = load.initialised.len(), "pretrained weights");
                        model
                    }
                    None => model.clone(),
                };
                (to_bytes(&state_dict(&model)), Vec::new())
            }
        };
    }
    comm.broadcast_bytes(0, &mut model_bytes)?;
    comm.broadcast_bytes(0, &mut optim_bytes)?;
    let (model, _) = load_state_dict(model, &state_dict_from_bytes(&model_bytes)?)?;
    let sgd = if optim_bytes.is_empty() {
        Sgd::new(&model)
    } else {
        Sgd::load_state_dict(&model, &state_dict_from_bytes(&optim_bytes)?)?
    };

    let mut hash = Sha256::digest(to_bytes(&state_dict(&model))).to_vec();
    let mine = hash.clone();
    comm.broadcast_bytes(0, &mut hash)?;
    let mut differs = [f32::from(hash != mine)];
    comm.all_reduce_sum_f32(&mut differs)?;
    if differs[0] > 0.0 {
        return Err(TrainError::Replicas { rank: comm.rank() });
    }
    Ok((model, sgd))
}

fn to_bytes(dict: &StateDict) -> Vec<u8> {
    safetensors_bytes(dict, None).expect("f32 tensors serialise")
}

fn checkpoint_data<B: TrainBackend>(
    weights: StateDict,
    sgd: &Sgd<B>,
    model: &SwinFc<B>,
    state: TrainState,
    cfg: &TrainConfig,
    classes: &[String],
) -> CheckpointData {
    CheckpointData {
        state,
        files: vec![
            (MODEL.into(), to_bytes(&weights)),
            (OPTIMIZER.into(), to_bytes(&sgd.state_dict(model))),
            (CONFIG.into(), cfg.resolved_yaml().into_bytes()),
            (
                CLASSES.into(),
                serde_json::to_vec(classes).expect("strings serialise"),
            ),
        ],
    }
}

/// Rank 0's finished saves, logged and reported. A failed periodic save keeps the previous
/// checkpoints and training goes on, saying so (the launcher counts it in
/// `swinfc_checkpoints_total{result="failure"}`); a failed last save of a run (its end, or a drain)
/// has no later save to make up for it, and fails the run once reported.
fn report_saves(results: Vec<SaveResult>, link: &mut Link) -> Result<(), TrainError> {
    for result in results {
        let (record, fatal) = match result {
            Ok(saved) => {
                info!(step = saved.state.step, dir = %saved.dir.display(), bytes = saved.bytes, "checkpoint saved");
                let record = CheckpointRecord {
                    ok: true,
                    step: saved.state.step,
                    reason: saved.reason,
                    bytes: saved.bytes,
                    blocking_seconds: saved.blocking_seconds,
                    write_seconds: saved.write_seconds,
                    total_seconds: saved.total_seconds,
                    error: None,
                };
                (record, None)
            }
            Err(failed) => {
                warn!(error = %failed.error, "checkpoint failed; the previous one is intact");
                let record = CheckpointRecord {
                    ok: false,
                    step: failed.step,
                    reason: failed.reason,
                    bytes: 0,
                    blocking_seconds: failed.blocking_seconds,
                    write_seconds: 0.0,
                    total_seconds: 0.0,
                    error: Some(failed.error.to_string()),
                };
                let fatal = (failed.reason != SaveReason::Periodic).then(|| TrainError::LastSaveFailed {
                    step: failed.step,
                    reason: failed.reason.label(),
                    error: failed.error,
                });
                (record, fatal)
            }
        };
        link.report(Record::Checkpoint(record))?;
        if let Some(error) = fatal {
            return Err(error);
        }
    }
    Ok(())
}

/// Top-1 of every head on this rank's shard of the test split, summed over ranks.
pub fn evaluate<B: TrainBackend>(
    model: &SwinFc<B>,
    dataset: &Arc<Dataset>,
    data_cfg: &DataConfig,
    cfg: &TrainConfig,
    step: u64,
    comm: &mut dyn Collective,
    device: &B::Device,
) -> Result<EvalResult, TrainError> {
    let shard = eval_shard(dataset.test.len(), comm.rank(), comm.world_size());
    let indices: Vec<usize> = shard.collect();
    let requests: Vec<BatchRequest> = indices
        .chunks(cfg.train.micro_batch)
        .map(|c| BatchRequest::Test(c.to_vec()))
        .collect();
    let mut loader = Loader::new(dataset.clone(), data_cfg, cfg.run.seed, requests.into_iter());
    let model = model.valid();
    // [combined, backbone, stage2, stage3, stage4, samples]
    let mut counts = [0.0f32; 6];
    while let Some(batch) = loader.next() {
        let batch = batch?;
        let n = batch.labels.len();
        let images = Tensor::from_data(TensorData::new(batch.images, batch.shape), device);
        let labels = Tensor::<B::InnerBackend, 1, Int>::from_data(TensorData::new(batch.labels, [n]), device);
        let out = model.forward(images, None);
        let [z2, z3, z4] = out.logits_stages.clone();
        for (count, logits) in counts
            .iter_mut()
            .zip([out.logits_combined(), out.logits_swin, z2, z3, z4])
        {
            let correct = logits.argmax(1).reshape([n]).equal(labels.clone()).int().sum();
            *count += correct.into_scalar().elem::<i64>() as f32;
        }
        counts[5] += n as f32;
    }
    comm.all_reduce_sum_f32(&mut counts)?;
    let samples = counts[5] as u64;
    let split = dataset.test.len() as u64;
    if samples != split && comm.rank() == 0 {
        // The loader skipped unreadable images: the accuracy is over the ones it could read.
        warn!(
            step,
            samples,
            split,
            "evaluation covered {} fewer images than the split has",
            split.saturating_sub(samples)
        );
    }
    let acc = |c: f32| {
        if samples == 0 {
            0.0
        } else {
            c as f64 / samples as f64
        }
    };
    Ok(EvalResult {
        step,
        samples,
        combined: acc(counts[0]),
        backbone: acc(counts[1]),
        stage2: acc(counts[2]),
        stage3: acc(counts[3]),
        stage4: acc(counts[4]),
    })
}
