//! What the user asked for: the command line, and the defaults a Slurm job supplies.

use std::path::PathBuf;
use std::time::Duration;

use swinfc_train::Resume;

use crate::LaunchError;

/// Where the workers of this node run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    /// One worker per listed GPU (indices as the driver numbers them).
    Gpus(Vec<usize>),
    /// This many CPU workers, sharing the cores evenly.
    Cpu(usize),
}

impl Devices {
    /// `--gpus 4` (devices 0..4) or `--gpus 0,2,3`.
    pub fn parse_gpus(s: &str) -> Result<Devices, LaunchError> {
        let bad = || {
            LaunchError::Usage(format!(
                "--gpus {s}: expected a count (4) or a list of indices (0,2,3)"
            ))
        };
        let ids: Vec<usize> = if s.contains(',') {
            s.split(',')
                .map(|p| p.trim().parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?
        } else {
            (0..s.trim().parse::<usize>().map_err(|_| bad())?).collect()
        };
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if ids.is_empty() || sorted.len() != ids.len() {
            return Err(bad());
        }
        Ok(Devices::Gpus(ids))
    }

    /// Workers on this node.
    pub fn count(&self) -> usize {
        match self {
            Devices::Gpus(ids) => ids.len(),
            Devices::Cpu(n) => *n,
        }
    }
}

/// Everything the launcher takes from its command line (already merged with Slurm's defaults).
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub devices: Devices,
    pub config: PathBuf,
    /// `--set key=value`, passed on to every worker.
    pub overrides: Vec<String>,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    /// 0 on a single node: any free port.
    pub master_port: u16,
    pub resume: Resume,
    /// With `resume` none: delete the checkpoints an earlier run left in run.dir.
    pub overwrite: bool,
    pub max_restarts: u32,
    /// SIGTERM → SIGKILL delay when stopping workers, and the drain deadline after a signal.
    pub grace_period: Duration,
    pub run_id: Option<String>,
    pub dry_run: bool,
    /// The `swinfc` binary that runs `swinfc worker`.
    pub worker_bin: PathBuf,
    /// Longest silence allowed before a worker's first step and during eval or the final save.
    pub setup_timeout: Duration,
    /// Floor of the training-step timeout, which is otherwise 10 × the p99 step time.
    pub step_timeout: Duration,
    /// How long `/metrics` stays up after the run ends.
    pub metrics_linger: Duration,
    /// Threads of each CPU worker (Burn's rayon pool); default: this node's cores / workers.
    pub threads_per_worker: Option<usize>,
    /// Every line rank 0 writes on the console, not only its warnings and errors (the binary
    /// sets it when `RUST_LOG` is set); the per-rank log files always have them.
    pub rank0_detail: bool,
    /// Under Slurm: the id `scontrol requeue` takes (`<array job>_<task>` for arrays).
    pub slurm_requeue_id: Option<String>,
}

/// Node rank, node count, master address, run id and requeue id of a Slurm job, from its
/// environment; empty outside Slurm (no `SLURM_JOB_ID`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmDefaults {
    pub node_rank: Option<usize>,
    pub nnodes: Option<usize>,
    pub master_addr: Option<String>,
    pub run_id: Option<String>,
    pub requeue_id: Option<String>,
}

pub fn slurm_defaults(get: impl Fn(&str) -> Option<String>) -> SlurmDefaults {
    let Some(job) = get("SLURM_JOB_ID") else {
        return SlurmDefaults::default();
    };
    let num = |k: &str| get(k).and_then(|v| v.trim().parse().ok());
    let requeue_id = match (get("SLURM_ARRAY_JOB_ID"), get("SLURM_ARRAY_TASK_ID")) {
        (Some(array), Some(task)) => format!("{array}_{task}"),
        _ => job.clone(),
    };
    SlurmDefaults {
        node_rank: num("SLURM_NODEID"),
        nnodes: num("SLURM_NNODES").or_else(|| num("SLURM_JOB_NUM_NODES")),
        master_addr: get("SLURM_JOB_NODELIST").as_deref().and_then(first_host),
        // The array job id survives requeues too, and names the run the same on every task's node.
        run_id: Some(requeue_id.clone()),
        requeue_id: Some(requeue_id),
    }
}

/// The first host of a Slurm node list: `gpu[07-09,12],login1` → `gpu07`.
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    let end = list.find([',', '[']).unwrap_or(list.len());
    let prefix = &list[..end];
    if !list[end..].starts_with('[') {
        return (!prefix.is_empty()).then(|| prefix.to_string());
    }
    let inner = &list[end + 1..];
    let first = inner.split([',', '-', ']']).next()?;
    (!first.is_empty()).then(|| format!("{prefix}{first}"))
}

/// A duration given in seconds on the command line.
pub fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("'{s}' is not a number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_lists_and_counts() {
        assert_eq!(Devices::parse_gpus("3").unwrap(), Devices::Gpus(vec![0, 1, 2]));
        assert_eq!(
            Devices::parse_gpus("0,2,3").unwrap(),
            Devices::Gpus(vec![0, 2, 3])
        );
        assert!(Devices::parse_gpus("0").is_err());
        assert!(Devices::parse_gpus("1,1").is_err());
        assert!(Devices::parse_gpus("x").is_err());
    }

    #[test]
    fn slurm_node_lists() {
        assert_eq!(first_host("gpu[07-09,12],login1").as_deref(), Some("gpu07"));
        assert_eq!(first_host("node3,node4").as_deref(), Some("node3"));
        assert_eq!(first_host("a100-[1,3]").as_deref(), Some("a100-1"));
        assert_eq!(first_host("solo").as_deref(), Some("solo"));
        assert_eq!(first_host(""), None);
    }

    #[test]
    fn slurm_environment() {
        let env = |k: &str| {
            match k {
                "SLURM_JOB_ID" => Some("4242"),
                "SLURM_NODEID" => Some("1"),
                "SLURM_NNODES" => Some("2"),
                "SLURM_JOB_NODELIST" => Some("gpu[07-08]"),
                "SLURM_ARRAY_JOB_ID" => Some("4200"),
                "SLURM_ARRAY_TASK_ID" => Some("3"),
                _ => None,
            }
            .map(String::from)
        };
        let d = slurm_defaults(env);
        assert_eq!(d.node_rank, Some(1));
        assert_eq!(d.nnodes, Some(2));
        assert_eq!(d.master_addr.as_deref(), Some("gpu07"));
        assert_eq!(d.requeue_id.as_deref(), Some("4200_3"));
        assert_eq!(slurm_defaults(|_| None), SlurmDefaults::default());
    }
}
