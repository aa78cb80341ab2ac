//! posflow-storage: validated and rejected transactions into PostgreSQL. Batches by size and
//! time; each batch is one database transaction holding the new rows and the consumed offsets.
//! The database's offsets are the truth: on every partition assignment storage resumes from
//! them, and Kafka's committed offsets (which move only after the database commit) are a hint
//! that is never ahead. The transaction id ledger makes every write idempotent besides, so a
//! redelivered record adds nothing. Rows the database refuses for good are dead-lettered, one
//! by one, with the SQLSTATE; the rest of their batch is stored.

pub mod db;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use posflow_kafka::pipeline::{produce_until_confirmed, Output};
use posflow_kafka::{headers, KafkaArgs};
use posflow_runtime::metrics::{counter, counter_vec};
use posflow_runtime::{Backoff, CommonArgs, ConfigErrors, Context};
use posflow_schema::{
    now_millis, DeadLetter, Decoder, Encoder, TransactionRejected, TransactionValidated,
};
use prometheus::{IntCounter, IntCounterVec};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::{ClientContext, Offset};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// posflow-storage: writes validated transactions to PostgreSQL, once each.
#[derive(Debug, Parser)]
#[command(name = "posflow-storage", version, about, long_about = None)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub db: posflow_pg::DatabaseArgs,
    /// Apply pending migrations at start-up (otherwise run `posflow-storage migrate` first).
    #[arg(long, env = "POSFLOW_MIGRATE_ON_START", default_value_t = false)]
    pub migrate_on_start: bool,
    /// Rows per database transaction, at most.
    #[arg(long, env = "POSFLOW_STORAGE_BATCH_SIZE", default_value_t = 2000)]
    pub batch_size: usize,
    /// Milliseconds a batch waits to fill before it is written anyway. Short: under load the
    /// batch fills while the previous one is written (batches size themselves), so a long
    /// linger only adds latency (100 ms gave p99 639 ms end to end at half load, 10 ms 348 ms:
    /// BENCHMARKS.md).
    #[arg(long, env = "POSFLOW_STORAGE_BATCH_LINGER_MS", default_value_t = 10)]
    pub batch_linger_ms: u64,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Consume and store (the default).
    Run,
    /// Apply pending database migrations and exit.
    Migrate,
}

impl Args {
    pub fn check(self) -> Result<Self, ConfigErrors> {
        let mut e = ConfigErrors::new();
        if !matches!(self.command, Some(Command::Migrate)) {
            self.kafka.check(&mut e);
        }
        self.db.check(&mut e);
        e.check(
            (1..=10_000).contains(&self.batch_size),
            "--batch-size must be 1..=10000",
        );
        e.check(
            (1..=60_000).contains(&self.batch_linger_ms),
            "--batch-linger-ms must be 1..=60000",
        );
        e.into_result(self)
    }
}

struct Metrics {
    received: IntCounter,
    skipped: IntCounter,
    stored: IntCounter,
    rejections: IntCounter,
    duplicates: IntCounter,
    db_errors: IntCounterVec,
    dead_lettered: IntCounterVec,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        received: counter(
            "posflow_storage_received_total",
            "Validated and rejected records consumed",
        ),
        skipped: counter(
            "posflow_storage_skipped_total",
            "Records below the database's offset for their partition (stored already)",
        ),
        stored: counter(
            "posflow_storage_stored_total",
            "Transactions written (new transaction ids)",
        ),
        rejections: counter(
            "posflow_storage_rejections_stored_total",
            "Rejected transactions written (new transaction ids)",
        ),
        duplicates: counter(
            "posflow_storage_duplicates_total",
            "Records whose transaction id was already stored (redeliveries)",
        ),
        db_errors: counter_vec(
            "posflow_storage_db_errors_total",
            "Failed batch writes, by class",
            &["class"],
        ),
        dead_lettered: counter_vec(
            "posflow_storage_dead_lettered_total",
            "Records sent to the dead-letter topic, by reason",
            &["reason"],
        ),
    })
}

pub async fn migrate(args: &Args) -> anyhow::Result<Vec<i32>> {
    let mut client = args
        .db
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.db.redacted()))?;
    let applied = db::migrate(&mut client).await?;
    db::ensure_partitions(&client).await?;
    Ok(applied)
}

/// Counts rebalances, so the consume loop knows when to look up the database's offsets again.
#[derive(Default)]
struct Rebalances(AtomicU64);

