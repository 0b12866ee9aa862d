//! [`RunDir`]: the one place that knows where things live in a run directory. The worker, the
//! launcher and the CLI all go through it, so the layout cannot drift between them.
//!
//! ```text
//! run.dir/
//!   config.yaml            the resolved config (written by rank 0)
//!   run_id                 kept across restarts and requeues (launcher)
//!   job-token              multi-node jobs without SWINFC_JOB_TOKEN (node 0's launcher)
//!   events.jsonl           telemetry events (launcher)
//!   logs/attempt-N/        per-rank logs of each attempt (launcher)
//!   checkpoints/step-NNNNNNNN/{model,optimizer}.safetensors, state.json, MANIFEST.json, ...
//!   checkpoints/latest
//! ```

use std::path::{Path, PathBuf};

use crate::checkpoint::{CONFIG, step_dir_name};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir(root.into())
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    pub fn config(&self) -> PathBuf {
        self.0.join(CONFIG)
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.0.join("checkpoints")
    }

    /// The checkpoint of `step` (which may not exist).
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints().join(step_dir_name(step))
    }

    pub fn run_id(&self) -> PathBuf {
        self.0.join(swinfc_metrics::RUN_ID_FILE)
    }

    pub fn events(&self) -> PathBuf {
        self.0.join(swinfc_metrics::EVENTS_FILE)
    }

    pub fn job_token(&self) -> PathBuf {
        self.0.join("job-token")
    }

    pub fn logs(&self) -> PathBuf {
        self.0.join("logs")
    }

    /// The per-rank logs of launch attempt `attempt`.
    pub fn attempt_logs(&self, attempt: u64) -> PathBuf {
        self.logs().join(format!("attempt-{attempt}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_the_documented_one() {
        let run = RunDir::new("/runs/a");
        assert_eq!(run.checkpoint(40), Path::new("/runs/a/checkpoints/step-00000040"));
        assert_eq!(run.attempt_logs(2), Path::new("/runs/a/logs/attempt-2"));
        assert_eq!(run.events(), Path::new("/runs/a/events.jsonl"));
        assert_eq!(run.config(), Path::new("/runs/a/config.yaml"));
    }
}
