//! Business rules. Pure functions of the transaction, its envelope and the merchant's policy,
//! so they are tested without Kafka. Every violation yields its own reason code
//! (docs/reason-codes.md); a transaction can break several at once and gets them all.

use crate::policy::{is_mcc, Policy};
use posflow_schema::currency::major_to_minor;
use posflow_schema::{ReasonCode, RejectionReason, TransactionReceived, TransactionType};

fn reason(code: ReasonCode, message: String) -> RejectionReason {
    RejectionReason {
        code: code.code().to_string(),
        message,
    }
}

/// Every rule the transaction breaks under `policy`; empty means valid. The groups run in
/// this order and each adds what it finds, so the reasons come in the order of the table in
/// docs/reason-codes.md.
pub fn check(r: &TransactionReceived, policy: &Policy) -> Vec<RejectionReason> {
    let mut out = Vec::new();
    amount(r, policy, &mut out);
    time(r, policy, &mut out);
    kind(r, policy, &mut out);
    merchant(r, policy, &mut out);
    line_items(r, &mut out);
    offline(r, policy, &mut out);
    out
}

/// AMOUNT_NOT_POSITIVE, CURRENCY_UNKNOWN, AMOUNT_OVER_LIMIT (the limit is in major units of
/// the currency).
fn amount(r: &TransactionReceived, policy: &Policy, out: &mut Vec<RejectionReason>) {
    let t = &r.transaction;
    if t.amount_minor <= 0 {
        out.push(reason(
            ReasonCode::AmountNotPositive,
            format!("amount_minor {} must be > 0", t.amount_minor),
        ));
    }
    let Some(limit) = major_to_minor(policy.max_amount_major(t.kind), &t.currency) else {
        out.push(reason(
            ReasonCode::CurrencyUnknown,
            format!("{:?} is not an active ISO 4217 currency", t.currency),
        ));
        return;
    };
    if t.amount_minor > limit {
        out.push(reason(
            ReasonCode::AmountOverLimit,
            format!(
                "amount_minor {} exceeds the {} limit {limit} for {}",
                t.amount_minor,
                t.kind.as_str(),
                t.currency
            ),
        ));
    }
}

/// TIME_IN_FUTURE, TIME_TOO_OLD: against the bridge's receive time.
fn time(r: &TransactionReceived, policy: &Policy, out: &mut Vec<RejectionReason>) {
    let (at, received) = (r.transaction.transaction_time, r.envelope.received_at);
    if at > received.saturating_add(policy.max_clock_skew_ms) {
        out.push(reason(
            ReasonCode::TimeInFuture,
            format!(
                "transaction_time is {} ms ahead of receipt",
                at.saturating_sub(received)
            ),
        ));
    }
    if at < received.saturating_sub(policy.max_age_ms) {
        out.push(reason(
            ReasonCode::TimeTooOld,
            format!(
                "transaction_time is {} ms before receipt",
                received.saturating_sub(at)
            ),
        ));
    }
}

/// TYPE_NOT_ALLOWED, ORIGINAL_MISSING, ORIGINAL_UNEXPECTED. A refund or void undoes an earlier
/// transaction and a completion settles a pre-authorisation: each must say which. A sale or
/// pre-authorisation stands alone.
fn kind(r: &TransactionReceived, policy: &Policy, out: &mut Vec<RejectionReason>) {
    let t = &r.transaction;
    let kind = t.kind.as_str();
    if !policy.allows_type(t.kind) {
        out.push(reason(
            ReasonCode::TypeNotAllowed,
            format!("merchant does not accept {kind}"),
        ));
    }
    let needs_original = matches!(
        t.kind,
        TransactionType::Refund | TransactionType::Void | TransactionType::Completion
    );
    match (&t.original_transaction_id, needs_original) {
        (None, true) => out.push(reason(
            ReasonCode::OriginalMissing,
            format!("a {kind} must reference its original transaction"),
        )),
        (Some(o), true) if *o == t.transaction_id => out.push(reason(
            ReasonCode::OriginalMissing,
            format!("a {kind} cannot reference itself"),
        )),
        (Some(_), false) => out.push(reason(
            ReasonCode::OriginalUnexpected,
            format!("a {kind} has no original transaction"),
        )),
        _ => {}
    }
}

