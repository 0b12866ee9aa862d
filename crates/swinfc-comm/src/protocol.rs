//! Messages of the control protocol and the job token.
//!
//! A worker's connection starts with [`ClientMsg::Hello`], a node launcher's with
//! [`ClientMsg::NodeHello`]. A wrong token is answered by closing the connection with no reply at
//! all, so a stranger learns nothing (not even that this is a swinfc server). After a
//! [`ServerMsg::Welcome`], a worker's requests carry an id that the reply echoes; heartbeats and
//! reports are one-way; the server may push [`ServerMsg::Command`] at any time. A node launcher's
//! link carries only one-way [`NodeReport`]s and [`NodeCommand`]s. Every message is a type here: a
//! frame that does not decode into one ends the connection with the reason, never a default.

use std::fmt;
use std::path::PathBuf;

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

/// What a worker is doing, told with every heartbeat: the launcher allows each phase its own
/// silence before it calls the worker hung.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Training steps.
    Train,
    /// Evaluating the test split.
    Eval,
    /// After the last step: the final checkpoint is being written.
    Finishing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Train => "train",
            Phase::Eval => "eval",
            Phase::Finishing => "finishing",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exit code of a worker that stopped on an error no restart can fix (a config or data error, a
/// checkpoint that does not fit, a run that diverges deterministically): the launcher stops at once
/// instead of restarting it. 78 is `EX_CONFIG` of sysexits.h.
pub const EXIT_PERMANENT: i32 = 78;

/// Where a run starts: the `--resume` of the CLI, of the launcher and of every worker. It lives
/// here because node 0 sends it to the other nodes with each round ([`NodeCommand::Start`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resume {
    /// Fresh, even if checkpoints exist.
    None,
    /// The newest checkpoint of the run directory that verifies; fresh if there is none.
    Auto,
    /// That checkpoint directory (an error if it does not verify).
    Path(PathBuf),
}

impl std::str::FromStr for Resume {
    type Err = String;

    /// `auto`, `none` or a checkpoint directory.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Resume::Auto,
            "none" => Resume::None,
            "" => return Err("expected auto, none or a checkpoint directory".into()),
            path => Resume::Path(path.into()),
        })
    }
}

impl fmt::Display for Resume {
    /// The command-line form [`std::str::FromStr`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resume::None => f.write_str("none"),
            Resume::Auto => f.write_str("auto"),
            Resume::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A signal a launcher received (or a worker passed on): each starts a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    Term,
    Int,
    /// Slurm's warning before the time limit: drain, then requeue.
    Usr1,
    /// A worker passing on a signal it received.
    WorkerAsked,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
            Signal::Usr1 => "SIGUSR1",
            Signal::WorkerAsked => "SIGUSR2 (from a worker)",
        }
    }
}

/// How a job ended, as node 0 tells the other nodes' launchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobOutcome {
    Finished,
    Preempted,
    Failed,
}

/// Node 0's launcher → another node's launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum NodeCommand {
    /// Start this node's workers for a restart round.
    Start {
        generation: u64,
        attempt: u64,
        resume: Resume,
        master_port: u16,
    },
    /// Stop this node's workers (the round failed); answer [`NodeReport::Stopped`].
    Stop,
    /// The job is over: exit with `outcome`; `reason` is node 0's account of it.
    Exit { outcome: JobOutcome, reason: String },
}

/// Another node's launcher → node 0's launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NodeReport {
    /// Global rank `rank` on this node exited; `cause` describes the exit status.
    Exit { rank: usize, ok: bool, cause: String },
    /// This node's launcher received `signal`.
    Signal { signal: Signal },
    /// This node's workers are gone (the answer to [`NodeCommand::Stop`]).
    Stopped,
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
        phase: Phase,
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
    NodeReport(NodeReport),
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
    NodeCommand(NodeCommand),
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

    #[test]
    fn node_messages_round_trip_and_malformed_ones_are_errors() {
        let start = NodeCommand::Start {
            generation: 2,
            attempt: 3,
            resume: Resume::Path("/runs/a/checkpoints/step-00000010".into()),
            master_port: 29500,
        };
        let text = serde_json::to_string(&start).unwrap();
        assert_eq!(serde_json::from_str::<NodeCommand>(&text).unwrap(), start);
        let exit = NodeReport::Exit {
            rank: 3,
            ok: false,
            cause: "killed by SIGKILL".into(),
        };
        let text = serde_json::to_string(&exit).unwrap();
        assert_eq!(serde_json::from_str::<NodeReport>(&text).unwrap(), exit);

        // What the old hand-built JSON defaulted: a missing rank (blamed rank 0) and a port that
        // does not fit (became port 0).
        for bad in [
            r#"{"kind": "exit", "ok": false, "cause": "x"}"#,
            r#"{"kind": "exit", "rank": "one", "ok": false, "cause": "x"}"#,
            r#"{"kind": "signal", "signal": "Hup"}"#,
            r#"{"kind": "mystery"}"#,
        ] {
            assert!(serde_json::from_str::<NodeReport>(bad).is_err(), "{bad}");
        }
        for bad in [
            r#"{"cmd": "start", "generation": 1, "attempt": 1, "resume": "auto", "master_port": 70000}"#,
            r#"{"cmd": "start", "generation": 1, "attempt": 1, "master_port": 29500}"#,
            r#"{"cmd": "exit", "outcome": "maybe", "reason": ""}"#,
        ] {
            assert!(serde_json::from_str::<NodeCommand>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resume_reads_back_what_it_prints() {
        for r in [
            Resume::Auto,
            Resume::None,
            Resume::Path("/a/step-00000004".into()),
        ] {
            assert_eq!(r.to_string().parse::<Resume>().unwrap(), r);
        }
        assert!("".parse::<Resume>().is_err());
    }
}
