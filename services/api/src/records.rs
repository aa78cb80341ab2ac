//! What the terminals sent, as stored: transaction search, one transaction, rejections, and
//! totals for reconciliation. Card data is what storage keeps past the bridge: BIN and last
//! four (the token is an internal join key and never leaves).

use crate::db::Scoped;
use crate::query::{is_bin, is_currency, is_digits, is_ident, Params, Position};
use posflow_pg::DbError;
use posflow_schema::{rfc3339_millis, GivenBy, ReasonCode};
use serde::{Serialize, Serializer};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

type Param = Box<dyn ToSql + Sync + Send>;

/// A WHERE clause built from bind parameters only.
struct Where {
    conds: Vec<String>,
    params: Vec<Param>,
}

impl Where {
    /// Starts with the scope's own merchant filter (see db.rs).
    fn scoped(s: &Scoped<'_>) -> Self {
        let mut w = Where {
            conds: Vec::new(),
            params: Vec::new(),
        };
        if let Some(m) = s.merchant_filter() {
            w.and("merchant_id = ?", m.to_string());
        }
        w
    }
    /// Adds `cond`, its one `?` bound to `v`.
    fn and(&mut self, cond: &str, v: impl ToSql + Sync + Send + 'static) {
        self.params.push(Box::new(v));
        self.conds
            .push(cond.replace('?', &format!("${}", self.params.len())));
    }
    fn and_opt<T: ToSql + Sync + Send + 'static>(&mut self, cond: &str, v: Option<T>) {
        if let Some(v) = v {
            self.and(cond, v);
        }
    }
    /// Keyset pagination, newest first: strictly after the last row shown.
    fn after(&mut self, time_col: &str, id_col: &str, p: Option<Position>) {
        if let Some(p) = p {
            self.params.push(Box::new(p.time()));
            self.params.push(Box::new(p.id));
            let n = self.params.len();
            self.conds
                .push(format!("({time_col}, {id_col}) < (${}, ${n})", n - 1));
        }
    }
    fn sql(&self) -> String {
        if self.conds.is_empty() {
            "true".into()
        } else {
            self.conds.join(" AND ")
        }
    }
    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn rfc3339(t: SystemTime) -> String {
    rfc3339_millis(millis(t))
}

fn time(row: &Row, col: &str) -> String {
    rfc3339_millis(millis(row.get::<_, SystemTime>(col)))
}

/// A page of results and the cursor of the next one.
pub struct Page<T = Value> {
    pub items: Vec<T>,
    pub next: Option<Position>,
}

/// The filters shared by transactions and rejections.
struct Common {
    from: Option<SystemTime>,
    to: Option<SystemTime>,
    min_amount: Option<i64>,
    max_amount: Option<i64>,
    currency: Option<String>,
    terminal: Option<String>,
    kind: Option<String>,
    limit: i64,
    after: Option<Position>,
}

pub const TYPES: [&str; 5] = ["sale", "refund", "void", "pre_authorisation", "completion"];

fn common(p: &mut Params, after: Option<Position>) -> Common {
    let (from, to) = p.range();
    Common {
        from,
        to,
        min_amount: p.int("min_amount", 0..=i64::MAX),
        max_amount: p.int("max_amount", 0..=i64::MAX),
        currency: p.text("currency", is_currency, "an ISO 4217 code such as EUR"),
        terminal: p.text("terminal", is_ident, "a terminal id"),
        kind: p.text(
            "type",
            |s| TYPES.contains(&s),
            "one of sale, refund, void, pre_authorisation, completion",
        ),
        limit: p.limit(),
        after,
    }
}

impl Common {
    fn apply(self, w: &mut Where, time_col: &str) -> i64 {
        w.and_opt(&format!("{time_col} >= ?"), self.from);
        w.and_opt(&format!("{time_col} < ?"), self.to);
        w.and_opt("amount_minor >= ?", self.min_amount);
        w.and_opt("amount_minor <= ?", self.max_amount);
        w.and_opt("currency = ?", self.currency);
        w.and_opt("terminal_id = ?", self.terminal);
        w.and_opt("type = ?", self.kind);
        w.after(time_col, "transaction_id", self.after);
        self.limit
    }
}

/// The parameters every search takes, around a route's own.
macro_rules! search_params {
    ($($own:literal),*) => {
        &["from", "to", "min_amount", "max_amount", "currency", "terminal", "type", $($own,)* "limit", "cursor"]
    };
}

