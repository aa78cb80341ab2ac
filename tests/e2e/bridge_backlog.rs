//! Issue 24: a bridge replica that resumes a session holding a large backlog. Mosquitto 2.0
//! resends a resumed session's queue far beyond the client's receive maximum; the bridge must
//! neither deadlock nor hold the backlog in memory, and must get every message into Kafka.
//! Also: liveness that sees a wedged pipeline, and SIGTERM that ends the process whatever the
//! pipeline is waiting on.
//!
//! The backlog is 100,000 in the CI tier (the landed code before issue 24 wedged from about
//! 66,000); `make test-backlog` runs the same tests with 300,000 against release builds.

use posflow_e2e::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Transactions queued for the absent replica: `POSFLOW_E2E_BACKLOG`, 100,000 by default.
fn backlog_size() -> usize {
    std::env::var("POSFLOW_E2E_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

const TERMINALS: usize = 50;
/// The bridge's default `--in-flight` (its receive maximum) and the hand-off's read-gate mark.
const RECEIVE_MAXIMUM: f64 = 256.0;
const HANDOFF_HIGH: f64 = 4.0 * RECEIVE_MAXIMUM;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_session_with_a_huge_backlog_reaches_kafka_whole() {
    let d = Deployment::kafka_only().await;
    // The replica's persistent session holds the shared subscription; then the replica crashes.
    let mut bridge = d.start_bridge(6).await;
    bridge.kill();
    drain_backlog(&d, 6, "backlog5", 301).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_in_a_session_an_mqtt_311_client_began_reaches_kafka_whole() {
    let d = Deployment::kafka_only().await;
    clear_mqtt_session(&d.stack, "bridge-7", &d.stack.bridge_password).await;
    // The same client id subscribes as an MQTT 3.1.1 client (a bridge of an older release, a
    // tool) and leaves its session behind; the backlog then queues in that session.
    subscribe_as_mqtt311(&d, "bridge-7").await;
    drain_backlog(&d, 7, "backlog3", 351).await;
}

/// Queues the backlog for replica `replica` while it is away, starts it, and checks that every
/// transaction of the terminals' ledger is on the raw topic, with the bridge's memory bounded.
async fn drain_backlog(d: &Deployment, replica: u8, name: &str, first_terminal: usize) {
    let n = backlog_size();
    let per_terminal = n / TERMINALS;
    let queued_at = Instant::now();
    let (fleet, ledger) = d.backlog(name, first_terminal, TERMINALS, per_terminal);
    let report = fleet.finish().await;
    assert_eq!(
        report.published as usize, n,
        "the broker took every publish"
    );
    println!(
        "{name}: {n} queued for bridge-{replica} in {:.1} s",
        queued_at.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let bridge = d.restart_bridge(replica).await;
    let pid = bridge.child.id();
    let (mut peak_rss, mut peak_waiting, mut peak_in_flight) = (0u64, 0f64, 0f64);
    let mut last = (0.0, Instant::now());
    loop {
        let page = bridge.metrics().await;
        let acked = metric(&page, "posflow_bridge_acknowledged_total").unwrap_or(0.0);
        peak_rss = peak_rss.max(rss_kib(pid));
        peak_waiting = peak_waiting.max(metric(&page, "posflow_bridge_waiting").unwrap_or(0.0));
        peak_in_flight =
            peak_in_flight.max(metric(&page, "posflow_bridge_in_flight").unwrap_or(0.0));
        if acked >= n as f64 {
            break;
        }
        // Wedged: nothing acknowledged for 60 s (the landed code stopped within a second).
        if acked > last.0 {
            last = (acked, Instant::now());
        }
        assert!(
            last.1.elapsed() < Duration::from_secs(60),
            "bridge-{replica} stalled at {acked} of {n} acknowledged; metrics:\n{}",
            page.lines()
                .filter(|l| l.starts_with("posflow_bridge_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_s = started.elapsed().as_secs_f64();
    let page = bridge.metrics().await;
    let over = metric(&page, "posflow_bridge_over_receive_maximum_total").unwrap_or(0.0);

    let raw = d.raw_transactions(n).await;
    let on_kafka: HashSet<&str> = raw
        .iter()
        .map(|(_, t)| t.transaction.transaction_id.as_str())
        .collect();
    let missing = ledger
        .iter()
        .filter(|p| !on_kafka.contains(p.transaction_id.as_str()))
        .count();

    // The steady state through the same replica: terminals publishing while it runs.
    let steady_n = n / 5;
    let steady_at = Instant::now();
    let steady = d
        .fleet(
            &format!("{name}s"),
            first_terminal,
            TERMINALS,
            steady_n / TERMINALS,
            0.0,
            Duration::from_secs(30),
        )
        .finish()
        .await;
    let steady_s = steady_at.elapsed().as_secs_f64();
    let drain_rate = n as f64 / drained_s;
    let steady_rate = steady.answers.len() as f64 / steady_s;
    println!(
        "{name}: drained {n} in {drained_s:.1} s = {drain_rate:.0} tx/s; steady state {} in {steady_s:.1} s = {steady_rate:.0} tx/s; drain/steady {:.2}; \
         peak RSS {} MiB, peak waiting {peak_waiting}, peak in flight {peak_in_flight}, over receive maximum {over}, missing {missing}",
        steady.answers.len(),
        drain_rate / steady_rate,
        peak_rss / 1024,
    );

    assert_eq!(missing, 0, "transactions of the ledger missing from Kafka");
    assert_eq!(on_kafka.len(), n);
    // Mosquitto floods a resumed session beyond the receive maximum — else this test would not
    // be testing the fix. HiveMQ CE honours it (docs/bridge.md): there, nothing over it.
    if mqtt_broker() == "hivemq" {
        assert_eq!(over, 0.0, "HiveMQ CE sent beyond the receive maximum");
    } else {
        assert!(
            over > 0.0,
            "the broker stayed within the receive maximum: no flood to cope with"
        );
    }
    // Memory bounded by the read gate, not by the backlog: at most the gate's mark (plus one
    // read batch) waits, at most the receive maximum is in flight.
    assert!(
        peak_waiting <= HANDOFF_HIGH + 16.0,
        "hand-off held {peak_waiting}"
    );
    assert!(
        peak_in_flight <= RECEIVE_MAXIMUM,
        "in flight {peak_in_flight}"
    );
    assert!(
        peak_rss < 256 * 1024,
        "bridge RSS peaked at {} MiB",
        peak_rss / 1024
    );
    assert_eq!(steady.answers.len(), steady_n);
}

/// Connects as `client_id` over MQTT 3.1.1 with a persistent session, subscribes to the
/// bridges' shared filter, and leaves without unsubscribing.
async fn subscribe_as_mqtt311(d: &Deployment, client_id: &str) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut o = MqttOptions::new(client_id, &d.stack.mqtt_host, d.stack.mqtt_port);
    o.set_credentials(client_id, &d.stack.bridge_password);
    o.set_clean_session(false);
    let (client, mut ev) = AsyncClient::new(o, 10);
    let filter = format!("$share/{}/{}", d.share_group, posflow_mqtt::tx_filter());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "MQTT 3.1.1 subscribe timed out");
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                client
                    .subscribe(filter.clone(), QoS::AtLeastOnce)
                    .await
                    .unwrap();
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                assert_eq!(
                    ack.return_codes,
                    vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
                );
                break;
            }
            Ok(Err(e)) => panic!("MQTT 3.1.1 connect as {client_id}: {e}"),
            _ => {}
        }
    }
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while ev.poll().await.is_ok() {}
    })
    .await;
}

/// Kafka frozen while a replica resumes a backlog: its pipeline fills and its hand-off closes
/// the read gate. Liveness must fail within the stall timeout; the MQTT connection must stay up
/// meanwhile (pings go out while the socket is not read, for longer than the keep-alive); SIGTERM
/// must end the process within the drain timeout; and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wedged_pipeline_fails_liveness_and_sigterm_still_ends_the_process() {
    const STALL_S: u64 = 10;
    const DRAIN_S: u64 = 5;
    const KEEP_ALIVE_S: u64 = 5;
    let d = Deployment::kafka_only().await;
    let (stall, drain, keep_alive) = (
        STALL_S.to_string(),
        DRAIN_S.to_string(),
        KEEP_ALIVE_S.to_string(),
    );
    let flags = [
        "--stall-timeout",
        &stall,
        "--drain-timeout",
        &drain,
        "--mqtt-keep-alive",
        &keep_alive,
    ];
    let mut bridge = d.start_bridge_with(2, &flags).await;
    assert_eq!(healthz(&bridge).await, 200);
    bridge.kill();
    // Enough for Mosquitto 2.0.11 to flood the resumed session (it did not with 2,000 queued:
    // its flood grows with our acknowledgements of a large resumed queue). HiveMQ CE never
    // floods and drains at its in-flight window's pace (docs/bridge.md): a smaller queue there.
    let per_terminal = if mqtt_broker() == "hivemq" {
        200
    } else {
        1_400
    };
    let (fleet, ledger) = d.backlog("wedge", 411, TERMINALS, per_terminal);
    fleet.finish().await;

    {
        // The replica resumes its session and the flood starts (Mosquitto floods as we
        // acknowledge); once the hand-off is full, Kafka freezes: connections stay open and
        // nothing answers, so no send completes and the read gate stays closed.
        let mut bridge = d.bridge_with(2, &flags).await;
        let resumed = Instant::now();
        // The gate's closing is counted where it happens: the waiting gauge is sampled and
        // can miss a full hand-off that the pipeline empties between two scrapes. HiveMQ CE
        // keeps within the receive maximum, so no flood fills the hand-off (docs/bridge.md):
        // there the pipeline wedges with its in-flight window waiting on Kafka.
        let wedge_from = if mqtt_broker() == "hivemq" {
            "posflow_bridge_received_total"
        } else {
            "posflow_bridge_read_gate_closed_total"
        };
        while metric(&bridge.metrics().await, wedge_from).unwrap_or(0.0) < 1.0 {
            assert!(
                resumed.elapsed() < Duration::from_secs(30),
                "no {wedge_from} yet; log:\n{}",
                bridge.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _frozen = Pause::begin("kafka");
        let started = Instant::now();
        while healthz(&bridge).await != 503 {
            assert!(
                started.elapsed() < Duration::from_secs(STALL_S + 5),
                "/healthz still {} after {:?} without progress; log:\n{}",
                healthz(&bridge).await,
                started.elapsed(),
                bridge.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let unhealthy_after = started.elapsed();
        println!(
            "wedge: /healthz 503 {:.1} s after Kafka froze (stall timeout {STALL_S} s)",
            unhealthy_after.as_secs_f64()
        );
        let log = bridge.log_text();
        assert!(log.contains("no progress; failing liveness"));
        // More than twice the keep-alive with the socket unread, and the link held.
        assert!(unhealthy_after > Duration::from_secs(2 * KEEP_ALIVE_S));
        assert!(
            !log.contains("MQTT connection lost") && !log.contains("broker disconnected us"),
            "the MQTT connection dropped while reading was paused; log:\n{log}"
        );

        let signalled = Instant::now();
        let exit = bridge.terminate();
        let took = signalled.elapsed();
        println!(
            "wedge: SIGTERM to exit {:.1} s ({exit}; drain timeout {DRAIN_S} s)",
            took.as_secs_f64()
        );
        assert!(
            took < Duration::from_secs(DRAIN_S + 5),
            "SIGTERM took {took:?}; log:\n{}",
            bridge.log_text()
        );
    }
    wait_for_group_coordinator(&d.stack.brokers, &d.topic("pos.transactions.raw"));

    // Nothing was acknowledged while Kafka was frozen, so nothing is lost: the same replica,
    // restarted, gets the backlog again from its session and Kafka has each once.
    let _bridge = d.restart_bridge(2).await;
    let raw = d.raw_transactions(ledger.len()).await;
    let on_kafka: HashSet<&str> = raw
        .iter()
        .map(|(_, t)| t.transaction.transaction_id.as_str())
        .collect();
    assert_eq!(on_kafka.len(), ledger.len());
    assert!(ledger
        .iter()
        .all(|p| on_kafka.contains(p.transaction_id.as_str())));
}

async fn healthz(s: &Service) -> u16 {
    http_get(&s.http, "/healthz").await.map_or(0, |(c, _)| c)
}
