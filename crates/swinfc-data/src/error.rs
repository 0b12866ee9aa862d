//! The one error type of this crate. Every variant names what the user has to fix: the dotted
//! config key, or the file (and line) that is wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A bad or unknown key in the `data:` section, named by its dotted path (`data.subset`).
    #[error(transparent)]
    Config(#[from] swinfc_config::ConfigError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A metadata line that is malformed or inconsistent with another file.
    #[error("{}:{line}: {msg}", path.display())]
    Parse { path: PathBuf, line: usize, msg: String },
    /// A directory-level problem: a missing metadata file, a `val/` class absent from `train/`.
    #[error("{}: {msg}", path.display())]
    Layout { path: PathBuf, msg: String },
    /// An image that cannot be decoded where that is fatal (the test split).
    #[error("{path}: cannot decode image: {reason}")]
    Decode { path: String, reason: String },
    /// A bug rather than bad data (a request index out of range, a panicked loader thread).
    #[error("internal error: {0}")]
    Internal(String),
}

impl DataError {
    pub(crate) fn config(key: &str, msg: impl Into<String>) -> Self {
        DataError::Config(swinfc_config::ConfigError::new(key, msg))
    }

    pub(crate) fn parse(path: &std::path::Path, line: usize, msg: impl Into<String>) -> Self {
        DataError::Parse {
            path: path.to_path_buf(),
            line,
            msg: msg.into(),
        }
    }

    pub(crate) fn layout(path: &std::path::Path, msg: impl Into<String>) -> Self {
        DataError::Layout {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
