//! Producer and consumer settings posflow's guarantees depend on, in one place.

use crate::KafkaArgs;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

/// An idempotent producer (implies acks=all): a retried send is never written twice, and a
/// partition's records keep their order. `delivery.timeout.ms` bounds how long a send may take
/// before it fails and the caller must not acknowledge its input.
pub fn producer(args: &KafkaArgs, client_id: &str) -> rdkafka::error::KafkaResult<FutureProducer> {
    producer_config(args, client_id).create()
}

pub fn producer_config(args: &KafkaArgs, client_id: &str) -> ClientConfig {
    let mut c = args.client_config();
    c.set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("delivery.timeout.ms", "30000")
        .set("message.timeout.ms", "30000")
        .set("queue.buffering.max.messages", "100000");
    c
}

/// A transactional producer for the exactly-once pipeline. `transactional_id` must be stable
/// per instance (a restarted instance fences its earlier incarnation) and unique among live ones.
pub fn transactional_producer(
    args: &KafkaArgs,
    client_id: &str,
    transactional_id: &str,
) -> rdkafka::error::KafkaResult<FutureProducer> {
    producer_config(args, client_id)
        .set("transactional.id", transactional_id)
        // A crashed instance's open transaction blocks read_committed readers of its output
        // partitions until the broker aborts it (or a restart with the same id fences it).
        .set("transaction.timeout.ms", "30000")
        // The coordinator answers CONCURRENT_TRANSACTIONS to a transaction's AddOffsetsToTxn
        // while it still writes the previous one's commit markers (a millisecond or two here),
        // and librdkafka retries after retry.backoff.ms — 100 ms by default, which was half the
        // validated hop's latency (BENCHMARKS.md; the Java client retries this after 20 ms,
        // KAFKA-5477). librdkafka backs off exponentially from this value up to
        // retry.backoff.max.ms, so an outage is not hammered.
        .set("retry.backoff.ms", "5")
        .create()
}

/// A consumer that never moves an offset by itself: the stage stores an offset only once the
/// record and every earlier one on its partition is fully handled; librdkafka then commits the
/// stored offsets in the background.
pub fn consumer(
    args: &KafkaArgs,
    group: &str,
    client_id: &str,
) -> rdkafka::error::KafkaResult<StreamConsumer<LagContext>> {
    consumer_config(args, group, client_id).create_with_context(LagContext)
}

/// A consumer context that only reports lag (see [`record_lag`]); other contexts call it too.
#[derive(Clone, Copy, Default)]
pub struct LagContext;

impl rdkafka::ClientContext for LagContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        record_lag(&statistics);
    }
}

impl rdkafka::consumer::ConsumerContext for LagContext {}

/// Sets `posflow_consumer_lag` from librdkafka's statistics (every `statistics.interval.ms`):
/// one series per partition this replica consumes now — a revoked partition's series goes.
///
/// Computed here rather than taken from librdkafka's `consumer_lag`, which counts from the
/// consumer's own commits: the exactly-once stages commit offsets through the producer's
/// transaction, which the consumer never hears of. Lag = end of the partition (the last stable
/// offset: every consumer reads committed) − the next offset this replica will hand the stage.
pub fn record_lag(statistics: &rdkafka::Statistics) {
    let gauge = posflow_runtime::metrics::Shared::consumer_lag();
    gauge.reset();
    for (topic, t) in &statistics.topics {
        for (partition, p) in &t.partitions {
            if let Some(lag) = partition_lag(*partition, p) {
                gauge
                    .with_label_values(&[topic.as_str(), &partition.to_string()])
                    .set(lag);
            }
        }
    }
}

/// One partition's lag; `None` when it is not this consumer's or it has no position yet (no
/// record consumed and nothing committed).
fn partition_lag(partition: i32, p: &rdkafka::statistics::Partition) -> Option<i64> {
    // -1 is librdkafka's internal unassigned partition.
    if partition < 0 || !p.desired {
        return None;
    }
    let end = if p.ls_offset >= 0 {
        p.ls_offset
    } else {
        p.hi_offset
    };
    let at = p.app_offset.max(p.committed_offset);
    (end >= 0 && at >= 0).then(|| (end - at).max(0))
}

