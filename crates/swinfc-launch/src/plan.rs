//! The resolved launch: config, world, run directory, run id and what would be resumed. This is
//! what `--dry-run` prints and what every restart round is built from.

use std::fmt::Write as _;

use swinfc_train::{Resume, RunDir, TrainConfig};
use tracing::warn;

use crate::{Devices, LaunchError, LaunchOptions};

#[derive(Debug, Clone)]
pub struct Plan {
    pub cfg: TrainConfig,
    pub devices: Devices,
    pub nnodes: usize,
    pub node_rank: usize,
    pub grad_accum: usize,
    pub run_id: String,
    /// The config file's stem: the `experiment` label of every metric.
    pub experiment: String,
    /// Threads each CPU worker may use, so workers don't fight over cores.
    pub threads_per_worker: usize,
    /// The `CUDA_VISIBLE_DEVICES` of each GPU worker, by local rank (empty for CPU workers).
    pub worker_gpus: Vec<String>,
}

impl Plan {
    pub fn resolve(opts: &LaunchOptions) -> Result<Plan, LaunchError> {
        if opts.nnodes == 0 || opts.node_rank >= opts.nnodes {
            return Err(LaunchError::Usage(format!(
                "--node-rank {} is outside --nnodes {}",
                opts.node_rank, opts.nnodes
            )));
        }
        if opts.devices.count() == 0 {
            return Err(LaunchError::Usage(
                "--cpu 0: at least one worker is needed".into(),
            ));
        }
        if opts.nnodes > 1 && opts.master_port == 0 {
            return Err(LaunchError::Usage(
                "a multi-node launch needs --master-port (every node must know it)".into(),
            ));
        }
        check_gpus(&opts.devices)?;
        let cfg = TrainConfig::load(&opts.config, &opts.overrides)?;
        cfg.open_dataset()?;
        let world = opts.nnodes * opts.devices.count();
        let grad_accum = cfg.grad_accum(world)?;
        let experiment = opts
            .config
            .file_stem()
            .map_or_else(|| "run".to_string(), |s| s.to_string_lossy().into_owned());
        // The run directory's id wins: a run keeps one id across restarts, requeues and new jobs
        // that resume it, so its series stay one line in Grafana.
        let run_id = match (persisted_run_id(&cfg.run.dir), &opts.run_id) {
            (Some(kept), Some(asked)) if &kept != asked => {
                warn!(run_id = %kept, ignored = %asked, "the run directory already has a run id");
                kept
            }
            (Some(kept), _) => kept,
            (None, Some(asked)) => asked.clone(),
            (None, None) => new_run_id(&experiment),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let worker_gpus = match &opts.devices {
            Devices::Gpus(ids) => {
                let inherited = std::env::var("CUDA_VISIBLE_DEVICES").ok();
                ids.iter()
                    .map(|&i| worker_gpu(inherited.as_deref(), i))
                    .collect::<Result<_, _>>()?
            }
            Devices::Cpu(_) => Vec::new(),
        };
        Ok(Plan {
            worker_gpus,
            threads_per_worker: opts
                .threads_per_worker
                .unwrap_or((cores / opts.devices.count()).max(1)),
            cfg,
            devices: opts.devices.clone(),
            nnodes: opts.nnodes,
            node_rank: opts.node_rank,
            grad_accum,
            run_id,
            experiment,
        })
    }

    pub fn world_size(&self) -> usize {
        self.nnodes * self.local_workers()
    }

    pub fn local_workers(&self) -> usize {
        self.devices.count()
    }

    /// Global ranks of this node's workers.
    pub fn local_ranks(&self) -> std::ops::Range<usize> {
        let n = self.local_workers();
        self.node_rank * n..(self.node_rank + 1) * n
    }

    pub fn run_dir(&self) -> &RunDir {
        &self.cfg.run.dir
    }

    /// Writes the run id beside the run's checkpoints, so restarts and requeues keep it.
    pub fn persist_run_id(&self) -> Result<(), LaunchError> {
        let dir = self.run_dir().root();
        std::fs::create_dir_all(dir).map_err(LaunchError::io(dir))?;
        let path = self.run_dir().run_id();
        std::fs::write(&path, format!("{}\n", self.run_id)).map_err(LaunchError::io(path))
    }

    /// What `--resume` selects right now, as the step it starts from and a description.
    pub fn resume_point(&self, resume: &Resume) -> Result<(u64, String), LaunchError> {
        self.run_dir().resume_point(resume).map_err(|e| match resume {
            Resume::Path(path) => LaunchError::Usage(format!("--resume {}: {e}", path.display())),
            _ => LaunchError::Failed(e.to_string()),
        })
    }

    /// The `--dry-run` report.
    pub fn describe(&self, resume: &Resume) -> Result<String, LaunchError> {
        let mut s = String::new();
        let (_, from) = self.resume_point(resume)?;
        let t = &self.cfg.train;
        let devices = match &self.devices {
            Devices::Gpus(ids) => format!("GPUs {ids:?}"),
            Devices::Cpu(n) => format!("{n} CPU workers, {} threads each", self.threads_per_worker),
        };
        let _ = writeln!(s, "# resolved config\n{}", self.cfg.resolved_yaml());
        let _ = writeln!(
            s,
            "world:      {} node(s) × {} worker(s) = {} (this node: {}, {devices})",
            self.nnodes,
            self.local_workers(),
            self.world_size(),
            self.node_rank
        );
        let _ = writeln!(
            s,
            "batch:      global {} = {} workers × grad_accum {} × micro-batch {}",
            t.global_batch,
            self.world_size(),
            self.grad_accum,
            t.micro_batch
        );
        let _ = writeln!(s, "steps:      {}", t.total_steps);
        let _ = writeln!(s, "run dir:    {}", self.run_dir().root().display());
        let _ = writeln!(s, "run id:     {}", self.run_id);
        let _ = writeln!(s, "resume:     {from}");
        Ok(s)
    }
}

fn check_gpus(devices: &Devices) -> Result<(), LaunchError> {
    let Devices::Gpus(ids) = devices else {
        return Ok(());
    };
    if !cfg!(feature = "cuda") {
        return Err(LaunchError::Usage(format!(
            "--gpus: this swinfc-launch was built without CUDA (cargo build --release --features \
             swinfc-cli/cuda); to train on the CPU use --cpu {}",
            ids.len()
        )));
    }
    let visible = swinfc_model::backend::cuda_device_count();
    if visible == 0 {
        return Err(LaunchError::Usage(format!(
            "--gpus: no GPU is visible (no driver, or CUDA_VISIBLE_DEVICES hides them); to train on the \
             CPU use --cpu {}",
            ids.len()
        )));
    }
    if let Some(bad) = ids.iter().find(|&&i| i >= visible) {
        return Err(LaunchError::Usage(format!(
            "--gpus: device {bad} does not exist ({visible} visible)"
        )));
    }
    Ok(())
}

/// The `CUDA_VISIBLE_DEVICES` of the worker on device `index` as CUDA numbers the launcher's
/// devices: the launcher's own entry at that index when it was given a list (a Slurm job allotted
/// GPUs 2,3 sees them as 0 and 1, and its workers must get 2 and 3, not someone else's 0 and 1),
/// else the index itself.
fn worker_gpu(inherited: Option<&str>, index: usize) -> Result<String, LaunchError> {
    let Some(list) = inherited else {
        return Ok(index.to_string());
    };
    let entries: Vec<&str> = list.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    entries.get(index).map(|e| e.to_string()).ok_or_else(|| {
        LaunchError::Usage(format!(
            "--gpus: device {index} is not among this job's CUDA_VISIBLE_DEVICES={list} (--gpus \
             counts the visible devices from 0)"
        ))
    })
}

fn persisted_run_id(dir: &RunDir) -> Option<String> {
    let id = std::fs::read_to_string(dir.run_id()).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// `experiment-YYYYMMDD-HHMMSS`-like but without a clock library: seconds since the epoch and
/// the pid keep two launches of the same config apart.
fn new_run_id(experiment: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{experiment}-{secs}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::worker_gpu;

    #[test]
    fn gpu_workers_get_the_jobs_own_devices() {
        assert_eq!(worker_gpu(None, 1).unwrap(), "1");
        assert_eq!(worker_gpu(Some("2,3"), 0).unwrap(), "2");
        assert_eq!(worker_gpu(Some(" 2, 3 "), 1).unwrap(), "3");
        let uuid = "GPU-5b2c1e3a-0000-4000-8000-000000000001";
        assert_eq!(worker_gpu(Some(uuid), 0).unwrap(), uuid);
        let err = worker_gpu(Some("2,3"), 2).unwrap_err().to_string();
        assert!(err.contains("CUDA_VISIBLE_DEVICES=2,3"), "{err}");
        assert!(worker_gpu(Some(""), 0).is_err());
    }
}
