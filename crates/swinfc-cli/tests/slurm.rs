//! The shipped `launch/slurm/swinfc.sbatch` on a real one-node Slurm (Debian's `slurm-wlm` and
//! `munge`) that each test brings up in a scratch directory: its own munge key and socket,
//! `slurmctld` and `slurmd` in the foreground on free ports, state, spool and logs in the
//! directory, and everything stopped at the end, on failure too. The script runs unchanged; the
//! CPU variant only overrides its resources on the `sbatch` command line (`--gres=none`) and passes
//! `--cpu 2` like any extra argument.
//!
//! Skipped when Slurm or munge is not installed, unless `SWINFC_REQUIRE_SLURM=1` (CI, whose
//! `.ci/run` installs them). Neither daemon needs root: both run as the user running the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// 200 steps of ~20 ms with a checkpoint every 10 (all kept): a signal sent after the first
/// checkpoint lands mid-run with seconds to spare.
const CONFIG: &str = "
run: {name: slurm, dir: RUN_DIR, seed: 11}
model: {preset: tiny, img_size: 32, embed_dim: 16, branch_dim: 32, ea_memory: 4, num_classes: 4}
data: {dataset: synthetic, classes: 4, train_per_class: 8, test_per_class: 2, img_size: 36, resize: 36, crop: 32, num_threads: 1}
train: {global_batch: 8, micro_batch: 4, total_steps: 200, warmup_steps: 2, lr_backbone: 0.01, lr_new: 0.05, grad_clip: 1.0}
eval: {every_steps: 100}
checkpoint: {every_steps: 10, keep_last: 100}
metrics: {log_every: 50, listen: '127.0.0.1:0'}
";

/// The launcher options every run here uses: one thread per worker, so the run under Slurm and
/// the reference run outside it compute the same way on any machine.
const LAUNCH_ARGS: [&str; 4] = ["--cpu", "2", "--threads-per-worker", "1"];

/// A job, from submission to its last exit, never takes longer (Slurm's requeue hold is 5 s).
const JOB_LIMIT: Duration = Duration::from_secs(180);

/// The programs the cluster needs; `/usr/sbin` is not on an ordinary user's PATH.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A one-node Slurm of its own. Dropping it cancels its jobs and stops every process it started.
struct Cluster {
    dir: tempfile::TempDir,
    user: String,
    /// munged, slurmctld, slurmd.
    daemons: Vec<Child>,
    bins: PathBuf,
}

