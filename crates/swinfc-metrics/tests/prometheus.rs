//! A real Prometheus (Debian's `prometheus` package) finds the exporter through the file_sd
//! targets file it writes, scrapes it, and answers `sum(rate(swinfc_train_samples_total[1m]))`.
//! Skipped when `prometheus` is not installed, unless `SWINFC_REQUIRE_PROMTOOL=1` (same package).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use swinfc_metrics::{RunInfo, TARGETS_FILE, Telemetry};

/// Kills the Prometheus this test started, however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response.split_once("\r\n\r\n")?.1.to_string())
}

/// Percent-encoding of a PromQL query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_run_through_its_targets_file() {
    if Command::new("prometheus").arg("--version").output().is_err() {
        assert_ne!(
            std::env::var("SWINFC_REQUIRE_PROMTOOL").as_deref(),
            Ok("1"),
            "SWINFC_REQUIRE_PROMTOOL=1 but prometheus is not on PATH (Debian package `prometheus`)"
        );
        eprintln!("prometheus not on PATH: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let info = RunInfo {
        run_id: "prom-test".into(),
        experiment: "demo".into(),
        model: "tiny".into(),
        dataset: "synthetic".into(),
        world_size: 1,
        target_steps: 1_000_000,
        log_every: 1000,
        loss_weights: [0.4, 0.6, 0.8],
        version: "test".into(),
    };
    let telemetry = Arc::new(Telemetry::start("127.0.0.1:0", &run_dir, info).unwrap());

    let config = dir.path().join("prometheus.yml");
    let targets = run_dir.join(TARGETS_FILE);
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: swinfc\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 1s\n",
            targets.display()
        ),
    )
    .unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // One worker training at 8 samples every 50 ms; returns the samples fed.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (telemetry, stop) = (telemetry.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut step = 0u64;
            while !stop.load(Ordering::Relaxed) {
                step += 1;
                telemetry.report(
                    0,
                    &json!({"kind": "step", "rank": 0, "step": step, "samples": 8, "epoch": 0,
                        "epoch_progress_ratio": 0.0, "loss": 1.0,
                        "loss_components": {"backbone_ce": 1.0, "stage2_ce": 1.0, "stage3_ce": 1.0,
                            "stage4_ce": 1.0, "contrastive": 0.0},
                        "lr": {"backbone": 0.001, "new": 0.01}, "grad_norm": 1.0, "nonfinite": 0,
                        "seconds": 0.05, "phases": {"data_wait": 0.0, "forward": 0.02, "backward": 0.02,
                            "grad_sync": 0.01, "optimizer": 0.0, "other": 0.0},
                        "allreduce_seconds": 0.01, "allreduce_bytes": 100, "skipped": {}}),
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            step * 8
        })
    };

    let rate = poll(
        web,
        r#"sum(rate(swinfc_train_samples_total{run_id="prom-test"}[1m]))"#,
        |r| r > 0.0,
    );
    stop.store(true, Ordering::Relaxed);
    let fed = feeder.join().unwrap();
    // A young series' rate over 1m is extrapolated from a few seconds, so only its sign is certain;
    // the counter itself must reach exactly what was fed once the next scrape has seen it.
    assert!(rate > 0.0);
    poll(
        web,
        r#"sum(swinfc_train_samples_total{run_id="prom-test"})"#,
        |v| v == fed as f64,
    );
    // `up` has the target's labels only: run_id is on the scraped series, not the target.
    poll(web, r#"up{job="swinfc"}"#, |v| v == 1.0);
}

/// Queries `promql` until its first result satisfies `ok`; panics after 60 s.
fn poll(web: SocketAddr, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let query = format!("/api/v1/query?query={}", encode(promql));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if let Some(body) = http_get(web, &query) {
            let value: Option<f64> = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
            });
            if let Some(value) = value.filter(|v| ok(*v)) {
                return value;
            }
            last = body;
        }
        assert!(
            Instant::now() < deadline,
            "{promql}: no satisfying answer within 60 s; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
