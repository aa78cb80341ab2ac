//! The Transactions pages: a search form over the API's own filters (records::TransactionFilter,
//! the same parsing, checks and signed cursors), a page of results as a table, the same search
//! as CSV (the reports' columns and cell rules), and one transaction's page with its line
//! items, fraud alerts and deliveries.
//!
//! The form speaks a person's language and is translated to the API's parameters: times are
//! UTC `datetime-local` values, amounts are in the currency's major units.

use super::html::{escape, filter_options, notice, page};
use super::pages::{audit, authorised, not_found, served, unavailable, PageReply, PageRequest};
use super::session;
use crate::auth::Permission;
use crate::db::{AppFilter, Scoped};
use crate::query::Params;
use crate::records::{self, TransactionFilter, TRANSACTION_PARAMS};
use crate::service::State;
use posflow_schema::currency::{format_minor, minor_units};
use std::collections::HashMap;

/// The route name cursors are signed for (a portal cursor is not an API one).
const ROUTE: &str = "portal.transactions";
/// Rows a CSV download holds at most (the search's first this many, newest first).
pub const CSV_MAX_ROWS: usize = 10_000;

/// The API's query string for the form's fields (and `None` for each field it cannot read, with
/// why, shown next to the form).
fn api_query(form: &HashMap<String, String>) -> (String, Vec<String>) {
    let mut q = form_urlencoded::Serializer::new(String::new());
    let mut errors = Vec::new();
    let get = |k: &str| form.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    for k in ["from", "to"] {
        if let Some(v) = get(k) {
            // `datetime-local` gives minutes (and maybe seconds), no zone: the form says UTC.
            let t = if v.len() == 16 {
                format!("{v}:00Z")
            } else {
                format!("{v}Z")
            };
            q.append_pair(k, &t);
        }
    }
    let units = get("currency").and_then(minor_units).unwrap_or(2) as u32;
    for (k, api) in [("min", "min_amount"), ("max", "max_amount")] {
        if let Some(v) = get(k) {
            match to_minor(v, units) {
                Some(m) => {
                    q.append_pair(api, &m.to_string());
                }
                None => errors.push(format!("{k}: {v:?} is not an amount")),
            }
        }
    }
    for k in ["currency", "terminal", "type", "last4", "outcome", "cursor"] {
        if let Some(v) = get(k) {
            q.append_pair(k, v);
        }
    }
    (q.finish(), errors)
}

/// "12.5" → 1250 with 2 minor units; `None` for more decimals than the currency has, a sign,
/// or anything not a number.
fn to_minor(v: &str, units: u32) -> Option<i64> {
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > units as usize
    {
        return None;
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().ok()? * 10i64.pow(units - frac.len() as u32)
    };
    whole.checked_mul(10i64.pow(units))?.checked_add(frac)
}

/// One page of the search, or why the search is refused.
async fn run(
    s: &Scoped<'_>,
    state: &State,
    form: &HashMap<String, String>,
) -> Result<Result<(records::Page<records::Transaction>, Params), Vec<String>>, posflow_pg::DbError>
{
    let (qs, mut errors) = api_query(form);
    let mut p = Params::parse(Some(&qs), TRANSACTION_PARAMS);
    let after = p.cursor(&state.cursor_key, ROUTE);
    let f = TransactionFilter::parse(&mut p, after);
    if let Err(problem) = p.finish() {
        errors.extend(problem.reasons());
    }
    if !errors.is_empty() {
        return Ok(Err(errors));
    }
    Ok(Ok((records::search_transactions(s, f).await?, p)))
}

fn search_form(form: &HashMap<String, String>, merchant: &str) -> String {
    let v = |k: &str| escape(form.get(k).map(String::as_str).unwrap_or(""));
    let options = |field: &str, choices: &[&str]| {
        filter_options(form.get(field).map(String::as_str), choices)
    };
    let types = options("type", &records::TYPES);
    let outcomes = options("outcome", &["approved", "declined"]);
    format!(
        r#"<form method="get" action="/portal/transactions" class="search">
<input type="hidden" name="merchant" value="{}">
<label for="from">From (UTC)</label><input id="from" name="from" type="datetime-local" value="{}">
<label for="to">To (UTC)</label><input id="to" name="to" type="datetime-local" value="{}">
<label for="min">Amount from</label><input id="min" name="min" inputmode="decimal" value="{}">
<label for="max">Amount to</label><input id="max" name="max" inputmode="decimal" value="{}">
<label for="currency">Currency</label><input id="currency" name="currency" maxlength="3" value="{}">
<label for="terminal">Terminal</label><input id="terminal" name="terminal" value="{}">
<label for="type">Type</label><select id="type" name="type">{types}</select>
<label for="last4">Card, last four</label><input id="last4" name="last4" inputmode="numeric" maxlength="4" value="{}">
<label for="outcome">Outcome</label><select id="outcome" name="outcome">{outcomes}</select>
<button type="submit">Search</button></form>"#,
        escape(merchant),
        v("from"),
        v("to"),
        v("min"),
        v("max"),
        v("currency"),
        v("terminal"),
        v("last4"),
    )
}

