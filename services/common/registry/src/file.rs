//! The reviewed registry file, `posflow-admin terminals apply --file F`:
//!
//! ```toml
//! [terminals.T0001]
//! merchant = "M001"
//! # status = "active"   (default) | "blocked" | "retired"
//! # note = "why"        (kept with the registration, for the audit trail)
//! ```
//!
//! Every mistake in the file is listed at once; nothing is written unless there is none.

use crate::Status;
use posflow_schema::TerminalRegistration;

/// Parses `text`; each registration is stamped with `changed_by` and `changed_at`.
pub fn parse(
    text: &str,
    changed_by: &str,
    changed_at: i64,
) -> Result<Vec<TerminalRegistration>, Vec<String>> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| vec![format!("not valid TOML: {}", e.message())])?;
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for key in doc.keys().filter(|k| *k != "terminals") {
        errors.push(format!(
            "{key}: unknown section (only [terminals.<id>] tables)"
        ));
    }
    let terminals = match doc.get("terminals") {
        None => {
            errors.push("no [terminals.<id>] table: nothing to apply".into());
            return Err(errors);
        }
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err(vec!["terminals must be a table of [terminals.<id>]".into()]),
    };
    for (id, v) in terminals {
        if let Some(r) = entry(id, v, &mut errors) {
            out.push(TerminalRegistration {
                changed_at,
                changed_by: changed_by.into(),
                ..r
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// One `[terminals.<id>]` table, its problems added to `errors` (not yet stamped).
fn entry(id: &str, v: &toml::Value, errors: &mut Vec<String>) -> Option<TerminalRegistration> {
    let at = format!("terminals.{id}");
    if !posflow_mqtt::is_valid_id(id) {
        errors.push(format!("{at}: a terminal id is 1-64 of [A-Za-z0-9_-]"));
    }
    let Some(t) = v.as_table() else {
        errors.push(format!("{at}: must be a table with merchant = \"...\""));
        return None;
    };
    for k in t
        .keys()
        .filter(|k| !["merchant", "status", "note"].contains(&k.as_str()))
    {
        errors.push(format!("{at}: unknown key {k:?} (merchant, status, note)"));
    }
    let text_of = |key: &str| match t.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{at}: {key} must be a string")),
    };
    let merchant = match text_of("merchant") {
        Ok(Some(m)) if posflow_mqtt::is_valid_id(&m) => Some(m),
        Ok(Some(m)) => {
            errors.push(format!("{at}: merchant {m:?} is not 1-64 of [A-Za-z0-9_-]"));
            None
        }
        Ok(None) => {
            errors.push(format!("{at}: merchant is required"));
            None
        }
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let status = match text_of("status") {
        Ok(None) => Some(Status::Active),
        Ok(Some(s)) => Status::parse(&s).or_else(|| {
            errors.push(format!(
                "{at}: status {s:?} is not one of active, blocked, retired"
            ));
            None
        }),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let note = text_of("note").unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    Some(TerminalRegistration {
        terminal_id: id.to_string(),
        merchant_id: merchant?,
        status: status?.as_str().into(),
        changed_at: 0,
        changed_by: String::new(),
        note: note.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_file_gives_one_registration_per_terminal() {
        let r = parse(
            "[terminals.T0001]\nmerchant = \"M001\"\n[terminals.T0002]\nmerchant = \"M001\"\nstatus = \"blocked\"\nnote = \"INC-7: stolen\"\n",
            "ops",
            5,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (
                r[1].terminal_id.as_str(),
                r[1].status.as_str(),
                r[1].note.as_str()
            ),
            ("T0002", "blocked", "INC-7: stolen")
        );
        assert_eq!((r[0].changed_by.as_str(), r[0].changed_at), ("ops", 5));
    }

    #[test]
    fn every_mistake_is_listed() {
        let err = parse(
            "[merchants.X]\n[terminals.\"T/1\"]\nmerchant = \"M1\"\n[terminals.T2]\nstatus = \"lost\"\ncolour = 1\n[terminals.T3]\nmerchant = \"M+\"\n",
            "ops",
            0,
        )
        .unwrap_err();
        assert_eq!(
            err,
            [
                "merchants: unknown section (only [terminals.<id>] tables)",
                "terminals.T/1: a terminal id is 1-64 of [A-Za-z0-9_-]",
                "terminals.T2: unknown key \"colour\" (merchant, status, note)",
                "terminals.T2: merchant is required",
                "terminals.T2: status \"lost\" is not one of active, blocked, retired",
                "terminals.T3: merchant \"M+\" is not 1-64 of [A-Za-z0-9_-]",
            ]
        );
        assert!(parse("terminals = 3", "ops", 0).is_err());
        assert!(parse("[terminals.T1\n", "ops", 0).unwrap_err()[0].starts_with("not valid TOML"));
    }
}
