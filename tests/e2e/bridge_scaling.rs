//! Scaling the bridge: two replicas share the terminals through a shared subscription; one is
//! killed and restarted, then scaled away with SIGTERM (it unsubscribes, so its share moves to
//! the other, and drains) — and no acknowledged transaction is missing. Plus: MQTT 3.1.1
//! terminals, and the per-terminal rate limit in both policies.

use posflow_e2e::*;
use posflow_runtime::Secret;
use posflow_simulator::{fleet, plan};
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_the_load_survive_a_kill_and_a_scale_down() {
    let d = Deployment::new().await;
    let _a = d.start_bridge(5).await;
    let mut b = d.start_bridge(6).await;
    let total = 6_000;
    let fleet = d.fleet("scale", 401, 20, 300, 25.0, Duration::from_secs(15));
    fleet.answers_reach(1_500).await;
    b.kill();
    let mut b = d.restart_bridge(6).await;
    fleet.answers_reach(3_500).await;
    // Scale-down: SIGTERM; the replica unsubscribes, finishes what it was sent, and leaves.
    let exit = b.terminate();
    assert!(exit.success(), "scale-down exit: {exit}");
    assert!(
        b.log_text()
            .contains("drained: nothing left for this replica"),
        "{}",
        b.log_text()
    );

    let report = fleet.finish().await;
    assert!(
        report.unanswered.is_empty(),
        "{} unanswered",
        report.unanswered.len()
    );
    let raw = d.raw_transactions(total).await;
    let mut ids = HashSet::new();
    let mut by_bridge: HashMap<&str, usize> = HashMap::new();
    for (_, rec) in &raw {
        *by_bridge.entry(&rec.envelope.bridge_id).or_default() += 1;
        ids.insert(rec.transaction.transaction_id.as_str());
    }
    let missing = report
        .answers
        .iter()
        .filter(|(id, a)| *a == "accepted" && !ids.contains(id.as_str()))
        .count();
    println!("two replicas: records per bridge {by_bridge:?}; distinct {}, missing {missing}, republished {}", ids.len(), report.republished);
    assert_eq!(missing, 0);
    assert_eq!(ids.len(), total);
    for replica in ["bridge-5", "bridge-6"] {
        assert!(
            by_bridge.get(replica).copied().unwrap_or(0) > total / 10,
            "{replica} took no real share: {by_bridge:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_3_1_1_terminal_is_served_like_an_mqtt_5_one() {
    let d = Deployment::new().await;
    let _bridge = d.start_bridge(5).await;
    let merchant = merchant_of("T0460");
    let payload = valid_payload("v311-1", "T0460", &merchant);
    let out = Command::new("mosquitto_pub")
        .args([
            "-V",
            "mqttv311",
            "-q",
            "1",
            "-h",
            &d.stack.mqtt_host,
            "-p",
            &d.stack.mqtt_port.to_string(),
        ])
        .args([
            "-i",
            "T0460",
            "-u",
            "T0460",
            "-P",
            &d.stack.terminal_password,
            "-t",
            &posflow_mqtt::tx_topic(&merchant, "T0460"),
            "-m",
            &payload,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = d.raw_transactions(1).await;
    assert_eq!(raw.len(), 1);
    let rec = &raw[0].1;
    assert_eq!(
        (
            rec.transaction.transaction_id.as_str(),
            rec.transaction.amount_minor
        ),
        ("v311-1", 100)
    );
    assert!(rec.transaction.card.is_none());
}

/// 30 transactions at once from one terminal whose quota is 5/s with a burst of 10.
async fn burst(
    d: &Deployment,
    terminal: usize,
    retry_after: Duration,
) -> (fleet::Report, Duration) {
    let cfg = plan::FleetConfig {
        terminals: 1,
        per_terminal: 30,
        merchants: 5,
        invalid_every: 0,
        seed: 5,
        first_terminal: terminal,
        run_id: format!("rate{:08x}", rand::random::<u32>()),
    };
    // The terminal republishes what was refused, as firmware does, until everything is in.
    let opts = fleet::PublishOptions {
        rate_per_terminal: 0.0,
        retry_after,
        deadline: Duration::from_secs(60),
        await_answers: true,
    };
    let started = Instant::now();
    let mut report = fleet::run(
        &d.stack.mqtt_args(),
        &Secret::new(&d.stack.terminal_password),
        plan::plan(&cfg, posflow_schema::now_millis()),
        &opts,
        Arc::default(),
    )
    .await
    .unwrap();
    let elapsed = started.elapsed();
    report.unanswered.sort();
    (report, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_terminal_is_rate_limited_by_either_policy() {
    let d = Deployment::new().await;
    let limit = ["--rate-limit", "5", "--rate-limit-burst", "10"];

    let mut reject = d
        .start_bridge_with(
            5,
            &[&limit[..], &["--rate-limit-policy", "reject"]].concat(),
        )
        .await;
    let (report, _) = burst(&d, 450, Duration::from_secs(2)).await;
    let m = reject.metrics().await;
    let refused = metric(&m, r#"posflow_bridge_throttled_total{policy="reject"}"#).unwrap_or(0.0);
    let dead = metric(
        &m,
        r#"posflow_bridge_dead_lettered_total{reason="RATE_LIMITED"}"#,
    )
    .unwrap_or(0.0);
    assert!(
        refused >= 15.0,
        "at most the burst passes at once: {refused} refused"
    );
    assert_eq!(
        dead, refused,
        "every refusal is dead-lettered with its reason"
    );
    assert!(
        report.unanswered.is_empty(),
        "refused transactions get in on retry"
    );
    assert!(report.republished > 0);
    assert!(reject.terminate().success());

    let _delay = d
        .start_bridge_with(6, &[&limit[..], &["--rate-limit-policy", "delay"]].concat())
        .await;
    let (report, elapsed) = burst(&d, 451, Duration::from_secs(20)).await;
    assert!(report.unanswered.is_empty());
    assert_eq!(report.republished, 0, "delayed, not refused");
    assert_eq!(report.accepted(), 30);
    // 10 at once, then 20 at 5/s: about 4 s.
    assert!(
        elapsed >= Duration::from_millis(3_500),
        "delay policy did not slow the terminal: {elapsed:?}"
    );
    let raw = read_topic(
        &d.stack.brokers,
        &d.topic("pos.transactions.raw"),
        60,
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    assert!(
        raw.len() >= 60,
        "both runs' 30 transactions each are in Kafka"
    );
}
