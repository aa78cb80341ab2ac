//! The Reports page (`records:read` to see and download: owners, finance, auditors;
//! `reports:run` to request and acknowledge: owners, finance). The API's reports, the same
//! code (crate::reports): a request is queued and made by the runner of any replica; a ready
//! one downloads as a stream of its stored chunks (memory stays flat however large), and an
//! acknowledgement records who received it.
//!
//! The request form carries an idempotency key made when the page was drawn, so sending the
//! same form twice (a double click, a reload) queues one report, as the API's
//! `Idempotency-Key` does.

use super::html::{escape, form, notice, outcome, page, Outcome};
use super::pages::{
    audit, authorised, authorised_form, changed, in_scope, not_found, served, PageReply,
    PageRequest,
};
use super::session;
use crate::auth::Permission;
use crate::problem::Problem;
use crate::reports::{self, Request};
use crate::service::State;
use serde_json::Value;
use std::time::Duration;

pub(super) async fn show(state: &State, r: &PageRequest<'_>, done: Outcome) -> PageReply {
    let action = "portal.reports";
    let (person, scope, sid) = match authorised(state, r, Permission::RecordsRead, action).await {
        Ok(it) => it,
        Err(reply) => return reply,
    };
    let listed = match in_scope(state, &scope, async |s| reports::list(s).await).await {
        Ok(it) => it,
        Err(reply) => return reply,
    };
    if let Err(reply) = served(state, r, (&person, scope.merchant()), action).await {
        return reply;
    }
    let csrf = session::csrf_token(&sid);
    let run = person.role.allows(Permission::ReportsRun);
    let (mut main, status) = outcome(&done);
    let m = escape(scope.merchant());
    let rows: String = listed.iter().map(|rep| row(rep, &m, &csrf, run)).collect();
    main.push_str(&format!(
        r#"<div class="scroll"><table class="reports"><thead><tr><th>report</th><th>period (UTC)</th><th>format</th><th>status</th><th class="num">rows</th><th>acknowledged</th><th></th></tr></thead><tbody>{rows}</tbody></table></div>"#
    ));
    if run {
        let (idem, _) = session::new_id();
        // The overview's default period: the last two weeks through today.
        let (from, to) = super::pages::period(&Default::default(), std::time::SystemTime::now());
        let (first, last) = (
            super::pages::day_of(from),
            super::pages::day_of(to - Duration::from_secs(86_400)),
        );
        main.push_str("<h2>Request a report</h2>");
        main.push_str(&form(
            "/portal/reports",
            &csrf,
            &format!(
                r#"<input type="hidden" name="merchant" value="{m}"><input type="hidden" name="idempotency_key" value="{}">
<label for="from">First day (UTC)</label><input id="from" name="from" type="date" value="{first}" required>
<label for="to">Last day (UTC)</label><input id="to" name="to" type="date" value="{last}" required>
<label for="format">Format</label><select id="format" name="format"><option value="csv">CSV</option><option value="json">JSON</option></select>
<button type="submit">Request</button><p class="hint">Reports are made in the background: reload this page to see when yours is ready.</p>"#,
                escape(&idem[..32])
            ),
        ));
    }
    PageReply::html(status, page("Reports", Some((&person, &csrf)), &main))
}

