//! The terminal registry: which merchant owns each terminal, and whether the terminal may
//! transact (active), is blocked (stolen, under investigation: may come back) or retired (final).
//!
//! One source of truth, three views of it (docs/terminals.md):
//! - a reviewed TOML file, applied with `posflow-admin terminals apply` ([`file`], [`plan`]);
//! - the compacted topic `pos.terminals`, written one Kafka transaction per change ([`store`]);
//! - the bridge's in-memory [`Cache`], which follows that topic, so a decision costs a hash
//!   lookup and a change reaches every bridge replica as soon as Kafka delivers it.

pub mod file;
pub mod store;

use dashmap::DashMap;
use posflow_schema::TerminalRegistration;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A terminal's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "lowercase")]
pub enum Status {
    Active,
    /// Refused until reactivated (stolen, tampered with, under investigation).
    Blocked,
    /// Refused for good: a retired id is never active again (register a new one).
    Retired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// The registry as of some offset: terminal id → its latest registration.
pub type Snapshot = BTreeMap<String, TerminalRegistration>;

/// What the bridge does with a message from `terminal` on `merchant`'s topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Not in the registry.
    Unknown,
    Blocked,
    Retired,
    /// Registered to another merchant than the topic names.
    OtherMerchant,
}

/// The part of a registration the bridge decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    merchant_id: String,
    status: Status,
}

fn entry(r: &TerminalRegistration) -> Entry {
    Entry {
        merchant_id: r.merchant_id.clone(),
        // A status this build does not know (written by a newer posflow-admin) refuses: the
        // safe reading of a word we cannot interpret.
        status: Status::parse(&r.status).unwrap_or(Status::Blocked),
    }
}

/// The bridge's view of the registry: filled from `pos.terminals` and kept current by
/// [`store::follow`]. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    map: Arc<DashMap<String, Entry>>,
}

impl Cache {
    pub fn apply(&self, r: &TerminalRegistration) {
        self.map.insert(r.terminal_id.clone(), entry(r));
    }

    pub fn remove(&self, terminal_id: &str) {
        self.map.remove(terminal_id);
    }

