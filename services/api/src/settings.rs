//! A merchant's delivery settings through the API: the same rules as
//! `posflow-notifier merchants apply` (posflow_notifier::prefs::check), plus the egress guard on
//! the webhook URL. Every notifier replica picks a change up at its next preferences refresh
//! (--preferences-refresh-secs, 10 s by default). The signing secret is sealed like the CLI's
//! and can be written, never read back: the API's role has no SELECT on that column.

use crate::db::Scoped;
use crate::problem::{FieldError, Problem};
use crate::records::millis;
use posflow_notifier::egress::Egress;
use posflow_notifier::prefs::{self, Entry, Mode};
use posflow_notifier::sealed::Keys;
use posflow_pg::DbError;
use posflow_schema::rfc3339_millis;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// The settings as the API shows them (and the audit log records them): no secret.
pub async fn get(s: &Scoped<'_>) -> Result<Option<Value>, DbError> {
    let row = s
        .tx
        .query_opt(
            "SELECT mode, digest_every_secs, format, events, webhook_url, emails, risk_emails, updated_at \
             FROM merchant_preferences WHERE merchant_id = $1",
            &[&s.merchant],
        )
        .await?;
    Ok(row.map(|r| {
        json!({
            "merchant_id": s.merchant,
            "mode": r.get::<_, String>(0),
            "digest_every": r.get::<_, Option<i32>>(1)
                .map(|secs| humantime::format_duration(Duration::from_secs(secs as u64)).to_string()),
            "format": r.get::<_, String>(2),
            "events": r.get::<_, Vec<String>>(3),
            "webhook_url": r.get::<_, Option<String>>(4),
            "emails": r.get::<_, Vec<String>>(5),
            "risk_emails": r.get::<_, Vec<String>>(6),
            "updated_at": rfc3339_millis(millis(r.get::<_, SystemTime>(7))),
        })
    }))
}

fn unavailable<E: std::fmt::Display>(e: E) -> Problem {
    tracing::warn!(error = %e, "settings query failed");
    Problem::Unavailable
}

/// A secret long enough for the shared check when the request keeps the stored one.
const KEPT: &str = "kept-secret-placeholder-0123456789";

/// Replaces the merchant's settings. `webhook_secret` may be left out to keep the current one
/// (when a webhook is configured already). Returns (before, after, whether the secret changed).
pub async fn put(
    s: &Scoped<'_>,
    body: &[u8],
    egress: &Egress,
    keys: &Keys,
) -> Result<(Option<Value>, Value), Problem> {
    let entry: Entry = serde_json::from_slice(body)
        .map_err(|e| Problem::invalid("body", format!("not a settings document: {e}")))?;
    let before = get(s).await.map_err(unavailable)?;
    let has_webhook = before.as_ref().is_some_and(|b| !b["webhook_url"].is_null());
    let keep_secret = entry.webhook_url.is_some() && entry.webhook_secret.is_none() && has_webhook;
    let prefs = checked(s, entry, keep_secret, egress).await?;
    let (mode, every) = match prefs.mode {
        Mode::PerEvent => ("per-event", None),
        Mode::Digest { every } => ("digest", Some(every.as_secs() as i32)),
    };
    let url = prefs.webhook.as_ref().map(|w| w.url.clone());
    let sealed = match (&prefs.webhook, keep_secret) {
        (Some(w), false) => Some(keys.seal(&s.merchant, w.secret.expose())),
        _ => None,
    };
    // The stored secret stays (not named in the UPDATE: the API may not read it) when the
    // request kept it; otherwise it is replaced — by NULL when the webhook went.
    let format = prefs.format.as_str();
    let events = prefs.events_as_strings();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
        &s.merchant,
        &mode,
        &every,
        &format,
        &events,
        &url,
        &prefs.emails,
        &prefs.risk_emails,
    ];
    let mut sql = "UPDATE merchant_preferences SET mode = $2, digest_every_secs = $3, format = $4, events = $5, \
                   webhook_url = $6, emails = $7, risk_emails = $8, updated_at = now()"
        .to_string();
    if !keep_secret {
        // A secret set outright ends any rotation's overlap.
        sql += ", webhook_secret = $9, webhook_secret_previous = NULL, webhook_secret_previous_until = NULL";
        params.push(&sealed);
    }
    let updated =
        s.tx.execute(&format!("{sql} WHERE merchant_id = $1"), &params)
            .await
            .map_err(unavailable)?;
    if updated == 0 {
        s.tx
            .execute(
                "INSERT INTO merchant_preferences (merchant_id, mode, digest_every_secs, format, events, webhook_url, \
                 emails, risk_emails, webhook_secret) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[&s.merchant, &mode, &every, &format, &events, &url, &prefs.emails, &prefs.risk_emails, &sealed],
            )
            .await
            .map_err(unavailable)?;
    }
    let mut after = get(s).await.map_err(unavailable)?.unwrap_or(Value::Null);
    // The audit log says a secret changed, never what it is (and nothing when none did).
    if sealed.is_some() {
        after["webhook_secret_changed"] = json!(true);
    }
    Ok((before, after))
}

