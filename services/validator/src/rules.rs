//! Business rules. Pure functions of the transaction, its envelope and the merchant's policy,
//! so they are tested without Kafka. Every violation yields its own reason code
//! (docs/reason-codes.md); a transaction can break several at once and gets them all.

use crate::policy::{is_mcc, Policy};
use posflow_schema::currency::minor_units;
use posflow_schema::{RejectionReason, TransactionReceived, TransactionType};

pub mod code {
    pub const AMOUNT_NOT_POSITIVE: &str = "AMOUNT_NOT_POSITIVE";
    pub const AMOUNT_OVER_LIMIT: &str = "AMOUNT_OVER_LIMIT";
    pub const CURRENCY_UNKNOWN: &str = "CURRENCY_UNKNOWN";
    pub const TIME_IN_FUTURE: &str = "TIME_IN_FUTURE";
    pub const TIME_TOO_OLD: &str = "TIME_TOO_OLD";
    pub const TYPE_NOT_ALLOWED: &str = "TYPE_NOT_ALLOWED";
    pub const ORIGINAL_MISSING: &str = "ORIGINAL_MISSING";
    pub const ORIGINAL_UNEXPECTED: &str = "ORIGINAL_UNEXPECTED";
    pub const ENTRY_MODE_NOT_ALLOWED: &str = "ENTRY_MODE_NOT_ALLOWED";
    pub const MCC_INVALID: &str = "MCC_INVALID";
    pub const LINE_ITEMS_MISMATCH: &str = "LINE_ITEMS_MISMATCH";

    /// Every code the validator can give, for docs and tests.
    pub const ALL: [&str; 11] = [
        AMOUNT_NOT_POSITIVE,
        AMOUNT_OVER_LIMIT,
        CURRENCY_UNKNOWN,
        TIME_IN_FUTURE,
        TIME_TOO_OLD,
        TYPE_NOT_ALLOWED,
        ORIGINAL_MISSING,
        ORIGINAL_UNEXPECTED,
        ENTRY_MODE_NOT_ALLOWED,
        MCC_INVALID,
        LINE_ITEMS_MISMATCH,
    ];
}

fn reason(code: &str, message: String) -> RejectionReason {
    RejectionReason {
        code: code.to_string(),
        message,
    }
}

