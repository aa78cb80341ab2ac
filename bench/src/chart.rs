//! The benchmark's pictures, drawn as SVG from a run's JSON (so any run's file can be drawn
//! again): the latency-over-load picture (end-to-end p50, p99 and p99.9 at each load of the
//! `e2e` scenario) and fraud's blind time after a kill against the horizon's records (the
//! `recovery` scenario). Plain SVG, no script, no dependency: BENCHMARKS.md shows them.

use serde_json::Value;
use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 420.0;
/// Plot area: left, top, right, bottom.
const PLOT: [f64; 4] = [70.0, 50.0, 600.0, 360.0];

/// One load of the run: offered fraction of the maximum, achieved tx/s, p50, p99, p99.9 in ms.
struct Point {
    fraction: f64,
    rate: f64,
    ms: [f64; 3],
}

fn points(run: &Value) -> Vec<Point> {
    let loads = run["details"]["e2e"]["loads"].as_array();
    loads
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let lat = &l["achieved"]["latency_ms"];
            Some(Point {
                fraction: l["fraction_of_max"].as_f64()?,
                rate: l["achieved"]["tx_per_s"].as_f64()?,
                ms: [
                    lat["p50"].as_f64()?,
                    lat["p99"].as_f64()?,
                    lat["p99_9"].as_f64()?,
                ],
            })
        })
        .collect()
}

/// Data to pixels: achieved tx/s along x (linear), milliseconds up y (log, from 1 ms).
struct Scale {
    max_rate: f64,
    decades: f64,
}

impl Scale {
    fn x(&self, rate: f64) -> f64 {
        let [l, _, r, _] = PLOT;
        l + (r - l) * rate / (self.max_rate * 1.05)
    }
    fn y(&self, ms: f64) -> f64 {
        let [_, t, _, b] = PLOT;
        b - (b - t) * ms.max(1.0).log10() / self.decades
    }
}

/// The chart, or `None` when the run has no end-to-end loads.
pub fn latency_over_load(run: &Value, targets: &[(f64, f64, f64)]) -> Option<String> {
    let pts = points(run);
    if pts.is_empty() {
        return None;
    }
    let max_rate = run["details"]["e2e"]["max_tx_per_s"]
        .as_f64()
        .unwrap_or(0.0)
        .max(pts.iter().map(|p| p.rate).fold(1.0, f64::max));
    let top_ms = pts.iter().flat_map(|p| p.ms).fold(1.0, f64::max);
    // Up to the next power of ten above the slowest figure.
    let sc = Scale {
        max_rate,
        decades: top_ms.log10().ceil().max(1.0),
    };
    let mut s = String::new();
    frame(&mut s, run, &sc, &pts);
    series(&mut s, &sc, &pts);
    target_marks(&mut s, &sc, &pts, targets);
    s += "</svg>\n";
    Some(s)
}

/// Title, the grid with its millisecond labels, one tick per load.
fn frame(s: &mut String, run: &Value, sc: &Scale, pts: &[Point]) {
    let [l, t, r, b] = PLOT;
    let machine = &run["machine"];
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{l}" y="22" font-size="15" font-weight="bold">End to end, terminal publish → row committed: latency over load</text>
<text x="{l}" y="38" fill="#555">commit {} · {} CPUs · {} · maximum sustained {:.0} tx/s · log scale</text>
"##,
        machine["commit"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["date"].as_str().unwrap_or("?"),
        sc.max_rate,
    );
    for d in 0..=sc.decades as i32 {
        let ms = 10f64.powi(d);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" x2="{r}" y1="{0:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{1}" y="{2:.1}" text-anchor="end">{ms} ms</text>"##,
            sc.y(ms),
            l - 6.0,
            sc.y(ms) + 4.0
        );
    }
    for p in pts {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{t}" y2="{b}" stroke="#eee"/><text x="{0:.1}" y="{1}" text-anchor="middle">{2:.0}%</text><text x="{0:.1}" y="{3}" text-anchor="middle" fill="#555">{4:.0}</text>"##,
            sc.x(p.rate),
            b + 16.0,
            p.fraction * 100.0,
            b + 30.0,
            p.rate
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{0}" y="{1}" text-anchor="middle">offered load (% of maximum) · achieved tx/s</text>"##,
        (l + r) / 2.0,
        b + 50.0
    );
}

