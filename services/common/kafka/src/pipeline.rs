//! Consume → transform → produce, at least once, with offsets that never pass an unfinished
//! record: a record's offset is stored only after every output it produced is confirmed by
//! Kafka and every earlier record is done too (outputs complete in input order, so storing in
//! completion order is storing in offset order per partition). Producing is idempotent, so a
//! restart repeats at most the records after the last committed offset — never drops one.
//!
//! [`run_transactional`] is the exactly-once variant: outputs and input offsets of a batch are
//! committed in one Kafka transaction, so a read_committed reader downstream sees each input's
//! outputs exactly once, whatever crashes.

use futures::stream::{FuturesOrdered, StreamExt};
use posflow_runtime::{Backoff, Context};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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
    /// The producer was fenced by a newer instance with the same transactional id, or hit
    /// another fatal transaction error: this instance must stop (its replacement carries on).
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

/// Runs until shutdown, then drains: in-flight outputs finish (bounded by `drain`), their offsets
/// are stored and committed synchronously.
pub async fn run<F, Fut>(
    consumer: &StreamConsumer<crate::clients::LagContext>,
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
                let Some(msg) = consumed(msg, ctx).await? else { continue };
                let input = Input::detach(&msg);
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

/// Batch bounds for [`run_transactional`] and the batch sink (`sink::run`): a batch closes at `max_records` inputs or
/// `linger` after its first input, whichever comes first. Longer batches amortise the commit
/// (a few broker round trips); shorter ones deliver sooner downstream.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub max_records: usize,
    pub linger: Duration,
}

fn transaction_metrics() -> &'static prometheus::IntCounterVec {
    static M: std::sync::OnceLock<prometheus::IntCounterVec> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        posflow_runtime::metrics::counter_vec(
            "posflow_kafka_transactions_total",
            "Kafka transactions of the exactly-once pipeline, by outcome (committed, aborted)",
            &["outcome"],
        )
    })
}

