//! Reports: a merchant's transactions over a period as one CSV or JSON file, made
//! asynchronously. `POST …/reports` (with an `Idempotency-Key`) queues one; a runner on any
//! replica claims it (`posflow_claim_report`), reads the rows through a server-side cursor a few
//! thousand at a time and writes the file in 1 MiB chunks — memory stays flat however large the
//! period — totalling per currency and type as it goes; then marks it ready and queues a signed
//! `report.ready` webhook in the notifier's outbox, in the same transaction. The merchant
//! downloads it (streamed chunk by chunk) and acknowledges it.

use crate::db::{AppFilter, Scope, Scoped};
use crate::problem::Problem;
use crate::records::{millis, rfc3339};
use posflow_pg::DbError;
use posflow_runtime::Shutdown;
use posflow_schema::rfc3339_millis;
use rand::RngCore;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};
use tokio_postgres::{Client, Row};

/// Rows per fetch from the cursor.
const FETCH: i32 = 2_000;
/// Bytes per stored chunk (and per piece of a download).
pub const CHUNK: usize = 1 << 20;

const COLUMNS: &str = "id, merchant_id, idempotency_key, requested_by, period_from, period_to, format, status, \
    row_count, byte_count, sha256, totals, error, created_at, ready_at, acknowledged_at, acknowledged_by";

fn report_json(r: &Row) -> Value {
    let t = |c: &str| r.get::<_, Option<SystemTime>>(c).map(rfc3339);
    let id: String = r.get("id");
    let merchant: String = r.get("merchant_id");
    json!({
        "id": id,
        "merchant_id": merchant,
        "period_from": t("period_from"),
        "period_to": t("period_to"),
        "format": r.get::<_, String>("format"),
        "status": r.get::<_, String>("status"),
        "rows": r.get::<_, Option<i64>>("row_count"),
        "bytes": r.get::<_, Option<i64>>("byte_count"),
        "sha256": r.get::<_, Option<String>>("sha256"),
        "totals": r.get::<_, Option<String>>("totals").and_then(|t| serde_json::from_str::<Value>(&t).ok()),
        "error": r.get::<_, Option<String>>("error"),
        "requested_by": r.get::<_, String>("requested_by"),
        "created_at": t("created_at"),
        "ready_at": t("ready_at"),
        "acknowledged_at": t("acknowledged_at"),
        "acknowledged_by": r.get::<_, Option<String>>("acknowledged_by"),
        "download": format!("/v1/merchants/{merchant}/reports/{id}/download"),
    })
}

/// What a report request asks for.
pub struct Request {
    pub from: SystemTime,
    pub to: SystemTime,
    pub format: String,
}

/// Queues a report, or returns the one this Idempotency-Key already made (`409` if that one
/// asked for something else). Returns (report, whether it is new).
pub async fn request(
    s: &Scoped<'_>,
    key_id: &str,
    idempotency_key: &str,
    r: &Request,
) -> Result<(Value, bool), Problem> {
    let db = |e: tokio_postgres::Error| {
        tracing::warn!(error = %e, "report request failed");
        Problem::Unavailable
    };
    let mut id = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut id);
    let id = format!("rpt_{}", crate::audit::hex(&id));
    let inserted = s
        .tx
        .query_opt(
            &format!(
                "INSERT INTO api_reports (id, merchant_id, idempotency_key, requested_by, period_from, period_to, format)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (merchant_id, idempotency_key) DO NOTHING RETURNING {COLUMNS}"
            ),
            &[&id, &s.merchant, &idempotency_key, &key_id, &r.from, &r.to, &r.format],
        )
        .await
        .map_err(db)?;
    if let Some(row) = inserted {
        return Ok((report_json(&row), true));
    }
    let row =
        s.tx.query_one(
            &format!(
                "SELECT {COLUMNS} FROM api_reports WHERE merchant_id = $1 AND idempotency_key = $2"
            ),
            &[&s.merchant, &idempotency_key],
        )
        .await
        .map_err(db)?;
    let same = row.get::<_, SystemTime>("period_from") == r.from
        && row.get::<_, SystemTime>("period_to") == r.to
        && row.get::<_, String>("format") == r.format;
    if !same {
        return Err(Problem::Conflict(
            "this Idempotency-Key was used for a report with other parameters".into(),
        ));
    }
    Ok((report_json(&row), false))
}

pub async fn get(s: &Scoped<'_>, id: &str) -> Result<Option<Value>, DbError> {
    Ok(s.tx
        .query_opt(
            &format!("SELECT {COLUMNS} FROM api_reports WHERE ($1::text IS NULL OR merchant_id = $1) AND id = $2"),
            &[&s.merchant_filter(), &id],
        )
        .await?
        .as_ref()
        .map(report_json))
}