/// ENTRY_MODE_NOT_ALLOWED, MCC_INVALID: the merchant's own rules.
fn merchant(r: &TransactionReceived, policy: &Policy, out: &mut Vec<RejectionReason>) {
    let t = &r.transaction;
    if !policy.allows_entry_mode(t.entry_mode) {
        out.push(reason(
            ReasonCode::EntryModeNotAllowed,
            format!("merchant does not accept {} entry", t.entry_mode.as_str()),
        ));
    }
    if !is_mcc(&t.mcc) {
        out.push(reason(
            ReasonCode::MccInvalid,
            "mcc must be 4 digits".into(),
        ));
    } else if policy.mccs().is_some_and(|m| !m.contains(&t.mcc)) {
        out.push(reason(
            ReasonCode::MccInvalid,
            format!("mcc {} is not registered for this merchant", t.mcc),
        ));
    }
}

/// OFFLINE_NOT_ALLOWED, or OFFLINE_AMOUNT_OVER_CAP and OFFLINE_TOO_OLD: the offline caps that
/// need no state. The per-outage count and total are [`crate::offline::Outages`]'s.
fn offline(r: &TransactionReceived, policy: &Policy, out: &mut Vec<RejectionReason>) {
    let (t, caps) = (&r.transaction, &policy.offline);
    if !t.offline {
        return;
    }
    if !caps.allowed {
        out.push(reason(
            ReasonCode::OfflineNotAllowed,
            "merchant does not accept offline capture".into(),
        ));
        return;
    }
    if let Some(cap) = major_to_minor(caps.max_amount_major, &t.currency) {
        if t.amount_minor > cap {
            out.push(reason(
                ReasonCode::OfflineAmountOverCap,
                format!(
                    "amount_minor {} exceeds the offline cap {cap} for {}",
                    t.amount_minor, t.currency
                ),
            ));
        }
    }
    let age = r.envelope.received_at.saturating_sub(t.transaction_time);
    if age > caps.max_age_ms {
        out.push(reason(
            ReasonCode::OfflineTooOld,
            format!(
                "captured offline {age} ms before receipt; the cap is {} ms",
                caps.max_age_ms
            ),
        ));
    }
}

