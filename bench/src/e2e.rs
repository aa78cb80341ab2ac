//! End to end: terminal publish → row committed in PostgreSQL, through the bridge, validator and
//! storage on the local stack.
//!
//! First the pipeline's maximum sustained rate: a burst from the fleet at full speed, rows
//! committed over the time from the first publish to the last commit. Then steady loads at
//! fractions of it (10% to 100%: the latency-over-load curve, `chart.rs`), paced per terminal, each transaction's latency measured from the moment its
//! terminal published it (this process's clock) to its row's commit time
//! (`pg_xact_commit_timestamp`, the stack runs PostgreSQL with `track_commit_timestamp`; same
//! machine, same clock). Per service and load: CPU seconds per million transactions
//! (/proc/<pid>/stat) and peak resident memory (VmHWM, reset before each load).

use crate::bridge::Figures;
use crate::cpu::cpu_seconds;
use posflow_e2e::{metric, Deployment, Service};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the time goes, from the timestamps on each row: each hop's (p50, p99) in ms.
pub type Hops = BTreeMap<String, [f64; 2]>;

/// The hops, in order: published → bridge received (`received_at`) → validated (`validated_at`)
/// → storage's transaction began (`stored_at`) → committed.
const HOPS: [&str; 4] = [
    "1 terminal -> bridge",
    "2 bridge -> validator",
    "3 validator -> storage write",
    "4 storage write -> commit",
];

pub struct Load {
    pub fraction: f64,
    pub target_per_s: f64,
    pub figures: Figures,
    pub hops: Hops,
    /// Storage's batches during the load: how many, mean rows, mean ms to write one.
    pub storage_batches: [f64; 3],
    pub cpu_s_per_million: BTreeMap<String, f64>,
    pub peak_rss_mib: BTreeMap<String, f64>,
}

impl Load {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"fraction_of_max": self.fraction, "target_tx_per_s": self.target_per_s,
            "achieved": self.figures.json(), "hops_ms_p50_p99": self.hops,
            "storage_batches": {"count": self.storage_batches[0], "mean_rows": self.storage_batches[1], "mean_write_ms": self.storage_batches[2]}, "cpu_s_per_million_tx": self.cpu_s_per_million,
            "peak_rss_mib": self.peak_rss_mib})
    }
}

pub struct Results {
    pub max_per_s: f64,
    pub loads: Vec<Load>,
}

struct Pipeline {
    d: Deployment,
    services: Vec<Service>,
}

impl Pipeline {
    async fn start() -> anyhow::Result<Self> {
        let d = Deployment::new().await.with_own_schema().await;
        let mut env = d.env();
        env.push(("POSFLOW_LOG".into(), "warn".into()));
        let validator = Service::start("posflow-validator", &env, &[]).await;
        let storage = Service::start("posflow-storage", &env, &[]).await;
        posflow_e2e::clear_mqtt_session(&d.stack, "bridge-6", &d.stack.bridge_password).await;
        let bridge = Service::start(
            "posflow-bridge",
            &env,
            &["--bridge-id", "bridge-6", "--session-expiry", "300"],
        )
        .await;
        Ok(Pipeline {
            d,
            services: vec![bridge, validator, storage],
        })
    }

    async fn stored(&self) -> u64 {
        let page = self.services[2].metrics().await;
        metric(&page, "posflow_storage_stored_total").unwrap_or(0.0) as u64
    }

