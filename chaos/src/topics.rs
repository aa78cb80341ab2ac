//! Reading a topic whole (read_committed: what every consumer of it sees), and writing records
//! back unchanged into another deployment's topic (the fault-free fraud run's input).

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A record as read, with what a copy needs to be the same input.
#[derive(Debug, Clone)]
pub struct Stored {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp: Option<i64>,
    pub headers: Option<OwnedHeaders>,
}

/// Every committed record of `topic`, in offset order per partition: read until each partition
/// reports its end (for read_committed, the last stable offset).
pub fn read_all(brokers: &str, topic: &str) -> anyhow::Result<Vec<Stored>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("chaos-checker-{}", rand::random::<u32>()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let mut tpl = TopicPartitionList::new();
    let ids: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    for p in &ids {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let (mut at_end, mut out) = (HashSet::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(300);
    while at_end.len() < ids.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{topic}: not read to its end in 5 minutes"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push(Stored {
                partition: m.partition(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                timestamp: m.timestamp().to_millis(),
                headers: m.headers().map(|h| h.detach()),
            }),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => eprintln!("[chaos] reading {topic}: {e} (retrying)"),
            None => {}
        }
    }
    Ok(out)
}

/// Records of `topics` that `group` has not committed yet: per partition, the offset after
/// the last committed data record (found by reading the partition's tail read_committed, as
/// transaction markers follow it) minus the group's committed offset.
pub fn group_behind(brokers: &str, group: &str, topics: &[String]) -> anyhow::Result<i64> {
    let config = |group_id: &str| {
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .clone()
    };
    // Only asked for its committed offsets: never subscribes, so it never joins the group.
    let member: BaseConsumer = config(group).create()?;
    let reader: BaseConsumer =
        config(&format!("chaos-checker-{}", rand::random::<u32>())).create()?;
    let mut behind = 0;
    for topic in topics {
        let md = reader.fetch_metadata(Some(topic), Duration::from_secs(30))?;
        for p in md.topics()[0].partitions().iter().map(|p| p.id()) {
            let (low, high) = reader.fetch_watermarks(topic, p, Duration::from_secs(30))?;
            let mut tail = TopicPartitionList::new();
            // The last data record is among the last offsets: only markers follow it.
            tail.add_partition_offset(topic, p, Offset::Offset((high - 1000).max(low)))?;
            reader.assign(&tail)?;
            let mut next = low;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                anyhow::ensure!(Instant::now() < deadline, "{topic}/{p}: tail not read");
                match reader.poll(Duration::from_millis(500)) {
                    Some(Ok(m)) => next = m.offset() + 1,
                    Some(Err(KafkaError::PartitionEOF(_))) => break,
                    _ => {}
                }
            }
            let mut asked = TopicPartitionList::new();
            asked.add_partition(topic, p);
            let committed = member.committed_offsets(asked, Duration::from_secs(30))?;
            let at = match committed.elements().first().map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            behind += (next - at).max(0);
        }
    }
    Ok(behind)
}

/// Writes `records` to `topic`, each to its original partition with its key, timestamp and
/// headers, in order; returns once Kafka has all.
pub fn copy(brokers: &str, topic: &str, records: &[Stored]) -> anyhow::Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()?;
    for r in records {
        let mut rec = BaseRecord::<Vec<u8>, Vec<u8>>::to(topic)
            .partition(r.partition)
            .payload(&r.value);
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        if let Some(t) = r.timestamp {
            rec = rec.timestamp(t);
        }
        if let Some(h) = &r.headers {
            rec = rec.headers(h.clone());
        }
        let mut rec = rec;
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => anyhow::bail!("copying to {topic}: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}
