//! Node 0's launcher: hosts the control server, runs restart rounds and drives the state machine
//! of operations.md: STARTING → RUNNING → (DRAINING →) EXITING, or RESTARTING from the latest
//! valid checkpoint after a worker crash or hang.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use swinfc_comm::{
    ControlServer, JobOutcome, JobToken, NodeReport, Phase, ServerCommand, ServerEvent, ServerHandle,
};
use swinfc_metrics::record::Record;
use swinfc_metrics::{RestartReason, RunInfo, RunState, Telemetry};
use swinfc_train::Resume;
use swinfc_train::checkpoint::verify;
use tracing::{error, info, warn};

use crate::console::Console;
use crate::drain::Drain;
use crate::hang::HangDetector;
use crate::nodes::Nodes;
use crate::signals::{self, Signal};
use crate::summary::{Launched, Requeued};
use crate::workers::{Group, Round, describe, next_attempt};
use crate::{EXIT_PERMANENT, LaunchError, LaunchOptions, Outcome, Plan};

/// How often exits, signals and deadlines are checked: a crash is noticed within this.
const POLL: Duration = Duration::from_millis(50);

/// Why a round ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Crash,
    Hang,
    /// The worker exited with [`EXIT_PERMANENT`]: its error would recur on a restart.
    Permanent,
}

impl FailureKind {
    fn reason(self) -> RestartReason {
        match self {
            FailureKind::Crash | FailureKind::Permanent => RestartReason::Crash,
            FailureKind::Hang => RestartReason::Hang,
        }
    }
}

#[derive(Debug)]
struct Failure {
    rank: usize,
    kind: FailureKind,
    cause: String,
    detected: Instant,
}

impl Failure {
    fn new(rank: usize, kind: FailureKind, cause: String) -> Failure {
        Failure {
            rank,
            kind,
            cause,
            detected: Instant::now(),
        }
    }
}

enum End {
    Finished,
    Drained,
    Failed(Failure),
}

struct Supervisor<'a> {
    plan: &'a Plan,
    opts: &'a LaunchOptions,
    server: ServerHandle,
    signals: Receiver<Signal>,
    console: Arc<Console>,
    nodes: Nodes,
    telemetry: Telemetry,
    /// The last state told to the telemetry, so each change is one event.
    state: RunState,
    /// Since when the job has been recovering from a failure (until the next step report).
    recovering: Option<(RestartReason, Instant)>,
    drain: Option<Drain>,
    /// The step the first round started from.
    first_step: Option<u64>,
    /// Highest step any rank reported completing, over the whole job.
    max_step: u64,
    /// Highest step completed in the current round (a restarted round starts below `max_step`).
    round_step: u64,
    /// The newest checkpoint rank 0 reported committed in this job.
    committed: Option<u64>,
}

