//! PostgreSQL: migrations and the idempotent batch write (one array per column: `posflow_pg::column`).

use posflow_kafka::sink::NextOffsets;
use posflow_pg::column;
use posflow_schema::{TransactionRejected, TransactionValidated};
use std::collections::HashSet;
use tokio_postgres::{Client, Statement};

/// Versioned migrations, applied in order, each once (table schema_migrations).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "transactions",
        include_str!("../migrations/0001_transactions.sql"),
    ),
    (
        2,
        "rejections",
        include_str!("../migrations/0002_rejections.sql"),
    ),
    (
        3,
        "card_token_key_id",
        include_str!("../migrations/0003_card_token_key_id.sql"),
    ),
    (
        4,
        "least privilege",
        include_str!("../migrations/0004_least_privilege.sql"),
    ),
    (5, "offline", include_str!("../migrations/0005_offline.sql")),
];

pub use posflow_pg::{connect, DbError};

/// Storage's tables; the ledger keeps its historical name.
pub const STORAGE_MIGRATIONS: posflow_pg::Migrations = posflow_pg::Migrations {
    ledger: "schema_migrations",
    lock: 0x0070_6f73_666c_6f77, // "posflow"
    steps: MIGRATIONS,
};

/// Applies pending migrations; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, DbError> {
    posflow_pg::migrate(client, &STORAGE_MIGRATIONS).await
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

/// What storage keeps of one consumed record.
pub enum Item {
    Transaction(TransactionValidated),
    Rejection(TransactionRejected),
}

/// One decoded record with its Kafka position.
pub struct Row {
    pub item: Item,
    pub partition: i32,
    pub offset: i64,
}

impl Row {
    pub fn transaction_id(&self) -> &str {
        match &self.item {
            Item::Transaction(v) => &v.transaction.transaction_id,
            Item::Rejection(r) => &r.transaction.transaction_id,
        }
    }
    /// The terminal's timestamp of the transaction.
    pub fn transaction_time(&self) -> i64 {
        match &self.item {
            Item::Transaction(v) => v.transaction.transaction_time,
            Item::Rejection(r) => r.transaction.transaction_time,
        }
    }
}

/// What one batch wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// New transactions (their ids were not in the ledger).
    pub stored: u64,
    /// New rejections.
    pub rejections: u64,
    /// Records whose transaction id was already stored (a redelivery).
    pub duplicates: u64,
    /// The batch was written a second time, checked, after a repeated id failed the write that
    /// took its ids as new ([`Ledger`]).
    pub rechecked: bool,
}

/// How the next batch's transaction ids are written into the ledger.
///
/// A redelivery is rare (a rebalance, a restart), so a batch is first written as if all its ids
/// were new: a plain insert into the ledger, pipelined with everything else in one round trip.
/// A repeated id fails that transaction on the ledger's key; the batch is then written again
/// checking each id (`ON CONFLICT DO NOTHING RETURNING`, and only the new ids' rows after), and
/// batches go on being checked until one finds no repeat. Measured (issue 20, BENCHMARKS.md):
/// the checked insert costs PostgreSQL ~1.5 µs more a row, and its answer is a round trip the
/// rows must wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ledger {
    #[default]
    AssumeNew,
    Check,
}

/// Storage's writes on one connection: its statements, prepared once, and its [`Ledger`] mode.
#[derive(Default)]
pub struct Writer {
    ledger: Ledger,
    /// Prepared on the connection of this number (`Conn::get_numbered`).
    prepared: Option<(u64, Statements)>,
}

