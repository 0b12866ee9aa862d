use std::path::PathBuf;

use swinfc_comm::CommError;
use swinfc_config::ConfigError;
use swinfc_data::DataError;
use swinfc_train::RunDirError;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Bad command line combination or device request (exit 2 territory, but reported like config).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The dataset cannot be opened (its root, a metadata file, its classes).
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
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

    /// The one line that tells the user what to do about this error.
    pub fn hint(&self) -> &'static str {
        match self {
            LaunchError::Usage(_) => "fix the command line (swinfc-launch --help lists the options)",
            LaunchError::Config(_) => {
                "fix that key in the config or its --set; swinfc-launch --dry-run CONFIG checks a config \
                 without starting workers"
            }
            LaunchError::Data(DataError::Config(_)) => {
                "fix that key in the config or its --set; swinfc-launch --dry-run CONFIG checks a config \
                 without starting workers"
            }
            LaunchError::Data(_) => {
                "check data.root and the file named above (docs: datasets.md); `swinfc data check \
                 CONFIG` reads the whole dataset"
            }
            LaunchError::Comm(_) => {
                "check that node 0 is reachable at --master-addr/--master-port and that every node has \
                 the same job token, then run the same command again"
            }
            // Its message already says what to do (wait, resume, overwrite, another run.dir).
            LaunchError::RunDir(RunDirError::Busy { .. } | RunDirError::HasCheckpoints { .. }) => {
                "nothing was started and nothing was changed"
            }
            LaunchError::Io { .. } | LaunchError::RunDir(RunDirError::Io { .. }) => {
                "check that the path exists and is writable (run.dir in the config), then run the same \
                 command again"
            }
            LaunchError::Os { .. } => {
                "check the process limits and permissions of this node, then run the same command again"
            }
            LaunchError::Failed(_) => {
                "the per-rank logs in run.dir/logs/attempt-N/ say why; once fixed, the same command \
                 resumes from the newest checkpoint"
            }
        }
    }

    /// Whether this error is the user's command line (exit 2) rather than a failed run (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, LaunchError::Usage(_))
    }
}
