//! The Notifications page: how the merchant is told — per event or as an hourly, daily or
//! weekly digest, JSON or CSV, which events, the email addresses, the webhook and its signing
//! secret's rotation. The form is the API's settings document in a person's words: it is saved
//! through the same code (settings::put — the notifier's own checks and the egress guard on the
//! URL), so a setting the API refuses is refused here with the same reasons.
//!
//! A change is an audit record with the settings before and after (never a secret), and the
//! page says who made the last one. Notifier replicas read the table at each preferences
//! refresh (`--preferences-refresh-secs`, 10 s by default): that is when a change takes effect.

use super::html::{escape, form, outcome, page, Outcome};
use super::pages::{
    authorised, authorised_form, changed, in_scope, served, PageReply, PageRequest,
};
use super::{people, session};
use crate::auth::Permission;
use crate::service::State;
use crate::settings;
use posflow_schema::rfc3339_millis;
use serde_json::{json, Value};
use std::collections::HashMap;

/// How often, as the form offers it: (the form's value — `per-event` or a digest's period —,
/// the words).
const FREQUENCIES: [(&str, &str); 4] = [
    ("per-event", "Each event as it happens"),
    ("1h", "Hourly digest"),
    ("1day", "Daily digest (UTC days)"),
    ("7days", "Weekly digest (from Monday, UTC)"),
];

/// The events a merchant can choose: (the settings' name, the words).
const EVENTS: [(&str, &str); 3] = [
    ("transactions", "Sales"),
    ("refunds", "Refunds and voids"),
    ("fraud-alerts", "Fraud alerts"),
];

/// The audit actions that change a merchant's settings, through the API or here.
const CHANGES: [&str; 4] = [
    "settings.update",
    "settings.rotate_secret",
    "portal.notifications.update",
    "portal.notifications.rotate_secret",
];

/// The settings document (as `PUT /settings` takes it) for the form's fields. A blank secret
/// keeps the stored one.
fn document(f: &HashMap<String, String>) -> Value {
    let get = |k: &str| f.get(k).map(|v| v.trim()).unwrap_or("");
    let list = |k: &str| -> Vec<&str> {
        get(k)
            .split([',', ';', ' ', '\n', '\r'])
            .filter(|a| !a.is_empty())
            .collect()
    };
    let mut d = json!({
        "format": get("format"),
        "events": EVENTS.iter().filter(|(e, _)| f.contains_key(&format!("event-{e}"))).map(|(e, _)| *e).collect::<Vec<_>>(),
        "emails": list("emails"),
        "risk_emails": list("risk_emails"),
    });
    match get("frequency") {
        "per-event" => d["mode"] = json!("per-event"),
        every => {
            d["mode"] = json!("digest");
            d["digest_every"] = json!(every);
        }
    }
    if !get("webhook_url").is_empty() {
        d["webhook_url"] = json!(get("webhook_url"));
    }
    if !get("webhook_secret").is_empty() {
        d["webhook_secret"] = json!(get("webhook_secret"));
    }
    d
}

/// The page: the current settings as the form, the last change and who made it, the secret's
/// rotation; `result` is a save's outcome (a notice, or the refusal's reasons).
pub(super) async fn show(state: &State, r: &PageRequest<'_>, result: Outcome) -> PageReply {
    let action = "portal.notifications.read";
    let (person, scope, sid) = match authorised(state, r, Permission::SettingsRead, action).await {
        Ok(it) => it,
        Err(reply) => return reply,
    };
    let loaded = in_scope(state, &scope, async |s| {
        let current = settings::get(s).await?;
        let last =
            s.tx.query_opt(
                "SELECT at_ms, actor FROM api_audit WHERE merchant_id = $1 AND action = ANY ($2) \
                 AND status = 200 ORDER BY seq DESC LIMIT 1",
                &[&s.merchant, &&CHANGES[..]],
            )
            .await?
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)));
        let who = match &last {
            Some((_, actor)) => people::emails_of(&s.tx, std::slice::from_ref(actor)).await?,
            None => HashMap::new(),
        };
        Ok((
            current,
            last.map(|(at, a)| (at, who.get(&a).cloned().unwrap_or(a))),
        ))
    })
    .await;
    let (current, last) = match loaded {
        Ok(it) => it,
        Err(reply) => return reply,
    };
    if let Err(reply) = served(state, r, (&person, scope.merchant()), action).await {
        return reply;
    }
    let csrf = session::csrf_token(&sid);
    let writable = person.role.allows(Permission::SettingsWrite);
    let (mut main, status) = outcome(&result);
    main.push_str(&match last {
        Some((at, who)) => format!(
            r#"<p id="last-change">Last changed {} by {}.</p>"#,
            rfc3339_millis(at),
            escape(&who)
        ),
        None => r#"<p id="last-change">Not changed through the portal or the API yet.</p>"#.into(),
    });
    let current = current.unwrap_or(Value::Null);
    main.push_str(&settings_form(scope.merchant(), &current, &csrf, writable));
    if writable && !current["webhook_url"].is_null() {
        main.push_str(&rotate_form(scope.merchant(), &csrf));
    }
    PageReply::html(status, page("Notifications", Some((&person, &csrf)), &main))
}

