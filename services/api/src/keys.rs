//! API keys in the database: authentication, and create / list / revoke — for a merchant's
//! owner through the API (under its scope) and for operators through `posflow-admin api-keys`.

use crate::auth::{self, Presented, Principal, Role};
use crate::problem::{FieldError, Problem};
use crate::records::millis;
use posflow_pg::DbError;
use posflow_schema::rfc3339_millis;
use serde_json::{json, Value};
use std::time::SystemTime;
use tokio_postgres::{GenericClient, Row};

/// Why a presented key was not accepted (the client is told only "401").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    Unknown,
    WrongSecret,
    Revoked,
    Expired,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::WrongSecret => "wrong-secret",
            Refusal::Revoked => "revoked",
            Refusal::Expired => "expired",
        }
    }
}

/// Looks the key up by id (the only api_keys row the API may read before it knows a merchant)
/// and checks its secret, revocation and expiry.
pub async fn authenticate(
    client: &mut tokio_postgres::Client,
    key: &str,
) -> Result<Result<Principal, (Option<String>, Refusal)>, DbError> {
    let Some(Presented { id, secret }) = auth::parse_key(key) else {
        return Ok(Err((None, Refusal::Malformed)));
    };
    let tx = client.transaction().await?;
    tx.execute("SELECT set_config('posflow.auth_key', $1, true)", &[&id])
        .await?;
    let row = tx
        .query_opt(
            "SELECT secret_hash, role, merchants, revoked_at IS NOT NULL, \
             coalesce(expires_at <= now(), false) FROM api_keys WHERE id = $1",
            &[&id],
        )
        .await?;
    tx.commit().await?;
    let refused = |why| Ok(Err((Some(id.to_string()), why)));
    let Some(row) = row else {
        return refused(Refusal::Unknown);
    };
    let stored: Vec<u8> = row.get(0);
    if !auth::same_hash(&auth::hash(secret), &stored) {
        return refused(Refusal::WrongSecret);
    }
    if row.get::<_, bool>(3) {
        return refused(Refusal::Revoked);
    }
    if row.get::<_, bool>(4) {
        return refused(Refusal::Expired);
    }
    let role = Role::parse(row.get(1)).unwrap_or(Role::Auditor);
    Ok(Ok(Principal {
        key_id: id.to_string(),
        role,
        merchants: row.get(2),
    }))
}

/// Records that a key was used (callers throttle this to once a minute per key).
pub async fn touch(client: &mut tokio_postgres::Client, id: &str) -> Result<(), DbError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT set_config('posflow.auth_key', $1, true)", &[&id])
        .await?;
    tx.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE id = $1",
        &[&id],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A new key.
pub struct NewKey<'a> {
    pub name: &'a str,
    pub role: Role,
    pub merchants: &'a [String],
    pub expires_at: Option<SystemTime>,
    pub created_by: &'a str,
}

/// Creates a key; returns its listing and the whole key (shown once).
pub async fn create(c: &impl GenericClient, k: &NewKey<'_>) -> Result<(Value, String), DbError> {
    let (id, key, hash) = auth::generate();
    let row = c
        .query_one(
            &format!(
                "INSERT INTO api_keys (id, secret_hash, name, role, merchants, expires_at, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLUMNS}"
            ),
            &[&id, &hash, &k.name, &k.role.as_str(), &k.merchants, &k.expires_at, &k.created_by],
        )
        .await?;
    Ok((listing(&row), key))
}

const KEY_COLUMNS: &str =
    "id, name, role, merchants, created_at, created_by, expires_at, revoked_at, revoked_by, last_used_at";

fn listing(r: &Row) -> Value {
    let t = |c: &str| {
        r.get::<_, Option<SystemTime>>(c)
            .map(|t| rfc3339_millis(millis(t)))
    };
    json!({
        "id": r.get::<_, String>("id"),
        "name": r.get::<_, String>("name"),
        "role": r.get::<_, String>("role"),
        "merchants": r.get::<_, Vec<String>>("merchants"),
        "created_at": t("created_at"),
        "created_by": r.get::<_, String>("created_by"),
        "expires_at": t("expires_at"),
        "revoked_at": t("revoked_at"),
        "revoked_by": r.get::<_, Option<String>>("revoked_by"),
        "last_used_at": t("last_used_at"),
    })
}

