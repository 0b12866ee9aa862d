//! One training step, the code that both [`crate::train`] and `swinfc bench train-step` run:
//! data → forward → losses → backward → all-reduce → clip → SGD update.
//!
//! # Phase timings
//! Each [`StepOutcome`] carries the seconds of this rank's step by phase ([`Phases`]):
//! - `data_wait`: blocked on the next micro-batch (the loader's prefetch had none ready);
//! - `forward`: the forward passes and their losses, summed over the micro-batches;
//! - `backward`: the backward passes, and flattening each micro-batch's gradients into the
//!   step's flat sum;
//! - `grad_sync`: [`GradSync::average`]: the all-reduce (with the losses, sample counts and stop
//!   votes riding along), the average, the norm and the clip, and the one host read of the step
//!   (the averaged losses and, on a device, the norm);
//! - `optimizer`: the SGD update (nothing when the step is skipped);
//! - `other`: the rest of the step's wall time: the bf16 compute copy, uploading the batches.
//!
//! With [`StepConfig::profile`] (the bench) the step waits for the device (`B::sync`) before each
//! forward and at the end of every phase, so each phase is the time its own work took, on the
//! host and the device. Without it (training) nothing waits per micro-batch and the phases are
//! the host's time: on the CPU backend, which computes as it is called, that is the same thing;
//! on an asynchronous device (CUDA) `forward`, `backward` and `optimizer` only submit kernels,
//! and `grad_sync`, whose host read of the losses waits for everything submitted, also holds the
//! device time of the forward and backward passes (and of the previous step's update) still
//! running then.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Int, Tensor, TensorData};
use swinfc_comm::Collective;
use swinfc_data::{Batch, DataError};
use swinfc_metrics::record::{LearningRates, LossComponents, Phases, SkipReason, StepRecord};
use swinfc_model::drop_path::splitmix64;
use swinfc_model::{LossConfig, LossParts, SwinFc, TrainBackend, swinfc_loss};
use tracing::warn;

use crate::config::{TrainConfig, TrainSection};
use crate::optim::{Sgd, StepSettings, flat_tensor, flatten_grads, learning_rate};
use crate::sync::GradSync;
use crate::trainer::TrainError;

/// The six loss values ride in the gradient all-reduce (at the end of its buffer on the CPU).
const LOSS_SLOTS: usize = 6;
/// One more slot after the losses: how many ranks hold the launcher's stop request. Voting in the
/// step's own all-reduce makes every rank stop after the same step, however late each one read
/// the request.
const STOP_SLOT: usize = 1;
/// And this rank's sample count, so that every rank learns when the whole global batch was empty.
const SAMPLES_SLOT: usize = 1;

/// What a step needs to know beyond the model and the optimizer state.
#[derive(Debug, Clone)]
pub struct StepConfig {
    /// The run seed: with the step and the micro-batch's global index, it keys drop-path.
    pub seed: u64,
    /// Micro-batches per step on this rank (≥ 1).
    pub grad_accum: usize,
    /// Learning rates and schedule, momentum, weight decay, clip, precision, non-finite tolerance.
    pub train: TrainSection,
    pub loss: LossConfig,
    /// Wait for the device at phase boundaries so that the phase timings are device times (see
    /// the module documentation); a wait costs the overlap of host and device work.
    pub profile: bool,
}

impl StepConfig {
    /// A run's step, without profiling.
    pub fn of_run(cfg: &TrainConfig, grad_accum: usize) -> Self {
        Self {
            seed: cfg.run.seed,
            grad_accum,
            train: cfg.train.clone(),
            loss: cfg.loss.clone(),
            profile: false,
        }
    }
}

/// A step's loss terms, each the mean over the global batch's micro-batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    /// What the step minimises: the `loss:`-weighted sum of the terms below.
    pub total: f32,
    pub backbone_ce: f32,
    pub stage2_ce: f32,
    pub stage3_ce: f32,
    pub stage4_ce: f32,
    pub contrastive: f32,
}

impl Losses {
    /// From values in the order of [`loss_terms`].
    fn from_terms(
        [total, backbone_ce, stage2_ce, stage3_ce, stage4_ce, contrastive]: [f32; LOSS_SLOTS],
    ) -> Self {
        Self {
            total,
            backbone_ce,
            stage2_ce,
            stage3_ce,
            stage4_ce,
            contrastive,
        }
    }

    fn all_finite(&self) -> bool {
        [
            self.total,
            self.backbone_ce,
            self.stage2_ce,
            self.stage3_ce,
            self.stage4_ce,
            self.contrastive,
        ]
        .iter()
        .all(|l| l.is_finite())
    }
}

