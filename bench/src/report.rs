//! The results of one `make bench` run: one row per figure, each next to the ceiling (or peer)
//! measured in the same run, the ratio, and the target we hold ourselves to. Printed as a table
//! and written as JSON with the machine's description, so the two always hold the same numbers.

use serde_json::{json, Value};

/// What a figure must reach.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// posflow / baseline at least this.
    RatioAtLeast(f64),
    /// The figure itself at most this (a latency, in the row's unit).
    AtMost(f64),
    /// Reported, no target yet.
    None,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    /// What posflow's figure is, with its unit ("tx/s", "p99 ms").
    pub measure: String,
    pub posflow: f64,
    /// The ceiling or peer, measured in the same run: (what it is, its figure).
    pub baseline: Option<(String, f64)>,
    pub target: Target,
}

impl Row {
    pub fn vs(scenario: &str, measure: &str, posflow: f64, baseline: &str, value: f64) -> Self {
        Row {
            scenario: scenario.into(),
            measure: measure.into(),
            posflow,
            baseline: Some((baseline.into(), value)),
            target: Target::None,
        }
    }

    pub fn alone(scenario: &str, measure: &str, posflow: f64) -> Self {
        Row {
            scenario: scenario.into(),
            measure: measure.into(),
            posflow,
            baseline: None,
            target: Target::None,
        }
    }

    pub fn target(mut self, t: Target) -> Self {
        self.target = t;
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline.as_ref().map(|(_, b)| self.posflow / b)
    }

    /// Whether the target is met; `None` when there is none.
    pub fn met(&self) -> Option<bool> {
        match self.target {
            Target::RatioAtLeast(t) => Some(self.ratio()? >= t),
            Target::AtMost(t) => Some(self.posflow <= t),
            Target::None => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::RatioAtLeast(t) => format!(">= {t}x"),
            Target::AtMost(t) => format!("<= {t}"),
            Target::None => "-".into(),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "measure": self.measure,
            "posflow": self.posflow,
            "baseline": self.baseline.as_ref().map(|(n, _)| n),
            "baseline_value": self.baseline.as_ref().map(|(_, v)| v),
            "ratio": self.ratio(),
            "target": self.target_text(),
            "met": self.met(),
        })
    }
}

/// Every row, and the details each scenario measured beyond its rows (latency percentiles,
/// memory, CPU per service), keyed by scenario.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub details: serde_json::Map<String, Value>,
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<12} {:<34} {:>11}  {:<44} {:>11} {:>7} {:>8} {:>4}\n",
            "scenario", "posflow", "", "baseline (same run)", "", "ratio", "target", "met"
        );
        for r in &self.rows {
            let (bname, bval) = match &r.baseline {
                Some((n, v)) => (n.as_str(), fmt(*v)),
                None => ("", String::new()),
            };
            out += &format!(
                "{:<12} {:<34} {:>11}  {:<44} {:>11} {:>7} {:>8} {:>4}\n",
                r.scenario,
                r.measure,
                fmt(r.posflow),
                bname,
                bval,
                r.ratio().map(|x| format!("{x:.2}")).unwrap_or_default(),
                r.target_text(),
                match r.met() {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "",
                }
            );
        }
        out
    }

    pub fn json(&self, machine: Value, mode: &str) -> Value {
        rounded(json!({
            "machine": machine,
            "mode": mode,
            "rows": self.rows.iter().map(Row::json).collect::<Vec<_>>(),
            "details": self.details,
        }))
    }

    /// What a smoke run checks: every row a finite, positive figure (and baseline).
    pub fn problems(&self) -> Vec<String> {
        let bad = |v: f64| !(v.is_finite() && v > 0.0);
        let mut out = Vec::new();
        for r in &self.rows {
            if bad(r.posflow) || r.baseline.as_ref().is_some_and(|(_, b)| bad(*b)) {
                out.push(format!(
                    "{} / {}: {} vs {:?}",
                    r.scenario, r.measure, r.posflow, r.baseline
                ));
            }
        }
        out
    }
}

/// Every float to 3 decimals: the figures are not that precise, and a file of 17-digit floats
/// is hard to read (and trips card-number scanners).
fn rounded(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            json!((x * 1000.0).round() / 1000.0)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(rounded).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, rounded(v))).collect()),
        other => other,
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// This machine, as the JSON records it: results are only comparable on the same one.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    let mem_kib: Option<u64> = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory_gib": mem_kib.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "load_average_at_start": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "commit": git,
        "date": posflow_schema::rfc3339_millis(posflow_schema::now_millis()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_targets_and_latency_targets_are_judged_on_the_right_figure() {
        let r = Row::vs("storage", "rows/s", 70.0, "COPY", 100.0).target(Target::RatioAtLeast(0.7));
        assert_eq!(r.met(), Some(true));
        let r = Row::vs("storage", "rows/s", 69.0, "COPY", 100.0).target(Target::RatioAtLeast(0.7));
        assert_eq!(r.met(), Some(false));
        let r = Row::alone("e2e", "p99 ms", 51.0).target(Target::AtMost(50.0));
        assert_eq!(r.met(), Some(false));
        assert_eq!(Row::alone("x", "y", 1.0).met(), None);
    }

    #[test]
    fn a_smoke_run_flags_missing_or_zero_figures() {
        let report = Report {
            rows: vec![
                Row::vs("a", "tx/s", 10.0, "b", 20.0),
                Row::vs("c", "tx/s", 10.0, "d", 0.0),
                Row::alone("e", "ms", f64::NAN),
            ],
            details: Default::default(),
        };
        let p = report.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("c / tx/s") && p[1].starts_with("e / ms"));
        let j = report.json(json!({}), "smoke");
        assert_eq!(j["rows"][0]["ratio"], json!(0.5));
        let r = Report {
            rows: vec![Row::vs("a", "tx/s", 2.0, "b", 3.0)],
            details: Default::default(),
        };
        assert_eq!(
            r.json(json!({"n": 7}), "full")["rows"][0]["ratio"],
            json!(0.667)
        );
    }
}
