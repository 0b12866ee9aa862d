//! The blocking control client a worker uses, the worker identity it reads from the environment,
//! and the [`NodeClient`] through which another node's launcher links to node 0's.
//!
//! One reader thread owns the receiving half of the socket: replies go to the caller waiting in
//! a request, commands to a queue that [`ControlClient::poll_command`] (or
//! [`NodeClient::recv_timeout`]) drains. So a command pushed by the launcher is never lost while
//! the worker is busy, and a dead server is noticed by the next call.

use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info};

use crate::CommError;
use crate::frame::{read_frame, write_frame};
use crate::protocol::{ClientMsg, JobToken, NodeCommand, NodeReport, Phase, ServerCommand, ServerMsg};

/// Extra time a request waits beyond its server-side timeout, so the server's precise
/// "timed out" answer (which names what was missing) normally arrives first.
const REPLY_GRACE: Duration = Duration::from_secs(5);
/// Plain requests (set, get) are answered at once by a live server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Who a worker is, as the launcher tells it through the environment.
#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    pub rank: usize,
    pub local_rank: usize,
    pub world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// The job token in hex (64 digits).
    pub job_token: String,
    /// The restart round; the control server calls it the generation.
    pub restart_round: u64,
}

impl WorkerIdentity {
    /// Reads `SWINFC_RANK`, `SWINFC_LOCAL_RANK`, `SWINFC_WORLD_SIZE`, `SWINFC_MASTER_ADDR`,
    /// `SWINFC_MASTER_PORT`, `SWINFC_JOB_TOKEN` and `SWINFC_RESTART_ROUND`.
    pub fn from_env() -> Result<Self, CommError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`from_env`](Self::from_env) with another source of variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CommError> {
        let var = |k: &'static str| {
            get(k).ok_or(CommError::Env {
                var: k,
                reason: "not set".into(),
            })
        };
        fn num<T: std::str::FromStr>(k: &'static str, v: String) -> Result<T, CommError> {
            v.trim().parse().map_err(|_| CommError::Env {
                var: k,
                reason: format!("'{v}' is not a valid number"),
            })
        }
        let id = Self {
            rank: num("SWINFC_RANK", var("SWINFC_RANK")?)?,
            local_rank: num("SWINFC_LOCAL_RANK", var("SWINFC_LOCAL_RANK")?)?,
            world_size: num("SWINFC_WORLD_SIZE", var("SWINFC_WORLD_SIZE")?)?,
            master_addr: var("SWINFC_MASTER_ADDR")?,
            master_port: num("SWINFC_MASTER_PORT", var("SWINFC_MASTER_PORT")?)?,
            job_token: var("SWINFC_JOB_TOKEN")?,
            restart_round: num("SWINFC_RESTART_ROUND", var("SWINFC_RESTART_ROUND")?)?,
        };
        if id.world_size == 0 || id.rank >= id.world_size {
            return Err(CommError::Env {
                var: "SWINFC_RANK",
                reason: format!("rank {} outside world size {}", id.rank, id.world_size),
            });
        }
        JobToken::from_hex(&id.job_token).map_err(|e| CommError::Env {
            var: "SWINFC_JOB_TOKEN",
            reason: e.to_string(),
        })?;
        Ok(id)
    }

    /// The environment that [`from_env`](Self::from_env) reads, for whoever spawns workers.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SWINFC_RANK", self.rank.to_string()),
            ("SWINFC_LOCAL_RANK", self.local_rank.to_string()),
            ("SWINFC_WORLD_SIZE", self.world_size.to_string()),
            ("SWINFC_MASTER_ADDR", self.master_addr.clone()),
            ("SWINFC_MASTER_PORT", self.master_port.to_string()),
            ("SWINFC_JOB_TOKEN", self.job_token.clone()),
            ("SWINFC_RESTART_ROUND", self.restart_round.to_string()),
        ]
    }
}

/// A worker's connection to the control server.
pub struct ControlClient {
    stream: TcpStream,
    rank: usize,
    world_size: usize,
    generation: u64,
    token: JobToken,
    replies: Receiver<ServerMsg>,
    commands: Receiver<ServerCommand>,
    reader: Reader,
    next_id: u64,
}

