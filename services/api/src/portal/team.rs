//! The Team page (owners: `team:manage`): the merchant's people; invite one by email; change
//! another's role, remove them, or reset their authenticator (a new enrolment link by email).
//! An owner cannot change their own access — another owner can — so a slip never leaves a
//! merchant without one. Every change is an audit record with the person before and after.

use super::html::{escape, field, form, notice, outcome, page, Outcome};
use super::pages::{
    authorised, authorised_form, changed, served, unavailable, PageReply, PageRequest,
};
use super::people::{self, Member, TeamChange};
use super::{invite, session};
use crate::auth::{Permission, Role};
use crate::service::State;

/// The roles a person can be given (operators use keys, not the portal).
const ROLES: [Role; 4] = [Role::Owner, Role::Finance, Role::Developer, Role::Auditor];

pub(super) async fn show(state: &State, r: &PageRequest<'_>, done: Outcome) -> PageReply {
    let (person, scope, sid) =
        match authorised(state, r, Permission::TeamManage, "portal.team").await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let csrf = session::csrf_token(&sid);
    let Ok(c) = state.pool.get().await else {
        return unavailable();
    };
    let Ok(people) = people::of_merchant(&c, scope.merchant()).await else {
        return unavailable();
    };
    if let Err(reply) = served(state, r, (&person, scope.merchant()), "portal.team").await {
        return reply;
    }
    let m = escape(scope.merchant());
    let rows: String = people
        .iter()
        .map(|p| row(p, p.id == person.id, &m, &csrf))
        .collect();
    let invite = if state.invitations.is_some() {
        form(
            "/portal/team/invite",
            &csrf,
            &format!(
                r#"<input type="hidden" name="merchant" value="{m}">{}<label for="role">Role</label><select id="role" name="role">{}</select><button type="submit">Send invitation</button>"#,
                field("email", "Email", "email", "off"),
                role_options(None),
            ),
        )
    } else {
        notice(
            "error",
            "Invitations are off: the portal has no --portal-url and mail server.",
        )
    };
    let main = format!(
        r#"{}<h2>People of {m}</h2><div class="scroll"><table class="team"><thead><tr><th>email</th><th>role</th><th>status</th><th></th></tr></thead><tbody>{rows}</tbody></table></div><h2>Invite someone</h2>{invite}"#,
        outcome(&done).0,
    );
    PageReply::html(200, page("Team", Some((&person, &csrf)), &main))
}

