//! The run's report: throughput and latency per second (from the tables: when each row was
//! stored against when the bridge received it), how long each fault took to recover from, the
//! checks; as JSON, Markdown and an SVG timeline with the fault windows.

use crate::check::Check;
use crate::nemesis::{Event, Fault, Kind};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// One second of the run (seconds from the start of the load).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Second {
    pub s: i32,
    /// Rows stored that second (`transactions` and `rejections`).
    pub rows: i64,
    /// Bridge receipt → row stored, of the rows stored that second: p50 and p99, ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The per-second series of a run whose load began at `t0_ms` (Unix ms).
pub async fn series(db: &tokio_postgres::Client, t0_ms: f64) -> anyhow::Result<Vec<Second>> {
    let q = "SELECT floor((extract(epoch FROM stored_at)::float8 * 1000 - $1::float8) / 1000)::int4 AS s, count(*),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
             FROM (SELECT stored_at, extract(epoch FROM stored_at - received_at)::float8 * 1000 AS ms FROM transactions
                   UNION ALL
                   SELECT stored_at, extract(epoch FROM stored_at - received_at)::float8 * 1000 FROM rejections) x
             GROUP BY 1 ORDER BY 1";
    let rows = db.query(q, &[&t0_ms]).await?;
    Ok(rows
        .iter()
        .map(|r| Second {
            s: r.get(0),
            rows: r.get(1),
            p50_ms: r.get(2),
            p99_ms: r.get(3),
        })
        .collect())
}

/// Rows stored within this of their receipt: the pipeline keeping up. Above it, a backlog.
pub const KEEPING_UP_MS: f64 = 2_000.0;

/// What one fault did to the pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Impact {
    /// Rows per second while the fault lasted, and in the 30 s after it was undone.
    pub rows_per_s_during: f64,
    pub rows_per_s_after: f64,
    /// Whether a second fell behind (no rows, or rows beyond [`KEEPING_UP_MS`]) within 40 s.
    pub fell_behind: bool,
    /// Seconds from the fault until rows were again stored within [`KEEPING_UP_MS`] of receipt
    /// for 5 s running (`None`: it never fell behind, or had not recovered when the load ended).
    pub recovered_after_s: Option<f64>,
    /// No other fault from 5 s before it to 30 s after it was undone: the recovery is its own.
    pub isolated: bool,
}

fn mean_rows(series: &[Second], from: f64, to: f64) -> f64 {
    let (a, b) = (from.floor() as i32, to.ceil() as i32);
    let total: i64 = series
        .iter()
        .filter(|x| x.s >= a && x.s < b)
        .map(|x| x.rows)
        .sum();
    total as f64 / f64::from((b - a).max(1))
}

/// A second is keeping up if rows were stored in it, all within the bound.
fn keeping_up(series: &[Second], s: i32) -> bool {
    series
        .iter()
        .find(|x| x.s == s)
        .is_some_and(|x| x.rows > 0 && x.p99_ms <= KEEPING_UP_MS)
}

/// The impact of each event; `load_end`: seconds of load (after it, no second keeps up).
pub fn impacts(series: &[Second], events: &[Event], load_end: f64) -> Vec<Impact> {
    let last = load_end as i32;
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let start = e.began_s.floor() as i32;
            let behind = (start..(start + 40).min(last)).find(|s| !keeping_up(series, *s));
            let recovered_after_s = behind.and_then(|b| {
                (b..last - 5)
                    .find(|r| (*r..r + 5).all(|s| keeping_up(series, s)))
                    .map(|r| f64::from(r) - e.began_s)
            });
            let isolated = events.iter().enumerate().all(|(j, o)| {
                i == j || o.ended_s + 30.0 < e.began_s - 5.0 || o.began_s > e.ended_s + 30.0
            });
            Impact {
                rows_per_s_during: mean_rows(series, e.began_s, e.ended_s),
                rows_per_s_after: mean_rows(series, e.ended_s, e.ended_s + 30.0),
                fell_behind: behind.is_some(),
                recovered_after_s,
                isolated,
            }
        })
        .collect()
}

/// Per kind of fault: how many, and the recovery times (median, longest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KindSummary {
    pub kind: Kind,
    pub label: String,
    pub count: usize,
    pub with_backlog: usize,
    pub recovered_median_s: Option<f64>,
    pub recovered_max_s: Option<f64>,
    pub rows_per_s_during: f64,
    pub rows_per_s_after: f64,
}

