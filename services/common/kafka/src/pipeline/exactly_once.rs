//! Exactly once (KIP-447): each batch is one Kafka transaction holding its outputs and its
//! inputs' next offsets.

use posflow_runtime::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use super::{consumed, transform_with_retry, Batching, Input, Output, PipelineError, Retry};

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
/// processed again. A fatal error ends the run with [`PipelineError::Fatal`] (or a fatal
/// consumer error): [`run_transactional_restarting`] decides whether new clients cure it or the
/// process must exit. On shutdown the gathered batch is committed, then the run ends.
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
    tokio::task::block_in_place(|| producer.init_transactions(TXN_CALL))
        .map_err(PipelineError::Fatal)?;
    let mut t = Transactions {
        consumer,
        producer,
        gathering: Batch::default(),
        deadline: None,
        committing: None,
    };
    let mut stopping = false;
    loop {
        t.drop_if_revoked();
        let full = t.gathering.inputs >= batching.max_records;
        let due = full || stopping || t.deadline.is_some_and(|d| Instant::now() >= d);
        if t.committing.is_none() && t.gathering.inputs > 0 && due {
            t.begin_commit();
        }
        if stopping && t.committing.is_none() && t.gathering.inputs == 0 {
            return Ok(());
        }
        let deadline = t.deadline;
        let linger = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            done = async { (&mut t.committing.as_mut().expect("guarded").1).await }, if t.committing.is_some() => {
                t.committed(done, ctx).await?;
            }
            msg = consumer.recv(), if !full && !stopping => {
                let Some(msg) = consumed(msg, ctx).await? else { continue };
                let input = Input::detach(&msg);
                drop(msg);
                t.deadline.get_or_insert_with(|| Instant::now() + batching.linger);
                t.gathering.track(&input);
                match transform_with_retry(&mut transform, input, ctx).await {
                    Some(outputs) => t.gathering.outputs.extend(outputs),
                    // Shut down while waiting out an outage: the gathered batch is dropped
                    // (never begun); a commit in flight is let finish.
                    None => {
                        if let Some((_, c)) = t.committing.take() {
                            let _ = c.await;
                        }
                        return Ok(());
                    }
                }
            }
            _ = linger, if t.committing.is_none() => {}
            _ = ctx.shutdown.wait(), if !stopping => stopping = true,
        }
    }
}

/// The loop's state: the batch gathering and the one being committed.
struct Transactions<'a> {
    consumer: &'a StreamConsumer<TxnContext>,
    producer: &'a FutureProducer,
    gathering: Batch,
    /// When the gathering batch is due (`linger` after its first input).
    deadline: Option<Instant>,
    /// The batch being committed (its first offsets, for a rewind) and its commit.
    committing: Option<(Positions, tokio::task::JoinHandle<Result<(), TxnError>>)>,
}

impl Transactions<'_> {
    /// Partitions were taken away while this batch gathered: it must not commit (their new
    /// owner may be on the same records already). Dropped; the partitions still ours go back
    /// to its first offsets (seeking a revoked one fails harmlessly).
    fn drop_if_revoked(&mut self) {
        let shared = self.consumer.context();
        if shared.0.revoked.swap(false, Ordering::SeqCst) && self.gathering.inputs > 0 {
            let dropped = std::mem::take(&mut self.gathering);
            self.deadline = None;
            rewind(self.consumer, &dropped.first);
        }
    }

    /// Commits the gathered batch on a blocking thread while the next one gathers.
    fn begin_commit(&mut self) {
        let batch = std::mem::take(&mut self.gathering);
        self.deadline = None;
        let group = self.consumer.group_metadata();
        posflow_runtime::metrics::Shared::batch_size().observe(batch.inputs as f64);
        let producer = self.producer.clone();
        let first = batch.first.clone();
        let shared = self.consumer.context().clone();
        shared.set_committing(true);
        let commit = tokio::task::spawn_blocking(move || {
            let tracked = shared.tracked();
            let result = commit(&producer, batch, group, &tracked).map(|(committed, gap)| {
                if gap {
                    shared.0.gap.store(true, Ordering::SeqCst);
                }
                if !committed.is_empty() {
                    let mut q = shared.0.committed_records.lock().expect("poisoned");
                    q.extend(committed);
                }
            });
            shared.set_committing(false);
            result
        });
        self.committing = Some((first, commit));
    }

    /// The commit in flight ended. On an abort, the transaction is aborted and the consumer
    /// rewound to the first offsets of both the failed batch and the one gathered meanwhile,
    /// which is dropped: both are processed again.
    async fn committed(
        &mut self,
        done: Result<Result<(), TxnError>, tokio::task::JoinError>,
        ctx: &Context,
    ) -> Result<(), PipelineError> {
        let txns = transaction_metrics();
        let (first, _) = self.committing.take().expect("guarded");
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
                tokio::task::block_in_place(|| self.producer.abort_transaction(TXN_CALL))
                    .map_err(PipelineError::Fatal)?;
                let mut from = first;
                for (k, o) in std::mem::take(&mut self.gathering).first {
                    from.entry(k).or_insert(o);
                }
                self.deadline = None;
                rewind(self.consumer, &from);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}

