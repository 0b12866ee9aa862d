//! A real exporter on a real port: worker records shaped exactly like `swinfc-train`'s go in,
//! `/metrics` is scraped over HTTP and `events.jsonl` read back, and both must agree with what went
//! in. `promtool` (Debian's `prometheus` package) lints the scrape and the alert rules when it is
//! installed, and must be when `SWINFC_REQUIRE_PROMTOOL=1` (CI).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use swinfc_metrics::{CATALOGUE, EVENTS_FILE, RestartReason, RunInfo, RunState, TARGETS_FILE, Telemetry};

const WORLD: usize = 2;
const STEPS: u64 = 5;
const MICRO: u64 = 4;

fn info() -> RunInfo {
    RunInfo {
        run_id: "run-42".into(),
        experiment: "demo".into(),
        model: "swinfc_tiny".into(),
        dataset: "synthetic".into(),
        world_size: WORLD,
        target_steps: STEPS,
        log_every: 2,
        loss_weights: [0.4, 0.6, 0.8],
        version: "0.1.0".into(),
    }
}

/// Loss of a step (the same on every rank: it is the mean over ranks).
fn loss(step: u64) -> f64 {
    3.0 / step as f64
}

fn component(step: u64, i: usize) -> f64 {
    loss(step) / (2.0 + i as f64)
}

/// A step record as `swinfc_train::trainer` builds it.
fn step_record(rank: usize, step: u64, samples: u64, skipped: BTreeMap<String, u64>) -> Value {
    let (data_wait, forward, backward, grad_sync, optimizer, other) = (0.01, 0.1, 0.2, 0.05, 0.02, 0.0125);
    json!({
        "kind": "step", "rank": rank, "step": step, "samples": samples,
        "epoch": step / 3, "epoch_progress_ratio": (step % 3) as f64 / 3.0,
        "loss": loss(step), "loss_components": {
            "backbone_ce": component(step, 0), "stage2_ce": component(step, 1), "stage3_ce": component(step, 2),
            "stage4_ce": component(step, 3), "contrastive": component(step, 4) },
        "lr": {"backbone": 0.001 * step as f64, "new": 0.01 * step as f64}, "grad_norm": 1.5,
        "nonfinite": 0,
        "seconds": data_wait + forward + backward + grad_sync + optimizer + other,
        "phases": { "data_wait": data_wait, "forward": forward, "backward": backward,
            "grad_sync": grad_sync, "optimizer": optimizer, "other": other },
        "allreduce_seconds": 0.04, "allreduce_bytes": 1000,
        "skipped": skipped,
    })
}

fn eval_record(rank: usize, step: u64, combined: f64) -> Value {
    json!({"kind": "eval", "rank": rank, "split": "test", "result": {
        "step": step, "samples": 20, "combined": combined, "backbone": 0.5, "stage2": 0.1, "stage3": 0.2,
        "stage4": 0.3}})
}

/// `GET path` over a fresh connection; (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the exporter");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Sample lines of the exposition: (name, labels, value).
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("name value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().expect("a number"))
        })
        .collect()
}