pub fn run(plan: &Plan, opts: &LaunchOptions) -> Result<Outcome, LaunchError> {
    plan.persist_run_id()?;
    let token = crate::nodes::leader_token(plan)?;
    let host = if plan.nnodes > 1 { "0.0.0.0" } else { "127.0.0.1" };
    let addr: SocketAddr = format!("{host}:{}", opts.master_port)
        .parse()
        .map_err(|_| LaunchError::Usage(format!("--master-port {}", opts.master_port)))?;
    let server = ControlServer::spawn_in_thread(addr, token.clone(), plan.world_size(), 0).map_err(|e| {
        LaunchError::Failed(format!(
            "control server: cannot listen on {addr}: {e} (is another job using this port? choose --master-port)"
        ))
    })?;
    let port = server.local_addr().port();
    info!(%addr, port, "control server up");
    let started = Instant::now();
    let console = Arc::new(Console::new(
        plan.cfg.train.total_steps,
        plan.cfg.train.global_batch,
        plan.cfg.metrics.log_every,
        opts.rank0_detail,
    ));
    let telemetry = Telemetry::start(&plan.cfg.metrics.listen, plan.run_dir().root(), run_info(plan))
        .map_err(|e| {
            LaunchError::Failed(format!(
                "{e} (another run on this node? set metrics.listen; port 0 picks a free one)"
            ))
        })?;
    console.line(&format!("metrics: http://{}/metrics", telemetry.addr()));
    let mut sup = Supervisor {
        plan,
        opts,
        server,
        signals: signals::listen()?,
        console,
        nodes: Nodes::new(plan.nnodes),
        telemetry,
        state: RunState::Starting,
        recovering: None,
        drain: None,
        first_step: None,
        max_step: 0,
        round_step: 0,
        committed: None,
    };
    let result = sup.run_rounds(&token, port);
    sup.console.finish();
    crate::nodes::forget_token(plan);
    let mut requeued = None;
    let (outcome, state, reason) = match &result {
        Ok(Outcome::Preempted) => {
            let (reason, requeue) = sup.preempted();
            requeued = requeue;
            (JobOutcome::Preempted, RunState::Preempted, reason)
        }
        Ok(_) => (
            JobOutcome::Finished,
            RunState::Finished,
            "finished: all steps done".to_string(),
        ),
        Err(e) => (JobOutcome::Failed, RunState::Failed, format!("failed: {e}")),
    };
    sup.nodes.exit(&sup.server, outcome, &reason);
    sup.set_state(state);
    sup.linger();
    let Supervisor {
        telemetry,
        first_step,
        max_step,
        committed,
        ..
    } = sup;
    telemetry.finish(state, &reason);
    if let Ok(outcome @ (Outcome::Finished | Outcome::Preempted)) = &result {
        let launched = Launched {
            from_step: first_step.unwrap_or(0),
            to_step: max_step,
            wall: started.elapsed(),
            preempted: *outcome == Outcome::Preempted,
            checkpoint: committed,
            requeued,
        };
        let history = crate::summary::launched_history(&plan.cfg);
        eprint!(
            "{}",
            crate::summary::render(&plan.cfg, &opts.worker_bin, &launched, &history)
        );
    }
    result
}

