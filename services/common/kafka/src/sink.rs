//! The batch sink: Kafka → PostgreSQL in batches, one database transaction each. Storage and
//! the notifier's ingest are implementations of [`BatchSink`]; this module owns what they share:
//! batching (until full or lingered), retrying transient failures, the row-by-row fallback
//! after a permanent refusal, dead-lettering, and **the offset rule** — a partition's offset
//! is stored (for Kafka's commit) only once every record below it is in the database or in the
//! dead-letter topic. A crash anywhere repeats records; it never skips one.
//!
//! Dead letters go through [`crate::deadletter`].
//!
//! A sink says what a record becomes ([`BatchSink::prepare`]), how items are written
//! ([`BatchSink::write`]: with the offsets in the same transaction, if the sink keeps them —
//! storage does, so its database is the truth on where to resume), and where a partition
//! resumes ([`BatchSink::resume_from`]).
//!
//! One batch is written while the next is gathered (issue 20): the database works on batch N
//! while this process consumes and decodes batch N + 1, instead of each waiting on the other.
//! Batch N + 1 is written only after batch N committed and its offsets were stored, and never
//! if batch N was not written (shutdown): the offset rule holds as with one batch at a time.
//! So a sink's methods take `&self`, and a sink keeps its connection behind a lock.

use crate::deadletter::{DeadLetterOut, Refused};
use crate::headers;
use crate::pipeline::{consumed, store_next_offsets, Batching, Input};
use posflow_pg::DbError;
use posflow_runtime::{Backoff, Context};
use posflow_schema::ReasonCode;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::OwnedHeaders;
use rdkafka::Offset;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Per (topic, partition): the offset to resume from once a batch is written.
pub type NextOffsets = BTreeMap<(String, i32), i64>;

/// A failed write: permanent (the database refuses these rows for good: write them one by one
/// and dead-letter the refused) or not (wait it out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteError {
    pub permanent: bool,
    /// Safe to log and to put in a dead letter (no row data).
    pub summary: String,
}

impl From<DbError> for WriteError {
    fn from(e: DbError) -> Self {
        WriteError {
            permanent: e.is_permanent(),
            summary: e.summary(),
        }
    }
}

/// What a stage writes to PostgreSQL, record by record.
pub trait BatchSink: Send + Sync {
    /// A record, ready to write.
    type Item: Send + Sync;
    /// The span each record gets while it waits for its batch (tracing on).
    const SPAN: &'static str;

    /// What `input` becomes: `Some(Ok)` an item, `Some(Err(detail))` a record that cannot be
    /// decoded (dead-lettered `DECODE_FAILED`), `None` when shutdown interrupts a wait.
    fn prepare(
        &self,
        input: &Input,
        span: &tracing::Span,
        ctx: &posflow_runtime::Context,
    ) -> impl Future<Output = Option<Result<Self::Item, String>>> + Send;

    /// Writes `items` (perhaps none) in one database transaction, with `next` if the sink keeps
    /// offsets. `None` when shutdown comes while (re)connecting.
    fn write(
        &self,
        items: &[Self::Item],
        next: &NextOffsets,
        ctx: &Context,
    ) -> impl Future<Output = Option<Result<(), WriteError>>> + Send;

    /// Where `topic`/`partition` resumes according to the database (records below it are
    /// written already); `Ok(None)`: Kafka's committed offset is the truth. Asked once per
    /// partition after every rebalance.
    fn resume_from(
        &self,
        _topic: &str,
        _partition: i32,
        _ctx: &Context,
    ) -> impl Future<Output = Option<Result<Option<i64>, WriteError>>> + Send {
        async { Some(Ok(None)) }
    }

    /// A record below its partition's resume point was skipped.
    fn skipped(&self) {}

    /// `items` are in the database (metrics, wake-ups).
    fn committed(&self, _items: &[Self::Item]) {}
}

/// A consumer context that reports lag and counts rebalances (a new count: look the resume
/// points up again).
#[derive(Default)]
pub struct SinkContext(AtomicU64);