/// A legend entry at row `i` of the legend.
fn legend(s: &mut String, i: usize, name: &str, stroke: &str) {
    let [_, t, r, _] = PLOT;
    let ly = t + 20.0 * i as f64;
    let _ = writeln!(
        s,
        r##"<line x1="{0}" x2="{1}" y1="{ly}" y2="{ly}" {stroke}/><text x="{2}" y="{3}">{name}</text>"##,
        r + 20.0,
        r + 45.0,
        r + 50.0,
        ly + 4.0
    );
}

/// p50, p99 and p99.9 as lines through a point per load (each with its figure as a tooltip).
fn series(s: &mut String, sc: &Scale, pts: &[Point]) {
    let lines = [
        ("p50", "#1f77b4", ""),
        ("p99", "#d62728", ""),
        ("p99.9", "#888", "4 3"),
    ];
    for (i, (name, colour, dash)) in lines.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", sc.x(p.rate), sc.y(p.ms[i])))
            .collect();
        let stroke = format!(r#"stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}""#);
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" {stroke}/>"##,
            path.join(" ")
        );
        for p in pts {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{name} at {:.0}%: {:.1} ms</title></circle>"##,
                sc.x(p.rate),
                sc.y(p.ms[i]),
                p.fraction * 100.0,
                p.ms[i]
            );
        }
        legend(s, i, name, &stroke);
    }
}

/// Each target as a short green bar at its load and bound, labelled.
fn target_marks(s: &mut String, sc: &Scale, pts: &[Point], targets: &[(f64, f64, f64)]) {
    const GREEN: &str = r##"stroke="#2ca02c" stroke-width="3""##;
    for (k, &(fraction, pct, at_most)) in targets.iter().enumerate() {
        let Some(p) = pts.iter().find(|p| p.fraction == fraction) else {
            continue;
        };
        let (cx, cy) = (sc.x(p.rate), sc.y(at_most));
        let name = if pct == 0.5 { "p50" } else { "p99" };
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" x2="{1:.1}" y1="{cy:.1}" y2="{cy:.1}" {GREEN}/><text x="{1:.1}" y="{2:.1}" fill="#2ca02c" font-size="11">target {name} ≤ {at_most} ms</text>"##,
            cx - 14.0,
            cx + 14.0,
            cy - 4.0 - 10.0 * (k % 2) as f64
        );
    }
    legend(s, 3, "target", GREEN);
}

