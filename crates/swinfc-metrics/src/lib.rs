//! Metrics of a swinfc run (metrics.md): the metric catalogue, the Prometheus registry and its
//! `/metrics` HTTP endpoint, `events.jsonl`, and plots drawn from it.
//!
//! Owns: metric names, types, labels and buckets ([`catalogue`]), the schema of the records workers
//! report ([`record`]) and of `events.jsonl` ([`event`]), turning records into metrics and event
//! lines ([`Telemetry`]), and the SVG report ([`plot`]). Must not: spawn processes, hold tensors,
//! or know the training loop — the launcher calls [`Telemetry`] with what it sees, and the worker
//! sends [`record`] values.

pub mod catalogue;
pub mod event;
mod http;
pub mod plot;
pub mod record;
mod seconds;
mod telemetry;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

pub use catalogue::{CATALOGUE, Kind, MetricSpec, RestartReason, RunState};
pub use telemetry::{EVENTS_FILE, RUN_ID_FILE, RunInfo, TARGETS_FILE, Telemetry};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics.listen {listen}: {source}")]
    Bind { listen: String, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("Prometheus exporter: {0}")]
    Exporter(#[from] metrics_exporter_prometheus::BuildError),
    #[error("{}: line {line}: {message}", path.display())]
    Events {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

impl MetricsError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MetricsError + '_ {
        move |source| MetricsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A poisoned lock still holds valid counters: a panic elsewhere must not stop the metrics.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