impl ClientContext for Rebalances {
    fn stats(&self, statistics: rdkafka::Statistics) {
        posflow_kafka::clients::record_lag(&statistics);
    }
}

impl ConsumerContext for Rebalances {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Where each assigned partition resumes, from the database: records below it are stored already.
#[derive(Default)]
struct Resume {
    generation: u64,
    from: HashMap<(String, i32), i64>,
}

pub async fn run(args: Args, ctx: Context) -> anyhow::Result<()> {
    if matches!(args.command, Some(Command::Migrate)) {
        let applied = migrate(&args).await?;
        tracing::info!(?applied, "migrations applied");
        return Ok(());
    }
    if args.migrate_on_start {
        let applied = migrate(&args).await?;
        tracing::info!(?applied, "migrations applied");
    }
    let m = metrics();
    let topics = args.kafka.topics();
    let registry = args.kafka.registry();
    let (validated_t, rejected_t) = (topics.validated(), topics.rejected());
    let dlq_topic = topics.deadletter();
    let group = args.kafka.group("posflow-storage");
    let client_id = format!("storage-{}", std::process::id());
    let dlq_enc = Encoder::<DeadLetter>::for_topic(&registry, &dlq_topic)
        .await
        .context("dead-letter schema (run posflow-admin provision)")?;
    let validated_dec = Decoder::<TransactionValidated>::new(registry.clone());
    let rejected_dec = Decoder::<TransactionRejected>::new(registry);
    let consumer: StreamConsumer<Rebalances> =
        posflow_kafka::clients::consumer_config(&args.kafka, &group, &client_id)
            .create_with_context(Rebalances::default())?;
    consumer.subscribe(&[&validated_t, &rejected_t])?;
    let producer = posflow_kafka::clients::producer(&args.kafka, &client_id)?;
    let mut client = connect_with_retry(&args, &ctx).await?;
    db::ensure_partitions(&client).await?;
    ctx.health.set_ready(true);
    let dead_letter = |letter: DeadLetter, hdrs: OwnedHeaders| -> anyhow::Result<Output> {
        Ok(Output {
            topic: dlq_topic.clone(),
            key: letter.source.clone(),
            value: dlq_enc.encode(&letter)?,
            headers: headers::with_reason(hdrs, &letter.reason),
        })
    };

    let linger = Duration::from_millis(args.batch_linger_ms);
    let mut batch: Vec<db::Row> = Vec::with_capacity(args.batch_size);
    // Each row's source record (topic, bytes, headers), for a dead letter if the database refuses it.
    let mut sources: Vec<(String, Vec<u8>, OwnedHeaders)> = Vec::with_capacity(args.batch_size);
    // Each row's span (tracing on): it ends when the row's batch is committed.
    let mut spans: Vec<tracing::Span> = Vec::new();
    // Next offset per partition once this batch is written, including skipped and
    // dead-lettered records.
    let mut next = db::NextOffsets::new();
    let mut resume = Resume::default();
    let mut partitions_ensured = std::time::Instant::now();
    loop {
        // A replica can run for months: keep the monthly partitions ahead of time.
        if partitions_ensured.elapsed() > Duration::from_secs(3600) {
            if let Err(e) = db::ensure_partitions(&client).await {
                tracing::warn!(error = %e.summary(), "could not create next months' partitions; retrying in an hour");
            }
            partitions_ensured = std::time::Instant::now();
        }
        let deadline = tokio::time::Instant::now() + linger;
        let mut stopping = false;
        while batch.len() < args.batch_size {
            tokio::select! {
                msg = consumer.recv() => {
                    let Some(msg) = posflow_kafka::pipeline::consumed(msg, &ctx).await? else { continue };
                    m.received.inc();
                    let (topic, partition, offset) = (msg.topic().to_string(), msg.partition(), msg.offset());
                    let payload = msg.payload().unwrap_or_default().to_vec();
                    let hdrs = msg.headers().map(|h| h.detach()).unwrap_or_default();
                    drop(msg);
                    let Some(from) = resume_point(&consumer, &mut resume, &mut client, &args, &group, &topic, partition, &ctx).await else {
                        stopping = true;
                        break;
                    };
                    if offset < from {
                        m.skipped.inc();
                        continue;
                    }
                    let decoded = if topic == validated_t {
                        posflow_kafka::pipeline::decode_with_retry(&validated_dec, &payload, &ctx).await.map(|r| r.map(db::Item::Transaction))
                    } else {
                        posflow_kafka::pipeline::decode_with_retry(&rejected_dec, &payload, &ctx).await.map(|r| r.map(db::Item::Rejection))
                    };
                    match decoded {
                        Some(Ok(item)) => {
                            next.insert((topic.clone(), partition), offset + 1);
                            if posflow_runtime::trace::enabled() {
                                spans.push(headers::record_span("storage.store", Some(&hdrs)));
                            }
                            batch.push(db::Row { item, partition, offset });
                            sources.push((topic, payload, hdrs));
                        }
                        Some(Err(e)) => {
                            m.dead_lettered.with_label_values(&["DECODE_FAILED"]).inc();
                            let letter = DeadLetter { reason: "DECODE_FAILED".into(), detail: e, stage: "storage".into(), source: format!("{topic}/{partition}/{offset}"), received_at: now_millis(), payload };
                            if produce_until_confirmed(&producer, &dead_letter(letter, hdrs)?, &ctx).await.is_none() {
                                stopping = true; // not dead-lettered: neither this offset nor later ones move
                                break;
                            }
                            next.insert((topic, partition), offset + 1);
                        }
                        None => { stopping = true; break; }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = ctx.shutdown.wait() => { stopping = true; break; }
            }
        }
        if !next.is_empty() {
            let started = std::time::Instant::now();
            let written = match write_with_retry(&mut client, &args, &group, &batch, &next, &ctx)
                .await
            {
                Some(Ok(w)) => w,
                Some(Err(e)) => {
                    tracing::warn!(error = %e.summary(), rows = batch.len(), "the database refused the batch; writing its rows one by one");
                    let one_by_one = OneByOne {
                        group: &group,
                        producer: &producer,
                        dead_letter: &dead_letter,
                    };
                    let Some(w) = one_by_one
                        .write(&mut client, &args, &batch, &sources, &next, &ctx)
                        .await?
                    else {
                        break;
                    };
                    w
                }
                None => break,
            };
            m.stored.inc_by(written.stored);
            m.rejections.inc_by(written.rejections);
            m.duplicates.inc_by(written.duplicates);
            use posflow_runtime::metrics::Shared;
            Shared::batch_size().observe(batch.len() as f64);
            Shared::processing().observe(started.elapsed().as_secs_f64());
            for row in &batch {
                posflow_runtime::metrics::observe_end_to_end(row.transaction_time());
            }
            batch.clear();
            sources.clear();
            spans.clear();
            // The rows are committed: now, and only now, the Kafka offsets may move.
            posflow_kafka::pipeline::store_next_offsets(&consumer, &mut next);
        }
        if stopping {
            break;
        }
    }
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    Ok(())
}

/// The offset `topic`/`partition` resumes from according to the database, looked up once per
/// partition after every rebalance. If the consumer is behind it (Kafka's commit lags the
/// database's by up to a commit interval, or was lost), it is moved there. `None` on shutdown.
#[allow(clippy::too_many_arguments)]
async fn resume_point(
    consumer: &StreamConsumer<Rebalances>,
    resume: &mut Resume,
    client: &mut tokio_postgres::Client,
    args: &Args,
    group: &str,
    topic: &str,
    partition: i32,
    ctx: &Context,
) -> Option<i64> {
    let generation = consumer.context().0.load(Ordering::SeqCst);
    if generation != resume.generation {
        resume.generation = generation;
        resume.from.clear();
    }
    let key = (topic.to_string(), partition);
    if let Some(&from) = resume.from.get(&key) {
        return Some(from);
    }
    let mut backoff = Backoff::outage();
    let from = loop {
        match db::next_offset(client, group, topic, partition).await {
            Ok(n) => break n.unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e.summary(), "database unavailable for the resume offset; retrying");
                ctx.health.set_ready(false);
                if !backoff.wait(&ctx.shutdown).await {
                    return None;
                }
                reconnect_if_closed(client, args).await;
            }
        }
    };
    if from > 0 {
        tracing::info!(
            topic,
            partition,
            from,
            "resuming from the database's offset"
        );
        // Skipping the records below `from` is what matters; the seek only saves reading them.
        if let Err(e) = consumer.seek(
            topic,
            partition,
            Offset::Offset(from),
            Duration::from_secs(5),
        ) {
            tracing::debug!(error = %e, "seek to the database offset failed; skipping instead");
        }
    }
    resume.from.insert(key, from);
    Some(from)
}

async fn connect_with_retry(args: &Args, ctx: &Context) -> anyhow::Result<tokio_postgres::Client> {
    let mut backoff = Backoff::outage();
    loop {
        match args.db.connect().await {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(error = %e, database = %args.db.redacted(), "database unreachable; retrying");
                if !backoff.wait(&ctx.shutdown).await {
                    anyhow::bail!("stopped while waiting for the database");
                }
            }
        }
    }
}