/// The settings as a form (read-only without `settings:write`).
fn settings_form(merchant: &str, s: &Value, csrf: &str, writable: bool) -> String {
    let text = |k: &str| escape(s[k].as_str().unwrap_or(""));
    let list = |k: &str| {
        escape(
            &s[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
        )
    };
    let every = if s["mode"] == "digest" {
        s["digest_every"].as_str().unwrap_or("")
    } else {
        "per-event"
    };
    let options = frequency_options(every);
    let format = s["format"].as_str().unwrap_or("json");
    let formats: String = [("json", "JSON"), ("csv", "CSV")]
        .iter()
        .map(|(v, w)| {
            let sel = if *v == format { " selected" } else { "" };
            format!(r#"<option value="{v}"{sel}>{w}</option>"#)
        })
        .collect();
    let subscribed: Vec<&str> = s["events"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_else(|| EVENTS.iter().map(|(e, _)| *e).collect());
    let events: String = EVENTS
        .iter()
        .map(|(e, words)| {
            let on = if subscribed.contains(e) {
                " checked"
            } else {
                ""
            };
            format!(
                r#"<label class="check"><input type="checkbox" id="event-{e}" name="event-{e}" value="on"{on}> {words}</label>"#
            )
        })
        .collect();
    let fields = format!(
        r#"<input type="hidden" name="merchant" value="{m}">
<label for="frequency">How often</label><select id="frequency" name="frequency">{options}</select>
<label for="format">Format</label><select id="format" name="format">{formats}</select>
<fieldset><legend>Events</legend>{events}</fieldset>
<label for="emails">Emails (receipts and digests), separated by commas</label><input id="emails" name="emails" type="text" value="{emails}">
<label for="risk_emails">Emails for fraud alerts (the above when empty)</label><input id="risk_emails" name="risk_emails" type="text" value="{risk}">
<label for="webhook_url">Webhook URL (https)</label><input id="webhook_url" name="webhook_url" type="url" value="{url}">
<label for="webhook_secret">Webhook signing secret (16 characters or more; leave empty to keep the current one)</label><input id="webhook_secret" name="webhook_secret" type="password" autocomplete="new-password">
{button}"#,
        m = escape(merchant),
        emails = list("emails"),
        risk = list("risk_emails"),
        url = text("webhook_url"),
        button = if writable {
            r#"<button type="submit">Save</button><p class="hint">Notifiers apply a change at their next preferences refresh: within 10 seconds with the default settings.</p>"#
        } else {
            r#"<p class="hint">Your role can read these settings, not change them.</p>"#
        },
    );
    form("/portal/notifications", csrf, &fields)
}

/// The frequency's options, `every` selected; a period set through the API (e.g. "10s") is
/// offered as it is, so saving the form keeps it.
fn frequency_options(every: &str) -> String {
    let mut options: Vec<(String, String)> = FREQUENCIES
        .iter()
        .map(|(v, words)| (v.to_string(), words.to_string()))
        .collect();
    if !options.iter().any(|(v, _)| v == every) {
        // A period set through the API (e.g. "10s"): offered as it is, so saving keeps it.
        options.push((every.to_string(), format!("Digest every {every}")));
    }
    options
        .iter()
        .map(|(v, words)| {
            let sel = if v == every { " selected" } else { "" };
            format!(
                r#"<option value="{}"{sel}>{}</option>"#,
                escape(v),
                escape(words)
            )
        })
        .collect()
}

fn rotate_form(merchant: &str, csrf: &str) -> String {
    format!(
        "<h2>Rotate the webhook's signing secret</h2><p>The current secret goes on signing too, next to the new one, until the overlap ends: update your receiver in between.</p>{}",
        form(
            "/portal/notifications/rotate",
            csrf,
            &format!(
                r#"<input type="hidden" name="merchant" value="{}"><label for="new_secret">New secret (16 characters or more)</label><input id="new_secret" name="new_secret" type="password" autocomplete="new-password" required>
<label for="overlap">Overlap</label><select id="overlap" name="overlap"><option value="1h">1 hour</option><option value="24h" selected>24 hours</option><option value="7days">7 days</option></select><button type="submit">Rotate</button>"#,
                escape(merchant)
            )
        )
    )
}

/// Saves the form (`settings:write`): the settings' rules, then an audit record with before
/// and after.
pub(super) async fn save(state: &State, r: &PageRequest<'_>) -> PageReply {
    let action = "portal.notifications.update";
    let (person, scope, _, f) =
        match authorised_form(state, r, Permission::SettingsWrite, action).await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let body = document(&f).to_string();
    let saved = in_scope(state, &scope, async |s| {
        Ok(settings::put(s, body.as_bytes(), &state.egress, &state.seal).await)
    })
    .await;
    let who = (&person, scope.merchant());
    let result = match saved {
        Err(reply) => return reply,
        Ok(Ok((before, after))) => {
            let change = (before.map(|b| b.to_string()), Some(after.to_string()));
            if let Err(reply) = changed(state, r, who, action, "ok", change).await {
                return reply;
            }
            Ok("Saved. Notifiers apply it at their next preferences refresh.".to_string())
        }
        Ok(Err(problem)) => {
            let why = problem.reasons();
            let after = Some(json!({ "refused": why }).to_string());
            if let Err(reply) = changed(state, r, who, action, "invalid", (None, after)).await {
                return reply;
            }
            Err(why)
        }
    };
    show(state, r, Some(result)).await
}

/// Rotates the webhook's signing secret with an overlap (`settings:write`).
pub(super) async fn rotate(state: &State, r: &PageRequest<'_>) -> PageReply {
    let action = "portal.notifications.rotate_secret";
    let (person, scope, _, f) =
        match authorised_form(state, r, Permission::SettingsWrite, action).await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let body = json!({
        "webhook_secret": f.get("new_secret").map(String::as_str).unwrap_or(""),
        "overlap": f.get("overlap").map(String::as_str).unwrap_or("24h"),
    })
    .to_string();
    let rotated = in_scope(state, &scope, async |s| {
        Ok(settings::rotate_secret(s, body.as_bytes(), &state.seal).await)
    })
    .await;
    let who = (&person, scope.merchant());
    let result = match rotated {
        Err(reply) => return reply,
        Ok(Ok((before, after))) => {
            let until = after["previous_signs_until"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let change = (Some(before.to_string()), Some(after.to_string()));
            if let Err(reply) = changed(state, r, who, action, "ok", change).await {
                return reply;
            }
            Ok(format!(
                "Rotated. The previous secret signs too until {until}."
            ))
        }
        Ok(Err(problem)) => {
            let why = problem.reasons();
            if let Err(reply) = changed(state, r, who, action, "invalid", (None, None)).await {
                return reply;
            }
            Err(why)
        }
    };
    show(state, r, Some(result)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_form_is_the_settings_document() {
        let d = document(&form(&[
            ("frequency", "1h"),
            ("format", "csv"),
            ("event-transactions", "on"),
            ("event-fraud-alerts", "on"),
            ("emails", "a@example.com, b@example.com"),
            ("risk_emails", ""),
            ("webhook_url", ""),
            ("webhook_secret", ""),
        ]));
        assert_eq!(
            d,
            json!({"mode": "digest", "digest_every": "1h", "format": "csv",
                   "events": ["transactions", "fraud-alerts"],
                   "emails": ["a@example.com", "b@example.com"], "risk_emails": []})
        );
        let d = document(&form(&[
            ("frequency", "per-event"),
            ("format", "json"),
            ("webhook_url", "https://example.com/h"),
            ("webhook_secret", "0123456789abcdef"),
        ]));
        assert_eq!(d["mode"], "per-event");
        assert!(d.get("digest_every").is_none());
        assert_eq!(d["events"], json!([]));
        assert_eq!(d["webhook_secret"], "0123456789abcdef");
    }
}
