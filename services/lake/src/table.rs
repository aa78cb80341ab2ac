//! What each topic becomes as a table: its columns, and a record as a row of values.
//!
//! Tables are flat, for analysts' SQL: nested records become columns (`card.token` is
//! `card_token`), and lists (line items, rejection reasons, an alert's evidence) become one JSON
//! text column each (DuckDB: `from_json`, `json_extract`). Every row also says where it came from,
//! `kafka_partition` and `kafka_offset`: a reader can check for itself that no offset appears
//! twice. The columns are documented in docs/lake.md; a test keeps the two in step.

use parquet::data_type::ByteArray;
use posflow_schema::{FraudAlert, Transaction, TransactionRejected, TransactionValidated};

/// A column's type, as an analyst sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int64,
    Int32,
    Double,
    Boolean,
    /// Milliseconds since the Unix epoch, UTC (Parquet TIMESTAMP(MILLIS, true)).
    Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub optional: bool,
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        optional: false,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        optional: true,
    }
}

/// One cell. `Null` only in an optional column. Text is kept as the writer takes it: the
/// record's own string bytes, handed over without a copy (bench/flamegraphs/lake-before.svg:
/// copying every string into the writer was a sixth of the stage's time).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(ByteArray),
    Int64(i64),
    Int32(i32),
    Double(f64),
    Boolean(bool),
    Null,
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(ByteArray::from(v.into_bytes()))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(ByteArray::from(v))
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int64(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int32(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Double(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The topics the lake keeps, each a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Validated,
    Rejected,
    FraudAlerts,
}

/// Where a record came from; every row ends with these.
const SOURCE: [Column; 2] = [
    col("kafka_partition", Kind::Int32),
    col("kafka_offset", Kind::Int64),
];

/// A transaction's columns, shared by the validated and the rejected table.
const TRANSACTION: [Column; 26] = [
    col("transaction_id", Kind::Text),
    col("terminal_id", Kind::Text),
    col("merchant_id", Kind::Text),
    col("sequence", Kind::Int64),
    col("transaction_time", Kind::Timestamp),
    col("type", Kind::Text),
    opt("original_transaction_id", Kind::Text),
    col("amount_minor", Kind::Int64),
    col("currency", Kind::Text),
    col("payment_method", Kind::Text),
    col("entry_mode", Kind::Text),
    opt("card_token", Kind::Text),
    opt("card_bin", Kind::Text),
    opt("card_last4", Kind::Text),
    opt("card_token_key_id", Kind::Text),
    opt("auth_code", Kind::Text),
    col("response_code", Kind::Text),
    col("mcc", Kind::Text),
    opt("latitude", Kind::Double),
    opt("longitude", Kind::Double),
    // [{"sku", "description", "unit_price_minor", "quantity"}]
    col("line_items", Kind::Text),
    col("received_at", Kind::Timestamp),
    col("bridge_id", Kind::Text),
    col("payload_version", Kind::Int32),
    // Payload version 2 (docs/offline.md); false and null for earlier transactions.
    col("offline", Kind::Boolean),
    opt("offline_since", Kind::Timestamp),
];

const fn concat<const A: usize, const B: usize, const C: usize, const N: usize>(
    a: [Column; A],
    b: [Column; B],
    c: [Column; C],
) -> [Column; N] {
    assert!(A + B + C == N);
    let mut out = [col("", Kind::Text); N];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < A + B {
        out[i] = b[i - A];
        i += 1;
    }
    while i < N {
        out[i] = c[i - A - B];
        i += 1;
    }
    out
}

const VALIDATED: [Column; 29] = concat(TRANSACTION, [col("validated_at", Kind::Timestamp)], SOURCE);

const REJECTED: [Column; 31] = concat(
    TRANSACTION,
    [
        // The codes, comma-separated, for `WHERE reason_codes LIKE '%AMOUNT%'`.
        col("reason_codes", Kind::Text),
        // [{"code", "message"}]
        col("reasons", Kind::Text),
        col("rejected_at", Kind::Timestamp),
    ],
    SOURCE,
);

const FRAUD_ALERTS: [Column; 11] = concat(
    [
        col("alert_id", Kind::Text),
        col("rule_id", Kind::Text),
        col("severity", Kind::Text),
        col("score", Kind::Double),
        // ["<transaction id>", ...]
        col("evidence_transaction_ids", Kind::Text),
        opt("card_token", Kind::Text),
        col("merchant_id", Kind::Text),
        col("terminal_id", Kind::Text),
    ],
    [col("detected_at", Kind::Timestamp)],
    SOURCE,
);

/// A decoded record of one of the lake's topics.
#[derive(Debug, Clone)]
pub enum Record {
    Validated(TransactionValidated),
    Rejected(TransactionRejected),
    FraudAlert(FraudAlert),
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Validated, Table::Rejected, Table::FraudAlerts];

    pub fn columns(self) -> &'static [Column] {
        match self {
            Table::Validated => &VALIDATED,
            Table::Rejected => &REJECTED,
            Table::FraudAlerts => &FRAUD_ALERTS,
        }
    }
}

