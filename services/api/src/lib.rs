//! posflow-api: the merchant API. Merchants — their systems and their people — read their own
//! records (transactions, rejections, totals), manage their delivery settings and API keys and
//! read their audit trail, over HTTPS JSON under `/v1`. docs/api.md is the guide for
//! integrators; this crate is laid out as:
//!
//! - `auth`: keys, roles and the permission matrix;
//! - `db`: the tenancy boundary (a `Scope` per request, row-level security behind it);
//! - `records`, `events`, `reports`, `settings`, `keys`: what the endpoints read and change
//!   (`detail`: one transaction with its alerts and deliveries);
//! - `audit`: the hash-chained audit trail and its relay to `pos.audit`;
//! - `portal`: the merchant portal for people (passwords, TOTP; pages to come);
//! - `routes` (the one table of endpoints), `openapi` (generated from it), `service` (one
//!   request, start to end), `server` (HTTP and TLS), `query` and `problem` (input and errors).

pub mod audit;
pub mod auth;
pub mod db;
pub mod detail;
pub mod events;
pub mod keys;
pub mod openapi;
pub mod portal;
pub mod problem;
pub mod query;
pub mod records;
pub mod reports;
pub mod routes;
pub mod server;
pub mod service;
pub mod settings;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use posflow_kafka::KafkaArgs;
use posflow_notifier::egress::EgressArgs;
use posflow_notifier::sealed::SealArgs;
use posflow_pg::{DbError, Migrations};
use posflow_runtime::{CommonArgs, ConfigErrors, Context, Secret};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const MIGRATIONS: Migrations = Migrations {
    ledger: "api_schema_migrations",
    lock: 0x706f_7366_6170_6969, // "posfapii"
    steps: &[
        (1, "api", include_str!("../migrations/0001_api.sql")),
        (
            2,
            "events and rotation",
            include_str!("../migrations/0002_events_and_rotation.sql"),
        ),
        (3, "reports", include_str!("../migrations/0003_reports.sql")),
        (
            4,
            "fraud alerts",
            include_str!("../migrations/0004_fraud_alerts.sql"),
        ),
        (
            5,
            "portal people",
            include_str!("../migrations/0005_portal_people.sql"),
        ),
        (
            6,
            "portal team changes",
            include_str!("../migrations/0006_portal_team.sql"),
        ),
    ],
};

/// posflow-api: the merchant API — records, settings, keys and audit, per merchant.
#[derive(Debug, Parser)]
#[command(name = "posflow-api", version, about, long_about = None)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub db: posflow_pg::DatabaseArgs,
    #[command(flatten)]
    pub seal: SealArgs,
    #[command(flatten)]
    pub egress: EgressArgs,
    /// Address the API listens on.
    #[arg(long, env = "POSFLOW_API_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Server certificate chain (PEM). With --tls-key: HTTPS. Without both: plain HTTP, for
    /// running behind an ingress that terminates TLS.
    #[arg(long, env = "POSFLOW_API_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "POSFLOW_API_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Key that signs pagination cursors, at least 32 bytes; the same on every replica.
    #[arg(
        long,
        env = "POSFLOW_API_CURSOR_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub cursor_key: Secret,
    /// Requests per second per API key (burst the same); more get 429 with Retry-After.
    #[arg(long, env = "POSFLOW_API_RATE_PER_KEY", default_value_t = 50)]
    pub rate_per_key: u32,
    /// Seconds a verified key is trusted without asking the database again. A key revoked on
    /// another replica or with the CLI stops working within this; 0: every request asks.
    #[arg(long, env = "POSFLOW_API_KEY_CACHE_SECS", default_value_t = 5)]
    pub key_cache_secs: u64,
    /// Seconds a report runner holds a report before another replica may take it over (after a
    /// crash). Longer than the longest report takes to make.
    #[arg(long, env = "POSFLOW_API_REPORT_LEASE_SECS", default_value_t = 300)]
    pub report_lease_secs: u64,
    #[command(flatten)]
    pub portal: portal::invite::PortalArgs,
    /// Database connections per replica.
    #[arg(long, env = "POSFLOW_API_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
    /// Apply pending migrations at start-up (otherwise run `posflow-api migrate` first).
    #[arg(long, env = "POSFLOW_MIGRATE_ON_START", default_value_t = false)]
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Run,
    /// Apply pending database migrations (after storage's and the notifier's) and exit.
    Migrate,
    /// Print the OpenAPI document and exit.
    Openapi,
}