/// `/portal/transactions`: the form, a page of results, next page, CSV.
pub(super) async fn search(state: &State, r: &PageRequest<'_>) -> PageReply {
    let (person, scope, sid) =
        match authorised(state, r, Permission::RecordsRead, "portal.transactions").await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let form = r.query();
    let Ok(mut c) = state.pool.get().await else {
        return unavailable();
    };
    let result = async {
        let s = Scoped::begin(&mut c, &scope, AppFilter::Enforced).await?;
        let out = run(&s, state, &form).await?;
        s.commit().await?;
        Ok::<_, posflow_pg::DbError>(out)
    }
    .await;
    let Ok(result) = result else {
        return unavailable();
    };
    let mut main = search_form(&form, scope.merchant());
    let (status, rows) = match result {
        Err(errors) => {
            main.push_str(&notice("error", &errors.join("; ")));
            (400, 0)
        }
        Ok((page, p)) => {
            main.push_str(&table(&page.items, scope.merchant()));
            let mut keep: Vec<(&String, &String)> =
                form.iter().filter(|(k, _)| *k != "cursor").collect();
            keep.sort();
            let base = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(keep)
                .finish();
            main.push_str(&format!(
                r#"<p class="pager"><a href="/portal/transactions.csv?{}">Download CSV</a>"#,
                escape(&base)
            ));
            if let Some(pos) = page.next {
                let next = p.next_cursor(&state.cursor_key, ROUTE, &pos);
                let qs = form_urlencoded::Serializer::new(base)
                    .append_pair("cursor", &next)
                    .finish();
                main.push_str(&format!(
                    r#" · <a rel="next" href="/portal/transactions?{}">Next page</a>"#,
                    escape(&qs)
                ));
            }
            main.push_str("</p>");
            (200, page.items.len())
        }
    };
    let outcome = if status == 200 { "ok" } else { "invalid" };
    let rec = crate::portal::pages::record(
        r,
        Some((&person, scope.merchant())),
        "portal.transactions",
        status,
        outcome,
    );
    let rec = posflow_schema::AuditRecord {
        filter: serde_json::to_string(&form).unwrap_or_default(),
        row_count: rows as i32,
        ..rec
    };
    if state.auditor.record(rec).await.is_err() {
        return unavailable();
    }
    let csrf = session::csrf_token(&sid);
    PageReply::html(status, page("Transactions", Some((&person, &csrf)), &main))
}

/// The results table: what a person needs to recognise a payment (card as BIN and last four,
/// never more: nothing more is stored).
fn table(items: &[records::Transaction], merchant: &str) -> String {
    if items.is_empty() {
        return notice("ok", "No transactions match.");
    }
    let mut t = String::from(
        r#"<table class="transactions"><thead><tr><th>time (UTC)</th><th>terminal</th><th>type</th><th class="num">amount</th><th>card</th><th>response</th><th>auth code</th></tr></thead><tbody>"#,
    );
    for it in items {
        let row = it.row();
        let card = match (
            row.get::<_, Option<&str>>("card_bin"),
            row.get::<_, Option<&str>>("card_last4"),
        ) {
            (Some(b), Some(l)) => format!("{b}…{l}"),
            (None, Some(l)) => format!("…{l}"),
            _ => String::new(),
        };
        let id: &str = row.get("transaction_id");
        let currency: &str = row.get("currency");
        t.push_str(&format!(
            r#"<tr data-id="{id}"><td><a href="/portal/transactions/{id}?merchant={m}">{time}</a></td><td>{term}</td><td>{kind}</td><td class="num" data-minor="{minor}">{amount} {cur}</td><td>{card}</td><td>{resp}</td><td>{auth}</td></tr>"#,
            id = escape(id),
            m = escape(merchant),
            time = records::rfc3339(row.get("transaction_time")),
            term = escape(row.get("terminal_id")),
            kind = escape(row.get("type")),
            minor = row.get::<_, i64>("amount_minor"),
            amount = format_minor(row.get::<_, i64>("amount_minor"), currency),
            cur = escape(currency),
            card = escape(&card),
            resp = escape(row.get("response_code")),
            auth = escape(row.get::<_, Option<&str>>("auth_code").unwrap_or("")),
        ));
    }
    t.push_str("</tbody></table>");
    t
}

