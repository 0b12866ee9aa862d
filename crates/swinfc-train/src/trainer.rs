//! One worker's training run, top to bottom as the algorithm: agree on where to start, build
//! identical replicas, then per step: data → forward → losses → backward → all-reduce → step →
//! metrics → checkpoint, with evaluation every `eval.every_steps` and at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use sha2::{Digest, Sha256};
use swinfc_comm::{Collective, CommError, ControlClient, ServerCommand};
use swinfc_data::{
    BatchRequest, DataConfig, DataError, Dataset, Loader, TrainStream, eval_shard, open_dataset,
};
pub use swinfc_metrics::record::EvalResult;
use swinfc_metrics::record::{
    CheckpointRecord, EvalRecord, LearningRates, LossComponents, Phases, Record, StepRecord,
};
use swinfc_model::drop_path::splitmix64;
use swinfc_model::weights::{
    StateDict, WeightsError, load_pretrained, load_state_dict, safetensors_bytes, state_dict,
    state_dict_from_bytes,
};
use swinfc_model::{ConfigError, SwinFc, TrainBackend, swinfc_loss};
use tracing::{info, warn};

use crate::checkpoint::{
    CLASSES, CONFIG, CheckpointData, CheckpointError, CheckpointWriter, Disk, SaveReason, SaveResult,
    TrainState, latest_valid, verify,
};
use crate::config::TrainConfig;
use crate::optim::{FlatLayout, Sgd, StepSettings, compute_copy, flatten_grads, learning_rate};
use crate::sync::GradSync;

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
    #[error("aborted by the launcher")]
    Aborted,
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Where a run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Fresh, even if checkpoints exist.
    None,
    /// The newest checkpoint of the run directory that verifies; fresh if there is none.
    Auto,
    /// That checkpoint directory (an error if it does not verify).
    Path(PathBuf),
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

/// The six loss values ride in the gradient all-reduce (at the end of its buffer on the CPU).
const LOSS_SLOTS: usize = 6;
/// One more slot after the losses: how many ranks hold the launcher's stop request. Voting in the
/// step's own all-reduce makes every rank stop after the same step, however late each one read
/// the request.
const STOP_SLOT: usize = 1;

