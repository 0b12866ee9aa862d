//! Metrics of a real launch: `swinfc-launch --cpu 2` on a tiny config, `/metrics` scraped over
//! HTTP during and after training (found through `prometheus-targets.json`), a worker killed so
//! the restart counters move, and the scrape, `events.jsonl` and `swinfc plot` must agree.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use swinfc_metrics::catalogue::CATALOGUE;

#[path = "../../../tests/support/promtool.rs"]
mod promtool;
use promtool::promtool;

const STEPS: f64 = 16.0;
const GLOBAL_BATCH: f64 = 8.0;
const TEST_SIZE: f64 = 8.0;

const CONFIG: &str = "
run: {name: tiny, dir: RUN_DIR, seed: 5}
model: {preset: tiny, img_size: 32, embed_dim: 16, branch_dim: 32, ea_memory: 4, num_classes: 4}
data: {dataset: synthetic, classes: 4, train_per_class: 8, test_per_class: 2, img_size: 40, resize: 36, crop: 32, num_threads: 1}
train: {global_batch: 8, micro_batch: 4, total_steps: 16, warmup_steps: 1, lr_backbone: 0.01, lr_new: 0.05, grad_clip: 1.0}
eval: {every_steps: 8}
checkpoint: {every_steps: 4, keep_last: 5}
metrics: {log_every: 1, listen: '127.0.0.1:0'}
";

fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// Sum of the samples of `name` whose labels include every `filter` pair.
fn sum(text: &str, name: &str, filter: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && filter.iter().all(|f| l.contains(f)))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

/// The exporter's address, once the launcher has written its file_sd target file.
fn target(run_dir: &Path, launcher: &mut Child) -> String {
    let path = run_dir.join(swinfc_metrics::TARGETS_FILE);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(addr) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v[0]["targets"][0].as_str().map(String::from))
        {
            return addr;
        }
        assert!(launcher.try_wait().unwrap().is_none(), "the launcher exited");
        assert!(Instant::now() < deadline, "no {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for(addr: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let text = scrape(addr);
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `promtool check metrics` finds nothing (when promtool is installed; CI requires it).
fn promtool_check(text: &str) {
    if let Some(findings) = promtool(&["check", "metrics"], text) {
        assert!(findings.trim().is_empty(), "promtool check metrics:\n{findings}");
    }
}

/// The pid of the worker of `rank` under `launcher`.
fn worker_pid(launcher: u32, rank: usize) -> u32 {
    let want = format!("SWINFC_RANK={rank}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            parent == Some(launcher) && env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
        })
        .expect("a worker of that rank")
}