fn role_options(selected: Option<&str>) -> String {
    ROLES
        .iter()
        .map(|r| {
            let sel = if Some(r.as_str()) == selected {
                " selected"
            } else {
                ""
            };
            format!(r#"<option value="{0}"{sel}>{0}</option>"#, r.as_str())
        })
        .collect()
}

/// A person's row: the owner's controls over anyone but themselves.
fn row(p: &Member, yourself: bool, m: &str, csrf: &str) -> String {
    let id = escape(&p.id);
    let controls = if yourself {
        "(you)".to_string()
    } else {
        let hidden = format!(r#"<input type="hidden" name="merchant" value="{m}">"#);
        [
            form(
                &format!("/portal/team/{id}/role"),
                csrf,
                &format!(
                    r#"{hidden}<label for="role-{id}" class="sr">Role</label><select id="role-{id}" name="role">{}</select><button type="submit" class="change-role">Change role</button>"#,
                    role_options(Some(&p.role))
                ),
            ),
            form(
                &format!("/portal/team/{id}/reset-mfa"),
                csrf,
                &format!(r#"{hidden}<button type="submit" class="reset-mfa">Reset authenticator</button>"#),
            ),
            form(
                &format!("/portal/team/{id}/remove"),
                csrf,
                &format!(r#"{hidden}<button type="submit" class="remove">Remove</button>"#),
            ),
        ]
        .concat()
    };
    format!(
        r#"<tr data-person="{id}"><td class="email">{}</td><td class="role">{}</td><td class="status">{}</td><td class="controls">{controls}</td></tr>"#,
        escape(&p.email),
        escape(&p.role),
        escape(&p.status)
    )
}

pub(super) async fn invite(state: &State, r: &PageRequest<'_>) -> PageReply {
    let action = "portal.team.invite";
    let (person, scope, _, f) =
        match authorised_form(state, r, Permission::TeamManage, action).await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let (Some(inv), Ok(mut c)) = (&state.invitations, state.pool.get().await) else {
        return unavailable();
    };
    let email = f.get("email").map(String::as_str).unwrap_or("");
    let role = f
        .get("role")
        .and_then(|r| Role::parse(r))
        .filter(|r| ROLES.contains(r));
    let merchants = [scope.merchant().to_string()];
    let (done, outcome) = match role {
        None => (Err("Choose one of the roles.".to_string()), "invalid"),
        Some(_) if !email.contains('@') || email.len() > 254 => {
            (Err("That is not an email address.".to_string()), "invalid")
        }
        Some(role) => match inv
            .invite(&mut c, email, role, &merchants, &person.id)
            .await
        {
            Ok(invite::Sent::Invited(_)) => (Ok(format!("Invitation sent to {email}.")), "ok"),
            Ok(invite::Sent::Refused(why)) => (Err(why.to_string()), "refused"),
            Ok(invite::Sent::MailFailed(why)) => (
                Err(format!(
                    "The mail server did not take the invitation ({why}); try again."
                )),
                "mail_failed",
            ),
            Err(_) => return unavailable(),
        },
    };
    let after = serde_json::json!({"email": email.trim().to_lowercase(), "role": f.get("role")});
    let who = (&person, scope.merchant());
    let change = (None, Some(after.to_string()));
    if let Err(reply) = changed(state, r, who, action, outcome, change).await {
        return reply;
    }
    show(state, r, Some(done.map_err(|e| vec![e]))).await
}

/// `/portal/team/<id>/role|remove|reset-mfa`.
pub(super) async fn change(state: &State, r: &PageRequest<'_>, rest: &str) -> PageReply {
    let (target, what) = rest.split_once('/').unwrap_or((rest, ""));
    let action = match what {
        "role" => "portal.team.role",
        "remove" => "portal.team.remove",
        "reset-mfa" => "portal.team.reset_mfa",
        _ => return super::pages::not_found(),
    };
    let (person, scope, _, f) =
        match authorised_form(state, r, Permission::TeamManage, action).await {
            Ok(it) => it,
            Err(reply) => return reply,
        };
    let change = match what {
        "role" => match f
            .get("role")
            .and_then(|r| Role::parse(r))
            .filter(|r| ROLES.contains(r))
        {
            Some(role) => TeamChange::Role(role),
            None => {
                return show(state, r, Some(Err(vec!["Choose one of the roles.".into()]))).await
            }
        },
        "remove" => TeamChange::Remove,
        _ => TeamChange::ResetMfa,
    };
    let Ok(mut c) = state.pool.get().await else {
        return unavailable();
    };
    let who = (&person, scope.merchant());
    let applied = people::change(&mut c, scope.merchant(), target, &person, change).await;
    let (done, outcome, audited) = match applied {
        Err(_) => return unavailable(),
        Ok(Err(why)) => (Err(why.to_string()), "refused", (None, None)),
        Ok(Ok((before, after, token))) => {
            let json = |m: &Member| {
                serde_json::json!({"email": m.email, "role": m.role, "status": m.status})
                    .to_string()
            };
            let audited = (Some(json(&before)), Some(json(&after)));
            let done = match (token, &state.invitations) {
                (Some(token), Some(inv)) => {
                    let reason = "The owner has reset your posflow sign-in: set a new password and authenticator.";
                    match inv.send_link(&after.id, &after.email, &token, reason, "Set up your posflow sign-in again").await {
                        None => Ok(format!("{}: a new link to set up their sign-in is on its way.", after.email)),
                        Some(why) => Err(format!("{}'s sign-in is reset, but the mail server did not take the link ({why}): reset again.", after.email)),
                    }
                }
                (Some(_), None) => Err("Reset, but invitations are off: the portal has no --portal-url and mail server.".into()),
                (None, _) => Ok(format!("{}: {} → {}, {}.", after.email, before.role, after.role, after.status)),
            };
            (done, "ok", audited)
        }
    };
    if let Err(reply) = changed(state, r, who, action, outcome, audited).await {
        return reply;
    }
    show(state, r, Some(done.map_err(|e| vec![e]))).await
}
