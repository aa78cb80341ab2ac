//! Bad input never crashes the bridge: each malformed, spoofed or oversize message lands on the
//! dead-letter topic with its reason (header and record), card numbers masked, the terminal gets
//! a "rejected" answer, and good messages keep flowing. And the broker keeps a terminal to its
//! own topic.

use posflow_e2e::*;
use posflow_schema::{DeadLetter, Decoder};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use std::time::Duration;

const PAN: &str = "4111111111111111";

/// A valid payload with a card number (the bridge must tokenise or mask it).
fn valid(tx: &str, terminal: &str, merchant: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&valid_payload(tx, terminal, merchant)).unwrap();
    v["card"] = serde_json::json!({ "pan": PAN });
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_spoofed_and_oversize_input_is_dead_lettered_and_the_bridge_keeps_running() {
    let d = Deployment::new().await;
    let mut bridge = d.start_bridge(6).await;
    let (t, m) = ("T0490", &*merchant_of("T0490"));
    let (client, mut rx) = answered_terminal(&d.stack, t, m).await;

    let oversize = format!(
        r#"{{"version":1,"transaction_id":"big","pad":"{}","card":{{"pan":"{PAN}"}}}}"#,
        "x".repeat(20_000)
    );
    let mut cvv: serde_json::Value = serde_json::from_str(&valid("cvv-1", t, m)).unwrap();
    cvv["card"]["cvv"] = "123".into();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "NOT_JSON",
            format!("card {PAN} and not json {{").into_bytes(),
        ),
        (
            "IDENTITY_MISMATCH",
            valid("spoof-1", "T0491", m).into_bytes(),
        ),
        ("OVERSIZE", oversize.into_bytes()),
        ("NOT_UTF8", vec![0xff, 0xfe, b'{', b'}']),
        (
            "SCHEMA_VIOLATION",
            valid("types-1", t, m)
                .replace(r#""amount_minor":100"#, r#""amount_minor":"100""#)
                .into_bytes(),
        ),
        (
            "UNSUPPORTED_VERSION",
            valid("ver-1", t, m)
                .replace(r#""version":1"#, r#""version":99"#)
                .into_bytes(),
        ),
        ("CARD_DATA_FORBIDDEN", cvv.to_string().into_bytes()),
        (
            "PAN_INVALID",
            valid("pan-1", t, m)
                .replace(PAN, "4111111111111112")
                .into_bytes(),
        ),
    ];
    let topic = posflow_mqtt::tx_topic(m, t);
    for (_, payload) in &cases {
        client
            .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
    }
    // Then a good one: the bridge is still taking work.
    client
        .publish(&topic, QoS::AtLeastOnce, false, valid("good-1", t, m))
        .await
        .unwrap();

    // The terminal hears back about every one of them: 8 rejected, 1 accepted.
    let first = answers(&mut rx, cases.len() + 1).await;
    assert_eq!(
        first.iter().filter(|a| a["status"] == "rejected").count(),
        cases.len()
    );
    let good: Vec<_> = first.iter().filter(|a| a["status"] == "accepted").collect();
    assert_eq!(good.len(), 1);

    // Kafka has good-1 now. The same message again (a QoS 1 redelivery or a terminal's
    // republish) is answered with the same position and not produced again; the same id with
    // other content is a conflict and is dead-lettered.
    client
        .publish(&topic, QoS::AtLeastOnce, false, valid("good-1", t, m))
        .await
        .unwrap();
    client
        .publish(
            &topic,
            QoS::AtLeastOnce,
            false,
            valid("good-1", t, m).replace(r#""amount_minor":100"#, r#""amount_minor":999"#),
        )
        .await
        .unwrap();
    let again = answers(&mut rx, 2).await;
    assert_eq!(again[0]["status"], "accepted");
    assert_eq!(
        (&again[0]["partition"], &again[0]["offset"]),
        (&good[0]["partition"], &good[0]["offset"])
    );
    assert_eq!(again[1]["status"], "rejected");
    assert_eq!(again[1]["reason"], "DUPLICATE_TRANSACTION_ID");
    let mut cases = cases;
    cases.push(("DUPLICATE_TRANSACTION_ID", vec![]));

    let dlq = read_topic(
        &d.stack.brokers,
        &d.topic("pos.deadletter"),
        cases.len(),
        Duration::from_secs(30),
        Duration::from_secs(2),
    );
    assert_eq!(dlq.len(), cases.len());
    let decoder = Decoder::<DeadLetter>::new(d.kafka.registry());
    let mut reasons = Vec::new();
    for r in &dlq {
        let letter = decoder.decode(&r.value).await.unwrap();
        assert_eq!(
            r.headers.get("posflow-reason"),
            Some(&letter.reason),
            "reason header = record reason"
        );
        assert_eq!(letter.stage, "bridge");
        assert_eq!(letter.source, topic);
        assert_eq!(
            luhn_runs(&letter.payload),
            Vec::<String>::new(),
            "{}: card number not masked",
            letter.reason
        );
        assert_eq!(luhn_runs(letter.detail.as_bytes()), Vec::<String>::new());
        assert_eq!(luhn_runs(&r.value), Vec::<String>::new());
        reasons.push(letter.reason);
    }
    reasons.sort();
    let mut expected: Vec<String> = cases.iter().map(|(r, _)| r.to_string()).collect();
    expected.sort();
    assert_eq!(reasons, expected);

    let raw = d.raw_transactions(1).await;
    assert_eq!(raw.len(), 1, "only the good one reaches the raw topic");

    assert!(
        bridge.is_running(),
        "the bridge crashed:\n{}",
        bridge.log_text()
    );
    assert_eq!(
        http_get(&bridge.http, "/healthz").await.map(|r| r.0),
        Some(200)
    );
    let m = bridge.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"posflow_bridge_dead_lettered_total{reason="OVERSIZE"}"#
        ),
        Some(1.0)
    );
    assert_eq!(metric(&m, "posflow_bridge_produced_total"), Some(1.0));
    assert_eq!(metric(&m, "posflow_bridge_acknowledged_total"), Some(11.0));
    assert_eq!(metric(&m, "posflow_bridge_repeats_total"), Some(1.0));
    assert!(!bridge.log_text().contains(PAN), "PAN in the bridge's log");
    assert!(bridge.terminate().success());
}

