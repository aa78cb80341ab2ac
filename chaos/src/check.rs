//! The checker: what the terminals were told against what the topics (read_committed) and the
//! tables hold, read directly — none of the stages' own code decides a verdict.

use posflow_simulator::plan::Planned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// What came out of the run, as read after the pipeline went quiet.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// The transaction id of each record on the raw topic.
    pub raw: Vec<String>,
    pub validated: Vec<String>,
    pub rejected: Vec<String>,
    /// The `transactions` rows' ids, and the `rejections` rows'.
    pub stored: Vec<String>,
    pub stored_rejections: Vec<String>,
    /// (transaction id, idempotency key) of each webhook the notified merchant accepted.
    pub notified: Vec<(String, String)>,
    /// Alert ids on the alerts topic; and those of the fault-free run over the same input.
    pub alerts: Vec<String>,
    pub reference_alerts: Vec<String>,
}

/// One check: expected, found (records or rows), and what differs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub rule: String,
    pub expected: usize,
    pub found: usize,
    pub missing: usize,
    pub duplicates: usize,
    pub spurious: usize,
    /// Repeats the design allows (the raw topic is at least once); reported, never a failure.
    pub duplicates_allowed: bool,
    /// Up to five ids of each kind of difference.
    pub examples: BTreeMap<String, Vec<String>>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.spurious == 0 && (self.duplicates_allowed || self.duplicates == 0)
    }
}

/// How many times each id occurs.
fn tally<'a>(ids: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut m = HashMap::new();
    for id in ids {
        *m.entry(id).or_default() += 1;
    }
    m
}

/// `found` against `expected`, both as occurrences per id: an id short of its expected count is
/// missing (by the shortfall), one over it duplicated (by the excess), one not expected at all
/// spurious.
fn compare(
    name: &'static str,
    rule: &'static str,
    expected: &HashMap<&str, usize>,
    found: &HashMap<&str, usize>,
) -> Check {
    let mut c = Check {
        name: name.into(),
        rule: rule.into(),
        expected: expected.values().sum(),
        found: found.values().sum(),
        missing: 0,
        duplicates: 0,
        spurious: 0,
        duplicates_allowed: false,
        examples: BTreeMap::new(),
    };
    let mut note = |kind: &'static str, id: &str| {
        let v = c.examples.entry(kind.to_string()).or_default();
        if v.len() < 5 {
            v.push(id.to_string());
        }
    };
    let mut ids: Vec<&&str> = expected.keys().chain(found.keys()).collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        let (e, f) = (
            expected.get(*id).copied().unwrap_or(0),
            found.get(*id).copied().unwrap_or(0),
        );
        if e == 0 {
            c.spurious += f;
            note("spurious", id);
        } else if f < e {
            c.missing += e - f;
            note("missing", id);
        } else if f > e {
            c.duplicates += f - e;
            note("duplicates", id);
        }
    }
    c
}

/// The terminals' ledger against the plan, and the raw topic against the ledger.
fn ledger_checks(
    planned: &[Planned],
    accepted: &HashMap<&str, usize>,
    raw: &HashMap<&str, usize>,
) -> [Check; 2] {
    let all = planned
        .iter()
        .map(|p| (p.transaction_id.as_str(), 1))
        .collect();
    let mut ledger = compare(
        "answered",
        "every planned transaction answered `accepted` (republished until it was)",
        &all,
        accepted,
    );
    ledger.found = accepted.len();
    let mut raw_check = compare(
        "raw topic",
        "every transaction answered `accepted` is on pos.transactions.raw (repeats allowed: at least once)",
        accepted,
        raw,
    );
    raw_check.duplicates_allowed = true;
    [ledger, raw_check]
}

/// Per transaction id, how many distinct idempotency keys its deliveries had.
fn keys_per_transaction(delivered: &[(String, String)]) -> HashMap<&str, usize> {
    let distinct: std::collections::HashSet<(&str, &str)> = delivered
        .iter()
        .map(|(t, k)| (t.as_str(), k.as_str()))
        .collect();
    tally(distinct.into_iter().map(|(t, _)| t))
}

