//! Webhook deliveries per second: the notifier (Kafka → outbox → HTTPS, with outcomes and
//! settlement) next to the receiver's own ceiling — a load generator posting the same signed
//! bodies straight to it with the notifier's own HTTP client and the same concurrency. Both runs
//! use the same in-process HTTPS receiver, which verifies every signature.

use crate::cpu::Cpu;
use crate::stages::{measure, Versus};
use posflow_e2e::notify::{validated, Behaviour, Receiver};
use posflow_e2e::Deployment;
use posflow_notifier::webhook::{Request, Sender};
use posflow_schema::TransactionType;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The notifier's defaults: 8 deliveries in flight per merchant, 256 per replica.
const PER_MERCHANT: usize = 8;

fn secret(m: usize) -> String {
    format!("bench-secret-{m:03}-0123456789abcdef")
}

pub async fn webhooks(n: usize, merchants: usize) -> anyhow::Result<Versus> {
    let concurrency = (merchants * PER_MERCHANT).min(256);
    let rx = Receiver::start().await;
    let urls: Vec<String> = (0..merchants)
        .map(|m| rx.merchant(&format!("B{m:03}"), &secret(m), Behaviour::Accept))
        .collect();
    let events: Vec<_> = (0..n)
        .map(|i| {
            validated(
                &format!("wb-{i:08}"),
                &format!("B{:03}", i % merchants),
                TransactionType::Sale,
                100 + i as i64,
                "EUR",
            )
        })
        .collect();

    // The ceiling: `concurrency` workers posting signed bodies like the notifier's.
    eprintln!("[bench] receiver ceiling: {n} signed POSTs, {concurrency} in flight ...");
    let ca = posflow_e2e::local_tls_dir().join("ca.crt");
    // The receiver listens on loopback: allow exactly that, as the local stack does.
    let loopback = posflow_notifier::egress::Egress::parse("127.0.0.1/32").expect("a network");
    let sender = Sender::new(Some(&ca), Duration::from_secs(10), concurrency, loopback)?;
    let bodies: Arc<Vec<(usize, String, Vec<u8>)>> = Arc::new(
        events
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let body = serde_json::to_vec(&serde_json::json!({"event_type": "transaction", "transaction": {"transaction_id": v.transaction.transaction_id, "amount_minor": v.transaction.amount_minor}})).unwrap();
                (i % merchants, format!("key-{i:08}"), body)
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let base = rx.accepted();
    let cpu = Cpu::now(None);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (sender, bodies, next, urls) =
                (sender.clone(), bodies.clone(), next.clone(), urls.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((m, key, body)) = bodies.get(i) else {
                        break;
                    };
                    let s = secret(*m);
                    sender
                        .send(&Request {
                            url: &urls[*m],
                            secrets: &[s.as_bytes()],
                            idempotency_key: key,
                            event_type: "transaction",
                            attempt: 1,
                            content_type: "application/json",
                            body,
                        })
                        .await;
                }
            })
        })
        .collect();
    let ceiling = measure(n as u64, "receiver ceiling", || {
        let v = (rx.accepted() - base) as u64;
        async move { v }
    })
    .await;
    for w in workers {
        let _ = w.await;
    }
    let ceiling_cpu = Cpu::now(None).per_unit_since(&cpu, n as u64);

    // posflow: the events on the validated topic first, then the notifier drains them.
    let d = Deployment::kafka_only().await.with_own_schema().await;
    let prefs: String = (0..merchants)
        .map(|m| {
            format!(
                "[merchants.B{m:03}]\nwebhook_url = \"{}\"\nwebhook_secret = \"{}\"\n",
                urls[m],
                secret(m)
            )
        })
        .collect();
    d.apply_merchants(&prefs);
    eprintln!(
        "[bench] notifier: producing {n} validated transactions for {merchants} merchants ..."
    );
    d.produce("pos.transactions.validated", &events, |v| {
        v.transaction.transaction_id.clone()
    })
    .await;
    let base = rx.accepted();
    // From before the notifier exists: its own CPU counts from zero, start-up included.
    let cpu = Cpu::now(None);
    let notifier = d
        .start_notifier(
            "bench",
            &["--merchant-rate", "100000", "--log-level", "warn"],
        )
        .await;
    crate::pin::stage_started(notifier.child.id());
    let rate = measure(n as u64, "notifier", || {
        let v = (rx.accepted() - base) as u64;
        async move { v }
    })
    .await;
    let notifier_cpu = Cpu::now(Some(notifier.child.id())).per_unit_since(&cpu, n as u64);
    // Where the notifier's time went, from its own histograms.
    let page = notifier.metrics().await;
    for (name, labels) in [
        ("posflow_notifier_claim_seconds", ""),
        ("posflow_notifier_attempt_seconds", "{channel=\"webhook\"}"),
        ("posflow_processing_seconds", "{stage=\"notifier\"}"),
    ] {
        let sum = posflow_e2e::metric(&page, &format!("{name}_sum{labels}")).unwrap_or(0.0);
        let count = posflow_e2e::metric(&page, &format!("{name}_count{labels}")).unwrap_or(0.0);
        eprintln!(
            "[bench] notifier {name}: {count} x {:.2} ms on average",
            1000.0 * sum / count.max(1.0)
        );
    }
    drop(notifier);
    Ok(Versus {
        ceiling,
        ceiling_cpu,
        stage: rate,
        stage_cpu: notifier_cpu,
    })
}
