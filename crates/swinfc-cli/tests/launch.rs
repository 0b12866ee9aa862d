//! `swinfc-launch` with real worker processes on CPU: a full run, a killed worker, a stopped
//! (hung) worker, preemption by SIGTERM and resume, a SIGKILLed launcher leaving no worker, two
//! nodes on loopback, a wrong token, a busy port and exhausted restarts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// 4 classes, tiny model; 24 steps with a checkpoint every 4 so faults land mid-run.
const CONFIG: &str = "
run: {name: launch, dir: RUN_DIR, seed: 11}
model: {preset: tiny, img_size: 32, embed_dim: 16, branch_dim: 32, ea_memory: 4, num_classes: 4}
data: {dataset: synthetic, classes: 4, train_per_class: 8, test_per_class: 2, img_size: 36, resize: 36, crop: 32, num_threads: 1}
train: {global_batch: 8, micro_batch: 4, total_steps: 24, warmup_steps: 2, lr_backbone: 0.01, lr_new: 0.05, grad_clip: 1.0}
eval: {every_steps: 12}
checkpoint: {every_steps: 4, keep_last: 3}
metrics: {log_every: 4, listen: '127.0.0.1:0'}
";

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        let dir = tempfile::tempdir().unwrap();
        let text = CONFIG.replace("RUN_DIR", dir.path().join("run").to_str().unwrap());
        std::fs::write(dir.path().join("launch.yaml"), text).unwrap();
        Run { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("launch.yaml")
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// `swinfc-launch ARGS... CONFIG` with quick hang detection and a short grace period.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_swinfc-launch"));
        cmd.args([
            "--grace-period",
            "5",
            "--step-timeout",
            "4",
            "--setup-timeout",
            "120",
        ])
        .args(args)
        .arg(self.config())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        cmd
    }

    fn start(&self, args: &[&str]) -> Child {
        self.command(args).spawn().unwrap()
    }

    fn launch(&self, args: &[&str]) -> (ExitStatus, String) {
        let out = self.command(args).output().unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn checkpoint(&self, step: u64) -> PathBuf {
        self.run_dir().join(format!("checkpoints/step-{step:08}"))
    }

    fn model_bytes(&self, step: u64) -> Vec<u8> {
        std::fs::read(self.checkpoint(step).join("model.safetensors")).unwrap()
    }

    /// Blocks until checkpoint `step` is committed (its manifest is written last).
    fn wait_for_checkpoint(&self, step: u64, child: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(240);
        while !self.checkpoint(step).join("MANIFEST.json").exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the launcher exited early: {status}");
            }
            assert!(Instant::now() < deadline, "no checkpoint {step}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The uninterrupted reference: final weights of a clean 2-worker run.
fn reference() -> Vec<u8> {
    let run = Run::new();
    let (status, log) = run.launch(&["--cpu", "2"]);
    assert!(status.success(), "{log}");
    run.model_bytes(24)
}

fn wait(child: Child, limit: Duration) -> (ExitStatus, String) {
    let start = Instant::now();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if start.elapsed() > limit {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("the launcher did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = waiter.join().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Worker processes (`swinfc worker`) whose parent is `launcher`, by rank.
fn workers_of(launcher: u32) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid: u32 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid != launcher {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let rank = environ
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok()?.strip_prefix("SWINFC_RANK="))
            .find_map(|r| r.parse().ok());
        if let Some(rank) = rank {
            found.push((rank, pid));
        }
    }
    found.sort_unstable();
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {pid}");
}

fn rank_pid(launcher: u32, rank: usize) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((_, pid)) = workers_of(launcher).into_iter().find(|(r, _)| *r == rank) {
            return pid;
        }
        assert!(Instant::now() < deadline, "no worker of rank {rank}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_run_finishes_with_per_rank_logs() {
    let run = Run::new();
    let (status, log) = run.launch(&["--cpu", "2"]);
    assert!(status.success(), "{log}");
    for rank in 0..2 {
        let path = run.run_dir().join(format!("logs/attempt-1/rank-{rank}.log"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("joined"), "{}: {text}", path.display());
    }
    assert!(log.contains("[rank 0]"), "{log}");
    assert!(run.run_dir().join("run_id").exists());
}

/// The shipped demo, shortened to a third of its steps, still far above chance (1/12).
#[test]
fn the_demo_config_reaches_80_percent_on_two_cpu_workers() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo.yaml");
    let run_dir = format!("run.dir={}", dir.path().join("demo").display());
    let out = Command::new(env!("CARGO_BIN_EXE_swinfc-launch"))
        .args(["--cpu", "2"])
        .arg(&demo)
        .args([
            "--set",
            &run_dir,
            "--set",
            "train.total_steps=40",
            "--set",
            "eval.every_steps=40",
            "--set",
            "metrics.listen=127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let top1: f64 = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("eval 40/40  top1")?
                .split('%')
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no eval at step 40 in\n{log}"));
    assert!(top1 >= 80.0, "combined top-1 {top1}%");
}

/// What a person reads (no `RUST_LOG`): aligned step lines, eval and save lines, a summary with
/// the run's files; run again, the finished run says so instead of starting workers.
#[test]
fn the_console_shows_aligned_steps_and_a_summary_and_a_rerun_says_the_run_is_complete() {
    let run = Run::new();
    let launch = || {
        let out = run
            .command(&["--cpu", "2"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{log}");
        log
    };
    let log = launch();
    let steps: Vec<&str> = log.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(
        steps.len(),
        6,
        "a step line every metrics.log_every (4) of 24 steps:\n{log}"
    );
    assert!(steps[0].starts_with("step  4/24  loss "), "{log}");
    for field in ["loss", "grad_norm", "lr", "img/s"] {
        let columns: Vec<_> = steps.iter().map(|l| l.find(field)).collect();
        assert!(
            columns[0].is_some() && columns.iter().all(|c| *c == columns[0]),
            "{field}:\n{log}"
        );
    }
    assert!(
        !log.contains("grad_norm="),
        "rank 0's log lines stay in its log file:\n{log}"
    );
    assert!(log.lines().any(|l| l.starts_with("eval 12/24  top1 ")), "{log}");
    let save = format!("save 24/24  {}", run.checkpoint(24).display());
    assert!(log.lines().any(|l| l == save), "{log}");

    let dir = run.run_dir();
    for want in [
        "finished: step 24/24 (24 steps in ".to_string(),
        "  combined ".to_string(),
        format!("checkpoint  {}", run.checkpoint(24).display()),
        format!("events      {}", dir.join("events.jsonl").display()),
        format!("eval --checkpoint {}", dir.display()),
        format!("plot {} -o ", dir.display()),
    ] {
        assert!(log.contains(&want), "want `{want}` in the summary:\n{log}");
    }

    let log = launch();
    let complete = format!("{} is complete: all 24 steps are done", dir.display());
    assert!(log.contains(&complete), "{log}");
    assert!(log.contains("--resume none --overwrite"), "{log}");
    assert!(
        !dir.join("logs/attempt-2").exists(),
        "no workers were started:\n{log}"
    );
}

/// Errors a user causes end with a line that says what to do.
#[test]
fn a_user_error_ends_with_what_to_do() {
    let run = Run::new();
    for (args, code, hint) in [
        (&["--cpu", "0"][..], 2, "fix the command line"),
        (
            &["--cpu", "2", "--set", "train.bogus=1"][..],
            1,
            "fix that key in the config",
        ),
    ] {
        let (status, log) = run.launch(args);
        assert_eq!(status.code(), Some(code), "{args:?}: {log}");
        let last = log.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(hint),
            "{args:?}: the last line is `{last}`:\n{log}"
        );
    }
}

/// `--dry-run` validates the whole config: a wrong key and a wrong type in each section are
/// errors naming the key, before any worker would start.
#[test]
fn dry_run_rejects_a_wrong_key_or_type_in_every_section() {
    let run = Run::new();
    for (set, key) in [
        ("model.colour=1", "model.colour"),
        ("model.embed_dim=wide", "model.embed_dim"),
        ("data.colour=1", "data.colour"),
        ("data.crop=wide", "data.crop"),
        ("train.colour=1", "train.colour"),
        ("train.lr_new=fast", "train.lr_new"),
    ] {
        let (status, log) = run.launch(&["--cpu", "2", "--dry-run", "--set", set]);
        assert_eq!(status.code(), Some(1), "{set}: {log}");
        assert!(
            log.contains(&format!("swinfc-launch: {key}")),
            "{set}: want `{key}` in\n{log}"
        );
    }
}

#[test]
fn dry_run_prints_the_plan_and_a_gpu_request_without_cuda_suggests_cpu() {
    let run = Run::new();
    let out = run.command(&["--cpu", "2", "--dry-run"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 node(s) × 2 worker(s) = 2"), "{stdout}");
    assert!(stdout.contains("grad_accum 1 × micro-batch 4"), "{stdout}");
    assert!(stdout.contains("fresh start"), "{stdout}");
    assert!(!run.run_dir().join("checkpoints").exists());

    if !cfg!(feature = "cuda") {
        let (status, log) = run.launch(&["--gpus", "2"]);
        assert_eq!(status.code(), Some(2), "{log}");
        assert!(log.contains("--cpu 2"), "{log}");
    }
}

#[test]
fn a_killed_worker_restarts_the_round_and_ends_bit_identical() {
    let expected = reference();
    let run = Run::new();
    let mut launcher = run.start(&["--cpu", "2"]);
    run.wait_for_checkpoint(8, &mut launcher);
    signal(rank_pid(launcher.id(), 1), libc::SIGKILL);
    let (status, log) = wait(launcher, Duration::from_secs(300));
    assert!(status.success(), "{log}");
    assert!(log.contains("killed by signal 9"), "{log}");
    assert!(log.contains("restart=1"), "{log}");
    assert!(log.contains("replayed_steps="), "{log}");
    assert!(run.run_dir().join("logs/attempt-2/rank-1.log").exists());
    assert_eq!(run.model_bytes(24), expected);
}

#[test]
fn a_stopped_worker_is_a_hang_and_the_run_recovers() {
    let run = Run::new();
    let mut launcher = run.start(&["--cpu", "2"]);
    run.wait_for_checkpoint(4, &mut launcher);
    signal(rank_pid(launcher.id(), 1), libc::SIGSTOP);
    let (status, log) = wait(launcher, Duration::from_secs(300));
    assert!(status.success(), "{log}");
    assert!(log.contains("rank 1 hung"), "{log}");
    assert!(log.contains("process is stopped"), "{log}");
    assert!(run.checkpoint(24).exists());
}

/// SIGTERM as `scancel` sends it, to every process of the job (the workers a moment before the
/// launcher): one drain, one `signal` line naming SIGTERM, the workers stopping after the step
/// the log announced, a run that ends `preempted`; resumed, it ends bit-identical.
#[test]
fn sigterm_drains_to_a_checkpoint_exits_143_and_resume_finishes_bit_identical() {
    let expected = reference();
    let run = Run::new();
    let mut launcher = run.start(&["--cpu", "2", "--set", "checkpoint.every_steps=100"]);
    let pid = launcher.id();
    // The step-12 eval's results in the log mean training is well under way.
    let deadline = Instant::now() + Duration::from_secs(240);
    while workers_of(pid).len() < 2
        || !std::fs::read_to_string(run.run_dir().join("logs/attempt-1/rank-0.log"))
            .unwrap_or_default()
            .contains("step=8")
    {
        assert!(
            launcher.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let workers = workers_of(pid);
    let signalled = Instant::now();
    for (_, worker) in &workers {
        signal(*worker, libc::SIGTERM);
    }
    signal(pid, libc::SIGTERM);
    let (status, log) = wait(launcher, Duration::from_secs(60));
    assert_eq!(status.code(), Some(143), "{log}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "drain took {:?}",
        signalled.elapsed()
    );
    for (rank, pid) in workers {
        assert!(!alive(pid), "rank {rank} survived");
    }
    let (dir, state) = swinfc_train::checkpoint::latest_valid(&run.run_dir().join("checkpoints")).unwrap();
    assert!(
        state.step > 6 && state.step < 24,
        "drain checkpoint at step {} ({})",
        state.step,
        dir.display()
    );
    let announced = format!("stop_after={}", state.step);
    assert!(
        log.lines()
            .any(|l| l.contains("draining:") && l.contains(&announced)),
        "want `{announced}` in the drain line:\n{log}"
    );
    let events: Vec<serde_json::Value> = std::fs::read_to_string(run.run_dir().join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let signals: Vec<_> = events.iter().filter(|e| e["kind"] == "signal").collect();
    assert_eq!(signals.len(), 1, "{signals:?}");
    assert_eq!(signals[0]["signal"], "SIGTERM");
    let states: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "state")
        .map(|e| &e["state"])
        .collect();
    assert_eq!(states.last().unwrap().as_str(), Some("preempted"), "{states:?}");
    assert!(
        states.windows(2).all(|w| w[0] != w[1]),
        "a state twice: {states:?}"
    );
    let end = events.last().unwrap();
    assert_eq!(end["state"], "preempted");
    assert_eq!(
        end["reason"],
        format!(
            "preempted: drained at step {} after SIGTERM, resume with --resume auto",
            state.step
        )
    );

    let (status, log) = run.launch(&["--cpu", "2", "--set", "checkpoint.every_steps=100"]);
    assert!(status.success(), "{log}");
    assert!(log.contains(&format!("step {} from", state.step)), "{log}");
    assert_eq!(run.model_bytes(24), expected);
}

#[test]
fn no_worker_outlives_a_sigkilled_launcher() {
    let run = Run::new();
    let mut launcher = run.start(&["--cpu", "2"]);
    run.wait_for_checkpoint(4, &mut launcher);
    let workers = workers_of(launcher.id());
    assert_eq!(workers.len(), 2);
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    for (rank, pid) in workers {
        assert!(
            !alive(pid),
            "rank {rank} (pid {pid}) outlived the launcher by a second"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn two_nodes_on_loopback_match_one_node_of_the_same_world() {
    let single = Run::new();
    let (status, log) = single.launch(&["--cpu", "2"]);
    assert!(status.success(), "{log}");

    let multi = Run::new();
    let port = free_port().to_string();
    let node = |rank: &str| {
        multi.start(&[
            "--cpu",
            "1",
            "--nnodes",
            "2",
            "--node-rank",
            rank,
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            &port,
        ])
    };
    let (n0, n1) = (node("0"), node("1"));
    let (s0, log0) = wait(n0, Duration::from_secs(300));
    let (s1, log1) = wait(n1, Duration::from_secs(60));
    assert!(s0.success(), "node 0: {log0}");
    assert!(s1.success(), "node 1: {log1}");
    let a = common::read_tensors(&single.checkpoint(24).join("model.safetensors"));
    let b = common::read_tensors(&multi.checkpoint(24).join("model.safetensors"));
    for (k, t) in &a {
        let diff = common::relative_error(&t.values, &b[k].values, 1e-6);
        assert!(diff <= 1e-5, "{k}: relative difference {diff:.3e}");
    }
}

#[test]
fn a_wrong_token_cannot_join_and_a_busy_port_is_a_clear_error() {
    let run = Run::new();
    let port = free_port();
    let mut launcher = run.start(&["--cpu", "2", "--master-port", &port.to_string()]);
    run.wait_for_checkpoint(4, &mut launcher);
    let intruder = Command::new(env!("CARGO_BIN_EXE_swinfc"))
        .arg("worker")
        .arg(run.config())
        .envs([
            ("SWINFC_RANK", "0"),
            ("SWINFC_LOCAL_RANK", "0"),
            ("SWINFC_WORLD_SIZE", "2"),
            ("SWINFC_MASTER_ADDR", "127.0.0.1"),
            ("SWINFC_MASTER_PORT", &port.to_string()),
            ("SWINFC_JOB_TOKEN", &"ab".repeat(32)),
            ("SWINFC_RESTART_ROUND", "0"),
        ])
        .output()
        .unwrap();
    assert!(!intruder.status.success());
    let (status, log) = wait(launcher, Duration::from_secs(300));
    assert!(status.success(), "{log}");
    assert!(log.contains("wrong job token"), "{log}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let (status, log) = run.launch(&[
        "--cpu",
        "2",
        "--master-port",
        &port,
        "--resume",
        "none",
        "--overwrite",
    ]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("cannot listen") && log.contains(&port), "{log}");
}

#[test]
fn a_worker_that_always_crashes_exhausts_the_restarts() {
    let run = Run::new();
    let out = run
        .command(&["--cpu", "2", "--max-restarts", "1"])
        .env("SWINFC_WORKER_BIN", "/bin/false")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("exited with code 1"), "{log}");
    assert!(log.contains("giving up after 1 restart(s)"), "{log}");
    assert!(run.run_dir().join("logs/attempt-2").exists() && !run.run_dir().join("logs/attempt-3").exists());
}
