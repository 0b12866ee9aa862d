//! Messages of the control protocol and the job token.
//!
//! A worker's connection starts with [`ClientMsg::Hello`], a node launcher's with
//! [`ClientMsg::NodeHello`]. A wrong token is answered by closing the connection with no reply at
//! all, so a stranger learns nothing (not even that this is a swinfc server). After a
//! [`ServerMsg::Welcome`], a worker's requests carry an id that the reply echoes; heartbeats and
//! reports are one-way; the server may push [`ServerMsg::Command`] at any time. A node launcher's
//! link carries only one-way [`ClientMsg::NodeReport`]s and [`ServerMsg::NodeCommand`]s, whose
//! JSON the launcher defines.

use serde::{Deserialize, Serialize};

use crate::CommError;

/// The per-run secret every control connection (and every ring link) presents.
#[derive(Clone, PartialEq, Eq)]
pub struct JobToken([u8; 32]);

impl JobToken {
    /// A fresh random token from the operating system's generator.
    pub fn generate() -> Result<Self, CommError> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b)
            .map_err(|e| CommError::Invalid(format!("no OS randomness for the job token: {e}")))?;
        Ok(Self(b))
    }

    /// Parses the 64-hex-digit form used in `SWINFC_JOB_TOKEN` and token files (surrounding
    /// whitespace ignored, so a file with a trailing newline works).
    pub fn from_hex(s: &str) -> Result<Self, CommError> {
        let v = hex_decode(s.trim()).ok_or_else(|| CommError::Invalid("job token is not hex".into()))?;
        let b: [u8; 32] = v
            .try_into()
            .map_err(|_| CommError::Invalid("job token must be 32 bytes (64 hex digits)".into()))?;
        Ok(Self(b))
    }

    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Comparison whose time does not depend on where the tokens differ.
    pub fn matches(&self, other: &[u8]) -> bool {
        other.len() == 32 && self.0.iter().zip(other).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl std::fmt::Debug for JobToken {
    // Never print the secret (it ends up in logs otherwise).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobToken(..)")
    }
}

pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Commands the launcher sends to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerCommand {
    /// Finish step `k` (every rank stops on the same boundary), let rank 0 save, exit 0.
    StopAfterStep(u64),
    /// Stop now, without saving.
    Abort,
}

/// Client → server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First message of every connection. `token` is hex.
    Hello {
        token: String,
        generation: u64,
        rank: usize,
    },
    KvSet {
        id: u64,
        key: String,
        value: String,
    },
    KvGet {
        id: u64,
        key: String,
    },
    KvWait {
        id: u64,
        key: String,
        timeout_ms: u64,
    },
    Barrier {
        id: u64,
        name: String,
        timeout_ms: u64,
    },
    Heartbeat {
        step: u64,
        phase: String,
    },
    Report {
        record: serde_json::Value,
    },
    /// First message of a node launcher's link to node 0 (`node` ≥ 1). `token` is hex. The link
    /// belongs to no generation: it outlives restart rounds, which are commanded over it.
    NodeHello {
        token: String,
        node: usize,
    },
    /// What happened on a node (e.g. a worker's exit code), for node 0's launcher (one-way).
    NodeReport {
        record: serde_json::Value,
    },
}

/// Server → client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ServerMsg {
    Welcome {
        world_size: usize,
        generation: u64,
    },
    Ok {
        id: u64,
    },
    Value {
        id: u64,
        value: Option<String>,
    },
    Error {
        id: u64,
        message: String,
    },
    /// A key wait or barrier ran out of time; `what` names what was missing.
    TimedOut {
        id: u64,
        what: String,
    },
    Command(ServerCommand),
    /// An instruction from node 0's launcher to a node launcher (restart round, drain, stop).
    NodeCommand(serde_json::Value),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hex_round_trip_and_compare() {
        let t = JobToken::generate().unwrap();
        let h = t.to_hex();
        assert_eq!(h.len(), 64);
        let back = JobToken::from_hex(&format!("{h}\n")).unwrap();
        assert!(t.matches(back.as_bytes()));
        assert!(!t.matches(&[0u8; 32]));
        assert!(!t.matches(&t.as_bytes()[..31]));
        assert!(JobToken::from_hex("abc").is_err());
        assert!(JobToken::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{t:?}"), "JobToken(..)");
    }
}