/// The merchant's reports, newest first (at most 100).
pub async fn list(s: &Scoped<'_>) -> Result<Vec<Value>, DbError> {
    Ok(s.tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM api_reports WHERE ($1::text IS NULL OR merchant_id = $1) ORDER BY created_at DESC LIMIT 100"
            ),
            &[&s.merchant_filter()],
        )
        .await?
        .iter()
        .map(report_json)
        .collect())
}

/// Records the merchant's confirmation of receipt (the first one counts). `None`: no such
/// report; `Err(Conflict)`: not ready yet.
pub async fn acknowledge(
    s: &Scoped<'_>,
    id: &str,
    by: &str,
) -> Result<Option<(Value, Value)>, Problem> {
    let db = |_| Problem::Unavailable;
    let Some(before) = get(s, id).await.map_err(db)? else {
        return Ok(None);
    };
    if before["status"] != "ready" {
        return Err(Problem::Conflict(format!(
            "the report is {}, not ready",
            before["status"]
        )));
    }
    let row = s
        .tx
        .query_one(
            &format!(
                "UPDATE api_reports SET acknowledged_at = coalesce(acknowledged_at, now()), acknowledged_by = coalesce(acknowledged_by, $3)
                  WHERE merchant_id = $1 AND id = $2 RETURNING {COLUMNS}"
            ),
            &[&s.merchant, &id, &by],
        )
        .await
        .map_err(|_| Problem::Unavailable)?;
    Ok(Some((before, report_json(&row))))
}

/// How to send a ready report: its chunks, in order.
#[derive(Debug, Clone)]
pub struct Download {
    pub report_id: String,
    pub merchant_id: String,
    pub chunks: i32,
    pub content_type: &'static str,
    pub filename: String,
}

/// A ready report's download, or `None` (no such report); `Err(Conflict)` if not ready.
pub async fn download(s: &Scoped<'_>, id: &str) -> Result<Option<(Download, i64)>, Problem> {
    let report = get(s, id).await.map_err(|_| Problem::Unavailable)?;
    let Some(report) = report else {
        return Ok(None);
    };
    if report["status"] != "ready" {
        return Err(Problem::Conflict(format!(
            "the report is {}, not ready",
            report["status"]
        )));
    }
    let chunks: i64 =
        s.tx.query_one(
            "SELECT count(*) FROM api_report_chunks WHERE report_id = $1",
            &[&id],
        )
        .await
        .map_err(|_| Problem::Unavailable)?
        .get(0);
    let csv = report["format"] == "csv";
    Ok(Some((
        Download {
            report_id: id.to_string(),
            merchant_id: s.merchant.clone(),
            chunks: chunks as i32,
            content_type: if csv { "text/csv" } else { "application/json" },
            filename: format!("{id}.{}", if csv { "csv" } else { "json" }),
        },
        report["rows"].as_i64().unwrap_or(0),
    )))
}

/// One chunk of a download, read in its own scoped transaction.
pub async fn chunk(client: &mut Client, d: &Download, n: i32) -> Result<Vec<u8>, DbError> {
    let s = Scoped::begin(client, &Scope::for_job(&d.merchant_id), AppFilter::Enforced).await?;
    let data: Vec<u8> =
        s.tx.query_one(
            "SELECT data FROM api_report_chunks WHERE report_id = $1 AND n = $2",
            &[&d.report_id, &n],
        )
        .await?
        .get(0);
    s.commit().await?;
    Ok(data)
}

/// A CSV report's columns, in order: its header line and every row. Each is the
/// `transactions` column of that name, the time formatted as RFC 3339.
const CSV_COLUMNS: [&str; 13] = [
    "transaction_id",
    "terminal_id",
    "transaction_time",
    "type",
    "amount_minor",
    "currency",
    "payment_method",
    "entry_mode",
    "card_bin",
    "card_last4",
    "auth_code",
    "response_code",
    "mcc",
];

/// The CSV header line of a report (and of the portal's download).
pub fn csv_header() -> String {
    CSV_COLUMNS.join(",") + "\n"
}

