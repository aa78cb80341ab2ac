//! posflow-notifier: delivers each merchant its transactions as it chose — signed webhooks,
//! email receipts, periodic digests — and fraud alerts ahead of everything else.
//!
//! Four loops share one PostgreSQL outbox (docs/notifier.md):
//! - **ingest** consumes validated transactions and fraud alerts, renders one delivery per event
//!   and channel (or a digest item) and inserts them idempotently; offsets move after the
//!   insert commits, so nothing consumed is lost and a redelivery adds nothing;
//! - **dispatch** claims due deliveries (fraud alerts first) under a lease with `SKIP LOCKED`,
//!   so replicas share the work, and sends them with a per-merchant rate limit, concurrency cap
//!   and circuit breaker; retries back off with jitter; an exhausted or refused delivery is
//!   dead-lettered; every attempt's outcome goes to the status topic;
//! - **digests** close each digest-mode merchant's period once (a primary key decides which
//!   replica) and enqueue the digest;
//! - **preferences** are reloaded from the table every few seconds.

pub mod cli;
pub mod digest;
pub mod dispatch;
pub mod egress;
pub mod email;
pub mod ingest;
pub mod policy;
pub mod prefs;
pub mod render;
pub mod sealed;
pub mod store;
pub mod webhook;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use posflow_kafka::{InstanceArgs, KafkaArgs};
use posflow_pg::Conn;
use posflow_pg::DatabaseArgs;
use posflow_runtime::{CommonArgs, ConfigErrors, Context};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// posflow-notifier: delivers transactions to merchants by webhook and email.
#[derive(Debug, Parser)]
#[command(name = "posflow-notifier", version, about, long_about = None)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub seal: sealed::SealArgs,
    /// Apply pending migrations at start-up (otherwise run `posflow-notifier migrate` first).
    #[arg(long, env = "POSFLOW_MIGRATE_ON_START", default_value_t = false)]
    pub migrate_on_start: bool,
    #[command(flatten)]
    pub smtp: email::SmtpArgs,
    #[command(flatten)]
    pub egress: egress::EgressArgs,
    /// Extra CA bundle (PEM) trusted for webhook endpoints, besides the system's roots.
    #[arg(long, env = "POSFLOW_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<PathBuf>,
    /// Milliseconds a webhook or SMTP exchange may take before it counts as failed (and is retried).
    #[arg(long, env = "POSFLOW_DELIVERY_TIMEOUT_MS", default_value_t = 10_000)]
    pub delivery_timeout_ms: u64,
    /// Milliseconds before the first retry; doubles per failed attempt, with jitter.
    #[arg(long, env = "POSFLOW_RETRY_BASE_MS", default_value_t = 1_000)]
    pub retry_base_ms: u64,
    /// Longest wait between two attempts, in seconds (a Retry-After may ask for longer, up to an hour).
    #[arg(long, env = "POSFLOW_RETRY_MAX_DELAY_SECS", default_value_t = 600)]
    pub retry_max_delay_secs: u64,
    /// Attempts per delivery, the first included; then it is failed and dead-lettered.
    #[arg(long, env = "POSFLOW_MAX_ATTEMPTS", default_value_t = 10)]
    pub max_attempts: u32,
    /// Deliveries per second to one merchant (all channels), per replica.
    #[arg(long, env = "POSFLOW_MERCHANT_RATE", default_value_t = 50)]
    pub merchant_rate: u32,
    /// Deliveries to one merchant in flight at once, per replica.
    #[arg(long, env = "POSFLOW_MERCHANT_CONCURRENCY", default_value_t = 8)]
    pub merchant_concurrency: usize,
    /// Deliveries claimed and not yet settled, per replica (attempts under way and the next
    /// ones of each merchant, up to four times --merchant-concurrency each).
    #[arg(long, env = "POSFLOW_CONCURRENCY", default_value_t = 1000)]
    pub concurrency: usize,
    /// Consecutive failed attempts that open a merchant's circuit.
    #[arg(long, env = "POSFLOW_BREAKER_THRESHOLD", default_value_t = 5)]
    pub breaker_threshold: u32,
    /// Seconds an open circuit waits before one probe delivery.
    #[arg(long, env = "POSFLOW_BREAKER_COOLDOWN_SECS", default_value_t = 30)]
    pub breaker_cooldown_secs: u64,
    /// Seconds a claimed delivery is held before another replica may take it (covers a crash).
    #[arg(long, env = "POSFLOW_LEASE_SECS", default_value_t = 120)]
    pub lease_secs: u64,
    /// Seconds between reloads of the merchant preferences table.
    #[arg(long, env = "POSFLOW_PREFERENCES_REFRESH_SECS", default_value_t = 10)]
    pub preferences_refresh_secs: u64,
    /// Seconds after a digest period ends before it is closed, for transactions still in the pipeline.
    #[arg(long, env = "POSFLOW_DIGEST_GRACE_SECS", default_value_t = 60)]
    pub digest_grace_secs: u64,
    /// Hours finished deliveries and digested items are kept.
    #[arg(long, env = "POSFLOW_OUTBOX_RETENTION_HOURS", default_value_t = 168)]
    pub outbox_retention_hours: u64,
    /// Events per outbox insert (one database transaction), at most.
    #[arg(long, env = "POSFLOW_NOTIFIER_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
    /// Milliseconds an insert batch waits to fill.
    #[arg(long, env = "POSFLOW_NOTIFIER_BATCH_LINGER_MS", default_value_t = 50)]
    pub batch_linger_ms: u64,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Consume, enqueue and deliver (the default).
    Run,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage merchant delivery preferences.
    #[command(subcommand)]
    Merchants(cli::Merchants),
}

