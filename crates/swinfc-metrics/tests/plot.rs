//! The SVG report from events.jsonl: replayed steps count once, a torn last line is skipped, and a
//! file without step summaries is an error rather than an empty picture.

use std::path::Path;

use swinfc_metrics::plot::{PlotSummary, render_svg};

fn step(step: u64, loss: f64) -> String {
    format!(
        r#"{{"ts": 1.0, "kind": "step", "step": {step}, "epoch": 0, "loss": {loss},
        "loss_components": {{"backbone_ce": 1.0, "stage2_ce": 1.0, "stage3_ce": 1.0, "stage4_ce": 1.0, "contrastive": null}},
        "lr": {{"backbone": 0.001, "new": 0.01}}, "grad_norm": 1.0, "samples_per_second": 100.0}}"#
    )
    .replace('\n', " ")
}

#[test]
fn replays_count_once_and_a_torn_line_is_skipped() {
    let events = [
        r#"{"ts": 0.5, "kind": "state", "state": "running"}"#.to_string(),
        step(10, 3.0),
        step(20, 2.0),
        r#"{"ts": 2.0, "kind": "restart", "reason": "crash", "detail": "", "replayed_steps": 10}"#.to_string(),
        step(20, 2.5),
        step(30, 1.5),
        r#"{"ts": 3.0, "kind": "eval", "step": 30, "split": "test", "samples": 12, "accuracy": {"combined": 0.5, "backbone": 0.4, "stage2": 0.1, "stage3": 0.2, "stage4": 0.3}}"#.to_string(),
        r#"{"ts": 4.0, "kind": "end", "sta"#.to_string(),
    ]
    .join("\n");
    let (svg, summary) = render_svg(&events, Path::new("events.jsonl")).unwrap();
    assert_eq!(
        summary,
        PlotSummary {
            step_summaries: 3,
            evals: 1
        }
    );
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // total + 4 finite components (contrastive is null throughout), 2 lrs, throughput, 5 heads.
    assert_eq!(svg.matches("<polyline").count(), 13);
    for title in ["Loss", "Learning rate", "Throughput", "Eval top-1 accuracy"] {
        assert!(svg.contains(title), "{title}");
    }
}

#[test]
fn no_step_summaries_is_an_error() {
    let err = render_svg(
        r#"{"ts": 1, "kind": "state", "state": "starting"}"#,
        Path::new("e.jsonl"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no step summaries"), "{err}");
}
