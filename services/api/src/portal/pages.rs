//! The portal's pages under `/portal/`: sign-in, enrolment from an invitation's link, the
//! sales overview, sign-out. Each answer carries the page headers (session::page_headers);
//! every form carries a CSRF token; every step is an audit record, like an API request
//! (actor: the person's id; action `portal.…`).
//!
//! Before sign-in there is no session, so the sign-in and enrolment forms are bound to a
//! short-lived `__Host-posflow_pre` cookie instead (its CSRF token in the form): another site
//! cannot post a sign-in of its choosing (login CSRF).

use super::html::{self, escape, field, form, notice, page};
use super::people::{self, Person, Refused};
use super::{
    api_keys, audit_log, chart, deliveries, notifications, reports_page, sales, session, team,
    transactions,
};
use crate::auth::Permission;
use crate::db::{AppFilter, Scope, Scoped};
use crate::service::State;
use posflow_runtime::Secret;
use posflow_schema::currency::format_minor;
use posflow_schema::{now_millis, AuditRecord};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The pre-session cookie (see the module's doc).
const PRE_COOKIE: &str = "__Host-posflow_pre";
/// Days the overview shows when no period is chosen.
const DEFAULT_DAYS: u64 = 14;
/// The longest period the overview draws.
const MAX_DAYS: u64 = 366;

/// A page's answer.
pub struct PageReply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// A report's file, streamed by the HTTP layer instead of `body`.
    pub download: Option<crate::reports::Download>,
}

impl PageReply {
    pub(super) fn new(status: u16, headers: Vec<(&'static str, String)>, body: Vec<u8>) -> Self {
        PageReply {
            status,
            headers,
            body,
            download: None,
        }
    }
    pub(super) fn html(status: u16, body: String) -> Self {
        let ctype = ("content-type", "text/html; charset=utf-8".into());
        PageReply::new(status, vec![ctype], body.into_bytes())
    }
    pub(super) fn redirect(to: &str) -> Self {
        PageReply::new(303, vec![("location", to.to_string())], Vec::new())
    }
    pub(super) fn download(d: crate::reports::Download) -> Self {
        PageReply {
            download: Some(d),
            ..PageReply::new(200, Vec::new(), Vec::new())
        }
    }
    fn cookie(mut self, value: String) -> Self {
        self.headers.push(("set-cookie", value));
        self
    }
}

/// What the HTTP layer hands in.
pub struct PageRequest<'a> {
    pub method: &'a hyper::Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub cookies: &'a str,
    pub body: &'a [u8],
    pub source: IpAddr,
    pub request_id: &'a str,
}

impl PageRequest<'_> {
    fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    }
    pub(super) fn form(&self) -> HashMap<String, String> {
        form_urlencoded::parse(self.body).into_owned().collect()
    }
    pub(super) fn query(&self) -> HashMap<String, String> {
        form_urlencoded::parse(self.query.unwrap_or("").as_bytes())
            .into_owned()
            .collect()
    }
    /// The pre-session cookie's id and whether the form's CSRF token matches it.
    fn pre_csrf_ok(&self, f: &HashMap<String, String>) -> bool {
        match (self.cookie(PRE_COOKIE), f.get("csrf")) {
            (Some(pre), Some(t)) => session::csrf_ok(pre, t),
            _ => false,
        }
    }
}

