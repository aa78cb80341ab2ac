//! The API keys page (`keys:read` to see it: owners, developers, auditors; `keys:manage` to
//! create and revoke: owners, developers). The same code as the API's key routes
//! (keys::create_checked, keys::revoke), so the same rule holds: no key of a role greater than
//! the person's own (a developer makes and revokes developer keys only). A new key is shown
//! once, on the page that answers its creation; only its SHA-256 is kept.

use super::html::{escape, field, form, notice, outcome, page, Outcome};
use super::pages::{
    authorised, authorised_form, changed, in_scope, served, PageReply, PageRequest,
};
use super::session;
use crate::auth::Permission;
use crate::keys::{self, KeyInput};
use crate::service::State;
use serde_json::Value;

/// What the page says above the list: a new key (shown once), or a result.
pub(super) enum Shown {
    NewKey(String),
    Done(Outcome),
}

pub(super) async fn show(state: &State, r: &PageRequest<'_>, shown: Option<Shown>) -> PageReply {
    let action = "portal.api_keys.read";
    let (person, scope, sid) = match authorised(state, r, Permission::KeysRead, action).await {
        Ok(it) => it,
        Err(reply) => return reply,
    };
    let listed = in_scope(state, &scope, async |s| {
        keys::list(&s.tx, Some(&s.merchant)).await
    })
    .await;
    let listed = match listed {
        Ok(it) => it,
        Err(reply) => return reply,
    };
    if let Err(reply) = served(state, r, (&person, scope.merchant()), action).await {
        return reply;
    }
    let csrf = session::csrf_token(&sid);
    let manage = person.role.allows(Permission::KeysManage);
    let creatable = person.role.creatable();
    let mut main = match &shown {
        Some(Shown::NewKey(key)) => format!(
            r#"{}<p>Copy it now: it is shown only once.</p><p class="secret" id="new-key">{}</p>"#,
            notice("ok", "Key created."),
            escape(key)
        ),
        Some(Shown::Done(done)) => outcome(done).0,
        None => String::new(),
    };
    let rows: String = listed
        .iter()
        .map(|k| {
            row(
                k,
                scope.merchant(),
                &csrf,
                manage && creatable.iter().any(|c| k["role"] == **c),
            )
        })
        .collect();
    main.push_str(&format!(
        r#"<div class="scroll"><table class="keys"><thead><tr><th>key id</th><th>name</th><th>role</th><th>created</th><th>last used</th><th>status</th><th></th></tr></thead><tbody>{rows}</tbody></table></div>"#
    ));
    if manage {
        let roles: String = creatable
            .iter()
            .map(|r| format!(r#"<option value="{r}">{r}</option>"#))
            .collect();
        main.push_str("<h2>Create a key</h2>");
        main.push_str(&form(
            "/portal/api-keys",
            &csrf,
            &format!(
                r#"<input type="hidden" name="merchant" value="{}">{}<label for="role">Role</label><select id="role" name="role">{roles}</select>
<label for="expires">Expires (UTC, optional)</label><input id="expires" name="expires" type="datetime-local"><button type="submit">Create key</button>"#,
                escape(scope.merchant()),
                field("name", "Name (what it is for)", "text", "off"),
            ),
        ));
    }
    let status = match &shown {
        Some(Shown::Done(done)) => outcome(done).1,
        _ => 200,
    };
    PageReply::html(status, page("API keys", Some((&person, &csrf)), &main))
}

/// One key's row; a revoke button when the person may revoke it and it is live.
fn row(k: &Value, merchant: &str, csrf: &str, revocable: bool) -> String {
    let t = |c: &str| escape(k[c].as_str().unwrap_or("—"));
    let id = k["id"].as_str().unwrap_or("");
    let status = if !k["revoked_at"].is_null() {
        format!("revoked {}", t("revoked_at"))
    } else {
        "active".into()
    };
    let revoke = if revocable && k["revoked_at"].is_null() {
        form(
            &format!("/portal/api-keys/{}/revoke", escape(id)),
            csrf,
            &format!(
                r#"<input type="hidden" name="merchant" value="{}"><button type="submit">Revoke</button>"#,
                escape(merchant)
            ),
        )
    } else {
        String::new()
    };
    format!(
        r#"<tr data-key="{}"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="status">{status}</td><td>{revoke}</td></tr>"#,
        escape(id),
        escape(id),
        t("name"),
        t("role"),
        t("created_at"),
        t("last_used_at"),
    )
}

/// Creates a key (`keys:manage`); the answer shows it once.
pub(super) async fn create(state: &State, r: &PageRequest<'_>) -> PageReply {
    let action = "portal.api_keys.create";
    let (person, scope, _, f) =
        match authorised_form(state, r, Permission::KeysManage, action).await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let get = |k: &str| f.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let expires = get("expires");
    let input = KeyInput {
        name: get("name"),
        role: get("role"),
        // `datetime-local` gives minutes, no zone: the form says UTC.
        expires_at: (!expires.is_empty()).then(|| format!("{expires}:00Z")),
    };
    let made = in_scope(state, &scope, async |s| {
        Ok(keys::create_checked(&s.tx, &input, person.role, &s.merchant, &person.id).await)
    })
    .await;
    let who = (&person, scope.merchant());
    let shown = match made {
        Err(reply) => return reply,
        Ok(Ok((listing, key))) => {
            let change = (None, Some(listing.to_string()));
            if let Err(reply) = changed(state, r, who, action, "ok", change).await {
                return reply;
            }
            Shown::NewKey(key)
        }
        Ok(Err(problem)) => {
            if let Err(reply) = changed(state, r, who, action, "invalid", (None, None)).await {
                return reply;
            }
            Shown::Done(Some(Err(problem.reasons())))
        }
    };
    show(state, r, Some(shown)).await
}

/// Revokes a key of the merchant whose role the person's covers (`keys:manage`); another
/// merchant's key, or one above the person's role, is "no such key".
pub(super) async fn revoke(state: &State, r: &PageRequest<'_>, id: &str) -> PageReply {
    let action = "portal.api_keys.revoke";
    let (person, scope, _) = match authorised_form(state, r, Permission::KeysManage, action).await {
        Ok((p, s, sid, _)) => (p, s, sid),
        Err(reply) => return reply,
    };
    let done = in_scope(state, &scope, async |s| {
        keys::revoke(&s.tx, id, Some((&s.merchant, person.role)), &person.id).await
    })
    .await;
    let who = (&person, scope.merchant());
    let shown = match done {
        Err(reply) => return reply,
        Ok(Some((before, after))) => {
            state.forget_key(id);
            let change = (Some(before.to_string()), Some(after.to_string()));
            if let Err(reply) = changed(state, r, who, action, "ok", change).await {
                return reply;
            }
            Ok(format!("Key {id} revoked: it opens nothing from now on."))
        }
        Ok(None) => {
            if let Err(reply) = changed(state, r, who, action, "not_found", (None, None)).await {
                return reply;
            }
            Err(vec![format!("There is no key {id} you may revoke.")])
        }
    };
    show(state, r, Some(Shown::Done(Some(shown)))).await
}
