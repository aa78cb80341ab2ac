//! posflow-storage: validated transactions into PostgreSQL. Batches by size and time; each
//! batch is one database transaction holding the new rows and the consumed offsets, and the
//! Kafka offset moves only after that commit. The transaction id ledger makes every write
//! idempotent, so a redelivered batch adds nothing.

pub mod db;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use posflow_kafka::pipeline::{produce_until_confirmed, Output};
use posflow_kafka::{headers, KafkaArgs};
use posflow_runtime::metrics::{counter, counter_vec, histogram};
use posflow_runtime::{config::redact_url, Backoff, CommonArgs, ConfigErrors, Context, Secret};
use posflow_schema::{now_millis, DeadLetter, Decoder, Encoder, TransactionValidated};
use prometheus::{Histogram, IntCounter, IntCounterVec};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
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
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/db. From a Secret; the password is never logged.
    #[arg(
        long,
        env = "POSFLOW_DATABASE_URL",
        hide_env_values = true,
        default_value = ""
    )]
    pub database_url: Secret,
    /// Apply pending migrations at start-up (otherwise run `posflow-storage migrate` first).
    #[arg(long, env = "POSFLOW_MIGRATE_ON_START", default_value_t = false)]
    pub migrate_on_start: bool,
    /// Rows per database transaction, at most.
    #[arg(long, env = "POSFLOW_STORAGE_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// Milliseconds a batch waits to fill before it is written anyway.
    #[arg(long, env = "POSFLOW_STORAGE_BATCH_LINGER_MS", default_value_t = 100)]
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
        let url = self.database_url.expose();
        e.check(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "--database-url (POSFLOW_DATABASE_URL) must be a postgres:// URL",
        );
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
    stored: IntCounter,
    duplicates: IntCounter,
    db_errors: IntCounterVec,
    dead_lettered: IntCounterVec,
    batch_rows: Histogram,
    batch_latency: Histogram,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        received: counter(
            "posflow_storage_received_total",
            "Validated transactions consumed",
        ),
        stored: counter(
            "posflow_storage_stored_total",
            "Rows written (new transaction ids)",
        ),
        duplicates: counter(
            "posflow_storage_duplicates_total",
            "Records whose transaction id was already stored",
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
        batch_rows: histogram(
            "posflow_storage_batch_rows",
            "Rows per database transaction",
            &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
        ),
        batch_latency: histogram(
            "posflow_storage_batch_seconds",
            "Time to write one batch",
            posflow_runtime::metrics::LATENCY_BUCKETS,
        ),
    })
}