/// Both sides of both size limits (docs/terminal-contract.md): a payload of exactly 16,384
/// bytes is accepted and one byte more is dead-lettered as OVERSIZE and answered; a packet just
/// under the broker's 32,768 is too (OVERSIZE), and one above it is refused by the broker —
/// never acknowledged to the terminal and then lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_size_limit_has_its_documented_outcome_on_both_sides() {
    const MAX_PAYLOAD: usize = 16_384;
    const MAX_PACKET: usize = 32_768;
    let d = Deployment::new().await;
    let _bridge = d.start_bridge(5).await;
    let (t, m) = ("T0492", &*merchant_of("T0492"));
    let (client, mut rx) = answered_terminal(&d.stack, t, m).await;
    let topic = posflow_mqtt::tx_topic(m, t);
    // Valid JSON of exactly `len` bytes: white space before the closing brace.
    let sized = |id: &str, len: usize| {
        let body = valid(id, t, m);
        let pad = len - body.len();
        format!("{} {}", &body[..body.len() - 1], " ".repeat(pad - 1) + "}").into_bytes()
    };
    let at_limit = sized("size-at", MAX_PAYLOAD);
    let over_limit = sized("size-over", MAX_PAYLOAD + 1);
    // The packet: fixed header (5) + topic (2 + its length) + packet id (2) + properties (1).
    let under_packet = sized("size-packet", MAX_PACKET - topic.len() - 12);
    assert_eq!(at_limit.len(), MAX_PAYLOAD);
    for p in [&at_limit, &over_limit, &under_packet] {
        client
            .publish(&topic, QoS::AtLeastOnce, false, p.clone())
            .await
            .unwrap();
    }
    let got = answers(&mut rx, 3).await;
    let by_id = |id: &str| got.iter().find(|a| a["transaction_id"] == id).cloned();
    assert_eq!(by_id("size-at").unwrap()["status"], "accepted", "{got:?}");
    for id in ["size-over", "size-packet"] {
        let a = by_id(id).unwrap_or_else(|| panic!("no answer for {id}: {got:?}"));
        assert_eq!(
            (&a["status"], &a["reason"]),
            (&"rejected".into(), &"OVERSIZE".into())
        );
    }

    // Above the broker's packet limit: refused at the broker, so no PUBACK and nothing stored.
    let huge = sized("size-huge", MAX_PACKET + 1_000);
    let (big, mut big_rx) = terminal(&d.stack, "T0493").await;
    next_matching(&mut big_rx, |p| matches!(p, Packet::ConnAck(_))).await;
    let _ = big
        .publish(
            posflow_mqtt::tx_topic(&merchant_of("T0493"), "T0493"),
            QoS::AtLeastOnce,
            false,
            huge,
        )
        .await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(p) = big_rx.recv().await {
            if matches!(p, Packet::PubAck(_) | Packet::Disconnect(_)) {
                return Some(p);
            }
        }
        None // the connection ended
    })
    .await
    .expect("neither refused nor acknowledged within 10 s");
    assert!(
        !matches!(outcome, Some(Packet::PubAck(_))),
        "the broker acknowledged a packet above its limit"
    );
    println!("above the packet limit: {outcome:?}");

    let dlq = read_topic(
        &d.stack.brokers,
        &d.topic("pos.deadletter"),
        2,
        Duration::from_secs(30),
        Duration::from_secs(3),
    );
    assert_eq!(dlq.len(), 2, "exactly the two OVERSIZE dead letters");
    assert!(dlq
        .iter()
        .all(|r| r.headers["posflow-reason"] == "OVERSIZE"));
    let raw = d.raw_transactions(1).await;
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].1.transaction.transaction_id, "size-at");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_keeps_a_terminal_to_its_own_topic() {
    let d = Deployment::new().await;
    let _bridge = d.start_bridge(7).await;
    let own = merchant_of("T0480");
    // T0480 publishing as T0481, and as itself for another merchant (topic and payload
    // consistent): the broker's ACL, generated from the terminal registry, answers MQTT 5 "not
    // authorized" to both and forwards neither. Mosquitto keeps the connection; HiveMQ CE then
    // disconnects the terminal (docs/bridge.md), so each attempt has a connection of its own.
    for (id, merchant, terminal_id) in [
        ("acl-1", merchant_of("T0481"), "T0481"),
        ("acl-other-merchant", "M-OTHER".to_string(), "T0480"),
    ] {
        let (client, mut rx) = terminal(&d.stack, "T0480").await;
        next_matching(&mut rx, |p| matches!(p, Packet::ConnAck(_))).await;
        client
            .publish(
                posflow_mqtt::tx_topic(&merchant, terminal_id),
                QoS::AtLeastOnce,
                false,
                valid(id, terminal_id, &merchant),
            )
            .await
            .unwrap();
        let refused = refusal(&mut rx).await;
        let hivemq_disconnect = mqtt_broker() == "hivemq" && refused == "closed";
        assert!(
            refused == "NotAuthorized" || hivemq_disconnect,
            "{id}: {refused}"
        );
    }
    let (client, mut rx) = terminal(&d.stack, "T0480").await;
    next_matching(&mut rx, |p| matches!(p, Packet::ConnAck(_))).await;
    client
        .publish(
            posflow_mqtt::tx_topic(&own, "T0480"),
            QoS::AtLeastOnce,
            false,
            valid("acl-2", "T0480", &own),
        )
        .await
        .unwrap();
    let raw = d.raw_transactions(1).await;
    assert_eq!(raw.len(), 1, "only the terminal's own message is forwarded");
    assert_eq!(raw[0].1.transaction.transaction_id, "acl-2");
}