pub fn by_kind(events: &[(Event, Impact)]) -> Vec<KindSummary> {
    Kind::ALL
        .iter()
        .map(|&kind| {
            let of: Vec<&(Event, Impact)> = events.iter().filter(|(e, _)| e.kind == kind).collect();
            let mut rec: Vec<f64> = of.iter().filter_map(|(_, i)| i.recovered_after_s).collect();
            let with_backlog = of.iter().filter(|(_, i)| i.fell_behind).count();
            rec.sort_by(f64::total_cmp);
            let mean = |f: &dyn Fn(&Impact) -> f64| {
                of.iter().map(|(_, i)| f(i)).sum::<f64>() / of.len().max(1) as f64
            };
            KindSummary {
                kind,
                label: kind.label().into(),
                count: of.len(),
                with_backlog,
                recovered_median_s: rec.get(rec.len() / 2).copied(),
                recovered_max_s: rec.last().copied(),
                rows_per_s_during: mean(&|i| i.rows_per_s_during),
                rows_per_s_after: mean(&|i| i.rows_per_s_after),
            }
        })
        .collect()
}

/// Events that overlap at least one other.
pub fn overlapping(events: &[Event]) -> usize {
    events
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            events
                .iter()
                .enumerate()
                .any(|(j, b)| *i != j && a.began_s < b.ended_s && b.began_s < a.ended_s)
        })
        .count()
}

/// The whole report.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub seed: u64,
    pub seconds: u64,
    pub offered_tx_per_s: f64,
    pub terminals: usize,
    pub kafka_nodes: u32,
    /// `mosquitto` or `hivemq`.
    #[serde(default = "mosquitto")]
    pub mqtt_broker: String,
    pub bridge_defect: bool,
    pub started_at: String,
    pub transactions_planned: usize,
    pub published: u64,
    pub republished: u64,
    pub passed: bool,
    pub checks: Vec<Check>,
    pub schedule: Vec<Fault>,
    pub events: Vec<Event>,
    pub impacts: Vec<Impact>,
    pub overlapping_faults: usize,
    pub by_kind: Vec<KindSummary>,
    /// Replicas that exited by themselves and were started again (a supervisor's restarts).
    pub exited: Vec<String>,
    pub series: Vec<Second>,
}

fn mosquitto() -> String {
    "mosquitto".into()
}

/// The report as Markdown (the checks, recovery per kind, every fault).
pub fn markdown(r: &Report, svg_name: &str) -> String {
    let mut m = String::new();
    let verdict = if r.passed {
        "**balanced**"
    } else {
        "**NOT balanced**"
    };
    let defect = if r.bridge_defect {
        " **Bridges started with the test defect `answer-before-kafka`.**"
    } else {
        ""
    };
    let _ = writeln!(m, "# Chaos run, seed {}: {verdict}\n", r.seed);
    let _ = writeln!(
        m,
        "{} s of load at {} tx/s from {} terminals on a {}-node Kafka and {}, started {}; {} transactions, \
         {} published ({} republished by terminals without an answer). {} faults, {} overlapping another.{defect}\n",
        r.seconds, r.offered_tx_per_s, r.terminals, r.kafka_nodes, r.mqtt_broker, r.started_at, r.transactions_planned,
        r.published, r.republished, r.events.len(), r.overlapping_faults,
    );
    let _ = writeln!(
        m,
        "![throughput and latency over the run, fault windows shaded]({svg_name})\n"
    );
    checks_table(&mut m, &r.checks);
    recovery_tables(&mut m, r);
    events_table(&mut m, r);
    m
}

fn checks_table(m: &mut String, checks: &[Check]) {
    let _ = writeln!(m, "| check | rule | expected | found | missing | duplicates | spurious | |\n|---|---|---:|---:|---:|---:|---:|---|");
    for c in checks {
        let dup = if c.duplicates_allowed {
            format!("({} allowed)", c.duplicates)
        } else {
            c.duplicates.to_string()
        };
        let verdict = if c.passed() { "ok" } else { "**FAIL**" };
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {dup} | {} | {verdict} |",
            c.name, c.rule, c.expected, c.found, c.missing, c.spurious
        );
    }
}

/// Recovery per kind, then the faults that had the pipeline to themselves.
fn recovery_tables(m: &mut String, r: &Report) {
    let _ = writeln!(m, "\nRecovery: seconds from the fault until rows were again stored within {} s of the bridge receiving them, 5 s running.\n", KEEPING_UP_MS / 1000.0);
    let _ = writeln!(m, "| fault | count | put the pipeline behind | recovered after (median / longest) | rows/s during | rows/s 30 s after |\n|---|---:|---:|---|---:|---:|");
    let secs = |v: Option<f64>| v.map(|x| format!("{x:.0} s")).unwrap_or_else(|| "—".into());
    for k in &r.by_kind {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} / {} | {:.0} | {:.0} |",
            k.label,
            k.count,
            k.with_backlog,
            secs(k.recovered_median_s),
            secs(k.recovered_max_s),
            k.rows_per_s_during,
            k.rows_per_s_after
        );
    }
    let solo: Vec<_> = r
        .events
        .iter()
        .zip(&r.impacts)
        .filter(|(_, i)| i.isolated)
        .collect();
    if solo.is_empty() {
        return;
    }
    let _ = writeln!(
        m,
        "\nFaults with nothing else from 5 s before to 30 s after (offered {} tx/s):\n",
        r.offered_tx_per_s
    );
    let _ = writeln!(m, "| at (s) | fault | held (s) | rows/s 30 s before | rows/s during | rows/s 30 s after | back to keeping up after |\n|---:|---|---:|---:|---:|---:|---|");
    for (e, i) in solo {
        let before = mean_rows(&r.series, e.began_s - 30.0, e.began_s);
        let _ = writeln!(
            m,
            "| {:.0} | {} | {:.0} | {before:.0} | {:.0} | {:.0} | {} |",
            e.began_s,
            e.kind.label(),
            e.ended_s - e.began_s,
            i.rows_per_s_during,
            i.rows_per_s_after,
            recovered(i)
        );
    }
}