/// The consumer and producer of one instance of an exactly-once stage, for
/// [`run_transactional`]: client id `<stage>-<instance>`, a static group member named
/// `instance`, and the transactional id `<group>-<instance>` — unique per instance and stable
/// across its restarts, so a restarted instance fences its predecessor's open transaction.
/// The consumer reports rebalances to `context`, which a stateful stage keeps a clone of
/// ([`TxnContext::take_moved`]); clients made again by [`run_transactional_restarting`] share it.
pub fn transactional_clients(
    args: &crate::KafkaArgs,
    group: &str,
    stage: &str,
    instance: &str,
    context: &TxnContext,
) -> rdkafka::error::KafkaResult<(StreamConsumer<TxnContext>, FutureProducer)> {
    let client_id = format!("{stage}-{instance}");
    let consumer = transactional_consumer(args, group, &client_id, instance, context.clone())?;
    let producer =
        crate::clients::transactional_producer(args, &client_id, &format!("{group}-{instance}"))?;
    Ok((consumer, producer))
}

/// Restarts of the clients allowed within [`RESTART_WINDOW`] before the error ends the run.
const RESTARTS_PER_WINDOW: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// [`run_transactional`] over `topics`, making the clients again (`again`) after a fatal
/// Kafka error that a restart of the process would cure, instead of ending the process:
/// - a static member fenced after a group-coordinator failover (`FencedInstanceId`: the
///   coordinator gave this member a new id whose answer was lost on the way);
/// - an idempotent producer whose sequences fell out of step with a broker that was killed.
///
/// Both came up in every chaos run (issue 23). The open transaction is aborted by the new
/// producer's `init_transactions`; the new consumer's assignment reaches the stage as moved
/// partitions, so their state is restored again. Not restarted: a producer fenced by a newer
/// instance with the same transactional id (a second process with this instance id), or more
/// than [`RESTARTS_PER_WINDOW`] restarts in [`RESTART_WINDOW`] — the process then exits and
/// its supervisor decides.
pub async fn run_transactional_restarting<F, Fut>(
    first: (StreamConsumer<TxnContext>, FutureProducer),
    again: impl Fn() -> rdkafka::error::KafkaResult<(StreamConsumer<TxnContext>, FutureProducer)>,
    topics: &[&str],
    batching: Batching,
    ctx: &Context,
    mut transform: F,
) -> Result<(), PipelineError>
where
    F: FnMut(Input) -> Fut,
    Fut: Future<Output = Result<Vec<Output>, Retry>>,
{
    // Registered at once, so the series exists (at 0) before the first restart.
    let restarted = restart_metrics();
    let mut clients = first;
    let mut restarts: std::collections::VecDeque<Instant> = Default::default();
    loop {
        clients
            .0
            .subscribe(topics)
            .map_err(PipelineError::Consumer)?;
        let result = run_transactional(&clients.0, &clients.1, batching, ctx, &mut transform).await;
        let Err(e) = result else { return Ok(()) };
        restarts.retain(|at| at.elapsed() < RESTART_WINDOW);
        if !curable_by_restart(&e) || restarts.len() >= RESTARTS_PER_WINDOW {
            return Err(e);
        }
        restarts.push_back(Instant::now());
        restarted.inc();
        tracing::warn!(error = %e, restarts = restarts.len(), "fatal Kafka client error: making the clients again");
        ctx.health.set_ready(false);
        // Closing a consumer blocks while it leaves; not on the runtime's threads.
        tokio::task::block_in_place(|| drop(clients));
        clients = again().map_err(PipelineError::Consumer)?;
    }
}

fn restart_metrics() -> &'static prometheus::IntCounter {
    static M: std::sync::OnceLock<prometheus::IntCounter> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        posflow_runtime::metrics::counter(
            "posflow_kafka_client_restarts_total",
            "Kafka clients made again in-process after a fatal error a restart cures (fenced static member, producer out of sequence)",
        )
    })
}