/// LINE_ITEMS_MISMATCH: line items, when present, add up to the amount (exactly, in i128).
fn line_items(r: &TransactionReceived, out: &mut Vec<RejectionReason>) {
    let t = &r.transaction;
    if t.line_items.is_empty() {
        return;
    }
    let sum: i128 = t
        .line_items
        .iter()
        .map(|l| i128::from(l.unit_price_minor) * i128::from(l.quantity))
        .sum();
    if sum != i128::from(t.amount_minor) {
        out.push(reason(
            ReasonCode::LineItemsMismatch,
            format!(
                "line items add up to {sum}, amount_minor is {}",
                t.amount_minor
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policies;
    use posflow_schema::currency::minor_units;
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
        [defaults.offline]
        max_amount = 50
        max_age_hours = 24
    "#;
    const SKEW_MS: i64 = 120_000;
    const AGE_MS: i64 = 48 * 3_600_000;
    const OFFLINE_AGE_MS: i64 = 24 * 3_600_000;
    const CURRENCIES: [&str; 7] = ["EUR", "USD", "JPY", "GBP", "KWD", "BHD", "CHF"];

    fn policy() -> Policy {
        Policies::from_toml(POLICY)
            .unwrap()
            .for_merchant("M")
            .clone()
    }

    fn limit_minor(p: &Policy, t: &Transaction) -> i64 {
        major_to_minor(p.max_amount_major(t.kind), &t.currency).unwrap()
    }

    fn codes(r: &TransactionReceived, p: &Policy) -> Vec<ReasonCode> {
        check(r, p)
            .into_iter()
            .map(|r| r.code.parse().unwrap())
            .collect()
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
                offline: false,
                offline_since: None,
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
            prop_assert_eq!(codes(&r, &policy()), Vec::<ReasonCode>::new());
        }

        #[test]
        fn each_violation_yields_exactly_its_code(
            r in valid_transaction(),
            // Every code `check` gives: the per-outage caps are crate::offline's (tested there).
            expected in proptest::sample::select(ReasonCode::given_by_stage(GivenBy::Validator)
                .filter(|c| !matches!(c, ReasonCode::OfflineCountOverCap | ReasonCode::OfflineTotalOverCap))
                .collect::<Vec<_>>()),
            n in 1i64..1_000_000_000,
            text in "\\PC{0,6}",
        ) {
            let mut p = policy();
            let mut r = r;
            let t = &mut r.transaction;
            let received = r.envelope.received_at;
            match expected {
                ReasonCode::AmountNotPositive => {
                    t.amount_minor = 1 - n.min(1_000_000) ; // 0 or below
                    t.line_items.clear();
                }
                ReasonCode::AmountOverLimit => {
                    t.amount_minor = limit_minor(&p, t) + n;
                    t.line_items.clear();
                }
                ReasonCode::CurrencyUnknown => {
                    prop_assume!(minor_units(&text).is_none());
                    t.currency = text;
                }
                ReasonCode::TimeInFuture => t.transaction_time = received + SKEW_MS + n,
                ReasonCode::TimeTooOld => t.transaction_time = received - AGE_MS - n,
                ReasonCode::TypeNotAllowed => {
                    t.kind = TransactionType::Void;
                    t.original_transaction_id = Some("orig".into());
                    t.amount_minor = 1;
                    t.line_items.clear();
                }
                ReasonCode::OriginalMissing => {
                    t.kind = if n % 2 == 0 { TransactionType::Refund } else { TransactionType::Completion };
                    t.original_transaction_id = (n % 3 == 0).then(|| t.transaction_id.clone());
                    t.amount_minor = 1;
                    t.line_items.clear();
                }
                ReasonCode::OriginalUnexpected => {
                    t.kind = if n % 2 == 0 { TransactionType::Sale } else { TransactionType::PreAuthorisation };
                    t.original_transaction_id = Some("orig".into());
                }
                ReasonCode::EntryModeNotAllowed => t.entry_mode = EntryMode::Manual,
                ReasonCode::MccInvalid => {
                    t.mcc = if n % 2 == 0 { format!("{:04}", n % 5000) } else { text };
                    prop_assume!(!["5411", "5814", "5999"].contains(&t.mcc.as_str()));
                }
                ReasonCode::LineItemsMismatch => {
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
                ReasonCode::OfflineNotAllowed => {
                    p.offline.allowed = false;
                    t.offline = true;
                }
                ReasonCode::OfflineAmountOverCap => {
                    let units = u32::from(minor_units(&t.currency).unwrap());
                    t.offline = true;
                    t.amount_minor = 50 * 10i64.pow(units) + 1 + n % 10i64.pow(units + 1);
                    prop_assume!(t.amount_minor <= limit_minor(&p, t));
                    t.line_items.clear();
                    t.transaction_time = t.transaction_time.max(received - OFFLINE_AGE_MS);
                }
                ReasonCode::OfflineTooOld => {
                    t.offline = true;
                    t.amount_minor = 1;
                    t.line_items.clear();
                    t.transaction_time = received - OFFLINE_AGE_MS - 1 - n % (AGE_MS - OFFLINE_AGE_MS);
                }
                other => unreachable!("no mutation for {other}"),
            }
            prop_assert_eq!(codes(&r, &p), vec![expected]);
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
                ReasonCode::AmountNotPositive,
                ReasonCode::CurrencyUnknown,
                ReasonCode::EntryModeNotAllowed
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
        assert_eq!(codes(&r, &p), vec![ReasonCode::AmountOverLimit]);
        r.transaction.currency = "KWD".into(); // three decimals
        assert!(codes(&r, &p).is_empty());
    }
}
