//! PostgreSQL plumbing shared by the stages that own tables (storage, notifier): the URL flag,
//! connecting and reconnecting ([`Conn`]), telling a permanent refusal from a transient failure, and versioned migrations.
//! Each stage owns its tables and its own migration ledger, so either can be deployed, migrated
//! and rolled back without the other.

pub mod tls;

use clap::Args;
use posflow_runtime::{ConfigErrors, Secret};
use std::collections::HashSet;
use tokio_postgres::{Client, NoTls};

/// The database a stage writes to.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/db?sslmode=verify-full&sslrootcert=/ca.crt
    /// (sslmode as libpq's: disable, prefer, require, verify-ca, verify-full). From a Secret; the
    /// password is never logged.
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
        match tls::split(url) {
            Err(why) => e.check(false, format!("--database-url: {why}")),
            Ok(t) => {
                if let Some(ca) = &t.root_cert {
                    e.check(
                        std::fs::File::open(ca).is_ok(),
                        format!(
                            "--database-url: sslrootcert {} is not readable",
                            ca.display()
                        ),
                    );
                }
            }
        }
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
    /// The URL's TLS settings cannot be used (bad sslmode, unreadable sslrootcert).
    #[error("database TLS settings: {0}")]
    Tls(String),
    /// An answer that does not have the shape the query promises (a text value that does not
    /// parse): a bug or a tampered function, never retried into silence.
    #[error("database answered unexpectedly: {0}")]
    Unexpected(String),
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
        match self {
            DbError::Postgres(e) => e.code().map(|c| c.code()),
            DbError::Tls(_) | DbError::Unexpected(_) => None,
        }
    }

    /// The server's message without its DETAIL, which may quote the row (card token, amounts):
    /// safe for logs and dead letters.
    pub fn summary(&self) -> String {
        match self {
            DbError::Postgres(e) => match e.as_db_error() {
                Some(db) => format!("SQLSTATE {}: {}", db.code().code(), db.message()),
                None => e.to_string(),
            },
            DbError::Tls(why) | DbError::Unexpected(why) => why.clone(),
        }
    }
}

/// A database connection a loop owns, reopened when it drops: how every stage connects and
/// reconnects (a server restart closes the connection for good; the next `get` opens another).
pub struct Conn {
    db: DatabaseArgs,
    client: Option<Client>,
    opened: u64,
}

impl Conn {
    pub fn new(db: &DatabaseArgs) -> Self {
        Conn {
            db: db.clone(),
            client: None,
            opened: 0,
        }
    }

    /// The open connection, reconnecting as often as needed; `None` on shutdown.
    pub async fn get(&mut self, ctx: &posflow_runtime::Context) -> Option<&mut Client> {
        Some(self.get_numbered(ctx).await?.0)
    }

    /// As `get`, with the connection's number (1 for the first `get` opened, then one more per
    /// reconnection): what was prepared on an earlier one (a `Statement`) is gone with it.
    pub async fn get_numbered(
        &mut self,
        ctx: &posflow_runtime::Context,
    ) -> Option<(&mut Client, u64)> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(connect_with_backoff(&self.db, ctx).await?);
            self.opened += 1;
        }
        Some((self.client.as_mut()?, self.opened))
    }
}

