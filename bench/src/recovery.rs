//! How long a fraud replica is blind after a crash, against how much card traffic its rules'
//! horizon holds (issue 23, part 4's baseline): `n` validated transactions over the last 20
//! hours (ten per card), judged; the replica SIGKILLed and started again; then one probe per
//! key of 16 new cards. The figure is the time from producing the probes to the last of them
//! judged: every partition rebuilt before its first record is judged. Today a rebuild replays
//! the horizon from Kafka, so it grows with `n`; a checkpoint would bound it by state size.

use posflow_e2e::*;
use posflow_schema::TransactionValidated;
use std::time::{Duration, Instant};

pub struct Recovery {
    pub records: usize,
    pub blind: Duration,
    /// Records the restarted replica replayed to rebuild (its metric).
    pub replayed: u64,
}

fn judged(page: &str) -> u64 {
    metric(page, "posflow_fraud_received_total{input=\"card\"}").unwrap_or(0.0) as u64
}

async fn until_judged(fraud: &Service, n: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut told = Instant::now();
    loop {
        let done = judged(&fraud.metrics().await);
        if done >= n {
            return Ok(());
        }
        if told.elapsed() > Duration::from_secs(10) {
            eprintln!("[bench] recovery: judged {done}/{n}");
            told = Instant::now();
        }
        anyhow::ensure!(Instant::now() < deadline, "fraud judged {done} of {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn records(run: &str, from: usize, to: usize, n: usize, now: i64) -> Vec<TransactionValidated> {
    let span = 20 * 3_600_000;
    (from..to)
        .map(|i| {
            let r = received_sale(
                &format!("{run}-{i:09}"),
                &format!("T{:04}", 1 + i % 500),
                i as i64,
            );
            let mut t = r.transaction;
            t.transaction_time = now - span + (i as i64) * span / n as i64;
            if let Some(c) = t.card.as_mut() {
                c.token = format!("{run}-card-{}", i % (n / 10).max(1));
            }
            TransactionValidated {
                envelope: r.envelope,
                transaction: t,
                validated_at: 0,
            }
        })
        .collect()
}

fn key(v: &TransactionValidated) -> String {
    posflow_validator::validated_key(&v.transaction)
}

pub async fn run(n: usize) -> anyhow::Result<Recovery> {
    let d = Deployment::kafka_only().await;
    let run = format!("rc{:08x}", rand::random::<u32>());
    let now = posflow_schema::now_millis();
    let mut env = d.env();
    env.push(("POSFLOW_LOG".into(), "warn".into()));
    env.push(("POSFLOW_INSTANCE_ID".into(), format!("{run}-0")));
    eprintln!("[bench] recovery: {n} transactions in the horizon ...");
    let mut fraud = Service::start("posflow-fraud", &env, &[]).await;
    for from in (0..n).step_by(100_000) {
        let to = (from + 100_000).min(n);
        d.produce(
            "pos.transactions.validated",
            &records(&run, from, to, n, now),
            key,
        )
        .await;
    }
    until_judged(&fraud, n as u64, Duration::from_secs(1800)).await?;
    fraud.kill();
    let fraud = Service::start("posflow-fraud", &env, &[]).await;
    let probes: Vec<TransactionValidated> = records(&format!("{run}p"), 0, 16, 16, now)
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| {
            v.transaction.transaction_time = now;
            if let Some(c) = v.transaction.card.as_mut() {
                c.token = format!("{run}-probe-{i}");
            }
            v
        })
        .collect();
    let started = Instant::now();
    d.produce("pos.transactions.validated", &probes, key).await;
    until_judged(&fraud, 16, Duration::from_secs(1800)).await?;
    let blind = started.elapsed();
    let replayed =
        metric(&fraud.metrics().await, "posflow_fraud_replayed_total").unwrap_or(0.0) as u64;
    Ok(Recovery {
        records: n,
        blind,
        replayed,
    })
}