fn events_table(m: &mut String, r: &Report) {
    let _ = writeln!(m, "\n| # | at (s) | until (s) | fault | target | what happened | recovered after |\n|---:|---:|---:|---|---|---|---|");
    for (i, (e, imp)) in r.events.iter().zip(&r.impacts).enumerate() {
        let _ = writeln!(
            m,
            "| {} | {:.1} | {:.1} | {} | {} | {} | {} |",
            i + 1,
            e.began_s,
            e.ended_s,
            e.kind.label(),
            e.target,
            e.note,
            recovered(imp)
        );
    }
    if !r.exited.is_empty() {
        let _ = writeln!(m, "\nReplicas that exited by themselves (started again):\n");
        for x in &r.exited {
            let _ = writeln!(m, "- {x}");
        }
    }
}

fn recovered(i: &Impact) -> String {
    match (i.fell_behind, i.recovered_after_s) {
        (false, _) => "never behind".into(),
        (true, Some(s)) => format!("{s:.0} s"),
        (true, None) => "not before the load ended".into(),
    }
}

fn color(k: Kind) -> &'static str {
    match k {
        Kind::StageKill => "#e15759",
        Kind::LeaderKill => "#4e79a7",
        Kind::BrokerHang => "#76b7b2",
        Kind::PostgresRestart => "#f28e2b",
        Kind::MqttKill => "#b07aa1",
        Kind::ScaleDown => "#59a14f",
    }
}

/// Where things go in the picture: seconds across, rows/s in the top panel, p99 latency (log)
/// in the middle one, one lane per kind of fault below.
struct Frame {
    span: f64,
    max_rows: f64,
    decades: f64,
}

const W: f64 = 1000.0;
const LEFT: f64 = 160.0;
const RIGHT: f64 = 980.0;
/// Top and bottom of the rows panel, then of the latency panel; the first lane.
const ROWS_Y: (f64, f64) = (40.0, 200.0);
const LAT_Y: (f64, f64) = (230.0, 390.0);
const LANES_Y: f64 = 410.0;

impl Frame {
    fn x(&self, s: f64) -> f64 {
        LEFT + (RIGHT - LEFT) * s / self.span
    }
    fn rows_y(&self, n: f64) -> f64 {
        ROWS_Y.1 - (ROWS_Y.1 - ROWS_Y.0) * n / self.max_rows
    }
    fn lat_y(&self, ms: f64) -> f64 {
        LAT_Y.1 - (LAT_Y.1 - LAT_Y.0) * ms.max(1.0).log10() / self.decades
    }
    fn height(&self) -> f64 {
        LANES_Y + 18.0 * Kind::ALL.len() as f64 + 40.0
    }
}

/// Throughput (top) and p99 latency (middle, log scale) per second, the fault windows shaded
/// behind both, and one lane per kind of fault below. Plain SVG.
pub fn svg(r: &Report) -> String {
    let f = Frame {
        span: r
            .series
            .last()
            .map_or(1.0, |x| f64::from(x.s) + 1.0)
            .max(r.seconds as f64),
        max_rows: r.series.iter().map(|s| s.rows).max().unwrap_or(1).max(1) as f64 * 1.1,
        decades: r
            .series
            .iter()
            .map(|s| s.p99_ms)
            .fold(1000.0, f64::max)
            .log10()
            .ceil(),
    };
    let h = f.height();
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11"><rect width="{W}" height="{h}" fill="white"/>"#
    );
    let _ = write!(
        out,
        r#"<text x="10" y="20" font-size="14">Chaos run, seed {}: rows stored per second and bridge→row latency (p99), fault windows shaded</text>"#,
        r.seed
    );
    for e in &r.events {
        let (a, b) = (f.x(e.began_s), f.x(e.ended_s));
        let _ = write!(
            out,
            r#"<rect x="{a:.1}" y="{}" width="{:.1}" height="{:.1}" fill="{}" opacity="0.12"/>"#,
            ROWS_Y.0,
            (b - a).max(1.0),
            LAT_Y.1 - ROWS_Y.0,
            color(e.kind)
        );
    }
    out += &lines(&f, &r.series);
    out += &axes(&f);
    out += &lanes(&f, &r.events);
    out += "</svg>";
    out
}

