//! The people who sign in to the portal, in PostgreSQL (migration 0005): invited by an owner
//! (or, for a merchant's first owner, by an operator), enrolled with a password and a TOTP
//! authenticator through their invitation's link, signed in with both, kept in server-side
//! sessions. The rules are in [`super::password`], [`super::totp`] and [`super::session`];
//! this module is where they meet the tables.
//!
//! What a caller hears on a refused sign-in never says which of email, password or code was
//! wrong (only [`Refused::Locked`] is distinct, with its end), so the portal does not tell an
//! attacker which emails have accounts.

use super::{password, session, totp};
use crate::auth::Role;
use posflow_notifier::sealed::Keys;
use posflow_pg::DbError;
use posflow_runtime::Secret;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::Client;

/// How long an invitation's link is good.
pub const INVITATION_TTL: Duration = Duration::from_secs(72 * 3600);
/// Recovery codes made at enrolment.
pub const RECOVERY_CODES: usize = 10;
/// Who the authenticator app says the codes are for.
pub const ISSUER: &str = "posflow";

/// A person as the portal acts for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id: String,
    pub email: String,
    pub role: Role,
    pub merchants: Vec<String>,
}

/// Why a step was refused: each is shown to the person as is.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this invitation link is not valid (it may have been used already)")]
    Invitation,
    #[error("this invitation has expired: ask your merchant's owner for a new one")]
    InvitationExpired,
    #[error("someone with this email is already a member")]
    AlreadyMember,
    #[error("the password {0}")]
    Password(String),
    #[error("that code is not the current one")]
    Code,
    #[error("the email, password or code is not right")]
    SignIn,
    #[error("too many failed attempts: signing in is locked for {} more minute(s)", .0.as_secs().div_ceil(60))]
    Locked(Duration),
    #[error("your session has ended: sign in again")]
    SessionEnded,
    #[error("there is no such person in your team")]
    NotInTeam,
    #[error("you cannot change your own access: another owner can")]
    NotYourself,
}

/// A step's outcome: done, refused (with why), or the database failed.
pub type Outcome<T> = Result<Result<T, Refused>, DbError>;

fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

