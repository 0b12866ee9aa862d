//! `swinfc train`: world size 1 in this process, with the launcher's console (progress bar,
//! aligned step, eval and save lines) and its end-of-run summary.

use std::time::Instant;

use anyhow::{Result, bail};
use swinfc_launch::Console;
use swinfc_launch::summary::{self, Launched};
use swinfc_metrics::event::EvalEvent;
use swinfc_metrics::record::Record;
use swinfc_train::{Resume, TrainConfig};

use crate::TrainArgs;

pub fn train(args: &TrainArgs) -> Result<()> {
    if args.overwrite && args.resume != Resume::None {
        bail!("--overwrite deletes an earlier run's checkpoints: it goes with --resume none only");
    }
    let cfg = TrainConfig::load(&args.config, &args.set)?;
    // A wrong root or class count is reported before the run directory is touched.
    cfg.open_dataset()?;
    let _held = cfg.run.dir.claim(&args.resume, args.overwrite)?;
    let (from_step, from) = cfg.run.dir.resume_point(&args.resume)?;
    // Evals of earlier launches of this run count towards its best accuracy.
    let mut history = summary::launched_history(&cfg);
    let t = &cfg.train;
    if from_step >= t.total_steps {
        eprint!("{}", summary::complete(&cfg, &from, &history));
        return Ok(());
    }

    let console = Console::new(t.total_steps, t.global_batch, cfg.metrics.log_every, false);
    console.restart_at(from_step);
    console.line(&format!("train {}: {from}", cfg.run.dir.root().display()));
    let started = Instant::now();
    let mut committed = None;
    let run = swinfc_train::run_local(&cfg, &args.resume, &mut |record| match record {
        Record::Step(step) => console.step(step),
        Record::Eval(eval) => {
            console.eval(&eval.result);
            history.evals.insert(eval.result.step, EvalEvent::from(eval));
        }
        Record::Checkpoint(save) => {
            console.checkpoint(save, &cfg.run.dir.checkpoint(save.step));
            if save.ok {
                committed = Some(save.step);
            }
        }
    });
    console.finish();
    let run = run?;
    let launched = Launched {
        from_step,
        to_step: run.steps,
        wall: started.elapsed(),
        preempted: run.preempted,
        checkpoint: committed,
        requeued: None,
    };
    let bin = std::env::current_exe()?;
    eprint!("{}", summary::render(&cfg, &bin, &launched, &history));
    Ok(())
}