impl Writer {
    /// Writes a batch in one database transaction: new transaction ids only, their rows and
    /// line items, new rejections, and `next` offsets (which never move backwards). `conn` is
    /// `client`'s number from `Conn::get_numbered`.
    ///
    /// Round trips are what a small batch costs (issue 20: the storage write → commit hop), so
    /// the statements go out together on the connection (tokio-postgres pipelines concurrent
    /// queries), and are prepared once per connection, not parsed and planned per batch.
    pub async fn write_batch(
        &mut self,
        client: &mut Client,
        conn: u64,
        group: &str,
        rows: &[Row],
        next: &NextOffsets,
    ) -> Result<Written, DbError> {
        if self.prepared.as_ref().is_none_or(|(c, _)| *c != conn) {
            self.prepared = Some((conn, Statements::prepare(client).await?));
        }
        let st = &self.prepared.as_ref().expect("prepared just now").1;
        // One row per id even if the batch repeats one (a redelivery inside the batch).
        let mut seen = HashSet::new();
        let (mut txns, mut rejections) = (Vec::new(), Vec::new());
        for r in rows {
            match &r.item {
                Item::Transaction(v) if seen.insert(("t", r.transaction_id())) => txns.push((r, v)),
                Item::Rejection(v) if seen.insert(("r", r.transaction_id())) => {
                    rejections.push((r, v))
                }
                _ => {}
            }
        }
        let batch = Batch {
            st,
            group,
            next,
            txns: &txns,
            rejections: &rejections,
        };
        let rechecked = self.ledger == Ledger::AssumeNew;
        if rechecked {
            match batch.write_assuming_new(client).await {
                Err(e) if is_repeated_id(&e) => self.ledger = Ledger::Check,
                Ok(new_rejections) => return Ok(written(rows, txns.len(), new_rejections, false)),
                Err(e) => return Err(e),
            }
        }
        let (stored, new_rejections) = batch.write_checked(client).await?;
        if stored == txns.len() {
            self.ledger = Ledger::AssumeNew;
        }
        Ok(written(rows, stored, new_rejections, rechecked))
    }
}

/// Every statement a batch may need.
struct Statements {
    ids: Statement,
    new_ids: Statement,
    rejections: Statement,
    rows: Statement,
    line_items: Statement,
    offsets: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, DbError> {
        let (ids, new_ids, rejections, rows, line_items, offsets) = futures::try_join!(
            client.prepare(INSERT_IDS),
            client.prepare(NEW_IDS),
            client.prepare(INSERT_REJECTIONS),
            client.prepare(INSERT_ROWS),
            client.prepare(INSERT_LINE_ITEMS),
            client.prepare(STORE_OFFSETS),
        )?;
        Ok(Statements {
            ids,
            new_ids,
            rejections,
            rows,
            line_items,
            offsets,
        })
    }
}

const INSERT_IDS: &str = "INSERT INTO transaction_keys (transaction_id, transaction_time)
     SELECT unnest($1::text[]), to_timestamp(unnest($2::bigint[]) / 1000.0)";
const NEW_IDS: &str = "INSERT INTO transaction_keys (transaction_id, transaction_time)
     SELECT unnest($1::text[]), to_timestamp(unnest($2::bigint[]) / 1000.0)
     ON CONFLICT DO NOTHING RETURNING transaction_id";
const STORE_OFFSETS: &str = "INSERT INTO kafka_offsets (consumer_group, topic, partition, next_offset)
     SELECT $1, t, p, o FROM (SELECT unnest($2::text[]) t, unnest($3::int[]) p, unnest($4::bigint[]) o) AS src
     ON CONFLICT (consumer_group, topic, partition) DO UPDATE
       SET next_offset = GREATEST(kafka_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()";
const INSERT_REJECTIONS: &str = "INSERT INTO rejections (transaction_id, terminal_id, merchant_id, transaction_time, type, amount_minor,
        currency, card_token, reason_codes, reasons, received_at, rejected_at, kafka_partition, kafka_offset)
     SELECT a, b, c, to_timestamp(d / 1000.0), e, f, g, h, string_to_array(i, ','), j::jsonb,
            to_timestamp(k / 1000.0), to_timestamp(l / 1000.0), m, n
     FROM (SELECT unnest($1::text[]) a, unnest($2::text[]) b, unnest($3::text[]) c, unnest($4::bigint[]) d,
             unnest($5::text[]) e, unnest($6::bigint[]) f, unnest($7::text[]) g, unnest($8::text[]) h,
             unnest($9::text[]) i, unnest($10::text[]) j, unnest($11::bigint[]) k, unnest($12::bigint[]) l,
             unnest($13::int[]) m, unnest($14::bigint[]) n) AS src
     ON CONFLICT (transaction_id) DO NOTHING";