fn random_token() -> String {
    use base64::Engine as _;
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Adds `email` as an invited person; returns their id and the invitation's token (for the
/// email's link; only its hash is kept). Credentials here are [`Secret`]s: never in a log.
pub async fn invite(
    db: &mut Client,
    email: &str,
    role: Role,
    merchants: &[String],
    invited_by: &str,
) -> Outcome<(String, Secret)> {
    let email = email.trim().to_lowercase();
    let tx = db.transaction().await?;
    let existing = tx
        .query_opt(
            "SELECT id, status FROM portal_people WHERE email = $1 FOR UPDATE",
            &[&email],
        )
        .await?;
    let id = match existing {
        Some(r) if r.get::<_, &str>(1) != "removed" => return Ok(Err(Refused::AlreadyMember)),
        // A removed person invited again starts over: new credentials, same id in the trail.
        Some(r) => {
            let id: String = r.get(0);
            tx.execute(
                "UPDATE portal_people SET status = 'invited', role = $2, merchants = $3, \
                 password_hash = NULL, totp_secret = NULL, totp_last_step = NULL, \
                 failed_attempts = 0, locked_until = NULL WHERE id = $1",
                &[&id, &role.as_str(), &merchants],
            )
            .await?;
            id
        }
        None => {
            let id = format!("u_{:016x}", rand::random::<u64>());
            tx.execute(
                "INSERT INTO portal_people (id, email, role, merchants, created_by) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&id, &email, &role.as_str(), &merchants, &invited_by],
            )
            .await?;
            id
        }
    };
    let token = random_token();
    tx.execute(
        "INSERT INTO portal_invitations (token_hash, person_id, expires_at) \
         VALUES ($1, $2, now() + $3 * interval '1 second')",
        &[&sha256(&token), &id, &(INVITATION_TTL.as_secs() as f64)],
    )
    .await?;
    tx.commit().await?;
    Ok(Ok((id, Secret::new(token))))
}

/// What enrolment shows once: the authenticator's secret (as text and as the QR code's URI).
#[derive(Debug)]
pub struct Enrolment {
    pub person_id: String,
    pub secret_base32: Secret,
    pub otpauth_uri: Secret,
}

/// The invited person behind `token`, if the link is good.
async fn invited(db: &Client, token: &str) -> Outcome<(String, String, Vec<String>)> {
    let row = db
        .query_opt(
            "SELECT p.id, p.email, p.merchants, i.expires_at < now() AS expired \
             FROM portal_invitations i JOIN portal_people p ON p.id = i.person_id \
             WHERE i.token_hash = $1 AND i.used_at IS NULL AND p.status = 'invited'",
            &[&sha256(token)],
        )
        .await?;
    Ok(match row {
        None => Err(Refused::Invitation),
        Some(r) if r.get::<_, bool>(3) => Err(Refused::InvitationExpired),
        Some(r) => Ok((r.get(0), r.get(1), r.get(2))),
    })
}

/// First enrolment step, from the invitation's link: sets the password (if it passes the
/// rules) and makes a new authenticator secret, kept sealed until [`confirm`] sees a code from
/// it. Repeating the step (a person who lost the page) replaces both.
pub async fn set_password(
    db: &Client,
    keys: &Keys,
    token: &str,
    new_password: &Secret,
) -> Outcome<Enrolment> {
    let (id, email, merchants) = match invited(db, token).await? {
        Ok(p) => p,
        Err(r) => return Ok(Err(r)),
    };
    if let Some(why) = password::refuse(new_password.expose(), &email, &merchants) {
        return Ok(Err(Refused::Password(why)));
    }
    let secret = totp::new_secret();
    let secret_base32 = totp::base32(&secret);
    db.execute(
        "UPDATE portal_people SET password_hash = $2, totp_secret = $3 WHERE id = $1",
        &[
            &id,
            &password::hash(new_password),
            &keys.seal(&id, &secret_base32),
        ],
    )
    .await?;
    Ok(Ok(Enrolment {
        otpauth_uri: Secret::new(totp::otpauth_uri(ISSUER, &email, &secret)),
        person_id: id,
        secret_base32: Secret::new(secret_base32),
    }))
}

/// The person's authenticator secret, opened.
fn open_secret(keys: &Keys, id: &str, sealed: &str) -> Result<Vec<u8>, DbError> {
    keys.open(id, sealed)
        .ok()
        .and_then(|s| totp::from_base32(s.expose()))
        .ok_or_else(|| DbError::Unexpected(format!("the TOTP secret of {id} does not open")))
}

/// Last enrolment step: a code from the new authenticator proves it is set up; the person
/// becomes active, the invitation is used up, and the recovery codes are made — returned here,
/// shown once, kept only as hashes.
pub async fn confirm(
    db: &mut Client,
    keys: &Keys,
    token: &str,
    code: &str,
    now: SystemTime,
) -> Outcome<Vec<Secret>> {
    let id = match invited(db, token).await? {
        Ok((id, _, _)) => id,
        Err(r) => return Ok(Err(r)),
    };
    let tx = db.transaction().await?;
    let row = tx
        .query_one(
            "SELECT totp_secret FROM portal_people WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
    let Some(sealed) = row.get::<_, Option<&str>>(0) else {
        return Ok(Err(Refused::Invitation));
    };
    let Some(step) = totp::verify(&open_secret(keys, &id, sealed)?, code, unix_s(now), None) else {
        return Ok(Err(Refused::Code));
    };
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
    let hashes: Vec<Vec<u8>> = codes.iter().map(|c| sha256(&normalise(c))).collect();
    tx.execute(
        "UPDATE portal_people SET status = 'active', totp_last_step = $2 WHERE id = $1",
        &[&id, &(step as i64)],
    )
    .await?;
    tx.execute(
        "UPDATE portal_invitations SET used_at = now() WHERE token_hash = $1",
        &[&sha256(token)],
    )
    .await?;
    // Codes of an earlier enrolment (a person re-invited) are retired, not deleted: the API's
    // login deletes nothing.
    tx.execute(
        "UPDATE portal_recovery_codes SET used_at = now() WHERE person_id = $1 AND used_at IS NULL",
        &[&id],
    )
    .await?;
    tx.execute(
        "INSERT INTO portal_recovery_codes (person_id, code_hash) SELECT $1, unnest($2::bytea[])",
        &[&id, &hashes],
    )
    .await?;
    tx.commit().await?;
    Ok(Ok(codes.into_iter().map(Secret::new).collect()))
}

/// `xxxxx-xxxxx` of base32: 50 random bits, easy to copy from paper.
fn recovery_code() -> String {
    let mut raw = [0u8; 7];
    rand::thread_rng().fill_bytes(&mut raw);
    let t = totp::base32(&raw);
    format!("{}-{}", &t[..5], &t[5..10])
}

fn normalise(code: &str) -> String {
    code.trim().replace('-', "").to_uppercase()
}

/// A signed-in person and their new session's id (for the cookie).
#[derive(Debug)]
pub struct SignedIn {
    pub person: Person,
    pub session_id: Secret,
}

/// Signs in with email, password and a code — from the authenticator, or a recovery code
/// (used up). Five failures in a row lock the account ([`session::lockout`]); a success
/// resets the count.
pub async fn sign_in(
    db: &mut Client,
    keys: &Keys,
    email: &str,
    pass: &Secret,
    code: &str,
    source: &str,
    now: SystemTime,
) -> Outcome<SignedIn> {
    let email = email.trim().to_lowercase();
    let tx = db.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT id, role, merchants, password_hash, totp_secret, totp_last_step, \
                    failed_attempts, greatest(0, extract(epoch FROM locked_until - now()))::float8 \
             FROM portal_people WHERE email = $1 AND status = 'active' FOR UPDATE",
            &[&email],
        )
        .await?;
    let Some(r) = row else {
        // Nobody to lock; the same answer, and about the same time, as a wrong password.
        let _ = password::matches(pass, DUMMY_HASH);
        return Ok(Err(Refused::SignIn));
    };
    let id: String = r.get(0);
    let locked_s: f64 = r.get(7);
    if locked_s > 0.0 {
        return Ok(Err(Refused::Locked(Duration::from_secs_f64(locked_s))));
    }
    let pass_ok = password::matches(pass, r.get(3));
    let secret = open_secret(keys, &id, r.get(4))?;
    let last = r.get::<_, Option<i64>>(5).map(|s| s as u64);
    let step = totp::verify(&secret, code, unix_s(now), last);
    let recovery = if pass_ok && step.is_none() {
        tx.execute(
            "UPDATE portal_recovery_codes SET used_at = now() \
             WHERE person_id = $1 AND code_hash = $2 AND used_at IS NULL",
            &[&id, &sha256(&normalise(code))],
        )
        .await?
            == 1
    } else {
        false
    };
    if !(pass_ok && (step.is_some() || recovery)) {
        let refused = failed(&tx, &id, r.get::<_, i32>(6) as u32 + 1).await?;
        tx.commit().await?;
        return Ok(Err(refused));
    }
    let (session_id, id_hash) = session::new_id();
    tx.execute(
        "UPDATE portal_people SET failed_attempts = 0, locked_until = NULL, \
         totp_last_step = coalesce($2, totp_last_step) WHERE id = $1",
        &[&id, &step.map(|s| s as i64)],
    )
    .await?;
    tx.execute(
        "INSERT INTO portal_sessions (id_hash, person_id, source) VALUES ($1, $2, $3)",
        &[&id_hash, &id, &source],
    )
    .await?;
    tx.commit().await?;
    let person = Person {
        role: Role::parse(r.get(1)).expect("the table's CHECK keeps roles known"),
        merchants: r.get(2),
        email,
        id,
    };
    Ok(Ok(SignedIn {
        person,
        session_id: Secret::new(session_id),
    }))
}

/// Counts a failed sign-in (the `failures`th in a row) and locks the account if that is
/// enough; what the person is told.
async fn failed(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
    failures: u32,
) -> Result<Refused, DbError> {
    let lock = session::lockout(failures).map(|d| d.as_secs() as f64);
    tx.execute(
        "UPDATE portal_people SET failed_attempts = $2, \
         locked_until = CASE WHEN $3::float8 IS NULL THEN NULL ELSE now() + $3 * interval '1 second' END \
         WHERE id = $1",
        &[&id, &(failures as i32), &lock],
    )
    .await?;
    Ok(match lock {
        Some(s) => Refused::Locked(Duration::from_secs_f64(s)),
        None => Refused::SignIn,
    })
}

/// An argon2id hash of nothing anyone knows: checked against when the email is unknown, so an
/// unknown email costs what a wrong password does.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$cG9zZmxvd2R1bW15c2FsdA$0Pq0gYf0kfbfJbNbqkKYVQb1bvJUbKj0gJx8mF3Rk4M";

/// The person behind a session's cookie, if the session is live (and still theirs to use: an
/// active person); the session is touched. An idle or too old session is ended here.
pub async fn session_person(db: &Client, session_id: &str) -> Outcome<Person> {
    let row = db
        .query_opt(
            "SELECT p.id, p.email, p.role, p.merchants, \
                    extract(epoch FROM now() - s.created_at)::float8, \
                    extract(epoch FROM now() - s.last_seen_at)::float8 \
             FROM portal_sessions s JOIN portal_people p ON p.id = s.person_id \
             WHERE s.id_hash = $1 AND s.ended_at IS NULL AND p.status = 'active'",
            &[&session::id_hash(session_id)],
        )
        .await?;
    let Some(r) = row else {
        return Ok(Err(Refused::SessionEnded));
    };
    let secs = |i| Duration::from_secs_f64(r.get::<_, f64>(i).max(0.0));
    let live = session::check(secs(4), secs(5));
    db.execute(
        "UPDATE portal_sessions SET last_seen_at = now(), \
         ended_at = CASE WHEN $2 THEN NULL ELSE now() END WHERE id_hash = $1",
        &[&session::id_hash(session_id), &live.is_ok()],
    )
    .await?;
    if live.is_err() {
        return Ok(Err(Refused::SessionEnded));
    }
    Ok(Ok(Person {
        id: r.get(0),
        email: r.get(1),
        role: Role::parse(r.get(2)).expect("the table's CHECK keeps roles known"),
        merchants: r.get(3),
    }))
}

/// A merchant's people (not removed), for the Team page: email, role, status.
pub async fn of_merchant(db: &Client, merchant: &str) -> Result<Vec<Member>, DbError> {
    Ok(db
        .query(
            "SELECT id, email, role, status FROM portal_people \
             WHERE $1 = ANY (merchants) AND status <> 'removed' ORDER BY email",
            &[&merchant],
        )
        .await?
        .iter()
        .map(|r| Member {
            id: r.get(0),
            email: r.get(1),
            role: r.get(2),
            status: r.get(3),
        })
        .collect())
}

/// A person of a merchant's team, as the Team page lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub email: String,
    pub role: String,
    pub status: String,
}