/// Exactly-once consume → transform → produce (KIP-447). Each batch is one Kafka transaction
/// holding every output and the inputs' next offsets, sent with the consumer's group metadata,
/// so the group coordinator fences an instance that lost its partitions in a rebalance (a
/// zombie) and `init_transactions` fences an earlier incarnation with the same transactional id.
///
/// A batch closes after `max_records` inputs or `linger` after its first. Its transaction (begin,
/// produce every output, send offsets, commit: a few broker round trips) runs on a blocking
/// thread while the next batch is consumed and transformed, so the transform's CPU work and the
/// commit's waiting overlap. One transaction is in flight at a time (one producer).
///
/// On an abortable error the transaction is aborted and the consumer rewound to the first
/// offsets of both the failed batch and the one gathered meanwhile, which is dropped: both are
/// processed again. A fatal error (fenced) ends the run with [`PipelineError::Fatal`]: the
/// process must exit and be replaced. On shutdown the gathered batch is committed, then the run
/// ends.
///
/// The consumer must not commit by itself (`enable.auto.commit=false`) and the producer must
/// have a `transactional.id` (see `clients`).
pub async fn run_transactional<F, Fut>(
    consumer: &StreamConsumer<TxnContext>,
    producer: &FutureProducer,
    batching: Batching,
    ctx: &Context,
    mut transform: F,
) -> Result<(), PipelineError>
where
    F: FnMut(Input) -> Fut,
    Fut: Future<Output = Result<Vec<Output>, Retry>>,
{
    let txns = transaction_metrics();
    let shared = consumer.context().clone();
    tokio::task::block_in_place(|| producer.init_transactions(TXN_CALL))
        .map_err(PipelineError::Fatal)?;
    let mut gathering = Batch::default();
    let mut deadline: Option<tokio::time::Instant> = None;
    // The batch being committed (its first offsets, for a rewind) and its commit.
    let mut committing: Option<(Positions, tokio::task::JoinHandle<Result<(), TxnError>>)> = None;
    let mut stopping = false;
    loop {
        if shared.0.revoked.swap(false, Ordering::SeqCst) && gathering.inputs > 0 {
            // Partitions were taken away while this batch gathered: it must not commit (their
            // new owner may be on the same records already). Dropped; the partitions still ours
            // go back to its first offsets (seeking a revoked one fails harmlessly).
            let dropped = std::mem::take(&mut gathering);
            deadline = None;
            rewind(consumer, &dropped.first);
        }
        let full = gathering.inputs >= batching.max_records;
        let due = full || stopping || deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        if committing.is_none() && gathering.inputs > 0 && due {
            let batch = std::mem::take(&mut gathering);
            deadline = None;
            let group = consumer.group_metadata();
            posflow_runtime::metrics::Shared::batch_size().observe(batch.inputs as f64);
            let producer = producer.clone();
            let first = batch.first.clone();
            let shared = shared.clone();
            shared.set_committing(true);
            committing = Some((
                first,
                tokio::task::spawn_blocking(move || {
                    let result = commit(&producer, batch, group);
                    shared.set_committing(false);
                    result
                }),
            ));
        }
        if stopping && committing.is_none() && gathering.inputs == 0 {
            return Ok(());
        }
        let linger = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            done = async { (&mut committing.as_mut().expect("guarded").1).await }, if committing.is_some() => {
                let (first, _) = committing.take().expect("guarded");
                let result = done.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "transaction commit task failed");
                    Err(TxnError::Abort(KafkaError::Canceled))
                });
                match result {
                    Ok(()) => txns.with_label_values(&["committed"]).inc(),
                    Err(TxnError::Fatal(e)) => return Err(PipelineError::Fatal(e)),
                    Err(TxnError::Abort(e)) => {
                        txns.with_label_values(&["aborted"]).inc();
                        tracing::warn!(error = %e, "transaction aborted; its batch and the next will be processed again");
                        ctx.health.set_ready(false);
                        tokio::task::block_in_place(|| producer.abort_transaction(TXN_CALL))
                            .map_err(PipelineError::Fatal)?;
                        let mut from = first;
                        for (k, o) in std::mem::take(&mut gathering).first {
                            from.entry(k).or_insert(o);
                        }
                        deadline = None;
                        rewind(consumer, &from);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            msg = consumer.recv(), if !full && !stopping => {
                let Some(msg) = consumed(msg, ctx).await? else { continue };
                let input = Input::detach(&msg);
                drop(msg);
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + batching.linger);
                gathering.track(&input);
                match transform_with_retry(&mut transform, input, ctx).await {
                    Some(outputs) => gathering.outputs.extend(outputs),
                    // Shut down while waiting out an outage: the gathered batch is dropped
                    // (never begun); a commit in flight is let finish.
                    None => {
                        if let Some((_, c)) = committing.take() {
                            let _ = c.await;
                        }
                        return Ok(());
                    }
                }
            }
            _ = linger, if committing.is_none() => {}
            _ = ctx.shutdown.wait(), if !stopping => stopping = true,
        }
    }
}

/// A consumer for [`run_transactional`]: offsets are committed only inside transactions, and
/// revocations wait for the transaction in flight ([`TxnContext`]).
pub fn transactional_consumer(
    args: &crate::KafkaArgs,
    group: &str,
    client_id: &str,
) -> rdkafka::error::KafkaResult<StreamConsumer<TxnContext>> {
    crate::clients::consumer_config(args, group, client_id)
        .set("enable.auto.commit", "false")
        .create_with_context(TxnContext::default())
}

/// The consumer context the exactly-once pipeline runs with. A revocation (a rebalance taking
/// partitions away) must not let this instance commit work for those partitions afterwards: the
/// new owner may already have read the committed offsets and started on the same records, and the
/// group generation alone does not stop it (a cooperative rebalance keeps this member in the
/// group). So a revocation waits, in the rebalance callback, for the transaction in flight to
/// finish, and the pipeline drops the batch it gathered but had not begun to commit.
#[derive(Clone, Default)]
pub struct TxnContext(Arc<TxnShared>);

