//! The notifier's PostgreSQL state: preferences, the delivery outbox, digest items and the
//! digests sent. Every write here is idempotent, so a Kafka redelivery or a second replica
//! changes nothing it should not.

use crate::prefs::{Mode, Preferences};
use crate::sealed::Keys;
use posflow_pg::{column, DbError, Migrations};
use posflow_schema::{Channel, FraudAlert};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

pub const MIGRATIONS: Migrations = Migrations {
    ledger: "notifier_schema_migrations",
    lock: 0x706f_7366_6e6f_7466, // "posfnotf"
    steps: &[
        (
            1,
            "notifier",
            include_str!("../migrations/0001_notifier.sql"),
        ),
        (
            2,
            "delivery trace",
            include_str!("../migrations/0002_delivery_trace.sql"),
        ),
        (
            3,
            "least privilege",
            include_str!("../migrations/0003_least_privilege.sql"),
        ),
        (
            4,
            "events and rotation",
            include_str!("../migrations/0004_events_and_rotation.sql"),
        ),
        (
            5,
            "fraud alerts",
            include_str!("../migrations/0005_fraud_alerts.sql"),
        ),
        (
            6,
            "weekly digests",
            include_str!("../migrations/0006_weekly_digests.sql"),
        ),
    ],
};

pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, DbError> {
    posflow_pg::migrate(client, &MIGRATIONS).await
}