/// Serves a `/portal/…` request.
pub async fn handle(state: &State, r: &PageRequest<'_>) -> PageReply {
    use hyper::Method;
    let rest = r.path.strip_prefix("/portal").unwrap_or("");
    let post = r.method == Method::POST;
    match (post, rest) {
        (false, "/static/portal.css") => PageReply::new(
            200,
            vec![("content-type", "text/css; charset=utf-8".into())],
            html::CSS.as_bytes().to_vec(),
        ),
        (false, "/sign-in") => sign_in_form(None),
        (true, "/sign-in") => sign_in(state, r).await,
        (true, "/sign-out") => sign_out(state, r, false).await,
        (true, "/sign-out-everywhere") => sign_out(state, r, true).await,
        (false, "/" | "") => overview(state, r).await,
        (false, "/team") => team::show(state, r, None).await,
        (false, "/transactions") => transactions::search(state, r).await,
        (false, "/transactions.csv") => transactions::csv(state, r).await,
        (false, p) if p.starts_with("/transactions/") => {
            transactions::one(state, r, &p["/transactions/".len()..]).await
        }
        (true, "/team/invite") => team::invite(state, r).await,
        (true, p) if p.starts_with("/team/") => team::change(state, r, &p["/team/".len()..]).await,
        (false, "/notifications") => notifications::show(state, r, None).await,
        (true, "/notifications") => notifications::save(state, r).await,
        (true, "/notifications/rotate") => notifications::rotate(state, r).await,
        (false, "/audit") => audit_log::show(state, r).await,
        (false, "/reports") => reports_page::show(state, r, None).await,
        (true, "/reports") => reports_page::request(state, r).await,
        (false, p) if p.starts_with("/reports/") && p.ends_with("/download") => {
            let id = &p["/reports/".len()..p.len() - "/download".len()];
            reports_page::download(state, r, id).await
        }
        (true, p) if p.starts_with("/reports/") && p.ends_with("/acknowledge") => {
            let id = &p["/reports/".len()..p.len() - "/acknowledge".len()];
            reports_page::acknowledge(state, r, id).await
        }
        (false, "/deliveries") => deliveries::search(state, r, None).await,
        (false, p) if p.starts_with("/deliveries/") => {
            deliveries::one(state, r, &p["/deliveries/".len()..]).await
        }
        (true, p) if p.starts_with("/deliveries/") && p.ends_with("/redeliver") => {
            let id = &p["/deliveries/".len()..p.len() - "/redeliver".len()];
            deliveries::redeliver(state, r, id).await
        }
        (false, "/api-keys") => api_keys::show(state, r, None).await,
        (true, "/api-keys") => api_keys::create(state, r).await,
        (true, p) if p.starts_with("/api-keys/") && p.ends_with("/revoke") => {
            api_keys::revoke(state, r, &p["/api-keys/".len()..p.len() - "/revoke".len()]).await
        }
        (false, p) if p.starts_with("/enrol/") => enrol_form(&p["/enrol/".len()..], None),
        (true, p) if p.starts_with("/enrol/") => enrol(state, r, &p["/enrol/".len()..]).await,
        _ => not_found(),
    }
}

pub(super) fn not_found() -> PageReply {
    PageReply::html(
        404,
        page(
            "Not found",
            None,
            r#"<p>There is no such page. <a href="/portal/">Back to the overview</a>.</p>"#,
        ),
    )
}

pub(super) fn unavailable() -> PageReply {
    PageReply::html(
        503,
        page(
            "Unavailable",
            None,
            "<p>The portal cannot reach its database just now. Try again in a minute.</p>",
        ),
    )
}

/// A page with a form bound to a fresh pre-session cookie.
fn pre_session_page(title: &str, intro: &str, action: &str, fields: &str) -> PageReply {
    let (pre, _) = session::new_id();
    let body = page(
        title,
        None,
        &format!(
            "{intro}{}",
            form(action, &session::csrf_token(&pre), fields)
        ),
    );
    PageReply::html(200, body).cookie(format!(
        "{PRE_COOKIE}={pre}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=1800"
    ))
}

fn sign_in_form(error: Option<&str>) -> PageReply {
    let fields = [
        field("email", "Email", "email", "username"),
        field("password", "Password", "password", "current-password"),
        field(
            "code",
            "Code from your authenticator app (or a recovery code)",
            "text",
            "one-time-code",
        ),
        r#"<button type="submit">Sign in</button>"#.to_string(),
    ]
    .concat();
    let intro = error.map(|e| notice("error", e)).unwrap_or_default();
    let mut reply = pre_session_page("Sign in", &intro, "/portal/sign-in", &fields);
    if error.is_some() {
        reply.status = 401;
    }
    reply
}