    pub fn decide(&self, terminal_id: &str, merchant_id: &str) -> Decision {
        match self.map.get(terminal_id) {
            None => Decision::Unknown,
            Some(e) => match e.status {
                Status::Blocked => Decision::Blocked,
                Status::Retired => Decision::Retired,
                Status::Active if e.merchant_id != merchant_id => Decision::OtherMerchant,
                Status::Active => Decision::Allowed,
            },
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One line of a change plan, for the operator to read before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added,
    /// (what changed, in words)
    Changed(String),
    Unchanged,
}

/// Compares the desired registrations with the registry: what each would change, or every
/// reason it may not (a retired terminal cannot come back or move).
pub fn plan(
    current: &Snapshot,
    desired: &[TerminalRegistration],
) -> Result<Vec<(TerminalRegistration, Change)>, Vec<String>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for d in desired {
        let change = match current.get(&d.terminal_id) {
            None => Change::Added,
            Some(c) if c.status == Status::Retired.as_str() => {
                if c.status != d.status || c.merchant_id != d.merchant_id {
                    errors.push(format!(
                        "terminals.{}: retired terminals stay retired (register a new id)",
                        d.terminal_id
                    ));
                }
                Change::Unchanged
            }
            Some(c) => {
                let mut what = Vec::new();
                if c.merchant_id != d.merchant_id {
                    what.push(format!("merchant {} -> {}", c.merchant_id, d.merchant_id));
                }
                if c.status != d.status {
                    what.push(format!("status {} -> {}", c.status, d.status));
                }
                if what.is_empty() {
                    Change::Unchanged
                } else {
                    Change::Changed(what.join(", "))
                }
            }
        };
        out.push((d.clone(), change));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Mosquitto ACL lines for the registry's active terminals: each may publish only on its own
/// merchant's and its own id's topic, and read only its own answers. Blocked and retired
/// terminals get no line, so the broker refuses them too (defence in depth: the bridge decides
/// whatever the broker lets through). Bridge identities are the deployment's and not included.
pub fn mosquitto_acl(snapshot: &Snapshot) -> String {
    let mut out = String::from(
        "# Generated by `posflow-admin terminals acl` from the terminal registry. Do not edit.\n",
    );
    for r in snapshot.values() {
        if r.status == Status::Active.as_str() {
            let (m, t) = (&r.merchant_id, &r.terminal_id);
            out.push_str(&format!(
                "user {t}\ntopic write {}\ntopic read {}\n",
                posflow_mqtt::tx_topic(m, t),
                posflow_mqtt::ack_topic(m, t)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(t: &str, m: &str, s: Status) -> TerminalRegistration {
        TerminalRegistration {
            terminal_id: t.into(),
            merchant_id: m.into(),
            status: s.as_str().into(),
            changed_at: 0,
            changed_by: "test".into(),
            note: String::new(),
        }
    }

    #[test]
    fn decisions_follow_status_then_merchant() {
        let c = Cache::default();
        c.apply(&reg("T1", "M1", Status::Active));
        c.apply(&reg("T2", "M1", Status::Blocked));
        c.apply(&reg("T3", "M1", Status::Retired));
        c.apply(&TerminalRegistration {
            status: "quarantined".into(),
            ..reg("T4", "M1", Status::Active)
        });
        assert_eq!(c.decide("T1", "M1"), Decision::Allowed);
        assert_eq!(c.decide("T1", "M2"), Decision::OtherMerchant);
        assert_eq!(c.decide("T2", "M1"), Decision::Blocked);
        assert_eq!(c.decide("T3", "M1"), Decision::Retired);
        assert_eq!(c.decide("T4", "M1"), Decision::Blocked);
        assert_eq!(c.decide("T9", "M1"), Decision::Unknown);
        // The latest registration wins.
        c.apply(&reg("T2", "M1", Status::Active));
        assert_eq!(c.decide("T2", "M1"), Decision::Allowed);
    }

    #[test]
    fn a_plan_lists_changes_and_refuses_to_revive_retired_terminals() {
        let current: Snapshot = [
            reg("T1", "M1", Status::Active),
            reg("T2", "M1", Status::Retired),
            reg("T3", "M1", Status::Blocked),
        ]
        .into_iter()
        .map(|r| (r.terminal_id.clone(), r))
        .collect();
        let ok = plan(
            &current,
            &[
                reg("T1", "M1", Status::Active),
                reg("T3", "M2", Status::Active),
                reg("T4", "M1", Status::Active),
            ],
        )
        .unwrap();
        let changes: Vec<_> = ok
            .iter()
            .map(|(r, c)| (r.terminal_id.as_str(), c.clone()))
            .collect();
        assert_eq!(
            changes,
            [
                ("T1", Change::Unchanged),
                (
                    "T3",
                    Change::Changed("merchant M1 -> M2, status blocked -> active".into())
                ),
                ("T4", Change::Added),
            ]
        );
        let err = plan(
            &current,
            &[
                reg("T2", "M1", Status::Active),
                reg("T2", "M9", Status::Retired),
            ],
        )
        .unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
    }

    #[test]
    fn the_acl_names_only_active_terminals_on_their_own_merchant() {
        let s: Snapshot = [
            reg("T1", "M1", Status::Active),
            reg("T2", "M1", Status::Blocked),
        ]
        .into_iter()
        .map(|r| (r.terminal_id.clone(), r))
        .collect();
        let acl = mosquitto_acl(&s);
        assert!(acl.contains("user T1\ntopic write pos/M1/T1/tx\ntopic read pos/M1/T1/ack\n"));
        assert!(!acl.contains("T2"), "{acl}");
    }
}
