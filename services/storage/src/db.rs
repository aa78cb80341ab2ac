//! PostgreSQL: migrations and the idempotent batch write.

use posflow_schema::TransactionValidated;
use std::collections::{BTreeMap, HashSet};
use tokio_postgres::{Client, NoTls};

/// Versioned migrations, applied in order, each once (table schema_migrations).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "transactions",
    include_str!("../migrations/0001_transactions.sql"),
)];

/// Serialises migrations across replicas starting together.
const MIGRATION_LOCK: i64 = 0x0070_6f73_666c_6f77; // "posflow"

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl DbError {
    /// Data the database refuses for good (SQLSTATE classes 22 data exception, 23 integrity)
    /// vs. everything else (connection lost, server restarting), which is retried.
    pub fn is_permanent(&self) -> bool {
        let DbError::Postgres(e) = self;
        e.code()
            .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
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

/// Applies pending migrations; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, DbError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let done: HashSet<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// Keeps monthly partitions from last month to two months ahead.
pub async fn ensure_partitions(client: &Client) -> Result<(), DbError> {
    client
        .execute(
            "SELECT posflow_ensure_month_partitions((now() - interval '1 month')::date, 4)",
            &[],
        )
        .await?;
    Ok(())
}

/// One validated record with its Kafka position.
pub struct Row {
    pub record: TransactionValidated,
    pub partition: i32,
    pub offset: i64,
}

/// Writes a batch in one database transaction: new transaction ids only, their rows and line
/// items, and the next offset per partition. Returns how many rows were new.
pub async fn write_batch(
    client: &mut Client,
    group: &str,
    topic: &str,
    rows: &[Row],
) -> Result<u64, DbError> {
    let tx = client.transaction().await?;
    // One row per id even if the batch repeats one (a redelivery inside the batch).
    let mut seen = HashSet::new();
    let unique: Vec<&Row> = rows
        .iter()
        .filter(|r| seen.insert(r.record.transaction.transaction_id.as_str()))
        .collect();
    let ids: Vec<&str> = unique
        .iter()
        .map(|r| r.record.transaction.transaction_id.as_str())
        .collect();
    let times: Vec<i64> = unique
        .iter()
        .map(|r| r.record.transaction.transaction_time)
        .collect();
    let new: HashSet<String> = tx
        .query(
            "INSERT INTO transaction_keys (transaction_id, transaction_time)
             SELECT id, to_timestamp(ms / 1000.0) FROM unnest($1::text[], $2::bigint[]) AS t(id, ms)
             ON CONFLICT DO NOTHING RETURNING transaction_id",
            &[&ids, &times],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let fresh: Vec<&Row> = unique
        .into_iter()
        .filter(|r| new.contains(&r.record.transaction.transaction_id))
        .collect();
    if !fresh.is_empty() {
        insert_rows(&tx, &fresh).await?;
    }
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for r in rows {
        let e = next.entry(r.partition).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    for (partition, offset) in next {
        tx.execute(
            "INSERT INTO kafka_offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
             ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = GREATEST(kafka_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
            &[&group, &topic, &partition, &offset],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(fresh.len() as u64)
}

async fn insert_rows(tx: &tokio_postgres::Transaction<'_>, rows: &[&Row]) -> Result<(), DbError> {
    let t = |r: &&Row| r.record.transaction.clone();
    let txs: Vec<_> = rows.iter().map(t).collect();
    let col = |f: fn(&posflow_schema::Transaction) -> String| -> Vec<String> {
        txs.iter().map(f).collect()
    };
    let opt = |f: fn(&posflow_schema::Transaction) -> Option<String>| -> Vec<Option<String>> {
        txs.iter().map(f).collect()
    };
    let ids = col(|t| t.transaction_id.clone());
    let terminals = col(|t| t.terminal_id.clone());
    let merchants = col(|t| t.merchant_id.clone());
    let sequences: Vec<i64> = txs.iter().map(|t| t.sequence).collect();
    let times: Vec<i64> = txs.iter().map(|t| t.transaction_time).collect();
    let kinds = col(|t| t.kind.as_str().to_string());
    let originals = opt(|t| t.original_transaction_id.clone());
    let amounts: Vec<i64> = txs.iter().map(|t| t.amount_minor).collect();
    let currencies = col(|t| t.currency.clone());
    let methods = col(|t| t.payment_method.as_str().to_string());
    let modes = col(|t| t.entry_mode.as_str().to_string());
    let tokens = opt(|t| t.card.as_ref().map(|c| c.token.clone()));
    let bins = opt(|t| t.card.as_ref().map(|c| c.bin.clone()));
    let last4s = opt(|t| t.card.as_ref().map(|c| c.last4.clone()));
    let auths = opt(|t| t.auth_code.clone());
    let responses = col(|t| t.response_code.clone());
    let mccs = col(|t| t.mcc.clone());
    let lats: Vec<Option<f64>> = txs.iter().map(|t| t.location.map(|l| l.latitude)).collect();
    let lons: Vec<Option<f64>> = txs
        .iter()
        .map(|t| t.location.map(|l| l.longitude))
        .collect();
    let received: Vec<i64> = rows.iter().map(|r| r.record.envelope.received_at).collect();
    let bridges: Vec<String> = rows
        .iter()
        .map(|r| r.record.envelope.bridge_id.clone())
        .collect();
    let validated: Vec<i64> = rows.iter().map(|r| r.record.validated_at).collect();
    let partitions: Vec<i32> = rows.iter().map(|r| r.partition).collect();
    let offsets: Vec<i64> = rows.iter().map(|r| r.offset).collect();
    tx.execute(
        "INSERT INTO transactions (transaction_id, terminal_id, merchant_id, sequence, transaction_time, type,
            original_transaction_id, amount_minor, currency, payment_method, entry_mode, card_token, card_bin,
            card_last4, auth_code, response_code, mcc, latitude, longitude, received_at, bridge_id, validated_at,
            kafka_partition, kafka_offset)
         SELECT a, b, c, d, to_timestamp(e / 1000.0), f, g, h, i, j, k, l, m, n, o, p, q, r, s,
                to_timestamp(t / 1000.0), u, to_timestamp(v / 1000.0), w, x
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[],
                     $8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                     $15::text[], $16::text[], $17::text[], $18::float8[], $19::float8[], $20::bigint[],
                     $21::text[], $22::bigint[], $23::int[], $24::bigint[])
              AS src(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, t, u, v, w, x)",
        &[
            &ids, &terminals, &merchants, &sequences, &times, &kinds, &originals, &amounts, &currencies, &methods, &modes,
            &tokens, &bins, &last4s, &auths, &responses, &mccs, &lats, &lons, &received, &bridges, &validated, &partitions,
            &offsets,
        ],
    )
    .await?;
    let mut li_ids = Vec::new();
    let mut li_no = Vec::new();
    let mut li_sku = Vec::new();
    let mut li_desc = Vec::new();
    let mut li_price = Vec::new();
    let mut li_qty = Vec::new();
    for t in &txs {
        for (n, li) in t.line_items.iter().enumerate() {
            li_ids.push(t.transaction_id.clone());
            li_no.push(n as i32 + 1);
            li_sku.push(li.sku.clone());
            li_desc.push(li.description.clone());
            li_price.push(li.unit_price_minor);
            li_qty.push(li.quantity);
        }
    }
    if !li_ids.is_empty() {
        tx.execute(
            "INSERT INTO transaction_line_items (transaction_id, line_no, sku, description, unit_price_minor, quantity)
             SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bigint[], $6::int[])",
            &[&li_ids, &li_no, &li_sku, &li_desc, &li_price, &li_qty],
        )
        .await?;
    }
    Ok(())
}
