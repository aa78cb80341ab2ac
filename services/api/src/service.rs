//! One request, start to end: route, rate limits, authentication, tenancy, permission, the
//! handler in a scoped transaction, then the audit record — written before the response
//! leaves, whatever the outcome.

use crate::audit::Auditor;
use crate::auth::{Principal, Role};
use crate::db::{AppFilter, Pool, Scope, Scoped};
use crate::events::{self, EventFilter};
use crate::keys::{self, KeyInput};
use crate::problem::Problem;
use crate::query::{is_ident, CursorKey, Params};
use crate::records::{self, AlertFilter, RejectionFilter, TransactionFilter};
use crate::reports;
use crate::routes::{self, Action, Found, Method, Route};
use crate::settings;
use bytes::Bytes;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use posflow_notifier::egress::Egress;
use posflow_notifier::sealed::Keys;
use posflow_runtime::metrics::{counter_vec, histogram_vec};
use posflow_schema::AuditRecord;
use prometheus::{HistogramVec, IntCounterVec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Header an operator states its reason in.
pub const REASON_HEADER: &str = "posflow-reason";
/// Failed authentications per source per minute before it is refused for a minute.
pub const AUTH_FAILURES_PER_MINUTE: u32 = 20;

pub struct State {
    pub pool: Pool,
    pub auditor: Auditor,
    pub cursor_key: CursorKey,
    pub egress: Egress,
    pub seal: Keys,
    pub openapi: String,
    /// How the portal emails invitations (`--portal-url` and SMTP); `None`: it cannot invite.
    pub invitations: Option<crate::portal::invite::Invitations>,
    per_key: DefaultKeyedRateLimiter<String>,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    blocked: DashMap<IpAddr, Instant>,
    touched: DashMap<String, Instant>,
    /// Keys verified lately: SHA-256 of the whole presented key → the principal and when it was
    /// looked up. Saves a database round trip per request; a key revoked elsewhere (another
    /// replica, the CLI) stops working within `key_cache` (on this replica: at once).
    verified: DashMap<Vec<u8>, (Principal, Instant)>,
    key_cache: Duration,
}

impl State {
    /// How long `source` is still refused after too many failed authentications (API keys
    /// and portal sign-ins alike), if it is.
    pub fn source_blocked(&self, source: &IpAddr) -> Option<Duration> {
        let until = self.blocked.get(source).map(|t| *t)?;
        let now = Instant::now();
        if until > now {
            return Some(until - now);
        }
        self.blocked.remove(source);
        None
    }

    /// Counts a failed authentication from `source`; past [`AUTH_FAILURES_PER_MINUTE`] the
    /// source is refused for a minute.
    pub fn note_auth_failure(&self, source: IpAddr) {
        if self.failures.check_key(&source).is_err() {
            self.blocked
                .insert(source, Instant::now() + Duration::from_secs(60));
        }
    }

    /// A revoked key is not trusted from the verification cache any more, from now.
    pub fn forget_key(&self, id: &str) {
        self.verified.retain(|_, (p, _)| p.key_id != id);
    }

    pub fn new(
        pool: Pool,
        auditor: Auditor,
        cursor_key: CursorKey,
        egress: Egress,
        seal: Keys,
        rate_per_key: NonZeroU32,
        key_cache: Duration,
    ) -> Self {
        State {
            pool,
            auditor,
            cursor_key,
            egress,
            seal,
            openapi: crate::openapi::document(),
            invitations: None,
            per_key: RateLimiter::keyed(Quota::per_second(rate_per_key).allow_burst(rate_per_key)),
            failures: RateLimiter::keyed(Quota::per_minute(
                NonZeroU32::new(AUTH_FAILURES_PER_MINUTE).expect("non-zero"),
            )),
            blocked: DashMap::new(),
            touched: DashMap::new(),
            verified: DashMap::new(),
            key_cache,
        }
    }
}

/// What the HTTP layer hands in.
pub struct Incoming<'a> {
    pub method: &'a hyper::Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a hyper::HeaderMap,
    /// The body, or the problem reading it (too large).
    pub body: Result<Bytes, Problem>,
    pub source: IpAddr,
}

/// What goes back.
pub struct Reply {
    pub status: u16,
    /// The JSON answer, serialised (empty for a download).
    pub body: Vec<u8>,
    /// A report's file, streamed instead of `body`.
    pub download: Option<reports::Download>,
    pub retry_after: Option<u64>,
    pub request_id: String,
}