/// Upserts every merchant of a preferences file in one transaction, webhook secrets sealed.
pub async fn save_preferences(
    client: &mut Client,
    prefs: &[Preferences],
    keys: &Keys,
) -> Result<(), DbError> {
    let tx = client.transaction().await?;
    for p in prefs {
        let (mode, every) = match p.mode {
            Mode::PerEvent => ("per-event", None),
            Mode::Digest { every } => ("digest", Some(every.as_secs() as i32)),
        };
        let url = p.webhook.as_ref().map(|w| w.url.as_str());
        let secret = p
            .webhook
            .as_ref()
            .map(|w| keys.seal(&p.merchant_id, w.secret.expose()));
        tx.execute(
            "INSERT INTO merchant_preferences (merchant_id, mode, digest_every_secs, format, events, webhook_url, webhook_secret, emails, risk_emails)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (merchant_id) DO UPDATE SET mode = EXCLUDED.mode, digest_every_secs = EXCLUDED.digest_every_secs,
               format = EXCLUDED.format, events = EXCLUDED.events, webhook_url = EXCLUDED.webhook_url,
               webhook_secret = EXCLUDED.webhook_secret, emails = EXCLUDED.emails, risk_emails = EXCLUDED.risk_emails, updated_at = now()",
            &[&p.merchant_id, &mode, &every, &p.format.as_str(), &p.events_as_strings(), &url, &secret, &p.emails, &p.risk_emails],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub type PreferenceMap = HashMap<String, Arc<Preferences>>;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// Webhook secrets that do not open, one line per merchant (no secret in it).
    #[error("webhook secrets: {}", .0.join("; "))]
    Sealed(Vec<String>),
}

impl LoadError {
    pub fn summary(&self) -> String {
        match self {
            LoadError::Db(e) => e.summary(),
            LoadError::Sealed(_) => self.to_string(),
        }
    }
}

/// Every merchant's preferences, webhook secrets opened. A secret that does not open (a key not
/// configured, a row in the clear) fails the whole load: delivering without it is not possible,
/// and silently skipping a merchant is worse.
pub async fn load_preferences(client: &Client, keys: &Keys) -> Result<PreferenceMap, LoadError> {
    let rows = client
        .query(
            "SELECT merchant_id, mode, digest_every_secs, format, events, webhook_url, webhook_secret, emails, risk_emails,
                    webhook_secret_previous, webhook_secret_previous_until
               FROM merchant_preferences",
            &[],
        )
        .await
        .map_err(DbError::from)?;
    let mut map = PreferenceMap::new();
    let mut sealed = Vec::new();
    for r in &rows {
        let merchant_id: String = r.get(0);
        let url: Option<String> = r.get(5);
        let stored: Option<String> = r.get(6);
        let previous: Option<String> = r.get(9);
        let until: Option<std::time::SystemTime> = r.get(10);
        let opened = stored
            .map(|s| keys.open(&merchant_id, &s))
            .transpose()
            .and_then(|s| {
                Ok((
                    s,
                    previous.map(|p| keys.open(&merchant_id, &p)).transpose()?,
                ))
            });
        let (secret, previous) = match opened {
            Ok(s) => s,
            Err(e) => {
                sealed.push(format!("{merchant_id}: {e}"));
                continue;
            }
        };
        let mut p = Preferences::from_columns(
            merchant_id,
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            url.zip(secret),
            r.get(7),
            r.get(8),
        );
        if let (Some(w), Some(old), Some(until)) = (p.webhook.as_mut(), previous, until) {
            w.previous = Some((old, until));
        }
        map.insert(p.merchant_id.clone(), Arc::new(p));
    }
    if sealed.is_empty() {
        Ok(map)
    } else {
        Err(LoadError::Sealed(sealed))
    }
}

/// Rewrites every webhook secret under the current key (after adding a key, or for rows from
/// before encryption at rest), in one transaction; returns how many rows changed.
pub async fn reseal(client: &mut Client, keys: &Keys) -> Result<usize, LoadError> {
    let tx = client.transaction().await.map_err(DbError::from)?;
    let rows = tx
        .query(
            "SELECT merchant_id, webhook_secret FROM merchant_preferences WHERE webhook_secret IS NOT NULL FOR UPDATE",
            &[],
        )
        .await
        .map_err(DbError::from)?;
    let (mut changed, mut problems) = (0, Vec::new());
    for r in &rows {
        let (merchant_id, stored): (String, String) = (r.get(0), r.get(1));
        if keys.is_current(&stored) {
            continue;
        }
        let secret = match keys.open(&merchant_id, &stored) {
            Ok(s) => s,
            // Rows from before encryption at rest hold the secret itself.
            Err(crate::sealed::OpenError::Clear) => posflow_runtime::Secret::new(stored),
            Err(e) => {
                problems.push(format!("{merchant_id}: {e}"));
                continue;
            }
        };
        tx.execute(
            "UPDATE merchant_preferences SET webhook_secret = $2, updated_at = now() WHERE merchant_id = $1",
            &[&merchant_id, &keys.seal(&merchant_id, secret.expose())],
        )
        .await
        .map_err(DbError::from)?;
        changed += 1;
    }
    if !problems.is_empty() {
        return Err(LoadError::Sealed(problems));
    }
    tx.commit().await.map_err(DbError::from)?;
    Ok(changed)
}

pub async fn remove_preferences(client: &Client, merchant_id: &str) -> Result<bool, DbError> {
    Ok(client
        .execute(
            "DELETE FROM merchant_preferences WHERE merchant_id = $1",
            &[&merchant_id],
        )
        .await?
        == 1)
}

/// An email attachment.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// One delivery to enqueue: an event rendered for one channel.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub idempotency_key: String,
    pub merchant_id: String,
    /// What the delivery is about: a transaction id, an alert id, a digest's period.
    pub event_id: String,
    pub channel: Channel,
    pub event_type: &'static str,
    /// 0 for fraud alerts, claimed ahead of everything else.
    pub priority: i16,
    pub subject: Option<String>,
    pub content_type: String,
    pub body: Vec<u8>,
    pub attachment: Option<Attachment>,
    pub risk_contact: bool,
    /// The event's trace context (tracing on), for the attempts' spans.
    pub traceparent: Option<String>,
}

/// A transaction waiting for its merchant's next digest.
#[derive(Debug, Clone, PartialEq)]
pub struct DigestItem {
    pub merchant_id: String,
    pub transaction_id: String,
    pub received_at_ms: i64,
    pub transaction_time_ms: i64,
    pub terminal_id: String,
    pub kind: String,
    pub amount_minor: i64,
    pub currency: String,
    pub entry_mode: String,
    pub card_last4: Option<String>,
    pub auth_code: Option<String>,
}

/// Adds deliveries, digest items and fraud alerts in one transaction; ones already there are
/// left alone. Returns how many deliveries and items were new.
pub async fn enqueue(
    client: &mut Client,
    deliveries: &[NewDelivery],
    items: &[DigestItem],
    alerts: &[&FraudAlert],
) -> Result<(u64, u64), DbError> {
    let tx = client.transaction().await?;
    let new_deliveries = insert_deliveries(&tx, deliveries).await?;
    let new_items = insert_items(&tx, items).await?;
    insert_alerts(&tx, alerts).await?;
    tx.commit().await?;
    Ok((new_deliveries, new_items))
}

async fn insert_alerts(
    tx: &tokio_postgres::Transaction<'_>,
    alerts: &[&FraudAlert],
) -> Result<(), DbError> {
    for a in alerts {
        tx.execute(
            "INSERT INTO fraud_alerts (alert_id, merchant_id, terminal_id, rule_id, severity, score, evidence_transaction_ids, detected_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, to_timestamp($8::float8 / 1000)) ON CONFLICT (alert_id) DO NOTHING",
            &[&a.alert_id, &a.merchant_id, &a.terminal_id, &a.rule_id, &format!("{:?}", a.severity).to_lowercase(),
              &a.score, &a.evidence_transaction_ids, &(a.detected_at as f64)],
        )
        .await?;
    }
    Ok(())
}

async fn insert_deliveries(
    tx: &tokio_postgres::Transaction<'_>,
    deliveries: &[NewDelivery],
) -> Result<u64, DbError> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let keys = column(deliveries, |d| d.idempotency_key.as_str());
    let merchants = column(deliveries, |d| d.merchant_id.as_str());
    let channels = column(deliveries, |d| d.channel.as_str());
    let kinds = column(deliveries, |d| d.event_type);
    let subjects = column(deliveries, |d| d.subject.as_deref());
    let types = column(deliveries, |d| d.content_type.as_str());
    let names = column(deliveries, |d| {
        d.attachment.as_ref().map(|a| a.name.as_str())
    });
    let att_types = column(deliveries, |d| {
        d.attachment.as_ref().map(|a| a.content_type.as_str())
    });
    let traces = column(deliveries, |d| d.traceparent.as_deref());
    let events = column(deliveries, |d| d.event_id.as_str());
    let priorities = column(deliveries, |d| d.priority);
    let risk = column(deliveries, |d| d.risk_contact);
    let bodies = column(deliveries, |d| d.body.as_slice());
    let attachments = column(deliveries, |d| {
        d.attachment.as_ref().map(|a| a.bytes.as_slice())
    });
    Ok(tx
        .execute(
            "INSERT INTO notification_outbox (idempotency_key, merchant_id, channel, event_type, priority, subject, content_type, body, attachment_name, attachment_type, attachment, risk_contact, traceparent, event_id)
             SELECT unnest($1::text[]), unnest($2::text[]), unnest($3::text[]), unnest($4::text[]), unnest($5::int2[]), unnest($6::text[]), unnest($7::text[]), unnest($8::bytea[]), unnest($9::text[]), unnest($10::text[]), unnest($11::bytea[]), unnest($12::bool[]), unnest($13::text[]), unnest($14::text[])
             ON CONFLICT (idempotency_key) DO NOTHING",
            &[&keys, &merchants, &channels, &kinds, &priorities, &subjects, &types, &bodies, &names, &att_types, &attachments, &risk, &traces, &events],
        )
        .await?)
}

