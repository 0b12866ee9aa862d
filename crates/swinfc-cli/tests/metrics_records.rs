//! The records real `swinfc worker` processes send are what `swinfc-metrics` expects: two workers
//! train against a control server hosted here (as the launcher does), their reports feed a
//! `Telemetry`, and the scrape, `events.jsonl` and `swinfc plot` must agree with the run.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use swinfc_comm::{ControlServer, JobToken, ServerEvent};
use swinfc_metrics::{RunInfo, RunState, Telemetry};

const WORLD: usize = 2;
const STEPS: u64 = 6;
const GLOBAL_BATCH: u64 = 8;
const TEST_SIZE: u64 = 12;

const CONFIG: &str = "
run: {name: tiny, dir: RUN_DIR, seed: 5}
model: {preset: tiny, img_size: 32, embed_dim: 16, branch_dim: 32, ea_memory: 4, num_classes: 4}
data: {dataset: synthetic, classes: 4, train_per_class: 6, test_per_class: 3, img_size: 40, resize: 36, crop: 32, num_threads: 1}
train: {global_batch: 8, micro_batch: 4, total_steps: 6, warmup_steps: 1, lr_backbone: 0.01, lr_new: 0.05, grad_clip: 1.0, weight_decay: 0.0001}
eval: {every_steps: 3}
checkpoint: {every_steps: 3, keep_last: 5}
metrics: {log_every: 2}
";