/// One audit record for a portal step.
pub(super) async fn audit(
    state: &State,
    r: &PageRequest<'_>,
    who: Option<(&Person, &str)>,
    action: &str,
    status: u16,
    outcome: &str,
) -> Result<(), String> {
    let rec = record(r, who, action, status, outcome);
    state.auditor.record(rec).await.map(|_| ())
}

/// Records a page served to `who` for a merchant; a page that cannot be audited is not served
/// (503), as with the API.
pub(super) async fn served(
    state: &State,
    r: &PageRequest<'_>,
    who: (&Person, &str),
    action: &str,
) -> Result<(), PageReply> {
    audit(state, r, Some(who), action, 200, "ok")
        .await
        .map_err(|_| unavailable())
}

/// A signed-in person's form without its session's CSRF token: nothing changes; audited.
pub(super) async fn csrf_refused(
    state: &State,
    r: &PageRequest<'_>,
    who: (&Person, &str),
    action: &str,
) -> PageReply {
    let _ = audit(state, r, Some(who), action, 403, "csrf").await;
    PageReply::html(
        403,
        page(
            "Refused",
            None,
            &notice("error", "This form has expired: nothing was changed."),
        ),
    )
}

/// A portal step's audit record (the caller may add before and after).
pub(super) fn record(
    r: &PageRequest<'_>,
    who: Option<(&Person, &str)>,
    action: &str,
    status: u16,
    outcome: &str,
) -> AuditRecord {
    AuditRecord {
        at: now_millis(),
        actor: who.map(|(p, _)| p.id.clone()).unwrap_or_default(),
        role: who
            .map(|(p, _)| p.role.as_str().to_string())
            .unwrap_or_default(),
        merchant_id: who.map(|(_, m)| m.to_string()).unwrap_or_default(),
        action: action.into(),
        resource: format!("{} {}", r.method, r.path),
        filter: "{}".into(),
        status: status as i32,
        outcome: outcome.into(),
        source: r.source.to_string(),
        request_id: r.request_id.into(),
        ..AuditRecord::default()
    }
}

async fn sign_in(state: &State, r: &PageRequest<'_>) -> PageReply {
    // Guessing across many accounts from one place: the API's per-source budget of failed
    // authentications (shared with API keys) refuses the source for a minute.
    if let Some(left) = state.source_blocked(&r.source) {
        let _ = audit(state, r, None, "portal.sign_in", 429, "rate_limited").await;
        let mut reply = sign_in_form(Some(&format!(
            "Too many failed sign-ins from your network: try again in {} seconds.",
            left.as_secs() + 1
        )));
        reply.status = 429;
        reply
            .headers
            .push(("retry-after", (left.as_secs() + 1).to_string()));
        return reply;
    }
    let f = r.form();
    if !r.pre_csrf_ok(&f) {
        let _ = audit(state, r, None, "portal.sign_in", 403, "csrf").await;
        return sign_in_form(Some("This form has expired. Please sign in again."));
    }
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let Ok(mut c) = state.pool.get().await else {
        return unavailable();
    };
    let outcome = people::sign_in(
        &mut c,
        &state.seal,
        get("email"),
        &Secret::new(get("password")),
        get("code"),
        &r.source.to_string(),
        SystemTime::now(),
    )
    .await;
    match outcome {
        Ok(Ok(signed)) => {
            if audit(
                state,
                r,
                Some((&signed.person, &signed.person.merchants[0])),
                "portal.sign_in",
                303,
                "ok",
            )
            .await
            .is_err()
            {
                return unavailable();
            }
            PageReply::redirect(html::landing(signed.person.role))
                .cookie(session::cookie(signed.session_id.expose()))
                .cookie(format!(
                    "{PRE_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
                ))
        }
        Ok(Err(why)) => {
            state.note_auth_failure(r.source);
            let slug = match why {
                Refused::Locked(_) => "locked",
                _ => "refused",
            };
            let _ = audit(state, r, None, "portal.sign_in", 401, slug).await;
            sign_in_form(Some(&why.to_string()))
        }
        Err(_) => unavailable(),
    }
}