async fn insert_items(
    tx: &tokio_postgres::Transaction<'_>,
    items: &[DigestItem],
) -> Result<u64, DbError> {
    if items.is_empty() {
        return Ok(0);
    }
    let merchants = column(items, |i| i.merchant_id.as_str());
    let ids = column(items, |i| i.transaction_id.as_str());
    let terminals = column(items, |i| i.terminal_id.as_str());
    let kinds = column(items, |i| i.kind.as_str());
    let currencies = column(items, |i| i.currency.as_str());
    let modes = column(items, |i| i.entry_mode.as_str());
    let last4 = column(items, |i| i.card_last4.as_deref());
    let auth = column(items, |i| i.auth_code.as_deref());
    let received = column(items, |i| i.received_at_ms);
    let times = column(items, |i| i.transaction_time_ms);
    let amounts = column(items, |i| i.amount_minor);
    Ok(tx
        .execute(
            "INSERT INTO digest_items (merchant_id, transaction_id, received_at, transaction_time, terminal_id, type, amount_minor, currency, entry_mode, card_last4, auth_code)
             SELECT m, id, to_timestamp(r / 1000.0), to_timestamp(t / 1000.0), term, k, a, c, b, l, ac
             FROM (SELECT unnest($1::text[]) m, unnest($2::text[]) id, unnest($3::int8[]) r, unnest($4::int8[]) t, unnest($5::text[]) term, unnest($6::text[]) k, unnest($7::int8[]) a, unnest($8::text[]) c, unnest($9::text[]) b, unnest($10::text[]) l, unnest($11::text[]) ac) AS x
             ON CONFLICT DO NOTHING",
            &[&merchants, &ids, &received, &times, &terminals, &kinds, &amounts, &currencies, &modes, &last4, &auth],
        )
        .await?)
}