const INSERT_ROWS: &str = "INSERT INTO transactions (transaction_id, terminal_id, merchant_id, sequence, transaction_time, type,
        original_transaction_id, amount_minor, currency, payment_method, entry_mode, card_token, card_bin,
        card_last4, auth_code, response_code, mcc, latitude, longitude, received_at, bridge_id, validated_at,
        kafka_partition, kafka_offset, card_token_key_id, offline, offline_since)
     SELECT a, b, c, d, to_timestamp(e / 1000.0), f, g, h, i, j, k, l, m, n, o, p, q, r, s,
            to_timestamp(t / 1000.0), u, to_timestamp(v / 1000.0), w, x, y, z, to_timestamp(aa / 1000.0)
     FROM (SELECT unnest($1::text[]) a, unnest($2::text[]) b, unnest($3::text[]) c, unnest($4::bigint[]) d,
                 unnest($5::bigint[]) e, unnest($6::text[]) f, unnest($7::text[]) g, unnest($8::bigint[]) h,
                 unnest($9::text[]) i, unnest($10::text[]) j, unnest($11::text[]) k, unnest($12::text[]) l,
                 unnest($13::text[]) m, unnest($14::text[]) n, unnest($15::text[]) o, unnest($16::text[]) p,
                 unnest($17::text[]) q, unnest($18::float8[]) r, unnest($19::float8[]) s, unnest($20::bigint[]) t,
                 unnest($21::text[]) u, unnest($22::bigint[]) v, unnest($23::int[]) w, unnest($24::bigint[]) x,
                 unnest($25::text[]) y, unnest($26::bool[]) z, unnest($27::bigint[]) aa) AS src";
const INSERT_LINE_ITEMS: &str = "INSERT INTO transaction_line_items (transaction_id, line_no, sku, description, unit_price_minor, quantity)
     SELECT unnest($1::text[]), unnest($2::int[]), unnest($3::text[]), unnest($4::text[]),
            unnest($5::bigint[]), unnest($6::int[])";

fn written(rows: &[Row], stored: usize, rejections: u64, rechecked: bool) -> Written {
    let stored = stored as u64;
    Written {
        stored,
        rejections,
        duplicates: rows.len() as u64 - stored - rejections,
        rechecked,
    }
}

/// A batch with repeats inside it removed.
struct Batch<'a> {
    st: &'a Statements,
    group: &'a str,
    next: &'a NextOffsets,
    txns: &'a [(&'a Row, &'a TransactionValidated)],
    rejections: &'a [(&'a Row, &'a TransactionRejected)],
}

impl Batch<'_> {
    /// Every statement in one round trip; fails on the ledger's key if an id is not new.
    /// Returns the new rejections.
    async fn write_assuming_new(&self, client: &mut Client) -> Result<u64, DbError> {
        let tx = client.transaction().await?;
        // All awaited, not the first error: the ledger's own error is the one that says to
        // write the batch again checked; the statements after it fail only as "aborted".
        let (ids, rejections, rows, offsets) = futures::join!(
            insert_ids(&tx, self.st, self.txns),
            insert_rejections(&tx, self.st, self.rejections),
            insert_rows(&tx, self.st, self.txns),
            store_offsets(&tx, self.st, self.group, self.next)
        );
        ids?;
        let new_rejections = rejections?;
        rows?;
        offsets?;
        tx.commit().await?;
        Ok(new_rejections)
    }

    /// The ledger's answer first, then the new ids' rows. Returns the transactions stored and
    /// the new rejections.
    async fn write_checked(&self, client: &mut Client) -> Result<(usize, u64), DbError> {
        let tx = client.transaction().await?;
        let (new, new_rejections) = futures::try_join!(
            new_ids(&tx, self.st, self.txns),
            insert_rejections(&tx, self.st, self.rejections)
        )?;
        let fresh: Vec<(&Row, &TransactionValidated)> = self
            .txns
            .iter()
            .filter(|(_, v)| new.contains(v.transaction.transaction_id.as_str()))
            .copied()
            .collect();
        futures::try_join!(
            insert_rows(&tx, self.st, &fresh),
            store_offsets(&tx, self.st, self.group, self.next)
        )?;
        tx.commit().await?;
        Ok((fresh.len(), new_rejections))
    }
}