#[derive(Default)]
struct TxnShared {
    committing: Mutex<bool>,
    committed: Condvar,
    revoked: AtomicBool,
    revoked_partitions: Mutex<Vec<(String, i32)>>,
}

impl rdkafka::ClientContext for TxnContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::clients::record_lag(&statistics);
    }
}

impl rdkafka::consumer::ConsumerContext for TxnContext {
    fn pre_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            let mut busy = self.0.committing.lock().expect("poisoned");
            while *busy {
                busy = self.0.committed.wait(busy).expect("poisoned");
            }
            self.0.revoked.store(true, Ordering::SeqCst);
            self.0.revoked_partitions.lock().expect("poisoned").extend(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition())),
            );
        }
    }
}

impl TxnContext {
    /// Partitions revoked since the last call: a stateful stage drops their state.
    pub fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.0.revoked_partitions.lock().expect("poisoned"))
    }

    fn set_committing(&self, busy: bool) {
        *self.0.committing.lock().expect("poisoned") = busy;
        if !busy {
            self.0.committed.notify_all();
        }
    }
}

/// Bound on each blocking transaction call (init, send offsets, commit, abort).
const TXN_CALL: Duration = Duration::from_secs(30);

/// An offset per (topic, partition).
type Positions = BTreeMap<(String, i32), i64>;

/// A batch's inputs (first and next offset per partition) and outputs.
#[derive(Default)]
struct Batch {
    inputs: usize,
    first: Positions,
    next: Positions,
    outputs: Vec<Output>,
}

impl Batch {
    fn track(&mut self, i: &Input) {
        self.inputs += 1;
        let key = (i.topic.clone(), i.partition);
        self.first.entry(key.clone()).or_insert(i.offset);
        let next = self.next.entry(key).or_default();
        *next = (*next).max(i.offset + 1);
    }
}

enum TxnError {
    Abort(KafkaError),
    Fatal(KafkaError),
}

impl From<KafkaError> for TxnError {
    fn from(e: KafkaError) -> Self {
        match &e {
            KafkaError::Transaction(t) if t.is_fatal() => TxnError::Fatal(e),
            _ => TxnError::Abort(e),
        }
    }
}

/// One batch as one transaction, on a blocking thread: begin, produce, send offsets, commit.
fn commit(
    producer: &FutureProducer,
    batch: Batch,
    group: Option<rdkafka::consumer::ConsumerGroupMetadata>,
) -> Result<(), TxnError> {
    // Present once the consumer has joined its group, which it has if it delivered inputs.
    let group = group.ok_or(KafkaError::Rebalance(RDKafkaErrorCode::InvalidGroupId))?;
    producer
        .begin_transaction()
        .map_err(|e| match TxnError::from(e) {
            // Beginning fails only in a broken state: nothing to abort, the instance must go.
            TxnError::Abort(e) | TxnError::Fatal(e) => TxnError::Fatal(e),
        })?;
    for o in &batch.outputs {
        let mut record = FutureRecord::to(&o.topic)
            .key(&o.key)
            .payload(&o.value)
            .headers(o.headers.clone());
        loop {
            // Delivery is confirmed by the commit (it flushes and fails if any send failed),
            // so the per-record futures are not awaited.
            match producer.send_result(record) {
                Ok(_) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in &batch.next {
        offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    producer.send_offsets_to_transaction(&offsets, &group, TXN_CALL)?;
    let mut attempts = 0;
    loop {
        match producer.commit_transaction(TXN_CALL) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(t)) if t.is_retriable() && attempts < 5 => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// After an abort, back to each partition's first offset of the batch (where the last
/// committed transaction left it). A partition revoked meanwhile is skipped: its new owner
/// starts from the committed offset anyway.
fn rewind(consumer: &StreamConsumer<TxnContext>, first: &Positions) {
    for ((topic, partition), offset) in first {
        if let Err(e) = consumer.seek(
            topic,
            *partition,
            Offset::Offset(*offset),
            Duration::from_secs(10),
        ) {
            tracing::debug!(error = %e, topic, partition, "rewind skipped (partition revoked?)");
        }
    }
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
