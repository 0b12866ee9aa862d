//! [`RunDir`]: the one place that knows where things live in a run directory. The worker, the
//! launcher and the CLI all go through it, so the layout cannot drift between them.
//!
//! ```text
//! run.dir/
//!   config.yaml            the resolved config (written by rank 0)
//!   run_id                 kept across restarts and requeues (launcher)
//!   job-token              multi-node jobs without SWINFC_JOB_TOKEN (node 0's launcher)
//!   events.jsonl           telemetry events (launcher)
//!   prometheus-targets.json  the launcher's /metrics address while it serves it
//!   logs/attempt-N/        per-rank logs of each attempt (launcher)
//!   checkpoints/step-NNNNNNNN/{model,optimizer}.safetensors, state.json, MANIFEST.json, ...
//!   checkpoints/latest
//!   lock                   held by the launch (or `swinfc train`) using the directory
//! ```

use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use swinfc_comm::Resume;

use crate::checkpoint::{CONFIG, CheckpointError, latest_valid, step_dir_name, verify};

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

    /// Where the launcher tells Prometheus its `/metrics` address, while it serves it.
    pub fn prometheus_targets(&self) -> PathBuf {
        self.0.join(swinfc_metrics::TARGETS_FILE)
    }

    pub fn job_token(&self) -> PathBuf {
        self.0.join("job-token")
    }

    pub fn logs(&self) -> PathBuf {
        self.0.join("logs")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.0.join("lock")
    }

    /// What `resume` selects right now: the step training would start from, and a description
    /// (`step 40 from …/step-00000040`). An explicit checkpoint that does not verify is an error.
    pub fn resume_point(&self, resume: &Resume) -> Result<(u64, String), CheckpointError> {
        Ok(match resume {
            Resume::None => (0, "fresh start (--resume none)".into()),
            Resume::Auto => match latest_valid(&self.checkpoints()) {
                Some((dir, state)) => (state.step, format!("step {} from {}", state.step, dir.display())),
                None => (0, "fresh start (no valid checkpoint in the run directory)".into()),
            },
            Resume::Path(path) => {
                let state = verify(path)?;
                (state.step, format!("step {} from {}", state.step, path.display()))
            }
        })
    }

    /// Takes the directory for one launch: an exclusive lock (a second launch on it fails naming
    /// the holder; the kernel releases the lock when the holder exits, however it exits), and,
    /// for a fresh start (`resume` none), a directory without checkpoints of an earlier run:
    /// they are refused unless `overwrite`, which deletes them.
    pub fn claim(&self, resume: &Resume, overwrite: bool) -> Result<RunDirLock, RunDirError> {
        let io = |path: PathBuf| move |source| RunDirError::Io { path, source };
        std::fs::create_dir_all(&self.0).map_err(io(self.0.clone()))?;
        let path = self.lock_file();
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(path.clone()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(RunDirError::Busy {
                    dir: self.0.clone(),
                    holder: holder.trim().to_string(),
                });
            }
            Err(TryLockError::Error(source)) => return Err(RunDirError::Io { path, source }),
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let holder = format!("pid {} on {}\n", std::process::id(), host.trim());
        file.set_len(0)
            .and_then(|()| file.write_all(holder.as_bytes()))
            .map_err(io(path))?;

        self.remove_torn_saves()?;
        self.remove_stale_targets()?;
        if *resume == Resume::None {
            self.clear_for_fresh_start(overwrite)?;
        }
        Ok(RunDirLock { _file: file })
    }

    /// Removes the temporary directories of saves whose writer died (`.tmp-step-…-PID`): under
    /// the lock no writer of this directory is running yet.
    fn remove_torn_saves(&self) -> Result<(), RunDirError> {
        let checkpoints = self.checkpoints();
        let Ok(entries) = std::fs::read_dir(&checkpoints) else {
            return Ok(());
        };
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing a torn save left by a dead writer");
                std::fs::remove_dir_all(&path).map_err(|source| RunDirError::Io { path, source })?;
            }
        }
        Ok(())
    }

    /// A targets file under the lock was left by a launcher that died (`kill -9`, a lost node):
    /// its address answers nothing. Removed, so Prometheus stops scraping it until this launch
    /// (if it serves `/metrics`) writes its own.
    fn remove_stale_targets(&self) -> Result<(), RunDirError> {
        let path = self.prometheus_targets();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed the Prometheus targets of a launcher that died");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RunDirError::Io { path, source }),
        }
    }

    fn clear_for_fresh_start(&self, overwrite: bool) -> Result<(), RunDirError> {
        let checkpoints = self.checkpoints();
        let mut steps: Vec<String> = match std::fs::read_dir(&checkpoints) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("step-"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(RunDirError::Io {
                    path: checkpoints,
                    source,
                });
            }
        };
        steps.sort();
        let Some(newest) = steps.pop() else {
            return Ok(());
        };
        if !overwrite {
            return Err(RunDirError::HasCheckpoints {
                dir: self.0.clone(),
                newest,
            });
        }
        tracing::warn!(dir = %checkpoints.display(), "--overwrite: deleting the earlier run's checkpoints");
        std::fs::remove_dir_all(&checkpoints).map_err(|source| RunDirError::Io {
            path: checkpoints,
            source,
        })
    }

    /// The per-rank logs of launch attempt `attempt`.
    pub fn attempt_logs(&self, attempt: u64) -> PathBuf {
        self.logs().join(format!("attempt-{attempt}"))
    }
}

