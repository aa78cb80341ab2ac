//! The Deliveries page (`events:read`: owners, developers, auditors): the merchant's recent
//! notification events, each delivery (an event on a channel) with its status, attempts and
//! last error, newest first, 50 a page, filtered by status, event type and channel — the API's
//! own search (events::search, its parsing and signed cursors). One delivery's page lists
//! every attempt. `events:redeliver` (owners, developers) adds a button to deliver a finished
//! one again: the same outbox row under the same idempotency key, so a receiver that did get
//! it de-duplicates (events::redeliver_one, as the API does it).

use super::html::{escape, filter_options, form, notice, outcome, page, Outcome};
use super::pages::{
    audit, authorised, authorised_form, changed, in_scope, not_found, served, PageReply,
    PageRequest,
};
use super::session;
use crate::auth::Permission;
use crate::events::{self, EventFilter, EVENT_PARAMS};
use crate::query::Params;
use crate::service::State;
use serde_json::Value;
use std::collections::HashMap;

/// The route name cursors are signed for.
const ROUTE: &str = "portal.deliveries";

/// The filters a person chooses: (field, label, choices).
const FILTERS: [(&str, &str, &[&str]); 3] = [
    ("status", "Status", &["pending", "delivered", "failed"]),
    (
        "event_type",
        "Event",
        &["transaction", "refund", "fraud_alert", "digest"],
    ),
    ("channel", "Channel", &["webhook", "email"]),
];

pub(super) async fn search(state: &State, r: &PageRequest<'_>, done: Outcome) -> PageReply {
    let action = "portal.deliveries";
    let (person, scope, sid) = match authorised(state, r, Permission::EventsRead, action).await {
        Ok(it) => it,
        Err(reply) => return reply,
    };
    let q = r.query();
    let qs = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            ["status", "event_type", "channel", "cursor"]
                .iter()
                .filter_map(|k| q.get(*k).filter(|v| !v.is_empty()).map(|v| (*k, v))),
        )
        .finish();
    let mut p = Params::parse(Some(&qs), EVENT_PARAMS);
    let after = p.cursor(&state.cursor_key, ROUTE);
    let f = EventFilter::parse(&mut p, after);
    let refused = p.finish().err().map(|problem| problem.reasons());
    let found = match refused {
        Some(_) => None,
        None => match in_scope(state, &scope, async |s| events::search(s, f).await).await {
            Ok(page) => Some(page),
            Err(reply) => return reply,
        },
    };
    if let Err(reply) = served(state, r, (&person, scope.merchant()), action).await {
        return reply;
    }
    let csrf = session::csrf_token(&sid);
    let (mut main, status) = outcome(&done);
    main.push_str(&filter_form(&q, scope.merchant()));
    match (found, refused) {
        (Some(page_), _) => {
            let redeliver = person.role.allows(Permission::EventsRedeliver);
            let records = person.role.allows(Permission::RecordsRead);
            main.push_str(&table(
                &page_.items,
                scope.merchant(),
                &csrf,
                (redeliver, records),
            ));
            if let Some(pos) = page_.next {
                let mut keep: Vec<(&String, &String)> =
                    q.iter().filter(|(k, _)| *k != "cursor").collect();
                keep.sort();
                let next = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(keep)
                    .append_pair("cursor", &p.next_cursor(&state.cursor_key, ROUTE, &pos))
                    .finish();
                main.push_str(&format!(
                    r#"<p class="pager"><a rel="next" href="/portal/deliveries?{}">Older</a></p>"#,
                    escape(&next)
                ));
            }
        }
        (None, Some(why)) => main.push_str(&notice("error", &why.join("; "))),
        (None, None) => {}
    }
    PageReply::html(status, page("Deliveries", Some((&person, &csrf)), &main))
}

fn filter_form(q: &HashMap<String, String>, merchant: &str) -> String {
    let selects: String = FILTERS
        .iter()
        .map(|(k, label, choices)| {
            let options = filter_options(q.get(*k).map(String::as_str), choices);
            format!(
                r#"<label for="{k}">{label}</label><select id="{k}" name="{k}">{options}</select>"#
            )
        })
        .collect();
    format!(
        r#"<form method="get" action="/portal/deliveries" class="filters"><input type="hidden" name="merchant" value="{}">{selects}<button type="submit">Show</button></form>"#,
        escape(merchant)
    )
}