    /// Publishes `per_terminal` transactions from each of `terminals` at `rate` per terminal
    /// (0: full speed) and waits for every row; returns the latency of each and the time from
    /// the first publish to the last row.
    /// Each load has its own terminals (`first`..; the local stack has T0001..T0500, so at most
    /// 6 loads of 50): sequence numbers start again per terminal.
    async fn load(
        &self,
        run: &str,
        first: usize,
        terminals: usize,
        per_terminal: usize,
        rate: f64,
    ) -> anyhow::Result<(Figures, Hops)> {
        let total = (terminals * per_terminal) as u64;
        let before = self.stored().await;
        // This process's monotonic clock, anchored to the wall clock the database uses.
        let (wall0, mono0) = (SystemTime::now(), Instant::now());
        let fleet = self.d.fleet(
            run,
            first,
            terminals,
            per_terminal,
            rate,
            Duration::from_secs(30),
        );
        let progress = fleet.progress.clone();
        let mut fleet = Some(fleet);
        let mut last_report = Instant::now();
        loop {
            let n = self.stored().await - before;
            if n >= total {
                break;
            }
            // Every answer in (or an error): rows may still be on their way.
            if fleet.as_ref().is_some_and(|f| f.is_finished()) {
                let report = fleet.take().expect("fleet").finish().await;
                anyhow::ensure!(
                    report.unanswered.is_empty(),
                    "{run}: {} unanswered",
                    report.unanswered.len()
                );
            }
            if last_report.elapsed() > Duration::from_secs(2) {
                let published = progress.published.load(Ordering::Relaxed);
                eprintln!("[bench]   {run}: published {published}, stored {n}/{total}");
                last_report = Instant::now();
            }
            anyhow::ensure!(
                mono0.elapsed() < Duration::from_secs(600),
                "{run}: stalled at {n}/{total}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = mono0.elapsed();
        if let Some(f) = fleet {
            let report = f.finish().await;
            anyhow::ensure!(
                report.unanswered.is_empty(),
                "{run}: {} unanswered",
                report.unanswered.len()
            );
        }
        let sent: HashMap<String, Instant> = progress.sent_at.lock().unwrap().clone();
        let ids: Vec<String> = sent.keys().cloned().collect();
        let db = posflow_e2e::db(&self.d.stack).await;
        let rows = db
            .query(
                "SELECT k.transaction_id, (extract(epoch FROM pg_xact_commit_timestamp(k.xmin)) * 1e6)::bigint, \
                        (extract(epoch FROM t.received_at) * 1e6)::bigint, \
                        (extract(epoch FROM t.validated_at) * 1e6)::bigint, \
                        (extract(epoch FROM t.stored_at) * 1e6)::bigint \
                 FROM transaction_keys k JOIN transactions t USING (transaction_id, transaction_time) \
                 WHERE k.transaction_id = ANY($1)",
                &[&ids],
            )
            .await?;
        anyhow::ensure!(
            rows.len() as u64 == total,
            "{run}: {} rows of {total}",
            rows.len()
        );
        let wall0_us = wall0.duration_since(UNIX_EPOCH)?.as_micros() as i64;
        let mut latency_us = Vec::with_capacity(rows.len());
        let mut hops: [Vec<u64>; 4] = Default::default();
        for r in rows {
            let id: String = r.get(0);
            let committed_us: Option<i64> = r.get(1);
            let committed_us = committed_us.ok_or_else(|| {
                anyhow::anyhow!("no commit timestamps: PostgreSQL needs track_commit_timestamp = on (make down && make up)")
            })?;
            let published_us = wall0_us + sent[&id].duration_since(mono0).as_micros() as i64;
            latency_us.push((committed_us - published_us).max(0) as u64);
            let (received, validated, stored): (i64, i64, i64) = (r.get(2), r.get(3), r.get(4));
            let points = [published_us, received, validated, stored, committed_us];
            for (hop, w) in hops.iter_mut().zip(points.windows(2)) {
                hop.push((w[1] - w[0]).max(0) as u64);
            }
        }
        Ok((
            Figures {
                count: total as usize,
                elapsed,
                latency_us,
            },
            HOPS.iter()
                .zip(hops)
                .map(|(name, us)| {
                    let f = Figures {
                        count: us.len(),
                        elapsed,
                        latency_us: us,
                    };
                    (name.to_string(), [f.pct(0.5), f.pct(0.99)])
                })
                .collect(),
        ))
    }

    /// CPU seconds each service has used so far.
    fn cpu_s(&self) -> Vec<f64> {
        self.services
            .iter()
            .map(|s| cpu_seconds(s.child.id()))
            .collect()
    }
}

/// Peak resident memory (VmHWM) in MiB, then reset, so the next load has its own peak.
fn take_peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    kib / 1024.0
}

/// The maximum sustained rate from a burst of `terminals` × `burst`, then `secs` seconds at
/// each of `fractions` of it.
pub async fn run(
    terminals: usize,
    burst: usize,
    secs: f64,
    fractions: &[f64],
) -> anyhow::Result<Results> {
    let p = Pipeline::start().await?;
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    eprintln!("[bench] end to end: warm-up, then a burst of {terminals} x {burst} for the maximum rate ...");
    p.load(&format!("w{tag}"), 1, terminals, (burst / 10).max(1), 0.0)
        .await?;
    let (burst_figures, _) = p
        .load(&format!("m{tag}"), 101, terminals, burst, 0.0)
        .await?;
    let max_per_s = burst_figures.rate();
    eprintln!("[bench]   maximum sustained: {max_per_s:.0} tx/s");
    let names = ["posflow-bridge", "posflow-validator", "posflow-storage"];
    let mut loads = Vec::new();
    for (i, &fraction) in fractions.iter().enumerate() {
        let target = max_per_s * fraction;
        let per_terminal_rate = target / terminals as f64;
        let per_terminal = ((per_terminal_rate * secs).round() as usize).max(1);
        eprintln!(
            "[bench] end to end at {:.0}% ({target:.0} tx/s, {secs} s) ...",
            fraction * 100.0
        );
        for s in &p.services {
            take_peak_rss_mib(s.child.id());
        }
        let cpu0 = p.cpu_s();
        let page0 = p.services[2].metrics().await;
        let (figures, hops) = p
            .load(
                &format!("l{}{tag}", (fraction * 100.0) as u32),
                201 + terminals * i,
                terminals,
                per_terminal,
                per_terminal_rate,
            )
            .await?;
        let cpu1 = p.cpu_s();
        let page1 = p.services[2].metrics().await;
        let delta = |series: &str| {
            metric(&page1, series).unwrap_or(0.0) - metric(&page0, series).unwrap_or(0.0)
        };
        let batches = delta("posflow_processing_seconds_count{stage=\"storage\"}");
        let storage_batches = [
            batches,
            delta("posflow_batch_size_sum{stage=\"storage\"}") / batches,
            1000.0 * delta("posflow_processing_seconds_sum{stage=\"storage\"}") / batches,
        ];
        let per_million = 1e6 / figures.count as f64;
        loads.push(Load {
            fraction,
            target_per_s: target,
            cpu_s_per_million: names
                .iter()
                .zip(cpu0.iter().zip(&cpu1))
                .map(|(n, (a, b))| (n.to_string(), (b - a) * per_million))
                .collect(),
            peak_rss_mib: names
                .iter()
                .zip(&p.services)
                .map(|(n, s)| (n.to_string(), take_peak_rss_mib(s.child.id())))
                .collect(),
            figures,
            hops,
            storage_batches,
        });
    }
    Ok(Results { max_per_s, loads })
}