/// Writes until it succeeds or the database refuses the data for good (`Some(Err)`); the
/// consumer is not read meanwhile, so an outage stops consumption instead of piling up rows.
/// `None` if shutdown comes first (nothing committed, the offsets stay where they are).
async fn write_with_retry(
    client: &mut tokio_postgres::Client,
    args: &Args,
    group: &str,
    batch: &[db::Row],
    next: &db::NextOffsets,
    ctx: &Context,
) -> Option<Result<db::Written, db::DbError>> {
    let mut backoff = Backoff::outage();
    loop {
        match db::write_batch(client, group, batch, next).await {
            Ok(w) => {
                ctx.health.set_ready(true);
                return Some(Ok(w));
            }
            Err(e) if e.is_permanent() => {
                metrics().db_errors.with_label_values(&["permanent"]).inc();
                return Some(Err(e));
            }
            Err(e) => {
                metrics().db_errors.with_label_values(&["transient"]).inc();
                tracing::warn!(error = %e.summary(), rows = batch.len(), "batch write failed; retrying");
                ctx.health.set_ready(false);
                if !backoff.wait(&ctx.shutdown).await {
                    return None;
                }
                reconnect_if_closed(client, args).await;
            }
        }
    }
}

/// After a server restart the connection is gone for good: a new one, if the server is back.
async fn reconnect_if_closed(client: &mut tokio_postgres::Client, args: &Args) {
    if client.is_closed() {
        if let Ok(c) = args.db.connect().await {
            *client = c;
        }
    }
}