/// Trains on this worker. Every rank calls it with the same config and its own collective;
/// `control` (absent for a single local process) carries heartbeats, reports and commands;
/// `grad_sync` says where the gradients are summed (host and `comm`, or on the device).
pub fn train<B: TrainBackend>(
    cfg: &TrainConfig,
    resume: &Resume,
    comm: &mut dyn Collective,
    mut control: Option<&mut ControlClient>,
    grad_sync: &mut GradSync<B::InnerBackend>,
    device: &B::Device,
) -> Result<RunSummary, TrainError> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let accum = cfg.grad_accum(world)?;
    let micro = cfg.train.micro_batch;
    let data_cfg = DataConfig::from_yaml(&cfg.data)?;
    let dataset = Arc::new(open_dataset(&data_cfg)?);
    let checkpoints = cfg.run.dir.join("checkpoints");
    if rank == 0 {
        write_resolved_config(cfg)?;
    }

    // Where to start: rank 0 decides, everyone follows.
    let start = agree_on_start(cfg, resume, comm)?;
    let (mut model, mut sgd) = build_replicas::<B>(cfg, start.as_ref(), comm, device)?;
    let (first_step, stream_start, mut best, mut nonfinite_streak) = match &start {
        Some((_, s)) => (s.step, s.stream_position, s.best_accuracy, s.nonfinite_streak),
        None => (0, 0, None, 0),
    };
    info!(rank, world, accum, micro, step = first_step, "training");

    let global = (world * accum * micro) as u64;
    let stream = TrainStream::new(cfg.run.seed, dataset.train.len());
    let total = cfg.train.total_steps;
    let requests = (first_step..total).flat_map(move |step| {
        let step_start = stream_start + (step - first_step) * global;
        (0..accum).map(move |a| {
            BatchRequest::Train(stream.micro_batch_at(step_start, rank, world, accum, micro, a))
        })
    });
    let mut loader = Loader::new(dataset.clone(), &data_cfg, cfg.run.seed, requests);
    let writer = (rank == 0).then(|| {
        CheckpointWriter::new(
            checkpoints,
            cfg.checkpoint.keep_last,
            cfg.checkpoint.keep_best,
            Box::new(Disk),
        )
    });
    let flat_len = sgd.layout().len;
    let mut last_eval = None;
    let mut stop_after = None;
    let mut step = first_step;
    // Loader skip counts already reported: records carry what was skipped since the previous one.
    let mut skips_reported = BTreeMap::new();

    while step < total {
        if let Some(control) = control.as_deref_mut() {
            match control.poll_command()? {
                Some(ServerCommand::StopAfterStep(k)) => stop_after = Some(k),
                Some(ServerCommand::Abort) => return Err(TrainError::Aborted),
                None => {}
            }
            control.heartbeat(step, "train")?;
        }
        let t_step = Instant::now();
        let wait_before = loader.wait_seconds();

        // Data → forward → losses → backward, accumulated over this rank's micro-batches.
        let copy = compute_copy(&model, cfg.train.precision);
        let compute = copy.as_ref().unwrap_or(&model);
        let mut flat: Option<Tensor<B::InnerBackend, 1>> = None;
        let mut losses = [0.0f32; LOSS_SLOTS];
        let mut samples = 0usize;
        let (mut forward, mut backward) = (Duration::ZERO, Duration::ZERO);
        for a in 0..accum {
            let batch = loader
                .next()
                .ok_or_else(|| TrainError::Resume("the loader ran dry".into()))??;
            samples += batch.labels.len();
            let images = Tensor::<B, 4>::from_data(TensorData::new(batch.images, batch.shape), device);
            let labels =
                Tensor::<B, 1, Int>::from_data(TensorData::new(batch.labels, [batch.shape[0]]), device);
            let t_forward = Instant::now();
            let out = compute.forward(images, Some(drop_key(cfg.run.seed, step, rank * accum + a)));
            let parts = swinfc_loss(&out, labels, &cfg.loss);
            let [s2, s3, s4] = &parts.stage_ce;
            let values =
                [&parts.total, &parts.backbone_ce, s2, s3, s4, &parts.contrastive].map(|t| t.clone().inner());
            // One read for all six: it waits for the forward pass, so this is its real duration on
            // GPU too, at the cost of one device synchronisation rather than six.
            let values = Tensor::cat(values.to_vec(), 0).into_data().convert::<f32>();
            let values = values.as_slice::<f32>().expect("converted to f32");
            losses.iter_mut().zip(values).for_each(|(slot, v)| *slot += v);
            forward += t_forward.elapsed();
            let t_backward = Instant::now();
            let grads = GradientsParams::from_grads(parts.total.backward(), compute);
            let g = flatten_grads(compute, &grads);
            flat = Some(match flat {
                Some(acc) => acc + g,
                None => g,
            });
            // Wait for the queued backward kernels so their time is not billed to grad_sync. A device
            // error surfaces at the gradient read just below.
            let _ = B::sync(device);
            backward += t_backward.elapsed();
        }
        let t_sync = Instant::now();

        // All-reduce gradients, losses and stop votes together, average over the global batch's
        // micro-batches, clip.
        let mut extra = losses.to_vec();
        extra.push(f32::from(stop_after.is_some_and(|k| step + 1 >= k)));
        let t_allreduce = Instant::now();
        let synced = grad_sync.average(
            flat.expect("accum ≥ 1"),
            &extra,
            world * accum,
            cfg.train.grad_clip,
            comm,
        )?;
        let allreduce_seconds = t_allreduce.elapsed().as_secs_f64();
        let (norm, mut mean_losses) = (synced.norm, synced.extra);
        // Averaged like the losses: any rank's vote leaves it above 0.
        let stopping = mean_losses.pop().is_some_and(|votes| votes > 0.0);
        let t_opt = Instant::now();

        // Step; a non-finite norm or loss skips the step on every rank.
        let lr = [cfg.train.lr_backbone, cfg.train.lr_new]
            .map(|base| learning_rate(step, base, cfg.train.warmup_steps, total));
        if norm.is_finite() && mean_losses.iter().all(|l| l.is_finite()) {
            nonfinite_streak = 0;
            let settings = StepSettings {
                lr_backbone: lr[0],
                lr_new: lr[1],
                momentum: cfg.train.momentum,
                weight_decay: cfg.train.weight_decay,
            };
            model = sgd.step(model, synced.grad, settings);
        } else {
            nonfinite_streak += 1;
            warn!(rank, step, norm, "non-finite loss or gradient: step skipped");
            if nonfinite_streak > cfg.train.max_nonfinite_steps {
                return Err(TrainError::NonFinite(nonfinite_streak));
            }
        }
        step += 1;
        let t_end = Instant::now();
        // Samples of the training stream consumed so far: the whole resume state of the sampler.
        let position = stream_start + (step - first_step) * global;

        // Metrics.
        let data_wait = loader.wait_seconds() - wait_before;
        // Only a launched worker has someone to report to.
        if let Some(control) = control.as_deref_mut() {
            let seconds = (t_end - t_step).as_secs_f64();
            let [forward, backward] = [forward, backward].map(|d| d.as_secs_f64());
            let (grad_sync, optimizer) = ((t_opt - t_sync).as_secs_f64(), (t_end - t_opt).as_secs_f64());
            let other = (seconds - data_wait - forward - backward - grad_sync - optimizer).max(0.0);
            let train_len = stream.train_len().max(1) as u64;
            let skips = loader.skip_counts();
            let skipped: BTreeMap<String, u64> = skips
                .iter()
                .map(|(reason, n)| (reason.clone(), n - skips_reported.get(reason).unwrap_or(&0)))
                .filter(|(_, n)| *n > 0)
                .collect();
            let record = Record::Step(StepRecord {
                step,
                samples: samples as u64,
                epoch: stream.epoch_of(position),
                epoch_progress_ratio: (position % train_len) as f64 / train_len as f64,
                loss: finite(mean_losses[0]),
                loss_components: LossComponents {
                    backbone_ce: finite(mean_losses[1]),
                    stage2_ce: finite(mean_losses[2]),
                    stage3_ce: finite(mean_losses[3]),
                    stage4_ce: finite(mean_losses[4]),
                    contrastive: finite(mean_losses[5]),
                },
                lr: LearningRates {
                    backbone: lr[0],
                    new: lr[1],
                },
                grad_norm: finite(norm),
                nonfinite: u64::from(nonfinite_streak > 0),
                seconds,
                phases: Phases {
                    data_wait,
                    forward,
                    backward,
                    grad_sync,
                    optimizer,
                    other,
                },
                allreduce_seconds,
                allreduce_bytes: ((flat_len + LOSS_SLOTS + STOP_SLOT) * 4) as u64,
                skipped,
            });
            report(control, record)?;
            skips_reported = skips;
        }
        if rank == 0 && (step % cfg.metrics.log_every.max(1) == 0 || step == total) {
            info!(
                rank,
                step,
                loss = mean_losses[0],
                grad_norm = norm,
                lr = lr[1],
                "step"
            );
        }

        // Evaluation and checkpoints.
        let eval_due = step == total || (cfg.eval.every_steps > 0 && step % cfg.eval.every_steps == 0);
        let mut accuracy = None;
        if eval_due && !stopping {
            if let Some(control) = control.as_deref_mut() {
                control.heartbeat(step, "eval")?;
            }
            let copy = compute_copy(&model, cfg.train.precision);
            let compute = copy.as_ref().unwrap_or(&model);
            let result = evaluate(compute, &dataset, &data_cfg, cfg, step, comm, device)?;
            info!(
                rank,
                step,
                top1 = result.combined,
                backbone = result.backbone,
                samples = result.samples,
                "eval"
            );
            if let Some(control) = control.as_deref_mut() {
                report(
                    control,
                    Record::Eval(EvalRecord {
                        split: "test".into(),
                        result,
                    }),
                )?;
            }
            best = Some(best.map_or(result.combined, |b: f64| b.max(result.combined)));
            accuracy = Some(result.combined);
            last_eval = Some(result);
        }
        let save_due = step == total
            || stopping
            || (cfg.checkpoint.every_steps > 0 && step % cfg.checkpoint.every_steps == 0);
        if save_due && let Some(writer) = &writer {
            let started = Instant::now();
            let reason = if step == total {
                SaveReason::Final
            } else if stopping {
                SaveReason::Preemption
            } else {
                SaveReason::Periodic
            };
            let state = TrainState {
                step,
                epoch: stream.epoch_of(position),
                stream_position: position,
                seed: cfg.run.seed,
                config_hash: cfg.hash(),
                world_size: world,
                micro_batch: micro,
                global_batch: cfg.train.global_batch,
                accuracy,
                best_accuracy: best,
                nonfinite_streak,
            };
            writer.submit(
                checkpoint_data(&model, &sgd, state, cfg, &dataset.classes),
                reason,
                started,
            );
        }
        if let Some(writer) = &writer {
            report_saves(writer.finished(), control.as_deref_mut())?;
        }
        if stopping {
            info!(rank, step, "stopping after this step as the launcher asked");
            break;
        }
    }
    drop(loader);
    if let Some(control) = control.as_deref_mut() {
        control.heartbeat(step, "finishing")?;
    }
    if let Some(writer) = writer {
        report_saves(writer.flush(), control)?;
    }
    comm.barrier()?;
    Ok(RunSummary {
        steps: step,
        last_eval,
        preempted: step < total,
    })
}