/// A handler's success.
struct Done {
    status: u16,
    /// Serialised ([`json`]): pages are written straight from their rows.
    body: Vec<u8>,
    download: Option<reports::Download>,
    rows: i32,
    before: Option<Value>,
    after: Option<Value>,
}

impl Done {
    /// One thing changed: the answer is its new state; the audit log gets both.
    fn changed(before: Option<Value>, after: Value) -> Self {
        Done {
            status: 200,
            body: json(&after),
            download: None,
            rows: 1,
            before,
            after: Some(after),
        }
    }

    fn ok(body: &impl Serialize, rows: usize) -> Self {
        Done {
            status: 200,
            body: json(body),
            download: None,
            rows: rows as i32,
            before: None,
            after: None,
        }
    }
}

struct Metrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        requests: counter_vec(
            "posflow_api_requests_total",
            "Requests, by action and status",
            &["action", "status"],
        ),
        seconds: histogram_vec(
            "posflow_api_request_seconds",
            "Time to answer a request (audit record included), by action",
            &["action"],
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        ),
    })
}

/// A reply's JSON text. Serialising a value made here cannot fail (string keys, no
/// non-finite floats reach an answer).
fn json(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("an answer serialises")
}

pub fn request_id(headers: &hyper::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && is_ident(v))
        .map(str::to_string)
        .unwrap_or_else(|| {
            let n: u128 = rand::random();
            format!("{n:032x}")
        })
}

pub async fn handle(state: &Arc<State>, req: Incoming<'_>) -> Reply {
    let started = Instant::now();
    let request_id = request_id(req.headers);
    let mut audit = AuditRecord {
        at: posflow_schema::now_millis(),
        resource: format!("{} {}", req.method, req.path),
        source: req.source.to_string(),
        request_id: request_id.clone(),
        action: "unknown".into(),
        filter: "{}".into(),
        ..AuditRecord::default()
    };
    let outcome = serve(state, &req, &mut audit).await;
    let mut download = None;
    let (status, body, retry_after) = match outcome {
        Ok(done) => {
            audit.row_count = done.rows;
            audit.before = done.before.map(|v| v.to_string());
            audit.after = done.after.map(|v| v.to_string());
            audit.outcome = "ok".into();
            download = done.download;
            (done.status, done.body, None)
        }
        Err(p) => {
            audit.outcome = p.slug().into();
            let retry = match p {
                Problem::RateLimited { retry_after_secs } => Some(retry_after_secs),
                _ => None,
            };
            (p.status(), json(&p.body(&request_id)), retry)
        }
    };
    audit.status = status as i32;
    let action = audit.action.clone();
    // Nothing leaves unaudited: if the record cannot be written, the answer is a 503.
    let reply = match state.auditor.record(audit).await {
        Ok(_) => Reply {
            status,
            body,
            download,
            retry_after,
            request_id,
        },
        Err(why) => {
            tracing::error!(error = %why, "cannot write the audit record; refusing the request");
            let p = Problem::Unavailable;
            Reply {
                status: p.status(),
                body: json(&p.body(&request_id)),
                download: None,
                retry_after: Some(1),
                request_id,
            }
        }
    };
    let m = metrics();
    m.requests
        .with_label_values(&[&action, &reply.status.to_string()])
        .inc();
    m.seconds
        .with_label_values(&[&action])
        .observe(started.elapsed().as_secs_f64());
    reply
}