impl rdkafka::ClientContext for SinkContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::clients::record_lag(&statistics);
    }
}

impl ConsumerContext for SinkContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A consumer for [`run`].
pub fn consumer(
    args: &crate::KafkaArgs,
    group: &str,
    client_id: &str,
) -> rdkafka::error::KafkaResult<StreamConsumer<SinkContext>> {
    crate::clients::consumer_config(args, group, client_id)
        .create_with_context(SinkContext::default())
}

/// The records of one batch: the items, and for each its source (for a dead letter) and span.
pub struct Batch<I> {
    items: Vec<I>,
    sources: Vec<Source>,
    /// Per partition, the offset after the last record taken (written, skipped or
    /// dead-lettered).
    next: NextOffsets,
}

struct Source {
    position: String,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    _span: tracing::Span,
}

impl<I> Batch<I> {
    pub fn new(size: usize) -> Self {
        Batch {
            items: Vec::with_capacity(size),
            sources: Vec::with_capacity(size),
            next: NextOffsets::new(),
        }
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// `input` becomes `item`.
    pub fn push(&mut self, input: Input, item: I, span: tracing::Span) {
        self.passed(&input);
        self.sources.push(Source {
            position: input.position(),
            payload: input.payload.unwrap_or_default(),
            headers: input.headers.unwrap_or_default(),
            _span: span,
        });
        self.items.push(item);
    }
    /// `input` is done without an item (dead-lettered already).
    pub fn passed(&mut self, input: &Input) {
        self.next
            .insert((input.topic.clone(), input.partition), input.offset + 1);
    }
}

/// Consumes `consumer` into `sink` until shutdown (or `stop` fires, or the consumer fails for
/// good): gathers a batch while the previous one is written (the module's comment says why
/// that keeps the offset rule).
pub async fn run<S: BatchSink>(
    consumer: &StreamConsumer<SinkContext>,
    sink: &S,
    dead: &impl DeadLetterOut,
    batching: Batching,
    ctx: &Context,
    stop: impl Future<Output = anyhow::Error>,
) -> anyhow::Result<()> {
    tokio::pin!(stop);
    let mut resume = Resume::default();
    // Two batches take turns: one written while the other fills.
    let mut writing: Option<Batch<S::Item>> = None;
    let mut spare: Option<Batch<S::Item>> = None;
    loop {
        let mut batch = spare
            .take()
            .unwrap_or_else(|| Batch::new(batching.max_records));
        let (done, previous) = tokio::sync::watch::channel(writing.is_none());
        let write = async {
            let Some(mut w) = writing.take() else {
                return Ok(true);
            };
            let written = write_and_store(consumer, sink, &mut w, dead, ctx).await;
            spare = Some(w); // emptied by the flush
            let _ = done.send(true);
            written
        };
        let gather = gather(
            consumer,
            sink,
            dead,
            &mut resume,
            &mut batch,
            (batching, previous),
            ctx,
            stop.as_mut(),
        );
        let (written, stopping) = futures::join!(write, gather);
        if !written? {
            break; // shutdown before the previous batch was in: nothing after it may be written
        }
        let stopping = stopping?;
        if !batch.next.is_empty() {
            writing = Some(batch);
        }
        if stopping {
            if let Some(mut w) = writing.take() {
                write_and_store(consumer, sink, &mut w, dead, ctx).await?;
            }
            break;
        }
    }
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    Ok(())
}

/// Fills `batch` until it is full, or has lingered and the previous batch is written (it could
/// not be written sooner: what arrives meanwhile joins it rather than wait a turn);
/// `Ok(true)` when shutdown came meanwhile.
#[allow(clippy::too_many_arguments)]
async fn gather<S: BatchSink>(
    consumer: &StreamConsumer<SinkContext>,
    sink: &S,
    dead: &impl DeadLetterOut,
    resume: &mut Resume,
    batch: &mut Batch<S::Item>,
    (batching, mut previous): (Batching, tokio::sync::watch::Receiver<bool>),
    ctx: &Context,
    mut stop: std::pin::Pin<&mut impl Future<Output = anyhow::Error>>,
) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + batching.linger;
    while batch.len() < batching.max_records {
        let lingered = tokio::time::Instant::now() >= deadline;
        if lingered && *previous.borrow() {
            break;
        }
        let msg = tokio::select! {
            msg = consumer.recv() => msg,
            _ = tokio::time::sleep_until(deadline), if !lingered => continue,
            _ = previous.changed(), if lingered => continue,
            _ = ctx.shutdown.wait() => return Ok(true),
            e = stop.as_mut() => return Err(e),
        };
        let Some(msg) = consumed(msg, ctx).await? else {
            continue;
        };
        let input = Input::detach(&msg);
        drop(msg);
        if !take(consumer, sink, dead, resume, batch, input, ctx).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// [`flush`], then the offsets handed to Kafka: `Ok(false)` if shutdown came before the batch
/// was in (no offset moves, and nothing after it may be written).
async fn write_and_store<S: BatchSink>(
    consumer: &StreamConsumer<SinkContext>,
    sink: &S,
    batch: &mut Batch<S::Item>,
    dead: &impl DeadLetterOut,
    ctx: &Context,
) -> anyhow::Result<bool> {
    let Some(mut next) = flush(sink, batch, dead, ctx).await? else {
        return Ok(false);
    };
    // The batch is in the database: now, and only now, the Kafka offsets may move.
    store_next_offsets(consumer, &mut next);
    Ok(true)
}

/// Where each assigned partition resumes: looked up once per partition after a rebalance.
#[derive(Default)]
struct Resume {
    generation: u64,
    from: HashMap<(String, i32), i64>,
}

/// One consumed record into the batch (or skipped, or dead-lettered). `false` on shutdown.
async fn take<S: BatchSink>(
    consumer: &StreamConsumer<SinkContext>,
    sink: &S,
    dead: &impl DeadLetterOut,
    resume: &mut Resume,
    batch: &mut Batch<S::Item>,
    input: Input,
    ctx: &Context,
) -> anyhow::Result<bool> {
    let Some(from) = resume_point(consumer, sink, resume, &input, ctx).await else {
        return Ok(false);
    };
    if input.offset < from {
        sink.skipped();
        return Ok(true);
    }
    let span = headers::record_span(S::SPAN, input.headers.as_ref());
    match sink.prepare(&input, &span, ctx).await {
        Some(Ok(item)) => batch.push(input, item, span),
        Some(Err(detail)) => {
            let refused = Refused {
                reason: ReasonCode::DecodeFailed,
                detail,
                source: input.position(),
                key: input.position(),
                payload: input.payload.clone().unwrap_or_default(),
                headers: input.headers.clone().unwrap_or_default(),
            };
            if !dead.send(refused, ctx).await? {
                return Ok(false); // not dead-lettered: neither this offset nor later ones move
            }
            batch.passed(&input);
        }
        None => return Ok(false),
    }
    Ok(true)
}

/// The offset `input`'s partition resumes from according to the sink's database, looked up
/// once per partition after every rebalance; the consumer is moved there if it is behind.
/// `None` on shutdown.
async fn resume_point<S: BatchSink>(
    consumer: &StreamConsumer<SinkContext>,
    sink: &S,
    resume: &mut Resume,
    input: &Input,
    ctx: &Context,
) -> Option<i64> {
    let generation = consumer.context().0.load(Ordering::SeqCst);
    if generation != resume.generation {
        resume.generation = generation;
        resume.from.clear();
    }
    let key = (input.topic.clone(), input.partition);
    if let Some(&from) = resume.from.get(&key) {
        return Some(from);
    }
    let mut backoff = Backoff::outage();
    let from = loop {
        match sink.resume_from(&input.topic, input.partition, ctx).await? {
            Ok(n) => break n.unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e.summary, "database unavailable for the resume offset; retrying");
                ctx.health.set_ready(false);
                if !backoff.wait(&ctx.shutdown).await {
                    return None;
                }
            }
        }
    };
    if from > input.offset {
        tracing::info!(topic = %input.topic, partition = input.partition, from, "resuming from the sink's own offset (storage: its database; the lake: its manifest)");
        // Skipping the records below `from` is what matters; the seek only saves reading them.
        if let Err(e) = consumer.seek(
            &input.topic,
            input.partition,
            Offset::Offset(from),
            Duration::from_secs(5),
        ) {
            tracing::debug!(error = %e, "seek to the database offset failed; skipping instead");
        }
    }
    resume.from.insert(key, from);
    Some(from)
}

