//! Terminals on the wire: each is its own MQTT 5 connection (client id = username = terminal
//! id), publishes QoS 1 on its topic, listens for the bridge's answers on its ack topic, and
//! republishes whatever stays unanswered — like store-and-forward firmware.

use crate::plan::Planned;
use posflow_mqtt::MqttArgs;
use posflow_runtime::Secret;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Transactions per second per terminal (0: as fast as the broker takes them).
    pub rate_per_terminal: f64,
    /// Republish a transaction with no answer after this long.
    pub retry_after: Duration,
    /// Give up waiting for answers after this long (counted from the start).
    pub deadline: Duration,
    /// Wait for the bridge's answers (and republish the unanswered). Off: done once the broker
    /// acknowledged every publish — for measuring the broker alone.
    pub await_answers: bool,
}

/// Live counters, readable while the fleet runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Transactions sent (first publish of each).
    pub published: AtomicU64,
    /// PUBACKs from the broker, republishes included.
    pub broker_acks: AtomicU64,
    pub republished: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// When each transaction was first published.
    pub sent_at: Mutex<HashMap<String, Instant>>,
    /// First publish → first answer, per answered transaction, in microseconds.
    pub answer_latency_us: Mutex<Vec<u64>>,
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Prefix of every transaction id of this run.
    pub run_id: String,
    pub published: u64,
    pub republished: u64,
    /// Transaction id → the bridge's answer: "accepted" or the reason it was dead-lettered.
    pub answers: HashMap<String, String>,
    pub unanswered: Vec<String>,
    pub elapsed: Duration,
}

impl Report {
    pub fn accepted(&self) -> usize {
        self.answers.values().filter(|a| *a == "accepted").count()
    }
    /// The ids of the transactions answered `accepted`.
    pub fn accepted_ids(&self) -> std::collections::HashSet<&str> {
        self.answers
            .iter()
            .filter(|(_, a)| *a == "accepted")
            .map(|(id, _)| id.as_str())
            .collect()
    }
    pub fn rejected_by_reason(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for a in self.answers.values().filter(|a| *a != "accepted") {
            *m.entry(a.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// Publishes every terminal's plan concurrently and waits for the answers.
pub async fn run(
    mqtt: &MqttArgs,
    password: &Secret,
    fleet: Vec<Vec<Planned>>,
    opts: &PublishOptions,
    progress: Arc<Progress>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for plan in fleet.into_iter().filter(|p| !p.is_empty()) {
        let (mqtt, password, opts, progress) = (
            mqtt.clone(),
            password.clone(),
            opts.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            terminal(&mqtt, &password, plan, &opts, progress, started).await
        }));
    }
    let mut report = Report::default();
    for t in tasks {
        let (answers, unanswered) = t.await??;
        report.answers.extend(answers);
        report.unanswered.extend(unanswered);
    }
    report.published = progress.published.load(Ordering::Relaxed);
    report.republished = progress.republished.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    Ok(report)
}

type Answers = HashMap<String, String>;

/// One terminal's connection state, shared by its publisher and its poller.
#[derive(Clone)]
struct Shared {
    answers: Arc<Mutex<Answers>>,
    subscribed: Arc<tokio::sync::Notify>,
    /// PUBACKs for this terminal's messages.
    my_acks: Arc<AtomicU64>,
    progress: Arc<Progress>,
}

async fn terminal(
    mqtt: &MqttArgs,
    password: &Secret,
    plan: Vec<Planned>,
    opts: &PublishOptions,
    progress: Arc<Progress>,
    started: Instant,
) -> anyhow::Result<(Answers, Vec<String>)> {
    let (terminal_id, merchant_id) = (plan[0].terminal_id.clone(), plan[0].merchant_id.clone());
    let mut o = mqtt.options(&terminal_id, password)?;
    o.set_clean_start(true);
    let (client, eventloop) = AsyncClient::new(o, 64);
    let shared = Shared {
        answers: Arc::default(),
        subscribed: Arc::new(tokio::sync::Notify::new()),
        my_acks: Arc::new(AtomicU64::new(0)),
        progress: progress.clone(),
    };
    let ack_topic = posflow_mqtt::ack_topic(&merchant_id, &terminal_id);
    let poller = tokio::spawn(poll(eventloop, client.clone(), ack_topic, shared.clone()));
    tokio::time::timeout(Duration::from_secs(30), shared.subscribed.notified())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{terminal_id}: no SUBACK within 30 s (broker down or credentials refused?)"
            )
        })?;
    let topic = posflow_mqtt::tx_topic(&merchant_id, &terminal_id);
    let gap = (opts.rate_per_terminal > 0.0)
        .then(|| Duration::from_secs_f64(1.0 / opts.rate_per_terminal));
    let mut sent_at: HashMap<&str, Instant> = HashMap::new();
    for p in &plan {
        progress
            .sent_at
            .lock()
            .expect("poisoned")
            .insert(p.transaction_id.clone(), Instant::now());
        publish(&client, &topic, p).await?;
        progress.published.fetch_add(1, Ordering::Relaxed);
        sent_at.insert(&p.transaction_id, Instant::now());
        if let Some(g) = gap {
            tokio::time::sleep(g).await;
        }
    }
    if opts.await_answers {
        republish_until_answered(&client, &topic, &plan, sent_at, opts, &shared, started).await?;
    } else {
        // Without answers to wait for: done when the broker has every message.
        while shared.my_acks.load(Ordering::Relaxed) < plan.len() as u64
            && started.elapsed() < opts.deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let answers = std::mem::take(&mut *shared.answers.lock().expect("poisoned"));
    let planned: HashSet<&str> = plan.iter().map(|p| p.transaction_id.as_str()).collect();
    let unanswered = planned
        .iter()
        .filter(|id| opts.await_answers && !answers.contains_key(**id))
        .map(|s| s.to_string())
        .collect();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), poller).await;
    Ok((answers, unanswered))
}

