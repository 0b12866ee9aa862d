//! Runs `comm-peer` processes against an in-process control server.
#![allow(dead_code)] // each test file uses a different subset

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use swinfc_comm::{ControlServer, JobToken, ServerEvent, ServerHandle, WorkerIdentity};

pub struct Job {
    pub server: ServerHandle,
    pub token: JobToken,
    pub children: Vec<Child>,
    pub events: Vec<ServerEvent>,
}

pub fn identity(
    server: &ServerHandle,
    token: &JobToken,
    rank: usize,
    world: usize,
    generation: u64,
) -> WorkerIdentity {
    WorkerIdentity {
        rank,
        local_rank: rank,
        world_size: world,
        master_addr: "127.0.0.1".into(),
        master_port: server.local_addr().port(),
        job_token: token.to_hex(),
        restart_round: generation,
    }
}

pub fn server(world: usize) -> (ServerHandle, JobToken) {
    let token = JobToken::generate().unwrap();
    let server =
        ControlServer::spawn_in_thread("127.0.0.1:0".parse().unwrap(), token.clone(), world, 0).unwrap();
    (server, token)
}

impl Job {
    /// Starts `world` peers running `args`, with extra environment `env`.
    pub fn start(world: usize, args: &[&str], env: &[(&str, &str)]) -> Job {
        let (server, token) = server(world);
        let children = (0..world)
            .map(|rank| {
                let mut c = Command::new(env!("CARGO_BIN_EXE_comm-peer"));
                c.args(args)
                    .envs(identity(&server, &token, rank, world, 0).to_env())
                    .envs(env.iter().copied());
                c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
            })
            .collect();
        Job {
            server,
            token,
            children,
            events: Vec::new(),
        }
    }

    /// Collects events until `pred` holds for the events so far or `timeout` passes.
    pub fn events_until(&mut self, timeout: Duration, pred: impl Fn(&[ServerEvent]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !pred(&self.events) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Ok(e) = self
                .server
                .events()
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                self.events.push(e);
            }
        }
        true
    }

    /// Waits for every process (killing all at `timeout`); returns each exit status and stderr.
    pub fn wait(&mut self, timeout: Duration) -> Vec<(Option<ExitStatus>, String)> {
        let deadline = Instant::now() + timeout;
        let mut out: Vec<Option<ExitStatus>> = vec![None; self.children.len()];
        while out.iter().any(Option::is_none) && Instant::now() < deadline {
            for (i, c) in self.children.iter_mut().enumerate() {
                if out[i].is_none() {
                    out[i] = c.try_wait().unwrap();
                }
            }
            while let Ok(e) = self.server.events().try_recv() {
                self.events.push(e);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        while let Ok(e) = self.server.events().try_recv() {
            self.events.push(e);
        }
        self.children
            .iter_mut()
            .zip(out)
            .map(|(c, st)| {
                if st.is_none() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                (st, err)
            })
            .collect()
    }

    pub fn reports(&self) -> Vec<(usize, serde_json::Value)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Report { rank, record } => Some((*rank, record.clone())),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Panics with every rank's stderr unless all exited 0.
pub fn assert_all_ok(results: &[(Option<ExitStatus>, String)]) {
    for (rank, (st, err)) in results.iter().enumerate() {
        assert!(st.is_some_and(|s| s.success()), "rank {rank}: {st:?}\n{err}");
    }
}