/// What an owner changes about another person of their merchant (the Team page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeamChange {
    /// Their role, from now on (their sessions go on, under the new role).
    Role(Role),
    /// No more access: sessions ended, unused recovery codes and links spent; kept for the trail.
    Remove,
    /// A lost or compromised authenticator: credentials cleared, sessions ended, and a new
    /// enrolment link (the returned token) to set a password and an authenticator again.
    ResetMfa,
}

/// Applies `change` to the person `target` of `merchant`, made by the owner `by` — never to
/// themselves (no merchant locks out its last owner by a slip), and only to someone whose
/// merchants are all `by`'s (an owner of one shop cannot cut a chain's person off the others).
/// Returns the person before and after (for the audit trail) and, for a reset, the new link's
/// token.
pub async fn change(
    db: &mut Client,
    merchant: &str,
    target: &str,
    by: &Person,
    change: TeamChange,
) -> Outcome<(Member, Member, Option<Secret>)> {
    if target == by.id {
        return Ok(Err(Refused::NotYourself));
    }
    let tx = db.transaction().await?;
    let member = |r: &tokio_postgres::Row| Member {
        id: r.get(0),
        email: r.get(1),
        role: r.get(2),
        status: r.get(3),
    };
    let Some(before) = tx
        .query_opt(
            "SELECT id, email, role, status FROM portal_people \
             WHERE id = $1 AND $2 = ANY (merchants) AND merchants <@ $3 AND status <> 'removed' \
             FOR UPDATE",
            &[&target, &merchant, &by.merchants],
        )
        .await?
        .map(|r| member(&r))
    else {
        return Ok(Err(Refused::NotInTeam));
    };
    let (sql, token) = match change {
        TeamChange::Role(_) => ("UPDATE portal_people SET role = $2 WHERE id = $1", None),
        TeamChange::Remove => ("UPDATE portal_people SET status = 'removed' WHERE id = $1", None),
        TeamChange::ResetMfa => (
            "UPDATE portal_people SET status = 'invited', password_hash = NULL, totp_secret = NULL, \
             totp_last_step = NULL, failed_attempts = 0, locked_until = NULL WHERE id = $1",
            Some(random_token()),
        ),
    };
    let role = match change {
        TeamChange::Role(r) => r.as_str(),
        _ => before.role.as_str(),
    };
    if let TeamChange::Role(_) = change {
        tx.execute(sql, &[&target, &role]).await?;
    } else {
        tx.execute(sql, &[&target]).await?;
        for spend in [
            "UPDATE portal_sessions SET ended_at = now() WHERE person_id = $1 AND ended_at IS NULL",
            "UPDATE portal_recovery_codes SET used_at = now() WHERE person_id = $1 AND used_at IS NULL",
            "UPDATE portal_invitations SET used_at = now() WHERE person_id = $1 AND used_at IS NULL",
        ] {
            tx.execute(spend, &[&target]).await?;
        }
    }
    if let Some(t) = &token {
        tx.execute(
            "INSERT INTO portal_invitations (token_hash, person_id, expires_at) \
             VALUES ($1, $2, now() + $3 * interval '1 second')",
            &[&sha256(t), &target, &(INVITATION_TTL.as_secs() as f64)],
        )
        .await?;
    }
    let after = member(
        &tx.query_one(
            "SELECT id, email, role, status FROM portal_people WHERE id = $1",
            &[&target],
        )
        .await?,
    );
    tx.commit().await?;
    Ok(Ok((before, after, token.map(Secret::new))))
}