/// A delivery claimed by this replica, to attempt now.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub idempotency_key: String,
    pub merchant_id: String,
    pub channel: Channel,
    pub event_type: String,
    pub priority: i16,
    pub subject: Option<String>,
    pub content_type: String,
    pub body: Vec<u8>,
    pub attachment: Option<Attachment>,
    pub risk_contact: bool,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub created_at_ms: i64,
    pub traceparent: Option<String>,
}

/// The merchants with pending deliveries (due or not), found by skipping through the index
/// merchant by merchant: as many index probes as merchants, whatever the backlog.
pub async fn pending_merchants(client: &Client) -> Result<Vec<String>, DbError> {
    Ok(client
        .query(
            "WITH RECURSIVE m AS (
                 (SELECT merchant_id FROM notification_outbox WHERE status = 'pending' ORDER BY merchant_id LIMIT 1)
                 UNION ALL
                 SELECT (SELECT o.merchant_id FROM notification_outbox o
                          WHERE o.status = 'pending' AND o.merchant_id > m.merchant_id
                          ORDER BY o.merchant_id LIMIT 1)
                   FROM m WHERE m.merchant_id IS NOT NULL)
             SELECT merchant_id FROM m WHERE merchant_id IS NOT NULL",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Claims, for each (merchant, n) of `wants`, up to n of that merchant's due deliveries — fraud
/// alerts first, then by due time — skipping rows another replica holds (SKIP LOCKED), and
/// leases them to `owner`. The lease covers a crash: the row is due again when it expires. Each
/// merchant's part reads only the rows it takes (index on merchant, priority, due time).
pub async fn claim(
    client: &Client,
    owner: &str,
    lease: Duration,
    wants: &[(String, i32)],
) -> Result<Vec<Claimed>, DbError> {
    if wants.is_empty() {
        return Ok(vec![]);
    }
    let (merchants, counts): (Vec<&str>, Vec<i32>) =
        wants.iter().map(|(m, n)| (m.as_str(), *n)).unzip();
    let rows = client
        .query(
            "WITH picked AS (
                 SELECT d.id FROM unnest($3::text[], $4::int4[]) AS w(merchant_id, n)
                 CROSS JOIN LATERAL (
                     SELECT id FROM notification_outbox o
                      WHERE o.merchant_id = w.merchant_id AND o.status = 'pending' AND o.next_attempt_at <= now()
                        AND (o.lease_until IS NULL OR o.lease_until < now())
                      ORDER BY o.priority, o.next_attempt_at
                      LIMIT w.n
                      FOR UPDATE SKIP LOCKED) d)
           UPDATE notification_outbox o
              SET lease_owner = $1, lease_until = now() + make_interval(secs => $2), attempts = o.attempts + 1
             FROM picked WHERE o.id = picked.id
        RETURNING o.id, o.idempotency_key, o.merchant_id, o.channel, o.event_type, o.priority, o.subject, o.content_type, o.body,
                  o.attachment_name, o.attachment_type, o.attachment, o.risk_contact, o.attempts,
                  (extract(epoch FROM o.created_at) * 1000)::int8, o.traceparent",
            &[&owner, &lease.as_secs_f64(), &merchants, &counts],
        )
        .await?;
    let mut out: Vec<Claimed> = rows
        .iter()
        .map(|r| {
            let name: Option<String> = r.get(9);
            let kind: Option<String> = r.get(10);
            let bytes: Option<Vec<u8>> = r.get(11);
            Claimed {
                id: r.get(0),
                idempotency_key: r.get(1),
                merchant_id: r.get(2),
                channel: if r.get::<_, &str>(3) == "email" {
                    Channel::Email
                } else {
                    Channel::Webhook
                },
                event_type: r.get(4),
                priority: r.get(5),
                subject: r.get(6),
                content_type: r.get(7),
                body: r.get(8),
                attachment: match (name, kind, bytes) {
                    (Some(name), Some(content_type), Some(bytes)) => Some(Attachment {
                        name,
                        content_type,
                        bytes,
                    }),
                    _ => None,
                },
                risk_contact: r.get(12),
                attempt: r.get(13),
                created_at_ms: r.get(14),
                traceparent: r.get(15),
            }
        })
        .collect();
    out.sort_by_key(|c| (c.priority, c.id));
    Ok(out)
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    Delivered,
    /// Try again after the delay.
    Retry {
        after: Duration,
        error: String,
    },
    Failed {
        error: String,
    },
    /// Not attempted after all (shutdown, circuit opened meanwhile): the attempt is not counted.
    Release {
        after: Duration,
    },
}

/// One attempt's result: the row, what became of it, how long the attempt took.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub id: i64,
    pub settle: Settle,
    pub took_ms: i32,
}

