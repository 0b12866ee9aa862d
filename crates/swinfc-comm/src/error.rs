//! The one error type of the crate. Variants name the rank or peer involved, because the launcher
//! decides what to restart from these messages.

use std::time::Duration;

/// Errors of collectives and of the control protocol.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("I/O error talking to {peer}: {source}")]
    Io {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    #[error("{peer} closed the connection")]
    Closed { peer: String },
    #[error("malformed frame from {peer}: {reason}")]
    Frame { peer: String, reason: String },
    #[error("protocol error with {peer}: {reason}")]
    Protocol { peer: String, reason: String },
    #[error("the control server refused us: {0}")]
    Refused(String),
    #[error("the control server answered with an error: {0}")]
    Server(String),
    #[error("collective mismatch with rank {peer}: {reason}")]
    Mismatch { peer: usize, reason: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("environment variable {var}: {reason}")]
    Env { var: &'static str, reason: String },
    #[error("the collective was aborted{}", .0.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Aborted(Option<String>),
    #[error("{lib} was not found by the dynamic loader; {hint}")]
    LibraryMissing { lib: &'static str, hint: &'static str },
    #[error("NCCL/CUDA error: {0}")]
    Nccl(String),
}

impl CommError {
    pub(crate) fn io(peer: impl Into<String>, source: std::io::Error) -> Self {
        CommError::Io {
            peer: peer.into(),
            source,
        }
    }
}