impl Args {
    pub fn check(self) -> Result<Self, ConfigErrors> {
        let mut e = ConfigErrors::new();
        self.db.check(&mut e);
        if matches!(self.command, None | Some(Command::Run)) {
            self.seal.check(&mut e);
            self.kafka.check(&mut e);
            self.instance.check(&mut e);
            self.smtp.check(&mut e);
            self.egress.check(&mut e);
            if let Some(ca) = &self.webhook_ca_file {
                e.check(
                    ca.is_file(),
                    format!("--webhook-ca-file {} is not a file", ca.display()),
                );
            }
            self.check_ranges(&mut e);
            e.check(
                self.lease_secs * 1000 > self.delivery_timeout_ms * 2,
                "--lease-secs must exceed twice --delivery-timeout-ms, or a slow attempt could be claimed twice",
            );
        }
        e.into_result(self)
    }

    fn check_ranges(&self, e: &mut ConfigErrors) {
        e.in_range(
            "--delivery-timeout-ms",
            self.delivery_timeout_ms,
            100..=120_000,
        );
        e.in_range("--retry-base-ms", self.retry_base_ms, 10..=600_000);
        e.in_range(
            "--retry-max-delay-secs",
            self.retry_max_delay_secs,
            1..=86_400,
        );
        e.in_range("--max-attempts", self.max_attempts.into(), 1..=100);
        e.in_range("--merchant-rate", self.merchant_rate.into(), 1..=100_000);
        let merchant_concurrency = self.merchant_concurrency as u64;
        e.in_range("--merchant-concurrency", merchant_concurrency, 1..=1_000);
        e.in_range("--concurrency", self.concurrency as u64, 1..=10_000);
        e.in_range(
            "--breaker-threshold",
            self.breaker_threshold.into(),
            1..=1_000,
        );
        e.in_range(
            "--breaker-cooldown-secs",
            self.breaker_cooldown_secs,
            1..=3_600,
        );
        e.in_range("--lease-secs", self.lease_secs, 5..=3_600);
        let refresh = self.preferences_refresh_secs;
        e.in_range("--preferences-refresh-secs", refresh, 1..=3_600);
        e.in_range("--digest-grace-secs", self.digest_grace_secs, 0..=3_600);
        let retention = self.outbox_retention_hours;
        e.in_range("--outbox-retention-hours", retention, 1..=24 * 365);
        e.in_range("--batch-size", self.batch_size as u64, 1..=10_000);
        e.in_range("--batch-linger-ms", self.batch_linger_ms, 1..=60_000);
    }

