//! People of the portal made as the pages make them (invite, password, authenticator, sign-in:
//! the library's steps, as the API's own database login), for tests and the benchmark that
//! need someone signed in without driving a browser through enrolment.

use crate::{with_login, Deployment, SECRETS_KEYS};
use posflow_api::auth::Role;
use posflow_api::portal::people::{self, Refused};
use posflow_api::portal::{session, totp};
use posflow_notifier::sealed::Keys;
use posflow_runtime::Secret;
use std::time::{Duration, SystemTime};

/// Every test person's password.
pub const PASSWORD: &str = "lantern quietly over the harbour";

/// The API's database login (what the portal's pages run as).
pub async fn api_login(d: &Deployment) -> tokio_postgres::Client {
    posflow_pg::connect(&with_login(
        &d.stack.database_url,
        "posflow_api_app",
        "api-local",
    ))
    .await
    .expect("connecting as the API")
}

/// The keys the tests give the API for sealing (authenticator secrets among them).
pub fn keys() -> Keys {
    Keys::parse(&Secret::new(SECRETS_KEYS)).expect("keys")
}

pub fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

pub fn ok<T: std::fmt::Debug>(o: Result<Result<T, Refused>, posflow_pg::DbError>) -> T {
    o.expect("the database").expect("not refused")
}

/// A person of `role` over `merchants`, enrolled: their authenticator secret, at the step
/// `now` was spent on enrolment.
pub async fn enrolled(
    db: &mut tokio_postgres::Client,
    (email, role): (&str, Role),
    merchants: &[String],
    now: SystemTime,
) -> Vec<u8> {
    let keys = keys();
    let (_, token) = ok(people::invite(db, email, role, merchants, "operator:e2e").await);
    let e = ok(people::set_password(db, &keys, token.expose(), &Secret::new(PASSWORD)).await);
    let secret = totp::from_base32(e.secret_base32.expose()).unwrap();
    let code = totp::code_at(&secret, secs(now));
    ok(people::confirm(db, &keys, token.expose(), &code, now).await);
    secret
}

/// A person enrolled (as [`enrolled`]) and signed in: the session cookie their browser would
/// send (`name=value`).
pub async fn signed_in(
    db: &mut tokio_postgres::Client,
    person: (&str, Role),
    merchants: &[String],
) -> String {
    let now = SystemTime::now();
    let secret = enrolled(db, person, merchants, now).await;
    let next = now + Duration::from_secs(totp::STEP_S);
    let code = totp::code_at(&secret, secs(next));
    let pass = Secret::new(PASSWORD);
    let s = ok(people::sign_in(db, &keys(), person.0, &pass, &code, "127.0.0.1", next).await);
    format!("{}={}", session::COOKIE, s.session_id.expose())
}