/// The status code in an attempt's error ("HTTP 503", "gave up after 3 attempts: HTTP 503"
/// → 503), for the attempts' history.
fn status_code(error: &str) -> Option<i32> {
    let at = error.find("HTTP ")? + 5;
    error.get(at..at + 3)?.parse().ok()
}

/// Records attempts' results in one transaction (one commit for many attempts: at thousands
/// of deliveries a second, a commit each would be the limit), for the rows this replica still
/// holds, and each attempt in the history merchants read (notification_attempts).
#[cfg(test)]
#[test]
fn status_codes_are_read_from_errors() {
    assert_eq!(status_code("HTTP 503"), Some(503));
    assert_eq!(status_code("gave up after 3 attempts: HTTP 429"), Some(429));
    assert_eq!(status_code("timed out after 2s"), None);
    assert_eq!(status_code("HTTP 5"), None);
}

pub async fn settle_batch(
    client: &mut Client,
    owner: &str,
    batch: &[Settled],
) -> Result<(), DbError> {
    const FREE: &str = "lease_owner = NULL, lease_until = NULL";
    let (mut delivered, mut failed, mut retry, mut release) = (
        Vec::new(),
        (Vec::new(), Vec::new()),
        (Vec::new(), Vec::new(), Vec::new()),
        (Vec::new(), Vec::new()),
    );
    let mut history = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for Settled {
        id,
        settle: s,
        took_ms,
    } in batch
    {
        let (outcome, error) = match s {
            Settle::Delivered => ("delivered", None),
            Settle::Retry { error, .. } => ("retry", Some(error.as_str())),
            Settle::Failed { error } => ("failed", Some(error.as_str())),
            Settle::Release { .. } => ("", None),
        };
        if !outcome.is_empty() {
            history.0.push(*id);
            history.1.push(outcome);
            history.2.push(error);
            history.3.push(error.and_then(status_code));
            history.4.push(*took_ms);
        }
        match s {
            Settle::Delivered => delivered.push(*id),
            Settle::Failed { error } => {
                failed.0.push(*id);
                failed.1.push(error.as_str());
            }
            Settle::Retry { after, error } => {
                retry.0.push(*id);
                retry.1.push(after.as_secs_f64());
                retry.2.push(error.as_str());
            }
            Settle::Release { after } => {
                release.0.push(*id);
                release.1.push(after.as_secs_f64());
            }
        }
    }
    let tx = client.transaction().await?;
    if !history.0.is_empty() {
        // Before the updates below free the leases: only rows this replica still holds.
        tx.execute(
            "INSERT INTO notification_attempts (outbox_id, merchant_id, attempt, outcome, error, status_code, duration_ms)
             SELECT o.id, o.merchant_id, o.attempts, h.outcome, h.error, h.code, h.ms
               FROM unnest($1::int8[], $2::text[], $3::text[], $4::int4[], $5::int4[]) AS h(id, outcome, error, code, ms)
               JOIN notification_outbox o ON o.id = h.id AND o.lease_owner = $6",
            &[&history.0, &history.1, &history.2, &history.3, &history.4, &owner],
        )
        .await?;
    }
    if !delivered.is_empty() {
        let sql = format!("UPDATE notification_outbox SET status = 'delivered', finished_at = now(), last_error = NULL, {FREE}
                            WHERE id = ANY($1) AND lease_owner = $2");
        tx.execute(&sql, &[&delivered, &owner]).await?;
    }
    if !failed.0.is_empty() {
        let sql = format!("UPDATE notification_outbox o SET status = 'failed', finished_at = now(), last_error = f.error, {FREE}
                             FROM unnest($1::int8[], $3::text[]) AS f(id, error) WHERE o.id = f.id AND o.lease_owner = $2");
        tx.execute(&sql, &[&failed.0, &owner, &failed.1]).await?;
    }
    if !retry.0.is_empty() {
        let sql = format!("UPDATE notification_outbox o SET next_attempt_at = now() + make_interval(secs => r.secs), last_error = r.error, {FREE}
                             FROM unnest($1::int8[], $3::float8[], $4::text[]) AS r(id, secs, error) WHERE o.id = r.id AND o.lease_owner = $2");
        tx.execute(&sql, &[&retry.0, &owner, &retry.1, &retry.2])
            .await?;
    }
    if !release.0.is_empty() {
        let sql = format!("UPDATE notification_outbox o SET attempts = o.attempts - 1, next_attempt_at = now() + make_interval(secs => r.secs), {FREE}
                             FROM unnest($1::int8[], $3::float8[]) AS r(id, secs) WHERE o.id = r.id AND o.lease_owner = $2");
        tx.execute(&sql, &[&release.0, &owner, &release.1]).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A restarted replica holds nothing in flight: whatever its predecessor (same instance id)
/// had claimed is due again now rather than when the lease runs out. Returns how many.
pub async fn release_leases_of(client: &Client, owner: &str) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "UPDATE notification_outbox SET lease_owner = NULL, lease_until = NULL, next_attempt_at = now()
              WHERE status = 'pending' AND lease_owner = $1",
            &[&owner],
        )
        .await?)
}

pub async fn pending(client: &Client) -> Result<i64, DbError> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM notification_outbox WHERE status = 'pending'",
            &[],
        )
        .await?
        .get(0))
}

