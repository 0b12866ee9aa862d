//! `swinfc plot`: a one-page SVG report from `events.jsonl` for users without Grafana — loss and
//! its components, learning rates, throughput and eval accuracy over steps. Hand-written SVG: four
//! line charts do not justify a plotting stack.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::MetricsError;
use crate::catalogue::{HEADS, LOSS_COMPONENTS, PARAM_GROUPS};
use crate::event::History;

const PANEL_W: f64 = 560.0;
const PANEL_H: f64 = 320.0;
const MARGIN: (f64, f64, f64, f64) = (64.0, 24.0, 36.0, 44.0); // left, right, top, bottom
const COLOURS: [&str; 7] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf",
];

/// The finite values of `events` by step, as a named line.
fn series<E>(events: &BTreeMap<u64, E>, name: &str, value: impl Fn(&E) -> Option<f64>) -> Series {
    Series {
        name: name.to_string(),
        points: events
            .iter()
            .filter_map(|(s, e)| value(e).filter(|v| v.is_finite()).map(|v| (*s as f64, v)))
            .collect(),
    }
}

/// A named line of (step, value) points.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// How much went into a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlotSummary {
    pub step_summaries: usize,
    pub evals: usize,
}

/// Reads `run_dir/events.jsonl` and writes the SVG report to `out`.
pub fn plot_run(run_dir: &Path, out: &Path) -> Result<PlotSummary, MetricsError> {
    let path = run_dir.join(crate::EVENTS_FILE);
    let text = std::fs::read_to_string(&path).map_err(MetricsError::io(&path))?;
    let (svg, summary) = render_svg(&text, &path)?;
    std::fs::write(out, svg).map_err(MetricsError::io(out))?;
    Ok(summary)
}

/// The SVG for the contents of an `events.jsonl` (`path` only names it in errors).
pub fn render_svg(events: &str, path: &Path) -> Result<(String, PlotSummary), MetricsError> {
    let History { steps, evals } = History::parse(events, path);
    if steps.is_empty() {
        return Err(MetricsError::Events {
            path: path.to_path_buf(),
            line: 0,
            message: "no step summaries to plot".into(),
        });
    }
    let mut loss = vec![series(&steps, "total", |e| e.loss)];
    loss.extend(
        (0..LOSS_COMPONENTS.len())
            .map(|i| series(&steps, LOSS_COMPONENTS[i], |e| e.loss_components.labelled()[i].1)),
    );
    let lr = vec![
        series(&steps, PARAM_GROUPS[0], |e| Some(e.lr.backbone)),
        series(&steps, PARAM_GROUPS[1], |e| Some(e.lr.new)),
    ];
    let throughput = vec![series(&steps, "samples/s", |e| Some(e.samples_per_second))];
    let accuracy: Vec<Series> = HEADS
        .into_iter()
        .map(|h| series(&evals, h, |e| e.accuracy.get(h).copied()))
        .collect();

    let mut svg = String::new();
    let (w, h) = (2.0 * PANEL_W, 2.0 * PANEL_H);
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    svg.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    chart(
        &mut svg,
        0.0,
        0.0,
        "Loss (total and unweighted components)",
        &loss,
    );
    chart(&mut svg, PANEL_W, 0.0, "Learning rate", &lr);
    chart(
        &mut svg,
        0.0,
        PANEL_H,
        "Throughput (samples/s, all ranks)",
        &throughput,
    );
    chart(&mut svg, PANEL_W, PANEL_H, "Eval top-1 accuracy", &accuracy);
    svg.push_str("</svg>\n");
    Ok((
        svg,
        PlotSummary {
            step_summaries: steps.len(),
            evals: evals.len(),
        },
    ))
}

/// One line chart in the panel whose top-left corner is (`x0`, `y0`).
fn chart(svg: &mut String, x0: f64, y0: f64, title: &str, series: &[Series]) {
    let (left, right, top, bottom) = MARGIN;
    let (px, py) = (x0 + left, y0 + top);
    let (pw, ph) = (PANEL_W - left - right, PANEL_H - top - bottom);
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        px,
        y0 + 22.0,
        xml(title)
    );
    let _ = write!(
        svg,
        r##"<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    let all = || series.iter().flat_map(|s| s.points.iter());
    let Some(((xmin, xmax), (ymin, ymax))) = bounds(all().map(|p| p.0)).zip(bounds(all().map(|p| p.1)))
    else {
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">no data</text>"##,
            px + pw / 2.0,
            py + ph / 2.0
        );
        return;
    };
    // Every plotted quantity is non-negative: starting at zero keeps small wiggles small.
    let ymin = ymin.min(0.0);
    // Headroom for the legend in the top-right corner.
    let ymax = ymax + 0.2 * (ymax - ymin);
    let sx = |x: f64| px + (x - xmin) / (xmax - xmin) * pw;
    let sy = |y: f64| py + ph - (y - ymin) / (ymax - ymin) * ph;
    for t in ticks(xmin, xmax) {
        let _ = write!(
            svg,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#eee"/><text x="{0}" y="{3}" text-anchor="middle">{4}</text>"##,
            sx(t),
            py,
            py + ph,
            py + ph + 14.0,
            label(t)
        );
    }
    for t in ticks(ymin, ymax) {
        let _ = write!(
            svg,
            r##"<line x1="{1}" y1="{0}" x2="{2}" y2="{0}" stroke="#eee"/><text x="{3}" y="{4}" text-anchor="end">{5}</text>"##,
            sy(t),
            px,
            px + pw,
            px - 4.0,
            sy(t) + 4.0,
            label(t)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#,
        px + pw / 2.0,
        py + ph + 30.0
    );
    for (i, s) in series.iter().enumerate().filter(|(_, s)| !s.points.is_empty()) {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        // Sparse series (evals) are readable only with their points marked.
        if s.points.len() <= 50 {
            for &(x, y) in &s.points {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"#,
                    sx(x),
                    sy(y)
                );
            }
        }
        let (lx, ly) = (px + pw - 110.0, py + 14.0 + 14.0 * i as f64);
        let _ = write!(
            svg,
            r#"<line x1="{lx}" y1="{0}" x2="{1}" y2="{0}" stroke="{colour}" stroke-width="2"/><text x="{2}" y="{3}">{4}</text>"#,
            ly - 4.0,
            lx + 16.0,
            lx + 20.0,
            ly,
            xml(&s.name)
        );
    }
}

/// (min, max) of `values`, widened when they are all equal so the scale is never degenerate.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return None;
    }
    if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return Some((lo - pad, hi + pad));
    }
    Some((lo, hi))
}

/// About five round tick values within [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e4 || v.abs() < 1e-2 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