/// The emails of the people among `actors` (audit records' actors: person ids, key ids, …).
pub async fn emails_of(
    db: &impl tokio_postgres::GenericClient,
    actors: &[String],
) -> Result<HashMap<String, String>, DbError> {
    Ok(db
        .query(
            "SELECT id, email FROM portal_people WHERE id = ANY ($1)",
            &[&actors],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The id of the person with `email`, if any (the audit page's filter by person).
pub async fn id_of(
    db: &impl tokio_postgres::GenericClient,
    email: &str,
) -> Result<Option<String>, DbError> {
    Ok(db
        .query_opt(
            "SELECT id FROM portal_people WHERE email = $1",
            &[&email.trim().to_lowercase()],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Ends one session (sign out).
pub async fn sign_out(db: &Client, session_id: &str) -> Result<bool, DbError> {
    Ok(db
        .execute(
            "UPDATE portal_sessions SET ended_at = now() WHERE id_hash = $1 AND ended_at IS NULL",
            &[&session::id_hash(session_id)],
        )
        .await?
        == 1)
}

/// Ends every session of a person (sign out everywhere); returns how many were live.
pub async fn sign_out_everywhere(db: &Client, person_id: &str) -> Result<u64, DbError> {
    Ok(db
        .execute(
            "UPDATE portal_sessions SET ended_at = now() WHERE person_id = $1 AND ended_at IS NULL",
            &[&person_id],
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_is_a_real_argon2id_hash_so_unknown_emails_cost_a_verification() {
        let h = argon2::password_hash::PasswordHash::new(DUMMY_HASH).expect("a PHC string");
        assert_eq!(h.algorithm.as_str(), "argon2id");
        assert!(!password::matches(
            &Secret::new("anything at all"),
            DUMMY_HASH
        ));
    }

    #[test]
    fn recovery_codes_are_ten_base32_characters_and_forgive_case_and_dashes() {
        let c = recovery_code();
        assert_eq!(c.len(), 11);
        assert_eq!(&c[5..6], "-");
        assert!(totp::from_base32(&c.replace('-', "")).is_some());
        assert_eq!(
            normalise(&format!(" {} ", c.to_lowercase())),
            c.replace('-', "")
        );
        assert_ne!(recovery_code(), c);
    }
}