/// One transaction as a CSV line of [`CSV_COLUMNS`] (`r` has at least those columns): the
/// digests' cell rules — text a terminal chose is neutralised against formula injection (a
/// finance team opens this in a spreadsheet); the amount is a number.
pub fn csv_line(r: &Row) -> String {
    use posflow_notifier::render::{csv_record, Cell};
    let values = CSV_COLUMNS.map(|c| match c {
        "transaction_time" => rfc3339_millis(millis(r.get::<_, SystemTime>(c))),
        "amount_minor" => r.get::<_, i64>(c).to_string(),
        c => r.get::<_, Option<String>>(c).unwrap_or_default(),
    });
    let cells: Vec<Cell> = CSV_COLUMNS
        .iter()
        .zip(&values)
        .map(|(c, v)| match *c {
            "transaction_time" | "amount_minor" => Cell::Plain(v),
            _ => Cell::Text(v),
        })
        .collect();
    csv_record(&cells, "\n")
}

/// Writes one row into `out` in the report's format; adds it to `totals`.
fn write_row(
    out: &mut String,
    r: &Row,
    csv: bool,
    first: bool,
    totals: &mut BTreeMap<(String, String), (i64, i64)>,
) {
    let amount: i64 = r.get("amount_minor");
    let (currency, kind): (String, String) = (r.get("currency"), r.get("type"));
    let t = totals.entry((currency, kind)).or_default();
    t.0 += 1;
    t.1 += amount;
    let text = |c: &str| r.get::<_, Option<String>>(c).unwrap_or_default();
    let time = rfc3339_millis(millis(r.get::<_, SystemTime>("transaction_time")));
    if csv {
        out.push_str(&csv_line(r));
    } else {
        if !first {
            out.push_str(",\n");
        }
        let o = json!({
            "transaction_id": text("transaction_id"), "terminal_id": text("terminal_id"), "transaction_time": time,
            "type": text("type"), "amount_minor": amount, "currency": text("currency"),
            "payment_method": text("payment_method"), "entry_mode": text("entry_mode"),
            "card": {"bin": r.get::<_, Option<String>>("card_bin"), "last4": r.get::<_, Option<String>>("card_last4")},
            "auth_code": r.get::<_, Option<String>>("auth_code"), "response_code": text("response_code"), "mcc": text("mcc"),
        });
        out.push_str(&o.to_string());
    }
}

/// A report file being made: the chunk filling up, what was written, its hash and totals.
struct File {
    csv: bool,
    buf: String,
    /// Chunks written.
    n: i32,
    rows: i64,
    bytes: i64,
    sha: Sha256,
    totals: BTreeMap<(String, String), (i64, i64)>,
}

impl File {
    fn new(csv: bool) -> Self {
        let mut buf = String::with_capacity(CHUNK + 64 * 1024);
        if csv {
            buf.push_str(&csv_header());
        } else {
            buf.push_str("[\n");
        }
        File {
            csv,
            buf,
            n: 0,
            rows: 0,
            bytes: 0,
            sha: Sha256::new(),
            totals: BTreeMap::new(),
        }
    }

    fn push(&mut self, r: &Row) {
        write_row(&mut self.buf, r, self.csv, self.rows == 0, &mut self.totals);
        self.rows += 1;
    }

    /// The filled chunk (its number and bytes), hashed and counted.
    fn chunk(&mut self) -> (i32, Vec<u8>) {
        let data = std::mem::take(&mut self.buf).into_bytes();
        self.sha.update(&data);
        self.bytes += data.len() as i64;
        self.n += 1;
        (self.n - 1, data)
    }
}

/// The signed `report.ready` webhook, through the notifier's outbox in the report's own
/// transaction (idempotency key from the report id: at most one event per report).
async fn announce(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
    ready: &Row,
) -> Result<(), DbError> {
    let report = report_json(ready);
    let key = crate::audit::hex(&Sha256::digest(format!("report.ready\0{id}").as_bytes())[..16]);
    let mut body = Map::new();
    body.insert("event_type".into(), json!("report.ready"));
    body.insert("idempotency_key".into(), json!(key));
    body.insert("report".into(), report);
    tx.execute(
        "SELECT posflow_enqueue_report_ready($1, $2, $3)",
        &[
            &id,
            &key,
            &serde_json::to_vec(&Value::Object(body)).unwrap_or_default(),
        ],
    )
    .await?;
    Ok(())
}

