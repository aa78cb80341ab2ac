//! Notification events as merchants see them: each delivery (an event on a channel), every
//! attempt of it, and redelivery — one event, or every failed one in a time range — on the same
//! outbox row under the same idempotency key, so a receiver that did get it de-duplicates.
//! The API's role reads the notifier's tables under row-level security and changes them only
//! through `posflow_redeliver` (migration 2).

use crate::db::Scoped;
use crate::problem::Problem;
use crate::query::{Params, Position};
use crate::records::{millis, Page};
use posflow_pg::DbError;
use posflow_schema::rfc3339_millis;
use serde_json::{json, Value};
use std::time::SystemTime;
use tokio_postgres::Row;

pub const EVENT_PARAMS: &[&str] = &[
    "from",
    "to",
    "status",
    "event_type",
    "channel",
    "limit",
    "cursor",
];

/// The event filters, parsed (the caller finishes `p`).
pub struct EventFilter {
    from: Option<SystemTime>,
    to: Option<SystemTime>,
    status: Option<String>,
    event_type: Option<String>,
    channel: Option<String>,
    limit: i64,
    after: Option<Position>,
}

impl EventFilter {
    pub fn parse(p: &mut Params, after: Option<Position>) -> Self {
        let (from, to) = p.range();
        EventFilter {
            from,
            to,
            status: p.text(
                "status",
                |s| matches!(s, "pending" | "delivered" | "failed"),
                "pending, delivered or failed",
            ),
            event_type: p.text(
                "event_type",
                |s| matches!(s, "transaction" | "refund" | "fraud_alert" | "digest"),
                "transaction, refund, fraud_alert or digest",
            ),
            channel: p.text(
                "channel",
                |s| matches!(s, "webhook" | "email"),
                "webhook or email",
            ),
            limit: p.limit(),
            after,
        }
    }
}

const COLUMNS: &str =
    "id, event_id, event_type, channel, status, attempts, last_error, idempotency_key, \
    created_at, finished_at, redelivered_at, merchant_id";

fn event_json(r: &Row) -> Value {
    let t = |c: &str| {
        r.get::<_, Option<SystemTime>>(c)
            .map(|t| rfc3339_millis(millis(t)))
    };
    json!({
        "id": r.get::<_, i64>("id"),
        "merchant_id": r.get::<_, String>("merchant_id"),
        "event_id": r.get::<_, Option<String>>("event_id"),
        "event_type": r.get::<_, String>("event_type"),
        "channel": r.get::<_, String>("channel"),
        "status": r.get::<_, String>("status"),
        "attempts": r.get::<_, i32>("attempts"),
        "last_error": r.get::<_, Option<String>>("last_error"),
        "idempotency_key": r.get::<_, String>("idempotency_key"),
        "created_at": t("created_at"),
        "finished_at": t("finished_at"),
        "redelivered_at": t("redelivered_at"),
    })
}

/// The merchant's deliveries, newest first.
pub async fn search(s: &Scoped<'_>, f: EventFilter) -> Result<Page, DbError> {
    let merchant = s.merchant_filter();
    let after_t = f.after.as_ref().map(Position::time);
    let after_id: Option<i64> = f.after.as_ref().and_then(|p| p.id.parse().ok());
    let rows = s
        .tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM notification_outbox
                  WHERE ($1::text IS NULL OR merchant_id = $1)
                    AND ($2::timestamptz IS NULL OR created_at >= $2) AND ($3::timestamptz IS NULL OR created_at < $3)
                    AND ($4::text IS NULL OR status = $4) AND ($5::text IS NULL OR event_type = $5)
                    AND ($6::text IS NULL OR channel = $6)
                    AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8))
                  ORDER BY created_at DESC, id DESC LIMIT $9"
            ),
            &[&merchant, &f.from, &f.to, &f.status, &f.event_type, &f.channel, &after_t, &after_id, &(f.limit + 1)],
        )
        .await?;
    let full = rows.len() as i64 > f.limit;
    let shown = &rows[..rows.len().min(f.limit as usize)];
    let next = (full && !shown.is_empty()).then(|| {
        let last = &shown[shown.len() - 1];
        Position {
            t: millis(last.get::<_, SystemTime>("created_at")),
            id: last.get::<_, i64>("id").to_string(),
        }
    });
    Ok(Page {
        items: shown.iter().map(event_json).collect(),
        next,
    })
}

