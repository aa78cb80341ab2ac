//! Reading topics to their end and producing to them, and finding card numbers in what was read.

use crate::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning (read_committed) until `expected` records arrived, then for
/// `quiet` more to catch any extra one; panics with what it has after `within`.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    expected: usize,
    within: Duration,
    quiet: Duration,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-reader-{}", rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let start = Instant::now();
    let mut reached: Option<Instant> = None;
    let mut out = Vec::new();
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        if out.len() >= expected && reached.is_none() {
            reached = Some(Instant::now());
        }
        if reached.is_some_and(|r| r.elapsed() >= quiet) {
            return out;
        }
        if start.elapsed() > within {
            panic!(
                "{topic}: {} records after {within:?}, expected {expected}",
                out.len()
            );
        }
    }
}

/// Every card number in `bytes`, as `card::mask_card_numbers` defines one (what a leaked card
/// number looks like): a digit run of 13–19 that `card::is_pan`, or any 13–19 digit window of a
/// run longer than 19 that does (the masking hides such runs whole).
pub fn luhn_runs(bytes: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for run in bytes.split(|b| !b.is_ascii_digit()) {
        if run.len() <= 19 {
            if posflow_bridge::card::is_pan(run) {
                found.push(String::from_utf8_lossy(run).into_owned());
            }
            continue;
        }
        for w in 13..=19 {
            for win in run.windows(w) {
                if posflow_bridge::card::is_pan(win) {
                    found.push(String::from_utf8_lossy(win).into_owned());
                }
            }
        }
    }
    found
}

/// Waits until Kafka's group coordinator serves a consumer group again (after a restart the
/// brokers answer metadata before groups can join).
pub fn wait_for_group_coordinator(brokers: &str, topic: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-probe-{}", rand::random::<u32>()))
        .create()
        .expect("probe consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(120);
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "Kafka's group coordinator did not come back"
        );
        let _ = consumer.poll(Duration::from_millis(200));
    }
}

impl Deployment {
    /// Produces `records` to `base` topic (schema from the registry), keyed by `key`, and waits
    /// until Kafka has every one.
    pub async fn produce<T: posflow_schema::AvroRecord>(
        &self,
        base: &str,
        records: &[T],
        key: impl Fn(&T) -> String,
    ) {
        self.produce_with(base, records, key, false).await
    }

    /// As [`Self::produce`], in one Kafka transaction: a read_committed consumer (every stage)
    /// sees none of the records, then all of them at once — a backlog that appears in an instant,
    /// for measuring consumers that are already running.
    pub async fn produce_at_once<T: posflow_schema::AvroRecord>(
        &self,
        base: &str,
        records: &[T],
        key: impl Fn(&T) -> String,
    ) {
        self.produce_with(base, records, key, true).await
    }

    async fn produce_with<T: posflow_schema::AvroRecord>(
        &self,
        base: &str,
        records: &[T],
        key: impl Fn(&T) -> String,
        transactional: bool,
    ) {
        use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
        let topic = self.topic(base);
        let encoder = posflow_schema::Encoder::<T>::for_topic(&self.kafka.registry(), &topic)
            .await
            .expect("schema registered");
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.stack.brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5");
        if transactional {
            config.set(
                "transactional.id",
                format!("{topic}-at-once-{}", rand::random::<u32>()),
            );
        }
        let producer: FutureProducer = config.create().unwrap();
        if transactional {
            producer
                .init_transactions(Duration::from_secs(30))
                .expect("init_transactions");
            producer.begin_transaction().expect("begin_transaction");
        }
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            let value = encoder.encode(r).unwrap();
            let k = key(r);
            let f = producer.send_result(FutureRecord::to(&topic).key(&k).payload(&value));
            pending.push(f.map_err(|(e, _)| e).expect("enqueue"));
            if pending.len() >= 10_000 {
                for p in pending.drain(..) {
                    p.await.unwrap().map_err(|(e, _)| e).expect("delivered");
                }
            }
        }
        for p in pending {
            p.await.unwrap().map_err(|(e, _)| e).expect("delivered");
        }
        if transactional {
            producer
                .commit_transaction(Duration::from_secs(30))
                .expect("commit_transaction");
        }
    }

    /// Waits until consumer group `group` is stable with `members` members (replicas started
    /// and assigned), within 60 s.
    pub async fn wait_for_group(&self, group: &str, members: usize) {
        let admin: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.stack.brokers)
            .create()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(list) = admin.fetch_group_list(Some(group), Duration::from_secs(5)) {
                if list
                    .groups()
                    .iter()
                    .any(|g| g.state() == "Stable" && g.members().len() == members)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "group {group} not stable with {members} members within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One partition of a topic as the cluster's metadata has it.
#[derive(Debug, Clone)]
pub struct PartitionState {
    pub id: i32,
    /// The node id of the leader (-1: none).
    pub leader: i32,
    pub replicas: usize,
    pub in_sync: usize,
}

/// The partitions of `topic`: leader, replicas, replicas in sync.
pub fn partitions(brokers: &str, topic: &str) -> Vec<PartitionState> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("metadata client");
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    meta.topics()[0]
        .partitions()
        .iter()
        .map(|p| PartitionState {
            id: p.id(),
            leader: p.leader(),
            replicas: p.replicas().len(),
            in_sync: p.isr().len(),
        })
        .collect()
}

/// The stack component of the node leading the most of `partitions`, and how many it leads.
pub fn busiest_leader(partitions: &[PartitionState]) -> (String, usize) {
    let mut led: HashMap<i32, usize> = HashMap::new();
    for p in partitions.iter().filter(|p| p.leader >= 0) {
        *led.entry(p.leader).or_default() += 1;
    }
    let (node, n) = led
        .into_iter()
        .max_by_key(|&(node, n)| (n, -node))
        .unwrap_or((1, 0));
    (kafka_node_name(node), n)
}

/// The local stack's name for Kafka node `id` (stack.sh: `kafka`, `kafka-2`, `kafka-3`).
pub fn kafka_node_name(id: i32) -> String {
    if id == 1 {
        "kafka".to_string()
    } else {
        format!("kafka-{id}")
    }
}