/// Writes the batch: whole, or after a permanent refusal row by row with the refused rows
/// dead-lettered `DB_REJECTED`, then the offsets alone. Returns the offsets that may now be
/// stored, and empties the batch; `None` on shutdown before everything was written (nothing
/// may be stored: the records come again).
pub async fn flush<S: BatchSink>(
    sink: &S,
    batch: &mut Batch<S::Item>,
    dead: &impl DeadLetterOut,
    ctx: &Context,
) -> anyhow::Result<Option<NextOffsets>> {
    let started = Instant::now();
    match write_with_retry(sink, &batch.items, &batch.next, ctx).await {
        None => return Ok(None),
        Some(Ok(())) => {}
        Some(Err(e)) => {
            tracing::warn!(error = %e.summary, rows = batch.len(), "the database refused the batch; writing its rows one by one");
            let none = NextOffsets::new();
            for (item, source) in batch.items.iter().zip(&batch.sources) {
                match write_with_retry(sink, std::slice::from_ref(item), &none, ctx).await {
                    None => return Ok(None),
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        let refused = Refused {
                            reason: ReasonCode::DbRejected,
                            detail: e.summary.clone(),
                            source: source.position.clone(),
                            key: source.position.clone(),
                            payload: source.payload.clone(),
                            headers: source.headers.clone(),
                        };
                        if !dead.send(refused, ctx).await? {
                            return Ok(None);
                        }
                    }
                }
            }
            // Every row is written or dead-lettered: the offsets may follow.
            match write_with_retry(sink, &[], &batch.next, ctx).await {
                None => return Ok(None),
                Some(Ok(())) => {}
                Some(Err(e)) => anyhow::bail!("writing offsets: {}", e.summary),
            }
        }
    }
    use posflow_runtime::metrics::Shared;
    Shared::batch_size().observe(batch.len() as f64);
    Shared::processing().observe(started.elapsed().as_secs_f64());
    sink.committed(&batch.items);
    batch.items.clear();
    batch.sources.clear();
    Ok(Some(std::mem::take(&mut batch.next)))
}