/// Whether making the clients again gets the stage going: any fatal consumer or transaction
/// error except being fenced by a newer instance with the same transactional id.
fn curable_by_restart(e: &PipelineError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e {
        PipelineError::Consumer(KafkaError::MessageConsumptionFatal(_)) => true,
        PipelineError::Consumer(_) => false,
        PipelineError::Fatal(k) => {
            let fenced_by_newer = matches!(
                k.rdkafka_error_code(),
                Some(C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch)
            ) || k.to_string().contains("fenced by a newer instance");
            !fenced_by_newer
        }
    }
}

/// A consumer for [`run_transactional`]: offsets are committed only inside transactions, and
/// revocations wait for the transaction in flight ([`TxnContext`]).
///
/// The consumer is a static group member (`group.instance.id` = `instance`, KIP-345): an
/// instance that restarts under the same id (a StatefulSet pod, a crashed process started again)
/// gets its partitions back at once, without the rebalance a new member causes and without
/// waiting out the dead member's session first — a fraud replica's blind time after a crash was
/// ~10 s of that wait (issue 23, BENCHMARKS.md). The price: a static member that stops for good
/// (a scale-down) does not leave the group, so its partitions move after the session timeout
/// (10 s), not at once. Instance ids must be unique, as the transactional id already demands.
fn transactional_consumer(
    args: &crate::KafkaArgs,
    group: &str,
    client_id: &str,
    instance: &str,
    context: TxnContext,
) -> rdkafka::error::KafkaResult<StreamConsumer<TxnContext>> {
    crate::clients::consumer_config(args, group, client_id)
        .set("enable.auto.commit", "false")
        .set("group.instance.id", instance)
        .create_with_context(context)
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
    moved: Mutex<Vec<(String, i32)>>,
    /// Topics whose committed records the stage wants back ([`TxnContext::track_commits`]).
    tracked: Mutex<Vec<String>>,
    committed_records: Mutex<Vec<Committed>>,
    /// A tracked record committed without its delivery report (see `landed`).
    gap: AtomicBool,
}

/// A record of a tracked topic that committed, where it landed.
#[derive(Debug)]
pub struct Committed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Vec<u8>,
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
        let moved = match rebalance {
            rdkafka::consumer::Rebalance::Revoke(tpl) => {
                let mut busy = self.0.committing.lock().expect("poisoned");
                while *busy {
                    busy = self.0.committed.wait(busy).expect("poisoned");
                }
                self.0.revoked.store(true, Ordering::SeqCst);
                tpl
            }
            // Assigned (cooperative: only the partitions added): whatever this instance held
            // of them is stale — someone else may have committed them since.
            rdkafka::consumer::Rebalance::Assign(tpl) => tpl,
            rdkafka::consumer::Rebalance::Error(_) => return,
        };
        self.0.moved.lock().expect("poisoned").extend(
            moved
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition())),
        );
    }
}