/// The loss terms of one micro-batch as one f32 tensor [6], in the order of [`Losses`]' fields.
pub fn loss_terms<B: AutodiffBackend>(parts: &LossParts<B>) -> Tensor<B::InnerBackend, 1> {
    let [s2, s3, s4] = &parts.stage_ce;
    let terms = [&parts.total, &parts.backbone_ce, s2, s3, s4, &parts.contrastive];
    // f32 whatever the compute precision: the sum over micro-batches is taken in f32.
    Tensor::cat(terms.map(|t| t.clone().inner()).to_vec(), 0).cast(FloatDType::F32)
}

/// What one step did.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// Optimizer steps completed, this one included (records and checkpoints count this way).
    pub step: u64,
    /// Images this rank trained on.
    pub samples: usize,
    pub losses: Losses,
    /// Global L2 norm of the averaged gradient, before clipping.
    pub grad_norm: f64,
    pub lr: LearningRates,
    /// False when a non-finite loss or gradient made every rank skip the update.
    pub applied: bool,
    /// Some rank voted to stop after this step: every rank stops.
    pub stopping: bool,
    /// Wall time of the step on this rank; `phases` add up to it.
    pub seconds: f64,
    pub phases: Phases,
    /// The all-reduce alone (part of `phases.grad_sync`), and the bytes it summed.
    pub allreduce_seconds: f64,
    pub allreduce_bytes: u64,
}

impl StepOutcome {
    /// The step's metrics record; the data stream's progress (`epoch`, `epoch_progress_ratio`)
    /// and the images the loader `skipped` since the previous record come from the caller.
    pub fn record(
        &self,
        epoch: u64,
        epoch_progress_ratio: f64,
        skipped: BTreeMap<SkipReason, u64>,
    ) -> StepRecord {
        let l = &self.losses;
        StepRecord {
            step: self.step,
            samples: self.samples as u64,
            epoch,
            epoch_progress_ratio,
            loss: finite(l.total),
            loss_components: LossComponents {
                backbone_ce: finite(l.backbone_ce),
                stage2_ce: finite(l.stage2_ce),
                stage3_ce: finite(l.stage3_ce),
                stage4_ce: finite(l.stage4_ce),
                contrastive: finite(l.contrastive),
            },
            lr: self.lr.clone(),
            grad_norm: finite(self.grad_norm),
            nonfinite: u64::from(!self.applied),
            seconds: self.seconds,
            phases: self.phases.clone(),
            allreduce_seconds: self.allreduce_seconds,
            allreduce_bytes: self.allreduce_bytes,
            skipped,
        }
    }
}

/// A mean that records carry as `null` when it is not finite.
fn finite(x: impl Into<f64>) -> Option<f64> {
    Some(x.into()).filter(|x| x.is_finite())
}

/// This rank's replica and everything that changes it: the model (f32 master weights), the
/// momentum buffers, and where the gradients are summed.
pub struct Trainer<B: AutodiffBackend> {
    /// `None` only inside [`Sgd::step`], which takes the model by value and gives back its
    /// parameters as views of the updated master weights.
    model: Option<SwinFc<B>>,
    sgd: Sgd<B>,
    grad_sync: GradSync<B::InnerBackend>,
    config: StepConfig,
    /// Consecutive skipped steps; a checkpoint keeps it across a resume.
    nonfinite_streak: u32,
    /// Whether a step of this process has checked the device path against the host's.
    device_checked: bool,
    device: B::Device,
}

impl<B: TrainBackend> Trainer<B> {
    pub fn new(
        model: SwinFc<B>,
        sgd: Sgd<B>,
        grad_sync: GradSync<B::InnerBackend>,
        config: StepConfig,
        nonfinite_streak: u32,
        device: B::Device,
    ) -> Self {
        Self {
            model: Some(model),
            sgd,
            grad_sync,
            config,
            nonfinite_streak,
            device_checked: false,
            device,
        }
    }

    pub fn model(&self) -> &SwinFc<B> {
        self.model.as_ref().expect("the model is back after every update")
    }

    pub fn sgd(&self) -> &Sgd<B> {
        &self.sgd
    }

    pub fn config(&self) -> &StepConfig {
        &self.config
    }