/// Fraud's blind time after a kill against the card transactions in its horizon: reopening
/// the local store, restoring the state topic's horizon, and judging the input's horizon
/// again (the same run's baseline), with the issue's 10 s bound. `None` when the run has no
/// recovery points.
pub fn blind_over_horizon(run: &Value) -> Option<String> {
    let pts: Vec<(f64, f64, f64, f64)> = run["details"]["recovery"]
        .as_array()?
        .iter()
        .filter_map(|p| {
            Some((
                p["records"].as_f64()?,
                p["blind_s"].as_f64()?,
                p["blind_replaying_s"].as_f64()?,
                p["blind_local_s"].as_f64()?,
            ))
        })
        .collect();
    let max_n = pts.iter().map(|p| p.0).fold(0.0, f64::max);
    if max_n <= 0.0 {
        return None;
    }
    let [l, t, r, b] = PLOT;
    let max_s = pts.iter().map(|p| p.1.max(p.2)).fold(10.0, f64::max) * 1.1;
    let x = |n: f64| l + (r - l) * n / (max_n * 1.05);
    let y = |secs: f64| b - (b - t) * secs / max_s;
    let mut s = String::new();
    let machine = &run["machine"];
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{l}" y="22" font-size="15" font-weight="bold">Fraud: blind after a SIGKILL, against its horizon</text>
<text x="{l}" y="38" fill="#555">commit {} · {} CPUs · {} · until 16 new transactions' alerts committed · target ≤ 10 s</text>
"##,
        machine["commit"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["date"].as_str().unwrap_or("?"),
    );
    let step = if max_s > 20.0 { 5.0 } else { 2.0 };
    let mut secs = 0.0;
    while secs <= max_s {
        let _ = writeln!(
            s,
            r##"<line x1="{l}" x2="{r}" y1="{0:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{1}" y="{2:.1}" text-anchor="end">{secs} s</text>"##,
            y(secs),
            l - 6.0,
            y(secs) + 4.0
        );
        secs += step;
    }
    for p in &pts {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{:.2} M</text>"##,
            x(p.0),
            b + 16.0,
            p.0 / 1e6
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{0}" y="{1}" text-anchor="middle">card transactions in the horizon (millions)</text>"##,
        (l + r) / 2.0,
        b + 36.0
    );
    type Pick = fn(&(f64, f64, f64, f64)) -> f64;
    let lines: [(&str, &str, Pick); 3] = [
        ("local store", "#d62728", |p| p.3),
        ("state topic", "#1f77b4", |p| p.1),
        ("input again", "#888", |p| p.2),
    ];
    for (i, (name, colour, pick)) in lines.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(pick(p))))
            .collect();
        let stroke = format!(r#"stroke="{colour}" stroke-width="2""#);
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" {stroke}/>"##,
            path.join(" ")
        );
        for p in &pts {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{name}, {:.0} records: {:.2} s</title></circle>"##,
                x(p.0),
                y(pick(p)),
                p.0,
                pick(p)
            );
        }
        legend(&mut s, i, name, &stroke);
    }
    const GREEN: &str = r##"stroke="#2ca02c" stroke-width="2" stroke-dasharray="6 4""##;
    let _ = writeln!(
        s,
        r##"<line x1="{l}" x2="{r}" y1="{0:.1}" y2="{0:.1}" {GREEN}/>"##,
        y(10.0)
    );
    legend(&mut s, 3, "target", GREEN);
    s.push_str("</svg>\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(f: f64, rate: f64, p50: f64, p99: f64) -> Value {
        json!({"fraction_of_max": f, "achieved": {"tx_per_s": rate, "latency_ms": {"p50": p50, "p99": p99, "p99_9": p99 * 1.2}}})
    }

    #[test]
    fn each_load_is_a_point_on_each_line_and_each_target_is_drawn() {
        let run = json!({"machine": {"commit": "abc1234", "cpus": 2, "date": "2026-12-03"},
            "details": {"e2e": {"max_tx_per_s": 1000.0, "loads": [
                load(0.1, 100.0, 10.0, 20.0), load(0.5, 500.0, 25.0, 90.0), load(1.0, 990.0, 200.0, 900.0)]}}});
        let svg = latency_over_load(&run, &[(0.5, 0.99, 100.0), (0.8, 0.99, 250.0)]).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(svg.matches("<circle").count(), 9);
        assert!(svg.contains("<title>p99 at 50%: 90.0 ms</title>"), "{svg}");
        // The 80% target has no load to stand on in this run: only the 50% one is drawn.
        assert_eq!(svg.matches("target p99").count(), 1);
        assert!(svg.contains("commit abc1234") && svg.contains("1000 ms"));
        assert!(latency_over_load(&json!({"details": {}}), &[]).is_none());
    }

    #[test]
    fn the_recovery_chart_has_its_three_lines_and_the_bound() {
        let run = json!({"machine": {"commit": "abc", "cpus": 2, "date": "d"},
            "details": {"recovery": [
                {"records": 250000, "blind_s": 0.8, "blind_replaying_s": 1.0, "blind_local_s": 0.3},
                {"records": 2000000, "blind_s": 3.1, "blind_replaying_s": 5.0, "blind_local_s": 0.31}]}});
        let svg = blind_over_horizon(&run).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(svg.matches("<circle").count(), 6);
        assert!(
            svg.contains("local store, 2000000 records: 0.31 s"),
            "{svg}"
        );
        assert!(svg.contains("state topic") && svg.contains("2.00 M"));
        assert!(blind_over_horizon(&json!({"details": {}})).is_none());
    }
}