impl TxnContext {
    /// Partitions revoked or assigned since the last call: a stateful stage drops their state,
    /// and restores a partition's again before its first record.
    pub fn take_moved(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.0.moved.lock().expect("poisoned"))
    }

    /// From now on, the records produced to `topics` are handed back, with their offsets, once
    /// their transaction has committed ([`TxnContext::take_committed`]): what a stage keeping a
    /// local copy of its state topic may write to it (fraud's local store). Records of an
    /// aborted transaction never come back.
    pub fn track_commits(&self, topics: &[&str]) {
        *self.0.tracked.lock().expect("poisoned") = topics.iter().map(|t| t.to_string()).collect();
    }

    /// Tracked records committed since the last call, in commit and offset order, and whether
    /// one is missing from them (committed, but its offset never reported): a stage that
    /// keeps a copy must then read its state topic back instead of trusting the copy.
    pub fn take_committed(&self) -> (Vec<Committed>, bool) {
        let records = std::mem::take(&mut *self.0.committed_records.lock().expect("poisoned"));
        (records, self.0.gap.swap(false, Ordering::SeqCst))
    }

    fn tracked(&self) -> Vec<String> {
        self.0.tracked.lock().expect("poisoned").clone()
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
/// Returns the outputs to `tracked` topics with the offsets they landed at (see `landed`).
fn commit(
    producer: &FutureProducer,
    batch: Batch,
    group: Option<rdkafka::consumer::ConsumerGroupMetadata>,
    tracked: &[String],
) -> Result<(Vec<Committed>, bool), TxnError> {
    // Present once the consumer has joined its group, which it has if it delivered inputs.
    let group = group.ok_or(KafkaError::Rebalance(RDKafkaErrorCode::InvalidGroupId))?;
    producer
        .begin_transaction()
        .map_err(|e| match TxnError::from(e) {
            // Beginning fails only in a broken state: nothing to abort, the instance must go.
            TxnError::Abort(e) | TxnError::Fatal(e) => TxnError::Fatal(e),
        })?;
    let mut deliveries = Vec::new();
    for (i, o) in batch.outputs.iter().enumerate() {
        let mut record = FutureRecord::to(&o.topic)
            .key(&o.key)
            .payload(&o.value)
            .headers(o.headers.clone());
        record.partition = o.partition;
        loop {
            // Delivery is confirmed by the commit (it flushes and fails if any send failed),
            // so the per-record futures are not awaited; those of tracked topics are kept
            // for their offsets (`landed`).
            match producer.send_result(record) {
                Ok(delivery) => {
                    if tracked.contains(&o.topic) {
                        deliveries.push((i, delivery));
                    }
                    break;
                }
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
    delivered(producer)?;
    let mut attempts = 0;
    loop {
        match producer.commit_transaction(TXN_CALL) {
            Ok(()) => return Ok(landed(batch.outputs, deliveries)),
            Err(KafkaError::Transaction(t)) if t.is_retriable() && attempts < 5 => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The tracked outputs of a committed transaction with their offsets, and whether one had no
/// report. Their delivery reports were served before the commit (`delivered`), so each future
/// is ready or very nearly.
fn landed(
    outputs: Vec<Output>,
    deliveries: Vec<(usize, rdkafka::producer::DeliveryFuture)>,
) -> (Vec<Committed>, bool) {
    use futures::FutureExt as _;
    let mut outputs: Vec<Option<Output>> = outputs.into_iter().map(Some).collect();
    let (mut out, mut gap) = (Vec::with_capacity(deliveries.len()), false);
    for (i, mut delivery) in deliveries {
        let deadline = std::time::Instant::now() + TXN_CALL;
        let report = loop {
            if let Some(r) = (&mut delivery).now_or_never() {
                break r;
            }
            if std::time::Instant::now() >= deadline {
                break Err(futures::channel::oneshot::Canceled);
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let Some(o) = outputs[i].take() else { continue };
        match report {
            Ok(Ok(d)) => out.push(Committed {
                topic: o.topic,
                partition: d.partition,
                offset: d.offset,
                key: o.key,
                value: o.value,
            }),
            // Not expected after a commit that succeeded; reported, so a copy with a hole
            // is not trusted.
            _ => {
                tracing::warn!(
                    topic = o.topic,
                    "committed record without its delivery report"
                );
                gap = true;
            }
        }
    }
    (out, gap)
}

/// Waits until every record sent is acknowledged (or failed), in 1 ms steps. rdkafka's
/// `commit_transaction` flushes first, and its flush polls the event queue for up to 100 ms —
/// but the producer's own polling thread takes the delivery reports, so that poll sleeps the
/// whole 100 ms whenever a record is still in flight: the other half of the validated hop's
/// latency (BENCHMARKS.md). With nothing in flight its flush returns at once.
fn delivered(producer: &FutureProducer) -> Result<(), TxnError> {
    let deadline = std::time::Instant::now() + TXN_CALL;
    while producer.in_flight_count() > 0 {
        if std::time::Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut).into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn a_restart_cures_a_fenced_static_member_or_a_broken_producer_not_a_newer_twin() {
        let consumer = |c| PipelineError::Consumer(KafkaError::MessageConsumptionFatal(c));
        assert!(curable_by_restart(&consumer(C::FencedInstanceId)));
        assert!(!curable_by_restart(&PipelineError::Consumer(
            KafkaError::MessageConsumption(C::FencedInstanceId)
        )));
        // (A transaction error carries its code the same way; rdkafka makes those itself only.)
        let txn = |c| PipelineError::Fatal(KafkaError::Global(c));
        assert!(curable_by_restart(&txn(C::OutOfOrderSequenceNumber)));
        for fenced in [C::Fenced, C::ProducerFenced, C::InvalidProducerEpoch] {
            assert!(!curable_by_restart(&txn(fenced)), "{fenced:?}");
        }
    }
}
