//! Reading a partition's recent past back from Kafka, to rebuild a stateful stage's state when
//! it takes a partition over: the partition's state topic (fraud's changelog, the validator's
//! outages; `topics::STATE_TOPICS`) or, for fraud's `--rebuild-from input`, the input itself.

use crate::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A consumer outside any group (it never commits), assigned one partition at a time. Made
/// again after a failed read: in a chaos run (issue 23) a replay consumer whose broker was
/// killed kept answering `UnknownPartition` for a partition that had a new leader, until the
/// run ended 30 s later, and the stage waited on it all that time. A fresh client starts from
/// fresh metadata.
pub struct Replayer {
    config: rdkafka::ClientConfig,
    consumer: std::sync::Mutex<Arc<BaseConsumer>>,
    skew_ms: i64,
}

impl Replayer {
    /// `stage` names the (never joined) group; `skew_ms`: how far record timestamps (set when
    /// written) may trail the times a caller asks from.
    pub fn new(args: &KafkaArgs, stage: &str, skew_ms: i64) -> Self {
        let mut config = args.client_config();
        config
            .set(
                "group.id",
                format!("posflow-{stage}-replay-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            // Read a partition as fast as the broker sends it. With the defaults librdkafka
            // stops fetching for 1 s (`fetch.queue.backoff.ms`) whenever 100,000 records wait
            // in its queue, which small state records reach in a few fetches: restoring
            // 2,000,000 of them took 14.6 s with the fraud process 85% idle (profiled, issue 23).
            .set("queued.min.messages", "1000000")
            .set("fetch.queue.backoff.ms", "5")
            .set("max.partition.fetch.bytes", "8388608")
            // The end of a partition shows as a fetch that finds nothing new, which the broker
            // holds up to this long: with the default 500 ms, each partition's rebuild ended
            // half a second after its last record.
            .set("fetch.wait.max.ms", "10");
        let consumer = Arc::new(config.create().expect("a consumer from checked settings"));
        Self {
            config,
            consumer: std::sync::Mutex::new(consumer),
            skew_ms,
        }
    }

    /// The records of `topic`/`partition` from `from` up to, not including, offset `until`
    /// (`None`: to the end). Committed records only. After an error the next read uses a new
    /// consumer.
    pub async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: Start,
        until: Option<i64>,
    ) -> KafkaResult<Vec<Record>> {
        let (consumer, topic) = (
            self.consumer.lock().expect("poisoned").clone(),
            topic.to_string(),
        );
        let since = match from {
            Start::Time(t) => Start::Time(t - self.skew_ms),
            at => at,
        };
        let result = tokio::task::spawn_blocking(move || {
            read_blocking(&consumer, &topic, partition, since, until)
        })
        .await
        .map_err(|_| KafkaError::Canceled)?;
        if result.is_err() {
            let fresh = Arc::new(self.config.create()?);
            let old = std::mem::replace(&mut *self.consumer.lock().expect("poisoned"), fresh);
            // Closing a client may wait on brokers: not on the runtime's threads.
            tokio::task::spawn_blocking(move || drop(old));
        }
        result
    }
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first record stamped at or after this time (ms) less the replayer's skew.
    Time(i64),
    /// This offset: where a local copy of the partition left off. An offset past the
    /// partition's end is an error ([`ahead_of_partition`]): the copy is of another
    /// incarnation of the topic.
    Offset(i64),
}

/// A record read back: its key, payload and offset.
pub struct Record {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub offset: i64,
}

/// Whether a read failed because its start offset is past the partition's end.
pub fn ahead_of_partition(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Seek(m) if m.starts_with(AHEAD))
}

const AHEAD: &str = "start offset past the partition's end";

fn read_blocking(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    since: Start,
    until: Option<i64>,
) -> KafkaResult<Vec<Record>> {
    let until = until.unwrap_or(i64::MAX);
    let start = match since {
        Start::Offset(o) => {
            let (low, high) =
                consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
            if o > high {
                return Err(KafkaError::Seek(format!("{AHEAD}: {o} > {high}")));
            }
            // Below the log start: retention took the records; what is left is all there is.
            o.max(low)
        }
        Start::Time(since) => {
            let mut by_time = TopicPartitionList::new();
            by_time.add_partition_offset(topic, partition, Offset::Offset(since.max(0)))?;
            let found = consumer.offsets_for_times(by_time, Duration::from_secs(10))?;
            let elements = found.elements();
            let Some(found) = elements.first() else {
                return Err(KafkaError::NoMessageReceived);
            };
            // A partition without a leader (a broker killed or hung) answers with an error:
            // that is not "nothing in the horizon", and restoring an empty state would miss
            // alerts. Retried.
            found.error()?;
            match found.offset() {
                Offset::Offset(o) => o,
                // No record stamped that late: nothing inside the horizon.
                _ => return Ok(Vec::new()),
            }
        }
    };
    if start >= until {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut out = Vec::new();
    let result = loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if m.offset() >= until {
                    break Ok(());
                }
                out.push(Record {
                    key: m.key().unwrap_or_default().to_vec(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    offset: m.offset(),
                });
                if m.offset() + 1 >= until {
                    break Ok(());
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break Ok(()),
            Some(Err(e)) => break Err(e),
            None if Instant::now() > deadline => break Err(KafkaError::NoMessageReceived),
            None => {}
        }
    };
    let _ = consumer.unassign();
    result.map(|()| out)
}

/// Each input's state topic must exist with at least the input's partitions (partition `p`
/// holds the state of input partition `p`); otherwise the stage stops with every mismatch.
pub fn check_state_topics<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    pairs: &[(&String, &String)],
) -> anyhow::Result<()> {
    let md = rdkafka::consumer::Consumer::fetch_metadata(
        consumer,
        None,
        std::time::Duration::from_secs(30),
    )
    .map_err(|e| anyhow::anyhow!("reading topic metadata: {e}"))?;
    let partitions = |name: &str| {
        md.topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
            .map(|t| t.partitions().len())
    };
    let mut errors = Vec::new();
    for (input, state) in pairs {
        match (partitions(input), partitions(state)) {
            (_, None) => errors.push(format!("state topic {state} is missing")),
            (Some(i), Some(s)) if s < i => errors.push(format!(
                "state topic {state} has {s} partitions, fewer than {input}'s {i}"
            )),
            _ => {}
        }
    }
    anyhow::ensure!(
        errors.is_empty(),
        "{} (run posflow-admin provision)",
        errors.join("; ")
    );
    Ok(())
}
