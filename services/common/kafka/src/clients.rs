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
        .create()
}

/// A consumer for the exactly-once pipeline: offsets are committed only inside transactions,
/// and revocations wait for the transaction in flight (`pipeline::TxnContext`).
pub fn transactional_consumer(
    args: &KafkaArgs,
    group: &str,
    client_id: &str,
) -> rdkafka::error::KafkaResult<StreamConsumer<crate::pipeline::TxnContext>> {
    consumer_config(args, group, client_id)
        .set("enable.auto.commit", "false")
        .create_with_context(crate::pipeline::TxnContext::default())
}

/// A consumer that never moves an offset by itself: the stage stores an offset only once the
/// record and every earlier one on its partition is fully handled; librdkafka then commits the
/// stored offsets in the background.
pub fn consumer(
    args: &KafkaArgs,
    group: &str,
    client_id: &str,
) -> rdkafka::error::KafkaResult<StreamConsumer> {
    consumer_config(args, group, client_id).create()
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
        .set("max.poll.interval.ms", "300000");
    c
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
