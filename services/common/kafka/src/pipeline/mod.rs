//! Consume → transform → produce, in the three modes a stage picks from
//! (docs/architecture.md):
//!
//! - [`at_least_once`] ([`run`]): outputs are produced idempotently and a record's offset is
//!   stored only after every output it produced is confirmed and every earlier record is done,
//!   so a restart repeats at most the records after the last committed offset — never drops one.
//! - [`exactly_once`] ([`run_transactional`]): outputs and input offsets of a batch are
//!   committed in one Kafka transaction, so a read_committed reader downstream sees each
//!   input's outputs exactly once, whatever crashes.
//! - the batch sink (`crate::sink`): records into a database, with the next offsets in the
//!   same database transaction.
//!
//! This module holds what they share: the record types, batching bounds, consuming, producing
//! until confirmed and retrying a transform.

use posflow_runtime::{Backoff, Context};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::future::Future;
use std::time::Duration;

pub mod at_least_once;
pub mod exactly_once;
pub use at_least_once::run;
pub use exactly_once::{
    run_transactional, run_transactional_restarting, transactional_clients, Committed, TxnContext,
};

/// A consumed record, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Input {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
}

impl Input {
    /// Copies a consumed message out of the consumer's buffer.
    pub fn detach(msg: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Self {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            headers: msg.headers().map(|h| h.detach()),
        }
    }

    /// `topic/partition/offset`, for dead letters and logs.
    pub fn position(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// A record to produce.
#[derive(Debug, Clone)]
pub struct Output {
    pub topic: String,
    /// `None`: the producer's partitioner picks by key (every event topic). A state topic names
    /// the partition of the input it mirrors.
    pub partition: Option<i32>,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// A transform failure worth waiting out (a registry or database that is down). Anything
/// permanent the transform turns into an output itself (a rejection or a dead letter).
#[derive(Debug)]
pub struct Retry(pub String);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("Kafka consumer: {0}")]
    Consumer(#[from] rdkafka::error::KafkaError),
    /// The producer was fenced by a newer instance with the same transactional id (this
    /// instance must stop: its replacement carries on), or hit another fatal transaction error
    /// that new clients cure (`exactly_once::run_transactional_restarting`).
    #[error("Kafka transactions: {0}")]
    Fatal(rdkafka::error::KafkaError),
}

/// What a consume→produce stage promises downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Delivery {
    /// Outputs and input offsets in one Kafka transaction per batch: a read_committed reader
    /// sees each input's outputs once.
    ExactlyOnce,
    /// Idempotent produce, offsets after confirmation: a crash may repeat the outputs of the
    /// records since the last commit, never lose one. Lower latency, no transaction overhead.
    AtLeastOnce,
}

/// Batch bounds for [`run_transactional`] and the batch sink (`sink::run`): a batch closes at `max_records` inputs or
/// `linger` after its first input, whichever comes first. Longer batches amortise the commit
/// (a few broker round trips); shorter ones deliver sooner downstream.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub max_records: usize,
    pub linger: Duration,
}

/// What `recv` gave: a message, or `None` for a consumer error worth waiting out — a topic
/// not yet known to this broker right after provisioning, a broker moving a partition —
/// which librdkafka recovers from by itself. Only a fatal consumer error ends the run.
pub async fn consumed<M>(
    r: Result<M, KafkaError>,
    ctx: &Context,
) -> Result<Option<M>, PipelineError> {
    match r {
        Ok(m) => {
            ctx.health.set_ready(true);
            Ok(Some(m))
        }
        Err(e @ KafkaError::MessageConsumptionFatal(_)) => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "consumer error; librdkafka retries");
            ctx.health.set_ready(false);
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(None)
        }
    }
}

async fn transform_with_retry<F, Fut>(
    transform: &mut F,
    input: Input,
    ctx: &Context,
) -> Option<Vec<Output>>
where
    F: FnMut(Input) -> Fut,
    Fut: Future<Output = Result<Vec<Output>, Retry>>,
{
    let mut backoff = Backoff::outage();
    loop {
        let started = std::time::Instant::now();
        match transform(input.clone()).await {
            Ok(o) => {
                posflow_runtime::metrics::Shared::processing()
                    .observe(started.elapsed().as_secs_f64());
                return Some(o);
            }
            Err(Retry(why)) => {
                tracing::warn!(
                    error = why,
                    position = input.position(),
                    "transform failed; retrying"
                );
                ctx.health.set_ready(false);
                if !backoff.wait(&ctx.shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Where Kafka put a record, and how many sends failed before it did.
#[derive(Debug, Clone, Copy)]
pub struct Confirmed {
    pub partition: i32,
    pub offset: i64,
    pub failed_attempts: u32,
}

/// Sends until Kafka confirms, with backoff between failed attempts. The producer is idempotent,
/// so retries never duplicate within a producer session. `None` when shutdown comes while the
/// send is failing: the caller must then neither acknowledge nor commit its input, which is
/// redelivered to the next owner.
pub async fn produce_until_confirmed(
    producer: &FutureProducer,
    o: &Output,
    ctx: &Context,
) -> Option<Confirmed> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failed_attempts = 0;
    loop {
        let mut record = FutureRecord::to(&o.topic)
            .key(&o.key)
            .payload(&o.value)
            .headers(o.headers.clone());
        record.partition = o.partition;
        match producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await
        {
            Ok(d) => {
                return Some(Confirmed {
                    partition: d.partition,
                    offset: d.offset,
                    failed_attempts,
                })
            }
            Err((e, _)) => {
                failed_attempts += 1;
                tracing::warn!(error = %e, topic = o.topic, "Kafka send failed; retrying");
                ctx.health.set_ready(false);
                if ctx.shutdown.is_triggered() {
                    return None;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Decodes, waiting out an unreachable schema registry; bad bytes are an `Err` (for a dead
/// letter). `None` when shutdown interrupts the wait.
pub async fn decode_with_retry<T: posflow_schema::AvroRecord>(
    decoder: &posflow_schema::Decoder<T>,
    payload: &[u8],
    ctx: &Context,
) -> Option<Result<T, String>> {
    let mut backoff = Backoff::outage();
    loop {
        match decoder.decode(payload).await {
            Ok(r) => return Some(Ok(r)),
            Err(e) if !e.is_retriable() => return Some(Err(e.to_string())),
            Err(e) => {
                tracing::warn!(error = %e, "schema registry unavailable; retrying");
                ctx.health.set_ready(false);
                if !backoff.wait(&ctx.shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Stores `next` (per topic and partition, the offset to resume from) for the consumer's
/// automatic commit, and empties it. Call only once everything below those offsets is handled.
pub fn store_next_offsets<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    next: &mut std::collections::BTreeMap<(String, i32), i64>,
) {
    for ((topic, partition), offset) in std::mem::take(next) {
        // A partition revoked meanwhile refuses the store; its next owner redelivers.
        let _ = consumer.store_offset(&topic, partition, offset - 1);
    }
}