impl Cluster {
    /// `None` (with the reason printed) where Slurm is not installed and not required.
    fn start() -> Option<Cluster> {
        let programs = [
            "mungekey",
            "munged",
            "slurmctld",
            "slurmd",
            "sbatch",
            "scontrol",
            "scancel",
            "sinfo",
            "squeue",
        ];
        if let Some(missing) = programs.iter().find(|p| find(p).is_none()) {
            let why = format!("{missing} is not installed (Debian packages slurm-wlm and munge)");
            if std::env::var("SWINFC_REQUIRE_SLURM").as_deref() == Ok("1") {
                panic!("SWINFC_REQUIRE_SLURM=1 but {why}");
            }
            eprintln!("skipped: {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let user = output(Command::new("id").arg("-un")).trim().to_string();
        let mut cluster = Cluster {
            user,
            daemons: Vec::new(),
            bins: Path::new(env!("CARGO_BIN_EXE_swinfc-launch"))
                .parent()
                .unwrap()
                .to_path_buf(),
            dir,
        };
        let d = cluster.dir.path().to_path_buf();
        let key = d.join("munge.key");
        output(
            Command::new(find("mungekey").unwrap())
                .args(["-c", "-b", "1024", "-k"])
                .arg(&key),
        );
        let socket = d.join("munge.socket");
        // --force: munged otherwise refuses a socket in a directory that not everyone may enter
        // (the scratch directory is private).
        cluster.spawn(
            "munged",
            &[
                "-F".into(),
                "--force".into(),
                format!("--socket={}", socket.display()),
                format!("--key-file={}", key.display()),
                format!("--pid-file={}", d.join("munged.pid").display()),
                format!("--seed-file={}", d.join("munged.seed").display()),
                format!("--log-file={}", d.join("log/munged.log").display()),
            ],
        );
        cluster.wait_until("munged's socket", || socket.exists());

        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let host = host.trim();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (user, dir) = (&cluster.user, d.display());
        // cred_expire is how long a requeued job waits before it may start again (120 s by
        // default, 5 the least Slurm takes); sched_interval=1 starts it as soon as it may.
        let conf = format!(
            "ClusterName=swinfctest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket},cred_expire=5
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
SlurmdDebug=verbose
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobRequeue=1
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
",
            ctld = free_port(),
            slurmd = free_port(),
            socket = socket.display(),
        );
        std::fs::write(cluster.conf(), conf).unwrap();
        cluster.spawn("slurmctld", &["-D".into()]);
        cluster.spawn("slurmd", &["-D".into()]);
        cluster.wait_until("the node to be idle", || {
            let out = cluster
                .command("sinfo")
                .args(["-h", "-o", "%t"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim() == "idle"
        });
        Some(cluster)
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A Slurm program talking to this cluster, in the scratch directory.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(find(program).unwrap());
        cmd.env("SLURM_CONF", self.conf()).current_dir(self.dir.path());
        cmd
    }

    fn spawn(&mut self, program: &str, args: &[String]) {
        let log = std::fs::File::create(self.path(&format!("log/{program}.out"))).unwrap();
        let child = self
            .command(program)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.push(child);
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            if let Some(d) = self.daemons.iter().find(|d| !alive(d.id())) {
                panic!("daemon {} exited waiting for {what}:\n{}", d.id(), self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for name in [
            "munged.out",
            "slurmctld.out",
            "slurmd.out",
            "slurmctld.log",
            "slurmd.log",
        ] {
            let text = std::fs::read_to_string(self.path(&format!("log/{name}"))).unwrap_or_default();
            all.push_str(&format!("--- {name}\n{text}"));
        }
        all
    }

    /// `sbatch` of the shipped script with the CPU overrides, `env` added to the job's
    /// environment (sbatch passes the submitter's on); returns the job id.
    fn submit(&self, sbatch_args: &[&str], env: &[(&str, &str)], script_args: &[&str]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../launch/slurm/swinfc.sbatch");
        let mut cmd = self.command("sbatch");
        cmd.args(["--parsable", "--gres=none", "--cpus-per-task=1"])
            .args(sbatch_args)
            .arg(script)
            .args(script_args)
            .env_remove("SWINFC_LAUNCH")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied());
        output(&mut cmd).trim().to_string()
    }

    /// A field of `scontrol show job`.
    fn job(&self, id: &str, field: &str) -> String {
        let out = output(self.command("scontrol").args(["show", "job", "-o", id]));
        let prefix = format!("{field}=");
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {field} in {out}"))
            .to_string()
    }

    /// Blocks until job `id` has ended for good (a requeued job comes back first); its state.
    fn wait_for_end(&self, id: &str) -> String {
        let deadline = Instant::now() + JOB_LIMIT;
        loop {
            let state = self.job(id, "JobState");
            if ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"].contains(&state.as_str()) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} still {state}:\n{}\n{}",
                self.job_output(id),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit status of each run of job `id`'s batch script (the launcher, which it execs),
    /// in order, from slurmd's log.
    fn batch_exits(&self, id: &str) -> Vec<i32> {
        let log = std::fs::read_to_string(self.path("log/slurmd.log")).unwrap();
        let tag = format!("[{id}.batch] task 0 (");
        log.lines()
            .filter(|l| l.contains(&tag))
            .filter_map(|l| {
                l.split_once("exited with exit code ")?
                    .1
                    .trim_end_matches('.')
                    .parse()
                    .ok()
            })
            .collect()
    }

    fn job_output(&self, id: &str) -> String {
        std::fs::read_to_string(self.path(&format!("slurm-{id}.out"))).unwrap_or_default()
    }

    /// A run directory with the test config.
    fn config(&self, name: &str) -> (PathBuf, PathBuf) {
        let run_dir = self.path(name);
        let config = self.path(&format!("{name}.yaml"));
        std::fs::write(&config, CONFIG.replace("RUN_DIR", run_dir.to_str().unwrap())).unwrap();
        (config, run_dir)
    }

    /// PATH with the launcher on it, as the script expects it by default.
    fn path_with_launcher(&self) -> String {
        let path = std::env::var("PATH").unwrap_or_default();
        format!("{}:{path}", self.bins.display())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first (a drain takes a moment), then the daemons, then anything left of a job:
        // slurmstepd and what it ran carry this cluster's SLURM_CONF.
        let _ = self.command("scancel").args(["--user", &self.user]).output();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && self
                .command("squeue")
                .args(["-h", "-o", "%i"])
                .output()
                .is_ok_and(|out| out.status.success() && !out.stdout.is_empty())
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        for d in self.daemons.iter_mut().rev() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while d.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        for pid in processes_with(&format!("SLURM_CONF={}", self.conf().display())) {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Live processes (not zombies) whose environment has `entry`.
fn processes_with(entry: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let live = alive(pid);
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if live && environ.split(|b| *b == 0).any(|kv| kv == entry.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` runs (a zombie has ended).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(!s.rsplit_once(')')?.1.trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(false)
}

/// No process of job `id` (the launcher and its workers carry SLURM_JOB_ID) is left.
fn assert_nothing_left(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let entry = format!("SLURM_JOB_ID={id}");
    loop {
        let left = processes_with(&entry);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} left processes {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_events(run_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(run_dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// Each state change is one line: never the same state twice in a row.
fn assert_states_change(events: &[Value]) {
    let states: Vec<&Value> = of_kind(events, "state")
        .into_iter()
        .map(|e| &e["state"])
        .collect();
    for pair in states.windows(2) {
        assert_ne!(pair[0], pair[1], "a state written twice in a row: {states:?}");
    }
}

/// The step in the launcher's `draining: ... stop_after=K` line of a job's output.
fn announced_stop(output: &str) -> u64 {
    output
        .lines()
        .filter(|l| l.contains("draining:"))
        .find_map(|l| {
            l.split_once("stop_after=")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no drain line in\n{output}"))
}

/// Every checkpoint of a run up to `last`, each verified against its manifest.
fn assert_checkpoints_intact(run_dir: &Path, last: u64) {
    let steps = (10..last).step_by(10).chain([last]);
    for step in steps {
        let dir = run_dir.join(format!("checkpoints/step-{step:08}"));
        let state =
            swinfc_train::checkpoint::verify(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert_eq!(state.step, step);
    }
}

fn wait_for_checkpoint(cluster: &Cluster, run_dir: &Path, step: u64, id: &str) {
    let manifest = run_dir.join(format!("checkpoints/step-{step:08}/MANIFEST.json"));
    let deadline = Instant::now() + JOB_LIMIT;
    while !manifest.exists() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint {step}:\n{}\n{}",
            cluster.job_output(id),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Slurm's time-limit warning, sent by hand: `scancel --signal=USR1 --batch` after the first
/// checkpoint. The launcher drains, requeues the job and exits 143; the job comes back under the
/// same id, appends to the same output file, resumes from the drain checkpoint and ends with the
/// same weights as a run without Slurm.
#[test]
fn usr1_drains_requeues_and_the_job_comes_back_to_finish_bit_identical() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let started = Instant::now();
    let (reference_config, reference_dir) = cluster.config("reference");
    let out = Command::new(env!("CARGO_BIN_EXE_swinfc-launch"))
        .args(LAUNCH_ARGS)
        .arg(&reference_config)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let final_weights =
        |dir: &Path| std::fs::read(dir.join("checkpoints/step-00000200/model.safetensors")).unwrap();
    let expected = final_weights(&reference_dir);

    let (config, run_dir) = cluster.config("run");
    let path = cluster.path_with_launcher();
    let id = cluster.submit(
        &[],
        &[("PATH", &path)],
        &[&[config.to_str().unwrap()][..], &LAUNCH_ARGS].concat(),
    );
    wait_for_checkpoint(&cluster, &run_dir, 10, &id);
    output(cluster.command("scancel").args(["--signal=USR1", "--batch", &id]));
    let state = cluster.wait_for_end(&id);
    let log = cluster.job_output(&id);
    assert_eq!(state, "COMPLETED", "{log}");
    assert_eq!(cluster.job(&id, "Restarts"), "1", "{log}");
    assert_eq!(cluster.batch_exits(&id), [143, 0], "{log}");
    assert_nothing_left(&id);

    // The drain: every worker stopped after the announced step, which rank 0 saved; the
    // checkpoints before it are intact; the requeued job resumed from it.
    let k = announced_stop(&log);
    assert!(log.contains(r#"signal="SIGUSR1""#), "{log}");
    assert!(
        log.contains(&format!(
            "drained: every worker stopped after this step and rank 0 saved it step={k}"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "requeued: the job resumes from {}",
            run_dir.join(format!("checkpoints/step-{k:08}")).display()
        )),
        "{log}"
    );
    assert!(log.contains(&format!("attempt=2 resume=step {k} from")), "{log}");
    assert!(log.contains("finished: step 200/200"), "{log}");
    assert!(k > 10 && k < 200, "drained at step {k}");
    assert_checkpoints_intact(&run_dir, k);
    assert_eq!(
        final_weights(&run_dir),
        expected,
        "the requeued run's final weights differ"
    );

    // One run id, the job id, across the requeue; one output file that both launches appended to.
    assert_eq!(
        std::fs::read_to_string(run_dir.join("run_id")).unwrap().trim(),
        id
    );
    assert_eq!(
        log.matches(&format!("launching run_id={id} ")).count(),
        2,
        "{log}"
    );
    assert!(run_dir.join("logs/attempt-2/rank-1.log").exists());

    let events = read_events(&run_dir);
    let signals: Vec<&Value> = of_kind(&events, "signal");
    assert_eq!(signals.len(), 1, "{signals:?}");
    assert_eq!(signals[0]["signal"], "SIGUSR1");
    let requeues = of_kind(&events, "requeue");
    assert_eq!(requeues.len(), 1, "{requeues:?}");
    assert_eq!(requeues[0]["job"], id.as_str());
    assert_eq!(requeues[0]["ok"], true);
    let ends = of_kind(&events, "end");
    assert_eq!(ends.len(), 2, "{ends:?}");
    assert_eq!(ends[0]["state"], "preempted");
    assert_eq!(
        ends[0]["reason"],
        format!("preempted: drained at step {k} after SIGUSR1; requeued as Slurm job {id}")
    );
    assert_eq!(ends[1]["state"], "finished");
    assert_states_change(&events);
    eprintln!(
        "usr1 test: {:.1} s after the cluster was up",
        started.elapsed().as_secs_f64()
    );
}

/// A plain `scancel` (SIGTERM to every process of the job, workers first) drains once, exits 143
/// and is not requeued; a job submitted with `--no-requeue` that gets the time-limit warning
/// drains, says that Slurm refused the requeue and where its checkpoint is, and exits 143; a job
/// that cannot find the launcher fails at once and says where it looked.
#[test]
fn scancel_drains_without_requeue_and_a_refused_requeue_says_where_the_checkpoint_is() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let path = cluster.path_with_launcher();
    let started = Instant::now();

    // `--resume none` among the extra arguments: the script then does not add its own.
    let (config, run_dir) = cluster.config("cancelled");
    let args = [
        &[config.to_str().unwrap()][..],
        &LAUNCH_ARGS,
        &["--resume", "none"],
    ]
    .concat();
    let id = cluster.submit(&[], &[("PATH", &path)], &args);
    wait_for_checkpoint(&cluster, &run_dir, 10, &id);
    output(cluster.command("scancel").arg(&id));
    let state = cluster.wait_for_end(&id);
    let log = cluster.job_output(&id);
    assert_eq!(state, "CANCELLED", "{log}");
    assert_eq!(cluster.job(&id, "Restarts"), "0", "{log}");
    assert_eq!(cluster.batch_exits(&id), [143], "{log}");
    assert_nothing_left(&id);
    let k = announced_stop(&log);
    assert!(log.contains(&format!("saved it step={k}")), "{log}");
    assert!(!log.contains("requeue"), "{log}");
    assert_checkpoints_intact(&run_dir, k);
    let events = read_events(&run_dir);
    let signals: Vec<&Value> = of_kind(&events, "signal");
    assert_eq!(signals.len(), 1, "one scancel, one signal: {signals:?}");
    assert_eq!(signals[0]["signal"], "SIGTERM");
    assert!(of_kind(&events, "requeue").is_empty());
    let end = events.last().unwrap();
    assert_eq!(end["state"], "preempted");
    assert_eq!(
        end["reason"],
        format!("preempted: drained at step {k} after SIGTERM, resume with --resume auto")
    );
    assert_states_change(&events);

    let (config, run_dir) = cluster.config("no-requeue");
    let args = [&[config.to_str().unwrap()][..], &LAUNCH_ARGS].concat();
    let id = cluster.submit(&["--no-requeue"], &[("PATH", &path)], &args);
    wait_for_checkpoint(&cluster, &run_dir, 10, &id);
    output(cluster.command("scancel").args(["--signal=USR1", "--batch", &id]));
    let state = cluster.wait_for_end(&id);
    let log = cluster.job_output(&id);
    assert_eq!(state, "FAILED", "{log}");
    assert_eq!(cluster.batch_exits(&id), [143], "{log}");
    assert_nothing_left(&id);
    let k = announced_stop(&log);
    let checkpoint = run_dir.join(format!("checkpoints/step-{k:08}"));
    let refused = log
        .lines()
        .find(|l| l.contains("Slurm did not requeue the job"))
        .unwrap_or_else(|| panic!("no refusal line in\n{log}"));
    assert!(refused.contains(" WARN "), "{refused}");
    assert!(
        refused.contains(&format!("presently disabled for job {id}")),
        "{refused}"
    );
    assert!(
        refused.contains(&format!("resumes from {}", checkpoint.display())),
        "{refused}"
    );
    assert!(refused.contains("submit the job again"), "{refused}");
    assert!(!log.contains(" ERROR "), "{log}");
    assert_checkpoints_intact(&run_dir, k);
    let events = read_events(&run_dir);
    let requeues = of_kind(&events, "requeue");
    assert_eq!(requeues.len(), 1, "{requeues:?}");
    assert_eq!(requeues[0]["ok"], false);
    assert!(
        requeues[0]["error"]
            .as_str()
            .unwrap()
            .contains("presently disabled")
    );
    assert_eq!(events.last().unwrap()["state"], "preempted");

    // Neither $SWINFC_LAUNCH nor PATH nor the submit directory's target/release has a launcher.
    let id = cluster.submit(&[], &[("PATH", "/usr/bin:/bin")], &[config.to_str().unwrap()]);
    let state = cluster.wait_for_end(&id);
    let log = cluster.job_output(&id);
    assert_eq!(state, "FAILED", "{log}");
    assert_eq!(cluster.batch_exits(&id), [1], "{log}");
    assert!(
        log.contains("swinfc-launch not found (tried $SWINFC_LAUNCH, PATH, "),
        "{log}"
    );
    eprintln!(
        "scancel test: {:.1} s after the cluster was up",
        started.elapsed().as_secs_f64()
    );
}