impl ControlClient {
    /// Connects (retrying while the server is not up yet, until `timeout`), presents the token and
    /// joins generation `restart_round` as `rank`.
    pub fn connect(id: &WorkerIdentity, timeout: Duration) -> Result<Self, CommError> {
        let token = JobToken::from_hex(&id.job_token)?;
        let hello = ClientMsg::Hello {
            token: token.to_hex(),
            generation: id.restart_round,
            rank: id.rank,
        };
        let (stream, world_size, server) = join(&id.master_addr, id.master_port, &hello, timeout)?;
        if world_size != id.world_size {
            return Err(CommError::Refused(format!(
                "server world size {world_size} differs from ours, {}",
                id.world_size
            )));
        }
        info!(
            rank = id.rank,
            generation = id.restart_round,
            "joined the control server"
        );

        let (reply_tx, replies) = mpsc::channel();
        let (cmd_tx, commands) = mpsc::channel();
        let reader = Reader::spawn(&stream, server, move |m| match m {
            ServerMsg::Command(c) => {
                debug!(?c, "command from the launcher");
                cmd_tx.send(c).map_err(|_| "client dropped".to_string())
            }
            m => reply_tx.send(m).map_err(|_| "client dropped".to_string()),
        })?;
        Ok(Self {
            stream,
            rank: id.rank,
            world_size,
            generation: id.restart_round,
            token,
            replies,
            commands,
            reader,
            next_id: 1,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn token(&self) -> &JobToken {
        &self.token
    }

    /// Our address as the server sees it: the interface peers on other hosts can reach us on.
    pub fn local_ip(&self) -> Result<IpAddr, CommError> {
        self.stream
            .local_addr()
            .map(|a| a.ip())
            .map_err(|e| CommError::io("control socket", e))
    }

    fn send(&mut self, msg: &ClientMsg) -> Result<(), CommError> {
        write_frame(&mut self.stream, msg, "control server")
    }

    /// Sends a request and waits for the reply with its id.
    fn request(
        &mut self,
        make: impl FnOnce(u64) -> ClientMsg,
        wait: Duration,
        what: &str,
    ) -> Result<ServerMsg, CommError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&make(id))?;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(m) => {
                    let rid = match &m {
                        ServerMsg::Ok { id }
                        | ServerMsg::Value { id, .. }
                        | ServerMsg::Error { id, .. }
                        | ServerMsg::TimedOut { id, .. } => *id,
                        _ => {
                            return Err(CommError::Protocol {
                                peer: "control server".into(),
                                reason: format!("unexpected {m:?}"),
                            });
                        }
                    };
                    // Replies to requests we gave up on earlier are dropped here.
                    if rid == id {
                        return match m {
                            ServerMsg::Error { message, .. } => Err(CommError::Server(message)),
                            ServerMsg::TimedOut { what, .. } => Err(CommError::Timeout {
                                what,
                                timeout: wait.saturating_sub(REPLY_GRACE),
                            }),
                            m => Ok(m),
                        };
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(CommError::Timeout {
                        what: format!("the control server to answer {what}"),
                        timeout: wait,
                    });
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.reader.lost()),
            }
        }
    }