/// The signed-in person of a request, and their session's id.
async fn signed_in<'r>(state: &State, r: &'r PageRequest<'_>) -> Option<(Person, &'r str)> {
    let id = session::from_cookie_header(r.cookies)?;
    let c = state.pool.get().await.ok()?;
    match people::session_person(&c, id).await {
        Ok(Ok(p)) => Some((p, id)),
        _ => None,
    }
}

async fn sign_out(state: &State, r: &PageRequest<'_>, everywhere: bool) -> PageReply {
    let Some((person, id)) = signed_in(state, r).await else {
        return PageReply::redirect("/portal/sign-in");
    };
    let f = r.form();
    let action = if everywhere {
        "portal.sign_out_everywhere"
    } else {
        "portal.sign_out"
    };
    if !f.get("csrf").is_some_and(|t| session::csrf_ok(id, t)) {
        return csrf_refused(state, r, (&person, &person.merchants[0]), action).await;
    }
    let Ok(c) = state.pool.get().await else {
        return unavailable();
    };
    let ended = if everywhere {
        people::sign_out_everywhere(&c, &person.id).await.is_ok()
    } else {
        people::sign_out(&c, id).await.is_ok()
    };
    if !ended
        || audit(
            state,
            r,
            Some((&person, &person.merchants[0])),
            action,
            303,
            "ok",
        )
        .await
        .is_err()
    {
        return unavailable();
    }
    PageReply::redirect("/portal/sign-in").cookie(session::cookie_cleared())
}

fn enrol_form(token: &str, error: Option<&str>) -> PageReply {
    let fields = [
        field(
            "password",
            "Choose a password (12 characters or more; a phrase of your own is best)",
            "password",
            "new-password",
        ),
        r#"<button type="submit">Continue</button>"#.to_string(),
    ]
    .concat();
    let intro = format!(
        "<p>Welcome to posflow. Choose a password, then set up an authenticator app: both are needed to sign in.</p>{}",
        error.map(|e| notice("error", e)).unwrap_or_default()
    );
    let mut reply = pre_session_page(
        "Set up your account",
        &intro,
        &format!("/portal/enrol/{}", escape(token)),
        &fields,
    );
    if error.is_some() {
        reply.status = 400;
    }
    reply
}

/// The enrolment's two posts: the password (step 1: answers the authenticator's page), then a
/// code (step 2: answers the recovery codes).
async fn enrol(state: &State, r: &PageRequest<'_>, rest: &str) -> PageReply {
    let (token, step2) = match rest.strip_suffix("/confirm") {
        Some(t) => (t, true),
        None => (rest, false),
    };
    let f = r.form();
    if !r.pre_csrf_ok(&f) {
        return enrol_form(token, Some("This form has expired. Please try again."));
    }
    let Ok(mut c) = state.pool.get().await else {
        return unavailable();
    };
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    if !step2 {
        return match people::set_password(&c, &state.seal, token, &Secret::new(get("password")))
            .await
        {
            Ok(Ok(e)) => {
                let _ = audit(state, r, None, "portal.enrol.password", 200, "ok").await;
                authenticator_page(token, &e, &f["csrf"], None)
            }
            Ok(Err(why)) => {
                let _ = audit(state, r, None, "portal.enrol.password", 400, "refused").await;
                match why {
                    Refused::Password(_) => enrol_form(token, Some(&why.to_string())),
                    _ => enrol_refused("Set up your account", &why.to_string()),
                }
            }
            Err(_) => unavailable(),
        };
    }
    match people::confirm(&mut c, &state.seal, token, get("code"), SystemTime::now()).await {
        Ok(Ok(codes)) => {
            let _ = audit(state, r, None, "portal.enrol.confirm", 200, "ok").await;
            let list: String = codes
                .iter()
                .map(|c| format!("<li>{}</li>", escape(c.expose())))
                .collect();
            PageReply::html(
                200,
                page(
                    "Your recovery codes",
                    None,
                    &format!(
                        r#"{}<p>If you lose your phone, each of these codes signs you in once instead of the app's code. Keep them somewhere safe: they are shown only now.</p><ol class="codes">{list}</ol><p><a href="/portal/sign-in">Continue to sign in</a></p>"#,
                        notice("ok", "Your account is ready.")
                    ),
                ),
            )
        }
        Ok(Err(why)) => {
            let _ = audit(state, r, None, "portal.enrol.confirm", 400, "refused").await;
            match why {
                Refused::Code => enrol_refused(
                    "Set up your authenticator",
                    "That code is not the current one. Start again from your invitation's link.",
                ),
                _ => enrol_refused("Set up your account", &why.to_string()),
            }
        }
        Err(_) => unavailable(),
    }
}