/// The ledger's key: a repeated transaction id.
const LEDGER_KEY: &str = "transaction_keys_pkey";

/// Whether `e` is the ledger refusing a transaction id it already has.
fn is_repeated_id(e: &DbError) -> bool {
    matches!(e, DbError::Postgres(e) if e.as_db_error().is_some_and(|db| {
        *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some(LEDGER_KEY)
    }))
}

/// The ledger's two columns of a batch: ids and terminal times.
fn ledger_columns<'a>(txns: &[(&'a Row, &'a TransactionValidated)]) -> (Vec<&'a str>, Vec<i64>) {
    (
        column(txns, |(_, v)| v.transaction.transaction_id.as_str()),
        column(txns, |(_, v)| v.transaction.transaction_time),
    )
}

/// The batch's transaction ids into the ledger, all taken to be new.
async fn insert_ids(
    tx: &tokio_postgres::Transaction<'_>,
    st: &Statements,
    txns: &[(&Row, &TransactionValidated)],
) -> Result<(), DbError> {
    if txns.is_empty() {
        return Ok(());
    }
    let (ids, times) = ledger_columns(txns);
    tx.execute(&st.ids, &[&ids, &times]).await?;
    Ok(())
}

/// The batch's transaction ids into the ledger; returns those that were not there yet.
async fn new_ids(
    tx: &tokio_postgres::Transaction<'_>,
    st: &Statements,
    txns: &[(&Row, &TransactionValidated)],
) -> Result<HashSet<String>, DbError> {
    if txns.is_empty() {
        return Ok(HashSet::new());
    }
    let (ids, times) = ledger_columns(txns);
    Ok(tx
        .query(&st.new_ids, &[&ids, &times])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Every partition's next offset in one statement; an offset never moves backwards.
async fn store_offsets(
    tx: &tokio_postgres::Transaction<'_>,
    st: &Statements,
    group: &str,
    next: &NextOffsets,
) -> Result<(), DbError> {
    if next.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = next.keys().map(|(t, _)| t.as_str()).collect();
    let partitions: Vec<i32> = next.keys().map(|(_, p)| *p).collect();
    let offsets: Vec<i64> = next.values().copied().collect();
    tx.execute(&st.offsets, &[&group, &topics, &partitions, &offsets])
        .await?;
    Ok(())
}

/// Where this group's consumption of `topic`/`partition` is to resume, if storage wrote there.
pub async fn next_offset(
    client: &Client,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, DbError> {
    Ok(client
        .query_opt(
            "SELECT next_offset FROM kafka_offsets WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
            &[&group, &topic, &partition],
        )
        .await?
        .map(|r| r.get(0)))
}

async fn insert_rejections(
    tx: &tokio_postgres::Transaction<'_>,
    st: &Statements,
    rows: &[(&Row, &TransactionRejected)],
) -> Result<u64, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids = column(rows, |(_, v)| v.transaction.transaction_id.as_str());
    let terminals = column(rows, |(_, v)| v.transaction.terminal_id.as_str());
    let merchants = column(rows, |(_, v)| v.transaction.merchant_id.as_str());
    let kinds = column(rows, |(_, v)| v.transaction.kind.as_str());
    let currencies = column(rows, |(_, v)| v.transaction.currency.as_str());
    // Codes joined by commas (codes are [A-Z_]); the array is rebuilt in SQL.
    let codes = column(rows, |(_, v)| {
        v.reasons
            .iter()
            .map(|r| r.code.as_str())
            .collect::<Vec<_>>()
            .join(",")
    });
    let reasons = column(rows, |(_, v)| {
        serde_json::Value::Array(
            v.reasons
                .iter()
                .map(|r| serde_json::json!({"code": r.code, "message": r.message}))
                .collect(),
        )
        .to_string()
    });
    let tokens = column(rows, |(_, v)| {
        v.transaction.card.as_ref().map(|c| c.token.as_str())
    });
    let times = column(rows, |(_, v)| v.transaction.transaction_time);
    let amounts = column(rows, |(_, v)| v.transaction.amount_minor);
    let received = column(rows, |(_, v)| v.envelope.received_at);
    let rejected = column(rows, |(_, v)| v.rejected_at);
    let offsets = column(rows, |(r, _)| r.offset);
    let partitions = column(rows, |(r, _)| r.partition);
    let n = tx
        .execute(
            &st.rejections,
            &[
                &ids,
                &terminals,
                &merchants,
                &times,
                &kinds,
                &amounts,
                &currencies,
                &tokens,
                &codes,
                &reasons,
                &received,
                &rejected,
                &partitions,
                &offsets,
            ],
        )
        .await?;
    Ok(n)
}

/// The new transactions' rows and their line items, the two statements together.
async fn insert_rows(
    tx: &tokio_postgres::Transaction<'_>,
    st: &Statements,
    rows: &[(&Row, &TransactionValidated)],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let txs: Vec<&posflow_schema::Transaction> = rows.iter().map(|(_, v)| &v.transaction).collect();
    let ids = column(&txs, |t| t.transaction_id.as_str());
    let terminals = column(&txs, |t| t.terminal_id.as_str());
    let merchants = column(&txs, |t| t.merchant_id.as_str());
    let sequences = column(&txs, |t| t.sequence);
    let times = column(&txs, |t| t.transaction_time);
    let kinds = column(&txs, |t| t.kind.as_str());
    let originals = column(&txs, |t| t.original_transaction_id.as_deref());
    let amounts = column(&txs, |t| t.amount_minor);
    let currencies = column(&txs, |t| t.currency.as_str());
    let methods = column(&txs, |t| t.payment_method.as_str());
    let modes = column(&txs, |t| t.entry_mode.as_str());
    let tokens = column(&txs, |t| t.card.as_ref().map(|c| c.token.as_str()));
    let bins = column(&txs, |t| t.card.as_ref().map(|c| c.bin.as_str()));
    let last4s = column(&txs, |t| t.card.as_ref().map(|c| c.last4.as_str()));
    let key_ids = column(&txs, |t| t.card.as_ref().map(|c| c.token_key_id.as_str()));
    let auths = column(&txs, |t| t.auth_code.as_deref());
    let responses = column(&txs, |t| t.response_code.as_str());
    let mccs = column(&txs, |t| t.mcc.as_str());
    let lats = column(&txs, |t| t.location.map(|l| l.latitude));
    let lons = column(&txs, |t| t.location.map(|l| l.longitude));
    let received = column(rows, |(_, v)| v.envelope.received_at);
    let bridges = column(rows, |(_, v)| v.envelope.bridge_id.as_str());
    let validated = column(rows, |(_, v)| v.validated_at);
    let partitions = column(rows, |(r, _)| r.partition);
    let offsets = column(rows, |(r, _)| r.offset);
    let offline = column(&txs, |t| t.offline);
    let offline_since = column(&txs, |t| t.offline_since);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 27] = [
        &ids,
        &terminals,
        &merchants,
        &sequences,
        &times,
        &kinds,
        &originals,
        &amounts,
        &currencies,
        &methods,
        &modes,
        &tokens,
        &bins,
        &last4s,
        &auths,
        &responses,
        &mccs,
        &lats,
        &lons,
        &received,
        &bridges,
        &validated,
        &partitions,
        &offsets,
        &key_ids,
        &offline,
        &offline_since,
    ];
    let transactions = tx.execute(&st.rows, &params);
    futures::try_join!(
        async { transactions.await.map_err(DbError::from) },
        insert_line_items(tx, st, &txs)
    )?;
    Ok(())
}

/// Every line item of the batch in one INSERT, numbered from 1 per transaction.
async fn insert_line_items(
    tx: &tokio_postgres::Transaction<'_>,
    st: &Statements,
    txs: &[&posflow_schema::Transaction],
) -> Result<(), DbError> {
    let mut li_ids = Vec::new();
    let mut li_no = Vec::new();
    let mut li_sku = Vec::new();
    let mut li_desc = Vec::new();
    let mut li_price = Vec::new();
    let mut li_qty = Vec::new();
    for t in txs {
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
            &st.line_items,
            &[&li_ids, &li_no, &li_sku, &li_desc, &li_price, &li_qty],
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_run_in_order_without_gaps() {
        assert_eq!(super::STORAGE_MIGRATIONS.check_order(), Ok(()));
    }
}
