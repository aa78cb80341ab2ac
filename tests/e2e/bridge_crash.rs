//! The bridge's promise: a transaction a terminal saw accepted is in Kafka, whatever happens to
//! the bridge. 20,000 transactions from 50 terminals; the bridge is SIGKILLed at a random point
//! and restarted on its persistent MQTT session.

use posflow_e2e::*;
use posflow_runtime::Secret;
use posflow_schema::{Decoder, TransactionReceived};
use posflow_simulator::{fleet, plan};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bridge_killed_mid_stream_loses_no_acknowledged_transaction() {
    let d = Deployment::new().await;
    let mut bridge = d.start_bridge(5).await;
    let run_id = format!("crash{:08x}", rand::random::<u32>());
    let cfg = plan::FleetConfig {
        terminals: 50,
        per_terminal: 400,
        merchants: 10,
        invalid_every: 0,
        seed: 7,
        first_terminal: 201,
        run_id,
    };
    let fleet_plan = plan::plan(&cfg, posflow_schema::now_millis());
    let total = 20_000;
    let progress = Arc::new(fleet::Progress::default());
    let publisher = {
        let (mqtt, pw, progress) = (
            d.stack.mqtt_args(),
            Secret::new(&d.stack.terminal_password),
            progress.clone(),
        );
        let opts = fleet::PublishOptions {
            rate_per_terminal: 0.0,
            retry_after: Duration::from_secs(15),
            deadline: Duration::from_secs(300),
            await_answers: true,
        };
        tokio::spawn(async move { fleet::run(&mqtt, &pw, fleet_plan, &opts, progress).await })
    };

    // Kill at a random point between 10% and 60% of the answers.
    let kill_at = 2_000 + u64::from(rand::random::<u16>()) % 10_000;
    while progress.accepted.load(Ordering::Relaxed) < kill_at {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bridge.kill();
    let at_kill = progress.accepted.load(Ordering::Relaxed);
    let _bridge = d.restart_bridge(5).await;

    let report = publisher.await.unwrap().unwrap();
    assert!(
        report.unanswered.is_empty(),
        "{} unanswered",
        report.unanswered.len()
    );
    let accepted: HashSet<&str> = report
        .answers
        .iter()
        .filter(|(_, a)| *a == "accepted")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(accepted.len(), total);

    let raw = read_topic(
        &d.stack.brokers,
        &d.topic("pos.transactions.raw"),
        total,
        Duration::from_secs(60),
        Duration::from_secs(3),
    );
    let decoder = Decoder::<TransactionReceived>::new(d.kafka.registry());
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut first_seq: HashMap<String, i64> = HashMap::new();
    let mut ordered = raw.clone();
    ordered.sort_by_key(|r| (r.partition, r.offset));
    let mut out_of_order = 0;
    for r in &ordered {
        let t = decoder.decode(&r.value).await.unwrap().transaction;
        let n = seen.entry(t.transaction_id.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            // First occurrences of a terminal's transactions are in publish order.
            if let Some(prev) = first_seq.insert(t.terminal_id.clone(), t.sequence) {
                if t.sequence < prev {
                    out_of_order += 1;
                }
            }
        }
    }
    let missing = accepted
        .iter()
        .filter(|id| !seen.contains_key(**id))
        .count();
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    println!(
        "bridge crash: killed after {at_kill} answers; raw records {}, distinct {}, missing {missing}, duplicates {duplicates}, republished by terminals {}",
        raw.len(),
        seen.len(),
        report.republished
    );
    assert_eq!(missing, 0, "acknowledged transactions missing from Kafka");
    assert_eq!(seen.len(), total);
    assert_eq!(
        out_of_order, 0,
        "a terminal's transactions out of publish order"
    );
    assert_eq!(
        raw.iter().map(|r| luhn_runs(&r.value).len()).sum::<usize>(),
        0,
        "card number in the raw topic"
    );
}