/// Keys acting for `merchant` (every key when `None`: operators' CLI), newest first.
pub async fn list(c: &impl GenericClient, merchant: Option<&str>) -> Result<Vec<Value>, DbError> {
    let rows = c
        .query(
            &format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE $1::text IS NULL OR $1 = ANY (merchants) \
                 ORDER BY created_at DESC, id"
            ),
            &[&merchant],
        )
        .await?;
    Ok(rows.iter().map(listing).collect())
}

/// Revokes a key; `within`: only a key of this merchant whose role the revoker's role covers
/// (a developer cannot revoke the owner's keys); `None` for operators' CLI. Returns its listing
/// before and after, or `None` if there is no such key within reach.
pub async fn revoke(
    c: &impl GenericClient,
    id: &str,
    within: Option<(&str, Role)>,
    by: &str,
) -> Result<Option<(Value, Value)>, DbError> {
    let merchant = within.map(|(m, _)| m);
    let roles = within.map(|(_, r)| r.creatable());
    let filter = "id = $1 AND ($2::text IS NULL OR $2 = ANY (merchants)) \
                  AND ($3::text[] IS NULL OR role = ANY ($3))";
    let Some(before) = c
        .query_opt(
            &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE {filter}"),
            &[&id, &merchant, &roles],
        )
        .await?
    else {
        return Ok(None);
    };
    let after = c
        .query_one(
            &format!(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()), revoked_by = coalesce(revoked_by, $4) \
                 WHERE {filter} RETURNING {KEY_COLUMNS}"
            ),
            &[&id, &merchant, &roles, &by],
        )
        .await?;
    Ok(Some((listing(&before), listing(&after))))
}

/// A request for a key, from the API's JSON body or the portal's form.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInput {
    pub name: String,
    pub role: String,
    pub expires_at: Option<String>,
}

/// Creates a key of `merchant` for a principal of role `by_role`, after checking the request:
/// every problem at once, and no role beyond what `by_role` may do itself (no escalation).
pub async fn create_checked(
    c: &impl GenericClient,
    input: &KeyInput,
    by_role: Role,
    merchant: &str,
    created_by: &str,
) -> Result<(Value, String), Problem> {
    let mut errors = Vec::new();
    let role =
        Role::parse(&input.role).filter(|r| by_role.creatable().contains(&r.as_str().to_string()));
    if role.is_none() {
        errors.push((
            "role",
            format!(
                "must be one of {} (what your role may give)",
                by_role.creatable().join(", ")
            ),
        ));
    }
    if input.name.trim().is_empty() || input.name.len() > 100 {
        errors.push(("name", "must be 1-100 characters".to_string()));
    }
    let expires = match input
        .expires_at
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(crate::query::parse_time)
    {
        Some(None) => {
            errors.push(("expires_at", "must be an RFC 3339 time".into()));
            None
        }
        Some(Some(t)) if t <= SystemTime::now() => {
            errors.push(("expires_at", "must be in the future".into()));
            None
        }
        Some(t) => t,
        None => None,
    };
    let Some(role) = role.filter(|_| errors.is_empty()) else {
        return Err(Problem::Invalid(
            errors
                .into_iter()
                .map(|(f, m)| FieldError {
                    field: f.into(),
                    message: m,
                })
                .collect(),
        ));
    };
    let new = NewKey {
        name: input.name.trim(),
        role,
        merchants: &[merchant.to_string()],
        expires_at: expires,
        created_by,
    };
    create(c, &new).await.map_err(|e| {
        tracing::warn!(error = %e.summary(), "creating a key failed");
        Problem::Unavailable
    })
}
