//! `swinfc-launch`: the launcher, one per node.
//!
//! Owns: turning a config and a device request into a world of worker processes, supervising
//! them (exit codes, heartbeats with phase-aware timeouts), restart rounds from the latest valid
//! checkpoint, preemption signals (drain, save, exit 143, Slurm requeue), multi-node coordination
//! (node 0 hosts the control server; the other nodes' launchers follow it over a token-checked
//! link), the console (progress bar, step, eval and checkpoint lines, rank-prefixed warnings, the
//! end-of-run summary), per-rank log files, and feeding
//! the workers' reports and its own events to the run's telemetry (swinfc-metrics serves them).
//!
//! Must not: hold tensors or run training code. Workers are separate `swinfc worker` processes;
//! the launcher only reads the config, checkpoint manifests and the workers' reports.

mod console;
mod drain;
mod error;
mod follower;
mod hang;
mod nodes;
mod options;
mod plan;
mod requeue;
mod signals;
pub mod summary;
mod supervisor;
mod workers;

pub use console::Console;
pub use error::LaunchError;
pub use options::seconds;
pub use options::{Devices, LaunchOptions, slurm_defaults};
pub use plan::Plan;
pub use signals::install_worker_policy as install_worker_signal_policy;
pub use swinfc_comm::EXIT_PERMANENT;

use swinfc_train::Resume;
use tracing::info;

/// How a launch ended; the binary maps it to an exit code (operations.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every worker finished its steps: exit 0.
    Finished,
    /// Drained after a signal (checkpoint at the drain step): exit `--preempt-exit-code`.
    Preempted,
    /// `--dry-run`: printed the plan.
    DryRun,
    /// The run's newest checkpoint already is at `train.total_steps`: nothing was started.
    AlreadyComplete,
}

/// Runs a launch to its end. Errors are permanent failures (exit 1).
pub fn launch(opts: LaunchOptions) -> Result<Outcome, LaunchError> {
    let plan = Plan::resolve(&opts)?;
    if opts.dry_run {
        print!("{}", plan.describe(&opts.resume)?);
        return Ok(Outcome::DryRun);
    }
    // Node 0 holds the run directory for the whole launch (the other nodes' launchers only run
    // their workers).
    let _held = (plan.node_rank == 0)
        .then(|| plan.cfg.run.dir.claim(&opts.resume, opts.overwrite))
        .transpose()?;
    // Starting workers that have nothing to do would only show a full progress bar.
    if opts.resume != Resume::None {
        let (step, from) = plan.resume_point(&opts.resume)?;
        if step >= plan.cfg.train.total_steps {
            let history = summary::launched_history(&plan.cfg);
            eprint!("{}", summary::complete(&plan.cfg, &from, &history));
            return Ok(Outcome::AlreadyComplete);
        }
    }
    info!(
        run_id = %plan.run_id,
        world = plan.world_size(),
        node = plan.node_rank,
        "launching"
    );
    if plan.node_rank == 0 {
        supervisor::run(&plan, &opts)
    } else {
        follower::run(&plan, &opts)
    }
}