pub const TRANSACTION_PARAMS: &[&str] = search_params!("last4", "bin", "response_code", "outcome");

/// The response code of an approval (ISO 8583); any other is a decline.
pub const APPROVED: &str = "00";

/// The transaction filters, parsed (the caller finishes `p` to learn whether they are valid).
pub struct TransactionFilter {
    common: Common,
    last4: Option<String>,
    bin: Option<String>,
    response_code: Option<String>,
    /// `approved` (response code [`APPROVED`]) or `declined` (any other).
    outcome: Option<String>,
}

impl TransactionFilter {
    pub fn parse(p: &mut Params, after: Option<Position>) -> Self {
        TransactionFilter {
            common: common(p, after),
            last4: p.text("last4", is_digits::<4>, "four digits"),
            bin: p.text("bin", is_bin, "6 to 8 digits"),
            response_code: p.text("response_code", is_ident, "a response code such as 00"),
            outcome: p.text(
                "outcome",
                |s| matches!(s, "approved" | "declined"),
                "approved or declined",
            ),
        }
    }
}

const TRANSACTION_COLUMNS: &str = "transaction_id, terminal_id, merchant_id, sequence, transaction_time, type, \
    original_transaction_id, amount_minor, currency, payment_method, entry_mode, card_bin, card_last4, \
    auth_code, response_code, mcc, received_at, validated_at, stored_at, offline, offline_since";

/// A stored transaction as the API shows it, read straight from its row and serialised
/// without an intermediate JSON tree: searches answer with 50–500 of these, and building a
/// `serde_json::Value` per row (a map and a string per field) was a quarter of the API's CPU
/// (BENCHMARKS.md, issue 17).
#[derive(Serialize)]
pub struct TransactionView<'r> {
    transaction_id: &'r str,
    merchant_id: &'r str,
    terminal_id: &'r str,
    sequence: i64,
    transaction_time: Rfc3339,
    #[serde(rename = "type")]
    kind: &'r str,
    original_transaction_id: Option<&'r str>,
    amount_minor: i64,
    currency: &'r str,
    payment_method: &'r str,
    entry_mode: &'r str,
    card: Card<'r>,
    auth_code: Option<&'r str>,
    response_code: &'r str,
    mcc: &'r str,
    received_at: Rfc3339,
    validated_at: Rfc3339,
    stored_at: Rfc3339,
    /// Captured without a link to posflow and sent later (payload version 2).
    offline: bool,
    offline_since: Option<Rfc3339>,
}

#[derive(Serialize)]
struct Card<'r> {
    bin: Option<&'r str>,
    last4: Option<&'r str>,
}

impl<'r> TransactionView<'r> {
    /// Every column of a row of [`TRANSACTION_COLUMNS`], in its order.
    pub fn of(r: &'r Row) -> Self {
        TransactionView {
            transaction_id: r.get(0),
            terminal_id: r.get(1),
            merchant_id: r.get(2),
            sequence: r.get(3),
            transaction_time: Rfc3339(r.get(4)),
            kind: r.get(5),
            original_transaction_id: r.get(6),
            amount_minor: r.get(7),
            currency: r.get(8),
            payment_method: r.get(9),
            entry_mode: r.get(10),
            card: Card {
                bin: r.get(11),
                last4: r.get(12),
            },
            auth_code: r.get(13),
            response_code: r.get(14),
            mcc: r.get(15),
            received_at: Rfc3339(r.get(16)),
            validated_at: Rfc3339(r.get(17)),
            stored_at: Rfc3339(r.get(18)),
            offline: r.get(19),
            offline_since: r.get::<_, Option<SystemTime>>(20).map(Rfc3339),
        }
    }
}

/// A row of [`TRANSACTION_COLUMNS`]; serialises as its [`TransactionView`].
pub struct Transaction(Row);

impl Transaction {
    pub fn view(&self) -> TransactionView<'_> {
        TransactionView::of(&self.0)
    }
    /// The row, for writers of other formats (the portal's CSV: reports::csv_line).
    pub fn row(&self) -> &Row {
        &self.0
    }
}

impl Serialize for Transaction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.view().serialize(s)
    }
}

/// A stored time, written as RFC 3339 with milliseconds straight into the output.
struct Rfc3339(SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0.max(UNIX_EPOCH)))
    }
}

