//! Checkpoints on disk: `checkpoints/step-NNNNNNNN/` with `model.safetensors`,
//! `optimizer.safetensors`, `state.json` and `MANIFEST.json` (size and sha256 of each file,
//! written last). A checkpoint is written into a temporary directory, every file and the directory
//! fsynced, then renamed into place; `latest` names it and is replaced by rename. A checkpoint
//! whose manifest does not verify is never loaded, and a failed write never touches the others.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use swinfc_metrics::record::SaveReason;
use tracing::{info, warn};

pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "MANIFEST.json";
/// The resolved run config, so a checkpoint alone describes its model and data (also written at
/// the top of the run directory).
pub const CONFIG: &str = "config.yaml";
/// The model's weights (PyTorch key layout).
pub const MODEL: &str = "model.safetensors";
/// The optimizer's momentum buffers.
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// Class names in label order (JSON list), for `swinfc predict`.
pub const CLASSES: &str = "classes.json";
const STATE: &str = "state.json";
const LATEST: &str = "latest";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything besides tensors needed to continue a run exactly (`state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed: training resumes at this step.
    pub step: u64,
    pub epoch: u64,
    /// Samples of the training stream consumed (= step · global batch).
    pub stream_position: u64,
    pub seed: u64,
    pub config_hash: String,
    pub world_size: usize,
    pub micro_batch: usize,
    pub global_batch: usize,
    /// Combined top-1 of the evaluation at this step, if one ran.
    pub accuracy: Option<f64>,
    pub best_accuracy: Option<f64>,
    /// Consecutive non-finite steps when saved.
    pub nonfinite_streak: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format_version: u32,
    files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileEntry {
    size: u64,
    sha256: String,
}

/// Where checkpoint files are written; a trait so a failing disk can be simulated.
pub trait Storage: Send + Sync {
    /// Writes `bytes` to a new file at `path` and makes them durable.
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()>;
}

/// The real file system.
pub struct Disk;

impl Storage for Disk {
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut file = std::fs::File::create(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    }
}

/// A checkpoint ready to be written: serialised files and its state.
pub struct CheckpointData {
    pub state: TrainState,
    /// (file name, contents), e.g. `model.safetensors`.
    pub files: Vec<(String, Vec<u8>)>,
}

pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Writes `data` under `root` atomically and points `latest` at it. Returns its directory.
pub fn write_checkpoint(
    root: &Path,
    data: &CheckpointData,
    storage: &dyn Storage,
) -> Result<PathBuf, CheckpointError> {
    std::fs::create_dir_all(root).map_err(io_error(root))?;
    let name = step_dir_name(data.state.step);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_error(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io_error(&tmp))?;
    let result = fill_and_publish(root, &tmp, &name, data, storage);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn fill_and_publish(
    root: &Path,
    tmp: &Path,
    name: &str,
    data: &CheckpointData,
    storage: &dyn Storage,
) -> Result<PathBuf, CheckpointError> {
    let state = serde_json::to_vec_pretty(&data.state).expect("state serialises");
    let mut files: Vec<(&str, &[u8])> = data
        .files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    files.push((STATE, &state));
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        files: BTreeMap::new(),
    };
    for (file, bytes) in files {
        let path = tmp.join(file);
        storage.write(&path, bytes).map_err(io_error(&path))?;
        manifest.files.insert(
            file.to_string(),
            FileEntry {
                size: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(bytes)),
            },
        );
    }
    let path = tmp.join(MANIFEST);
    let manifest = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    storage.write(&path, &manifest).map_err(io_error(&path))?;
    sync_dir(tmp)?;

    let dest = root.join(name);
    if dest.exists() {
        // The same step saved again (after a replay): the new copy is complete, replace the old.
        std::fs::remove_dir_all(&dest).map_err(io_error(&dest))?;
    }
    std::fs::rename(tmp, &dest).map_err(io_error(&dest))?;
    sync_dir(root)?;
    let latest_tmp = root.join(format!(".{LATEST}.tmp"));
    storage
        .write(&latest_tmp, name.as_bytes())
        .map_err(io_error(&latest_tmp))?;
    std::fs::rename(&latest_tmp, root.join(LATEST)).map_err(io_error(root))?;
    sync_dir(root)?;
    Ok(dest)
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Checks every file against the manifest and returns the state.
pub fn verify(dir: &Path) -> Result<TrainState, CheckpointError> {
    let invalid = |message: String| CheckpointError::Invalid {
        path: dir.to_path_buf(),
        message,
    };
    let manifest_path = dir.join(MANIFEST);
    let bytes = std::fs::read(&manifest_path).map_err(io_error(&manifest_path))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("{MANIFEST}: {e}")))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(invalid(format!(
            "format version {} (expected {FORMAT_VERSION})",
            manifest.format_version
        )));
    }
    for (file, entry) in &manifest.files {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        if bytes.len() as u64 != entry.size || hex::encode(Sha256::digest(&bytes)) != entry.sha256 {
            return Err(invalid(format!("{file} does not match the manifest")));
        }
    }
    if !manifest.files.contains_key(STATE) {
        return Err(invalid(format!("{STATE} is not in the manifest")));
    }
    let state = std::fs::read(dir.join(STATE)).map_err(io_error(dir))?;
    serde_json::from_slice(&state).map_err(|e| invalid(format!("{STATE}: {e}")))
}

/// Step directories under `root`, newest first.
fn step_dirs(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs
}

/// The newest checkpoint under `root` that verifies; torn or tampered ones are skipped with a warning.
pub fn latest_valid(root: &Path) -> Option<(PathBuf, TrainState)> {
    for (_, dir) in step_dirs(root) {
        match verify(&dir) {
            Ok(state) => return Some((dir, state)),
            Err(e) => warn!(error = %e, "skipping a checkpoint that does not verify"),
        }
    }
    None
}

/// Deletes all but the newest `keep_last` valid checkpoints and, with `keep_best`, the one with
/// the best accuracy. Invalid ones newer than the newest valid are left for inspection.
pub fn apply_retention(root: &Path, keep_last: usize, keep_best: bool) -> Result<(), CheckpointError> {
    let valid: Vec<(u64, PathBuf, TrainState)> = step_dirs(root)
        .into_iter()
        .filter_map(|(step, dir)| verify(&dir).ok().map(|s| (step, dir, s)))
        .collect();
    let best = valid
        .iter()
        .filter_map(|(step, _, s)| s.accuracy.map(|a| (a, *step)))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, step)| step);
    for (i, (step, dir, _)) in valid.iter().enumerate() {
        let keep = i < keep_last || (keep_best && best == Some(*step));
        if !keep {
            std::fs::remove_dir_all(dir).map_err(io_error(dir))?;
            info!(step, "removed old checkpoint");
        }
    }
    Ok(())
}

/// A checkpoint committed by the background writer.
#[derive(Debug)]
pub struct Saved {
    pub dir: PathBuf,
    pub state: TrainState,
    /// Bytes of the files written (without the manifest).
    pub bytes: u64,
    pub reason: SaveReason,
    /// Training paused: from `started` (see [`CheckpointWriter::submit`]) to the hand-over.
    pub blocking_seconds: f64,
    /// The background write, retention included.
    pub write_seconds: f64,
    /// From `started` to the commit, time queued behind an earlier save included.
    pub total_seconds: f64,
}

/// A save that failed; the previous checkpoints are intact.
#[derive(Debug)]
pub struct SaveFailure {
    pub step: u64,
    pub reason: SaveReason,
    pub blocking_seconds: f64,
    pub error: CheckpointError,
}

/// A finished background save.
pub type SaveResult = Result<Saved, SaveFailure>;

struct Job {
    data: CheckpointData,
    reason: SaveReason,
    started: Instant,
    blocking_seconds: f64,
}

/// Attempts per save: a transient failure (a network file system's hiccup, a disk being cleaned)
/// gets two more chances before the save counts as failed.
const SAVE_ATTEMPTS: u32 = 3;
/// Wait before the first retry, doubled before the next.
const RETRY_DELAY: Duration = Duration::from_millis(500);

fn write_with_retries(
    mut write: impl FnMut() -> Result<PathBuf, CheckpointError>,
) -> Result<PathBuf, CheckpointError> {
    let (mut attempt, mut delay) = (1, RETRY_DELAY);
    loop {
        match write() {
            Err(error) if attempt < SAVE_ATTEMPTS => {
                warn!(attempt, %error, "checkpoint write failed; retrying");
                std::thread::sleep(delay);
                (attempt, delay) = (attempt + 1, delay * 2);
            }
            result => return result,
        }
    }
}

/// Writes checkpoints on a background thread so training only waits for the copy to host memory.
pub struct CheckpointWriter {
    jobs: Option<mpsc::Sender<Job>>,
    results: mpsc::Receiver<SaveResult>,
    thread: Option<JoinHandle<()>>,
}

impl CheckpointWriter {
    pub fn new(root: PathBuf, keep_last: usize, keep_best: bool, storage: Box<dyn Storage>) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, results) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                for job in rx {
                    let write_start = Instant::now();
                    let bytes: u64 = job.data.files.iter().map(|(_, b)| b.len() as u64).sum();
                    let result = write_with_retries(|| {
                        write_checkpoint(&root, &job.data, storage.as_ref())
                            .and_then(|dir| apply_retention(&root, keep_last, keep_best).map(|_| dir))
                    })
                    .map(|dir| Saved {
                        dir,
                        state: job.data.state.clone(),
                        bytes,
                        reason: job.reason,
                        blocking_seconds: job.blocking_seconds,
                        write_seconds: write_start.elapsed().as_secs_f64(),
                        total_seconds: job.started.elapsed().as_secs_f64(),
                    })
                    .map_err(|error| SaveFailure {
                        step: job.data.state.step,
                        reason: job.reason,
                        blocking_seconds: job.blocking_seconds,
                        error,
                    });
                    if tx.send(result).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the checkpoint writer thread");
        Self {
            jobs: Some(jobs),
            results,
            thread: Some(thread),
        }
    }

    /// Queues `data` for writing. `started` is when training paused to build it, so the
    /// result can tell the blocking part from the background write.
    pub fn submit(&self, data: CheckpointData, reason: SaveReason, started: Instant) {
        if let Some(jobs) = &self.jobs {
            let blocking_seconds = started.elapsed().as_secs_f64();
            // The thread only stops when this writer is dropped.
            let _ = jobs.send(Job {
                data,
                reason,
                started,
                blocking_seconds,
            });
        }
    }

    /// Saves that finished since the last call.
    pub fn finished(&self) -> Vec<SaveResult> {
        self.results.try_iter().collect()
    }

    /// Waits for every submitted save and returns their results.
    pub fn flush(mut self) -> Vec<SaveResult> {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.results.try_iter().collect()
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