/// The deliveries of one event (a transaction's, an alert's), oldest first.
pub async fn of_event(s: &Scoped<'_>, event_id: &str) -> Result<Vec<Value>, DbError> {
    let rows = s
        .tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM notification_outbox WHERE ($1::text IS NULL OR merchant_id = $1) AND event_id = $2 ORDER BY id"
            ),
            &[&s.merchant_filter(), &event_id],
        )
        .await?;
    Ok(rows.iter().map(event_json).collect())
}

/// One delivery with every attempt, or `None` (also when it is another merchant's).
pub async fn attempts(s: &Scoped<'_>, id: i64) -> Result<Option<Value>, DbError> {
    let Some(row) = s
        .tx
        .query_opt(
            &format!("SELECT {COLUMNS} FROM notification_outbox WHERE ($1::text IS NULL OR merchant_id = $1) AND id = $2"),
            &[&s.merchant_filter(), &id],
        )
        .await?
    else {
        return Ok(None);
    };
    let attempts = s
        .tx
        .query(
            "SELECT attempt, at, outcome, status_code, duration_ms, error FROM notification_attempts
              WHERE ($1::text IS NULL OR merchant_id = $1) AND outbox_id = $2 ORDER BY id",
            &[&s.merchant_filter(), &id],
        )
        .await?;
    let mut event = event_json(&row);
    event["attempt_history"] = attempts
        .iter()
        .map(|a| {
            json!({
                "attempt": a.get::<_, i32>(0),
                "at": rfc3339_millis(millis(a.get::<_, SystemTime>(1))),
                "outcome": a.get::<_, String>(2),
                "status_code": a.get::<_, Option<i32>>(3),
                "duration_ms": a.get::<_, i32>(4),
                "error": a.get::<_, Option<String>>(5),
            })
        })
        .collect();
    Ok(Some(event))
}

/// Makes finished deliveries due again (same row, same idempotency key); returns the ids.
pub async fn redeliver(s: &Scoped<'_>, ids: &[i64]) -> Result<Vec<i64>, DbError> {
    Ok(s.tx
        .query("SELECT * FROM posflow_redeliver($1)", &[&ids])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Redelivers one finished delivery: (before, after) for the audit log; not found for none of
/// the merchant's; refused while it is still pending.
pub async fn redeliver_one(s: &Scoped<'_>, id: i64) -> Result<(Value, Value), Problem> {
    let unavailable = |e: DbError| {
        tracing::warn!(error = %e.summary(), "redelivery failed");
        Problem::Unavailable
    };
    let before = attempts(s, id)
        .await
        .map_err(unavailable)?
        .ok_or(Problem::NotFound)?;
    let done = redeliver(s, &[id]).await.map_err(unavailable)?;
    if done.is_empty() {
        return Err(Problem::invalid(
            "event",
            "is still pending: it is being delivered",
        ));
    }
    Ok((
        json!({ "id": id, "status": before["status"], "attempts": before["attempts"] }),
        json!({ "redelivered": done }),
    ))
}

/// The failed deliveries created in [from, to), at most `max`.
pub async fn failed_between(
    s: &Scoped<'_>,
    from: SystemTime,
    to: SystemTime,
    max: i64,
) -> Result<Vec<i64>, DbError> {
    Ok(s
        .tx
        .query(
            "SELECT id FROM notification_outbox WHERE ($1::text IS NULL OR merchant_id = $1) AND status = 'failed'
                AND created_at >= $2 AND created_at < $3 ORDER BY id LIMIT $4",
            &[&s.merchant_filter(), &from, &to, &max],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
