//! A store-and-forward flush (issue 23): `terminals` come back online at once, each with
//! `per_terminal` offline sales in its reference-client queue, against the same volume sent as
//! steady traffic at the contract's rate. Both through the bridge with its production rate
//! limit (20 a second, a burst of 200, reject) and the validator.
//!
//! A flush is legitimate burst traffic, and the limiter's burst allowance is what tells it from
//! a runaway terminal: a terminal may send 200 at once, then 20 a second. A flush of up to 200
//! passes whole and a longer one is paced; a terminal that never stops is held to 20 a second.
//! The reference client keeps 32 unanswered and retries a `RATE_LIMITED` one later, so nothing
//! the contract allows is lost, only paced (`rate_limited` counts how often it was).

use posflow_e2e::*;
use posflow_runtime::Secret;
use posflow_simulator::fleet;
use posflow_terminal::flush::flush;
use posflow_terminal::queue::{Caps, Queue};
use posflow_terminal::sale::Sale;
use posflow_terminal::sender::{SendOptions, Sent};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Figures {
    /// Transactions answered by the bridge per second, and validated per second (first
    /// publish to the last one done).
    pub steady: (f64, f64),
    pub flush: (f64, f64),
    /// Summed over the flush's terminals.
    pub flushed: Sent,
}

const LIMIT: [&str; 6] = [
    "--rate-limit",
    "20",
    "--rate-limit-burst",
    "200",
    "--rate-limit-policy",
    "reject",
];

/// Waits until the validator has validated `n` transactions in all.
async fn validated(validator: &Service, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let page = validator.metrics().await;
        if metric(&page, "posflow_validator_validated_total").unwrap_or(0.0) as u64 >= n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "validator short of {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(terminals: usize, per_terminal: usize) -> anyhow::Result<Figures> {
    let total = (terminals * per_terminal) as u64;
    let d = Deployment::kafka_only().await;
    let _bridge = d.start_bridge_with(5, &LIMIT).await;
    let mut env = d.env();
    env.push(("POSFLOW_LOG".into(), "warn".into()));
    let validator = Service::start("posflow-validator", &env, &[]).await;
    let password = Secret::new(&d.stack.terminal_password);

    eprintln!("[bench] flush: steady, {terminals} terminals x {per_terminal} at 20/s each ...");
    let started = Instant::now();
    let report = fleet::run(
        &d.stack.mqtt_args(),
        &password,
        crate::bridge::fleet_for("flst", 101, terminals, per_terminal),
        &fleet::PublishOptions {
            rate_per_terminal: 20.0,
            retry_after: Duration::from_secs(30),
            deadline: Duration::from_secs(300),
            await_answers: true,
        },
        Arc::default(),
    )
    .await?;
    let answered = started.elapsed();
    anyhow::ensure!(
        report.accepted() as u64 == total,
        "steady: {:?}",
        report.rejected_by_reason()
    );
    validated(&validator, total).await?;
    let steady = (
        total as f64 / answered.as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64(),
    );

    eprintln!("[bench] flush: {terminals} offline queues of {per_terminal}, flushed at once ...");
    let now = posflow_schema::now_millis();
    let key = [9u8; 32];
    let mut queues = Vec::new();
    for i in 0..terminals {
        let t = format!("T{:04}", 301 + i);
        let m = merchant_of(&t);
        let dir = std::env::temp_dir().join(format!("posflow-bench-flush-{}-{t}", d.prefix));
        let mut q = Queue::open(&dir, &t, &key, 1)?;
        let caps = Caps {
            max_count: 500,
            max_amount_minor: 25_000,
            max_total_minor: 1_000_000,
        };
        for n in 0..per_terminal as i64 {
            let sale = Sale {
                merchant_id: m.clone(),
                terminal_id: t.clone(),
                // Spread over the last half hour of the outage.
                time_ms: now - 1_800_000 + n * 1_800_000 / per_terminal as i64,
                amount_minor: 1234,
                currency: "EUR".into(),
                entry_mode: "contactless".into(),
                pan: Some(TEST_PAN.into()),
                response_code: "00".into(),
                auth_code: None,
                mcc: "5814".into(),
                location: None,
                offline_since: Some(now - 1_860_000),
            };
            q.capture(1234, "EUR", &caps, |id, seq| sale.payload(id, seq))?;
        }
        queues.push((t, m, q, dir));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (t, m, mut q, dir) in queues {
        let mut o = d.stack.mqtt_args().options(&t, &password)?;
        o.set_clean_start(true);
        tasks.push(tokio::spawn(async move {
            let opts = SendOptions {
                retry_after: Duration::from_secs(10),
                in_flight: 32,
                deadline: Duration::from_secs(300),
                ..SendOptions::default()
            };
            let r = flush(&mut q, o, &m, &t, &opts, |_| {}).await;
            let _ = std::fs::remove_dir_all(dir);
            r
        }));
    }
    let mut flushed = Sent::default();
    for task in tasks {
        flushed.add(&task.await??);
    }
    let answered = started.elapsed();
    anyhow::ensure!(
        flushed.accepted == total && flushed.unanswered == 0,
        "flush: {flushed:?}"
    );
    validated(&validator, 2 * total).await?;
    let flush_rates = (
        total as f64 / answered.as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64(),
    );
    Ok(Figures {
        steady,
        flush: flush_rates,
        flushed,
    })
}