/// The deliveries; `may` = (redeliver, read records: link the transaction).
fn table(items: &[Value], merchant: &str, csrf: &str, may: (bool, bool)) -> String {
    let m = escape(merchant);
    let rows: String = items
        .iter()
        .map(|e| {
            let t = |k: &str| escape(e[k].as_str().unwrap_or("—"));
            let id = e["id"].as_i64().unwrap_or(0);
            let event = match (e["event_id"].as_str(), e["event_type"].as_str()) {
                (Some(ev), Some("transaction" | "refund")) if may.1 => format!(
                    r#"<a href="/portal/transactions/{0}?merchant={m}">{0}</a>"#,
                    escape(ev)
                ),
                (Some(ev), _) => escape(ev),
                (None, _) => "—".into(),
            };
            let button = if may.0 && e["status"] != "pending" {
                form(
                    &format!("/portal/deliveries/{id}/redeliver"),
                    csrf,
                    &format!(r#"<input type="hidden" name="merchant" value="{m}"><button type="submit">Redeliver</button>"#),
                )
            } else {
                String::new()
            };
            format!(
                r#"<tr data-id="{id}"><td><a href="/portal/deliveries/{id}?merchant={m}">{}</a></td><td>{}</td><td>{event}</td><td>{}</td><td class="status">{}</td><td class="num attempts">{}</td><td>{}</td><td>{button}</td></tr>"#,
                t("created_at"),
                t("event_type"),
                t("channel"),
                t("status"),
                e["attempts"],
                t("last_error"),
            )
        })
        .collect();
    format!(
        r#"<div class="scroll"><table class="deliveries"><thead><tr><th>created (UTC)</th><th>event</th><th>id</th><th>channel</th><th>status</th><th class="num">attempts</th><th>last error</th><th></th></tr></thead><tbody>{rows}</tbody></table></div>"#
    )
}

/// One delivery and every attempt at it.
pub(super) async fn one(state: &State, r: &PageRequest<'_>, id: &str) -> PageReply {
    let action = "portal.delivery";
    let (person, scope, sid) = match authorised(state, r, Permission::EventsRead, action).await {
        Ok(it) => it,
        Err(reply) => return reply,
    };
    let id = id.parse::<i64>().ok().filter(|n| *n > 0);
    let found = match id {
        Some(id) => match in_scope(state, &scope, async |s| events::attempts(s, id).await).await {
            Ok(it) => it,
            Err(reply) => return reply,
        },
        None => None,
    };
    let who = (&person, scope.merchant());
    let Some(e) = found else {
        let _ = audit(state, r, Some(who), action, 404, "not_found").await;
        return not_found();
    };
    if let Err(reply) = served(state, r, who, action).await {
        return reply;
    }
    let rows: String = e["attempt_history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let t = |k: &str| match &a[k] {
                Value::Null => "—".to_string(),
                Value::String(s) => escape(s),
                v => v.to_string(),
            };
            format!(
                "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                t("attempt"), t("at"), t("outcome"), t("status_code"), t("duration_ms"), t("error")
            )
        })
        .collect();
    let main = format!(
        r#"<p>{} on {}: <strong class="status">{}</strong>, idempotency key <code>{}</code>.</p>
<table class="attempts"><thead><tr><th class="num">attempt</th><th>at (UTC)</th><th>outcome</th><th class="num">HTTP</th><th class="num">ms</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>
<p><a href="/portal/deliveries?merchant={}">All deliveries</a></p>"#,
        escape(e["event_type"].as_str().unwrap_or("")),
        escape(e["channel"].as_str().unwrap_or("")),
        escape(e["status"].as_str().unwrap_or("")),
        escape(e["idempotency_key"].as_str().unwrap_or("")),
        escape(scope.merchant()),
    );
    let csrf = session::csrf_token(&sid);
    PageReply::html(200, page("Delivery", Some((&person, &csrf)), &main))
}

/// Delivers a finished delivery again (`events:redeliver`).
pub(super) async fn redeliver(state: &State, r: &PageRequest<'_>, id: &str) -> PageReply {
    let action = "portal.deliveries.redeliver";
    let (person, scope, _, _) =
        match authorised_form(state, r, Permission::EventsRedeliver, action).await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let Some(id) = id.parse::<i64>().ok().filter(|n| *n > 0) else {
        return not_found();
    };
    let done = in_scope(state, &scope, async |s| {
        Ok(events::redeliver_one(s, id).await)
    })
    .await;
    let who = (&person, scope.merchant());
    let result = match done {
        Err(reply) => return reply,
        Ok(Ok((before, after))) => {
            let change = (Some(before.to_string()), Some(after.to_string()));
            if let Err(reply) = changed(state, r, who, action, "ok", change).await {
                return reply;
            }
            Ok(format!(
                "Delivery {id} will be delivered again, under its idempotency key."
            ))
        }
        Ok(Err(problem)) => {
            let outcome = if problem == crate::problem::Problem::NotFound {
                "not_found"
            } else {
                "invalid"
            };
            if let Err(reply) = changed(state, r, who, action, outcome, (None, None)).await {
                return reply;
            }
            Err(problem.reasons())
        }
    };
    search(state, r, Some(result)).await
}