fn retry_after(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> Problem {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    Problem::RateLimited {
        retry_after_secs: wait.as_secs() + 1,
    }
}

async fn serve(
    state: &Arc<State>,
    req: &Incoming<'_>,
    audit: &mut AuditRecord,
) -> Result<Done, Problem> {
    let m = match routes::find(Method::parse(req.method), req.path) {
        Found::Route(m) => m,
        Found::WrongMethod => return Err(Problem::MethodNotAllowed),
        Found::None => return Err(Problem::NotFound),
    };
    let route: &Route = m.route;
    audit.action = route.name.into();
    // The merchant a request names is recorded even when it is refused: a merchant's security
    // team sees the attempts on its data too.
    let merchant = m.args[0];
    audit.merchant_id = merchant.chars().take(64).collect();
    refuse_locked_out(state, req, audit)?;
    let principal = authenticate(state, req, audit).await?;
    audit.actor = principal.key_id.clone();
    audit.role = principal.role.as_str().into();
    state
        .per_key
        .check_key(&principal.key_id)
        .map_err(retry_after)?;

    if merchant.len() > 64 || !is_ident(merchant) {
        return Err(Problem::invalid("merchant_id", "must be a merchant id"));
    }
    let scope = Scope::of(&principal, merchant).ok_or_else(|| {
        Problem::Forbidden(format!("this key does not act for merchant {merchant}"))
    })?;
    if !principal.role.allows(route.permission) {
        return Err(Problem::Forbidden(format!(
            "role {} does not have {}",
            principal.role.as_str(),
            route.permission.as_str()
        )));
    }
    if principal.role == Role::Operator {
        audit.reason = operator_reason(req)?.into();
    }
    let mut params = Params::parse(req.query, route.params);
    if route.body.is_some() && !is_json(req) {
        return Err(Problem::UnsupportedMediaType);
    }
    let body = req.body.clone()?;

    let mut conn = state.pool.get().await.map_err(|e| {
        tracing::warn!(error = %e.summary(), "database unavailable");
        Problem::Unavailable
    })?;
    let s = Scoped::begin(&mut conn, &scope, AppFilter::Enforced)
        .await
        .map_err(|_| Problem::Unavailable)?;
    let call = Call {
        state,
        route,
        args: &m.args,
        headers: req.headers,
        body: &body,
        s: &s,
        principal: &principal,
    };
    let done = run(&call, &mut params, audit).await?;
    s.commit().await.map_err(|_| Problem::Unavailable)?;
    Ok(done)
}

/// A source locked out after failed authentications is refused until its lockout ends.
fn refuse_locked_out(
    state: &State,
    req: &Incoming<'_>,
    audit: &mut AuditRecord,
) -> Result<(), Problem> {
    if let Some(left) = state.source_blocked(&req.source) {
        audit.action = "auth.refused".into();
        return Err(Problem::RateLimited {
            retry_after_secs: left.as_secs() + 1,
        });
    }
    Ok(())
}

/// Operators state a reason for every request (it goes into the audit record).
fn operator_reason<'r>(req: &'r Incoming<'_>) -> Result<&'r str, Problem> {
    let reason = req
        .headers
        .get(REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if reason.is_empty() || reason.len() > 500 {
        return Err(Problem::Forbidden(format!(
            "operators state a reason for every request: header {REASON_HEADER} (1-500 characters)"
        )));
    }
    Ok(reason)
}

fn is_json(req: &Incoming<'_>) -> bool {
    req.headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        })
}

