//! The Audit log page (owners, auditors: `audit:read`): the merchant's records of the
//! hash-chained trail — the API's requests and the portal's steps alike — newest first, 50 a
//! page, filtered by action (a prefix: `portal.`, `settings.update`), by person (their email)
//! or key id, and by outcome. A change shows, under its record, each field it changed: before
//! → after. Reading it is a
//! record too.

use super::html::{escape, page};
use super::pages::{authorised, in_scope, served, PageReply, PageRequest};
use super::{people, session};
use crate::audit::{self, AuditFilter};
use crate::auth::Permission;
use crate::query::Position;
use crate::service::State;
use serde_json::Value;
use std::collections::HashMap;

const PAGE_ROWS: i64 = 50;

pub(super) async fn show(state: &State, r: &PageRequest<'_>) -> PageReply {
    let action = "portal.audit";
    let (person, scope, sid) = match authorised(state, r, Permission::AuditRead, action).await {
        Ok(it) => it,
        Err(reply) => return reply,
    };
    let q = r.query();
    let get = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let before = get("before")
        .and_then(|v| v.parse::<i64>().ok())
        .map(|t| Position {
            t,
            id: String::new(),
        });
    let who = get("who").map(str::to_string);
    let loaded = in_scope(state, &scope, async |s| {
        // A person is named by email; the trail records their id.
        let actor = match &who {
            Some(w) if w.contains('@') => Some(
                people::id_of(&s.tx, w)
                    .await?
                    .unwrap_or_else(|| "(nobody)".into()),
            ),
            other => other.clone(),
        };
        let filter = AuditFilter {
            action: get("action").map(str::to_string),
            actor,
            outcome: get("outcome").map(str::to_string),
        };
        let page = audit::page(s, PAGE_ROWS, before, &filter).await?;
        let actors: Vec<String> = page
            .items
            .iter()
            .filter_map(|i| i["actor"].as_str().map(str::to_string))
            .collect();
        let emails = people::emails_of(&s.tx, &actors).await?;
        Ok((page, emails))
    })
    .await;
    let (page_, emails) = match loaded {
        Ok(it) => it,
        Err(reply) => return reply,
    };
    if let Err(reply) = served(state, r, (&person, scope.merchant()), action).await {
        return reply;
    }
    let mut main = filter_form(&q, scope.merchant());
    main.push_str(&table(&page_.items, &emails));
    if let Some(next) = page_.next {
        let mut keep: Vec<(&String, &String)> = q.iter().filter(|(k, _)| *k != "before").collect();
        keep.sort();
        let qs = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(keep)
            .append_pair("before", &next.t.to_string())
            .finish();
        main.push_str(&format!(
            r#"<p class="pager"><a rel="next" href="/portal/audit?{}">Older</a></p>"#,
            escape(&qs)
        ));
    }
    let csrf = session::csrf_token(&sid);
    PageReply::html(200, page("Audit log", Some((&person, &csrf)), &main))
}

fn filter_form(q: &HashMap<String, String>, merchant: &str) -> String {
    let v = |k: &str| escape(q.get(k).map(String::as_str).unwrap_or(""));
    format!(
        r#"<form method="get" action="/portal/audit" class="filters"><input type="hidden" name="merchant" value="{}">
<label for="action">Action starts with</label><input id="action" name="action" type="text" value="{}" placeholder="portal.notifications">
<label for="who">Who (email or key id)</label><input id="who" name="who" type="text" value="{}">
<label for="outcome">Outcome</label><input id="outcome" name="outcome" type="text" value="{}" placeholder="ok, forbidden, refused, csrf">
<button type="submit">Filter</button></form>"#,
        escape(merchant),
        v("action"),
        v("who"),
        v("outcome"),
    )
}

/// A JSON value for a person: compact, `—` for none, lists as `a, b`.
fn shown(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "—".into(),
        Value::Array(a) => a.iter().map(shown).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// What a change changed: (field, before, after) for each top-level field that differs (the
/// whole values when they are not both objects). Nothing for a record that changed nothing.
fn diff(before: &Value, after: &Value) -> Vec<(String, String, String)> {
    let empty = serde_json::Map::new();
    let fields = |v: &Value| match v {
        Value::Object(m) => Some(m.clone()),
        Value::Null => Some(empty.clone()),
        _ => None,
    };
    let (Some(b), Some(a)) = (fields(before), fields(after)) else {
        return vec![(String::new(), shown(before), shown(after))];
    };
    let mut names: Vec<&String> = b.keys().chain(a.keys()).collect();
    names.sort();
    names.dedup();
    let none = Value::Null;
    names
        .into_iter()
        .filter(|f| f.as_str() != "updated_at")
        .map(|f| (f, b.get(f).unwrap_or(&none), a.get(f).unwrap_or(&none)))
        .filter(|(_, b, a)| b != a)
        .map(|(f, b, a)| (f.clone(), shown(b), shown(a)))
        .collect()
}

fn table(items: &[Value], emails: &HashMap<String, String>) -> String {
    let rows: String = items
        .iter()
        .map(|i| {
            let actor = i["actor"].as_str().unwrap_or("");
            let who = emails.get(actor).map_or(actor, String::as_str);
            let change: String = diff(&i["before"], &i["after"])
                .iter()
                .map(|(field, b, a)| {
                    format!(
                        "<li><b>{}</b>: {} → {}</li>",
                        escape(field),
                        escape(b),
                        escape(a)
                    )
                })
                .collect();
            let change = if change.is_empty() {
                change
            } else {
                format!(r#"<tr class="change"><td colspan="6"><ul class="diff">{change}</ul></td></tr>"#)
            };
            format!(
                r#"<tbody data-seq="{}"><tr><td>{}</td><td>{}</td><td>{}</td><td class="action">{}</td><td class="outcome">{}</td><td>{}</td></tr>{change}</tbody>"#,
                i["seq"],
                escape(i["at"].as_str().unwrap_or("")),
                escape(if who.is_empty() { "(not signed in)" } else { who }),
                escape(i["role"].as_str().unwrap_or("")),
                escape(i["action"].as_str().unwrap_or("")),
                escape(i["outcome"].as_str().unwrap_or("")),
                escape(i["resource"].as_str().unwrap_or("")),
            )
        })
        .collect();
    format!(
        r#"<div class="scroll"><table class="audit"><thead><tr><th>time (UTC)</th><th>who</th><th>role</th><th>action</th><th>outcome</th><th>request</th></tr></thead>{rows}</table></div>"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_change_shows_only_what_changed() {
        let before = json!({"mode": "per-event", "digest_every": null, "format": "json",
                            "emails": ["a@example.com"], "updated_at": "t1"});
        let after = json!({"mode": "digest", "digest_every": "1h", "format": "csv",
                           "emails": ["a@example.com"], "updated_at": "t2", "webhook_secret_changed": true});
        assert_eq!(
            diff(&before, &after),
            [
                ("digest_every".into(), "—".into(), "1h".into()),
                ("format".into(), "json".into(), "csv".into()),
                ("mode".into(), "per-event".into(), "digest".into()),
                ("webhook_secret_changed".into(), "—".into(), "true".into()),
            ]
        );
        assert!(diff(&Value::Null, &Value::Null).is_empty());
        assert_eq!(
            diff(&Value::Null, &json!({"email": "b@example.com"})),
            [(
                "email".to_string(),
                "—".to_string(),
                "b@example.com".to_string()
            )]
        );
        assert_eq!(
            diff(&json!("x"), &json!(1)),
            [(String::new(), "x".to_string(), "1".to_string())]
        );
    }
}