    pub fn nonfinite_streak(&self) -> u32 {
        self.nonfinite_streak
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Global step `step` (0-based) on this rank: takes `grad_accum` micro-batches from
    /// `micro_batches`, sums their gradients, averages them with the other ranks through `comm`,
    /// clips and updates the model, unless the loss or the gradient is not finite on some rank,
    /// in which case every rank skips the update (an error after `max_nonfinite_steps` in a
    /// row). `stop_vote`: this rank's vote to stop after this step.
    pub fn train_step(
        &mut self,
        mut micro_batches: impl Iterator<Item = Result<Batch, DataError>>,
        step: u64,
        stop_vote: bool,
        comm: &mut dyn Collective,
    ) -> Result<StepOutcome, TrainError> {
        let started = Instant::now();
        let (rank, world, accum) = (comm.rank(), comm.world_size(), self.config.grad_accum);
        let mut time = PhaseTimes::default();

        // Data → forward → losses → backward, summed over this rank's micro-batches.
        let model = self.model();
        let copy = self.sgd.compute_copy(model, self.config.train.precision);
        let compute = copy.as_ref().unwrap_or(model);
        let mut grad_sum = None;
        let mut loss_sum = None;
        let mut samples = 0;
        for a in 0..accum {
            let t = Instant::now();
            let batch = micro_batches.next().ok_or(TrainError::DataRanOut { step })??;
            time.data_wait += t.elapsed();
            samples += batch.labels.len();
            // Every image of this micro-batch was skipped as unreadable: it adds a zero gradient
            // and zero losses (its samples weigh nothing), which keeps N workers ≡ grad_accum,
            // and the model never sees an empty batch.
            if batch.labels.is_empty() {
                continue;
            }
            let (images, labels) = upload::<B>(batch, &self.device);
            self.fence()?;

            let t = Instant::now();
            let key = drop_key(self.config.seed, step, rank * accum + a);
            let parts = swinfc_loss(&compute.forward(images, Some(key)), labels, &self.config.loss);
            loss_sum = Some(add(loss_sum, loss_terms(&parts)));
            self.fence()?;
            time.forward += t.elapsed();

            let t = Instant::now();
            let grads = GradientsParams::from_grads(parts.total.backward(), compute);
            grad_sum = Some(add(grad_sum, flatten_grads(compute, &grads, self.sgd.layout())));
            self.fence()?;
            time.backward += t.elapsed();
        }
        let grad_sum = grad_sum.unwrap_or_else(|| Tensor::zeros([self.sgd.layout().len], &self.device));
        let loss_sum = loss_sum.unwrap_or_else(|| Tensor::zeros([LOSS_SLOTS], &self.device));

        // All-reduce the gradients, losses, sample counts and stop votes together, average over
        // the global batch's micro-batches, clip; the first step also checks the device path.
        let t = Instant::now();
        let counts = flat_tensor(vec![samples as f32, f32::from(stop_vote)], &self.device);
        let extra = Tensor::cat(vec![loss_sum, counts], 0);
        let t_allreduce = Instant::now();
        let clip = self.config.train.grad_clip;
        let check = !self.device_checked;
        let layout = check.then(|| self.sgd.layout());
        let synced = self
            .grad_sync
            .average(grad_sum, extra, world * accum, clip, comm, layout)?;
        let allreduce_seconds = t_allreduce.elapsed().as_secs_f64();
        let mut means = synced.extra;
        // Averaged like the losses: any rank's vote leaves it above 0.
        let stopping = means.pop().is_some_and(|votes| votes > 0.0);
        let global_samples = means.pop().map_or(0.0, |mean| mean * (world * accum) as f32);
        let losses = Losses::from_terms(
            means
                .try_into()
                .expect("the all-reduce returns what it was given"),
        );
        self.fence()?;
        time.grad_sync = t.elapsed();

        // Step; an empty global batch (every image skipped as unreadable: nothing to learn from) or
        // a non-finite norm or loss skips the step on every rank.
        let t = Instant::now();
        let train = &self.config.train;
        let lr = LearningRates {
            backbone: learning_rate(step, train.lr_backbone, train.warmup_steps, train.total_steps),
            new: learning_rate(step, train.lr_new, train.warmup_steps, train.total_steps),
        };
        let norm = synced.norm;
        let empty = global_samples.round() == 0.0;
        let applied = !empty && norm.is_finite() && losses.all_finite();
        if empty {
            warn!(
                rank,
                step, "no readable train image in the global batch: step skipped"
            );
        } else if applied {
            self.nonfinite_streak = 0;
            let settings = StepSettings {
                lr_backbone: lr.backbone,
                lr_new: lr.new,
                momentum: train.momentum,
                weight_decay: train.weight_decay,
            };
            let model = self.model.take().expect("the model is back after every update");
            self.model = Some(if check {
                self.device_checked = true;
                self.sgd.step_checked(model, synced.grad, settings)?
            } else {
                self.sgd.step(model, synced.grad, settings)
            });
        } else {
            self.nonfinite_streak += 1;
            warn!(rank, step, norm, "non-finite loss or gradient: step skipped");
            if self.nonfinite_streak > train.max_nonfinite_steps {
                return Err(TrainError::NonFinite(self.nonfinite_streak));
            }
        }
        self.fence()?;
        time.optimizer = t.elapsed();

        let seconds = started.elapsed().as_secs_f64();
        Ok(StepOutcome {
            step: step + 1,
            samples,
            losses,
            grad_norm: norm,
            lr,
            applied,
            stopping,
            seconds,
            phases: time.phases(seconds),
            allreduce_seconds,
            allreduce_bytes: ((self.sgd.layout().len + LOSS_SLOTS + SAMPLES_SLOT + STOP_SLOT) * 4) as u64,
        })
    }

    /// In profiling mode, waits for the device's queued work, so that it is billed to the phase
    /// that queued it.
    fn fence(&self) -> Result<(), TrainError> {
        if self.config.profile {
            B::sync(&self.device)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct PhaseTimes {
    data_wait: Duration,
    forward: Duration,
    backward: Duration,
    grad_sync: Duration,
    optimizer: Duration,
}

impl PhaseTimes {
    /// The phases of a step of `seconds`, the remainder as `other`.
    fn phases(&self, seconds: f64) -> Phases {
        let [data_wait, forward, backward, grad_sync, optimizer] = [
            self.data_wait,
            self.forward,
            self.backward,
            self.grad_sync,
            self.optimizer,
        ]
        .map(|d| d.as_secs_f64());
        Phases {
            data_wait,
            forward,
            backward,
            grad_sync,
            optimizer,
            other: (seconds - data_wait - forward - backward - grad_sync - optimizer).max(0.0),
        }
    }
}

/// `sum + x`, or `x` when there is no sum yet.
fn add<B: Backend>(sum: Option<Tensor<B, 1>>, x: Tensor<B, 1>) -> Tensor<B, 1> {
    match sum {
        Some(sum) => sum + x,
        None => x,
    }
}

fn upload<B: AutodiffBackend>(batch: Batch, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let n = batch.shape[0];
    (
        Tensor::from_data(TensorData::new(batch.images, batch.shape), device),
        Tensor::from_data(TensorData::new(batch.labels, [n]), device),
    )
}

/// Drop-path key of one micro-batch: keyed by its global index, not by rank, so any split of the
/// global batch across workers drops the same branches.
fn drop_key(seed: u64, step: u64, micro_batch: usize) -> u64 {
    splitmix64(seed ^ splitmix64(step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ splitmix64(micro_batch as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every named loss lands in the record field of the same name.
    #[test]
    fn a_record_carries_the_outcome_by_name() {
        let outcome = StepOutcome {
            step: 3,
            samples: 8,
            losses: Losses {
                total: 1.0,
                backbone_ce: 2.0,
                stage2_ce: 3.0,
                stage3_ce: 4.0,
                stage4_ce: 5.0,
                contrastive: f32::NAN,
            },
            grad_norm: 7.0,
            lr: LearningRates {
                backbone: 0.1,
                new: 0.2,
            },
            applied: false,
            stopping: false,
            seconds: 1.5,
            phases: Phases {
                data_wait: 0.1,
                forward: 0.2,
                backward: 0.3,
                grad_sync: 0.4,
                optimizer: 0.5,
                other: 0.0,
            },
            allreduce_seconds: 0.25,
            allreduce_bytes: 40,
        };
        let r = outcome.record(1, 0.5, BTreeMap::from([(SkipReason::Truncated, 2)]));
        assert_eq!(
            (r.step, r.samples, r.epoch, r.epoch_progress_ratio),
            (3, 8, 1, 0.5)
        );
        let c = &r.loss_components;
        assert_eq!(
            [
                r.loss,
                c.backbone_ce,
                c.stage2_ce,
                c.stage3_ce,
                c.stage4_ce,
                c.contrastive
            ],
            [Some(1.0), Some(2.0), Some(3.0), Some(4.0), Some(5.0), None]
        );
        assert_eq!((r.lr.backbone, r.lr.new, r.grad_norm), (0.1, 0.2, Some(7.0)));
        assert_eq!((r.nonfinite, r.seconds, r.phases.grad_sync), (1, 1.5, 0.4));
        assert_eq!(
            (
                r.allreduce_seconds,
                r.allreduce_bytes,
                r.skipped[&SkipReason::Truncated]
            ),
            (0.25, 40, 2)
        );
    }
}