/// Writes until it succeeds or the database refuses the data for good (`Some(Err)`); the
/// consumer is not read meanwhile, so an outage stops consumption instead of piling up rows.
/// `None` if shutdown comes first.
async fn write_with_retry<S: BatchSink>(
    sink: &S,
    items: &[S::Item],
    next: &NextOffsets,
    ctx: &Context,
) -> Option<Result<(), WriteError>> {
    let mut backoff = Backoff::outage();
    loop {
        match sink.write(items, next, ctx).await? {
            Ok(()) => {
                ctx.health.set_ready(true);
                return Some(Ok(()));
            }
            Err(e) if e.permanent => return Some(Err(e)),
            Err(e) => {
                tracing::warn!(error = %e.summary, rows = items.len(), "batch write failed; retrying");
                ctx.health.set_ready(false);
                if !backoff.wait(&ctx.shutdown).await {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The offset rule, with a fake sink and a fake dead-letter topic: whatever step of a batch
    //! a crash interrupts, no offset is handed to Kafka past a record that is neither in the
    //! database nor dead-lettered.

    use super::*;
    use posflow_runtime::{Health, Shutdown};
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    /// Rows are numbers; the "database" is what committed writes hold.
    #[derive(Default)]
    struct Fake {
        /// Rows the database refuses for good.
        refused: BTreeSet<u32>,
        /// The write call (0-based) that crashes: shutdown, and the write fails.
        crash_at: Option<usize>,
        /// Write calls that fail once, transiently, before succeeding.
        flaky: BTreeSet<usize>,
        calls: usize,
        /// Committed rows, and offsets committed with them (a storage-like sink).
        rows: Vec<u32>,
        offsets: NextOffsets,
        committed: Vec<u32>,
    }

    /// Locked for each call: the sink's methods take `&self`.
    impl BatchSink for Mutex<Fake> {
        type Item = u32;
        const SPAN: &'static str = "test";

        async fn prepare(
            &self,
            _: &Input,
            _: &tracing::Span,
            _: &Context,
        ) -> Option<Result<u32, String>> {
            unreachable!("flush never prepares")
        }

        async fn write(
            &self,
            items: &[u32],
            next: &NextOffsets,
            ctx: &Context,
        ) -> Option<Result<(), WriteError>> {
            let mut f = self.lock().unwrap();
            let call = f.calls;
            f.calls += 1;
            let fail = |permanent| {
                Some(Err(WriteError {
                    permanent,
                    summary: format!("call {call}"),
                }))
            };
            if f.crash_at == Some(call) {
                ctx.shutdown.trigger();
                return fail(false);
            }
            if f.flaky.remove(&call) {
                return fail(false);
            }
            if items.iter().any(|i| f.refused.contains(i)) {
                return fail(true);
            }
            f.rows.extend_from_slice(items);
            for (k, v) in next {
                f.offsets.insert(k.clone(), *v);
            }
            Some(Ok(()))
        }

        fn committed(&self, items: &[u32]) {
            self.lock().unwrap().committed.extend_from_slice(items);
        }
    }

    /// The dead-letter topic: what it took; `crash_at` its n-th send (0-based) sees shutdown.
    #[derive(Default)]
    struct Letters {
        sent: Mutex<Vec<(String, String)>>,
        crash_at: Option<usize>,
    }

    impl DeadLetterOut for Letters {
        async fn send(&self, r: Refused, ctx: &Context) -> anyhow::Result<bool> {
            let mut sent = self.sent.lock().unwrap();
            if self.crash_at == Some(sent.len()) {
                ctx.shutdown.trigger();
                return Ok(false);
            }
            sent.push((r.source, r.reason.code().to_string()));
            Ok(true)
        }
    }

    fn ctx() -> Context {
        Context {
            shutdown: Shutdown::new(),
            health: Health::new(),
        }
    }

    /// Rows 0..n of partition 0, row i at offset 100 + i.
    fn batch(n: u32) -> Batch<u32> {
        let mut b = Batch::new(n as usize);
        for i in 0..n {
            let input = Input {
                topic: "t".into(),
                partition: 0,
                offset: 100 + i as i64,
                key: None,
                payload: Some(vec![i as u8]),
                headers: None,
            };
            b.push(input, i, tracing::Span::none());
        }
        b
    }

    fn next(offset: i64) -> NextOffsets {
        [(("t".to_string(), 0), offset)].into()
    }

    /// Checks the rule after one flush: if offsets came back, every row is in the database or
    /// dead-lettered, and the database's offsets (written with rows) agree; if not, neither
    /// Kafka nor the database got an offset past an unhandled row.
    fn check(fake: &Fake, letters: &Letters, out: &Option<NextOffsets>, n: u32) {
        let lettered: BTreeSet<u32> = letters
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|(source, _)| source.rsplit('/').next().unwrap().parse::<u32>().unwrap() - 100)
            .collect();
        let handled = |i: u32| fake.rows.contains(&i) || lettered.contains(&i);
        if let Some(out) = out {
            assert_eq!(out, &next(100 + n as i64));
            assert!(
                (0..n).all(handled),
                "offsets returned, yet a row is unhandled"
            );
        }
        // The database's offset never passes an unhandled row.
        if let Some(&db) = fake.offsets.get(&("t".to_string(), 0)) {
            assert!(
                (0..(db - 100) as u32).all(handled),
                "database offset {db} passes an unhandled row"
            );
        }
        if out.is_none() {
            assert!(fake.committed.is_empty(), "nothing is reported committed");
        }
    }

    #[tokio::test]
    async fn a_whole_batch_is_written_with_its_offsets() {
        let (fake, letters, ctx) = (Mutex::default(), Letters::default(), ctx());
        let mut b = batch(5);
        let out = flush(&fake, &mut b, &letters, &ctx).await.unwrap();
        let fake: Fake = fake.into_inner().unwrap();
        assert_eq!(out, Some(next(105)));
        assert_eq!(fake.rows, vec![0, 1, 2, 3, 4]);
        assert_eq!(fake.offsets, next(105));
        assert_eq!(fake.committed, vec![0, 1, 2, 3, 4]);
        assert!(b.is_empty() && b.next.is_empty(), "the batch is emptied");
    }

    #[tokio::test]
    async fn transient_failures_are_waited_out() {
        let fake = Mutex::new(Fake {
            flaky: [0].into(),
            ..Fake::default()
        });
        let (letters, ctx) = (Letters::default(), ctx());
        let out = flush(&fake, &mut batch(3), &letters, &ctx).await.unwrap();
        let fake = fake.into_inner().unwrap();
        assert_eq!(out, Some(next(103)));
        assert_eq!(fake.rows, vec![0, 1, 2]);
        assert_eq!(fake.calls, 2);
    }

    #[tokio::test]
    async fn a_refused_row_is_dead_lettered_and_the_rest_stored_offsets_last() {
        let fake = Mutex::new(Fake {
            refused: [1, 3].into(),
            ..Fake::default()
        });
        let (letters, ctx) = (Letters::default(), ctx());
        let out = flush(&fake, &mut batch(5), &letters, &ctx).await.unwrap();
        let fake = fake.into_inner().unwrap();
        assert_eq!(out, Some(next(105)));
        assert_eq!(fake.rows, vec![0, 2, 4]);
        assert_eq!(
            *letters.sent.lock().unwrap(),
            vec![
                ("t/0/101".to_string(), "DB_REJECTED".to_string()),
                ("t/0/103".to_string(), "DB_REJECTED".to_string())
            ]
        );
        // Calls: the batch (refused), five rows alone, the offsets alone.
        assert_eq!(fake.calls, 7);
        assert_eq!(fake.offsets, next(105));
    }

    /// A crash at every write of a batch with refused rows, and at every dead-letter send.
    #[tokio::test]
    async fn a_crash_at_any_step_passes_no_unhandled_row() {
        let n = 6;
        // Calls without a crash: 1 (batch) + 6 (rows) + 1 (offsets).
        for crash in 0..8 {
            let fake = Mutex::new(Fake {
                refused: [2, 4].into(),
                crash_at: Some(crash),
                ..Fake::default()
            });
            let (letters, ctx) = (Letters::default(), ctx());
            let out = flush(&fake, &mut batch(n), &letters, &ctx).await.unwrap();
            let fake = fake.into_inner().unwrap();
            assert_eq!(out, None, "write {crash} crashed: no offsets");
            check(&fake, &letters, &out, n);
        }
        for crash in 0..2 {
            let fake = Mutex::new(Fake {
                refused: [2, 4].into(),
                ..Fake::default()
            });
            let letters = Letters {
                crash_at: Some(crash),
                ..Letters::default()
            };
            let ctx = ctx();
            let out = flush(&fake, &mut batch(n), &letters, &ctx).await.unwrap();
            let fake = fake.into_inner().unwrap();
            assert_eq!(out, None, "dead letter {crash} not sent: no offsets");
            check(&fake, &letters, &out, n);
        }
    }
}