/// One report's row: its download when ready, its acknowledgement button when not yet.
fn row(rep: &Value, m: &str, csrf: &str, run: bool) -> String {
    let t = |k: &str| escape(rep[k].as_str().unwrap_or("—"));
    let id = rep["id"].as_str().unwrap_or("");
    let ready = rep["status"] == "ready";
    let mut actions = String::new();
    if ready {
        actions.push_str(&format!(
            r#"<a class="download" href="/portal/reports/{0}/download?merchant={m}">Download</a>"#,
            escape(id)
        ));
    }
    if ready && run && rep["acknowledged_at"].is_null() {
        actions.push_str(&form(
            &format!("/portal/reports/{}/acknowledge", escape(id)),
            csrf,
            &format!(r#"<input type="hidden" name="merchant" value="{m}"><button type="submit">Acknowledge</button>"#),
        ));
    }
    format!(
        r#"<tr data-id="{}"><td><code>{}</code></td><td>{} – {}</td><td>{}</td><td class="status">{}</td><td class="num">{}</td><td class="acknowledged">{}</td><td>{actions}</td></tr>"#,
        escape(id),
        escape(id),
        t("period_from"),
        t("period_to"),
        t("format"),
        t("status"),
        rep["rows"].as_i64().map_or("—".into(), |n| n.to_string()),
        t("acknowledged_at"),
    )
}

/// Queues a report of the chosen UTC days (`reports:run`).
pub(super) async fn request(state: &State, r: &PageRequest<'_>) -> PageReply {
    let action = "portal.reports.request";
    let (person, scope, _, f) =
        match authorised_form(state, r, Permission::ReportsRun, action).await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let get = |k: &str| f.get(k).map(|v| v.trim()).unwrap_or("");
    let day = |k: &str| humantime::parse_rfc3339(&format!("{}T00:00:00Z", get(k))).ok();
    let idem = get("idempotency_key");
    let format = get("format");
    let mut errors = Vec::new();
    let (from, to) = (
        day("from"),
        day("to").map(|t| t + Duration::from_secs(86_400)),
    );
    if from.is_none() || to.is_none() || from >= to {
        errors.push("Choose a first and a last day, the last not before the first.".to_string());
    }
    if !matches!(format, "csv" | "json") {
        errors.push("Choose CSV or JSON.".to_string());
    }
    if idem.len() != 32 || !crate::query::is_ident(idem) {
        errors.push("This form has expired: reload the page.".to_string());
    }
    let who = (&person, scope.merchant());
    let (Some(from), Some(to), true) = (from, to, errors.is_empty()) else {
        if let Err(reply) = changed(state, r, who, action, "invalid", (None, None)).await {
            return reply;
        }
        return show(state, r, Some(Err(errors))).await;
    };
    let req = Request {
        from,
        to,
        format: format.to_string(),
    };
    let queued = in_scope(state, &scope, async |s| {
        Ok(reports::request(s, &person.id, idem, &req).await)
    })
    .await;
    let result = match queued {
        Err(reply) => return reply,
        Ok(Ok((report, new))) => {
            let after = new.then(|| report.to_string());
            if let Err(reply) = changed(state, r, who, action, "ok", (None, after)).await {
                return reply;
            }
            Ok(format!(
                "Report {} requested: it is made in the background.",
                report["id"].as_str().unwrap_or("")
            ))
        }
        Ok(Err(problem)) => {
            if let Err(reply) = changed(state, r, who, action, "invalid", (None, None)).await {
                return reply;
            }
            Err(problem.reasons())
        }
    };
    show(state, r, Some(result)).await
}

/// A ready report's file, streamed (`records:read`); audited with its row count.
pub(super) async fn download(state: &State, r: &PageRequest<'_>, id: &str) -> PageReply {
    let action = "portal.reports.download";
    let (person, scope, _) = match authorised(state, r, Permission::RecordsRead, action).await {
        Ok(it) => it,
        Err(reply) => return reply,
    };
    let who = (&person, scope.merchant());
    if id.len() > 64 || !crate::query::is_ident(id) {
        let _ = audit(state, r, Some(who), action, 404, "not_found").await;
        return not_found();
    }
    let found = match in_scope(state, &scope, async |s| Ok(reports::download(s, id).await)).await {
        Ok(it) => it,
        Err(reply) => return reply,
    };
    match found {
        Ok(Some((d, rows))) => {
            let rec = posflow_schema::AuditRecord {
                row_count: rows as i32,
                ..super::pages::record(r, Some(who), action, 200, "ok")
            };
            if state.auditor.record(rec).await.is_err() {
                return super::pages::unavailable();
            }
            PageReply::download(d)
        }
        Ok(None) => {
            let _ = audit(state, r, Some(who), action, 404, "not_found").await;
            not_found()
        }
        Err(problem) => {
            let _ = audit(state, r, Some(who), action, 409, "conflict").await;
            let why = problem.reasons().join("; ");
            PageReply::html(409, page("Reports", None, &notice("error", &why)))
        }
    }
}

/// Records that the merchant received a ready report (`reports:run`).
pub(super) async fn acknowledge(state: &State, r: &PageRequest<'_>, id: &str) -> PageReply {
    let action = "portal.reports.acknowledge";
    let (person, scope, _, _) =
        match authorised_form(state, r, Permission::ReportsRun, action).await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let acked = in_scope(state, &scope, async |s| {
        Ok(reports::acknowledge(s, id, &person.id).await)
    })
    .await;
    let who = (&person, scope.merchant());
    let result = match acked {
        Err(reply) => return reply,
        Ok(Ok(Some((before, after)))) => {
            let pick = |v: &Value| {
                serde_json::json!({"acknowledged_at": v["acknowledged_at"]}).to_string()
            };
            let change = (Some(pick(&before)), Some(pick(&after)));
            if let Err(reply) = changed(state, r, who, action, "ok", change).await {
                return reply;
            }
            Ok(format!("Report {id} acknowledged."))
        }
        Ok(Ok(None)) => Err(Problem::NotFound.reasons()),
        Ok(Err(problem)) => Err(problem.reasons()),
    };
    if let Err(why) = &result {
        let outcome = if why == &Problem::NotFound.reasons() {
            "not_found"
        } else {
            "invalid"
        };
        if let Err(reply) = changed(state, r, who, action, outcome, (None, None)).await {
            return reply;
        }
    }
    show(state, r, Some(result)).await
}
