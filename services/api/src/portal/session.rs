//! Sessions of signed-in people, the CSRF token of each, the lockout after failed attempts,
//! and the headers every portal page carries — the rules, apart from where they are stored.
//!
//! - A session is a random 256-bit id in a `__Host-` cookie (`Secure`, `Path=/`, no `Domain`:
//!   no subdomain can set or read it), `HttpOnly` (no script reads it), `SameSite=Strict` (no
//!   other site's page sends it). The server keeps only its SHA-256: a copy of the table signs
//!   nobody in.
//! - Each session has a CSRF token, derived from its id (HMAC), carried by every form and
//!   compared in constant time: nothing to store, and it dies with the session.
//! - Idle and absolute timeouts; sign-out everywhere ends every session of a person.
//! - Failed sign-ins lock the account with back-off.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The cookie's name. `__Host-` makes browsers refuse it unless `Secure`, `Path=/` and without
/// `Domain`.
pub const COOKIE: &str = "__Host-posflow_session";
/// A session unused this long has ended.
pub const IDLE: Duration = Duration::from_secs(15 * 60);
/// A session this old has ended, used or not.
pub const ABSOLUTE: Duration = Duration::from_secs(8 * 3600);
/// Consecutive failed attempts (password or code) that lock an account.
pub const LOCK_AFTER: u32 = 5;
/// The first lockout; each further failure while locked out doubles it, up to [`LOCK_MAX`].
pub const LOCK_FIRST: Duration = Duration::from_secs(15 * 60);
pub const LOCK_MAX: Duration = Duration::from_secs(24 * 3600);

/// A new session id (what the cookie carries) and its hash (what the server keeps).
pub fn new_id() -> (String, Vec<u8>) {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let hash = id_hash(&id);
    (id, hash)
}

/// What the server keeps of a session id, and looks it up by.
pub fn id_hash(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

/// The `Set-Cookie` value that starts a session.
pub fn cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that ends it in the browser.
pub fn cookie_cleared() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The session id from a `Cookie` header, if it carries ours.
pub fn from_cookie_header(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn csrf_mac(id: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(id.as_bytes()).expect("any key length");
    mac.update(b"posflow portal csrf v1");
    mac
}

/// The CSRF token of the session `id`.
pub fn csrf_token(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(csrf_mac(id).finalize().into_bytes())
}

/// Whether `token` (from a form) is the CSRF token of session `id` (compared in constant time).
pub fn csrf_ok(id: &str, token: &str) -> bool {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .is_ok_and(|t| csrf_mac(id).verify_slice(&t).is_ok())
}

/// Why a session is over, if it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Idle,
    TooOld,
}

/// Whether a session started `age` ago and last used `idle` ago is still live.
pub fn check(age: Duration, idle: Duration) -> Result<(), Ended> {
    if age >= ABSOLUTE {
        Err(Ended::TooOld)
    } else if idle >= IDLE {
        Err(Ended::Idle)
    } else {
        Ok(())
    }
}

/// How long an account is locked after `failures` consecutive failed attempts: none below
/// [`LOCK_AFTER`], then [`LOCK_FIRST`], doubling with each further failure up to [`LOCK_MAX`].
pub fn lockout(failures: u32) -> Option<Duration> {
    let beyond = failures.checked_sub(LOCK_AFTER)?;
    let factor = 1u32.checked_shl(beyond.min(16)).unwrap_or(u32::MAX);
    Some(LOCK_FIRST.saturating_mul(factor).min(LOCK_MAX))
}

/// Every portal page's security headers. The CSP allows nothing inline and nothing from
/// elsewhere (the pages' own stylesheet and script only), forms only to ourselves, and no
/// framing; HSTS only when this process serves TLS itself (behind an ingress, the ingress sets
/// it).
pub fn page_headers(tls: bool) -> Vec<(&'static str, &'static str)> {
    let mut h = vec![
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=(), payment=()",
        ),
    ];
    if tls {
        h.push((
            "strict-transport-security",
            "max-age=31536000; includeSubDomains",
        ));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_256_bit_and_kept_only_as_their_hash() {
        let (a, ha) = new_id();
        let (b, hb) = new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "32 bytes, base64url without padding");
        assert_eq!(ha, id_hash(&a));
        assert_ne!(ha, hb);
        assert_ne!(ha, a.as_bytes(), "the hash, not the id");
    }

    #[test]
    fn the_cookie_is_host_only_secure_httponly_and_strict() {
        let c = cookie("abc");
        assert_eq!(
            c,
            "__Host-posflow_session=abc; Path=/; Secure; HttpOnly; SameSite=Strict"
        );
        assert!(cookie_cleared().ends_with("Max-Age=0"));
        assert_eq!(
            from_cookie_header("theme=dark; __Host-posflow_session=abc; x=1"),
            Some("abc")
        );
        assert_eq!(from_cookie_header("posflow_session=abc"), None, "not ours");
        assert_eq!(from_cookie_header("__Host-posflow_session="), None);
    }

    #[test]
    fn a_csrf_token_holds_for_its_own_session_only() {
        let (a, _) = new_id();
        let (b, _) = new_id();
        let t = csrf_token(&a);
        assert!(csrf_ok(&a, &t));
        assert!(!csrf_ok(&b, &t), "another session's token");
        assert!(!csrf_ok(&a, ""));
        assert!(!csrf_ok(&a, "not base64 !"));
        assert!(!csrf_ok(&a, &t[..t.len() - 1]));
    }

    #[test]
    fn sessions_end_when_idle_or_too_old() {
        let s = Duration::from_secs;
        assert_eq!(check(s(60), s(60)), Ok(()));
        assert_eq!(check(s(60), IDLE), Err(Ended::Idle));
        assert_eq!(check(ABSOLUTE, s(1)), Err(Ended::TooOld));
        assert_eq!(check(ABSOLUTE - s(1), IDLE - s(1)), Ok(()));
    }

    #[test]
    fn the_fifth_failure_locks_and_each_further_one_doubles_the_lock() {
        let m = |n: u64| Some(Duration::from_secs(n * 60));
        assert_eq!(lockout(0), None);
        assert_eq!(lockout(4), None);
        assert_eq!(lockout(5), m(15));
        assert_eq!(lockout(6), m(30));
        assert_eq!(lockout(7), m(60));
        assert_eq!(lockout(12), Some(LOCK_MAX));
        assert_eq!(lockout(u32::MAX), Some(LOCK_MAX));
    }

    #[test]
    fn pages_forbid_inline_script_and_framing_and_ask_for_https_when_on_tls() {
        let h = page_headers(true);
        let csp = h
            .iter()
            .find(|(k, _)| *k == "content-security-policy")
            .unwrap()
            .1;
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
        assert!(!csp.contains("unsafe-inline"));
        assert!(h.iter().any(|(k, _)| *k == "strict-transport-security"));
        assert!(!page_headers(false)
            .iter()
            .any(|(k, _)| *k == "strict-transport-security"));
    }
}