/// Runs the workers and returns every report, in arrival order.
fn train_and_collect(config: &Path) -> Vec<(usize, Value)> {
    let token = JobToken::generate().unwrap();
    let server =
        ControlServer::spawn_in_thread("127.0.0.1:0".parse().unwrap(), token.clone(), WORLD, 0).unwrap();
    let port = server.local_addr().port().to_string();
    let workers: Vec<_> = (0..WORLD)
        .map(|rank| {
            Command::new(env!("CARGO_BIN_EXE_swinfc"))
                .arg("worker")
                .arg(config)
                .env("SWINFC_RANK", rank.to_string())
                .env("SWINFC_LOCAL_RANK", rank.to_string())
                .env("SWINFC_WORLD_SIZE", WORLD.to_string())
                .env("SWINFC_MASTER_ADDR", "127.0.0.1")
                .env("SWINFC_MASTER_PORT", &port)
                .env("SWINFC_JOB_TOKEN", token.to_hex())
                .env("SWINFC_RESTART_ROUND", "0")
                .env("RAYON_NUM_THREADS", "1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, worker) in workers.into_iter().enumerate() {
        let out = worker.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rank {rank}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Steps of every rank, two evals on every rank, two saves on rank 0.
    let expected = STEPS as usize * WORLD + 2 * WORLD + 2;
    let mut reports = Vec::new();
    while reports.len() < expected {
        match server.events().recv_timeout(Duration::from_secs(20)) {
            Ok(ServerEvent::Report { rank, record }) => reports.push((rank, record)),
            Ok(_) => {}
            Err(e) => panic!("{} of {expected} reports, then {e}: {reports:?}", reports.len()),
        }
    }
    reports
}

fn scrape(telemetry: &Telemetry) -> String {
    let mut stream = TcpStream::connect(telemetry.addr()).unwrap();
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

#[test]
fn worker_records_feed_the_exporter_events_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        CONFIG.replace("RUN_DIR", dir.path().join("run").to_str().unwrap()),
    )
    .unwrap();
    let reports = train_and_collect(&config);

    let run_dir = dir.path().join("run");
    let info = RunInfo {
        run_id: "test".into(),
        experiment: "tiny".into(),
        model: "tiny".into(),
        dataset: "synthetic".into(),
        world_size: WORLD,
        target_steps: STEPS,
        log_every: 2,
        loss_weights: [0.4, 0.6, 0.8],
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let telemetry = Telemetry::start("127.0.0.1:0", &run_dir, info).unwrap();
    telemetry.set_state(RunState::Running);
    for (rank, record) in &reports {
        telemetry.report(*rank, record);
    }
    let text = scrape(&telemetry);
    telemetry.finish(RunState::Finished, "finished");

    assert_eq!(
        sum(&text, "swinfc_train_samples_total", &[]),
        (STEPS * GLOBAL_BATCH) as f64
    );
    assert_eq!(sum(&text, "swinfc_train_steps_total", &[]), STEPS as f64);
    assert_eq!(sum(&text, "swinfc_train_loss_count", &[]), STEPS as f64);
    assert_eq!(sum(&text, "swinfc_train_step", &[]), STEPS as f64);
    assert_eq!(
        sum(&text, "swinfc_train_epoch", &[]),
        2.0,
        "24 train samples: 3 steps an epoch"
    );
    assert_eq!(
        sum(&text, "swinfc_eval_samples", &[r#"split="test""#]),
        TEST_SIZE as f64
    );
    assert_eq!(
        sum(
            &text,
            "swinfc_checkpoints_total",
            &[r#"reason="periodic""#, r#"result="success""#]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &text,
            "swinfc_checkpoints_total",
            &[r#"reason="final""#, r#"result="success""#]
        ),
        1.0
    );
    assert!(sum(&text, "swinfc_checkpoint_size_bytes", &[]) > 0.0);
    assert_eq!(sum(&text, "swinfc_checkpoint_last_step", &[]), STEPS as f64);
    assert!(sum(&text, "swinfc_allreduce_bytes_total", &[]) > 0.0);
    for rank in 0..WORLD {
        let rank = format!(r#"rank="{rank}""#);
        let phases = sum(&text, "swinfc_train_step_phase_seconds_total", &[&rank]);
        let steps = sum(&text, "swinfc_train_step_duration_seconds_sum", &[&rank]);
        assert!(
            (phases - steps).abs() < 1e-6 * steps.max(1.0),
            "{rank}: phases {phases} vs steps {steps}"
        );
        for phase in ["forward", "backward", "grad_sync"] {
            let phase = format!(r#"phase="{phase}""#);
            assert!(
                sum(&text, "swinfc_train_step_phase_seconds_total", &[&rank, &phase]) > 0.0,
                "{phase}"
            );
        }
    }

    // The step summaries carry rank 0's losses for those steps.
    let rank0_loss: BTreeMap<u64, f64> = reports
        .iter()
        .filter(|(rank, r)| *rank == 0 && r["kind"] == "step")
        .map(|(_, r)| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect();
    let events: Vec<Value> = std::fs::read_to_string(run_dir.join(swinfc_metrics::EVENTS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summaries: Vec<&Value> = events.iter().filter(|e| e["kind"] == "step").collect();
    assert_eq!(summaries.len(), 3, "steps 2, 4 and 6");
    for e in summaries {
        let step = e["step"].as_u64().unwrap();
        assert_eq!(e["loss"].as_f64(), Some(rank0_loss[&step]), "step {step}");
    }
    let checkpoints: Vec<&Value> = events.iter().filter(|e| e["kind"] == "checkpoint").collect();
    assert_eq!(checkpoints.len(), 2);
    assert!(
        checkpoints
            .iter()
            .all(|c| c["ok"] == true && c["total_seconds"].as_f64() >= c["blocking_seconds"].as_f64())
    );
    assert_eq!(events.last().unwrap()["kind"], "end");

    let svg = dir.path().join("report.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_swinfc"))
        .args(["plot", run_dir.to_str().unwrap(), "-o", svg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // total + 5 components, 2 learning rates, throughput, 5 heads.
    assert_eq!(svg.matches("<polyline").count(), 14, "{svg}");
    let png = Command::new(env!("CARGO_BIN_EXE_swinfc"))
        .args(["plot", run_dir.to_str().unwrap(), "-o", "report.png"])
        .output()
        .unwrap();
    assert!(!png.status.success(), "PNG is refused with a clear error");
}
