//! Terminals over MQTT: fleets of simulated terminals, valid payloads, one terminal's answers.

use crate::*;
use posflow_runtime::Secret;
use std::time::{Duration, Instant};

/// Connects once with clean start and leaves: the broker drops any session `client_id` had.
pub async fn clear_mqtt_session(stack: &Stack, client_id: &str, password: &str) {
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new(client_id, &stack.mqtt_host, stack.mqtt_port);
    o.set_credentials(client_id, password);
    o.set_clean_start(true);
    let (client, mut ev) = AsyncClient::new(o, 10);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_)))) => break,
            Ok(Err(e)) => panic!("MQTT connect as {client_id}: {e}"),
            _ if Instant::now() > deadline => panic!("MQTT connect as {client_id} timed out"),
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while ev.poll().await.is_ok() {}
    })
    .await;
}

/// A simulated fleet publishing in the background; its progress is readable while it runs.
pub struct BackgroundFleet {
    pub progress: std::sync::Arc<posflow_simulator::fleet::Progress>,
    handle: tokio::task::JoinHandle<anyhow::Result<posflow_simulator::fleet::Report>>,
}

impl BackgroundFleet {
    /// Waits until the terminals have had `n` answers (accepted or rejected).
    pub async fn answers_reach(&self, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        while self.progress.accepted.load(Relaxed) + self.progress.rejected.load(Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the fleet has ended (all answered, or failed: `finish` says which).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub async fn finish(self) -> posflow_simulator::fleet::Report {
        self.handle.await.expect("fleet task").expect("fleet")
    }

    /// `finish`, asserting every transaction got its answer.
    pub async fn finish_answered(self) -> posflow_simulator::fleet::Report {
        let report = self.finish().await;
        assert!(
            report.unanswered.is_empty(),
            "{} unanswered",
            report.unanswered.len()
        );
        report
    }
}

impl Deployment {
    /// `terminals` terminals from T`first_terminal`, `per_terminal` valid transactions each, at
    /// `rate` per terminal per second (0: as fast as the broker takes them), republishing what
    /// stays unanswered for `retry_after`.
    pub fn fleet(
        &self,
        name: &str,
        first_terminal: usize,
        terminals: usize,
        per_terminal: usize,
        rate: f64,
        retry_after: Duration,
    ) -> BackgroundFleet {
        let cfg = fleet_config(name, first_terminal, terminals, per_terminal, 0);
        self.spawn_fleet(&cfg, rate, retry_after, true).0
    }

    /// A fleet that publishes `terminals` × `per_terminal` transactions as fast as the broker
    /// takes them and is done once the broker acknowledged each (no bridge needed): a backlog
    /// for a bridge that is away. Also returns the plan, the terminals' ledger.
    pub fn backlog(
        &self,
        name: &str,
        first_terminal: usize,
        terminals: usize,
        per_terminal: usize,
    ) -> (BackgroundFleet, Vec<posflow_simulator::plan::Planned>) {
        let cfg = fleet_config(name, first_terminal, terminals, per_terminal, 0);
        self.spawn_fleet(&cfg, 0.0, Duration::from_secs(3600), false)
    }

    /// Like [`Deployment::fleet`] at full speed, with every `invalid_every`th transaction
    /// breaking a business rule; also returns the plan (what each transaction should become).
    pub fn fleet_with_invalid(
        &self,
        name: &str,
        first_terminal: usize,
        terminals: usize,
        per_terminal: usize,
        invalid_every: usize,
    ) -> (BackgroundFleet, Vec<posflow_simulator::plan::Planned>) {
        let cfg = fleet_config(name, first_terminal, terminals, per_terminal, invalid_every);
        self.spawn_fleet(&cfg, 0.0, Duration::from_secs(20), true)
    }

    fn spawn_fleet(
        &self,
        cfg: &posflow_simulator::plan::FleetConfig,
        rate: f64,
        retry_after: Duration,
        await_answers: bool,
    ) -> (BackgroundFleet, Vec<posflow_simulator::plan::Planned>) {
        let opts = posflow_simulator::fleet::PublishOptions {
            rate_per_terminal: rate,
            retry_after,
            deadline: Duration::from_secs(300),
            await_answers,
        };
        self.fleet_of(cfg, opts)
    }

    /// The fleet `cfg` publishing as `opts` say, in the background; also returns the plan.
    pub fn fleet_of(
        &self,
        cfg: &posflow_simulator::plan::FleetConfig,
        opts: posflow_simulator::fleet::PublishOptions,
    ) -> (BackgroundFleet, Vec<posflow_simulator::plan::Planned>) {
        use posflow_simulator::{fleet, plan};
        let fleet_plan = plan::plan(cfg, posflow_schema::now_millis());
        let planned = fleet_plan.iter().flatten().cloned().collect();
        let progress = std::sync::Arc::new(fleet::Progress::default());
        let (mqtt, pw, p) = (
            self.stack.mqtt_args(),
            Secret::new(&self.stack.terminal_password),
            progress.clone(),
        );
        let handle =
            tokio::spawn(async move { fleet::run(&mqtt, &pw, fleet_plan, &opts, p).await });
        (BackgroundFleet { progress, handle }, planned)
    }

    /// The raw topic decoded, in (partition, offset) order, once `expected` records are there.
    pub async fn raw_transactions(
        &self,
        expected: usize,
    ) -> Vec<(Record, posflow_schema::TransactionReceived)> {
        let mut records = read_topic(
            &self.stack.brokers,
            &self.topic("pos.transactions.raw"),
            expected,
            Duration::from_secs(60),
            Duration::from_secs(3),
        );
        records.sort_by_key(|r| (r.partition, r.offset));
        let decoder = posflow_schema::Decoder::<posflow_schema::TransactionReceived>::new(
            self.kafka.registry(),
        );
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let t = decoder.decode(&r.value).await.expect("raw record decodes");
            out.push((r, t));
        }
        out
    }
}

fn fleet_config(
    name: &str,
    first_terminal: usize,
    terminals: usize,
    per_terminal: usize,
    invalid_every: usize,
) -> posflow_simulator::plan::FleetConfig {
    posflow_simulator::plan::FleetConfig {
        terminals,
        per_terminal,
        // The local registry's: five merchants, dealt by terminal number.
        merchants: 5,
        invalid_every,
        seed: first_terminal as u64,
        first_terminal,
        run_id: format!("{name}{:08x}", rand::random::<u32>()),
    }
}

/// The card number tests and benchmarks give terminals: the card networks' published test
/// Visa, never a real card.
pub const TEST_PAN: &str = "4111111111111111";

/// RFC 3339 with milliseconds, UTC, as terminals write times.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A terminal payload (contract v1) that passes every bridge check.
pub fn valid_payload(transaction_id: &str, terminal: &str, merchant: &str) -> String {
    serde_json::json!({
        "version": 1, "transaction_id": transaction_id, "terminal_id": terminal, "merchant_id": merchant, "sequence": 1,
        "transaction_time": "2026-01-01T00:00:00Z", "type": "sale", "amount_minor": 100, "currency": "EUR",
        "payment_method": "card", "entry_mode": "chip", "response_code": "00", "mcc": "5411"
    })
    .to_string()
}

/// A transaction as the bridge puts it on the raw topic: a valid card sale of 12.34 EUR at
/// `terminal` of merchant M001, received now.
pub fn received_sale(
    id: &str,
    terminal: &str,
    sequence: i64,
) -> posflow_schema::TransactionReceived {
    use posflow_schema::*;
    let now = now_millis();
    TransactionReceived {
        envelope: Envelope {
            received_at: now,
            mqtt_topic: format!("pos/M001/{terminal}/tx"),
            bridge_id: "e2e".into(),
            payload_version: 1,
        },
        transaction: Transaction {
            sequence,
            transaction_time: now - 1000,
            entry_mode: EntryMode::Contactless,
            card: Some(Card {
                token: format!("tok-{terminal}-{}", sequence % 7),
                bin: "411111".into(),
                last4: "1111".into(),
                token_key_id: "k1".into(),
                previous_tokens: vec![],
            }),
            auth_code: Some("123456".into()),
            ..Transaction::example(id, terminal)
        },
    }
}

/// A terminal's own connection, returning every packet it receives on a channel.
pub async fn terminal(
    stack: &Stack,
    id: &str,
) -> (
    rumqttc::v5::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
) {
    let mut o = rumqttc::v5::MqttOptions::new(id, &stack.mqtt_host, stack.mqtt_port);
    o.set_credentials(id, &stack.terminal_password);
    o.set_clean_start(true);
    o.set_max_packet_size(Some(2 * 1024 * 1024));
    let (client, mut ev) = rumqttc::v5::AsyncClient::new(o, 32);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let rumqttc::v5::Event::Incoming(p) = e {
                if tx.send(p).is_err() {
                    return;
                }
            }
        }
    });
    (client, rx)
}