    /// Sets `key` in the current generation's store.
    pub fn kv_set(&mut self, key: &str, value: &str) -> Result<(), CommError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.request(
            |id| ClientMsg::KvSet { id, key, value },
            REQUEST_TIMEOUT,
            "kv_set",
        )
        .map(|_| ())
    }

    /// The value of `key` in the current generation, if set.
    pub fn kv_get(&mut self, key: &str) -> Result<Option<String>, CommError> {
        let key = key.to_string();
        match self.request(|id| ClientMsg::KvGet { id, key }, REQUEST_TIMEOUT, "kv_get")? {
            ServerMsg::Value { value, .. } => Ok(value),
            m => Err(CommError::Protocol {
                peer: "control server".into(),
                reason: format!("kv_get answered {m:?}"),
            }),
        }
    }

    /// Waits until `key` is set (in this generation) and returns its value.
    pub fn kv_wait(&mut self, key: &str, timeout: Duration) -> Result<String, CommError> {
        let k = key.to_string();
        let ms = timeout.as_millis() as u64;
        match self.request(
            |id| ClientMsg::KvWait {
                id,
                key: k,
                timeout_ms: ms,
            },
            timeout + REPLY_GRACE,
            "kv_wait",
        )? {
            ServerMsg::Value { value: Some(v), .. } => Ok(v),
            m => Err(CommError::Protocol {
                peer: "control server".into(),
                reason: format!("kv_wait answered {m:?}"),
            }),
        }
    }

    /// Waits until every rank has entered barrier `name` as often as we have. On failure the
    /// error names the ranks that did not arrive or that disconnected.
    pub fn barrier(&mut self, name: &str, timeout: Duration) -> Result<(), CommError> {
        let n = name.to_string();
        let ms = timeout.as_millis() as u64;
        self.request(
            |id| ClientMsg::Barrier {
                id,
                name: n,
                timeout_ms: ms,
            },
            timeout + REPLY_GRACE,
            "barrier",
        )
        .map(|_| ())
    }

    /// Progress signal for hang detection (one-way).
    pub fn heartbeat(&mut self, step: u64, phase: Phase) -> Result<(), CommError> {
        self.send(&ClientMsg::Heartbeat { step, phase })
    }

    /// A metrics record for the launcher (one-way).
    pub fn report(&mut self, record: serde_json::Value) -> Result<(), CommError> {
        self.send(&ClientMsg::Report { record })
    }

    /// The next command from the launcher, without blocking. An error means the server is gone.
    pub fn poll_command(&mut self) -> Result<Option<ServerCommand>, CommError> {
        match self.commands.try_recv() {
            Ok(c) => Ok(Some(c)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(self.reader.lost()),
        }
    }
}

/// Another node's launcher's link to node 0's control server. Node 0 commands restart rounds,
/// drains and stops over it ([`NodeCommand`]); this node reports what happened to its workers
/// ([`NodeReport`]). Unlike a worker's connection, the link outlives restart rounds.
pub struct NodeClient {
    stream: TcpStream,
    server: String,
    commands: Receiver<NodeCommand>,
    reader: Reader,
}

impl NodeClient {
    /// Connects (retrying until `timeout` while node 0 is not up yet), presents the token, joins as
    /// `node`. Node 0's server refuses node 0 and a node that is already linked, naming the node.
    pub fn connect(
        addr: &str,
        port: u16,
        token: &JobToken,
        node: usize,
        timeout: Duration,
    ) -> Result<Self, CommError> {
        let hello = ClientMsg::NodeHello {
            token: token.to_hex(),
            node,
        };
        let (stream, _, server) = join(addr, port, &hello, timeout)?;
        info!(node, %server, "linked to node 0's launcher");
        let (cmd_tx, commands) = mpsc::channel();
        let reader = Reader::spawn(&stream, server.clone(), move |m| match m {
            ServerMsg::NodeCommand(c) => cmd_tx.send(c).map_err(|_| "client dropped".to_string()),
            m => Err(format!("unexpected {m:?} on a node link")),
        })?;
        Ok(Self {
            stream,
            server,
            commands,
            reader,
        })
    }

    /// Sends `report` to node 0's launcher (one-way). Fails once the link is known to be gone, so a
    /// report is not silently lost on a dead link.
    pub fn send(&mut self, report: NodeReport) -> Result<(), CommError> {
        if self.reader.stopped() {
            return Err(self.reader.lost());
        }
        write_frame(&mut self.stream, &ClientMsg::NodeReport(report), &self.server)
    }

    /// The next command from node 0, waiting at most `timeout`; Ok(None) on timeout; Err once the
    /// connection is gone (with the reason). Commands that arrived before the link ended are
    /// still returned first.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<NodeCommand>, CommError> {
        match self.commands.recv_timeout(timeout) {
            Ok(c) => Ok(Some(c)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(self.reader.lost()),
        }
    }
}

