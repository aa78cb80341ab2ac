//! Fraud's memory under many distinct cards (the e2e and the bench share it).

use crate::*;
use std::time::{Duration, Instant};

/// What fraud's memory did under many distinct cards: resident memory (KiB) and the state-size
/// metric at start, after the stream, and after the windows expired.
#[derive(Debug)]
pub struct FraudMemory {
    pub cards: usize,
    pub rss_kib: [u64; 3],
    pub state_keys: [f64; 3],
}

/// Streams `cards` validated transactions, each on its own card, through a fresh fraud stage,
/// then 8,000 more a day later in event time (past every window), which evicts the rest.
pub async fn fraud_memory(d: &Deployment, cards: usize) -> FraudMemory {
    let mut env = d.env();
    env.push(("POSFLOW_LOG".into(), "warn".into()));
    env.push((
        "POSFLOW_INSTANCE_ID".into(),
        format!("mem-{}", rand::random::<u32>()),
    ));
    let fraud = Service::start("posflow-fraud", &env, &[]).await;
    let keys = |page: &str| metric(page, "posflow_fraud_state_keys").unwrap_or(0.0);
    let judged = |page: &str| {
        metric(page, "posflow_fraud_received_total{input=\"card\"}").unwrap_or(0.0) as usize
    };
    let rss0 = rss_kib(fraud.child.id());
    let keys0 = keys(&fraud.metrics().await);
    let run = format!("mem{:08x}", rand::random::<u32>());
    let t0 = posflow_schema::now_millis() - 3_600_000;
    let stream = |from: usize, n: usize, t: i64| -> Vec<posflow_schema::TransactionValidated> {
        (from..from + n)
            .map(|i| {
                let r = received_sale(
                    &format!("{run}-{i:08}"),
                    &format!("T{:04}", 1 + i % 500),
                    i as i64,
                );
                let mut t_ = r.transaction;
                t_.transaction_time = t + i as i64;
                if let Some(c) = t_.card.as_mut() {
                    c.token = format!("{run}-card-{i}");
                }
                posflow_schema::TransactionValidated {
                    envelope: r.envelope,
                    transaction: t_,
                    validated_at: 0,
                }
            })
            .collect()
    };
    let key = |v: &posflow_schema::TransactionValidated| {
        v.transaction
            .card
            .as_ref()
            .map(|c| c.token.clone())
            .unwrap_or_default()
    };
    let wait = |n: usize| {
        let fraud = &fraud;
        async move {
            let deadline = Instant::now() + Duration::from_secs(900);
            let mut last = Instant::now();
            loop {
                let done = judged(&fraud.metrics().await);
                if done >= n {
                    return;
                }
                if last.elapsed() > Duration::from_secs(5) {
                    eprintln!("[fraud memory] judged {done}/{n}");
                    last = Instant::now();
                }
                assert!(Instant::now() < deadline, "fraud judged only {done} of {n}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut produced = 0;
    while produced < cards {
        let n = (cards - produced).min(50_000);
        d.produce("pos.transactions.validated", &stream(produced, n, t0), key)
            .await;
        produced += n;
    }
    wait(cards).await;
    let rss1 = rss_kib(fraud.child.id());
    let keys1 = keys(&fraud.metrics().await);
    // Past the card horizon in event time (26 h with the defaults: a day and the lateness).
    d.produce(
        "pos.transactions.validated",
        &stream(cards, 8_000, t0 + 28 * 3_600_000),
        key,
    )
    .await;
    wait(cards + 8_000).await;
    let rss2 = rss_kib(fraud.child.id());
    let keys2 = keys(&fraud.metrics().await);
    FraudMemory {
        cards,
        rss_kib: [rss0, rss1, rss2],
        state_keys: [keys0, keys1, keys2],
    }
}
