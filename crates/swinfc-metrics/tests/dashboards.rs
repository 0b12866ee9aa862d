//! dashboards/ against the catalogue: every metric a panel or alert queries exists (with the
//! suffixes its type allows), the variables and datasource uids are consistent, and the dashboard
//! JSON has what Grafana needs to load it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use swinfc_metrics::{CATALOGUE, Kind};

#[path = "../../../tests/support/promtool.rs"]
mod promtool;
use promtool::promtool;

fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards")
}

fn read(path: &str) -> String {
    let path = dashboards().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `swinfc_…` identifier in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("swinfc_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The catalogue metric `name` refers to: itself, or a histogram's `_sum`/`_count`/`_bucket`.
fn in_catalogue(name: &str) -> bool {
    CATALOGUE.iter().any(|s| s.name == name)
        || ["_sum", "_count", "_bucket"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|base| {
                CATALOGUE
                    .iter()
                    .any(|s| s.name == base && s.kind == Kind::Histogram)
            })
        })
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/swinfc-training.json")).expect("the dashboard is JSON")
}

/// Panels, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        all.push(p);
        if let Some(nested) = p["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

#[test]
fn every_queried_metric_is_in_the_catalogue() {
    let dashboard = dashboard();
    let mut used = BTreeSet::new();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has a PromQL expr");
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "panel {}: {expr} queries no swinfc metric",
                panel["title"]
            );
            for name in names {
                assert!(
                    in_catalogue(&name),
                    "panel {}: {name} is not in the catalogue",
                    panel["title"]
                );
                used.insert(name);
            }
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        for name in metric_names(var["definition"].as_str().unwrap_or("")) {
            assert!(in_catalogue(&name), "variable {}: {name}", var["name"]);
        }
    }
    let alerts = read("prometheus/alerts.yml");
    for name in metric_names(&alerts) {
        assert!(in_catalogue(&name), "alerts.yml: {name} is not in the catalogue");
    }
    // The rows of metrics.md each query something; a dashboard that lost most panels would pass
    // the checks above, so also require a broad coverage of the catalogue.
    assert!(used.len() >= 25, "only {} metrics used: {used:?}", used.len());
}

#[test]
fn rows_variables_and_datasources_are_consistent() {
    let dashboard = dashboard();
    let rows: Vec<&str> = panels(&dashboard)
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "Overview",
            "Throughput",
            "Loss",
            "Optimizer",
            "Step time",
            "Communication",
            "Eval",
            "Checkpoints"
        ]
    );

    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ds", "experiment", "run_id", "rank"]);
    assert_eq!(vars[0]["type"], "datasource");
    assert_eq!(vars[0]["query"], "prometheus");
    for var in &vars[1..] {
        assert_eq!(var["type"], "query", "{}", var["name"]);
        assert_eq!(var["datasource"]["uid"], "${ds}", "{}", var["name"]);
    }

    // The provisioned datasource is a Prometheus, and the `ds` default names it.
    let provisioned: serde_yaml::Value =
        serde_yaml::from_str(&read("grafana/provisioning/datasources/swinfc.yaml")).unwrap();
    let source = &provisioned["datasources"][0];
    assert_eq!(source["type"].as_str(), Some("prometheus"));
    assert_eq!(source["uid"].as_str(), vars[0]["current"]["value"].as_str());

    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("numeric id")),
            "{title}: duplicate id"
        );
        assert!(panel["type"].is_string(), "{title}: type");
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${ds}", "{title}: panel datasource");
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${ds}", "{title}: target datasource");
            assert!(target["refId"].is_string(), "{title}: refId");
            // Every query is scoped to the selected runs.
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains(r#"run_id=~"$run_id""#),
                "{title}: {expr} ignores $run_id"
            );
        }
    }
}

#[test]
fn the_json_model_has_what_grafana_requires() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "swinfc-training");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(dashboard["templating"]["list"].is_array());
    assert!(dashboard["panels"].as_array().is_some_and(|p| !p.is_empty()));
    assert!(dashboard["time"]["from"].is_string() && dashboard["time"]["to"].is_string());
    // Provisioning loads it from the folder docker-compose.yml mounts dashboards/grafana/ at.
    let provider: serde_yaml::Value =
        serde_yaml::from_str(&read("grafana/provisioning/dashboards/swinfc.yaml")).unwrap();
    assert_eq!(provider["providers"][0]["type"].as_str(), Some("file"));
    let path = provider["providers"][0]["options"]["path"].as_str().unwrap();
    assert!(
        read("docker-compose.yml").contains(&format!("./grafana:{path}")),
        "{path} is mounted"
    );
}

#[test]
fn prometheus_config_is_valid() {
    let config = read("prometheus/prometheus.yml");
    assert!(config.contains("file_sd_configs") && config.contains(swinfc_metrics::TARGETS_FILE));
    let config = dashboards().join("prometheus/prometheus.yml");
    promtool(
        &["check", "config", "--syntax-only", &config.display().to_string()],
        "",
    );
}

/// Every panel query parses as PromQL: promtool checks them as recording rules, with Grafana's
/// variables replaced by what Grafana would interpolate.
#[test]
fn panel_queries_are_valid_promql() {
    let dashboard = dashboard();
    let mut rules = Vec::new();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$experiment", ".*")
                .replace("$run_id", ".*")
                .replace("$rank", ".*");
            rules.push(serde_json::json!({"record": format!("swinfc:panel_{}", rules.len()), "expr": expr}));
        }
    }
    // JSON is YAML: promtool reads it as a rule file.
    let file = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    let groups = serde_json::json!({"groups": [{"name": "panels", "rules": rules}]});
    std::fs::write(file.path(), groups.to_string()).unwrap();
    promtool(&["check", "rules", &file.path().display().to_string()], "");
}