/// Every check of a run. `answers`: each terminal's ledger (transaction id → `accepted` or the
/// reason it was refused); `notified_merchant`: the merchant with a webhook.
pub fn checks(
    planned: &[Planned],
    answers: &HashMap<String, String>,
    notified_merchant: &str,
    o: &Observed,
) -> Vec<Check> {
    let accepted: Vec<&Planned> = planned
        .iter()
        .filter(|p| answers.get(&p.transaction_id).map(String::as_str) == Some("accepted"))
        .collect();
    let once = |f: &dyn Fn(&Planned) -> bool| -> HashMap<&str, usize> {
        accepted
            .iter()
            .filter(|p| f(p))
            .map(|p| (p.transaction_id.as_str(), 1))
            .collect()
    };
    let valid = |p: &Planned| p.expected_rejection.is_none();
    let raw = tally(o.raw.iter().map(String::as_str));
    // Each raw record decided once: as many outputs per id as records on the raw topic.
    let on_raw = |f: &dyn Fn(&Planned) -> bool| -> HashMap<&str, usize> {
        planned
            .iter()
            .filter(|p| f(p))
            .filter_map(|p| {
                Some((
                    p.transaction_id.as_str(),
                    *raw.get(p.transaction_id.as_str())?,
                ))
            })
            .collect()
    };
    let [ledger, raw_check] = ledger_checks(planned, &once(&|_| true), &raw);
    let notified = keys_per_transaction(&o.notified);
    vec![
        ledger,
        raw_check,
        compare(
            "validated",
            "each raw record of a valid transaction once on pos.transactions.validated",
            &on_raw(&valid),
            &tally(o.validated.iter().map(String::as_str)),
        ),
        compare(
            "rejected",
            "each raw record of an invalid transaction once on pos.transactions.rejected",
            &on_raw(&|p| !valid(p)),
            &tally(o.rejected.iter().map(String::as_str)),
        ),
        compare(
            "stored",
            "every accepted valid transaction one row in `transactions`",
            &once(&valid),
            &tally(o.stored.iter().map(String::as_str)),
        ),
        compare(
            "rejections stored",
            "every accepted invalid transaction one row in `rejections`",
            &once(&|p| !valid(p)),
            &tally(o.stored_rejections.iter().map(String::as_str)),
        ),
        compare(
            "webhooks",
            "every accepted valid transaction of the notified merchant delivered, under one idempotency key",
            &once(&|p| valid(p) && p.merchant_id == notified_merchant),
            &notified,
        ),
        compare(
            "fraud alerts",
            "the alert ids of a fault-free run over the same input, each once",
            &tally(
                o.reference_alerts
                    .iter()
                    .map(String::as_str)
                    .collect::<std::collections::HashSet<_>>(),
            ),
            &tally(o.alerts.iter().map(String::as_str)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(id: &str, merchant: &str, valid: bool) -> Planned {
        Planned {
            transaction_id: id.into(),
            terminal_id: "T0001".into(),
            merchant_id: merchant.into(),
            amount_minor: 100,
            currency: "EUR".into(),
            pan: String::new(),
            expected_rejection: (!valid).then_some(posflow_schema::ReasonCode::AmountNotPositive),
            payload: vec![],
        }
    }

    fn strings(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    /// A balanced run, then each way it can fail, one at a time: each check catches its own.
    #[test]
    fn each_difference_is_counted_where_it_happened() {
        let plan = vec![
            planned("a", "M001", true),
            planned("b", "M002", true),
            planned("c", "M001", false),
        ];
        let answers: HashMap<String, String> = ["a", "b", "c"]
            .iter()
            .map(|i| (i.to_string(), "accepted".to_string()))
            .collect();
        let good = Observed {
            raw: strings(&["a", "b", "c", "b"]),
            validated: strings(&["a", "b", "b"]),
            rejected: strings(&["c"]),
            stored: strings(&["a", "b"]),
            stored_rejections: strings(&["c"]),
            notified: vec![("a".into(), "k-a".into()), ("a".into(), "k-a".into())],
            alerts: strings(&["x", "y"]),
            reference_alerts: strings(&["y", "x"]),
        };
        let all = checks(&plan, &answers, "M001", &good);
        assert!(all.iter().all(Check::passed), "{all:#?}");
        assert_eq!(all[1].duplicates, 1, "the raw repeat is reported, allowed");

        let failing = |o: Observed, name: &str| -> Check {
            let all = checks(&plan, &answers, "M001", &o);
            let failed: Vec<&Check> = all.iter().filter(|c| !c.passed()).collect();
            assert_eq!(failed.len(), 1, "{failed:#?}");
            assert_eq!(failed[0].name, name);
            failed[0].clone()
        };
        let c = failing(
            Observed {
                stored: strings(&["a"]),
                ..good.clone()
            },
            "stored",
        );
        assert_eq!(
            (c.missing, c.examples["missing"].clone()),
            (1, strings(&["b"]))
        );
        let c = failing(
            Observed {
                stored: strings(&["a", "b", "a"]),
                ..good.clone()
            },
            "stored",
        );
        assert_eq!(c.duplicates, 1);
        let c = failing(
            Observed {
                validated: strings(&["a", "b"]),
                ..good.clone()
            },
            "validated",
        );
        assert_eq!(c.missing, 1, "the repeat on raw was not decided");
        let c = failing(
            Observed {
                notified: vec![("a".into(), "k-a".into()), ("a".into(), "k-other".into())],
                ..good.clone()
            },
            "webhooks",
        );
        assert_eq!(c.duplicates, 1, "two keys for one transaction");
        let c = failing(
            Observed {
                alerts: strings(&["x", "y", "z"]),
                ..good.clone()
            },
            "fraud alerts",
        );
        assert_eq!(c.spurious, 1);
        let c = failing(
            Observed {
                raw: strings(&["a", "c"]),
                validated: strings(&["a"]),
                ..good.clone()
            },
            "raw topic",
        );
        assert_eq!(c.missing, 1);
    }
}