/// The notifier's own checks (the same rules as a preferences file), then the egress guard on
/// the webhook URL; every problem at once.
async fn checked(
    s: &Scoped<'_>,
    entry: Entry,
    keep_secret: bool,
    egress: &Egress,
) -> Result<prefs::Preferences, Problem> {
    let mut errors = Vec::new();
    if entry.webhook_secret_env.is_some() {
        errors.push(FieldError {
            field: "webhook_secret_env".into(),
            message: "not accepted by the API: send webhook_secret".into(),
        });
    }
    let mut checked = entry.clone();
    if keep_secret {
        checked.webhook_secret = Some(KEPT.into());
    }
    checked.webhook_secret_env = None;
    let prefs = prefs::check(&s.merchant, checked, |_| None).map_err(|problems| {
        errors.extend(problems.into_iter().map(|(field, message)| FieldError {
            field: field.into(),
            message,
        }));
    });
    if let Some(url) = &entry.webhook_url {
        if let Err(why) = egress.check_url(url).await {
            errors.push(FieldError {
                field: "webhook_url".into(),
                message: format!("refused: {why}"),
            });
        }
    }
    match prefs {
        Ok(p) if errors.is_empty() => Ok(p),
        _ => Err(Problem::Invalid(errors)),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotation {
    webhook_secret: String,
    /// How long the previous secret keeps signing too: "24h" by default, at most "7days".
    overlap: Option<String>,
}

const MAX_OVERLAP: Duration = Duration::from_secs(7 * 86_400);

/// Rotates the webhook signing secret: the current one goes on signing, next to the new, until
/// the overlap ends. Returns (before, after) for the audit log — no secret in either.
pub async fn rotate_secret(
    s: &Scoped<'_>,
    body: &[u8],
    keys: &Keys,
) -> Result<(Value, Value), Problem> {
    let r: Rotation = serde_json::from_slice(body)
        .map_err(|e| Problem::invalid("body", format!("not a rotation: {e}")))?;
    let mut errors = Vec::new();
    if r.webhook_secret.len() < 16 {
        errors.push(FieldError {
            field: "webhook_secret".into(),
            message: "must be at least 16 bytes".into(),
        });
    }
    let overlap = match humantime::parse_duration(r.overlap.as_deref().unwrap_or("24h")) {
        Ok(d) if d <= MAX_OVERLAP => d,
        _ => {
            errors.push(FieldError {
                field: "overlap".into(),
                message: "must be a duration up to 7days, e.g. \"24h\"".into(),
            });
            Duration::ZERO
        }
    };
    if !errors.is_empty() {
        return Err(Problem::Invalid(errors));
    }
    let sealed = keys.seal(&s.merchant, &r.webhook_secret);
    let until: Option<SystemTime> =
        s.tx.query_one(
            "SELECT posflow_rotate_webhook_secret($1, make_interval(secs => $2))",
            &[&sealed, &overlap.as_secs_f64()],
        )
        .await
        .map_err(unavailable)?
        .get(0);
    let until = until.ok_or_else(|| {
        Problem::invalid("webhook_secret", "the merchant has no webhook to sign for")
    })?;
    let until = rfc3339_millis(millis(until));
    Ok((
        json!({ "webhook_secret": "current" }),
        json!({ "webhook_secret": "rotated", "previous_signs_until": until }),
    ))
}
