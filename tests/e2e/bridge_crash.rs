//! The bridge's promise: a transaction a terminal saw accepted is in Kafka, whatever happens to
//! the bridge. 20,000 transactions from 50 terminals; the bridge is SIGKILLed at a random point
//! and restarted on its persistent MQTT session.

use posflow_e2e::*;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bridge_killed_mid_stream_loses_no_acknowledged_transaction() {
    let d = Deployment::new().await;
    let mut bridge = d.start_bridge(5).await;
    let total = 20_000;
    let fleet = d.fleet("crash", 201, 50, 400, 0.0, Duration::from_secs(15));

    // Kill at a random point between 10% and 60% of the answers.
    let kill_at = 2_000 + u64::from(rand::random::<u16>()) % 10_000;
    fleet.answers_reach(kill_at).await;
    bridge.kill();
    let _bridge = d.restart_bridge(5).await;

    let report = fleet.finish_answered().await;
    let accepted = report.accepted_ids();
    assert_eq!(accepted.len(), total);

    let raw = d.raw_transactions(total).await;
    let mut seen: HashMap<&str, u32> = HashMap::new();
    let mut first_seq: HashMap<&str, i64> = HashMap::new();
    let mut out_of_order = 0;
    for (_, rec) in &raw {
        let t = &rec.transaction;
        let n = seen.entry(&t.transaction_id).or_insert(0);
        *n += 1;
        // First occurrences of a terminal's transactions are in publish order (one terminal,
        // one partition).
        if *n == 1
            && first_seq
                .insert(&t.terminal_id, t.sequence)
                .is_some_and(|prev| t.sequence < prev)
        {
            out_of_order += 1;
        }
    }
    let missing = accepted
        .iter()
        .filter(|id| !seen.contains_key(**id))
        .count();
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    println!(
        "bridge crash: killed after {kill_at} answers; raw records {}, distinct {}, missing {missing}, duplicates {duplicates}, republished by terminals {}",
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
        raw.iter()
            .map(|(r, _)| luhn_runs(&r.value).len())
            .sum::<usize>(),
        0,
        "card number in the raw topic"
    );
}
