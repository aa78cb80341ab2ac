//! Offline capture (issue 23): terminals publish payload version 2 over MQTT; the bridge reads
//! the offline fields (and refuses them in version 1); the validator applies the merchant's
//! offline caps from its rules file, each over-cap transaction rejected with its own code and
//! stored as a rejection, every under-cap one stored with its offline fields — also across a
//! SIGKILL of the validator in the middle of an outage's flush.

use posflow_e2e::*;
use posflow_schema::{Decoder, TransactionReceived};
use rumqttc::v5::mqttbytes::QoS;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

const MIN: i64 = 60_000;

/// A valid version-2 payload: `amount` minor units of EUR, captured `ago_ms` before now;
/// offline since `offline` (milliseconds since the epoch: the outage's name, so fixed).
fn payload(
    id: &str,
    t: &str,
    m: &str,
    seq: i64,
    amount: i64,
    ago_ms: i64,
    offline: Option<i64>,
) -> serde_json::Value {
    let now = posflow_schema::now_millis();
    let mut v: serde_json::Value = serde_json::from_str(&valid_payload(id, t, m)).unwrap();
    v["version"] = 2.into();
    v["sequence"] = seq.into();
    v["amount_minor"] = amount.into();
    v["transaction_time"] = rfc3339(now - ago_ms).into();
    if let Some(since) = offline {
        v["offline"] = true.into();
        v["offline_since"] = rfc3339(since).into();
    }
    v
}

