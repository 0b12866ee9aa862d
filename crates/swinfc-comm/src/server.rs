//! The control server: rendezvous, generation-scoped key-value store, named barriers, heartbeats,
//! reports and commands for workers, and links to the other nodes' launchers. It runs inside the
//! node-0 launcher on tokio; [`ServerHandle`] runs it on a private thread for hosts (tests, tools)
//! that have no runtime of their own.
//!
//! State is one `std::sync::Mutex` that is never held across an `.await`; waiters (key waits,
//! barriers) sleep on one `Notify` that fires on every change and re-check.
//!
//! Until a connection has shown the job token it is a stranger's, and costs little: its first
//! frame may be only [`MAX_HELLO`] bytes and must arrive within [`HANDSHAKE_TIMEOUT`], at most
//! [`MAX_UNAUTHENTICATED`] such connections are open at once, and their refusals are logged once
//! and then counted, so a flood of them neither fills memory nor the log.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::CommError;
use crate::frame::{MAX_FRAME, read_frame_async, write_frame_async};
use crate::protocol::{
    ClientMsg, JobToken, NodeCommand, NodeReport, Phase, ServerCommand, ServerMsg, hex_decode,
};

/// How long a new connection may take to present its token (the whole first frame).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest first frame. A hello is about 120 bytes; a stranger must not make us hold a
/// [`MAX_FRAME`] buffer before the token is checked.
pub const MAX_HELLO: usize = 1024;
/// Connections without a checked token open at once, at most. A new one at the limit closes the
/// oldest rather than being turned away: a worker sends its hello as soon as it connects, so it is
/// read long before hundreds of newer connections arrive, and a flood of silent connections
/// cannot lock workers out for the handshake timeout. Far above the connections a starting job
/// opens at once that are not yet read.
pub const MAX_UNAUTHENTICATED: usize = 256;
/// A refused stranger is logged in full when none was in the last interval; the ones after it
/// are counted and the count logged once per interval.
pub const REFUSAL_REPORT_EVERY: Duration = Duration::from_secs(5);
/// Upper bound on a client-requested wait, so a bogus request cannot pin a task forever.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// What the launcher learns from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    Joined {
        rank: usize,
        generation: u64,
        peer: SocketAddr,
    },
    Heartbeat {
        rank: usize,
        step: u64,
        phase: Phase,
    },
    Report {
        rank: usize,
        record: serde_json::Value,
    },
    /// A joined worker's connection ended; `reason` says how (closed, I/O error, malformed frame).
    Disconnected {
        rank: usize,
        generation: u64,
        reason: String,
    },
    /// A connection presented a wrong token; it was closed without a reply.
    BadToken {
        peer: SocketAddr,
    },
    /// A connection that never joined: malformed or oversized hello, wrong generation, bad rank,
    /// node 0 or a node already linked, timeout, or closed to make room for newer connections.
    Rejected {
        peer: SocketAddr,
        reason: String,
    },
    /// Node `node`'s launcher linked up (see [`ClientMsg::NodeHello`]).
    NodeJoined {
        node: usize,
        peer: SocketAddr,
    },
    /// What a node launcher reported ([`ClientMsg::NodeReport`]).
    NodeReport {
        node: usize,
        report: NodeReport,
    },
    /// A linked node launcher's connection ended; `reason` says how.
    NodeGone {
        node: usize,
        reason: String,
    },
}

struct Conn {
    id: u64,
    tx: mpsc::UnboundedSender<ServerMsg>,
    close: Arc<Notify>,
}

struct State {
    generation: u64,
    /// Keys of the current generation only: a new generation starts empty, so nothing leaks.
    kv: HashMap<String, String>,
    /// Barrier name → how many times each rank has entered it (so a name can be reused).
    barriers: HashMap<String, Vec<u64>>,
    conns: HashMap<usize, Conn>,
    /// Ranks of the current generation whose connection ended: barriers fail fast on them.
    gone: BTreeSet<usize>,
    /// Node launchers' links by node (≥ 1). A new generation leaves them alone: restart rounds are
    /// commanded over them.
    nodes: HashMap<usize, Conn>,
    next_conn_id: u64,
}

/// Connections that have not shown the token yet, oldest first. Dropping one's sender tells it
/// to give up.
#[derive(Default)]
struct Strangers {
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
    next_id: u64,
}

