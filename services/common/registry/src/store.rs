//! The registry on Kafka: `pos.terminals`, compacted, one partition. Writes are one Kafka
//! transaction each (a reader sees a whole `apply` or none of it); readers read committed.

use crate::{Cache, Snapshot};
use anyhow::Context as _;
use posflow_kafka::KafkaArgs;
use posflow_runtime::Context;
use posflow_schema::{Decoder, Encoder, TerminalRegistration};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// A reader of the whole topic from its first offset. No consumer group is joined and no
/// offset is committed: every reader wants all of it, every time.
fn reader(args: &KafkaArgs, client_id: &str) -> anyhow::Result<StreamConsumer> {
    let topic = args.topics().terminals();
    let consumer: StreamConsumer = args
        .client_config()
        // Required by librdkafka, never used: partitions are assigned, not subscribed.
        .set("group.id", "posflow-registry-reader")
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        // "At the end" is how a reader knows it has the whole registry.
        .set("enable.partition.eof", "true")
        .create()
        .context("creating the registry reader")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// What one record does to the registry: a registration, or (a tombstone) its removal.
async fn read_one(
    decoder: &Decoder<TerminalRegistration>,
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> Option<Result<TerminalRegistration, String>> {
    let key = String::from_utf8_lossy(m.key()?).into_owned();
    Some(match m.payload() {
        None => Err(key),
        Some(bytes) => match decoder.decode(bytes).await {
            Ok(r) => Ok(r),
            Err(e) => {
                // Only posflow-admin writes here; an unreadable record is corruption or a
                // foreign writer. It is skipped, loudly, and the terminal keeps what it had.
                tracing::error!(terminal_id = %key, offset = m.offset(), error = %e, "unreadable terminal registration skipped");
                return None;
            }
        },
    })
}

/// The whole registry as committed now.
pub async fn load(args: &KafkaArgs, timeout: Duration) -> anyhow::Result<Snapshot> {
    let consumer = reader(args, "posflow-admin")?;
    let decoder = Decoder::new(args.registry());
    let mut snapshot = Snapshot::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .with_context(|| {
                format!("the terminal registry was not read to its end within {timeout:?}")
            })?;
        match m {
            Err(KafkaError::PartitionEOF(_)) => return Ok(snapshot),
            Err(e) => anyhow::bail!("reading the terminal registry: {e}"),
            Ok(m) => match read_one(&decoder, &m).await {
                Some(Ok(r)) => {
                    snapshot.insert(r.terminal_id.clone(), r);
                }
                Some(Err(gone)) => {
                    snapshot.remove(&gone);
                }
                None => {}
            },
        }
    }
}

/// Writes `records` in one Kafka transaction. Two writers at once fence each other (one
/// transactional id per deployment): the loser's commit fails and nothing of it is visible.
pub async fn write(args: &KafkaArgs, records: &[TerminalRegistration]) -> anyhow::Result<()> {
    let topic = args.topics().terminals();
    let encoder = Encoder::<TerminalRegistration>::for_topic(&args.registry(), &topic)
        .await
        .context("the registry topic's schema (was posflow-admin provision run?)")?;
    let values = records
        .iter()
        .map(|r| Ok((r.terminal_id.clone(), encoder.encode(r)?)))
        .collect::<Result<Vec<_>, posflow_schema::CodecError>>()?;
    let txn_id = format!("posflow-admin-terminals-{topic}");
    let producer: BaseProducer = posflow_kafka::clients::producer_config(args, "posflow-admin")
        .set("transactional.id", &txn_id)
        .create()?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let t = Timeout::After(Duration::from_secs(30));
        producer
            .init_transactions(t)
            .context("starting the registry transaction")?;
        producer.begin_transaction()?;
        for (key, value) in &values {
            let mut record = BaseRecord::to(&topic).key(key).payload(value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(100));
                    }
                    Err((e, _)) => {
                        let _ = producer.abort_transaction(t);
                        return Err(e).context("writing the registry");
                    }
                }
            }
        }
        producer
            .commit_transaction(Timeout::After(Duration::from_secs(60)))
            .context("committing the registry change (nothing of it is visible)")
    })
    .await?
}

/// Fills `cache` from the topic and keeps it current until shutdown. Returns once the cache
/// holds the whole committed registry (the bridge starts taking messages only then), or with
/// an error at shutdown before that.
pub async fn follow(args: &KafkaArgs, cache: Cache, ctx: Context) -> anyhow::Result<()> {
    let consumer = reader(args, "posflow-bridge-registry")?;
    let decoder = Decoder::new(args.registry());
    let (loaded_tx, loaded) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut loaded_tx = Some(loaded_tx);
        loop {
            let m = tokio::select! {
                m = consumer.recv() => m,
                _ = ctx.shutdown.wait() => return,
            };
            match m {
                Err(KafkaError::PartitionEOF(_)) => {
                    if let Some(tx) = loaded_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the terminal registry; retrying"),
                Ok(m) => match read_one(&decoder, &m).await {
                    Some(Ok(r)) => {
                        if loaded_tx.is_none() {
                            tracing::info!(terminal_id = %r.terminal_id, merchant_id = %r.merchant_id, status = %r.status, changed_by = %r.changed_by, "terminal registration changed");
                        }
                        cache.apply(&r);
                    }
                    Some(Err(gone)) => cache.remove(&gone),
                    None => {}
                },
            }
        }
    });
    let mut waited = 0u64;
    let mut loaded = loaded;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), &mut loaded).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(_)) => anyhow::bail!("shut down before the terminal registry was read"),
            Err(_) => {
                waited += 10;
                tracing::warn!(
                    waited_secs = waited,
                    "still reading the terminal registry (is Kafka reachable?)"
                );
            }
        }
    }
}
