//! The [`crate::Kind::SecondsCounter`] metrics: the `metrics` facade's counters are `u64` and
//! cannot hold fractional seconds, so the exporter keeps these itself and appends them to the
//! registry's exposition.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::catalogue::spec_of;
use crate::lock;

pub(crate) type Labels = Vec<(&'static str, String)>;

/// The seconds counters' values by metric and labels, rendered in the exposition format.
pub(crate) struct SecondsCounters {
    global: Labels,
    values: Mutex<BTreeMap<&'static str, BTreeMap<Labels, f64>>>,
}

impl SecondsCounters {
    /// `global` labels go on every series, before each series' own.
    pub(crate) fn new(global: Labels) -> Self {
        SecondsCounters {
            global,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn add(&self, name: &'static str, labels: Labels, seconds: f64) {
        // A clock step backwards must not make a counter decrease.
        let seconds = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        *lock(&self.values)
            .entry(name)
            .or_default()
            .entry(labels)
            .or_default() += seconds;
    }

    pub(crate) fn render_into(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (name, series) in lock(&self.values).iter() {
            let help = spec_of(name).map_or("", |s| s.help);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in series {
                let pairs: Vec<String> = self
                    .global
                    .iter()
                    .chain(labels)
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = writeln!(out, "{name}{{{}}} {value}", pairs.join(","));
            }
            out.push('\n');
        }
    }
}

/// Label value escaping of the text exposition format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Series add up per label set, a negative or non-finite amount adds nothing, and label
    /// values are escaped.
    #[test]
    fn counters_only_grow_and_render_escaped() {
        let c = SecondsCounters::new(vec![("run_id", "r\"1".to_string())]);
        let name = crate::catalogue::ALLREDUCE_SECONDS;
        for s in [0.25, -1.0, f64::NAN, 0.5] {
            c.add(name, vec![("rank", "0".to_string())], s);
        }
        let mut out = String::new();
        c.render_into(&mut out);
        assert!(out.contains(&format!("# TYPE {name} counter")), "{out}");
        assert!(
            out.contains(&format!("{name}{{run_id=\"r\\\"1\",rank=\"0\"}} 0.75")),
            "{out}"
        );
    }
}