/// One page of `table`, newest first by its `(time, id)` columns: the first `limit` rows
/// matching `w` (one more is read to know whether a next page exists) and the position after
/// the last.
async fn newest_first<T>(
    s: &Scoped<'_>,
    (columns, table): (&str, &str),
    w: &Where,
    limit: i64,
    (time_col, id_col): (&str, &str),
    item: fn(Row) -> T,
) -> Result<Page<T>, DbError> {
    let sql = format!(
        "SELECT {columns} FROM {table} WHERE {} ORDER BY {time_col} DESC, {id_col} DESC LIMIT {}",
        w.sql(),
        limit + 1
    );
    let mut rows = s.tx.query(&sql, &w.refs()).await?;
    let full = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = match rows.last() {
        Some(last) if full => Some(Position {
            t: millis(last.get::<_, SystemTime>(time_col)),
            id: last.get(id_col),
        }),
        _ => None,
    };
    Ok(Page {
        items: rows.into_iter().map(item).collect(),
        next,
    })
}

/// Newest first. One row more than the page is read to know whether there is a next page.
pub async fn search_transactions(
    s: &Scoped<'_>,
    f: TransactionFilter,
) -> Result<Page<Transaction>, DbError> {
    let mut w = Where::scoped(s);
    w.and_opt("card_last4 = ?", f.last4);
    w.and_opt("card_bin = ?", f.bin);
    w.and_opt("response_code = ?", f.response_code);
    match f.outcome.as_deref() {
        Some("approved") => w.and("response_code = ?", APPROVED),
        Some(_) => w.and("response_code <> ?", APPROVED),
        None => {}
    }
    let limit = f.common.apply(&mut w, "transaction_time");
    newest_first(
        s,
        (TRANSACTION_COLUMNS, "transactions"),
        &w,
        limit,
        ("transaction_time", "transaction_id"),
        Transaction,
    )
    .await
}

/// One transaction with its line items, or `None` (also when it is another merchant's).
pub async fn transaction(s: &Scoped<'_>, id: &str) -> Result<Option<Value>, DbError> {
    let mut w = Where::scoped(s);
    w.and("transaction_id = ?", id.to_string());
    let sql = format!(
        "SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE {}",
        w.sql()
    );
    let Some(row) = s.tx.query_opt(&sql, &w.refs()).await? else {
        return Ok(None);
    };
    let mut t = serde_json::to_value(TransactionView::of(&row)).expect("a view serialises");
    let items =
        s.tx.query(
            "SELECT li.line_no, li.sku, li.description, li.unit_price_minor, li.quantity \
             FROM transaction_line_items li JOIN transactions t USING (transaction_id) \
             WHERE li.transaction_id = $1 AND t.merchant_id = $2 ORDER BY li.line_no",
            &[&id, &row.get::<_, String>("merchant_id")],
        )
        .await?;
    t["line_items"] = items
        .iter()
        .map(|r| {
            json!({
                "line_no": r.get::<_, i32>(0),
                "sku": r.get::<_, String>(1),
                "description": r.get::<_, String>(2),
                "unit_price_minor": r.get::<_, i64>(3),
                "quantity": r.get::<_, i32>(4),
            })
        })
        .collect();
    Ok(Some(t))
}

pub const REJECTION_PARAMS: &[&str] = search_params!("reason_code");

pub struct RejectionFilter {
    common: Common,
    reason_code: Option<String>,
}

impl RejectionFilter {
    pub fn parse(p: &mut Params, after: Option<Position>) -> Self {
        RejectionFilter {
            common: common(p, after),
            reason_code: p.text(
                "reason_code",
                |s| {
                    s.parse::<ReasonCode>()
                        .is_ok_and(|c| c.given_by() == GivenBy::Validator)
                },
                "a validator reason code such as AMOUNT_OVER_LIMIT (docs/reason-codes.md)",
            ),
        }
    }
}

const REJECTION_COLUMNS: &str =
    "transaction_id, merchant_id, terminal_id, transaction_time, type, amount_minor, \
    currency, reason_codes, reasons::text AS reasons, received_at, rejected_at";

fn rejection_json(r: &Row) -> Value {
    json!({
        "transaction_id": r.get::<_, String>("transaction_id"),
        "merchant_id": r.get::<_, String>("merchant_id"),
        "terminal_id": r.get::<_, String>("terminal_id"),
        "transaction_time": time(r, "transaction_time"),
        "type": r.get::<_, String>("type"),
        "amount_minor": r.get::<_, i64>("amount_minor"),
        "currency": r.get::<_, String>("currency"),
        "reason_codes": r.get::<_, Vec<String>>("reason_codes"),
        "reasons": serde_json::from_str::<Value>(r.get::<_, &str>("reasons")).unwrap_or(Value::Null),
        "received_at": time(r, "received_at"),
        "rejected_at": time(r, "rejected_at"),
    })
}