/// Every rule the transaction breaks under `policy`; empty means valid.
pub fn check(r: &TransactionReceived, policy: &Policy) -> Vec<RejectionReason> {
    let t = &r.transaction;
    let mut out = Vec::new();
    if t.amount_minor <= 0 {
        out.push(reason(
            code::AMOUNT_NOT_POSITIVE,
            format!("amount_minor {} must be > 0", t.amount_minor),
        ));
    }
    match minor_units(&t.currency) {
        None => out.push(reason(
            code::CURRENCY_UNKNOWN,
            format!("{:?} is not an active ISO 4217 currency", t.currency),
        )),
        Some(units) => {
            let limit = policy
                .max_amount_major(t.kind)
                .saturating_mul(10i64.pow(u32::from(units)));
            if t.amount_minor > limit {
                out.push(reason(
                    code::AMOUNT_OVER_LIMIT,
                    format!(
                        "amount_minor {} exceeds the {} limit {limit} for {}",
                        t.amount_minor,
                        t.kind.as_str(),
                        t.currency
                    ),
                ));
            }
        }
    }
    let received = r.envelope.received_at;
    if t.transaction_time > received.saturating_add(policy.max_clock_skew_ms) {
        out.push(reason(
            code::TIME_IN_FUTURE,
            format!(
                "transaction_time is {} ms ahead of receipt",
                t.transaction_time.saturating_sub(received)
            ),
        ));
    }
    if t.transaction_time < received.saturating_sub(policy.max_age_ms) {
        out.push(reason(
            code::TIME_TOO_OLD,
            format!(
                "transaction_time is {} ms before receipt",
                received.saturating_sub(t.transaction_time)
            ),
        ));
    }
    if !policy.allows_type(t.kind) {
        out.push(reason(
            code::TYPE_NOT_ALLOWED,
            format!("merchant does not accept {}", t.kind.as_str()),
        ));
    }
    // A refund or void undoes an earlier transaction and a completion settles a
    // pre-authorisation: each must say which. A sale or pre-authorisation stands alone.
    let needs_original = matches!(
        t.kind,
        TransactionType::Refund | TransactionType::Void | TransactionType::Completion
    );
    match (&t.original_transaction_id, needs_original) {
        (None, true) => out.push(reason(
            code::ORIGINAL_MISSING,
            format!(
                "a {} must reference its original transaction",
                t.kind.as_str()
            ),
        )),
        (Some(o), true) if *o == t.transaction_id => out.push(reason(
            code::ORIGINAL_MISSING,
            format!("a {} cannot reference itself", t.kind.as_str()),
        )),
        (Some(_), false) => out.push(reason(
            code::ORIGINAL_UNEXPECTED,
            format!("a {} has no original transaction", t.kind.as_str()),
        )),
        _ => {}
    }
    if !policy.allows_entry_mode(t.entry_mode) {
        out.push(reason(
            code::ENTRY_MODE_NOT_ALLOWED,
            format!("merchant does not accept {} entry", t.entry_mode.as_str()),
        ));
    }
    if !is_mcc(&t.mcc) {
        out.push(reason(code::MCC_INVALID, "mcc must be 4 digits".into()));
    } else if policy.mccs().is_some_and(|m| !m.contains(&t.mcc)) {
        out.push(reason(
            code::MCC_INVALID,
            format!("mcc {} is not registered for this merchant", t.mcc),
        ));
    }
    if !t.line_items.is_empty() {
        let sum: i128 = t
            .line_items
            .iter()
            .map(|l| i128::from(l.unit_price_minor) * i128::from(l.quantity))
            .sum();
        if sum != i128::from(t.amount_minor) {
            out.push(reason(
                code::LINE_ITEMS_MISMATCH,
                format!(
                    "line items add up to {sum}, amount_minor is {}",
                    t.amount_minor
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policies;
    use posflow_schema::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    /// A policy that restricts something on every axis, so each rule has room to fail.
    const POLICY: &str = r#"
        [defaults]
        max_amount = 5000
        max_clock_skew_secs = 120
        max_age_hours = 48
        types = ["sale", "refund", "pre_authorisation", "completion"]
        entry_modes = ["chip", "contactless", "swipe", "qr"]
        mccs = ["5411", "5814", "5999"]
        [defaults.max_amount_by_type]
        refund = 500
    "#;
    const SKEW_MS: i64 = 120_000;
    const AGE_MS: i64 = 48 * 3_600_000;
    const CURRENCIES: [&str; 7] = ["EUR", "USD", "JPY", "GBP", "KWD", "BHD", "CHF"];

    fn policy() -> Policy {
        Policies::from_toml(POLICY)
            .unwrap()
            .for_merchant("M")
            .clone()
    }

    fn limit_minor(p: &Policy, t: &Transaction) -> i64 {
        let units = minor_units(&t.currency).unwrap();
        p.max_amount_major(t.kind) * 10i64.pow(u32::from(units))
    }

    fn codes(r: &TransactionReceived, p: &Policy) -> Vec<String> {
        check(r, p).into_iter().map(|r| r.code).collect()
    }

    prop_compose! {
        /// Any transaction the policy above accepts.
        fn valid_transaction()(
            received_at in 1_500_000_000_000i64..2_500_000_000_000,
            age in -SKEW_MS..=AGE_MS,
            kind in prop::sample::select(vec![
                TransactionType::Sale, TransactionType::Refund,
                TransactionType::PreAuthorisation, TransactionType::Completion,
            ]),
            currency in prop::sample::select(CURRENCIES.to_vec()),
            entry_mode in prop::sample::select(vec![
                EntryMode::Chip, EntryMode::Contactless, EntryMode::Swipe, EntryMode::Qr,
            ]),
            mcc in prop::sample::select(vec!["5411", "5814", "5999"]),
            items in prop::collection::vec((1i64..=100, 1i32..=5), 0..4),
            amount_fraction in 0.0f64..=1.0,
            sequence in 0i64..1_000_000,
            id in "[a-z0-9-]{1,36}",
            original in "[a-z0-9-]{1,36}",
        ) -> TransactionReceived {
            let p = policy();
            let mut t = Transaction {
                transaction_id: id.clone(),
                terminal_id: "T0001".into(),
                merchant_id: "M".into(),
                sequence,
                transaction_time: received_at - age,
                kind,
                original_transaction_id: None,
                amount_minor: 0,
                currency: currency.to_string(),
                payment_method: PaymentMethod::Card,
                entry_mode,
                card: None,
                auth_code: None,
                response_code: "00".into(),
                mcc: mcc.to_string(),
                location: None,
                line_items: items.iter().map(|&(price, quantity)| LineItem {
                    sku: "s".into(), description: "d".into(), unit_price_minor: price, quantity,
                }).collect(),
            };
            if matches!(kind, TransactionType::Refund | TransactionType::Completion) {
                t.original_transaction_id = Some(format!("{original}-orig"));
            }
            let limit = limit_minor(&p, &t);
            t.amount_minor = if t.line_items.is_empty() {
                1 + ((limit - 1) as f64 * amount_fraction) as i64
            } else {
                items.iter().map(|&(price, q)| price * i64::from(q)).sum::<i64>().min(limit)
            };
            if t.amount_minor < items.iter().map(|&(price, q)| price * i64::from(q)).sum::<i64>() {
                // Items worth more than the limit (a small refund limit in yen): drop them.
                t.line_items.clear();
            }
            TransactionReceived {
                envelope: Envelope {
                    received_at,
                    mqtt_topic: "pos/M/T0001/tx".into(),
                    bridge_id: "b".into(),
                    payload_version: 1,
                },
                transaction: t,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_valid_transaction_passes(r in valid_transaction()) {
            prop_assert_eq!(codes(&r, &policy()), Vec::<String>::new());
        }

        #[test]
        fn each_violation_yields_exactly_its_code(
            r in valid_transaction(),
            rule in 0..code::ALL.len(),
            n in 1i64..1_000_000_000,
            text in "\\PC{0,6}",
        ) {
            let p = policy();
            let mut r = r;
            let t = &mut r.transaction;
            let received = r.envelope.received_at;
            let expected = code::ALL[rule];
            match expected {
                code::AMOUNT_NOT_POSITIVE => {
                    t.amount_minor = 1 - n.min(1_000_000) ; // 0 or below
                    t.line_items.clear();
                }
                code::AMOUNT_OVER_LIMIT => {
                    t.amount_minor = limit_minor(&p, t) + n;
                    t.line_items.clear();
                }
                code::CURRENCY_UNKNOWN => {
                    prop_assume!(minor_units(&text).is_none());
                    t.currency = text;
                }
                code::TIME_IN_FUTURE => t.transaction_time = received + SKEW_MS + n,
                code::TIME_TOO_OLD => t.transaction_time = received - AGE_MS - n,
                code::TYPE_NOT_ALLOWED => {
                    t.kind = TransactionType::Void;
                    t.original_transaction_id = Some("orig".into());
                    t.amount_minor = 1;
                    t.line_items.clear();
                }
                code::ORIGINAL_MISSING => {
                    t.kind = if n % 2 == 0 { TransactionType::Refund } else { TransactionType::Completion };
                    t.original_transaction_id = (n % 3 == 0).then(|| t.transaction_id.clone());
                    t.amount_minor = 1;
                    t.line_items.clear();
                }
                code::ORIGINAL_UNEXPECTED => {
                    t.kind = if n % 2 == 0 { TransactionType::Sale } else { TransactionType::PreAuthorisation };
                    t.original_transaction_id = Some("orig".into());
                }
                code::ENTRY_MODE_NOT_ALLOWED => t.entry_mode = EntryMode::Manual,
                code::MCC_INVALID => {
                    t.mcc = if n % 2 == 0 { format!("{:04}", n % 5000) } else { text };
                    prop_assume!(!["5411", "5814", "5999"].contains(&t.mcc.as_str()));
                }
                code::LINE_ITEMS_MISMATCH => {
                    if t.line_items.is_empty() {
                        prop_assume!(t.amount_minor > 1);
                        t.line_items.push(LineItem {
                            sku: "s".into(), description: "d".into(), unit_price_minor: t.amount_minor - 1, quantity: 1,
                        });
                    } else {
                        t.line_items.push(LineItem {
                            sku: "x".into(), description: "extra".into(), unit_price_minor: n, quantity: 1,
                        });
                    }
                }
                other => unreachable!("no mutation for {other}"),
            }
            prop_assert_eq!(codes(&r, &p), vec![expected.to_string()]);
        }
    }

    #[test]
    fn several_violations_are_all_reported() {
        let mut r = valid_transaction()
            .new_tree(&mut proptest::test_runner::TestRunner::deterministic())
            .unwrap()
            .current();
        r.transaction.amount_minor = -5;
        r.transaction.currency = "EURO".into();
        r.transaction.entry_mode = EntryMode::Manual;
        r.transaction.line_items.clear();
        assert_eq!(
            codes(&r, &policy()),
            vec![
                code::AMOUNT_NOT_POSITIVE,
                code::CURRENCY_UNKNOWN,
                code::ENTRY_MODE_NOT_ALLOWED
            ]
        );
    }

    #[test]
    fn limits_scale_with_minor_units() {
        let mut r = valid_transaction()
            .new_tree(&mut proptest::test_runner::TestRunner::deterministic())
            .unwrap()
            .current();
        let p = Policy::default();
        r.transaction.kind = TransactionType::Sale;
        r.transaction.original_transaction_id = None;
        r.transaction.line_items.clear();
        r.transaction.currency = "JPY".into();
        r.transaction.amount_minor = 100_000; // ¥100,000 is at the default limit
        assert!(codes(&r, &p).is_empty());
        r.transaction.amount_minor = 100_001;
        assert_eq!(codes(&r, &p), vec![code::AMOUNT_OVER_LIMIT]);
        r.transaction.currency = "KWD".into(); // three decimals
        assert!(codes(&r, &p).is_empty());
    }

    #[test]
    fn every_code_is_documented() {
        let doc = include_str!("../../../docs/reason-codes.md");
        for c in code::ALL {
            assert!(
                doc.contains(&format!("`{c}`")),
                "docs/reason-codes.md lacks {c}"
            );
        }
    }
}