impl Args {
    pub fn check(self) -> Result<Self, ConfigErrors> {
        let mut e = ConfigErrors::new();
        match self.command {
            Some(Command::Openapi) => {}
            Some(Command::Migrate) => self.db.check(&mut e),
            None | Some(Command::Run) => {
                self.db.check(&mut e);
                self.kafka.check(&mut e);
                self.seal.check(&mut e);
                self.egress.check(&mut e);
                e.check(
                    self.cursor_key.expose().len() >= 32,
                    "--cursor-key (POSFLOW_API_CURSOR_KEY) must be at least 32 bytes",
                );
                e.check(
                    (1..=100_000).contains(&self.rate_per_key),
                    "--rate-per-key must be 1..=100000",
                );
                e.check(
                    (1..=256).contains(&self.pool_size),
                    "--pool-size must be 1..=256",
                );
                e.check(
                    self.key_cache_secs <= 300,
                    "--key-cache-secs must be 0..=300",
                );
                e.check(
                    (5..=86_400).contains(&self.report_lease_secs),
                    "--report-lease-secs must be 5..=86400",
                );
                self.portal.check(&mut e, false);
                match (&self.tls_cert, &self.tls_key) {
                    (Some(c), Some(k)) => {
                        for (flag, f) in [("--tls-cert", c), ("--tls-key", k)] {
                            e.check(f.is_file(), format!("{flag} {} is not a file", f.display()));
                        }
                    }
                    (None, None) => {}
                    _ => e.push("--tls-cert and --tls-key go together"),
                }
            }
        }
        e.into_result(self)
    }
}

/// Applies the API's migrations; refuses clearly if storage's and the notifier's tables (which
/// it secures) are not there yet.
pub async fn migrate(client: &mut tokio_postgres::Client) -> anyhow::Result<Vec<i32>> {
    let row = client
        .query_one(
            "SELECT to_regclass('transactions') IS NOT NULL, to_regclass('fraud_alerts') IS NOT NULL",
            &[],
        )
        .await?;
    anyhow::ensure!(
        row.get::<_, bool>(0) && row.get::<_, bool>(1),
        "the API secures storage's and the notifier's tables: run `posflow-storage migrate` and `posflow-notifier migrate` (the latest) first"
    );
    Ok(posflow_pg::migrate(client, &MIGRATIONS).await?)
}

pub async fn run(args: Args, ctx: Context) -> anyhow::Result<()> {
    match args.command {
        Some(Command::Openapi) => return Ok(()), // main.rs prints it, before any runtime
        Some(Command::Migrate) => {
            let mut c = args
                .db
                .connect()
                .await
                .with_context(|| format!("connecting to {}", args.db.redacted()))?;
            let applied = migrate(&mut c).await?;
            tracing::info!(?applied, "migrations applied");
            return Ok(());
        }
        None | Some(Command::Run) => {}
    }
    if args.migrate_on_start {
        let mut c = args
            .db
            .connect()
            .await
            .with_context(|| format!("connecting to {}", args.db.redacted()))?;
        migrate(&mut c).await?;
    }
    let url = args.db.database_url.expose().to_string();
    let connect_url = url.clone();
    let (auditor, writer) = audit::Auditor::start(
        move || {
            let url = connect_url.clone();
            Box::pin(async move { posflow_pg::connect(&url).await })
        },
        256,
    );
    let mut state = service::State::new(
        db::Pool::new(&url, args.pool_size),
        auditor,
        query::CursorKey::new(args.cursor_key.expose().as_bytes()),
        args.egress.egress(),
        args.seal.keys()?,
        NonZeroU32::new(args.rate_per_key).expect("checked"),
        Duration::from_secs(args.key_cache_secs),
    );
    state.invitations = args.portal.invitations()?;
    let state = Arc::new(state);
    // Ready once the database answers (authentication needs it for every request).
    state.pool.get().await.map_err(|e: DbError| {
        anyhow::anyhow!("database {}: {}", args.db.redacted(), e.summary())
    })?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(server::tls_acceptor(c, k)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "API listening");
    ctx.health.set_ready(true);

    let relay = tokio::spawn(relay_loop(args.kafka.clone(), url.clone(), ctx.clone()));
    let owner = format!("{}-{}", args.common.http_addr, std::process::id());
    let lease = Duration::from_secs(args.report_lease_secs);
    let runner = tokio::spawn(reports::run(url, owner, lease, ctx.shutdown.clone()));
    let drain = args.common.drain();
    let http = tokio::spawn(server::serve(
        listener,
        tls,
        state,
        ctx.shutdown.clone(),
        drain,
    ));
    posflow_runtime::supervise(
        vec![
            ("http", http),
            ("audit relay", relay),
            ("audit writer", writer),
            ("report runner", runner),
        ],
        &ctx,
    )
    .await
}

/// Copies the audit table to `pos.audit`, every half second, while this replica holds the
/// relay lock (audit.rs).
async fn relay_loop(kafka: KafkaArgs, url: String, ctx: Context) -> anyhow::Result<()> {
    let topic = kafka.topics().name(posflow_kafka::topics::AUDIT);
    let relay = audit::Relay {
        producer: posflow_kafka::clients::producer(&kafka, "posflow-api-audit")?,
        encoder: posflow_schema::Encoder::for_topic(&kafka.registry(), &topic)
            .await
            .with_context(|| format!("the schema of {topic}"))?,
        topic,
    };
    let mut client: Option<tokio_postgres::Client> = None;
    while !ctx.shutdown.is_triggered() {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = posflow_pg::connect(&url).await.ok();
        }
        if let Some(c) = client.as_mut() {
            match audit::relay_once(c, &relay, 500).await {
                Ok(n) if n > 0 => continue, // more may be waiting
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "audit relay pass failed; retrying"
                ),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = ctx.shutdown.wait() => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_run_in_order_without_gaps() {
        assert_eq!(super::MIGRATIONS.check_order(), Ok(()));
    }
}