/// How refusals of strangers are logged: the first in full, the next ones counted.
#[derive(Default)]
struct Refusals {
    /// One was logged in full within the current interval.
    logged: bool,
    /// Refused since then without a line of their own.
    counted: u64,
}

impl Refusals {
    /// Whether this refusal gets a line of its own.
    fn refused(&mut self) -> bool {
        if self.logged {
            self.counted += 1;
            false
        } else {
            self.logged = true;
            true
        }
    }

    /// At the end of an interval: how many to report, if any. A quiet interval lets the next
    /// refusal be logged in full again.
    fn end_interval(&mut self) -> Option<u64> {
        if self.counted == 0 {
            self.logged = false;
            return None;
        }
        Some(std::mem::take(&mut self.counted))
    }
}

struct Shared {
    token: JobToken,
    world_size: usize,
    state: Mutex<State>,
    strangers: Mutex<Strangers>,
    refusals: Mutex<Refusals>,
    changed: Notify,
    events: mpsc::UnboundedSender<ServerEvent>,
}

/// A panic while holding one of our locks leaves consistent data (no multi-step invariants), so a
/// poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Counts a new connection among the strangers until it shows the token, closing the oldest
    /// one when there are [`MAX_UNAUTHENTICATED`].
    fn admit_stranger(self: &Arc<Self>) -> Stranger {
        let (tx, evicted) = oneshot::channel();
        let mut strangers = lock(&self.strangers);
        let id = strangers.next_id;
        strangers.next_id += 1;
        if strangers.queue.len() >= MAX_UNAUTHENTICATED {
            strangers.queue.pop_front();
        }
        strangers.queue.push_back((id, tx));
        Stranger {
            shared: self.clone(),
            id,
            evicted,
        }
    }

    fn emit(&self, e: ServerEvent) {
        // The launcher may have stopped listening during shutdown; that is not an error.
        let _ = self.events.send(e);
    }
}

