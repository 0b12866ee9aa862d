use std::path::PathBuf;

use swinfc_comm::CommError;
use swinfc_model::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Bad command line combination or device request (exit 2 territory, but reported like config).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Os { what: String, source: std::io::Error },
    /// Restarts exhausted, or a failure that a restart cannot fix.
    #[error("{0}")]
    Failed(String),
}

impl LaunchError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| LaunchError::Io { path, source }
    }

    pub(crate) fn os(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| LaunchError::Os { what, source }
    }

    /// Whether this error is the user's command line (exit 2) rather than a failed run (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, LaunchError::Usage(_))
    }
}
