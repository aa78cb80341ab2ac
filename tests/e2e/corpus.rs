//! The hostile-input corpus (tests/corpus/bridge, made by its generate.py): every case lands on
//! the dead-letter topic with the reason its file name gives, card numbers masked, and the bridge
//! never restarts.

use posflow_bridge::card::mask_card_numbers;
use posflow_e2e::*;
use posflow_schema::{DeadLetter, Decoder};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/bridge");
    let mut cases: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    cases.sort();
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_payload_is_dead_lettered_with_its_reason() {
    let cases = corpus();
    assert!(
        cases.len() >= 30,
        "the corpus keeps at least 30 cases, has {}",
        cases.len()
    );
    let d = Deployment::new().await;
    let mut bridge = d.start_bridge(7).await;
    let pid = bridge.child.id();

    let mut o = MqttOptions::new("T0470", &d.stack.mqtt_host, d.stack.mqtt_port);
    o.set_credentials("T0470", &d.stack.terminal_password);
    o.set_max_packet_size(Some(2 * 1024 * 1024));
    let (client, mut ev) = AsyncClient::new(o, 100);
    let total = cases.len();
    let acked = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            match ev.poll().await {
                Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_))) => n += 1,
                Ok(_) => {}
                Err(e) => panic!("terminal connection: {e}"),
            }
        }
    });
    let mut expected: HashMap<Vec<u8>, String> = HashMap::new();
    for (name, payload) in &cases {
        let reason = name.split("__").next().unwrap().to_string();
        let topic = if reason == "TOPIC_INVALID" {
            "pos/M$470/T0470/tx".to_string()
        } else {
            posflow_mqtt::tx_topic("M470", "T0470")
        };
        client
            .publish(topic, QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
        assert!(
            expected
                .insert(mask_card_numbers(payload), reason)
                .is_none(),
            "{name} duplicates another case"
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), acked).await;

    let dlq = read_topic(
        &d.stack.brokers,
        &d.topic("pos.deadletter"),
        cases.len(),
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    assert_eq!(dlq.len(), cases.len());
    let decoder = Decoder::<DeadLetter>::new(d.kafka.registry());
    let mut wrong = Vec::new();
    for r in &dlq {
        let letter = decoder.decode(&r.value).await.unwrap();
        assert_eq!(
            luhn_runs(&letter.payload),
            Vec::<String>::new(),
            "unmasked card number in {:?}",
            letter.reason
        );
        assert_eq!(luhn_runs(letter.detail.as_bytes()), Vec::<String>::new());
        match expected.get(&letter.payload) {
            Some(reason) if *reason == letter.reason => {}
            other => wrong.push(format!(
                "{:?} expected {other:?}, got {} ({})",
                String::from_utf8_lossy(&letter.payload[..letter.payload.len().min(60)]),
                letter.reason,
                letter.detail
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let raw = read_topic(
        &d.stack.brokers,
        &d.topic("pos.transactions.raw"),
        0,
        Duration::from_secs(5),
        Duration::from_secs(1),
    );
    assert_eq!(raw.len(), 0, "a hostile payload reached the raw topic");
    assert!(
        bridge.is_running() && bridge.child.id() == pid,
        "the bridge restarted:\n{}",
        bridge.log_text()
    );
    assert_eq!(
        http_get(&bridge.http, "/healthz").await.map(|r| r.0),
        Some(200)
    );
}