/// The control server. Dropping it stops accepting and closes every connection.
pub struct ControlServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl ControlServer {
    /// Binds and starts serving on the current tokio runtime. Events arrive on the receiver.
    pub async fn bind(
        addr: SocketAddr,
        token: JobToken,
        world_size: usize,
        generation: u64,
    ) -> Result<(Self, mpsc::UnboundedReceiver<ServerEvent>), CommError> {
        if world_size == 0 {
            return Err(CommError::Invalid("world size must be at least 1".into()));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| CommError::io(format!("listen {addr}"), e))?;
        let local_addr = listener.local_addr().map_err(|e| CommError::io("listener", e))?;
        let (events, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            token,
            world_size,
            state: Mutex::new(State {
                generation,
                kv: HashMap::new(),
                barriers: HashMap::new(),
                conns: HashMap::new(),
                gone: BTreeSet::new(),
                nodes: HashMap::new(),
                next_conn_id: 0,
            }),
            strangers: Mutex::default(),
            refusals: Mutex::default(),
            changed: Notify::new(),
            events,
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        info!(%local_addr, world_size, generation, "control server listening");
        Ok((
            Self {
                shared,
                local_addr,
                accept,
            },
            rx,
        ))
    }

    /// Starts a server on its own thread and runtime; see [`ServerHandle`].
    pub fn spawn_in_thread(
        addr: SocketAddr,
        token: JobToken,
        world_size: usize,
        generation: u64,
    ) -> Result<ServerHandle, CommError> {
        ServerHandle::spawn(addr, token, world_size, generation)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn world_size(&self) -> usize {
        self.shared.world_size
    }

    pub fn generation(&self) -> u64 {
        self.shared.lock().generation
    }

    /// Ranks of the current generation with a live connection, ascending.
    pub fn connected_ranks(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.shared.lock().conns.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Queues `cmd` for `rank`; false when that rank has no live connection.
    pub fn send_command(&self, rank: usize, cmd: ServerCommand) -> bool {
        self.shared
            .lock()
            .conns
            .get(&rank)
            .is_some_and(|c| c.tx.send(ServerMsg::Command(cmd)).is_ok())
    }

    /// Queues `cmd` for every connected rank; returns how many it reached.
    pub fn broadcast_command(&self, cmd: ServerCommand) -> usize {
        self.shared
            .lock()
            .conns
            .values()
            .filter(|c| c.tx.send(ServerMsg::Command(cmd)).is_ok())
            .count()
    }

    /// Queues `cmd` for node `node`'s launcher; false when it is not connected.
    pub fn send_node(&self, node: usize, cmd: NodeCommand) -> bool {
        self.shared
            .lock()
            .nodes
            .get(&node)
            .is_some_and(|c| c.tx.send(ServerMsg::NodeCommand(cmd)).is_ok())
    }

    /// Nodes whose launcher has a live link, ascending.
    pub fn connected_nodes(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.shared.lock().nodes.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Starts restart round `generation`: closes every worker connection of the old round, forgets
    /// its keys and barriers, and admits only joins that name the new generation. Node launchers'
    /// links stay open.
    pub fn new_generation(&self, generation: u64) {
        let mut st = self.shared.lock();
        info!(
            old = st.generation,
            new = generation,
            "control server: new generation"
        );
        st.generation = generation;
        st.kv.clear();
        st.barriers.clear();
        st.gone.clear();
        for (_, c) in st.conns.drain() {
            c.close.notify_one();
        }
        drop(st);
        // Wake waiters of the old round so they answer "generation changed" now.
        self.shared.changed.notify_waiters();
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (JoinSet), so this closes them too.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    let mut report = tokio::time::interval(REFUSAL_REPORT_EVERY);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                // Counted here, not in the task, so tasks not yet polled are within the bound.
                Ok((stream, peer)) => { conns.spawn(serve_conn(stream, peer, shared.clone(), shared.admit_stranger())); }
                // Resource exhaustion (EMFILE) is transient: back off instead of spinning.
                Err(e) => { warn!("control server accept failed: {e}"); tokio::time::sleep(Duration::from_millis(50)).await; }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = report.tick() => {
                if let Some(n) = lock(&shared.refusals).end_interval() {
                    warn!("{n} more control connection(s) refused in the last {REFUSAL_REPORT_EVERY:?}");
                }
            }
        }
    }
}

/// A connection's place among the strangers, given up when dropped (token shown or connection
/// ended).
struct Stranger {
    shared: Arc<Shared>,
    id: u64,
    /// Resolves when newer connections pushed this one out.
    evicted: oneshot::Receiver<()>,
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let mut strangers = lock(&self.shared.strangers);
        if let Some(i) = strangers.queue.iter().position(|(id, _)| *id == self.id) {
            strangers.queue.remove(i);
        }
    }
}

/// Whom an admitted connection speaks for.
#[derive(Debug, Clone, Copy)]
enum Role {
    Worker { rank: usize, generation: u64 },
    Node(usize),
}

/// A connection that passed admission and is registered in the state.
struct Admitted {
    role: Role,
    conn_id: u64,
    tx: mpsc::UnboundedSender<ServerMsg>,
    rx: mpsc::UnboundedReceiver<ServerMsg>,
    close: Arc<Notify>,
}

/// Admission: token, then generation and rank (worker) or node number (node launcher).
async fn admit(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    peer: SocketAddr,
    shared: &Shared,
    mut stranger: Stranger,
) -> Option<Admitted> {
    let peer_s = peer.to_string();
    let hello = tokio::select! {
        hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame_async::<ClientMsg>(rd, MAX_HELLO, &peer_s)) => hello,
        _ = &mut stranger.evicted => {
            reject(shared, peer, format!("no hello before {MAX_UNAUTHENTICATED} newer connections arrived"));
            return None;
        }
    };
    let (token, role) = match hello {
        Ok(Ok(ClientMsg::Hello {
            token,
            generation,
            rank,
        })) => (token, Role::Worker { rank, generation }),
        Ok(Ok(ClientMsg::NodeHello { token, node })) => (token, Role::Node(node)),
        Ok(Ok(other)) => {
            reject(shared, peer, format!("expected hello, got {other:?}"));
            return None;
        }
        Ok(Err(e)) => {
            reject(shared, peer, e.to_string());
            return None;
        }
        Err(_) => {
            reject(shared, peer, "no hello within the handshake timeout".into());
            return None;
        }
    };
    if !hex_decode(&token).is_some_and(|b| shared.token.matches(&b)) {
        // No reply: a stranger learns nothing.
        refuse(shared, ServerEvent::BadToken { peer }, "wrong job token");
        return None;
    }
    drop(stranger);
    // The token is right, so explaining a refusal is safe and saves a confused peer's time.
    let registered = register(&mut shared.lock(), shared.world_size, role);
    let (admitted, generation) = match registered {
        Ok(r) => r,
        Err(reason) => {
            warn!(%peer, ?role, "join refused: {reason}");
            let _ = write_frame_async(
                wr,
                &ServerMsg::Error {
                    id: 0,
                    message: reason.clone(),
                },
                &peer_s,
            )
            .await;
            shared.emit(ServerEvent::Rejected { peer, reason });
            return None;
        }
    };
    let welcome = ServerMsg::Welcome {
        world_size: shared.world_size,
        generation,
    };
    if let Err(e) = write_frame_async(wr, &welcome, &peer_s).await {
        unregister(
            shared,
            role,
            admitted.conn_id,
            &format!("welcome not delivered: {e}"),
        );
        return None;
    }
    shared.emit(match role {
        Role::Worker { rank, generation } => {
            info!(%peer, rank, generation, "worker joined");
            ServerEvent::Joined {
                rank,
                generation,
                peer,
            }
        }
        Role::Node(node) => {
            info!(%peer, node, "node launcher linked");
            ServerEvent::NodeJoined { node, peer }
        }
    });
    Some(admitted)
}

/// Registers an authenticated connection and returns it with the generation to welcome it to, or
/// says why it may not join.
fn register(st: &mut State, world_size: usize, role: Role) -> Result<(Admitted, u64), String> {
    match role {
        Role::Worker { rank, generation } => {
            if generation != st.generation {
                return Err(format!(
                    "generation {generation} is not the current generation {}",
                    st.generation
                ));
            }
            if rank >= world_size {
                return Err(format!("rank {rank} out of range for world size {world_size}"));
            }
            if st.conns.contains_key(&rank) {
                return Err(format!("rank {rank} has already joined generation {generation}"));
            }
        }
        // Node 0 hosts this server, so a link claiming to be it is a misconfigured launcher.
        Role::Node(0) => return Err("node 0 hosts the control server and cannot link to it".into()),
        Role::Node(node) => {
            // Refused rather than replaced: two launchers for one node would both spawn workers.
            if st.nodes.contains_key(&node) {
                return Err(format!("node {node} is already linked"));
            }
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let close = Arc::new(Notify::new());
    let id = st.next_conn_id;
    st.next_conn_id += 1;
    let conn = Conn {
        id,
        tx: tx.clone(),
        close: close.clone(),
    };
    match role {
        Role::Worker { rank, .. } => {
            st.conns.insert(rank, conn);
            st.gone.remove(&rank);
        }
        Role::Node(node) => {
            st.nodes.insert(node, conn);
        }
    }
    let admitted = Admitted {
        role,
        conn_id: id,
        tx,
        rx,
        close,
    };
    Ok((admitted, st.generation))
}

/// A stranger's connection that did not send a usable hello.
fn reject(shared: &Shared, peer: SocketAddr, reason: String) {
    refuse(shared, ServerEvent::Rejected { peer, reason }, "no valid hello");
}

/// Logs (rate-limited) and reports a connection closed before it showed the right token.
fn refuse(shared: &Shared, event: ServerEvent, why: &str) {
    if lock(&shared.refusals).refused() {
        warn!(
            ?event,
            "control connection refused: {why}; more are counted and reported every {REFUSAL_REPORT_EVERY:?}"
        );
    } else {
        debug!(?event, "control connection refused: {why}");
    }
    shared.emit(event);
}

fn unregister(shared: &Shared, role: Role, conn_id: u64, reason: &str) {
    let mut st = shared.lock();
    // Only if this connection is still the registered one (a new generation may have replaced it).
    let remove_own = |conns: &mut HashMap<usize, Conn>, key: usize| {
        if conns.get(&key).is_some_and(|c| c.id == conn_id) {
            conns.remove(&key);
        }
    };
    match role {
        Role::Worker { rank, generation } => {
            remove_own(&mut st.conns, rank);
            if st.generation == generation {
                st.gone.insert(rank);
            }
            drop(st);
            shared.changed.notify_waiters();
            shared.emit(ServerEvent::Disconnected {
                rank,
                generation,
                reason: reason.to_string(),
            });
        }
        Role::Node(node) => {
            remove_own(&mut st.nodes, node);
            drop(st);
            shared.emit(ServerEvent::NodeGone {
                node,
                reason: reason.to_string(),
            });
        }
    }
}

async fn serve_conn(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, stranger: Stranger) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let Some(Admitted {
        role,
        conn_id,
        tx: out_tx,
        rx: mut out_rx,
        close,
    }) = admit(&mut rd, &mut wr, peer, &shared, stranger).await
    else {
        return;
    };

    // Replies and commands share one writer task, so frames never interleave.
    let mut writer = tokio::spawn(async move {
        let peer_s = peer.to_string();
        while let Some(msg) = out_rx.recv().await {
            write_frame_async(&mut wr, &msg, &peer_s).await?;
        }
        Ok::<(), CommError>(())
    });
    // Waiting requests run beside the reader so a long key wait never delays noticing a disconnect.
    let mut waits = JoinSet::new();
    let peer_s = match role {
        Role::Worker { rank, .. } => format!("rank {rank} ({peer})"),
        Role::Node(node) => format!("node {node} ({peer})"),
    };
    let reason = loop {
        tokio::select! {
            msg = read_frame_async::<ClientMsg>(&mut rd, MAX_FRAME, &peer_s) => match msg {
                Ok(m) => {
                    let handled = match role {
                        Role::Worker { rank, generation } => handle(m, rank, generation, &shared, &out_tx, &mut waits),
                        Role::Node(node) => handle_node(m, node, &shared),
                    };
                    if let Err(reason) = handled { break reason }
                }
                Err(CommError::Closed { .. }) => break "connection closed".to_string(),
                Err(e) => break e.to_string(),
            },
            // Only a new generation closes from our side, and it spares node links.
            _ = close.notified() => break "closed by the server (new generation)".to_string(),
            w = &mut writer => break match w {
                Ok(Err(e)) => e.to_string(),
                _ => "writer stopped".to_string(),
            },
            Some(_) = waits.join_next(), if !waits.is_empty() => {}
        }
    };
    writer.abort();
    info!(%peer_s, "disconnected: {reason}");
    unregister(&shared, role, conn_id, &reason);
}

/// Handles one message of a node launcher; `Err` closes the link with that reason.
fn handle_node(msg: ClientMsg, node: usize, shared: &Shared) -> Result<(), String> {
    match msg {
        ClientMsg::NodeReport(report) => {
            shared.emit(ServerEvent::NodeReport { node, report });
            Ok(())
        }
        ClientMsg::Hello { .. } | ClientMsg::NodeHello { .. } => Err("second hello".into()),
        // Node links are outside the generations that key-value, barriers and heartbeats live in.
        _ => Err("a worker's message on a node launcher's link".into()),
    }
}

/// Handles one request; `Err` closes the connection with that reason.
fn handle(
    msg: ClientMsg,
    rank: usize,
    generation: u64,
    shared: &Arc<Shared>,
    out: &mpsc::UnboundedSender<ServerMsg>,
    waits: &mut JoinSet<()>,
) -> Result<(), String> {
    let stale =
        move |st: &State| (st.generation != generation).then(|| format!("generation {generation} has ended"));
    // A failed send means the writer is gone; the reader notices on its next turn.
    let reply = |m: ServerMsg| {
        let _ = out.send(m);
    };
    match msg {
        ClientMsg::Hello { .. } | ClientMsg::NodeHello { .. } => return Err("second hello".into()),
        ClientMsg::NodeReport(_) => return Err("a node launcher's message on a worker's link".into()),
        ClientMsg::Heartbeat { step, phase } => {
            debug!(rank, step, %phase, "heartbeat");
            shared.emit(ServerEvent::Heartbeat { rank, step, phase });
        }
        ClientMsg::Report { record } => shared.emit(ServerEvent::Report { rank, record }),
        ClientMsg::KvSet { id, key, value } => {
            let mut st = shared.lock();
            match stale(&st) {
                Some(m) => reply(ServerMsg::Error { id, message: m }),
                None => {
                    st.kv.insert(key, value);
                    drop(st);
                    shared.changed.notify_waiters();
                    reply(ServerMsg::Ok { id });
                }
            }
        }
        ClientMsg::KvGet { id, key } => {
            let st = shared.lock();
            reply(match stale(&st) {
                Some(m) => ServerMsg::Error { id, message: m },
                None => ServerMsg::Value {
                    id,
                    value: st.kv.get(&key).cloned(),
                },
            });
        }
        ClientMsg::KvWait { id, key, timeout_ms } => {
            let (shared, out) = (shared.clone(), out.clone());
            let timeout = Duration::from_millis(timeout_ms).min(MAX_WAIT);
            waits.spawn(async move {
                let what = format!("key '{key}'");
                let r = wait_until(&shared, timeout, |st| match stale(st) {
                    Some(m) => Some(Err(m)),
                    None => st.kv.get(&key).cloned().map(Ok),
                })
                .await;
                let _ = out.send(match r {
                    Some(Ok(value)) => ServerMsg::Value {
                        id,
                        value: Some(value),
                    },
                    Some(Err(message)) => ServerMsg::Error { id, message },
                    None => ServerMsg::TimedOut { id, what },
                });
            });
        }
        ClientMsg::Barrier { id, name, timeout_ms } => {
            let round = {
                let mut st = shared.lock();
                if let Some(m) = stale(&st) {
                    reply(ServerMsg::Error { id, message: m });
                    return Ok(());
                }
                let counts = st
                    .barriers
                    .entry(name.clone())
                    .or_insert_with(|| vec![0; shared.world_size]);
                counts[rank] += 1;
                counts[rank]
            };
            shared.changed.notify_waiters();
            let (shared, out) = (shared.clone(), out.clone());
            let timeout = Duration::from_millis(timeout_ms).min(MAX_WAIT);
            waits.spawn(async move {
                let r = wait_until(&shared, timeout, |st| {
                    if let Some(m) = stale(st) {
                        return Some(Err(m));
                    }
                    let counts = st.barriers.get(&name)?;
                    let missing: Vec<usize> = (0..counts.len()).filter(|&r| counts[r] < round).collect();
                    if missing.is_empty() {
                        return Some(Ok(()));
                    }
                    let dead: Vec<usize> = missing.iter().copied().filter(|r| st.gone.contains(r)).collect();
                    (!dead.is_empty()).then(|| {
                        Err(format!(
                            "barrier '{name}': rank(s) {dead:?} disconnected before arriving"
                        ))
                    })
                })
                .await;
                let _ = out.send(match r {
                    Some(Ok(())) => ServerMsg::Ok { id },
                    Some(Err(message)) => ServerMsg::Error { id, message },
                    None => {
                        let st = shared.lock();
                        let missing: Vec<usize> = st
                            .barriers
                            .get(&name)
                            .map(|c| (0..c.len()).filter(|&r| c[r] < round).collect())
                            .unwrap_or_default();
                        ServerMsg::TimedOut {
                            id,
                            what: format!("barrier '{name}' (ranks {missing:?} did not arrive)"),
                        }
                    }
                });
            });
        }
    }
    Ok(())
}

/// Re-evaluates `check` on every state change until it yields a value or `timeout` passes (None).
async fn wait_until<T>(
    shared: &Shared,
    timeout: Duration,
    mut check: impl FnMut(&State) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Register interest before checking, so a change between the check and the wait is not lost.
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = check(&shared.lock()) {
            return Some(v);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return None;
        }
    }
}

/// A [`ControlServer`] on its own thread and tokio runtime, for hosts without async code.
/// Derefs to the server; events arrive on a blocking channel. Dropping it stops the server.
pub struct ServerHandle {
    server: ControlServer,
    events: std::sync::mpsc::Receiver<ServerEvent>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    fn spawn(
        addr: SocketAddr,
        token: JobToken,
        world_size: usize,
        generation: u64,
    ) -> Result<Self, CommError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ev_tx, events) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("swinfc-control".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(CommError::io("tokio runtime", e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    match ControlServer::bind(addr, token, world_size, generation).await {
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                        Ok((server, mut rx)) => {
                            let _ = ready_tx.send(Ok(server));
                            let forward = async {
                                while let Some(e) = rx.recv().await {
                                    if ev_tx.send(e).is_err() {
                                        break;
                                    }
                                }
                            };
                            tokio::select! { _ = stop_rx => {}, _ = forward => {} }
                        }
                    }
                });
            })
            .map_err(|e| CommError::io("control server thread", e))?;
        let server = ready_rx
            .recv()
            .map_err(|_| CommError::Invalid("control server thread died while starting".into()))??;
        Ok(Self {
            server,
            events,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Blocking receiver of server events.
    pub fn events(&self) -> &std::sync::mpsc::Receiver<ServerEvent> {
        &self.events
    }
}

impl std::ops::Deref for ServerHandle {
    type Target = ControlServer;
    fn deref(&self) -> &ControlServer {
        &self.server
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
