//! PostgreSQL plumbing shared by the stages that own tables (storage, notifier): the URL flag,
//! connecting, telling a permanent refusal from a transient failure, and versioned migrations.
//! Each stage owns its tables and its own migration ledger, so either can be deployed, migrated
//! and rolled back without the other.

use clap::Args;
use posflow_runtime::{ConfigErrors, Secret};
use std::collections::HashSet;
use tokio_postgres::{Client, NoTls};

/// The database a stage writes to.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/db. From a Secret; the password is never logged.
    #[arg(
        long,
        env = "POSFLOW_DATABASE_URL",
        hide_env_values = true,
        default_value = ""
    )]
    pub database_url: Secret,
}

impl DatabaseArgs {
    pub fn check(&self, e: &mut ConfigErrors) {
        let url = self.database_url.expose();
        e.check(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "--database-url (POSFLOW_DATABASE_URL) must be a postgres:// URL",
        );
    }

    /// Connects; the error names the server without the password.
    pub async fn connect(&self) -> Result<Client, DbError> {
        connect(self.database_url.expose()).await
    }

    /// The URL with its password replaced, for logs and errors.
    pub fn redacted(&self) -> String {
        posflow_runtime::config::redact_url(self.database_url.expose())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl DbError {
    /// Data the database refuses for good (SQLSTATE classes 22 data exception, 23 integrity
    /// violation, 54 program limit exceeded) vs. everything else (connection lost, server
    /// restarting, disk full), which is retried.
    pub fn is_permanent(&self) -> bool {
        self.sqlstate()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54"))
    }

    pub fn sqlstate(&self) -> Option<&str> {
        let DbError::Postgres(e) = self;
        e.code().map(|c| c.code())
    }

    /// The server's message without its DETAIL, which may quote the row (card token, amounts):
    /// safe for logs and dead letters.
    pub fn summary(&self) -> String {
        let DbError::Postgres(e) = self;
        match e.as_db_error() {
            Some(db) => format!("SQLSTATE {}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        }
    }
}

pub async fn connect(url: &str) -> Result<Client, DbError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// One stage's migrations: applied in order, each once, recorded in `ledger`.
pub struct Migrations {
    /// The table recording applied versions, one per owning stage.
    pub ledger: &'static str,
    /// Advisory lock serialising replicas that start together.
    pub lock: i64,
    pub steps: &'static [(i32, &'static str, &'static str)],
}

/// Applies pending migrations in one transaction; returns the versions applied now.
pub async fn migrate(client: &mut Client, m: &Migrations) -> Result<Vec<i32>, DbError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&m.lock])
        .await?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        m.ledger
    ))
    .await?;
    let done: HashSet<i32> = tx
        .query(&format!("SELECT version FROM {}", m.ledger), &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in m.steps {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            &format!("INSERT INTO {} (version, name) VALUES ($1, $2)", m.ledger),
            &[version, name],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}