/// An enrolment step refused (a bad link, a wrong code): the reason, nothing else on the page.
fn enrol_refused(title: &str, why: &str) -> PageReply {
    PageReply::html(400, page(title, None, &notice("error", why)))
}

/// Step 2's page: the secret as a QR code and as text, and the form for a code from it.
fn authenticator_page(
    token: &str,
    e: &people::Enrolment,
    csrf: &str,
    error: Option<&str>,
) -> PageReply {
    let qr = qrcode::QrCode::new(e.otpauth_uri.expose().as_bytes())
        .map(|q| {
            q.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .build()
        })
        .unwrap_or_default();
    use base64::Engine as _;
    let qr_src = format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(qr)
    );
    let fields = [
        field(
            "code",
            "The 6-digit code your app shows now",
            "text",
            "one-time-code",
        ),
        r#"<button type="submit">Finish</button>"#.to_string(),
    ]
    .concat();
    let body = format!(
        r#"{}<p>Scan this code with an authenticator app (any app for "TOTP" codes), or type the key below into it.</p>
<img class="qr" alt="QR code of your authenticator key" src="{qr_src}">
<p>Key: <span class="secret" id="totp-secret">{}</span></p>{}"#,
        error.map(|e| notice("error", e)).unwrap_or_default(),
        escape(e.secret_base32.expose()),
        form(
            &format!("/portal/enrol/{}/confirm", escape(token)),
            csrf,
            &fields
        )
    );
    PageReply::html(200, page("Set up your authenticator", None, &body))
}

/// A signed-in person's request for a page that needs `permission` over the merchant it names
/// (`?merchant=`, the person's first by default): the person, the scope and the session's id
/// — or the answer already made (sign-in, 404 for a merchant not theirs, 403 for a role
/// without the permission; both audited as `action`).
pub(super) async fn authorised(
    state: &State,
    r: &PageRequest<'_>,
    permission: Permission,
    action: &str,
) -> Result<(Person, Scope, String), PageReply> {
    let Some((person, id)) = signed_in(state, r).await else {
        return Err(PageReply::redirect("/portal/sign-in"));
    };
    let q = r.query();
    let f = r.form();
    let named = q
        .get("merchant")
        .or(f.get("merchant"))
        .unwrap_or(&person.merchants[0])
        .clone();
    let Some(scope) = Scope::of_person(&person, &named) else {
        // The merchant named is recorded (its security team sees the attempt), cut to 64.
        let named: String = named.chars().take(64).collect();
        let _ = audit(state, r, Some((&person, &named)), action, 404, "not_found").await;
        return Err(not_found());
    };
    if !person.role.allows(permission) {
        let _ = audit(
            state,
            r,
            Some((&person, scope.merchant())),
            action,
            403,
            "forbidden",
        )
        .await;
        let body = page(
            "Not allowed",
            Some((&person, &session::csrf_token(id))),
            &format!(
                "<p>Your role ({}) does not include {}. Ask your merchant's owner if you need it.</p>",
                person.role.as_str(),
                permission.as_str()
            ),
        );
        return Err(PageReply::html(403, body));
    }
    Ok((person, scope, id.to_string()))
}