/// Connects (retrying until `timeout`), sends `hello` and waits for the welcome. Returns the stream
/// (write timeout set, no read timeout), the server's world size, and the server's name for errors.
fn join(
    host: &str,
    port: u16,
    hello: &ClientMsg,
    timeout: Duration,
) -> Result<(TcpStream, usize, String), CommError> {
    let deadline = Instant::now() + timeout;
    let server = format!("control server {host}:{port}");
    let mut stream = connect_retrying(host, port, deadline, &server)?;
    stream.set_nodelay(true).map_err(|e| CommError::io(&server, e))?;
    // Writes to a live server never take long; a wedged one must not hang the caller.
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| CommError::io(&server, e))?;
    write_frame(&mut stream, hello, &server)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| CommError::io(&server, e))?;
    let welcome = match read_frame::<ServerMsg>(&mut stream, &server) {
        Ok(m) => m,
        // The server answers a wrong token by closing, on purpose without a reason.
        Err(CommError::Closed { .. }) => {
            return Err(CommError::Refused(
                "connection closed during the handshake (wrong job token?)".into(),
            ));
        }
        Err(e) => return Err(e),
    };
    let world_size = match welcome {
        ServerMsg::Welcome { world_size, .. } => world_size,
        ServerMsg::Error { message, .. } => return Err(CommError::Refused(message)),
        other => {
            return Err(CommError::Protocol {
                peer: server,
                reason: format!("expected welcome, got {other:?}"),
            });
        }
    };
    stream
        .set_read_timeout(None)
        .map_err(|e| CommError::io(&server, e))?;
    Ok((stream, world_size, server))
}

/// The thread that owns the receiving half of a control connection. Dropping it shuts the
/// connection down, which unblocks the thread, and joins it.
struct Reader {
    stream: TcpStream,
    /// Why the thread stopped, once it has.
    why: Arc<Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    /// Hands every frame from the server to `route` until reading fails or `route` returns the
    /// reason to stop.
    fn spawn(
        stream: &TcpStream,
        server: String,
        mut route: impl FnMut(ServerMsg) -> Result<(), String> + Send + 'static,
    ) -> Result<Self, CommError> {
        let mut rd = stream.try_clone().map_err(|e| CommError::io(&server, e))?;
        let own = stream.try_clone().map_err(|e| CommError::io(&server, e))?;
        let why = Arc::new(Mutex::new(None));
        let why2 = why.clone();
        let thread = std::thread::Builder::new()
            .name("swinfc-control-rx".into())
            .spawn(move || {
                let reason = loop {
                    match read_frame::<ServerMsg>(&mut rd, &server) {
                        Ok(m) => {
                            if let Err(reason) = route(m) {
                                break reason;
                            }
                        }
                        Err(e) => break e.to_string(),
                    }
                };
                *why2.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
            })
            .map_err(|e| CommError::io("control reader thread", e))?;
        Ok(Self {
            stream: own,
            why,
            thread: Some(thread),
        })
    }

    fn stopped(&self) -> bool {
        self.why.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The error for a connection that is gone, with the reader's reason.
    fn lost(&self) -> CommError {
        let why = self.why.lock().unwrap_or_else(|p| p.into_inner()).clone();
        CommError::Closed {
            peer: format!(
                "control server ({})",
                why.unwrap_or_else(|| "reader stopped".into())
            ),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Unblocks the reader thread, which then exits.
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn connect_retrying(host: &str, port: u16, deadline: Instant, what: &str) -> Result<TcpStream, CommError> {
    let mut last = None;
    loop {
        let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
            Ok(a) => a.collect(),
            // Name resolution can fail while a cluster's DNS catches up: retry like a refusal.
            Err(e) => {
                last = Some(e);
                Vec::new()
            }
        };
        for a in &addrs {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10));
            match TcpStream::connect_timeout(a, left) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        if Instant::now() >= deadline {
            return Err(match last {
                Some(e) => CommError::io(what, e),
                None => CommError::Invalid(format!("{what}: no address")),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn identity_from_lookup() {
        let token = JobToken::generate().unwrap().to_hex();
        let id = WorkerIdentity {
            rank: 2,
            local_rank: 0,
            world_size: 4,
            master_addr: "node0".into(),
            master_port: 29400,
            job_token: token,
            restart_round: 3,
        };
        let env: HashMap<&str, String> = id.to_env().into_iter().collect();
        let back = WorkerIdentity::from_lookup(|k| env.get(k).cloned()).unwrap();
        assert_eq!(
            (back.rank, back.world_size, back.master_port, back.restart_round),
            (2, 4, 29400, 3)
        );

        let mut bad = env.clone();
        bad.insert("SWINFC_RANK", "4".into());
        assert!(WorkerIdentity::from_lookup(|k| bad.get(k).cloned()).is_err());
        let mut missing = env.clone();
        missing.remove("SWINFC_JOB_TOKEN");
        let e = WorkerIdentity::from_lookup(|k| missing.get(k).cloned()).unwrap_err();
        assert!(e.to_string().contains("SWINFC_JOB_TOKEN"), "{e}");
    }
}