impl Supervisor<'_> {
    fn run_rounds(&mut self, token: &JobToken, port: u16) -> Result<Outcome, LaunchError> {
        let early = self.nodes.wait_joined(&self.server, self.opts.setup_timeout)?;
        self.unwatched(early);
        let master_addr = if self.plan.nnodes > 1 {
            self.opts.master_addr.clone()
        } else {
            "127.0.0.1".into()
        };
        let token_hex = token.to_hex();
        let mut resume = self.opts.resume.clone();
        let mut generation = 0;
        let mut restarts = 0;
        loop {
            let (start_step, from) = self.plan.resume_point(&resume)?;
            let round = Round {
                generation,
                attempt: next_attempt(self.plan.run_dir()),
                resume: &resume,
                master_addr: &master_addr,
                master_port: port,
                token_hex: &token_hex,
            };
            info!(generation, attempt = round.attempt, resume = %from, "starting workers");
            self.console.restart_at(start_step);
            self.first_step.get_or_insert(start_step);
            self.max_step = self.max_step.max(start_step);
            self.round_step = start_step;
            self.nodes.start(&self.server, &round);
            self.telemetry.set_attempt(round.attempt);
            let group = Group::spawn(self.plan, self.opts, &round, &self.console)?;
            self.set_state(RunState::Running);
            match self.watch(group, start_step) {
                End::Finished => return Ok(Outcome::Finished),
                End::Drained => return Ok(Outcome::Preempted),
                End::Failed(failure) => {
                    error!(rank = failure.rank, kind = ?failure.kind, cause = %failure.cause, "worker failed");
                    if self.drain.is_some() {
                        warn!("a worker failed while draining: the previous checkpoint stands");
                        return Ok(Outcome::Preempted);
                    }
                    if failure.kind == FailureKind::Permanent {
                        return Err(LaunchError::Failed(format!(
                            "rank {} stopped on an error that a restart cannot fix (its error line \
                             is above); not restarting",
                            failure.rank
                        )));
                    }
                    restarts += 1;
                    if restarts > self.opts.max_restarts {
                        return Err(LaunchError::Failed(format!(
                            "rank {} {}; giving up after {} restart(s) (--max-restarts {})",
                            failure.rank,
                            failure.cause,
                            restarts - 1,
                            self.opts.max_restarts
                        )));
                    }
                    // A signal that came while the round was being stopped: nothing is running,
                    // so the newest checkpoint already is where the job stands.
                    while let Ok(signal) = self.signals.try_recv() {
                        self.on_signal(signal);
                    }
                    if self.drain.is_some() {
                        return Ok(Outcome::Preempted);
                    }
                    generation += 1;
                    self.server.new_generation(generation);
                    resume = self.restart_point();
                    let (from_step, _) = self.plan.resume_point(&resume)?;
                    let replayed = self.max_step.saturating_sub(from_step);
                    let detail = format!("rank {} {}", failure.rank, failure.cause);
                    self.telemetry.restart(failure.kind.reason(), &detail, replayed);
                    self.recovering = Some((failure.kind.reason(), failure.detected));
                    info!(
                        restart = restarts,
                        generation,
                        from_step,
                        replayed_steps = replayed,
                        "restarting the round from the latest valid checkpoint"
                    );
                }
            }
        }
    }

    /// Watches one round until it finishes, drains, or a worker fails (then it is stopped).
    fn watch(&mut self, mut group: Group, start_step: u64) -> End {
        let mut hang = HangDetector::new(
            self.plan.world_size(),
            start_step,
            self.opts.setup_timeout,
            self.opts.step_timeout,
            Instant::now(),
        );
        loop {
            for (rank, status) in group.poll_exits() {
                self.telemetry.worker_up(rank, false);
                if status.success() {
                    hang.done(rank);
                } else {
                    let kind = if status.code() == Some(EXIT_PERMANENT) {
                        FailureKind::Permanent
                    } else {
                        FailureKind::Crash
                    };
                    return self.fail(group, Failure::new(rank, kind, describe(status)));
                }
            }
            if hang.all_done() {
                group.reap();
                let preempted = self.drain.is_some() && self.round_step < self.plan.cfg.train.total_steps;
                return if preempted { End::Drained } else { End::Finished };
            }
            match self.server.events().recv_timeout(POLL) {
                Ok(event) => {
                    if let Err(failure) = self.on_event(event, Some(&mut hang)) {
                        return self.fail(group, failure);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let failure = Failure::new(0, FailureKind::Crash, "control server stopped".into());
                    return self.fail(group, failure);
                }
            }
            while let Ok(signal) = self.signals.try_recv() {
                self.on_signal(signal);
            }
            self.record_signal(false);
            if let Some(drain) = &self.drain
                && drain.expired(Instant::now())
            {
                warn!(
                    stop_after = drain.stop_after(),
                    "the drain did not finish in time: stopping the workers; the previous checkpoint stands"
                );
                let late = self.nodes.stop(&self.server, self.opts.grace_period);
                self.unwatched(late);
                group.stop(Duration::ZERO);
                return End::Drained;
            }
            if let Some(h) = hang.check(Instant::now(), |rank| group.is_suspended(rank)) {
                return self.fail(group, Failure::new(h.rank, FailureKind::Hang, h.cause));
            }
        }
    }

    /// One event of the control server; `hang` is the watched round's detector, if any.
    fn on_event(&mut self, event: ServerEvent, mut hang: Option<&mut HangDetector>) -> Result<(), Failure> {
        match event {
            ServerEvent::Joined { rank, .. } => {
                self.telemetry.worker_up(rank, true);
                if let Some(drain) = &self.drain {
                    self.server
                        .send_command(rank, ServerCommand::StopAfterStep(drain.stop_after()));
                }
            }
            ServerEvent::Heartbeat { rank, step, phase } => {
                if let Some(hang) = hang {
                    hang.heartbeat(rank, step, phase, Instant::now());
                    if rank == 0 {
                        self.set_state(match phase {
                            Phase::Train => RunState::Running,
                            Phase::Eval => RunState::Evaluating,
                            Phase::Finishing => RunState::Checkpointing,
                        });
                    }
                }
            }
            ServerEvent::Report { rank, record } => {
                if let Some(hang) = hang.as_deref_mut() {
                    hang.alive(rank, Instant::now());
                }
                match self.telemetry.report(rank, &record) {
                    Some(Record::Step(record)) => {
                        self.max_step = self.max_step.max(record.step);
                        self.round_step = self.round_step.max(record.step);
                        if let Some((reason, since)) = self.recovering.take() {
                            self.telemetry.recovered(reason, since.elapsed().as_secs_f64());
                        }
                        if rank == 0 {
                            if let Some(hang) = hang {
                                hang.step_time(record.seconds);
                            }
                            self.console.step(&record);
                        }
                    }
                    Some(Record::Eval(record)) if rank == 0 => self.console.eval(&record.result),
                    Some(Record::Checkpoint(record)) if rank == 0 => {
                        self.console
                            .checkpoint(&record, &self.plan.run_dir().checkpoint(record.step));
                        if record.ok {
                            self.committed = Some(record.step);
                        }
                    }
                    _ => {}
                }
            }
            ServerEvent::Disconnected { rank, .. } => self.telemetry.worker_up(rank, false),
            // The control server logs these itself, a flood of them rate-limited: once is enough.
            ServerEvent::BadToken { .. } | ServerEvent::Rejected { .. } => {}
            ServerEvent::NodeReport { node, report } => match report {
                NodeReport::Exit { rank, ok: true, .. } => {
                    if let Some(hang) = hang {
                        hang.done(rank);
                    }
                }
                NodeReport::Exit { rank, cause, .. } => {
                    return Err(Failure::new(
                        rank,
                        FailureKind::Crash,
                        format!("(node {node}) {cause}"),
                    ));
                }
                // Another node's signal is the same scheduler event as one here (a USR1 still
                // asks for the requeue); anything else drains like a worker's request.
                NodeReport::Signal { signal } => self.on_signal(if signal == Signal::Usr1 {
                    Signal::Usr1
                } else {
                    Signal::WorkerAsked
                }),
                NodeReport::Stopped => {}
            },
            ServerEvent::NodeJoined { node, .. } => {
                warn!(node, "a node joined mid-round; it waits for the next round")
            }
            ServerEvent::NodeGone { node, reason } => {
                let rank = node * self.plan.local_workers();
                return Err(Failure::new(
                    rank,
                    FailureKind::Crash,
                    format!("node {node}'s launcher is gone: {reason}"),
                ));
            }
        }
        Ok(())
    }

    /// First signal: every rank stops after a common step and rank 0 saves. A second one
    /// shortens the deadline; a third stops at once. Never a second checkpoint. Copies of one
    /// scheduler event are one `signal` line in the event log.
    fn on_signal(&mut self, signal: Signal) {
        let now = Instant::now();
        match &mut self.drain {
            None => {
                let stop_after = crate::drain::stop_step(self.round_step);
                info!(
                    signal = signal.name(),
                    stop_after, "draining: every worker stops after this step, rank 0 saves, then exit"
                );
                self.server
                    .broadcast_command(ServerCommand::StopAfterStep(stop_after));
                self.drain = Some(Drain::start(signal, stop_after, now, self.opts.grace_period));
                self.record_signal(false);
                self.set_state(RunState::Draining);
            }
            Some(drain) => {
                if let Some(count) = drain.another(signal, now) {
                    self.telemetry.signal(signal.name());
                    warn!(
                        signal = signal.name(),
                        count, "signal while draining: deadline shortened"
                    );
                }
                self.record_signal(false);
            }
        }
    }

    /// Writes the signal that started the drain to the event log once it is known which
    /// (see [`Drain::take_unrecorded`]); `ended`: now at the latest.
    fn record_signal(&mut self, ended: bool) {
        let now = Instant::now();
        if let Some(signal) = self.drain.as_mut().and_then(|d| d.take_unrecorded(now, ended)) {
            self.telemetry.signal(signal.name());
        }
    }

    /// Stops the round everywhere after a failure.
    fn fail(&mut self, group: Group, failure: Failure) -> End {
        self.console.line(&format!(
            "rank {} {}: stopping the round",
            failure.rank, failure.cause
        ));
        self.set_state(RunState::Restarting);
        self.server.broadcast_command(ServerCommand::Abort);
        let late = self.nodes.stop(&self.server, self.opts.grace_period);
        self.unwatched(late);
        group.stop(self.opts.grace_period);
        End::Failed(failure)
    }

    /// Events read while no round was being watched (waiting for the other nodes to join or to
    /// stop): their reports, checkpoints and signals still count, but a failure they announce
    /// has nothing left to stop.
    fn unwatched(&mut self, events: Vec<ServerEvent>) {
        for event in events {
            let _ = self.on_event(event, None);
        }
    }

    /// The checkpoint a new round starts from: the newest this job committed, if it verifies,
    /// else what the user asked for (`auto` then finds the newest valid one).
    fn restart_point(&self) -> Resume {
        if let Some(step) = self.committed {
            let dir = self.plan.run_dir().checkpoint(step);
            if verify(&dir).is_ok() {
                return Resume::Path(dir);
            }
            return Resume::Auto;
        }
        self.opts.resume.clone()
    }

    /// Keeps `/metrics` up after the end (`--metrics-linger`) so Prometheus scrapes the final
    /// values; a signal ends the wait.
    fn linger(&self) {
        let deadline = Instant::now() + self.opts.metrics_linger;
        while Instant::now() < deadline {
            if self.signals.recv_timeout(POLL).is_ok() {
                break;
            }
        }
    }

    /// One event per change; a drain is not interrupted by rank 0's eval or step heartbeats.
    fn set_state(&mut self, state: RunState) {
        let draining = self.drain.is_some() && state != RunState::Restarting;
        if state != self.state && !(draining && self.state == RunState::Draining) {
            self.state = state;
            self.telemetry.set_state(state);
        }
    }

    /// The job drained: says where it stands and, when Slurm's time-limit warning started the
    /// drain, puts the job back in the queue. Returns the `end` line's reason and the requeue.
    fn preempted(&mut self) -> (String, Option<Requeued>) {
        self.record_signal(true);
        let step = self.round_step;
        let after = self
            .drain
            .as_ref()
            .map_or(String::new(), |d| format!(" after {}", d.signal().name()));
        let (mut reason, resumes_from) = match self.committed {
            Some(saved) if saved == step => {
                info!(
                    step,
                    "drained: every worker stopped after this step and rank 0 saved it"
                );
                let dir = self.plan.run_dir().checkpoint(saved);
                (
                    format!("preempted: drained at step {step}{after}"),
                    dir.display().to_string(),
                )
            }
            // The drain ran out of time or a worker failed while draining (logged above).
            saved => {
                let from = match saved.or(self.first_step.filter(|&s| s > 0)) {
                    Some(from) => format!("the checkpoint at step {from}"),
                    None => "the start (no checkpoint yet)".to_string(),
                };
                (
                    format!("preempted: stopped at step {step}{after} without a checkpoint there"),
                    from,
                )
            }
        };
        let asked = self.drain.as_ref().is_some_and(Drain::requeue);
        let Some(job) = self.opts.slurm_requeue_id.as_ref().filter(|_| asked) else {
            reason.push_str(", resume with --resume auto");
            return (reason, None);
        };
        let result = crate::requeue::requeue(job);
        self.telemetry
            .requeue(job, result.as_ref().map(|_| ()).map_err(String::as_str));
        match &result {
            Ok(()) => {
                info!(job = %job, "requeued: the job resumes from {resumes_from} when Slurm starts it again");
                reason.push_str(&format!("; requeued as Slurm job {job}"));
            }
            // Submitted with --no-requeue, or a cluster with JobRequeue=0: nothing is lost, but
            // nothing will resume the run either unless someone submits it again.
            Err(why) => {
                warn!(
                    job = %job,
                    "Slurm did not requeue the job: {why}. Nothing is lost: submit the job again \
                     and it resumes from {resumes_from} (--resume auto)"
                );
                reason.push_str(&format!(
                    "; Slurm did not requeue job {job} ({why}), submit it again to resume"
                ));
            }
        }
        let requeued = Requeued {
            job: job.clone(),
            refused: result.err(),
        };
        (reason, Some(requeued))
    }
}

fn run_info(plan: &Plan) -> RunInfo {
    let m = &plan.cfg.model;
    RunInfo {
        run_id: plan.run_id.clone(),
        experiment: plan.experiment.clone(),
        model: format!("swinfc-e{}-{}px", m.embed_dim, m.img_size),
        dataset: plan.cfg.data.dataset.name().to_string(),
        world_size: plan.world_size(),
        target_steps: plan.cfg.train.total_steps,
        log_every: plan.cfg.metrics.log_every,
        loss_weights: plan.cfg.loss.betas.map(f64::from),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}
