//! Kafka stopped for 30 s mid-stream: the bridge holds back (nothing acknowledged that Kafka
//! does not have), its memory stays bounded, and it recovers by itself when Kafka returns.

use posflow_e2e::*;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_down_for_30_seconds_loses_nothing_and_the_bridge_recovers_alone() {
    let d = Deployment::new().await;
    let mut bridge = d.start_bridge(6).await;
    let pid = bridge.child.id();
    let total = 6_000;
    // 20 terminals x 20/s: the stream outlasts the outage.
    let fleet = d.fleet("outage", 301, 20, 300, 20.0, Duration::from_secs(20));
    fleet.answers_reach(1_000).await;
    let rss_before = rss_kib(pid);
    let (mut rss_max, accepted_at_stop);
    {
        let _outage = Outage::kafka(&d);
        accepted_at_stop = fleet.progress.accepted.load(Ordering::Relaxed);
        let started = Instant::now();
        rss_max = rss_before;
        // The fault lasts 30 s by design; meanwhile, sample memory and readiness.
        let mut unready_seen = false;
        while started.elapsed() < Duration::from_secs(30) {
            rss_max = rss_max.max(rss_kib(pid));
            unready_seen |= http_get(&bridge.http, "/readyz").await.map(|r| r.0) == Some(503);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let accepted_during = fleet.progress.accepted.load(Ordering::Relaxed) - accepted_at_stop;
        // Sends already in librdkafka's buffers when Kafka stopped may still be confirmed in
        // its first seconds; after that nothing may be acknowledged.
        assert!(
            accepted_during < 600,
            "{accepted_during} acknowledged while Kafka was down"
        );
        assert!(unready_seen, "/readyz never reported the outage");
    }
    let report = fleet.finish().await;
    assert!(
        bridge.is_running(),
        "the bridge restarted or died:\n{}",
        bridge.log_text()
    );
    assert!(
        report.unanswered.is_empty(),
        "{} unanswered after Kafka came back",
        report.unanswered.len()
    );

    let raw = d.raw_transactions(total).await;
    let ids: HashSet<&str> = raw
        .iter()
        .map(|(_, t)| t.transaction.transaction_id.as_str())
        .collect();
    let missing = report
        .answers
        .iter()
        .filter(|(id, a)| *a == "accepted" && !ids.contains(id.as_str()))
        .count();
    println!(
        "kafka outage: bridge RSS {rss_before} KiB before, {rss_max} KiB peak during 30 s outage; raw {} records, {} distinct, missing {missing}, republished {}",
        raw.len(),
        ids.len(),
        report.republished
    );
    assert_eq!(missing, 0);
    assert_eq!(ids.len(), total);
    // Bounded: the in-flight window (receive maximum 256) is all the bridge holds.
    assert!(
        rss_max < rss_before + 64 * 1024,
        "bridge memory grew from {rss_before} to {rss_max} KiB"
    );
    assert!(bridge.terminate().success());
}