/// Waits for every answer, republishing what stays unanswered after `retry_after` (same
/// transaction id and bytes: the pipeline recognises it), until the deadline.
async fn republish_until_answered(
    client: &AsyncClient,
    topic: &str,
    plan: &[Planned],
    mut sent_at: HashMap<&str, Instant>,
    opts: &PublishOptions,
    shared: &Shared,
    started: Instant,
) -> anyhow::Result<()> {
    loop {
        let missing: Vec<&Planned> = {
            let a = shared.answers.lock().expect("poisoned");
            plan.iter()
                .filter(|p| !a.contains_key(&p.transaction_id))
                .collect()
        };
        if missing.is_empty() || started.elapsed() > opts.deadline {
            return Ok(());
        }
        for p in &missing {
            if sent_at[p.transaction_id.as_str()].elapsed() > opts.retry_after {
                publish(client, topic, p).await?;
                shared.progress.republished.fetch_add(1, Ordering::Relaxed);
                sent_at.insert(&p.transaction_id, Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drives the terminal's connection: subscribes to its answers, counts PUBACKs, records answers.
async fn poll(mut eventloop: EventLoop, client: AsyncClient, ack_topic: String, shared: Shared) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                posflow_mqtt::subscribe_detached(&client, ack_topic.clone());
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => shared.subscribed.notify_one(),
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                shared.progress.broker_acks.fetch_add(1, Ordering::Relaxed);
                shared.my_acks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => shared.record_answer(&p.payload),
            Ok(Event::Incoming(Packet::Disconnect(_)))
            | Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
            Err(e) => {
                tracing::warn!(error = %e, "terminal connection lost; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

impl Shared {
    /// The bridge's answer (docs/terminal-contract.md): `accepted`, or the reason code. The
    /// first answer per transaction counts, with its latency from the first send.
    fn record_answer(&self, payload: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        let Some(id) = v["transaction_id"].as_str() else {
            return;
        };
        let status = match v["status"].as_str() {
            Some("accepted") => "accepted".to_string(),
            _ => v["reason"].as_str().unwrap_or("rejected").to_string(),
        };
        let progress = &self.progress;
        let counter = if status == "accepted" {
            &progress.accepted
        } else {
            &progress.rejected
        };
        let first = self
            .answers
            .lock()
            .expect("poisoned")
            .insert(id.to_string(), status)
            .is_none();
        if first {
            counter.fetch_add(1, Ordering::Relaxed);
            let sent = progress.sent_at.lock().expect("poisoned").get(id).copied();
            if let Some(t) = sent {
                let us = t.elapsed().as_micros() as u64;
                progress
                    .answer_latency_us
                    .lock()
                    .expect("poisoned")
                    .push(us);
            }
        }
    }
}

async fn publish(client: &AsyncClient, topic: &str, p: &Planned) -> anyhow::Result<()> {
    // A W3C trace context per transaction, as instrumented firmware would send.
    let trace: u128 = rand::random();
    let span: u64 = rand::random::<u64>() | 1;
    let props = PublishProperties {
        user_properties: vec![(
            "traceparent".into(),
            format!("00-{trace:032x}-{span:016x}-01"),
        )],
        ..Default::default()
    };
    client
        .publish_with_properties(topic, QoS::AtLeastOnce, false, p.payload.clone(), props)
        .await?;
    Ok(())
}