/// `/portal/transactions.csv`: the whole search (up to [`CSV_MAX_ROWS`]) as CSV.
pub(super) async fn csv(state: &State, r: &PageRequest<'_>) -> PageReply {
    let (person, scope, _) =
        match authorised(state, r, Permission::RecordsRead, "portal.transactions.csv").await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let mut form = r.query();
    form.insert("limit".into(), "500".into());
    let Ok(mut c) = state.pool.get().await else {
        return unavailable();
    };
    let result = async {
        let s = Scoped::begin(&mut c, &scope, AppFilter::Enforced).await?;
        let out = csv_body(&s, state, &mut form).await?;
        s.commit().await?;
        Ok::<_, posflow_pg::DbError>(out)
    }
    .await;
    let Ok((out, rows, refused)) = result else {
        return unavailable();
    };
    form.remove("cursor");
    form.remove("limit");
    let rec = posflow_schema::AuditRecord {
        filter: serde_json::to_string(&form).unwrap_or_default(),
        row_count: rows as i32,
        ..crate::portal::pages::record(
            r,
            Some((&person, scope.merchant())),
            "portal.transactions.csv",
            200,
            if refused.is_some() { "invalid" } else { "ok" },
        )
    };
    if state.auditor.record(rec).await.is_err() {
        return unavailable();
    }
    if let Some(errors) = refused {
        return PageReply::html(
            400,
            page("Transactions", None, &notice("error", &errors.join("; "))),
        );
    }
    let disposition = format!(
        "attachment; filename=\"transactions-{}.csv\"",
        scope.merchant()
    );
    PageReply::new(
        200,
        vec![
            ("content-type", "text/csv; charset=utf-8".into()),
            ("content-disposition", disposition),
        ],
        out.into_bytes(),
    )
}

/// The search's rows as CSV, page after page (up to [`CSV_MAX_ROWS`]): the text, how many
/// rows, or why the search is refused.
async fn csv_body(
    s: &Scoped<'_>,
    state: &State,
    form: &mut HashMap<String, String>,
) -> Result<(String, usize, Option<Vec<String>>), posflow_pg::DbError> {
    let mut out = crate::reports::csv_header();
    let mut rows = 0usize;
    loop {
        let (page, p) = match run(s, state, form).await? {
            Ok(it) => it,
            Err(errors) => return Ok((out, rows, Some(errors))),
        };
        for it in page.items.iter().take(CSV_MAX_ROWS - rows) {
            out.push_str(&crate::reports::csv_line(it.row()));
        }
        rows = (rows + page.items.len()).min(CSV_MAX_ROWS);
        match page.next {
            Some(pos) if rows < CSV_MAX_ROWS => {
                form.insert(
                    "cursor".into(),
                    p.next_cursor(&state.cursor_key, ROUTE, &pos),
                );
            }
            _ => return Ok((out, rows, None)),
        }
    }
}

/// `/portal/transactions/<id>`: one transaction, its line items, alerts and deliveries; another
/// merchant's id (or none) is 404, audited.
pub(super) async fn one(state: &State, r: &PageRequest<'_>, id: &str) -> PageReply {
    let (person, scope, sid) =
        match authorised(state, r, Permission::RecordsRead, "portal.transaction").await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let Ok(mut c) = state.pool.get().await else {
        return unavailable();
    };
    let found = async {
        // An id that cannot be one is not looked up: not found, like another merchant's.
        if id.len() > 64 || !crate::query::is_ident(id) {
            return Ok(None);
        }
        let s = Scoped::begin(&mut c, &scope, AppFilter::Enforced).await?;
        let t = crate::detail::transaction(&s, id).await?;
        s.commit().await?;
        Ok::<_, posflow_pg::DbError>(t)
    }
    .await;
    let Ok(found) = found else {
        return unavailable();
    };
    let Some(t) = found else {
        let _ = audit(
            state,
            r,
            Some((&person, scope.merchant())),
            "portal.transaction",
            404,
            "not_found",
        )
        .await;
        return not_found();
    };
    if let Err(reply) = served(state, r, (&person, scope.merchant()), "portal.transaction").await {
        return reply;
    }
    let csrf = session::csrf_token(&sid);
    PageReply::html(
        200,
        page("Transaction", Some((&person, &csrf)), &detail_html(&t)),
    )
}

