//! `swinfc-launch`: starts and supervises the workers of a training job on this node.
//! Thin: parses arguments (merging a Slurm job's environment) and calls swinfc-launch.

mod logging;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Parser};
use swinfc_launch::{Devices, LaunchOptions, Outcome, launch, slurm_defaults};
use swinfc_train::Resume;

#[derive(Parser)]
#[command(
    name = "swinfc-launch",
    version,
    about = "Train SwinFC on this node's GPUs or CPU workers"
)]
#[command(group(ArgGroup::new("devices").required(true).args(["gpus", "cpu"])))]
struct Cli {
    /// One worker per GPU: a count (`4`) or a list of device indices (`0,2,3`), counted among
    /// the devices this launcher sees (its own CUDA_VISIBLE_DEVICES, if set, is mapped through).
    #[arg(long)]
    gpus: Option<String>,
    /// This many CPU workers, sharing the cores.
    #[arg(long)]
    cpu: Option<usize>,
    /// Threads of each CPU worker (default: the cores shared evenly among the workers).
    #[arg(long, requires = "cpu", value_parser = clap::value_parser!(u64).range(1..))]
    threads_per_worker: Option<u64>,
    config: PathBuf,
    /// Override a config key, e.g. `--set train.lr_new=0.01` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Nodes in the job (default: Slurm's, else 1).
    #[arg(long)]
    nnodes: Option<usize>,
    /// This node's rank (default: Slurm's, else 0).
    #[arg(long)]
    node_rank: Option<usize>,
    /// Node 0's address (default: Slurm's first host, else 127.0.0.1).
    #[arg(long)]
    master_addr: Option<String>,
    /// Node 0's control port (default: any free port on a single node, 29400 with several).
    #[arg(long)]
    master_port: Option<u16>,
    /// `auto` (newest valid checkpoint, else fresh), `none`, or a checkpoint directory.
    #[arg(long, default_value = "auto")]
    resume: Resume,
    /// With `--resume none`: delete the checkpoints an earlier run left in run.dir (refused
    /// otherwise).
    #[arg(long)]
    overwrite: bool,
    /// Worker failures (crash, hang) to recover from before giving up.
    #[arg(long, default_value_t = 3)]
    max_restarts: u32,
    /// Seconds between SIGTERM and SIGKILL, and to drain after a preemption signal.
    #[arg(long, default_value = "30", value_parser = swinfc_launch::seconds)]
    grace_period: Duration,
    /// Exit code after a drain: the batch script's cue to requeue.
    #[arg(long, default_value_t = 143)]
    preempt_exit_code: u8,
    /// The run's id in metrics and logs (default: Slurm's job id, else the one the run directory
    /// keeps, else a new one).
    #[arg(long)]
    run_id: Option<String>,
    /// Print the resolved config, the world, the run directory and what would be resumed.
    #[arg(long)]
    dry_run: bool,
    /// Seconds a worker may be silent while starting, evaluating or saving.
    #[arg(long, default_value = "600", value_parser = swinfc_launch::seconds)]
    setup_timeout: Duration,
    /// Lower bound of the training-step hang timeout (otherwise 10 × the p99 step time).
    #[arg(long, default_value = "60", value_parser = swinfc_launch::seconds)]
    step_timeout: Duration,
    /// Seconds to keep serving /metrics after the run ends, so the last values get scraped
    /// (a signal ends the wait).
    #[arg(long, default_value = "0", value_parser = swinfc_launch::seconds)]
    metrics_linger: Duration,
}

fn main() -> ExitCode {
    logging::init(false);
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("swinfc-launch: {e:#}");
            let launch_error = e.downcast_ref::<swinfc_launch::LaunchError>();
            // The errors that are not the launcher's own come from finding the worker binary.
            let hint = launch_error.map_or(
                "build both binaries (cargo build --release) or set SWINFC_WORKER_BIN",
                |e| e.hint(),
            );
            eprintln!("{hint}");
            ExitCode::from(if launch_error.is_some_and(|e| e.is_usage()) {
                2
            } else {
                1
            })
        }
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    let slurm = slurm_defaults(|k| std::env::var(k).ok());
    let devices = match (&cli.gpus, cli.cpu) {
        (Some(g), _) => Devices::parse_gpus(g)?,
        (None, Some(n)) => Devices::Cpu(n),
        (None, None) => unreachable!("clap requires --gpus or --cpu"),
    };
    if cli.overwrite && cli.resume != Resume::None {
        return Err(swinfc_launch::LaunchError::Usage(
            "--overwrite deletes an earlier run's checkpoints: it goes with --resume none only".into(),
        )
        .into());
    }
    let nnodes = cli.nnodes.or(slurm.nnodes).unwrap_or(1);
    let opts = LaunchOptions {
        devices,
        config: cli.config,
        overrides: cli.set,
        nnodes,
        node_rank: cli.node_rank.or(slurm.node_rank).unwrap_or(0),
        master_addr: cli
            .master_addr
            .or(slurm.master_addr)
            .unwrap_or_else(|| "127.0.0.1".into()),
        master_port: cli.master_port.unwrap_or(if nnodes > 1 { 29400 } else { 0 }),
        resume: cli.resume,
        overwrite: cli.overwrite,
        max_restarts: cli.max_restarts,
        grace_period: cli.grace_period,
        run_id: cli.run_id.or(slurm.run_id),
        dry_run: cli.dry_run,
        worker_bin: worker_binary()?,
        setup_timeout: cli.setup_timeout,
        step_timeout: cli.step_timeout,
        metrics_linger: cli.metrics_linger,
        threads_per_worker: cli.threads_per_worker.map(|t| t as usize),
        rank0_detail: std::env::var_os("RUST_LOG").is_some(),
        slurm_requeue_id: slurm.requeue_id,
    };
    Ok(match launch(opts)? {
        Outcome::Finished | Outcome::DryRun | Outcome::AlreadyComplete => ExitCode::SUCCESS,
        Outcome::Preempted => ExitCode::from(cli.preempt_exit_code),
    })
}

/// The `swinfc` binary beside this one (`SWINFC_WORKER_BIN` overrides it).
fn worker_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SWINFC_WORKER_BIN") {
        return Ok(path.into());
    }
    let me = std::env::current_exe().context("locating swinfc-launch")?;
    let worker = me.with_file_name("swinfc");
    if !worker.exists() {
        bail!(
            "{} not found: the workers are `swinfc worker` processes, built beside swinfc-launch              (cargo build --release builds both; or set SWINFC_WORKER_BIN)",
            worker.display()
        );
    }
    Ok(worker)
}