fn sum_of(all: &[(String, BTreeMap<String, String>, f64)], name: &str, filter: &[(&str, &str)]) -> f64 {
    all.iter()
        .filter(|(n, l, _)| {
            n == name
                && filter
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn events(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join(EVENTS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every events.jsonl line is JSON"))
        .collect()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `promtool` if installed; None (or a failure under `SWINFC_REQUIRE_PROMTOOL=1`) otherwise.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var("SWINFC_REQUIRE_PROMTOOL").as_deref() == Ok("1") {
        panic!("SWINFC_REQUIRE_PROMTOOL=1 but promtool is not on PATH (Debian package `prometheus`)");
    }
    if !found {
        eprintln!("promtool not on PATH: skipping its checks");
    }
    found.then_some("promtool")
}

#[test]
fn telemetry_is_send_and_sync() {
    fn assert<T: Send + Sync>() {}
    assert::<Telemetry>();
}

#[test]
fn scrape_and_events_match_what_workers_reported() {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Telemetry::start("127.0.0.1:0", dir.path(), info()).unwrap();
    let addr = telemetry.addr();
    assert_ne!(addr.port(), 0);
    let targets: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(TARGETS_FILE)).unwrap()).unwrap();
    assert_eq!(targets, json!([{"targets": [addr.to_string()], "labels": {}}]));

    telemetry.set_state(RunState::Running);
    for rank in 0..WORLD {
        telemetry.worker_up(rank, true);
    }
    let mut fed_samples = 0;
    for step in 1..=STEPS {
        for rank in 0..WORLD {
            // Rank 1 skips one truncated image at step 2: one sample short that step.
            let skipped: BTreeMap<String, u64> = if rank == 1 && step == 2 {
                [("truncated".to_string(), 1)].into()
            } else {
                BTreeMap::new()
            };
            let samples = MICRO - skipped.values().sum::<u64>();
            fed_samples += samples;
            telemetry.report(rank, &step_record(rank, step, samples, skipped));
        }
        if step == 3 {
            telemetry.report(0, &eval_record(0, 3, 0.6));
            telemetry.report(1, &eval_record(1, 3, 0.6));
            telemetry.report(
                0,
                &json!({"kind": "checkpoint", "rank": 0, "ok": true, "step": 3, "reason": "periodic",
                    "bytes": 12345, "blocking_seconds": 0.2, "write_seconds": 1.0, "total_seconds": 1.25}),
            );
        }
    }
    telemetry.report(0, &eval_record(0, STEPS, 0.4));
    telemetry.report(
        0,
        &json!({"kind": "checkpoint", "rank": 0, "ok": false, "step": STEPS, "reason": "final",
            "blocking_seconds": 0.3, "error": "disk full"}),
    );
    telemetry.restart(RestartReason::Hang, "rank 1 stalled in grad_sync", 2);
    telemetry.recovered(RestartReason::Hang, 42.0);
    telemetry.set_attempt(2);
    telemetry.signal("SIGTERM");
    telemetry.report(0, &json!({"kind": "mystery"}));

    let (status, _) = get(addr, "/nope");
    assert!(status.contains("404"), "{status}");
    let (status, text) = get(addr, "/metrics");
    assert!(status.contains("200"), "{status}");

    // Every catalogue metric, with its type, and at least one series.
    let types: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_once(' ').unwrap())
        .collect();
    let all = samples(&text);
    for spec in CATALOGUE {
        assert_eq!(
            types.get(spec.name).copied(),
            Some(spec.kind.prometheus_type()),
            "{} in the scrape:\n{text}",
            spec.name
        );
        let series = match spec.kind.prometheus_type() {
            "histogram" => format!("{}_count", spec.name),
            _ => spec.name.to_string(),
        };
        let one = all
            .iter()
            .find(|(n, _, _)| *n == series)
            .unwrap_or_else(|| panic!("no {series}"));
        assert_eq!(
            one.1.get("run_id").map(String::as_str),
            Some("run-42"),
            "{series}"
        );
        assert_eq!(
            one.1.get("experiment").map(String::as_str),
            Some("demo"),
            "{series}"
        );
        for label in spec.labels {
            assert!(one.1.contains_key(*label), "{series} lacks label {label}");
        }
    }
    assert_eq!(types.len(), CATALOGUE.len(), "no metric outside the catalogue");

    // Counters and histograms equal what was fed.
    assert_eq!(
        sum_of(&all, "swinfc_train_samples_total", &[]),
        fed_samples as f64
    );
    assert_eq!(
        sum_of(&all, "swinfc_train_samples_total", &[("rank", "1")]),
        (STEPS * MICRO - 1) as f64
    );
    assert_eq!(sum_of(&all, "swinfc_train_steps_total", &[]), STEPS as f64);
    let losses: f64 = (1..=STEPS).map(loss).sum();
    assert!((sum_of(&all, "swinfc_train_loss_sum", &[]) - losses).abs() < 1e-9);
    assert_eq!(sum_of(&all, "swinfc_train_loss_count", &[]), STEPS as f64);
    for (i, c) in [
        "backbone_ce",
        "stage2_ce",
        "stage3_ce",
        "stage4_ce",
        "contrastive",
    ]
    .iter()
    .enumerate()
    {
        let fed: f64 = (1..=STEPS).map(|s| component(s, i)).sum();
        let got = sum_of(&all, "swinfc_train_loss_component_sum", &[("component", c)]);
        assert!((got - fed).abs() < 1e-9, "{c}: {got} vs {fed}");
    }
    let phases = sum_of(&all, "swinfc_train_step_phase_seconds_total", &[]);
    let durations = sum_of(&all, "swinfc_train_step_duration_seconds_sum", &[]);
    assert!(
        (phases - durations).abs() < 1e-9,
        "phases {phases} add up to step time {durations}"
    );
    assert!(
        (sum_of(&all, "swinfc_allreduce_seconds_total", &[("rank", "0")]) - 0.04 * STEPS as f64).abs() < 1e-9
    );
    assert_eq!(
        sum_of(&all, "swinfc_allreduce_bytes_total", &[]),
        (1000 * WORLD as u64 * STEPS) as f64
    );
    assert_eq!(
        sum_of(
            &all,
            "swinfc_data_samples_skipped_total",
            &[("rank", "1"), ("reason", "decode")]
        ),
        1.0
    );
    assert_eq!(sum_of(&all, "swinfc_train_step", &[]), STEPS as f64);
    assert_eq!(
        sum_of(&all, "swinfc_optimizer_learning_rate", &[("param_group", "new")]),
        0.05
    );
    assert_eq!(
        sum_of(&all, "swinfc_train_loss_weight", &[("component", "stage3_ce")]),
        0.6
    );
    assert_eq!(
        sum_of(&all, "swinfc_eval_accuracy_ratio", &[("head", "combined")]),
        0.4
    );
    assert_eq!(
        sum_of(&all, "swinfc_eval_best_accuracy_ratio", &[("head", "combined")]),
        0.6
    );
    assert_eq!(sum_of(&all, "swinfc_eval_samples", &[("split", "test")]), 20.0);
    assert_eq!(
        sum_of(
            &all,
            "swinfc_checkpoints_total",
            &[("reason", "periodic"), ("result", "success")]
        ),
        1.0
    );
    assert_eq!(
        sum_of(
            &all,
            "swinfc_checkpoints_total",
            &[("reason", "final"), ("result", "failure")]
        ),
        1.0
    );
    assert_eq!(
        sum_of(
            &all,
            "swinfc_checkpoint_duration_seconds_count",
            &[("phase", "blocking")]
        ),
        2.0
    );
    assert_eq!(
        sum_of(
            &all,
            "swinfc_checkpoint_duration_seconds_sum",
            &[("phase", "total")]
        ),
        1.25
    );
    assert_eq!(sum_of(&all, "swinfc_checkpoint_last_step", &[]), 3.0);
    assert_eq!(sum_of(&all, "swinfc_checkpoint_size_bytes", &[]), 12345.0);
    assert_eq!(
        sum_of(&all, "swinfc_worker_restarts_total", &[("reason", "hang")]),
        1.0
    );
    assert_eq!(sum_of(&all, "swinfc_train_replayed_steps_total", &[]), 2.0);
    assert_eq!(
        sum_of(
            &all,
            "swinfc_recovery_duration_seconds_sum",
            &[("reason", "hang")]
        ),
        42.0
    );
    assert_eq!(sum_of(&all, "swinfc_run_attempt", &[]), 2.0);
    assert_eq!(sum_of(&all, "swinfc_run_state", &[("state", "running")]), 1.0);
    assert_eq!(
        sum_of(&all, "swinfc_run_state", &[]),
        1.0,
        "exactly one state is 1"
    );
    assert_eq!(sum_of(&all, "swinfc_worker_up", &[]), WORLD as f64);

    if let Some(promtool) = promtool() {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let findings = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && findings.trim().is_empty(),
            "promtool check metrics:\n{findings}"
        );
    }

    telemetry.finish(RunState::Finished, "finished: 5 of 5 steps");
    assert!(
        !dir.path().join(TARGETS_FILE).exists(),
        "finish removes the targets file"
    );
    assert!(TcpStream::connect(addr).is_err(), "finish stops serving");

    let events = events(dir.path());
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "state",
            "step",
            "eval",
            "checkpoint",
            "step",
            "step",
            "eval",
            "checkpoint",
            "restart",
            "signal",
            "state",
            "end"
        ]
    );
    assert!(events.iter().all(|e| e["ts"].as_f64().is_some_and(|t| t > 1.7e9)));
    let steps: Vec<&Value> = events.iter().filter(|e| e["kind"] == "step").collect();
    // Every `log_every` (2) steps, and the last.
    assert_eq!(
        steps
            .iter()
            .map(|e| e["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 4, 5]
    );
    for e in &steps {
        let step = e["step"].as_u64().unwrap();
        assert_eq!(e["loss"].as_f64(), Some(loss(step)));
        assert_eq!(
            e["loss_components"]["stage4_ce"].as_f64(),
            Some(component(step, 3))
        );
        assert_eq!(e["lr"]["backbone"].as_f64(), Some(0.001 * step as f64));
        assert_eq!(e["grad_norm"].as_f64(), Some(1.5));
        assert!(e["samples_per_second"].as_f64().is_some_and(|s| s > 0.0), "{e}");
    }
    assert_eq!(events[2]["accuracy"]["combined"], 0.6);
    assert_eq!(events[7]["ok"], false);
    assert_eq!(events[7]["error"], "disk full");
    assert_eq!(events[8]["reason"], "hang");
    assert_eq!(events[8]["replayed_steps"], 2);
    assert_eq!(events[9]["signal"], "SIGTERM");
    assert_eq!(events[11]["reason"], "finished: 5 of 5 steps");
    assert_eq!(events[11]["state"], "finished");
}

/// A drained, requeued run: each state is one line however often it is set (the launcher sets
/// the final one, then `finish` does), the requeue is a line of its own, and the run ends
/// `preempted`, not `finished`. A refused requeue keeps Slurm's reason.
#[test]
fn a_preempted_run_logs_its_requeue_and_each_state_once() {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Telemetry::start("127.0.0.1:0", dir.path(), info()).unwrap();
    telemetry.set_state(RunState::Running);
    telemetry.set_state(RunState::Running);
    telemetry.signal("SIGUSR1");
    telemetry.set_state(RunState::Draining);
    telemetry.requeue("7", Ok(()));
    telemetry.requeue("7", Err("Requested operation is presently disabled for job 7"));
    telemetry.set_state(RunState::Preempted);
    let (_, text) = get(telemetry.addr(), "/metrics");
    let all = samples(&text);
    assert_eq!(sum_of(&all, "swinfc_run_state", &[("state", "preempted")]), 1.0);
    assert_eq!(sum_of(&all, "swinfc_run_state", &[]), 1.0);
    telemetry.finish(RunState::Preempted, "preempted: drained at step 10");

    let events = events(dir.path());
    let lines: Vec<String> = events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.as_object_mut().unwrap().remove("ts");
            e.to_string()
        })
        .collect();
    assert_eq!(
        lines,
        [
            r#"{"kind":"state","state":"running"}"#,
            r#"{"kind":"signal","signal":"SIGUSR1"}"#,
            r#"{"kind":"state","state":"draining"}"#,
            r#"{"job":"7","kind":"requeue","ok":true}"#,
            r#"{"error":"Requested operation is presently disabled for job 7","job":"7","kind":"requeue","ok":false}"#,
            r#"{"kind":"state","state":"preempted"}"#,
            r#"{"kind":"end","reason":"preempted: drained at step 10","state":"preempted"}"#,
        ]
    );
}