/// Publishes `p` and waits for its answer.
async fn publish_answered(
    client: &rumqttc::v5::AsyncClient,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
    topic: &str,
    p: &serde_json::Value,
) -> serde_json::Value {
    client
        .publish(topic, QoS::AtLeastOnce, false, p.to_string())
        .await
        .unwrap();
    answers(rx, 1).await.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_caps_reject_over_cap_transactions_with_their_codes_and_accept_the_rest() {
    let d = Deployment::new().await;
    let (t, t_no) = ("T0441", "T0442");
    let (m, m_no) = (merchant_of(t), merchant_of(t_no));
    assert_ne!(m, m_no);
    let rules = std::env::temp_dir().join(format!("posflow-offline-rules-{}.toml", d.prefix));
    std::fs::write(
        &rules,
        format!(
            "[merchants.{m}.offline]\nmax_amount = 50\nmax_count = 3\nmax_total = 100\nmax_age_hours = 2\n\
             [merchants.{m_no}.offline]\nallowed = false\n"
        ),
    )
    .unwrap();
    let _bridge = d.start_bridge(4).await;
    let mut env = d.env();
    env.push((
        "POSFLOW_VALIDATOR_RULES".into(),
        rules.display().to_string(),
    ));
    let validator = Service::start("posflow-validator", &env, &[]).await;
    let _storage = d.start("posflow-storage").await;

    let run = format!("off{:08x}", rand::random::<u32>());
    let id = |n: u32| format!("{run}-{n:02}");
    // (payload, what the validator makes of it: None = accepted, Some(codes) = rejected).
    let now = posflow_schema::now_millis();
    let outage1 = Some(now - 90 * MIN);
    let outage2 = Some(now - 4 * 60 * MIN);
    let planned: Vec<(serde_json::Value, Option<&str>)> = vec![
        (payload(&id(1), t, &m, 1, 2000, 80 * MIN, outage1), None),
        (
            payload(&id(2), t, &m, 2, 6000, 79 * MIN, outage1),
            Some("OFFLINE_AMOUNT_OVER_CAP"),
        ),
        (payload(&id(3), t, &m, 3, 4000, 78 * MIN, outage1), None),
        // 20 + 40 accepted: 45 more would be 105 > 100.
        (
            payload(&id(4), t, &m, 4, 4500, 77 * MIN, outage1),
            Some("OFFLINE_TOTAL_OVER_CAP"),
        ),
        (payload(&id(5), t, &m, 5, 3000, 76 * MIN, outage1), None),
        // Three accepted: the fourth is over the count.
        (
            payload(&id(6), t, &m, 6, 500, 75 * MIN, outage1),
            Some("OFFLINE_COUNT_OVER_CAP"),
        ),
        // An earlier outage, flushed late: captured 3 h ago > 2 h.
        (
            payload(&id(7), t, &m, 7, 1000, 180 * MIN, outage2),
            Some("OFFLINE_TOO_OLD"),
        ),
        // Its own count and total.
        (payload(&id(8), t, &m, 8, 1000, 100 * MIN, outage2), None),
        // Online: no offline cap, the merchant's ordinary limit.
        (payload(&id(9), t, &m, 9, 50_000, MIN, None), None),
        (
            payload(&id(10), t_no, &m_no, 1, 1000, 10 * MIN, outage1),
            Some("OFFLINE_NOT_ALLOWED"),
        ),
    ];
    // Each answered before the next is sent, so each terminal's order on the raw topic is this.
    for terminal in [t, t_no] {
        let (client, mut rx) = answered_terminal(&d.stack, terminal, &merchant_of(terminal)).await;
        let topic = posflow_mqtt::tx_topic(&merchant_of(terminal), terminal);
        for (p, _) in planned.iter().filter(|(p, _)| p["terminal_id"] == terminal) {
            let a = publish_answered(&client, &mut rx, &topic, p).await;
            assert_eq!(
                (a["transaction_id"].as_str(), a["status"].as_str()),
                (p["transaction_id"].as_str(), Some("accepted")),
                "{a:?}"
            );
        }
        // The bridge's contract checks of the offline fields, answered at once.
        let v1 = {
            let mut p = payload(
                &format!("{run}-v1-{terminal}"),
                terminal,
                &merchant_of(terminal),
                99,
                100,
                MIN,
                Some(now - 2 * MIN),
            );
            p["version"] = 1.into();
            p
        };
        let late_since = {
            let mut p = payload(
                &format!("{run}-since-{terminal}"),
                terminal,
                &merchant_of(terminal),
                98,
                100,
                2 * MIN,
                Some(now - MIN),
            );
            p["offline"] = false.into();
            p
        };
        for (p, reason) in [(v1, "SCHEMA_VIOLATION"), (late_since, "FIELD_INVALID")] {
            let a = publish_answered(&client, &mut rx, &topic, &p).await;
            assert_eq!(
                (a["status"].as_str(), a["reason"].as_str()),
                (Some("rejected"), Some(reason)),
                "{p}: {a:?}"
            );
        }
    }

    // The validator SIGKILLed once all of that is judged, and started again: the outages'
    // counts and totals are read back from the outages state topic, so the flush goes on
    // against the same caps (a replica that counted from zero would accept all three).
    let db = db(&d.stack).await;
    let like = format!("{run}-%");
    let judged = |n: usize| {
        let db = &db;
        let like = &like;
        async move {
            wait_for_count(
                db,
                "SELECT (SELECT count(*) FROM transactions WHERE transaction_id LIKE $1) \
                 + (SELECT count(*) FROM rejections WHERE transaction_id LIKE $1)",
                &[like],
                n as i64,
                Duration::from_secs(120),
            )
            .await
        }
    };
    assert_eq!(judged(planned.len()).await, planned.len() as i64);
    let mut validator = validator;
    validator.kill();
    let validator = Service::start("posflow-validator", &env, &[]).await;
    let after_restart: Vec<(serde_json::Value, Option<&str>)> = vec![
        // Outage 1 already has its three.
        (
            payload(&id(11), t, &m, 10, 500, 74 * MIN, outage1),
            Some("OFFLINE_COUNT_OVER_CAP"),
        ),
        // Outage 2: 10 + 45 fits; 46 more would be 101 > 100.
        (payload(&id(12), t, &m, 11, 4500, 99 * MIN, outage2), None),
        (
            payload(&id(13), t, &m, 12, 4600, 98 * MIN, outage2),
            Some("OFFLINE_TOTAL_OVER_CAP"),
        ),
    ];
    {
        let (client, mut rx) = answered_terminal(&d.stack, t, &m).await;
        let topic = posflow_mqtt::tx_topic(&m, t);
        for (p, _) in &after_restart {
            let a = publish_answered(&client, &mut rx, &topic, p).await;
            assert_eq!(a["status"].as_str(), Some("accepted"), "{a:?}");
        }
    }
    let planned: Vec<_> = planned.into_iter().chain(after_restart).collect();
    assert_eq!(judged(planned.len()).await, planned.len() as i64);
    assert!(
        validator.log_text().contains("outages restored"),
        "{}",
        validator.log_text()
    );

    // PostgreSQL: the accepted ones with their offline fields, the rest as rejections with
    // exactly their code.
    let accepted = planned.iter().filter(|(_, r)| r.is_none()).count() as i64;
    let rejected = planned.len() as i64 - accepted;
    let stored = wait_for_count(
        &db,
        "SELECT count(*) FROM transactions WHERE transaction_id LIKE $1",
        &[&like],
        accepted,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(stored, accepted, "transactions stored");
    wait_for_count(
        &db,
        "SELECT count(*) FROM rejections WHERE transaction_id LIKE $1",
        &[&like],
        rejected,
        Duration::from_secs(30),
    )
    .await;
    let rows = db
        .query(
            "SELECT transaction_id, offline, (extract(epoch FROM offline_since) * 1000)::bigint FROM transactions WHERE transaction_id LIKE $1",
            &[&like],
        )
        .await
        .unwrap();
    let got: BTreeMap<String, (bool, Option<i64>)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let reasons: BTreeMap<String, Vec<String>> = db
        .query(
            "SELECT transaction_id, reason_codes FROM rejections WHERE transaction_id LIKE $1",
            &[&like],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (p, outcome) in &planned {
        let id = p["transaction_id"].as_str().unwrap();
        let since = p["offline_since"].as_str().map(|s| {
            humantime::parse_rfc3339(s)
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
        });
        match outcome {
            None => assert_eq!(got.get(id), Some(&(since.is_some(), since)), "{id}"),
            Some(code) => {
                assert_eq!(got.get(id), None, "{id} stored");
                assert_eq!(reasons.get(id), Some(&vec![code.to_string()]), "{id}");
            }
        }
    }
    assert_eq!(
        metric(
            &validator.metrics().await,
            "posflow_validator_offline_total"
        ),
        Some(3.0),
        "the offline transactions the restarted validator judged"
    );

    // The raw topic: each transaction in the version it was sent in, the offline fields as sent.
    let decoder = Decoder::<TransactionReceived>::new(d.kafka.registry());
    let raw = read_topic(
        &d.stack.brokers,
        &d.topic("pos.transactions.raw"),
        planned.len(),
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    assert_eq!(raw.len(), planned.len());
    for r in raw {
        let r = decoder.decode(&r.value).await.unwrap();
        assert_eq!(r.envelope.payload_version, 2);
        let p = &planned
            .iter()
            .find(|(p, _)| p["transaction_id"] == r.transaction.transaction_id.as_str())
            .unwrap()
            .0;
        assert_eq!(r.transaction.offline, p["offline"] == true);
    }
}
