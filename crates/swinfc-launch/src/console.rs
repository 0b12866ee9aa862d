//! The launcher's console: a progress bar and short, aligned lines rendered from rank 0's typed
//! records (steps every `metrics.log_every`, evals, checkpoints), the warnings and errors of every
//! rank prefixed by its rank, and the summary at the end. Rank 0's full log lines reach the
//! console only when asked for (`RUST_LOG`); they are always in the per-rank log files.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use swinfc_metrics::record::{CheckpointRecord, EvalResult, StepRecord};

pub struct Console {
    bar: ProgressBar,
    total_steps: u64,
    global_batch: usize,
    log_every: u64,
    /// Every line rank 0 writes, not only warnings and errors.
    rank0_detail: bool,
    /// Rank 0's steps and their seconds since the previous step line, for its img/s.
    since_line: Mutex<(u64, f64)>,
}

impl Console {
    pub fn new(total_steps: u64, global_batch: usize, log_every: u64, rank0_detail: bool) -> Console {
        let bar = ProgressBar::with_draw_target(Some(total_steps), ProgressDrawTarget::stderr());
        let style =
            ProgressStyle::with_template("{bar:30} step {pos}/{len} · epoch {prefix} · {msg} · ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(500));
        Console {
            bar,
            total_steps,
            global_batch,
            log_every: log_every.max(1),
            rank0_detail,
            since_line: Mutex::new((0, 0.0)),
        }
    }

    /// Prints a line above the bar (or plainly when stderr is not a terminal).
    pub fn line(&self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    /// A line a worker wrote: warnings and errors of every rank, and output that is not a log
    /// line (a panic); all of rank 0's with `rank0_detail`.
    pub fn worker_line(&self, rank: usize, line: &str) {
        // tracing's format: `<timestamp> <LEVEL> <target>: <message>`.
        let level = line.split_whitespace().nth(1).unwrap_or("");
        let is_log_line = line.starts_with(|c: char| c.is_ascii_digit());
        if (rank == 0 && self.rank0_detail) || matches!(level, "WARN" | "ERROR") || !is_log_line {
            self.line(&format!("[rank {rank}] {line}"));
        }
    }

    /// Rank 0's step record: the bar, and a step line every `metrics.log_every` steps and at the
    /// last one.
    pub fn step(&self, record: &StepRecord) {
        self.bar.set_position(record.step);
        self.bar.set_prefix(record.epoch.to_string());
        let loss = record.loss.unwrap_or(f64::NAN);
        let mut since = self.since_line.lock().unwrap_or_else(PoisonError::into_inner);
        since.0 += 1;
        since.1 += record.seconds;
        let images_per_second = |steps: u64, seconds: f64| {
            if seconds > 0.0 {
                (steps as usize * self.global_batch) as f64 / seconds
            } else {
                0.0
            }
        };
        self.bar.set_message(format!(
            "{:.0} img/s · loss {loss:.4}",
            images_per_second(1, record.seconds)
        ));
        if record.step.is_multiple_of(self.log_every) || record.step == self.total_steps {
            let rate = images_per_second(since.0, since.1);
            *since = (0, 0.0);
            drop(since);
            self.line(&step_line(
                record.step,
                self.total_steps,
                record.loss,
                record.grad_norm,
                record.lr.new,
                rate,
            ));
        }
    }

    /// Rank 0's eval result.
    pub fn eval(&self, result: &EvalResult) {
        self.line(&format!(
            "eval {}  top1 {:5.1}%  backbone {:5.1}%  ({} images)",
            progress(result.step, self.total_steps),
            result.combined * 100.0,
            result.backbone * 100.0,
            result.samples
        ));
    }

    /// A background save of rank 0 finished, in `dir` when it succeeded.
    pub fn checkpoint(&self, record: &CheckpointRecord, dir: &Path) {
        let at = progress(record.step, self.total_steps);
        if record.ok {
            self.line(&format!("save {at}  {}", dir.display()));
        } else {
            let error = record.error.as_deref().unwrap_or("unknown error");
            self.line(&format!(
                "save {at}  FAILED: {error}; the previous checkpoint stands"
            ));
        }
    }

    /// Where a (restarted) round starts.
    pub fn restart_at(&self, step: u64) {
        self.bar.set_position(step);
        self.bar.reset_eta();
        *self.since_line.lock().unwrap_or_else(PoisonError::into_inner) = (0, 0.0);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `step/total` with the step right-aligned to the width of `total`, so lines keep their columns.
fn progress(step: u64, total: u64) -> String {
    let width = total.to_string().len();
    format!("{step:>width$}/{total}")
}

/// `step  40/120  loss  2.672  grad_norm   6.05  lr  4.19e-2     46 img/s`: every field has a
/// fixed width, so consecutive lines read as columns. A non-finite loss or norm reads `NaN`.
fn step_line(step: u64, total: u64, loss: Option<f64>, grad_norm: Option<f64>, lr: f64, rate: f64) -> String {
    let loss = loss.unwrap_or(f64::NAN);
    let grad_norm = grad_norm.unwrap_or(f64::NAN);
    let lr = format!("{lr:.2e}");
    format!(
        "step {}  loss {loss:>6.3}  grad_norm {grad_norm:>6.2}  lr {lr:>8}  {rate:>5.0} img/s",
        progress(step, total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_keep_their_columns() {
        let a = step_line(
            5,
            120,
            Some(6.630482196807861),
            Some(7.383172048326858),
            0.04917867136754893,
            46.2,
        );
        let b = step_line(120, 120, Some(0.0123), Some(0.5), 1.5e-5, 1234.0);
        let c = step_line(60, 120, None, None, 0.0, 0.0);
        assert_eq!(
            a,
            "step   5/120  loss  6.630  grad_norm   7.38  lr  4.92e-2     46 img/s"
        );
        for field in ["loss", "grad_norm", "lr", "img/s"] {
            assert_eq!(a.find(field), b.find(field), "{field}: {a} | {b}");
            assert_eq!(a.find(field), c.find(field), "{field}: {a} | {c}");
        }
        assert!(c.contains("loss    NaN"), "{c}");
    }
}
