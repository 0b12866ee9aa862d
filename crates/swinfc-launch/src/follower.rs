//! A launcher on node 1..N: joins node 0 over the node link, runs this node's workers for each
//! round node 0 starts, reports their exits and its signals, and exits as node 0 says.

use std::sync::Arc;
use std::time::{Duration, Instant};

use swinfc_comm::{JobOutcome, NodeClient, NodeCommand, NodeReport};
use tracing::{info, warn};

use crate::console::Console;
use crate::signals;
use crate::workers::{Group, Round, describe};
use crate::{LaunchError, LaunchOptions, Outcome, Plan};

const POLL: Duration = Duration::from_millis(50);

pub fn run(plan: &Plan, opts: &LaunchOptions) -> Result<Outcome, LaunchError> {
    let mut link = join(plan, opts)?;
    info!(node = plan.node_rank, master = %opts.master_addr, "joined node 0");
    let signals = signals::listen()?;
    let console = Arc::new(Console::new(
        plan.cfg.train.total_steps,
        plan.cfg.train.global_batch,
        plan.cfg.metrics.log_every,
        opts.rank0_detail,
    ));
    let mut group: Option<Group> = None;
    let result = loop {
        let command = match link.recv_timeout(POLL) {
            Ok(c) => c,
            Err(e) => break Err(LaunchError::Failed(format!("lost node 0: {e}"))),
        };
        if let Some(cmd) = command {
            match cmd {
                NodeCommand::Start {
                    generation,
                    attempt,
                    resume,
                    master_port,
                } => {
                    let token = crate::nodes::follower_token(plan)?
                        .ok_or_else(|| LaunchError::Failed("the job token disappeared".into()))?;
                    let round = Round {
                        generation,
                        attempt,
                        resume: &resume,
                        master_addr: &opts.master_addr,
                        master_port,
                        token_hex: &token.to_hex(),
                    };
                    if let Some(old) = group.take() {
                        old.stop(opts.grace_period);
                    }
                    group = Some(Group::spawn(plan, opts, &round, &console)?);
                }
                NodeCommand::Stop => {
                    if let Some(old) = group.take() {
                        old.stop(opts.grace_period);
                    }
                    link.send(NodeReport::Stopped)?;
                }
                NodeCommand::Exit { outcome, reason } => {
                    break match outcome {
                        JobOutcome::Finished => Ok(Outcome::Finished),
                        JobOutcome::Preempted => Ok(Outcome::Preempted),
                        JobOutcome::Failed => Err(LaunchError::Failed(format!("node 0: {reason}"))),
                    };
                }
            }
        }
        if let Some(g) = group.as_mut() {
            for (rank, status) in g.poll_exits() {
                link.send(NodeReport::Exit {
                    rank,
                    ok: status.success(),
                    cause: describe(status),
                })?;
            }
        }
        while let Ok(signal) = signals.try_recv() {
            link.send(NodeReport::Signal { signal })?;
        }
    };
    if let Some(g) = group {
        g.stop(opts.grace_period);
    }
    console.finish();
    result
}

/// Connects to node 0, retrying while it is not up yet or its token file is not written.
fn join(plan: &Plan, opts: &LaunchOptions) -> Result<NodeClient, LaunchError> {
    let deadline = Instant::now() + opts.setup_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = match crate::nodes::follower_token(plan)? {
            Some(token) => NodeClient::connect(
                &opts.master_addr,
                opts.master_port,
                &token,
                plan.node_rank,
                left.min(Duration::from_secs(10)),
            )
            .map_err(LaunchError::from),
            None => Err(LaunchError::Failed(
                "no job token yet (SWINFC_JOB_TOKEN or the run directory's job-token)".into(),
            )),
        };
        match attempt {
            Ok(link) => return Ok(link),
            Err(e) if Instant::now() < deadline => {
                warn!(error = %e, "cannot join node 0 yet; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(LaunchError::Failed(format!(
                    "cannot join node 0 at {}:{}: {e}",
                    opts.master_addr, opts.master_port
                )));
            }
        }
    }
}