/// Rejected transactions, newest first (by transaction time), with their reason codes.
pub async fn search_rejections(s: &Scoped<'_>, f: RejectionFilter) -> Result<Page, DbError> {
    let mut w = Where::scoped(s);
    w.and_opt("? = ANY (reason_codes)", f.reason_code);
    let limit = f.common.apply(&mut w, "transaction_time");
    newest_first(
        s,
        (REJECTION_COLUMNS, "rejections"),
        &w,
        limit,
        ("transaction_time", "transaction_id"),
        |r| rejection_json(&r),
    )
    .await
}

pub const TOTALS_PARAMS: &[&str] = &["from", "to"];

/// Count and sum per currency and type over [from, to): what a merchant reconciles against
/// the acquirer's settlement. Amounts are as sent (a refund's amount is positive).
pub async fn totals(
    s: &Scoped<'_>,
    from: SystemTime,
    to: SystemTime,
) -> Result<Vec<Value>, DbError> {
    let mut w = Where::scoped(s);
    w.and("transaction_time >= ?", from);
    w.and("transaction_time < ?", to);
    let sql = format!(
        "SELECT currency, type, count(*), sum(amount_minor)::bigint FROM transactions WHERE {} \
         GROUP BY currency, type ORDER BY currency, type",
        w.sql()
    );
    Ok(s.tx
        .query(&sql, &w.refs())
        .await?
        .iter()
        .map(|r| {
            json!({
                "currency": r.get::<_, String>(0),
                "type": r.get::<_, String>(1),
                "count": r.get::<_, i64>(2),
                "amount_minor": r.get::<_, i64>(3),
            })
        })
        .collect())
}

pub const ALERT_PARAMS: &[&str] = &["from", "to", "limit", "cursor"];

/// The fraud alert filters (the caller finishes `p`).
pub struct AlertFilter {
    from: Option<SystemTime>,
    to: Option<SystemTime>,
    limit: i64,
    after: Option<Position>,
}

impl AlertFilter {
    pub fn parse(p: &mut Params, after: Option<Position>) -> Self {
        let (from, to) = p.range();
        AlertFilter {
            from,
            to,
            limit: p.limit(),
            after,
        }
    }
}

const ALERT_COLUMNS: &str =
    "alert_id, merchant_id, terminal_id, rule_id, severity, score, evidence_transaction_ids, detected_at";

fn alert_json(r: &Row) -> Value {
    json!({
        "alert_id": r.get::<_, String>("alert_id"),
        "merchant_id": r.get::<_, String>("merchant_id"),
        "terminal_id": r.get::<_, String>("terminal_id"),
        "rule_id": r.get::<_, String>("rule_id"),
        "severity": r.get::<_, String>("severity"),
        "score": r.get::<_, f64>("score"),
        "evidence_transaction_ids": r.get::<_, Vec<String>>("evidence_transaction_ids"),
        "detected_at": time(r, "detected_at"),
    })
}

/// The merchant's fraud alerts, newest first.
pub async fn fraud_alerts(s: &Scoped<'_>, f: AlertFilter) -> Result<Page, DbError> {
    let mut w = Where::scoped(s);
    w.and_opt("detected_at >= ?", f.from);
    w.and_opt("detected_at < ?", f.to);
    w.after("detected_at", "alert_id", f.after);
    newest_first(
        s,
        (ALERT_COLUMNS, "fraud_alerts"),
        &w,
        f.limit,
        ("detected_at", "alert_id"),
        |r| alert_json(&r),
    )
    .await
}

/// The alerts that name a transaction as evidence.
pub async fn alerts_of(s: &Scoped<'_>, transaction_id: &str) -> Result<Vec<Value>, DbError> {
    let mut w = Where::scoped(s);
    w.and(
        "? = ANY (evidence_transaction_ids)",
        transaction_id.to_string(),
    );
    let sql = format!(
        "SELECT {ALERT_COLUMNS} FROM fraud_alerts WHERE {} ORDER BY detected_at",
        w.sql()
    );
    Ok(s.tx
        .query(&sql, &w.refs())
        .await?
        .iter()
        .map(alert_json)
        .collect())
}