/// Deletes finished deliveries, and digest items of digests, older than `retention`.
pub async fn prune(client: &Client, retention: Duration) -> Result<u64, DbError> {
    let secs = retention.as_secs_f64();
    let a = client
        .execute(
            "DELETE FROM notification_outbox WHERE status <> 'pending' AND finished_at < now() - make_interval(secs => $1)",
            &[&secs],
        )
        .await?;
    let b = client
        .execute(
            "DELETE FROM digest_items WHERE period_end < now() - make_interval(secs => $1)",
            &[&secs],
        )
        .await?;
    Ok(a + b)
}

/// The end of the merchant's last digest, if any.
pub async fn last_digest_end_ms(
    client: &Client,
    merchant_id: &str,
) -> Result<Option<i64>, DbError> {
    Ok(client
        .query_one(
            "SELECT (extract(epoch FROM max(period_end)) * 1000)::int8 FROM digests WHERE merchant_id = $1",
            &[&merchant_id],
        )
        .await?
        .get(0))
}

/// Closes the merchant's digest for [start, end): records the period (once, whichever replica
/// comes first), claims every open item received before `end` — late ones from earlier periods
/// included, so each item is in exactly one digest — and enqueues `render(items)`, all in one
/// transaction. Nothing happens (and nothing is recorded) when there are no items or the period
/// was closed already. Returns the number of items.
pub async fn close_digest(
    client: &mut Client,
    merchant_id: &str,
    start_ms: i64,
    end_ms: i64,
    render: impl FnOnce(&[DigestItem]) -> Vec<NewDelivery>,
) -> Result<Option<usize>, DbError> {
    let tx = client.transaction().await?;
    let fresh = tx
        .execute(
            "INSERT INTO digests (merchant_id, period_start, period_end, items)
             VALUES ($1, to_timestamp($2::float8 / 1000.0), to_timestamp($3::float8 / 1000.0), 0) ON CONFLICT DO NOTHING",
            &[&merchant_id, &(start_ms as f64), &(end_ms as f64)],
        )
        .await?;
    if fresh == 0 {
        return Ok(None);
    }
    let rows = tx
        .query(
            "UPDATE digest_items SET period_end = to_timestamp($2::float8 / 1000.0)
              WHERE merchant_id = $1 AND period_end IS NULL AND received_at < to_timestamp($2::float8 / 1000.0)
          RETURNING transaction_id, (extract(epoch FROM received_at) * 1000)::int8, (extract(epoch FROM transaction_time) * 1000)::int8,
                    terminal_id, type, amount_minor, currency, entry_mode, card_last4, auth_code",
            &[&merchant_id, &(end_ms as f64)],
        )
        .await?;
    if rows.is_empty() {
        // Dropping the transaction rolls the period back: an empty period sends nothing.
        return Ok(None);
    }
    let mut items: Vec<DigestItem> = rows
        .iter()
        .map(|r| DigestItem {
            merchant_id: merchant_id.to_string(),
            transaction_id: r.get(0),
            received_at_ms: r.get(1),
            transaction_time_ms: r.get(2),
            terminal_id: r.get(3),
            kind: r.get(4),
            amount_minor: r.get(5),
            currency: r.get(6),
            entry_mode: r.get(7),
            card_last4: r.get(8),
            auth_code: r.get(9),
        })
        .collect();
    items.sort_by(|a, b| {
        (a.transaction_time_ms, &a.transaction_id).cmp(&(b.transaction_time_ms, &b.transaction_id))
    });
    tx.execute(
        "UPDATE digests SET items = $3 WHERE merchant_id = $1 AND period_end = to_timestamp($2::float8 / 1000.0)",
        &[&merchant_id, &(end_ms as f64), &(items.len() as i32)],
    )
    .await?;
    insert_deliveries(&tx, &render(&items)).await?;
    tx.commit().await?;
    Ok(Some(items.len()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_run_in_order_without_gaps() {
        assert_eq!(super::MIGRATIONS.check_order(), Ok(()));
    }
}