/// Makes one claimed report, all in one transaction: the file's chunks, its totals, its
/// status, and the report.ready webhook. The transaction holds the report's row locked, so
/// however long it takes, no other runner's claim (`FOR UPDATE SKIP LOCKED`) can take it over
/// while this one lives; the lease only frees a dead runner's report.
async fn generate(
    client: &mut Client,
    id: &str,
    merchant: &str,
    owner: &str,
) -> Result<(), DbError> {
    let s = Scoped::begin(client, &Scope::for_job(merchant), AppFilter::Enforced).await?;
    let Some(row) =
        s.tx.query_opt(
            "SELECT period_from, period_to, format FROM api_reports
              WHERE id = $1 AND status = 'running' AND lease_owner = $2 FOR UPDATE",
            &[&id, &owner],
        )
        .await?
    else {
        // Taken over between our claim and now (we were slower than the lease): theirs now.
        tracing::warn!(report = %id, "lost the report's lease before starting it");
        return Ok(());
    };
    let (from, to, format): (SystemTime, SystemTime, String) = (row.get(0), row.get(1), row.get(2));
    let csv = format == "csv";
    s.tx.execute("DELETE FROM api_report_chunks WHERE report_id = $1", &[&id])
        .await?;
    s.tx.execute(
        "DECLARE report_rows NO SCROLL CURSOR FOR
           SELECT transaction_id, terminal_id, transaction_time, type, amount_minor, currency, payment_method, entry_mode,
                  card_bin, card_last4, auth_code, response_code, mcc
             FROM transactions WHERE merchant_id = $1 AND transaction_time >= $2 AND transaction_time < $3
            ORDER BY transaction_time, transaction_id",
        &[&merchant, &from, &to],
    )
    .await?;
    let insert =
        s.tx.prepare("INSERT INTO api_report_chunks (report_id, n, data) VALUES ($1, $2, $3)")
            .await?;
    let mut file = File::new(csv);
    loop {
        let batch =
            s.tx.query(&format!("FETCH {FETCH} FROM report_rows"), &[])
                .await?;
        if batch.is_empty() {
            break;
        }
        for r in &batch {
            file.push(r);
            if file.buf.len() >= CHUNK {
                let (k, data) = file.chunk();
                s.tx.execute(&insert, &[&id, &k, &data]).await?;
            }
        }
    }
    if !csv {
        file.buf.push_str("\n]\n");
    }
    if !file.buf.is_empty() {
        let (k, data) = file.chunk();
        s.tx.execute(&insert, &[&id, &k, &data]).await?;
    }
    let totals: Vec<Value> = file
        .totals
        .into_iter()
        .map(|((currency, kind), (count, amount))| json!({"currency": currency, "type": kind, "count": count, "amount_minor": amount}))
        .collect();
    let digest = crate::audit::hex(&file.sha.finalize());
    let ready = s
        .tx
        .query_one(
            &format!(
                "UPDATE api_reports SET status = 'ready', row_count = $2, byte_count = $3, sha256 = $4, totals = $5,
                        ready_at = now(), lease_owner = NULL, lease_until = NULL, error = NULL
                  WHERE id = $1 RETURNING {COLUMNS}"
            ),
            &[&id, &file.rows, &file.bytes, &digest, &Value::Array(totals).to_string()],
        )
        .await?;
    announce(&s.tx, id, &ready).await?;
    s.commit().await
}

/// The runner: claims queued reports (any replica's) and makes them, one at a time, until
/// shutdown. A failure is recorded on the report; a crash leaves the lease to run out.
/// `lease`: how long a claim holds before another runner may take the report over (a crashed
/// runner's).
pub async fn run(
    url: String,
    owner: String,
    lease: Duration,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut client: Option<Client> = None;
    while !shutdown.is_triggered() {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = posflow_pg::connect(&url).await.ok();
        }
        let mut worked = false;
        if let Some(c) = client.as_mut() {
            match c
                .query_opt(
                    "SELECT id, merchant_id FROM posflow_claim_report($1, $2)",
                    &[&owner, &lease.as_secs_f64()],
                )
                .await
            {
                Ok(Some(r)) => {
                    worked = true;
                    let (id, merchant): (String, String) = (r.get(0), r.get(1));
                    let started = std::time::Instant::now();
                    match generate(c, &id, &merchant, &owner).await {
                        Ok(()) => {
                            tracing::info!(report = %id, merchant = %merchant, secs = started.elapsed().as_secs_f64(), "report ready")
                        }
                        Err(e) => {
                            tracing::warn!(report = %id, error = %e.summary(), "report failed");
                            if let Ok(s) =
                                Scoped::begin(c, &Scope::for_job(&merchant), AppFilter::Enforced)
                                    .await
                            {
                                let _ = s
                                    .tx
                                    .execute(
                                        "UPDATE api_reports SET status = 'failed', error = $2, lease_owner = NULL
                                          WHERE id = $1 AND lease_owner = $3",
                                        &[&id, &e.summary(), &owner],
                                    )
                                    .await;
                                let _ = s.commit().await;
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "claiming a report failed");
                    client = None;
                }
            }
        }
        if !worked {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.wait() => {}
            }
        }
    }
    Ok(())
}