impl Record {
    pub fn table(&self) -> Table {
        match self {
            Record::Validated(_) => Table::Validated,
            Record::Rejected(_) => Table::Rejected,
            Record::FraudAlert(_) => Table::FraudAlerts,
        }
    }

    /// The event time the record's file is dated by: when the transaction happened (on the
    /// terminal's clock, as the merchant's reports count it), or when the alert was raised.
    pub fn event_time(&self) -> i64 {
        match self {
            Record::Validated(v) => v.transaction.transaction_time,
            Record::Rejected(r) => r.transaction.transaction_time,
            Record::FraudAlert(a) => a.detected_at,
        }
    }

    /// The row, in the order of [`Table::columns`]. Consumes the record: its strings become
    /// the cells without a copy.
    pub fn into_row(self, partition: i32, offset: i64) -> Vec<Value> {
        let mut row = Vec::with_capacity(self.table().columns().len());
        match self {
            Record::Validated(v) => {
                transaction(&mut row, v.envelope, v.transaction);
                row.push(Value::Int64(v.validated_at));
            }
            Record::Rejected(r) => {
                transaction(&mut row, r.envelope, r.transaction);
                let codes: Vec<&str> = r.reasons.iter().map(|x| x.code.as_str()).collect();
                row.push(codes.join(",").into());
                row.push(json(&r.reasons));
                row.push(Value::Int64(r.rejected_at));
            }
            Record::FraudAlert(a) => {
                row.extend([
                    a.alert_id.into(),
                    a.rule_id.into(),
                    format!("{:?}", a.severity).to_uppercase().into(),
                    a.score.into(),
                    json(&a.evidence_transaction_ids),
                    a.card_token.into(),
                    a.merchant_id.into(),
                    a.terminal_id.into(),
                    Value::Int64(a.detected_at),
                ]);
            }
        }
        row.push(partition.into());
        row.push(offset.into());
        row
    }
}

/// A list as one JSON text cell, with the field names of its Avro record.
fn json<T: serde::Serialize>(list: &[T]) -> Value {
    serde_json::to_string(list)
        .expect("schema types serialise to JSON")
        .into()
}

fn transaction(row: &mut Vec<Value>, e: posflow_schema::Envelope, t: Transaction) {
    let (token, bin, last4, key_id) = match t.card {
        Some(c) => (
            Some(c.token),
            Some(c.bin),
            Some(c.last4),
            Some(c.token_key_id),
        ),
        None => (None, None, None, None),
    };
    let items = json(&t.line_items);
    row.extend([
        t.transaction_id.into(),
        t.terminal_id.into(),
        t.merchant_id.into(),
        t.sequence.into(),
        t.transaction_time.into(),
        t.kind.as_str().into(),
        t.original_transaction_id.into(),
        t.amount_minor.into(),
        t.currency.into(),
        t.payment_method.as_str().into(),
        t.entry_mode.as_str().into(),
        token.into(),
        bin.into(),
        last4.into(),
        key_id.into(),
        t.auth_code.into(),
        t.response_code.into(),
        t.mcc.into(),
        t.location.map(|l| l.latitude).into(),
        t.location.map(|l| l.longitude).into(),
        items,
        e.received_at.into(),
        e.bridge_id.into(),
        e.payload_version.into(),
        t.offline.into(),
        t.offline_since.into(),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row has a value of its column's type in each column, and nulls only where allowed.
    pub(crate) fn assert_fits(table: Table, row: &[Value]) {
        let columns = table.columns();
        assert_eq!(row.len(), columns.len(), "{table:?}");
        for (c, v) in columns.iter().zip(row) {
            let fits = match (c.kind, v) {
                (_, Value::Null) => c.optional,
                (Kind::Text, Value::Text(_)) => true,
                (Kind::Int64 | Kind::Timestamp, Value::Int64(_)) => true,
                (Kind::Int32, Value::Int32(_)) => true,
                (Kind::Double, Value::Double(_)) => true,
                (Kind::Boolean, Value::Boolean(_)) => true,
                _ => false,
            };
            assert!(fits, "{table:?}.{} = {v:?}", c.name);
        }
    }

    #[test]
    fn every_sample_record_fits_its_table() {
        for record in crate::sample::records(3) {
            assert_fits(record.table(), &record.into_row(1, 7));
        }
    }

    /// docs/lake.md names every column of every table.
    #[test]
    fn docs_name_every_column() {
        let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/lake.md"));
        for t in Table::ALL {
            for c in t.columns() {
                assert!(
                    doc.contains(&format!("`{}`", c.name)),
                    "docs/lake.md does not name {t:?}.{}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn column_names_are_unique_per_table() {
        for t in Table::ALL {
            let mut names: Vec<_> = t.columns().iter().map(|c| c.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), t.columns().len(), "{t:?}");
        }
    }
}