#[test]
fn a_launch_exports_the_catalogue_events_and_plot_through_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir: PathBuf = dir.path().join("run");
    let config = dir.path().join("tiny.yaml");
    std::fs::write(&config, CONFIG.replace("RUN_DIR", run_dir.to_str().unwrap())).unwrap();
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_swinfc-launch"))
        .args(["--cpu", "2", "--metrics-linger", "120", "--grace-period", "5"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = target(&run_dir, &mut launcher);

    // During training: every catalogue metric is there with its type.
    let during = wait_for(&addr, "step 2", |t| sum(t, "swinfc_train_step", &[]) >= 2.0);
    assert_eq!(sum(&during, "swinfc_run_state", &[r#"state="running""#]), 1.0);
    assert_eq!(sum(&during, "swinfc_world_size", &[]), 2.0);
    promtool_check(&during);

    // Kill rank 1 after the step-4 checkpoint; the round restarts from it.
    wait_for(&addr, "checkpoint 4", |t| {
        sum(t, "swinfc_checkpoint_last_step", &[]) >= 4.0
    });
    let victim = worker_pid(launcher.id(), 1);
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);

    // After training (the launcher lingers): final values.
    let after = wait_for(&addr, "finished", |t| {
        sum(t, "swinfc_run_state", &[r#"state="finished""#]) == 1.0
    });
    for spec in CATALOGUE {
        let header = format!("# TYPE {} {}", spec.name, spec.kind.prometheus_type());
        assert!(after.contains(&header), "missing `{header}`");
    }
    promtool_check(&after);
    assert_eq!(
        sum(&after, "swinfc_worker_restarts_total", &[r#"reason="crash""#]),
        1.0
    );
    assert_eq!(sum(&after, "swinfc_run_attempt", &[]), 2.0);
    assert_eq!(sum(&after, "swinfc_recovery_duration_seconds_count", &[]), 1.0);
    let executed = sum(&after, "swinfc_train_steps_total", &[]);
    let replayed = sum(&after, "swinfc_train_replayed_steps_total", &[]);
    assert!(
        replayed >= 1.0 && executed == STEPS + replayed,
        "{executed} executed, {replayed} replayed"
    );
    // `executed` counts rank 0's records. A worker killed (rank 1) or stopped (rank 0, by the
    // launcher) between finishing a step and reporting it leaves the ranks one step apart, no more.
    let per_rank = GLOBAL_BATCH / 2.0;
    let rank0 = sum(&after, "swinfc_train_samples_total", &[r#"rank="0""#]);
    let rank1 = sum(&after, "swinfc_train_samples_total", &[r#"rank="1""#]);
    assert_eq!(rank0, executed * per_rank);
    assert!(
        (rank1 - rank0).abs() <= per_rank,
        "rank 1 counted {rank1} samples, rank 0 {rank0}"
    );
    assert_eq!(sum(&after, "swinfc_train_step", &[]), STEPS);
    assert_eq!(
        sum(&after, "swinfc_eval_samples", &[r#"split="test""#]),
        TEST_SIZE
    );

    // End the linger; the exit code is the run's.
    // SAFETY: as above.
    unsafe { libc::kill(launcher.id() as i32, libc::SIGTERM) };
    let out = launcher.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !run_dir.join(swinfc_metrics::TARGETS_FILE).exists(),
        "targets file removed at exit"
    );

    // events.jsonl: a summary per executed step whose losses add up to the histogram sums.
    let events: Vec<Value> = std::fs::read_to_string(run_dir.join(swinfc_metrics::EVENTS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<&Value> = events.iter().filter(|e| e["kind"] == "step").collect();
    assert_eq!(steps.len() as f64, executed);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
    let total: f64 = steps.iter().map(|e| e["loss"].as_f64().unwrap()).sum();
    assert!(
        close(total, sum(&after, "swinfc_train_loss_sum", &[])),
        "loss {total}"
    );
    for component in [
        "backbone_ce",
        "stage2_ce",
        "stage3_ce",
        "stage4_ce",
        "contrastive",
    ] {
        let from_events: f64 = steps
            .iter()
            .map(|e| e["loss_components"][component].as_f64().unwrap())
            .sum();
        let label = format!(r#"component="{component}""#);
        let scraped = sum(&after, "swinfc_train_loss_component_sum", &[&label]);
        assert!(
            close(from_events, scraped),
            "{component}: events {from_events} vs scrape {scraped}"
        );
    }
    assert!(events.iter().any(|e| e["kind"] == "restart"));
    let end = events.last().unwrap();
    assert_eq!(end["kind"], "end");
    assert!(end["reason"].as_str().unwrap().starts_with("finished"), "{end}");

    let svg = dir.path().join("report.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_swinfc"))
        .args(["plot", run_dir.to_str().unwrap(), "-o", svg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // total + 5 components, 2 learning rates, throughput, 5 heads.
    assert_eq!(svg.matches("<polyline").count(), 14);
    let png = Command::new(env!("CARGO_BIN_EXE_swinfc"))
        .args(["plot", run_dir.to_str().unwrap(), "-o", "report.png"])
        .output()
        .unwrap();
    assert!(!png.status.success(), "PNG is refused with a clear error");
}