/// The rows/s line (every second drawn: one without rows is 0) and the latency line (broken
/// where no row was stored).
fn lines(f: &Frame, series: &[Second]) -> String {
    let (mut rows, mut p99) = (String::new(), String::new());
    let by_s: std::collections::HashMap<i32, &Second> = series.iter().map(|s| (s.s, s)).collect();
    for s in 0..f.span as i32 {
        let xs = f.x(f64::from(s) + 0.5);
        let second = by_s.get(&s).filter(|x| x.rows > 0);
        let _ = write!(
            rows,
            "{xs:.1},{:.1} ",
            f.rows_y(second.map_or(0, |x| x.rows) as f64)
        );
        match second {
            Some(x) => {
                let _ = write!(p99, "{xs:.1},{:.1} ", f.lat_y(x.p99_ms));
            }
            None if !p99.ends_with('|') => p99.push('|'),
            None => {}
        }
    }
    let mut out =
        format!(r##"<polyline points="{rows}" fill="none" stroke="#333" stroke-width="1.2"/>"##);
    for segment in p99.split('|').filter(|s| !s.trim().is_empty()) {
        let _ = write!(
            out,
            r##"<polyline points="{segment}" fill="none" stroke="#c00" stroke-width="1.2"/>"##
        );
    }
    out
}

/// Both panels' axes and labels, the keeping-up bound, the time axis and the legend.
fn axes(f: &Frame) -> String {
    let (top, bottom) = (ROWS_Y.1, LAT_Y.1);
    let mut out = format!(
        r##"<line x1="{LEFT}" y1="{top}" x2="{RIGHT}" y2="{top}" stroke="#999"/><line x1="{LEFT}" y1="{bottom}" x2="{RIGHT}" y2="{bottom}" stroke="#999"/><text x="{LEFT}" y="{:.0}" text-anchor="end" dx="-6">{:.0} rows/s</text><text x="{LEFT}" y="{top}" text-anchor="end" dx="-6">0</text>"##,
        ROWS_Y.0 + 10.0,
        f.max_rows
    );
    for d in 0..=f.decades as i32 {
        let ms = 10f64.powi(d);
        let label = if ms >= 1000.0 {
            format!("{} s", ms / 1000.0)
        } else {
            format!("{ms} ms")
        };
        let y = f.lat_y(ms);
        let _ = write!(
            out,
            r##"<text x="{LEFT}" y="{:.1}" text-anchor="end" dx="-6">{label}</text><line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#eee"/>"##,
            y + 4.0
        );
    }
    let keep = f.lat_y(KEEPING_UP_MS);
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" y1="{keep:.1}" x2="{RIGHT}" y2="{keep:.1}" stroke="#c00" stroke-dasharray="4 3" opacity="0.6"/><text x="{RIGHT}" y="{:.1}" text-anchor="end" fill="#c00">keeping-up bound</text>"##,
        keep - 3.0
    );
    let step = if f.span > 300.0 { 60.0 } else { 30.0 };
    let mut t = 0.0;
    while t <= f.span {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.0}" text-anchor="middle">{t:.0} s</text>"#,
            f.x(t),
            f.height() - 12.0
        );
        t += step;
    }
    let _ = write!(
        out,
        r##"<text x="{RIGHT}" y="{:.0}" text-anchor="end"><tspan fill="#333">— rows/s</tspan>  <tspan fill="#c00">— p99 latency</tspan></text>"##,
        ROWS_Y.0 - 5.0
    );
    out
}

/// One lane per kind of fault, a bar per fault (its title names the target).
fn lanes(f: &Frame, events: &[Event]) -> String {
    let mut out = String::new();
    for (i, k) in Kind::ALL.iter().enumerate() {
        let y = LANES_Y + 18.0 * i as f64;
        let _ = write!(
            out,
            r#"<text x="{LEFT}" y="{:.1}" text-anchor="end" dx="-6" font-size="10">{}</text>"#,
            y + 11.0,
            k.label()
        );
        for e in events.iter().filter(|e| e.kind == *k) {
            let (a, b) = (f.x(e.began_s), f.x(e.ended_s));
            let _ = write!(
                out,
                r#"<rect x="{a:.1}" y="{y:.1}" width="{:.1}" height="13" fill="{}"><title>{} {} {:.0}–{:.0} s</title></rect>"#,
                (b - a).max(2.0),
                color(*k),
                k.label(),
                e.target,
                e.began_s,
                e.ended_s
            );
        }
    }
    out
}