/// Drop-path key of one micro-batch: keyed by its global index, not by rank, so any split of the
/// global batch across workers drops the same branches.
fn drop_key(seed: u64, step: u64, micro_batch: usize) -> u64 {
    splitmix64(seed ^ splitmix64(step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ splitmix64(micro_batch as u64)))
}

fn write_resolved_config(cfg: &TrainConfig) -> Result<(), TrainError> {
    let io = |path: PathBuf| move |source| TrainError::Io { path, source };
    std::fs::create_dir_all(&cfg.run.dir).map_err(io(cfg.run.dir.clone()))?;
    let path = cfg.run.dir.join("config.yaml");
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
            Resume::Auto => latest_valid(&cfg.run.dir.join("checkpoints")),
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
            Some((dir, _)) => (
                read(dir.join("model.safetensors"))?,
                read(dir.join("optimizer.safetensors"))?,
            ),
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
        Sgd::new(FlatLayout::of(&model), device)
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
    model: &SwinFc<B>,
    sgd: &Sgd<B>,
    state: TrainState,
    cfg: &TrainConfig,
    classes: &[String],
) -> CheckpointData {
    CheckpointData {
        state,
        files: vec![
            ("model.safetensors".into(), to_bytes(&state_dict(model))),
            ("optimizer.safetensors".into(), to_bytes(&sgd.state_dict(model))),
            (CONFIG.into(), cfg.resolved_yaml().into_bytes()),
            (
                CLASSES.into(),
                serde_json::to_vec(classes).expect("strings serialise"),
            ),
        ],
    }
}

