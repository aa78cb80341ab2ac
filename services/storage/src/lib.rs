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
use posflow_kafka::deadletter::{DeadLetterProducer, DeadLetters};
use posflow_kafka::pipeline::{decode_with_retry, Batching, Input};
use posflow_kafka::sink::{self, BatchSink, NextOffsets, WriteError};
use posflow_kafka::KafkaArgs;
use posflow_pg::Conn;
use posflow_runtime::metrics::{counter, counter_vec};
use posflow_runtime::{CommonArgs, ConfigErrors, Context};
use posflow_schema::{Decoder, TransactionRejected, TransactionValidated};
use prometheus::{IntCounter, IntCounterVec};
use rdkafka::consumer::Consumer;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
    /// linger only adds latency (100 ms gave p99 639 ms end to end at half load, 10 ms 348 ms;
    /// 5 ms with the validator's 10 ms linger took the p50 from 59 to 48 ms: BENCHMARKS.md).
    #[arg(long, env = "POSFLOW_STORAGE_BATCH_LINGER_MS", default_value_t = 5)]
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
    rechecked: IntCounter,
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
        rechecked: counter(
            "posflow_storage_rechecked_batches_total",
            "Batches written a second time checking each transaction id, after a repeated id failed the write that took them as new",
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
    let topics = args.kafka.topics();
    let registry = args.kafka.registry();
    let (validated_t, rejected_t) = (topics.validated(), topics.rejected());
    let group = args.kafka.group("posflow-storage");
    let client_id = format!("storage-{}", std::process::id());
    let dead = DeadLetterProducer {
        letters: DeadLetters::for_stage(&args.kafka, "storage", metrics().dead_lettered.clone())
            .await?,
        producer: posflow_kafka::clients::producer(&args.kafka, &client_id)?,
    };
    let consumer = sink::consumer(&args.kafka, &group, &client_id)?;
    consumer.subscribe(&[&validated_t, &rejected_t])?;
    let mut conn = Conn::new(&args.db);
    let Some(client) = conn.get(&ctx).await else {
        anyhow::bail!("stopped while waiting for the database");
    };
    db::ensure_partitions(client).await?;
    ctx.health.set_ready(true);
    let store = Store {
        db: tokio::sync::Mutex::new(Db {
            conn,
            partitions_ensured: Instant::now(),
            writer: db::Writer::default(),
        }),
        group,
        validated_t,
        validated_dec: Decoder::new(registry.clone()),
        rejected_dec: Decoder::new(registry),
    };
    let batching = Batching {
        max_records: args.batch_size,
        linger: Duration::from_millis(args.batch_linger_ms),
    };
    sink::run(
        &consumer,
        &store,
        &dead,
        batching,
        &ctx,
        std::future::pending(),
    )
    .await
}

/// Storage as a batch sink: each batch's rows and its offsets in one database transaction, so
/// the database is the truth on where each partition resumes.
struct Store {
    /// Locked by a write, or a resume-point lookup (which so waits for the write under way).
    db: tokio::sync::Mutex<Db>,
    /// The consumer group, the key of the offsets in the database.
    group: String,
    validated_t: String,
    validated_dec: Decoder<TransactionValidated>,
    rejected_dec: Decoder<TransactionRejected>,
}

struct Db {
    conn: Conn,
    partitions_ensured: Instant,
    writer: db::Writer,
}

impl BatchSink for Store {
    type Item = db::Row;
    const SPAN: &'static str = "storage.store";

    async fn prepare(
        &self,
        input: &Input,
        _span: &tracing::Span,
        ctx: &Context,
    ) -> Option<Result<db::Row, String>> {
        metrics().received.inc();
        let payload = input.payload.as_deref().unwrap_or_default();
        let item = if input.topic == self.validated_t {
            decode_with_retry(&self.validated_dec, payload, ctx)
                .await?
                .map(db::Item::Transaction)
        } else {
            decode_with_retry(&self.rejected_dec, payload, ctx)
                .await?
                .map(db::Item::Rejection)
        };
        Some(item.map(|item| db::Row {
            item,
            partition: input.partition,
            offset: input.offset,
        }))
    }

    async fn write(
        &self,
        rows: &[db::Row],
        next: &NextOffsets,
        ctx: &Context,
    ) -> Option<Result<(), WriteError>> {
        let m = metrics();
        let mut guard = self.db.lock().await;
        let Db {
            conn,
            partitions_ensured,
            writer,
        } = &mut *guard;
        let (client, opened) = conn.get_numbered(ctx).await?;
        // A replica can run for months: keep the monthly partitions ahead of time.
        if partitions_ensured.elapsed() > Duration::from_secs(3600) {
            if let Err(e) = db::ensure_partitions(client).await {
                tracing::warn!(error = %e.summary(), "could not create next months' partitions; retrying in an hour");
            }
            *partitions_ensured = Instant::now();
        }
        Some(
            match writer
                .write_batch(client, opened, &self.group, rows, next)
                .await
            {
                Ok(w) => {
                    m.stored.inc_by(w.stored);
                    m.rejections.inc_by(w.rejections);
                    m.duplicates.inc_by(w.duplicates);
                    if w.rechecked {
                        m.rechecked.inc();
                    }
                    Ok(())
                }
                Err(e) => {
                    let class = if e.is_permanent() {
                        "permanent"
                    } else {
                        "transient"
                    };
                    m.db_errors.with_label_values(&[class]).inc();
                    Err(e.into())
                }
            },
        )
    }

    async fn resume_from(
        &self,
        topic: &str,
        partition: i32,
        ctx: &Context,
    ) -> Option<Result<Option<i64>, WriteError>> {
        let mut db = self.db.lock().await;
        let client = db.conn.get(ctx).await?;
        Some(
            db::next_offset(client, &self.group, topic, partition)
                .await
                .map_err(Into::into),
        )
    }

    fn skipped(&self) {
        metrics().received.inc();
        metrics().skipped.inc();
    }

    fn committed(&self, rows: &[db::Row]) {
        for row in rows {
            posflow_runtime::metrics::observe_end_to_end(row.transaction_time());
        }
    }
}
