//! Consume → transform → produce, at least once, with offsets that never pass an unfinished
//! record: a record's offset is stored only after every output it produced is confirmed by
//! Kafka and every earlier record is done too (outputs complete in input order, so storing in
//! completion order is storing in offset order per partition). Producing is idempotent, so a
//! restart repeats at most the records after the last committed offset — never drops one.
//! Issue #4 adds the transactional (exactly-once) variant.

use futures::stream::{FuturesOrdered, StreamExt};
use posflow_runtime::{Backoff, Context};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::future::Future;
use std::time::Duration;

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
    /// `topic/partition/offset`, for dead letters and logs.
    pub fn position(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// A record to produce.
#[derive(Debug, Clone)]
pub struct Output {
    pub topic: String,
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
}

/// Runs until shutdown, then drains: in-flight outputs finish (bounded by `drain`), their offsets
/// are stored and committed synchronously.
pub async fn run<F, Fut>(
    consumer: &StreamConsumer,
    producer: &FutureProducer,
    window: usize,
    drain: Duration,
    ctx: &Context,
    mut transform: F,
) -> Result<(), PipelineError>
where
    F: FnMut(Input) -> Fut,
    Fut: Future<Output = Result<Vec<Output>, Retry>>,
{
    let mut inflight = FuturesOrdered::new();
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                // Abandoned at shutdown: neither this offset nor any later one may be stored.
                let Some((topic, partition, offset)): Option<(String, i32, i64)> = done else { break };
                // After a rebalance the partition may be gone: its new owner re-reads from the
                // last committed offset, so a failed store only means a repeat, never a loss.
                if let Err(e) = consumer.store_offset(&topic, partition, offset) {
                    tracing::debug!(error = %e, topic, partition, "offset not stored (partition revoked?)");
                }
            }
            msg = consumer.recv(), if draining.is_none() && inflight.len() < window => {
                let msg = msg?;
                ctx.health.set_ready(true);
                let input = Input {
                    topic: msg.topic().to_string(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key: msg.key().map(<[u8]>::to_vec),
                    payload: msg.payload().map(<[u8]>::to_vec),
                    headers: msg.headers().map(|h| h.detach()),
                };
                drop(msg);
                let position = (input.topic.clone(), input.partition, input.offset);
                let outputs = transform_with_retry(&mut transform, input, ctx).await;
                let Some(outputs) = outputs else { break };
                let producer = producer.clone();
                let ctx = ctx.clone();
                inflight.push_back(async move {
                    for o in outputs {
                        produce_until_confirmed(&producer, &o, &ctx).await?;
                    }
                    Some(position)
                });
            }
            _ = ctx.shutdown.wait(), if draining.is_none() => {
                tracing::info!(in_flight = inflight.len(), "draining");
                draining = Some(tokio::time::Instant::now() + drain);
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if draining.is_some() => {}
        }
        if let Some(deadline) = draining {
            if inflight.is_empty() || tokio::time::Instant::now() > deadline {
                break;
            }
        }
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final commit");
    }
    Ok(())
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
        match transform(input.clone()).await {
            Ok(o) => return Some(o),
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
        let record = FutureRecord::to(&o.topic)
            .key(&o.key)
            .payload(&o.value)
            .headers(o.headers.clone());
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

/// The frame of a stage whose logic is still to come: consumes `topic` in `group`, decodes each
/// record as `T`, counts it under `metric{outcome="ok"|"undecodable"}` and commits, until
/// shutdown. It proves the stage deploys, scales and drains like the others.
pub async fn consume_and_decode<T: posflow_schema::AvroRecord>(
    args: &crate::KafkaArgs,
    stage: &str,
    topic: &str,
    metric: &prometheus::IntCounterVec,
    ctx: &Context,
    drain: Duration,
) -> anyhow::Result<()> {
    let decoder = posflow_schema::Decoder::<T>::new(args.registry());
    let client_id = format!("{stage}-{}", std::process::id());
    let consumer =
        crate::clients::consumer(args, &args.group(&format!("posflow-{stage}")), &client_id)?;
    consumer.subscribe(&[topic])?;
    let producer = crate::clients::producer(args, &client_id)?;
    ctx.health.set_ready(true);
    run(&consumer, &producer, 1000, drain, ctx, |input| {
        let decoder = &decoder;
        async move {
            match decoder
                .decode(input.payload.as_deref().unwrap_or_default())
                .await
            {
                Ok(_) => metric.with_label_values(&["ok"]).inc(),
                Err(e) if e.is_retriable() => return Err(Retry(e.to_string())),
                Err(_) => metric.with_label_values(&["undecodable"]).inc(),
            }
            Ok(vec![])
        }
    })
    .await?;
    Ok(())
}