/// Rank 0's finished saves, logged and reported.
fn report_saves(results: Vec<SaveResult>, mut control: Option<&mut ControlClient>) -> Result<(), TrainError> {
    for result in results {
        let record = match result {
            Ok(saved) => {
                info!(step = saved.state.step, dir = %saved.dir.display(), bytes = saved.bytes, "checkpoint saved");
                Record::Checkpoint(CheckpointRecord {
                    ok: true,
                    step: saved.state.step,
                    reason: saved.reason.as_str().into(),
                    bytes: saved.bytes,
                    blocking_seconds: saved.blocking_seconds,
                    write_seconds: saved.write_seconds,
                    total_seconds: saved.total_seconds,
                    error: None,
                })
            }
            // A failed save keeps the previous checkpoints; training goes on and says so.
            Err(failed) => {
                warn!(error = %failed.error, "checkpoint failed; the previous one is intact");
                Record::Checkpoint(CheckpointRecord {
                    ok: false,
                    step: failed.step,
                    reason: failed.reason.as_str().into(),
                    bytes: 0,
                    blocking_seconds: failed.blocking_seconds,
                    write_seconds: 0.0,
                    total_seconds: 0.0,
                    error: Some(failed.error.to_string()),
                })
            }
        };
        if let Some(control) = control.as_deref_mut() {
            report(control, record)?;
        }
    }
    Ok(())
}

/// Sends one record to the launcher.
fn report(control: &mut ControlClient, record: Record) -> Result<(), TrainError> {
    let value = serde_json::to_value(record).expect("records have string keys and no custom serialisers");
    Ok(control.report(value)?)
}

/// A mean that records carry as `null` when it is not finite.
fn finite(x: impl Into<f64>) -> Option<f64> {
    Some(x.into()).filter(|x| x.is_finite())
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
