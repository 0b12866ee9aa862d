//! This node's worker processes for one restart round: spawning them with their identity, their
//! logs, their death tied to the launcher's, and stopping them (SIGTERM, grace, SIGKILL).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swinfc_comm::WorkerIdentity;
use swinfc_train::{Resume, RunDir};
use tracing::warn;

use crate::console::Console;
use crate::{Devices, LaunchError, LaunchOptions, Plan};

/// One restart round as this node's workers see it.
pub struct Round<'a> {
    pub generation: u64,
    pub attempt: u64,
    /// `--resume` for the workers.
    pub resume: &'a Resume,
    pub master_addr: &'a str,
    pub master_port: u16,
    pub token_hex: &'a str,
}

struct Worker {
    rank: usize,
    child: Child,
    exit: Option<ExitStatus>,
}

/// The running workers of this node.
pub struct Group {
    workers: Vec<Worker>,
    pumps: Vec<std::thread::JoinHandle<()>>,
}

impl Group {
    pub fn spawn(
        plan: &Plan,
        opts: &LaunchOptions,
        round: &Round,
        console: &Arc<Console>,
    ) -> Result<Group, LaunchError> {
        let logs = plan.run_dir().attempt_logs(round.attempt);
        std::fs::create_dir_all(&logs).map_err(LaunchError::io(&logs))?;
        let mut group = Group {
            workers: Vec::new(),
            pumps: Vec::new(),
        };
        for (local_rank, rank) in plan.local_ranks().enumerate() {
            let identity = WorkerIdentity {
                rank,
                local_rank,
                world_size: plan.world_size(),
                master_addr: round.master_addr.to_string(),
                master_port: round.master_port,
                job_token: round.token_hex.to_string(),
                restart_round: round.generation,
            };
            let mut cmd = Command::new(&opts.worker_bin);
            cmd.arg("worker").arg(&opts.config);
            for o in &opts.overrides {
                cmd.arg("--set").arg(o);
            }
            cmd.arg("--resume").arg(round.resume.to_string());
            cmd.envs(identity.to_env()).env("NO_COLOR", "1");
            match &plan.devices {
                Devices::Gpus(_) => {
                    cmd.env("CUDA_VISIBLE_DEVICES", &plan.worker_gpus[local_rank]);
                }
                Devices::Cpu(_) => {
                    let threads = plan.threads_per_worker.to_string();
                    // A CUDA build would otherwise put CPU workers on a visible GPU.
                    cmd.env("RAYON_NUM_THREADS", &threads)
                        .env("OMP_NUM_THREADS", &threads)
                        .env("CUDA_VISIBLE_DEVICES", "");
                }
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // Its own process group keeps terminal signals away from the worker, so only the
            // launcher decides; the death signal takes it down with the launcher, whatever
            // killed the launcher.
            cmd.process_group(0);
            let launcher = std::process::id() as libc::pid_t;
            // SAFETY: prctl, getppid and _exit are async-signal-safe; nothing allocates.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The launcher may have died between fork and prctl.
                    if libc::getppid() != launcher {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
            let mut child = cmd
                .spawn()
                .map_err(LaunchError::os(format!("starting {}", opts.worker_bin.display())))?;
            let log_path = logs.join(format!("rank-{rank}.log"));
            let log = Arc::new(Mutex::new(
                File::create(&log_path).map_err(LaunchError::io(&log_path))?,
            ));
            let stdout = child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
            let stderr = child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
            for stream in [stdout, stderr].into_iter().flatten() {
                group
                    .pumps
                    .push(pump(stream, rank, log.clone(), console.clone(), log_path.clone()));
            }
            group.workers.push(Worker {
                rank,
                child,
                exit: None,
            });
        }
        Ok(group)
    }

    /// Workers that exited since the last call, with their status.
    pub fn poll_exits(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut exited = Vec::new();
        for w in self.workers.iter_mut().filter(|w| w.exit.is_none()) {
            if let Ok(Some(status)) = w.child.try_wait() {
                w.exit = Some(status);
                exited.push((w.rank, status));
            }
        }
        exited
    }

    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        self.workers.iter().filter(|w| w.exit.is_none()).map(|w| w.rank)
    }

    /// Whether `rank`'s process is stopped (SIGSTOP, a debugger): the likeliest cause of a hang.
    pub fn is_suspended(&self, rank: usize) -> bool {
        self.workers
            .iter()
            .find(|w| w.rank == rank && w.exit.is_none())
            .and_then(|w| std::fs::read_to_string(format!("/proc/{}/stat", w.child.id())).ok())
            // The state follows the parenthesised command name, which may itself hold spaces.
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('T'))
            })
            .unwrap_or(false)
    }

    /// SIGTERM to every running worker's process group, up to `grace` for them to exit, then
    /// SIGKILL; returns once every worker is reaped and its log flushed.
    pub fn stop(mut self, grace: Duration) {
        self.signal_all(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.running().next().is_some() && Instant::now() < deadline {
            self.poll_exits();
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.running().next().is_some() {
            self.signal_all(libc::SIGKILL);
        }
        self.reap();
    }

    /// Waits for every worker (all have exited or were killed) and for their logs.
    pub fn reap(mut self) {
        for w in &mut self.workers {
            if w.exit.is_none() {
                w.exit = w.child.wait().ok();
            }
        }
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
    }

    fn signal_all(&self, signal: libc::c_int) {
        for w in self.workers.iter().filter(|w| w.exit.is_none()) {
            // SAFETY: kill has no memory-safety preconditions; the group id is the worker's pid.
            unsafe { libc::kill(-(w.child.id() as libc::pid_t), signal) };
        }
    }
}

/// How a worker ended, in words.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Copies a worker's output, line by line, to its log file and the console.
fn pump(
    stream: Box<dyn Read + Send>,
    rank: usize,
    log: Arc<Mutex<File>>,
    console: Arc<Console>,
    log_path: PathBuf,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        let mut warned = false;
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            let written = log
                .lock()
                .map_err(|_| std::io::Error::other("log lock poisoned"))
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = written
                && !warned
            {
                warned = true;
                warn!(rank, path = %log_path.display(), error = %e, "cannot write the worker log");
            }
            console.worker_line(rank, line);
        }
    })
}

/// The next attempt number: one more than any attempt whose logs exist, so requeued jobs count on.
pub fn next_attempt(run_dir: &RunDir) -> u64 {
    let last = std::fs::read_dir(run_dir.logs())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("attempt-")?
                .parse::<u64>()
                .ok()
        })
        .max();
    last.map_or(1, |a| a + 1)
}