/// The slow path after a permanent refusal: each row in its own database transaction; the rows
/// refused again go to the dead-letter topic with reason `DB_REJECTED` and the SQLSTATE. The
/// batch's offsets are written last, once every row is stored or dead-lettered. A crash in
/// between repeats the batch: the stored rows are skipped by the ledger, and a refused row may
/// be dead-lettered twice (dead letters are at least once).
struct OneByOne<'a, D> {
    group: &'a str,
    producer: &'a rdkafka::producer::FutureProducer,
    dead_letter: &'a D,
}

impl<D> OneByOne<'_, D>
where
    D: Fn(DeadLetter, OwnedHeaders) -> anyhow::Result<Output>,
{
    async fn write(
        &self,
        client: &mut tokio_postgres::Client,
        args: &Args,
        batch: &[db::Row],
        sources: &[(String, Vec<u8>, OwnedHeaders)],
        next: &db::NextOffsets,
        ctx: &Context,
    ) -> anyhow::Result<Option<db::Written>> {
        let m = metrics();
        let mut total = db::Written::default();
        let none = db::NextOffsets::new();
        for (row, (topic, payload, hdrs)) in batch.iter().zip(sources) {
            let one = std::slice::from_ref(row);
            match write_with_retry(client, args, self.group, one, &none, ctx).await {
                None => return Ok(None),
                Some(Ok(w)) => {
                    total.stored += w.stored;
                    total.rejections += w.rejections;
                    total.duplicates += w.duplicates;
                }
                Some(Err(e)) => {
                    m.dead_lettered.with_label_values(&["DB_REJECTED"]).inc();
                    let source = format!("{topic}/{}/{}", row.partition, row.offset);
                    tracing::warn!(error = %e.summary(), source, "row refused by the database; dead-lettered");
                    let letter = DeadLetter {
                        reason: "DB_REJECTED".into(),
                        detail: e.summary(),
                        stage: "storage".into(),
                        source,
                        received_at: now_millis(),
                        payload: payload.clone(),
                    };
                    let out = (self.dead_letter)(letter, hdrs.clone())?;
                    if produce_until_confirmed(self.producer, &out, ctx)
                        .await
                        .is_none()
                    {
                        return Ok(None);
                    }
                }
            }
        }
        match write_with_retry(client, args, self.group, &[], next, ctx).await {
            None => Ok(None),
            Some(Ok(_)) => Ok(Some(total)),
            Some(Err(e)) => anyhow::bail!("writing offsets: {}", e.summary()),
        }
    }
}