#[test]
fn two_exporters_in_one_process_keep_their_own_registries() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Telemetry::start("127.0.0.1:0", a_dir.path(), info()).unwrap();
    let b = Telemetry::start(
        "127.0.0.1:0",
        b_dir.path(),
        RunInfo {
            run_id: "other".into(),
            ..info()
        },
    )
    .unwrap();
    assert_ne!(a.addr(), b.addr());
    a.report(0, &step_record(0, 1, MICRO, BTreeMap::new()));
    let (_, a_text) = get(a.addr(), "/metrics");
    let (_, b_text) = get(b.addr(), "/metrics");
    assert_eq!(
        sum_of(&samples(&a_text), "swinfc_train_samples_total", &[]),
        MICRO as f64
    );
    assert_eq!(sum_of(&samples(&b_text), "swinfc_train_samples_total", &[]), 0.0);
    assert!(b_text.contains(r#"run_id="other""#));
    // A busy port is a clear error, not a panic.
    let taken = a.addr().to_string();
    assert!(Telemetry::start(&taken, b_dir.path(), info()).is_err());
}

#[test]
fn a_non_finite_loss_is_counted_not_observed() {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Telemetry::start("127.0.0.1:0", dir.path(), info()).unwrap();
    let mut record = step_record(0, 1, MICRO, BTreeMap::new());
    // serde_json writes NaN as null: that is what a worker sends for a non-finite loss.
    record["loss"] = json!(f64::NAN);
    record["grad_norm"] = Value::Null;
    record["nonfinite"] = json!(1);
    telemetry.report(0, &record);
    let all = samples(&telemetry.render());
    assert_eq!(sum_of(&all, "swinfc_train_nonfinite_loss_total", &[]), 1.0);
    assert_eq!(sum_of(&all, "swinfc_train_loss_count", &[]), 0.0);
    assert_eq!(sum_of(&all, "swinfc_optimizer_grad_norm_count", &[]), 0.0);
    assert_eq!(sum_of(&all, "swinfc_train_steps_total", &[]), 1.0);
}

#[test]
fn alert_rules_pass_promtool() {
    let Some(promtool) = promtool() else { return };
    let rules = repo_root().join("dashboards/prometheus/alerts.yml");
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{}{}",
        rules.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn catalogue_follows_the_naming_rules() {
    let mut names = std::collections::BTreeSet::new();
    for spec in CATALOGUE {
        assert!(names.insert(spec.name), "{} twice", spec.name);
        assert!(spec.name.starts_with("swinfc_"), "{}", spec.name);
        let counter = spec.kind.prometheus_type() == "counter";
        assert_eq!(
            spec.name.ends_with("_total"),
            counter,
            "{}: counters and only counters end in _total",
            spec.name
        );
        if let Some(unit) = spec.unit {
            let base = spec.name.trim_end_matches("_total");
            assert!(
                base.ends_with(&format!("_{unit}")),
                "{} ends with its unit {unit}",
                spec.name
            );
        }
        for label in spec.labels {
            assert!(
                !["job", "instance", "step", "epoch", "run_id", "experiment"].contains(label),
                "{label}"
            );
        }
        assert!(!spec.help.is_empty());
    }
}