async fn authenticate(
    state: &Arc<State>,
    req: &Incoming<'_>,
    audit: &mut AuditRecord,
) -> Result<Principal, Problem> {
    let presented = req
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let fingerprint = presented.map(|k| Sha256::digest(k.as_bytes()).to_vec());
    let cached = fingerprint.as_ref().and_then(|f| {
        state
            .verified
            .get(f)
            .filter(|e| e.1.elapsed() < state.key_cache)
            .map(|e| e.0.clone())
    });
    let result = match (presented, cached) {
        (_, Some(p)) => Ok(p),
        (None, _) => Err((None, "missing")),
        (Some(key), None) => {
            let mut conn = state.pool.get().await.map_err(|_| Problem::Unavailable)?;
            match keys::authenticate(&mut conn, key).await {
                Ok(Ok(p)) => {
                    if let Some(f) = fingerprint {
                        state.verified.insert(f, (p.clone(), Instant::now()));
                    }
                    Ok(p)
                }
                Ok(Err((id, why))) => Err((id, why.as_str())),
                Err(_) => return Err(Problem::Unavailable),
            }
        }
    };
    match result {
        Ok(p) => {
            let stale = state
                .touched
                .get(&p.key_id)
                .is_none_or(|t| t.elapsed() > Duration::from_secs(60));
            if stale {
                state.touched.insert(p.key_id.clone(), Instant::now());
                let (state, id) = (state.clone(), p.key_id.clone());
                tokio::spawn(async move {
                    if let Ok(mut c) = state.pool.get().await {
                        let _ = keys::touch(&mut c, &id).await;
                    }
                });
            }
            Ok(p)
        }
        Err((id, why)) => {
            // The key id (never the secret) and why, for the audit log; the client hears 401.
            audit.actor = id.unwrap_or_default();
            audit.filter = json!({ "refused": why }).to_string();
            state.note_auth_failure(req.source);
            Err(Problem::Unauthenticated)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportInput {
    from: String,
    to: String,
    format: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeInput {
    from: String,
    to: String,
}

/// Failed events redelivered by one request, at most.
const MAX_REDELIVER: i64 = 10_000;

/// One request past authentication, in its scoped transaction: what every handler reads.
struct Call<'r, 's> {
    state: &'r State,
    route: &'r Route,
    /// The path's arguments: the merchant, then the resource's id if the route has one.
    args: &'r [&'r str],
    headers: &'r hyper::HeaderMap,
    body: &'r [u8],
    s: &'r Scoped<'s>,
    principal: &'r Principal,
}

impl Call<'_, '_> {
    /// A page of a list, its next cursor signed for this route.
    fn page<T: Serialize>(&self, p: &Params, page: records::Page<T>) -> Done {
        #[derive(Serialize)]
        struct Body<T> {
            items: Vec<T>,
            next_cursor: Option<String>,
        }
        let next_cursor = page
            .next
            .map(|pos| p.next_cursor(&self.state.cursor_key, self.route.name, &pos));
        let n = page.items.len();
        let body = Body {
            items: page.items,
            next_cursor,
        };
        Done::ok(&body, n)
    }

    /// The resource id in the path, named `field` in an error.
    fn id_arg(&self, field: &str) -> Result<String, Problem> {
        let v = self.args[1];
        if v.len() > 64 || !is_ident(v) {
            return Err(Problem::invalid(field, "must be an identifier"));
        }
        Ok(v.to_string())
    }
}

/// A query failed: logged (the summary, never the row), a 503 for the client.
fn db(e: posflow_pg::DbError) -> Problem {
    tracing::warn!(error = %e.summary(), "query failed");
    Problem::Unavailable
}

/// Runs the route's handler. One line per route; a handler longer than that is a function
/// below, named after its action.
async fn run(c: &Call<'_, '_>, p: &mut Params, audit: &mut AuditRecord) -> Result<Done, Problem> {
    let (state, route, s) = (c.state, c.route, c.s);
    Ok(match route.action {
        Action::SearchTransactions => {
            let f = search_filter(state, route, p, audit, TransactionFilter::parse)?;
            c.page(p, records::search_transactions(s, f).await.map_err(db)?)
        }
        Action::FraudAlerts => {
            let f = search_filter(state, route, p, audit, AlertFilter::parse)?;
            c.page(p, records::fraud_alerts(s, f).await.map_err(db)?)
        }
        Action::SearchRejections => {
            let f = search_filter(state, route, p, audit, RejectionFilter::parse)?;
            c.page(p, records::search_rejections(s, f).await.map_err(db)?)
        }
        Action::SearchEvents => {
            let f = search_filter(state, route, p, audit, EventFilter::parse)?;
            c.page(p, events::search(s, f).await.map_err(db)?)
        }
        Action::ReadAudit => {
            let (limit, after) =
                search_filter(state, route, p, audit, |p, after| (p.limit(), after))?;
            c.page(
                p,
                crate::audit::page(s, limit, after, &Default::default())
                    .await
                    .map_err(db)?,
            )
        }
        Action::GetTransaction => get_transaction(c, p).await?,
        Action::GetEvent => {
            p.finish()?;
            let id = event_arg(c.args[1])?;
            Done::ok(&found(events::attempts(s, id).await.map_err(db)?)?, 1)
        }
        Action::RedeliverEvent => redeliver_event(c, p).await?,
        Action::RedeliverRange => redeliver_range(c, p, audit).await?,
        Action::RequestReport => request_report(c, p, audit).await?,
        Action::ListReports => {
            p.finish()?;
            let items = reports::list(s).await.map_err(db)?;
            let n = items.len();
            Done::ok(&json!({ "items": items }), n)
        }
        Action::GetReport => {
            let id = c.id_arg("report")?;
            p.finish()?;
            Done::ok(&found(reports::get(s, &id).await.map_err(db)?)?, 1)
        }
        Action::DownloadReport => download_report(c, p).await?,
        Action::AcknowledgeReport => acknowledge_report(c, p).await?,
        Action::RotateSecret => {
            p.finish()?;
            let (before, after) = settings::rotate_secret(s, c.body, &state.seal).await?;
            Done::changed(Some(before), after)
        }
        Action::Totals => totals(c, p, audit).await?,
        Action::GetSettings => {
            p.finish()?;
            Done::ok(&found(settings::get(s).await.map_err(db)?)?, 1)
        }
        Action::PutSettings => put_settings(c, p).await?,
        Action::ListKeys => {
            p.finish()?;
            let items = keys::list(&s.tx, Some(&s.merchant)).await.map_err(db)?;
            let n = items.len();
            Done::ok(&json!({ "items": items }), n)
        }
        Action::CreateKey => create_key(c, p).await?,
        Action::RevokeKey => revoke_key(c, p).await?,
    })
}

/// `Some` or a 404.
fn found<T>(v: Option<T>) -> Result<T, Problem> {
    v.ok_or(Problem::NotFound)
}

/// One transaction with its fraud alerts and its deliveries.
async fn get_transaction(c: &Call<'_, '_>, p: &mut Params) -> Result<Done, Problem> {
    let id = c.id_arg("transaction_id")?;
    p.finish()?;
    let t = found(crate::detail::transaction(c.s, &id).await.map_err(db)?)?;
    Ok(Done::ok(&t, 1))
}

async fn redeliver_event(c: &Call<'_, '_>, p: &mut Params) -> Result<Done, Problem> {
    p.finish()?;
    let id = event_arg(c.args[1])?;
    let (before, after) = events::redeliver_one(c.s, id).await?;
    Ok(Done {
        download: None,
        status: 200,
        body: json(&after),
        rows: 1,
        before: Some(before),
        after: Some(after),
    })
}

async fn redeliver_range(
    c: &Call<'_, '_>,
    p: &mut Params,
    audit: &mut AuditRecord,
) -> Result<Done, Problem> {
    p.finish()?;
    let input: RangeInput = serde_json::from_slice(c.body)
        .map_err(|e| Problem::invalid("body", format!("not a range: {e}")))?;
    let (mut range, from, to) = body_range(&input.from, &input.to);
    range.finish()?;
    audit.filter = json!({ "from": input.from, "to": input.to }).to_string();
    let (from, to) = (from.expect("required"), to.expect("required"));
    let ids = events::failed_between(c.s, from, to, MAX_REDELIVER)
        .await
        .map_err(db)?;
    let done = events::redeliver(c.s, &ids).await.map_err(db)?;
    let after = json!({ "redelivered": done });
    Ok(Done {
        download: None,
        status: 200,
        body: json(&after),
        rows: done.len() as i32,
        before: Some(json!({ "failed": ids })),
        after: Some(after),
    })
}

async fn request_report(
    c: &Call<'_, '_>,
    p: &mut Params,
    audit: &mut AuditRecord,
) -> Result<Done, Problem> {
    p.finish()?;
    let idem = c
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && is_ident(v))
        .ok_or_else(|| {
            Problem::invalid(
                "Idempotency-Key",
                "header required: 1-128 letters, digits, '-', '_', '.'",
            )
        })?;
    let input: ReportInput = serde_json::from_slice(c.body)
        .map_err(|e| Problem::invalid("body", format!("not a report request: {e}")))?;
    let (mut range, from, to) = body_range(&input.from, &input.to);
    if !matches!(input.format.as_str(), "csv" | "json") {
        range.fail("format", "must be csv or json");
    }
    range.finish()?;
    audit.filter = json!({ "from": input.from, "to": input.to, "format": input.format, "idempotency_key": idem }).to_string();
    let request = reports::Request {
        from: from.expect("required"),
        to: to.expect("required"),
        format: input.format,
    };
    let (report, new) = reports::request(c.s, &c.principal.key_id, idem, &request).await?;
    Ok(Done {
        download: None,
        status: if new { 202 } else { 200 },
        body: json(&report),
        rows: 1,
        before: None,
        after: new.then_some(report),
    })
}

async fn download_report(c: &Call<'_, '_>, p: &mut Params) -> Result<Done, Problem> {
    let id = c.id_arg("report")?;
    p.finish()?;
    let (d, rows) = found(reports::download(c.s, &id).await?)?;
    Ok(Done {
        download: Some(d),
        status: 200,
        body: Vec::new(),
        rows: rows as i32,
        before: None,
        after: None,
    })
}

async fn acknowledge_report(c: &Call<'_, '_>, p: &mut Params) -> Result<Done, Problem> {
    let id = c.id_arg("report")?;
    p.finish()?;
    let (before, after) = found(reports::acknowledge(c.s, &id, &c.principal.key_id).await?)?;
    Ok(Done {
        download: None,
        status: 200,
        body: json(&after),
        rows: 1,
        before: Some(json!({ "acknowledged_at": before["acknowledged_at"] })),
        after: Some(
            json!({ "acknowledged_at": after["acknowledged_at"], "acknowledged_by": after["acknowledged_by"] }),
        ),
    })
}

async fn totals(
    c: &Call<'_, '_>,
    p: &mut Params,
    audit: &mut AuditRecord,
) -> Result<Done, Problem> {
    let (from, to) = p.range();
    let from = p.require("from", from);
    let to = p.require("to", to);
    audit.filter = p.filter_json();
    p.finish()?;
    let (from, to) = (from.expect("required"), to.expect("required"));
    let totals = records::totals(c.s, from, to).await.map_err(db)?;
    let n = totals.len();
    Ok(Done::ok(
        &json!({ "from": records::rfc3339(from), "to": records::rfc3339(to), "totals": totals }),
        n,
    ))
}

async fn put_settings(c: &Call<'_, '_>, p: &mut Params) -> Result<Done, Problem> {
    p.finish()?;
    let (before, after) = settings::put(c.s, c.body, &c.state.egress, &c.state.seal).await?;
    let mut shown = after.clone();
    if let Some(o) = shown.as_object_mut() {
        o.remove("webhook_secret_changed");
    }
    Ok(Done {
        download: None,
        status: 200,
        body: json(&shown),
        rows: 1,
        before,
        after: Some(after),
    })
}

async fn create_key(c: &Call<'_, '_>, p: &mut Params) -> Result<Done, Problem> {
    p.finish()?;
    let input: KeyInput = serde_json::from_slice(c.body)
        .map_err(|e| Problem::invalid("body", format!("not an API key request: {e}")))?;
    let (listing, key) = keys::create_checked(
        &c.s.tx,
        &input,
        c.principal.role,
        &c.s.merchant,
        &c.principal.key_id,
    )
    .await?;
    let mut body = listing.clone();
    body["key"] = json!(key);
    Ok(Done {
        download: None,
        status: 201,
        body: json(&body),
        rows: 1,
        before: None,
        after: Some(listing),
    })
}

async fn revoke_key(c: &Call<'_, '_>, p: &mut Params) -> Result<Done, Problem> {
    let id = c.id_arg("key_id")?;
    p.finish()?;
    c.state.forget_key(&id);
    let (before, after) = found(
        keys::revoke(
            &c.s.tx,
            &id,
            Some((&c.s.merchant, c.principal.role)),
            &c.principal.key_id,
        )
        .await
        .map_err(db)?,
    )?;
    Ok(Done::changed(Some(before), after))
}

/// A search's filters: the cursor opened for this route, the route's own parse, the audit's
/// copy of the filters, and every problem with them reported at once.
fn search_filter<F>(
    state: &State,
    route: &Route,
    p: &mut Params,
    audit: &mut AuditRecord,
    parse: impl FnOnce(&mut Params, Option<crate::query::Position>) -> F,
) -> Result<F, Problem> {
    let after = p.cursor(&state.cursor_key, route.name);
    let f = parse(p, after);
    audit.filter = p.filter_json();
    p.finish()?;
    Ok(f)
}

/// An event id in a path: a delivery's number.
fn event_arg(v: &str) -> Result<i64, Problem> {
    v.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Problem::invalid("event", "must be an event id (a positive integer)"))
}

/// A body's `from` and `to`, checked as a query's are (both required, `to` after `from`); the
/// caller may record more problems before `finish`.
fn body_range(
    from: &str,
    to: &str,
) -> (
    Params,
    Option<std::time::SystemTime>,
    Option<std::time::SystemTime>,
) {
    let enc = |v: &str| -> String { form_urlencoded::byte_serialize(v.as_bytes()).collect() };
    let mut range = Params::parse(
        Some(&format!("from={}&to={}", enc(from), enc(to))),
        &["from", "to"],
    );
    let (f, t) = range.range();
    let f = range.require("from", f);
    let t = range.require("to", t);
    (range, f, t)
}