pub fn consumer_config(args: &KafkaArgs, group: &str, client_id: &str) -> ClientConfig {
    let mut c = args.client_config();
    c.set("group.id", group)
        .set("client.id", client_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("max.poll.interval.ms", "300000")
        // Statistics feed `posflow_consumer_lag` (see `record_lag`).
        .set("statistics.interval.ms", "5000");
    c
}

/// How long an input topic may be missing from the brokers' metadata before the stage stops:
/// long enough for a topic created a moment ago to reach every broker, short enough that a
/// deleted input (or a wrong --topic-prefix) stops the stage within seconds.
pub const INPUT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves, with the reason, once one of `topics` has been missing from the brokers' metadata
/// for longer than [`INPUT_GRACE`]. librdkafka reports a vanished subscription only once, if at
/// all, and then waits for ever; this asks every 2 s. Kafka unreachable is not a vanished topic
/// (connectivity has its own watch).
pub async fn input_vanished(args: KafkaArgs, topics: Vec<String>) -> anyhow::Error {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: std::sync::Arc<BaseConsumer> = match args
        .client_config()
        .set("allow.auto.create.topics", "false")
        .create()
    {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => return anyhow::anyhow!("creating the topic probe: {e}"),
    };
    let mut missing_since: Option<std::time::Instant> = None;
    loop {
        let (p, t) = (probe.clone(), topics.clone());
        let missing = tokio::task::spawn_blocking(move || {
            let mut missing = Vec::new();
            for topic in &t {
                match p.fetch_metadata(Some(topic), std::time::Duration::from_secs(5)) {
                    Ok(md) => {
                        if md
                            .topics()
                            .iter()
                            .any(|m| m.name() == topic && m.error().is_some())
                        {
                            missing.push(topic.clone());
                        }
                    }
                    Err(_) => return None, // unreachable: not this watch's business
                }
            }
            Some(missing)
        })
        .await
        .ok()
        .flatten();
        match missing {
            Some(m) if !m.is_empty() => {
                let since = *missing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > INPUT_GRACE {
                    tracing::error!(topics = ?m, "input topics missing from Kafka (deleted? wrong --topic-prefix?): stopping");
                    return anyhow::anyhow!(
                        "input topics {m:?} missing from Kafka for over {INPUT_GRACE:?}"
                    );
                }
            }
            _ => missing_since = None,
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// Keeps `/readyz` honest about Kafka: every 2 s asks a broker for metadata (through the
/// producer's own connections) and marks the stage unready while none answers.
pub fn watch_connectivity(producer: std::sync::Arc<FutureProducer>, ctx: posflow_runtime::Context) {
    use rdkafka::producer::Producer;
    tokio::spawn(async move {
        loop {
            let p = producer.clone();
            let ok = tokio::task::spawn_blocking(move || {
                p.client()
                    .fetch_metadata(None, std::time::Duration::from_secs(2))
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            ctx.health.set_kafka_reachable(ok);
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = ctx.shutdown.wait() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::partition_lag;
    use rdkafka::statistics::Partition;

    fn partition(ls: i64, hi: i64, app: i64, committed: i64) -> Partition {
        Partition {
            desired: true,
            ls_offset: ls,
            hi_offset: hi,
            app_offset: app,
            committed_offset: committed,
            ..Default::default()
        }
    }

    #[test]
    fn lag_counts_from_the_position_to_the_last_stable_offset() {
        // Consumed up to 40 of 100: 60 behind, whatever was committed earlier.
        assert_eq!(partition_lag(0, &partition(100, 120, 40, 30)), Some(60));
        // Nothing consumed since the assignment: from the committed offset.
        assert_eq!(partition_lag(0, &partition(100, 120, -1001, 30)), Some(70));
        // No last stable offset reported: the high watermark.
        assert_eq!(
            partition_lag(0, &partition(-1001, 120, 100, -1001)),
            Some(20)
        );
        // Caught up, or a stale end offset behind the position: 0.
        assert_eq!(partition_lag(0, &partition(100, 100, 100, 90)), Some(0));
        assert_eq!(partition_lag(0, &partition(90, 90, 100, 90)), Some(0));
    }

    #[test]
    fn partitions_without_a_position_or_not_ours_have_no_lag() {
        assert_eq!(partition_lag(0, &partition(100, 120, -1001, -1001)), None);
        assert_eq!(partition_lag(-1, &partition(100, 120, 40, 30)), None);
        let mut other = partition(100, 120, 40, 30);
        other.desired = false;
        assert_eq!(partition_lag(0, &other), None);
    }
}