    pub fn retry_policy(&self) -> policy::RetryPolicy {
        policy::RetryPolicy {
            base: Duration::from_millis(self.retry_base_ms),
            max_delay: Duration::from_secs(self.retry_max_delay_secs),
            max_attempts: self.max_attempts,
        }
    }
}

/// The merchant preferences every loop reads, swapped whole on reload.
#[derive(Clone, Default)]
pub struct Prefs(Arc<RwLock<Arc<store::PreferenceMap>>>);

impl Prefs {
    pub fn get(&self, merchant: &str) -> Option<Arc<prefs::Preferences>> {
        self.snapshot().get(merchant).cloned()
    }
    pub fn snapshot(&self) -> Arc<store::PreferenceMap> {
        self.0.read().map(|m| m.clone()).unwrap_or_default()
    }
    fn replace(&self, map: store::PreferenceMap) {
        if let Ok(mut m) = self.0.write() {
            *m = Arc::new(map);
        }
    }
}

/// Applies the notifier's migrations.
pub async fn migrate(db: &DatabaseArgs) -> anyhow::Result<Vec<i32>> {
    let mut client = db
        .connect()
        .await
        .with_context(|| format!("connecting to {}", db.redacted()))?;
    Ok(store::migrate(&mut client).await?)
}

pub async fn run(args: Args, ctx: Context) -> anyhow::Result<()> {
    if matches!(args.command, Some(Command::Migrate)) {
        let applied = migrate(&args.db).await?;
        tracing::info!(?applied, "migrations applied");
        return Ok(());
    }
    if args.migrate_on_start {
        let applied = migrate(&args.db).await?;
        tracing::info!(?applied, "migrations applied");
    }
    let args = Arc::new(args);
    let prefs = Prefs::default();
    let mut conn = Conn::new(&args.db);
    let Some(client) = conn.get(&ctx).await else {
        return Ok(());
    };
    let keys = args.seal.keys()?;
    prefs.replace(store::load_preferences(client, &keys).await.context(
        "reading merchant preferences (run `posflow-notifier migrate`, then `merchants apply`)",
    )?);
    tracing::info!(
        merchants = prefs.snapshot().len(),
        "merchant preferences loaded"
    );
    let wake = Arc::new(tokio::sync::Notify::new());
    let dispatcher = dispatch::Dispatcher::new(&args, prefs.clone()).await?;
    let tasks = vec![
        (
            "preferences",
            tokio::spawn(refresh_preferences(
                args.clone(),
                prefs.clone(),
                keys,
                conn,
                ctx.clone(),
            )),
        ),
        (
            "ingest",
            tokio::spawn(ingest::run(
                args.clone(),
                prefs.clone(),
                wake.clone(),
                ctx.clone(),
            )),
        ),
        ("dispatch", tokio::spawn(dispatcher.run(wake, ctx.clone()))),
        (
            "digest",
            tokio::spawn(digest::run(args.clone(), prefs, ctx.clone())),
        ),
    ];
    ctx.health.set_ready(true);
    posflow_runtime::supervise(tasks, &ctx).await
}

async fn refresh_preferences(
    args: Arc<Args>,
    prefs: Prefs,
    keys: sealed::Keys,
    mut conn: Conn,
    ctx: Context,
) -> anyhow::Result<()> {
    let every = Duration::from_secs(args.preferences_refresh_secs);
    // When this replica last read the preferences: a change saved before it is in effect here
    // (SREs: alert when it falls behind; tests: wait on it rather than on a sleep).
    let loaded = posflow_runtime::metrics::gauge(
        "posflow_notifier_preferences_loaded_timestamp_seconds",
        "Unix time of this replica's last successful read of the merchant preferences",
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = ctx.shutdown.wait() => return Ok(()),
        }
        let Some(client) = conn.get(&ctx).await else {
            return Ok(());
        };
        match store::load_preferences(client, &keys).await {
            Ok(map) => {
                prefs.replace(map);
                loaded.set(posflow_schema::now_millis() / 1000);
            }
            Err(e) => {
                tracing::warn!(error = %e.summary(), "reloading merchant preferences failed; keeping the last ones")
            }
        }
    }
}