/// A run directory held by this process (see [`RunDir::claim`]); dropping it releases the lock.
#[derive(Debug)]
pub struct RunDirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error(
        "run.dir {} is in use by another launch ({holder}): wait for it to end, or set another \
         run.dir",
        dir.display()
    )]
    Busy { dir: PathBuf, holder: String },
    #[error(
        "run.dir {} already holds checkpoints of an earlier run (newest {newest}): `--resume auto` \
         continues that run, `--resume none --overwrite` deletes its checkpoints, or set another \
         run.dir",
        dir.display()
    )]
    HasCheckpoints { dir: PathBuf, newest: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
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

    #[test]
    fn a_claimed_directory_cannot_be_claimed_again_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let held = run.claim(&Resume::Auto, false).unwrap();
        let err = run.claim(&Resume::Auto, false).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(held);
        run.claim(&Resume::Auto, false).unwrap();
    }

    #[test]
    fn a_fresh_start_refuses_earlier_checkpoints_unless_told_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        std::fs::create_dir_all(run.checkpoint(3)).unwrap();
        std::fs::create_dir_all(run.checkpoint(12)).unwrap();
        let err = run.claim(&Resume::None, false).unwrap_err().to_string();
        assert!(err.contains("newest step-00000012"), "{err}");
        assert!(run.checkpoint(12).exists());
        drop(run.claim(&Resume::Auto, false).unwrap()); // resuming is fine
        drop(run.claim(&Resume::None, true).unwrap());
        assert!(!run.checkpoints().exists());
    }

    #[test]
    fn a_dead_writers_temporary_save_is_removed_and_checkpoints_kept() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let torn = run.checkpoints().join(".tmp-step-00000009-4242");
        std::fs::create_dir_all(&torn).unwrap();
        std::fs::write(torn.join("model.safetensors"), b"half").unwrap();
        std::fs::create_dir_all(run.checkpoint(6)).unwrap();
        drop(run.claim(&Resume::Auto, false).unwrap());
        assert!(!torn.exists());
        assert!(run.checkpoint(6).exists());
    }

    #[test]
    fn a_dead_launchers_prometheus_targets_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        std::fs::write(run.prometheus_targets(), r#"[{"targets": ["127.0.0.1:1"]}]"#).unwrap();
        drop(run.claim(&Resume::Auto, false).unwrap());
        assert!(!run.prometheus_targets().exists());
    }
}
