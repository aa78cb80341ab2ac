//! HTML for the portal: escaping, the page's frame, forms with their CSRF token. Everything a
//! person or a terminal chose goes through [`escape`]; nothing is inline script or style (the
//! CSP forbids both: see session::page_headers).

use super::people::Person;
use crate::auth::{Permission, Role};

/// Text made safe for HTML content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The portal's stylesheet, served at `/portal/static/portal.css` (the CSP allows only it).
pub const CSS: &str = include_str!("portal.css");

/// The pages in the navigation, each shown to the roles with its permission.
const NAV: [(&str, &str, Permission); 8] = [
    ("/portal/", "Overview", Permission::RecordsRead),
    (
        "/portal/transactions",
        "Transactions",
        Permission::RecordsRead,
    ),
    ("/portal/reports", "Reports", Permission::RecordsRead),
    (
        "/portal/notifications",
        "Notifications",
        Permission::SettingsRead,
    ),
    ("/portal/deliveries", "Deliveries", Permission::EventsRead),
    ("/portal/api-keys", "API keys", Permission::KeysRead),
    ("/portal/audit", "Audit log", Permission::AuditRead),
    ("/portal/team", "Team", Permission::TeamManage),
];

/// Where a role lands after sign-in: the first page of the navigation it may open.
pub fn landing(role: Role) -> &'static str {
    NAV.iter()
        .find(|(_, _, p)| role.allows(*p))
        .map_or("/portal/", |(href, _, _)| href)
}

/// A whole page: its title, who is signed in (their nav and sign-out), and `main`'s HTML.
pub fn page(title: &str, who: Option<(&Person, &str)>, main: &str) -> String {
    let nav = match who {
        Some((p, csrf)) => format!(
            r#"<nav>{}<span class="who">{} · {}</span>{}</nav>"#,
            NAV.iter()
                .filter(|(_, _, perm)| p.role.allows(*perm))
                .map(|(href, label, _)| format!(r#"<a href="{href}">{label}</a>"#))
                .collect::<String>(),
            escape(&p.email),
            p.role.as_str(),
            form(
                "/portal/sign-out",
                csrf,
                r#"<button type="submit">Sign out</button>"#
            ),
        ),
        None => String::new(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · posflow</title><link rel="stylesheet" href="/portal/static/portal.css"></head>
<body><header><strong>posflow</strong>{nav}</header><main><h1>{title}</h1>
{main}
</main></body></html>"#,
        title = escape(title)
    )
}

/// A POST form to `action` with its CSRF token.
pub fn form(action: &str, csrf: &str, fields: &str) -> String {
    format!(
        r#"<form method="post" action="{}"><input type="hidden" name="csrf" value="{}">{fields}</form>"#,
        escape(action),
        escape(csrf)
    )
}

/// A labelled input.
pub fn field(name: &str, label: &str, kind: &str, autocomplete: &str) -> String {
    format!(
        r#"<label for="{name}">{label}</label><input id="{name}" name="{name}" type="{kind}" autocomplete="{autocomplete}" required>"#
    )
}

/// A filter's `<option>`s: "any" (the empty value), then `choices`, `chosen` selected.
pub fn filter_options(chosen: Option<&str>, choices: &[&str]) -> String {
    std::iter::once(&"")
        .chain(choices)
        .map(|c| {
            let sel = if chosen == Some(*c) { " selected" } else { "" };
            let words = if c.is_empty() { "any" } else { c };
            format!(
                r#"<option value="{}"{sel}>{}</option>"#,
                escape(c),
                escape(words)
            )
        })
        .collect()
}

/// What a form's post came to, shown on the page it answers with: done (what was done), or
/// refused (each reason).
pub type Outcome = Option<Result<String, Vec<String>>>;

/// An [`Outcome`]'s notices, and the page's status: 400 when refused.
pub fn outcome(done: &Outcome) -> (String, u16) {
    match done {
        Some(Ok(d)) => (notice("ok", d), 200),
        Some(Err(why)) => (why.iter().map(|w| notice("error", w)).collect(), 400),
        None => (String::new(), 200),
    }
}

/// A notice (an error shown with a form, or a result).
pub fn notice(kind: &str, text: &str) -> String {
    format!(
        r#"<p class="notice {kind}" role="{}">{}</p>"#,
        if kind == "error" { "alert" } else { "status" },
        escape(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_inert() {
        assert_eq!(
            escape(r#"<script>alert('x')</script> & "q""#),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        let p = page("<b>", None, "");
        assert!(p.contains("<title>&lt;b&gt; · posflow</title>"));
        assert!(!p.contains("<script"), "no script at all");
        assert!(!p.contains("style="), "no inline style");
    }
}