/// How the broker refused a publish: the PUBACK's or the DISCONNECT's reason, or `closed` (the
/// connection ended first: HiveMQ's DISCONNECT right after its PUBACK ends rumqttc's read).
async fn refusal(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
) -> String {
    let within = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rx.recv().await {
                Some(Packet::PubAck(a)) => return format!("{:?}", a.reason),
                Some(Packet::Disconnect(d)) => return format!("{:?}", d.reason_code),
                Some(_) => {}
                None => return "closed".to_string(),
            }
        }
    });
    within.await.expect("an answer to the publish within 30 s")
}

/// Rotating the card-token key: every token says which key made it; the same PAN under the same
/// key gives the same token; during the transition the previous key's token rides along, so a
/// card's history links across the rotation (docs/operations.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_tokens_carry_their_key_id_across_a_key_rotation() {
    use posflow_bridge::card::{TokenKey, Tokenizer};
    let d = Deployment::new().await;
    let (t, m) = ("T0478", merchant_of("T0478"));
    const NEW_KEY: &str = "e2e-rotated-card-token-key-fedcba9876543210";
    let old = Tokenizer::new(&posflow_runtime::Secret::new(CARD_TOKEN_KEY));
    let new = Tokenizer::with_keys(
        &TokenKey {
            id: "k2".into(),
            secret: posflow_runtime::Secret::new(NEW_KEY),
        },
        &[],
    );
    let publish = |id: &'static str| {
        let (t, m) = (t, m.clone());
        let stack = d.stack.clone();
        async move {
            let (client, mut rx) = answered_terminal(&stack, t, &m).await;
            client
                .publish(
                    posflow_mqtt::tx_topic(&m, t),
                    QoS::AtLeastOnce,
                    false,
                    valid(id, t, &m),
                )
                .await
                .unwrap();
            let a = answers(&mut rx, 1).await.remove(0);
            assert_eq!(a["status"], "accepted", "{id}: {a}");
        }
    };
    let mut bridge = d.start_bridge(4).await;
    publish("rot-before-1").await;
    publish("rot-before-2").await;
    bridge.terminate();
    let previous = format!("k1={CARD_TOKEN_KEY}");
    let _bridge = d
        .bridge_with(
            4,
            &[
                "--card-token-key",
                NEW_KEY,
                "--card-token-key-id",
                "k2",
                "--card-token-previous-keys",
                &previous,
            ],
        )
        .await;
    publish("rot-after").await;

    let raw = d.raw_transactions(3).await;
    let card = |id: &str| {
        raw.iter()
            .find(|(_, r)| r.transaction.transaction_id == id)
            .and_then(|(_, r)| r.transaction.card.clone())
            .unwrap_or_else(|| panic!("{id} has no card"))
    };
    let (b1, b2, after) = (
        card("rot-before-1"),
        card("rot-before-2"),
        card("rot-after"),
    );
    let old_token = old.tokenize(PAN).unwrap().token;
    assert_eq!((b1.token_key_id.as_str(), &b1.token), ("k1", &old_token));
    assert_eq!(b1, b2, "same PAN, same key: same token");
    assert!(b1.previous_tokens.is_empty());
    assert_eq!(after.token_key_id, "k2");
    assert_eq!(after.token, new.tokenize(PAN).unwrap().token);
    assert_ne!(after.token, old_token, "another key, another token");
    assert_eq!(
        after.previous_tokens,
        [posflow_schema::PreviousToken {
            key_id: "k1".into(),
            token: old_token
        }]
    );
    // The keys themselves are nowhere in the bridge's log.
    assert!(!_bridge.log_text().contains(NEW_KEY) && !_bridge.log_text().contains(CARD_TOKEN_KEY));
}
