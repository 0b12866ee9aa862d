//! What a run prints when it ends, and when a finished run's command is run again: where the run
//! got to, its accuracy (from `events.jsonl` for a launch, so a resumed run counts its earlier
//! launches' evals), where its files are and the commands that use them. The launcher and
//! `swinfc train` print the same summary.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use swinfc_metrics::catalogue::HEADS;
use swinfc_metrics::event::History;
use tracing::warn;

use swinfc_train::TrainConfig;

/// This launch (or `swinfc train`), as it ended.
pub struct Launched {
    /// The step the first round started from, and the highest step completed.
    pub from_step: u64,
    pub to_step: u64,
    pub wall: Duration,
    /// Drained after a signal: the same command resumes.
    pub preempted: bool,
    /// The newest checkpoint this launch committed.
    pub checkpoint: Option<u64>,
    /// A drained Slurm job asked to be requeued.
    pub requeued: Option<Requeued>,
}

/// `scontrol requeue` after a drain.
pub struct Requeued {
    pub job: String,
    /// Why Slurm did not requeue the job (its own words).
    pub refused: Option<String>,
}

/// The end-of-run summary; `worker_bin` is the `swinfc` binary its commands name, `history` the
/// run's evals so far.
pub fn render(cfg: &TrainConfig, worker_bin: &Path, launched: &Launched, history: &History) -> String {
    let t = &cfg.train;
    let steps = launched.to_step.saturating_sub(launched.from_step);
    let seconds = launched.wall.as_secs_f64();
    let rate = if seconds > 0.0 {
        (steps as usize * t.global_batch) as f64 / seconds
    } else {
        0.0
    };
    let mut s = String::new();
    let verb = if launched.preempted { "drained" } else { "finished" };
    let _ = writeln!(
        s,
        "{verb}: step {}/{} ({steps} steps in {seconds:.1} s, {rate:.0} img/s)",
        launched.to_step, t.total_steps
    );
    s.push_str(&accuracy(history));
    let run_dir = &cfg.run.dir;
    if let Some(step) = launched.checkpoint {
        let _ = writeln!(s, "checkpoint  {}", run_dir.checkpoint(step).display());
    }
    // `swinfc train` writes neither: only a launch has telemetry and per-rank logs.
    let (events, logs) = (run_dir.events(), run_dir.logs());
    if events.exists() {
        let _ = writeln!(s, "events      {}", events.display());
    }
    if logs.exists() {
        let _ = writeln!(s, "logs        {}", logs.display());
    }
    let (bin, root) = (worker_bin.display(), run_dir.root().display());
    let _ = writeln!(s, "evaluate    {bin} eval --checkpoint {root}");
    if events.exists() {
        let _ = writeln!(s, "plot        {bin} plot {root} -o {root}/report.svg");
    }
    match (&launched.requeued, launched.preempted) {
        (Some(Requeued { job, refused: None }), _) => {
            let _ = writeln!(
                s,
                "requeued    Slurm job {job} resumes from the checkpoint when it starts again"
            );
        }
        (
            Some(Requeued {
                job,
                refused: Some(why),
            }),
            _,
        ) => {
            let _ = writeln!(
                s,
                "resume      Slurm did not requeue job {job} ({why}): submit the job again \
                 (--resume auto continues from the checkpoint)"
            );
        }
        (None, true) => {
            let _ = writeln!(
                s,
                "resume      the same command (--resume auto continues from the checkpoint)"
            );
        }
        (None, false) => {
            let _ = writeln!(
                s,
                "train on    the same command with --set train.total_steps=N (N > {})",
                t.total_steps
            );
        }
    }
    s
}

/// The message for a run whose newest checkpoint already is at `train.total_steps`.
pub fn complete(cfg: &TrainConfig, from: &str, history: &History) -> String {
    let root = cfg.run.dir.root().display();
    let mut s = format!(
        "{root} is complete: all {} steps are done (resume: {from})\n",
        cfg.train.total_steps
    );
    s.push_str(&accuracy(history));
    let _ = writeln!(
        s,
        "to start a fresh run: add --resume none --overwrite (deletes {root}'s checkpoints) or --set run.dir=NEW_DIR; \
         to train longer: --set train.total_steps=N"
    );
    s
}

/// The evals launches of this run have written to its `events.jsonl` (none without the file).
pub fn launched_history(cfg: &TrainConfig) -> History {
    let path = cfg.run.dir.events();
    if !path.exists() {
        return History::default();
    }
    History::read(&path)
        .inspect_err(|e| warn!(error = %e, "no accuracy for the summary"))
        .unwrap_or_default()
}

/// Final and best top-1 of each head (empty without evals).
fn accuracy(history: &History) -> String {
    let Some(last) = history.evals.values().next_back() else {
        return String::new();
    };
    let title = format!("top-1 ({} images)", last.samples);
    let mut s = format!("{title:<19}{:>7}  {:>7}\n", "final", "best");
    for head in HEADS {
        let Some(final_top1) = last.accuracy.get(head) else {
            continue;
        };
        let best = history
            .evals
            .values()
            .filter_map(|e| Some((*e.accuracy.get(head)?, e.step)))
            .fold(
                (f64::NEG_INFINITY, 0),
                |b, (a, step)| if a > b.0 { (a, step) } else { b },
            );
        let _ = writeln!(
            s,
            "  {head:<16} {:>6.1}%  {:>6.1}% at step {}",
            final_top1 * 100.0,
            best.0 * 100.0,
            best.1
        );
    }
    s
}
