//! The launcher's console: a progress bar fed by rank 0's step reports, rank 0's log lines, and
//! warnings or errors of the other ranks, each prefixed by its rank and printed whole.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use swinfc_metrics::record::StepRecord;

pub struct Console {
    bar: ProgressBar,
    global_batch: usize,
}

impl Console {
    pub fn new(total_steps: u64, global_batch: usize) -> Console {
        let bar = ProgressBar::with_draw_target(Some(total_steps), ProgressDrawTarget::stderr());
        let style =
            ProgressStyle::with_template("{bar:30} step {pos}/{len} · epoch {prefix} · {msg} · ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(500));
        Console { bar, global_batch }
    }

    /// Prints a line above the bar (or plainly when stderr is not a terminal).
    pub fn line(&self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    /// A line a worker wrote: everything from rank 0, only warnings and errors from the others.
    pub fn worker_line(&self, rank: usize, line: &str) {
        // tracing's format: `<timestamp> <LEVEL> <target>: <message>`.
        let level = line.split_whitespace().nth(1).unwrap_or("");
        if rank == 0 || matches!(level, "WARN" | "ERROR") || !line.starts_with(|c: char| c.is_ascii_digit()) {
            self.line(&format!("[rank {rank}] {line}"));
        }
    }

    /// Rank 0's step record: step, epoch, loss and the step's wall time.
    pub fn step(&self, record: &StepRecord) {
        self.bar.set_position(record.step);
        self.bar.set_prefix(record.epoch.to_string());
        let rate = if record.seconds > 0.0 {
            self.global_batch as f64 / record.seconds
        } else {
            0.0
        };
        let loss = record.loss.unwrap_or(f64::NAN);
        self.bar.set_message(format!("{rate:.0} img/s · loss {loss:.4}"));
    }

    /// Where a (restarted) round starts.
    pub fn restart_at(&self, step: u64) {
        self.bar.set_position(step);
        self.bar.reset_eta();
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