/// Terminal `t` of merchant `m`, connected and subscribed to its answers.
pub async fn answered_terminal(
    stack: &Stack,
    t: &str,
    m: &str,
) -> (
    rumqttc::v5::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    let (client, mut rx) = terminal(stack, t).await;
    next_matching(&mut rx, |p| matches!(p, Packet::ConnAck(_))).await;
    client
        .subscribe(
            posflow_mqtt::ack_topic(m, t),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    next_matching(&mut rx, |p| matches!(p, Packet::SubAck(_))).await;
    (client, rx)
}

/// Publishes valid transaction `id` as terminal `t` of merchant `m` (QoS 1, waits for the
/// client to queue it).
pub async fn publish_valid(client: &rumqttc::v5::AsyncClient, t: &str, m: &str, id: &str) {
    client
        .publish(
            posflow_mqtt::tx_topic(m, t),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            valid_payload(id, t, m),
        )
        .await
        .unwrap();
}

/// The next `n` answers on the terminal's ack topic, as JSON.
pub async fn answers(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
    n: usize,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while out.len() < n {
        if let rumqttc::v5::mqttbytes::v5::Packet::Publish(p) = next_matching(rx, |p| {
            matches!(p, rumqttc::v5::mqttbytes::v5::Packet::Publish(_))
        })
        .await
        {
            out.push(serde_json::from_slice(&p.payload).unwrap());
        }
    }
    out
}

pub async fn next_matching<F: Fn(&rumqttc::v5::mqttbytes::v5::Packet) -> bool>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
    f: F,
) -> rumqttc::v5::mqttbytes::v5::Packet {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let p = rx.recv().await.expect("connection closed");
            if f(&p) {
                return p;
            }
        }
    })
    .await
    .expect("packet within 30 s")
}