/// Connects, retrying with backoff (the stage unready meanwhile); `None` on shutdown.
pub async fn connect_with_backoff(
    db: &DatabaseArgs,
    ctx: &posflow_runtime::Context,
) -> Option<Client> {
    let mut backoff = posflow_runtime::Backoff::outage();
    loop {
        match db.connect().await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(error = %e.summary(), database = %db.redacted(), "database unreachable; retrying");
                ctx.health.set_ready(false);
                if !backoff.wait(&ctx.shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Connects with the TLS the URL's `sslmode` asks for (tls.rs).
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let target = tls::split(url).map_err(DbError::Tls)?;
    let mut config: tokio_postgres::Config = target.url.parse()?;
    config.ssl_mode(target.mode.wire());
    if target.mode == tls::SslMode::Disable {
        let (client, conn) = config.connect(NoTls).await?;
        tokio::spawn(watch(conn));
        return Ok(client);
    }
    let (client, conn) = config
        .connect(target.connector().map_err(DbError::Tls)?)
        .await?;
    tokio::spawn(watch(conn));
    Ok(client)
}

async fn watch<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(e) = conn.await {
        tracing::warn!(error = %e, "database connection closed");
    }
}

/// One stage's migrations: applied in order, each once, recorded in `ledger`.
pub struct Migrations {
    /// The table recording applied versions, one per owning stage.
    pub ledger: &'static str,
    /// Advisory lock serialising replicas that start together.
    pub lock: i64,
    pub steps: &'static [(i32, &'static str, &'static str)],
}

impl Migrations {
    /// A ledger is applied in order and never rewritten: versions run 1, 2, 3… without a gap
    /// or repeat, and every step has a name. Each owner's unit tests call this.
    pub fn check_order(&self) -> Result<(), String> {
        for (i, (version, name, sql)) in self.steps.iter().enumerate() {
            let want = i as i32 + 1;
            if *version != want {
                return Err(format!(
                    "{}: step {i} is version {version}, not {want}",
                    self.ledger
                ));
            }
            if name.is_empty() || sql.trim().is_empty() {
                return Err(format!(
                    "{}: version {version} has no name or no SQL",
                    self.ledger
                ));
            }
        }
        Ok(())
    }
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

/// One column of a batch insert (`INSERT … SELECT unnest($1::text[]), unnest($2::int8[]), …`):
/// `f` of every row, borrowed where it can be. The one way posflow writes many rows in one
/// statement. The arrays are unnested in the select list (a ProjectSet walks them in step), not
/// in `FROM unnest($1, $2, …)`, which first copies every row into a tuplestore: 1.9 against 0.5
/// µs a row for 18 columns (issue 20, docs/storage.md).
pub fn column<'a, T, U>(rows: &'a [T], f: impl FnMut(&'a T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> DatabaseArgs {
        DatabaseArgs {
            database_url: Secret::new(url),
        }
    }

    fn errors(url: &str) -> String {
        let mut e = ConfigErrors::new();
        args(url).check(&mut e);
        e.to_string()
    }

    #[test]
    fn a_bad_url_lists_every_problem() {
        assert_eq!(errors("postgres://u:p@h/db?sslmode=verify-full"), "");
        let e = errors("mysql://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        assert!(e.contains("must be a postgres:// URL"), "{e}");
        assert!(
            e.contains("sslrootcert /nonexistent/ca.pem is not readable"),
            "{e}"
        );
        let e = errors("postgres://h/db?sslmode=sometimes");
        assert!(e.contains("--database-url: "), "{e}");
    }

    #[test]
    fn the_password_is_never_in_what_is_logged() {
        let a = args("postgres://storage:s3cret-pass@db:5432/posflow?sslmode=require");
        let shown = a.redacted();
        assert!(!shown.contains("s3cret-pass"), "{shown}");
        assert!(
            shown.contains("storage") && shown.contains("db:5432"),
            "{shown}"
        );
        assert!(!format!("{a:?}").contains("s3cret-pass"));
    }

    #[test]
    fn a_ledger_out_of_order_is_refused() {
        let m = |steps| Migrations {
            ledger: "l",
            lock: 0,
            steps,
        };
        assert_eq!(
            m(&[(1, "a", "SELECT 1"), (2, "b", "SELECT 2")]).check_order(),
            Ok(())
        );
        let gap = m(&[(1, "a", "SELECT 1"), (3, "b", "SELECT 2")]).check_order();
        assert_eq!(gap, Err("l: step 1 is version 3, not 2".into()));
        assert!(m(&[(1, "a", " ")]).check_order().is_err());
    }

    #[test]
    fn columns_borrow_each_row_in_order() {
        let rows = [("a".to_string(), 1), ("b".to_string(), 2)];
        assert_eq!(column(&rows, |r| r.0.as_str()), ["a", "b"]);
        assert_eq!(column(&rows, |r| r.1 * 10), [10, 20]);
        assert!(column(&[] as &[(String, i32)], |r| r.1).is_empty());
    }
}