pub async fn migrate(args: &Args) -> anyhow::Result<Vec<i32>> {
    let mut client = db::connect(args.database_url.expose())
        .await
        .with_context(|| format!("connecting to {}", redact_url(args.database_url.expose())))?;
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
    let m = metrics();
    let topics = args.kafka.topics();
    let registry = args.kafka.registry();
    let topic = topics.validated();
    let dlq_topic = topics.deadletter();
    let group = args.kafka.group("posflow-storage");
    let client_id = format!("storage-{}", std::process::id());
    let dlq_enc = Encoder::<DeadLetter>::for_topic(&registry, &dlq_topic)
        .await
        .context("dead-letter schema (run posflow-admin provision)")?;
    let decoder = Decoder::<TransactionValidated>::new(registry);
    let consumer = posflow_kafka::clients::consumer(&args.kafka, &group, &client_id)?;
    consumer.subscribe(&[&topic])?;
    let producer = posflow_kafka::clients::producer(&args.kafka, &client_id)?;
    let mut client = connect_with_retry(&args, &ctx).await?;
    db::ensure_partitions(&client).await?;
    ctx.health.set_ready(true);

    let linger = Duration::from_millis(args.batch_linger_ms);
    let mut batch: Vec<db::Row> = Vec::with_capacity(args.batch_size);
    // Highest offset seen per partition in this batch, including dead-lettered records.
    let mut positions: Vec<(i32, i64)> = Vec::new();
    loop {
        let deadline = tokio::time::Instant::now() + linger;
        let mut stopping = false;
        while batch.len() < args.batch_size {
            tokio::select! {
                msg = consumer.recv() => {
                    let msg = msg?;
                    m.received.inc();
                    let (partition, offset) = (msg.partition(), msg.offset());
                    let payload = msg.payload().unwrap_or_default().to_vec();
                    let hdrs = msg.headers().map(|h| h.detach()).unwrap_or_default();
                    drop(msg);
                    positions.push((partition, offset));
                    match decode_with_retry(&decoder, &payload, &ctx).await {
                        Some(Ok(record)) => batch.push(db::Row { record, partition, offset }),
                        Some(Err(e)) => {
                            m.dead_lettered.with_label_values(&["DECODE_FAILED"]).inc();
                            let letter = DeadLetter { reason: "DECODE_FAILED".into(), detail: e, stage: "storage".into(), source: format!("{topic}/{partition}/{offset}"), received_at: now_millis(), payload };
                            let out = Output { topic: dlq_topic.clone(), key: letter.source.clone(), value: dlq_enc.encode(&letter)?, headers: dead_letter_headers(hdrs, "DECODE_FAILED") };
                            if produce_until_confirmed(&producer, &out, &ctx).await.is_none() {
                                stopping = true; // not dead-lettered: neither this offset nor later ones move
                                positions.pop();
                                break;
                            }
                        }
                        None => { stopping = true; break; }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = ctx.shutdown.wait() => { stopping = true; break; }
            }
        }
        if !batch.is_empty() {
            let started = std::time::Instant::now();
            let Some(new) =
                write_with_retry(&mut client, &args, &group, &topic, &batch, &ctx).await
            else {
                break;
            };
            m.stored.inc_by(new);
            m.duplicates.inc_by(batch.len() as u64 - new);
            m.batch_rows.observe(batch.len() as f64);
            m.batch_latency.observe(started.elapsed().as_secs_f64());
            batch.clear();
        }
        // The rows are committed: now, and only now, the Kafka offsets may move.
        for (partition, offset) in positions.drain(..) {
            let _ = consumer.store_offset(&topic, partition, offset);
        }
        if stopping {
            break;
        }
    }
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    Ok(())
}

fn dead_letter_headers(h: OwnedHeaders, reason: &str) -> OwnedHeaders {
    h.insert(Header {
        key: headers::REASON,
        value: Some(reason.as_bytes()),
    })
}

/// `None` when shutdown interrupts a wait for the registry.
async fn decode_with_retry(
    decoder: &Decoder<TransactionValidated>,
    payload: &[u8],
    ctx: &Context,
) -> Option<Result<TransactionValidated, String>> {
    let mut backoff = Backoff::outage();
    loop {
        match decoder.decode(payload).await {
            Ok(r) => return Some(Ok(r)),
            Err(e) if !e.is_retriable() => return Some(Err(e.to_string())),
            Err(e) => {
                tracing::warn!(error = %e, "schema registry unavailable; retrying");
                if !backoff.wait(&ctx.shutdown).await {
                    return None;
                }
            }
        }
    }
}

async fn connect_with_retry(args: &Args, ctx: &Context) -> anyhow::Result<tokio_postgres::Client> {
    let mut backoff = Backoff::outage();
    loop {
        match db::connect(args.database_url.expose()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(error = %e, database = %redact_url(args.database_url.expose()), "database unreachable; retrying");
                if !backoff.wait(&ctx.shutdown).await {
                    anyhow::bail!("stopped while waiting for the database");
                }
            }
        }
    }
}

/// Writes until it succeeds; the consumer is not read meanwhile, so an outage stops
/// consumption instead of piling up rows. `None` if shutdown comes first (nothing committed,
/// the offsets stay where they are).
async fn write_with_retry(
    client: &mut tokio_postgres::Client,
    args: &Args,
    group: &str,
    topic: &str,
    batch: &[db::Row],
    ctx: &Context,
) -> Option<u64> {
    let mut backoff = Backoff::outage();
    loop {
        match db::write_batch(client, group, topic, batch).await {
            Ok(n) => {
                ctx.health.set_ready(true);
                return Some(n);
            }
            Err(e) => {
                let class = if e.is_permanent() {
                    "permanent"
                } else {
                    "transient"
                };
                metrics().db_errors.with_label_values(&[class]).inc();
                tracing::warn!(error = %e, class, rows = batch.len(), "batch write failed; retrying");
                ctx.health.set_ready(false);
                if !backoff.wait(&ctx.shutdown).await {
                    return None;
                }
                if client.is_closed() {
                    if let Ok(c) = db::connect(args.database_url.expose()).await {
                        *client = c;
                    }
                }
            }
        }
    }
}