/// [`authorised`] for a form's post: also its session's CSRF token (else refused, audited);
/// with the form's fields.
pub(super) async fn authorised_form(
    state: &State,
    r: &PageRequest<'_>,
    permission: Permission,
    action: &str,
) -> Result<(Person, Scope, String, HashMap<String, String>), PageReply> {
    let (person, scope, sid) = authorised(state, r, permission, action).await?;
    let f = r.form();
    if !f.get("csrf").is_some_and(|t| session::csrf_ok(&sid, t)) {
        return Err(csrf_refused(state, r, (&person, scope.merchant()), action).await);
    }
    Ok((person, scope, sid, f))
}

/// Runs `work` in a transaction scoped to the merchant (row-level security on), committed
/// when it returns; a database failure is the "unavailable" page.
pub(super) async fn in_scope<T>(
    state: &State,
    scope: &Scope,
    work: impl AsyncFnOnce(&Scoped<'_>) -> Result<T, posflow_pg::DbError>,
) -> Result<T, PageReply> {
    let mut c = state.pool.get().await.map_err(|_| unavailable())?;
    let done = async {
        let s = Scoped::begin(&mut c, scope, AppFilter::Enforced).await?;
        let out = work(&s).await?;
        s.commit().await?;
        Ok::<_, posflow_pg::DbError>(out)
    }
    .await;
    done.map_err(|_| unavailable())
}

/// Records a change a person made (`before` and `after`, never a secret); a change that cannot
/// be audited answers "unavailable".
pub(super) async fn changed(
    state: &State,
    r: &PageRequest<'_>,
    who: (&Person, &str),
    action: &str,
    outcome: &str,
    (before, after): (Option<String>, Option<String>),
) -> Result<(), PageReply> {
    let rec = AuditRecord {
        before,
        after,
        ..record(r, Some(who), action, 200, outcome)
    };
    state
        .auditor
        .record(rec)
        .await
        .map(|_| ())
        .map_err(|_| unavailable())
}

/// The day (`YYYY-MM-DD`) of a UTC time, and back.
pub(super) fn day_of(t: SystemTime) -> String {
    humantime::format_rfc3339(t).to_string()[..10].to_string()
}

fn parse_day(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(&format!("{s}T00:00:00Z")).ok()
}

/// The overview's period from `from` and `to` (`YYYY-MM-DD`, both days included): the last
/// [`DEFAULT_DAYS`] through today when absent or unusable, at most [`MAX_DAYS`]. Returned as
/// [start of `from`, start of the day after `to`).
pub(super) fn period(q: &HashMap<String, String>, now: SystemTime) -> (SystemTime, SystemTime) {
    let day = Duration::from_secs(86_400);
    let today = parse_day(&day_of(now)).unwrap_or(UNIX_EPOCH);
    let to = q
        .get("to")
        .and_then(|s| parse_day(s))
        .map_or(today + day, |t| t + day);
    let from = q
        .get("from")
        .and_then(|s| parse_day(s))
        .filter(|f| {
            to.duration_since(*f)
                .is_ok_and(|d| !d.is_zero() && d <= day * MAX_DAYS as u32)
        })
        .unwrap_or(to - day * DEFAULT_DAYS as u32);
    (from, to)
}

async fn overview(state: &State, r: &PageRequest<'_>) -> PageReply {
    // Sales are records: a role without `records:read` (developer) is refused here too.
    let (person, scope, id) =
        match authorised(state, r, Permission::RecordsRead, "portal.overview").await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let (from, to) = period(&r.query(), SystemTime::now());
    let Ok(mut c) = state.pool.get().await else {
        return unavailable();
    };
    let data = async {
        let s = Scoped::begin(&mut c, &scope, AppFilter::Enforced).await?;
        let d = sales::daily(&s, from, to).await?;
        s.commit().await?;
        Ok::<_, posflow_pg::DbError>(d)
    }
    .await;
    let Ok(daily) = data else {
        return unavailable();
    };
    if let Err(reply) = served(state, r, (&person, scope.merchant()), "portal.overview").await {
        return reply;
    }
    let csrf = session::csrf_token(&id);
    let main = overview_html(scope.merchant(), (from, to), &daily, &csrf);
    PageReply::html(200, page("Sales overview", Some((&person, &csrf)), &main))
}

/// The overview's `main`: the period's form, a card of totals per currency, a chart per
/// currency, and sign-out everywhere.
fn overview_html(
    merchant: &str,
    (from, to): (SystemTime, SystemTime),
    daily: &sales::Daily,
    csrf: &str,
) -> String {
    let day = Duration::from_secs(86_400);
    let days: Vec<String> = std::iter::successors(Some(from), |t| Some(*t + day))
        .take_while(|t| *t < to)
        .map(day_of)
        .collect();
    let (first, last) = (day_of(from), day_of(to - day));
    let m = escape(merchant);
    let now = SystemTime::now();
    let today = day_of(now);
    // Monday: the epoch's day 0 was a Thursday.
    let since_monday =
        (now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400 + 3) % 7;
    let monday = day_of(now - day * since_monday as u32);
    let mut main = format!(
        r#"<p class="quick"><a id="today" href="/portal/?merchant={m}&amp;from={today}&amp;to={today}">Today</a> · <a id="this-week" href="/portal/?merchant={m}&amp;from={monday}&amp;to={today}">This week</a> · <a href="/portal/?merchant={m}">Last 14 days</a></p>
<form method="get" action="/portal/" class="period"><input type="hidden" name="merchant" value="{m}"><label for="from">From</label><input id="from" name="from" type="date" value="{first}"><label for="to">To</label><input id="to" name="to" type="date" value="{last}"><button type="submit">Show</button></form>
<h2>Merchant {m} · {first} to {last}</h2><div class="cards">"#,
    );
    let totals = sales::totals(daily);
    if totals.is_empty() {
        main.push_str(&notice("ok", "No sales or refunds in this period."));
    }
    for (cur, t) in &totals {
        main.push_str(&format!(
            r#"<div class="card" data-currency="{cur}"><h3>{cur}</h3><table><tr><th></th><th class="num">count</th><th class="num">amount</th></tr>
<tr><th>Sales</th><td class="num sales-count">{}</td><td class="num sales-amount">{}</td></tr>
<tr><th>Refunds</th><td class="num refunds-count">{}</td><td class="num refunds-amount">{}</td></tr></table></div>"#,
            t.sales.count,
            format_minor(t.sales.amount_minor, cur),
            t.refunds.count,
            format_minor(t.refunds.amount_minor, cur),
            cur = escape(cur),
        ));
    }
    main.push_str(r#"</div><p class="legend"><span class="sales">sales</span><span class="refunds">refunds</span></p>"#);
    for (cur, d) in daily {
        main.push_str(&format!("<h2>{}</h2>", escape(cur)));
        main.push_str(&chart::daily_bars(cur, &days, d));
    }
    main.push_str(&form(
        "/portal/sign-out-everywhere",
        csrf,
        r#"<button type="submit">Sign out everywhere</button>"#,
    ));
    main
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_defaults_to_two_weeks_and_refuses_a_backwards_or_overlong_one() {
        let now = parse_day("2026-12-03").unwrap() + Duration::from_secs(3600);
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let days = |(f, t): (SystemTime, SystemTime)| (day_of(f), day_of(t));
        assert_eq!(
            days(period(&q(&[]), now)),
            ("2026-11-20".into(), "2026-12-04".into())
        );
        assert_eq!(
            days(period(
                &q(&[("from", "2026-11-28"), ("to", "2026-11-30")]),
                now
            )),
            ("2026-11-28".into(), "2026-12-01".into())
        );
        // Backwards, too long, or not a date: the default length, ending at `to`.
        for bad in [
            ("from", "2026-12-05"),
            ("from", "2024-01-01"),
            ("from", "yesterday"),
        ] {
            assert_eq!(
                days(period(&q(&[bad, ("to", "2026-11-30")]), now)),
                ("2026-11-17".into(), "2026-12-01".into()),
                "{bad:?}"
            );
        }
    }
}