fn detail_html(t: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| {
        escape(&match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        })
    };
    let cur = t["currency"].as_str().unwrap_or("");
    let amount = format_minor(t["amount_minor"].as_i64().unwrap_or(0), cur);
    let mut h = format!(
        r#"<dl class="transaction"><dt>id</dt><dd id="transaction-id">{}</dd><dt>time (UTC)</dt><dd>{}</dd><dt>terminal</dt><dd>{}</dd><dt>type</dt><dd>{}</dd><dt>amount</dt><dd>{amount} {}</dd><dt>card</dt><dd>{}…{}</dd><dt>response</dt><dd>{}</dd><dt>auth code</dt><dd>{}</dd></dl>"#,
        s(&t["transaction_id"]),
        s(&t["transaction_time"]),
        s(&t["terminal_id"]),
        s(&t["type"]),
        escape(cur),
        s(&t["card"]["bin"]),
        s(&t["card"]["last4"]),
        s(&t["response_code"]),
        s(&t["auth_code"]),
    );
    h.push_str(r#"<h2>Line items</h2><table class="line-items"><tr><th>#</th><th>sku</th><th>description</th><th class="num">unit price</th><th class="num">quantity</th></tr>"#);
    for li in t["line_items"].as_array().into_iter().flatten() {
        h.push_str(&format!(
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            s(&li["line_no"]), s(&li["sku"]), s(&li["description"]),
            format_minor(li["unit_price_minor"].as_i64().unwrap_or(0), cur), s(&li["quantity"]),
        ));
    }
    h.push_str("</table>");
    let section = |h: &mut String,
                   title: &str,
                   items: &serde_json::Value,
                   line: &dyn Fn(&serde_json::Value) -> String| {
        h.push_str(&format!("<h2>{title}</h2>"));
        let items = items.as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            h.push_str("<p>None.</p>");
        }
        for it in &items {
            h.push_str(&line(it));
        }
    };
    section(&mut h, "Fraud alerts", &t["fraud_alerts"], &|a| {
        format!(
            "<p class=\"alert\">{} · {} · {}</p>",
            s(&a["rule_id"]),
            s(&a["severity"]),
            s(&a["detected_at"])
        )
    });
    section(&mut h, "Deliveries", &t["deliveries"], &|d| {
        format!(
            "<p class=\"delivery\">{} · {} · {} attempt(s)</p>",
            s(&d["channel"]),
            s(&d["status"]),
            s(&d["attempts"])
        )
    });
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_in_major_units_become_minor_ones_exactly() {
        assert_eq!(to_minor("12.5", 2), Some(1250));
        assert_eq!(to_minor("12", 2), Some(1200));
        assert_eq!(to_minor(".05", 2), Some(5));
        assert_eq!(to_minor("1000", 0), Some(1000));
        assert_eq!(to_minor("1.234", 3), Some(1234));
        for bad in ["1.234", "-1", "1e3", "", ".", "1,5", "12.5.1"] {
            assert_eq!(to_minor(bad, 2), None, "{bad:?}");
        }
    }

    #[test]
    fn the_form_becomes_the_api_s_query() {
        let form: HashMap<String, String> = [
            ("from", "2026-11-30T10:00"),
            ("to", "2026-11-30T11:30:15"),
            ("min", "10.00"),
            ("max", ""),
            ("currency", "EUR"),
            ("last4", "0042"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (q, errors) = api_query(&form);
        assert!(errors.is_empty());
        assert_eq!(
            q,
            "from=2026-11-30T10%3A00%3A00Z&to=2026-11-30T11%3A30%3A15Z&min_amount=1000&currency=EUR&last4=0042"
        );
        let (_, errors) = api_query(&[("min".to_string(), "ten".to_string())].into());
        assert_eq!(errors, vec!["min: \"ten\" is not an amount"]);
    }
}
