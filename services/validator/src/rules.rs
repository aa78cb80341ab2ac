//! Business rules. Pure functions of the transaction, its envelope and the rule settings, so
//! they are tested without Kafka. Every violation yields its own reason code
//! (docs/reason-codes.md); a transaction can break several at once and gets them all.

use crate::currency::minor_units;
use posflow_schema::{RejectionReason, TransactionReceived, TransactionType};

/// Rule settings. Issue #4 makes them configurable per merchant and type from a file; these
/// are the defaults.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Largest amount accepted, in major units of the currency (scaled by its minor units).
    pub max_amount_major: i64,
    /// How far the terminal clock may run ahead of the bridge's receive time.
    pub max_clock_skew_ms: i64,
    /// How old a transaction may be when it arrives (store-and-forward terminals queue offline).
    pub max_age_ms: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            max_amount_major: 100_000,
            max_clock_skew_ms: 5 * 60_000,
            max_age_ms: 7 * 86_400_000,
        }
    }
}

pub mod code {
    pub const AMOUNT_NOT_POSITIVE: &str = "AMOUNT_NOT_POSITIVE";
    pub const AMOUNT_OVER_LIMIT: &str = "AMOUNT_OVER_LIMIT";
    pub const CURRENCY_UNKNOWN: &str = "CURRENCY_UNKNOWN";
    pub const TIME_IN_FUTURE: &str = "TIME_IN_FUTURE";
    pub const TIME_TOO_OLD: &str = "TIME_TOO_OLD";
    pub const ORIGINAL_MISSING: &str = "ORIGINAL_MISSING";
    pub const MCC_INVALID: &str = "MCC_INVALID";
    pub const LINE_ITEMS_MISMATCH: &str = "LINE_ITEMS_MISMATCH";
}

fn reason(code: &str, message: String) -> RejectionReason {
    RejectionReason {
        code: code.to_string(),
        message,
    }
}

/// Every rule the transaction breaks; empty means valid.
pub fn check(r: &TransactionReceived, rules: &Rules) -> Vec<RejectionReason> {
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
            let limit = rules
                .max_amount_major
                .saturating_mul(10i64.pow(u32::from(units)));
            if t.amount_minor > limit {
                out.push(reason(
                    code::AMOUNT_OVER_LIMIT,
                    format!(
                        "amount_minor {} exceeds the limit {limit} for {}",
                        t.amount_minor, t.currency
                    ),
                ));
            }
        }
    }
    let received = r.envelope.received_at;
    if t.transaction_time > received + rules.max_clock_skew_ms {
        out.push(reason(
            code::TIME_IN_FUTURE,
            format!(
                "transaction_time is {} ms ahead of receipt",
                t.transaction_time - received
            ),
        ));
    }
    if t.transaction_time < received - rules.max_age_ms {
        out.push(reason(
            code::TIME_TOO_OLD,
            format!(
                "transaction_time is {} ms before receipt",
                received - t.transaction_time
            ),
        ));
    }
    let needs_original = matches!(
        t.kind,
        TransactionType::Refund | TransactionType::Void | TransactionType::Completion
    );
    if needs_original && t.original_transaction_id.is_none() {
        out.push(reason(
            code::ORIGINAL_MISSING,
            format!(
                "a {} must reference its original transaction",
                t.kind.as_str()
            ),
        ));
    }
    if t.mcc.len() != 4 || !t.mcc.bytes().all(|b| b.is_ascii_digit()) {
        out.push(reason(code::MCC_INVALID, "mcc must be 4 digits".into()));
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
    use posflow_schema::*;

    fn valid() -> TransactionReceived {
        TransactionReceived {
            envelope: Envelope {
                received_at: 1_000_000_000_000,
                mqtt_topic: "pos/M/T/tx".into(),
                bridge_id: "b".into(),
                payload_version: 1,
            },
            transaction: Transaction {
                transaction_id: "t".into(),
                terminal_id: "T".into(),
                merchant_id: "M".into(),
                sequence: 1,
                transaction_time: 1_000_000_000_000 - 1000,
                kind: TransactionType::Sale,
                original_transaction_id: None,
                amount_minor: 1234,
                currency: "EUR".into(),
                payment_method: PaymentMethod::Card,
                entry_mode: EntryMode::Chip,
                card: None,
                auth_code: None,
                response_code: "00".into(),
                mcc: "5411".into(),
                location: None,
                line_items: vec![LineItem {
                    sku: "a".into(),
                    description: "a".into(),
                    unit_price_minor: 617,
                    quantity: 2,
                }],
            },
        }
    }

    fn codes(r: &TransactionReceived) -> Vec<String> {
        check(r, &Rules::default())
            .into_iter()
            .map(|r| r.code)
            .collect()
    }

    #[test]
    fn a_valid_transaction_passes() {
        assert!(codes(&valid()).is_empty());
    }

    #[test]
    fn each_rule_yields_exactly_its_code() {
        type Mutation = Box<dyn Fn(&mut TransactionReceived)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                code::AMOUNT_NOT_POSITIVE,
                Box::new(|r| {
                    r.transaction.amount_minor = 0;
                    r.transaction.line_items.clear();
                }),
            ),
            (
                code::AMOUNT_OVER_LIMIT,
                Box::new(|r| {
                    r.transaction.amount_minor = 10_000_001;
                    r.transaction.line_items.clear();
                }),
            ),
            (
                code::CURRENCY_UNKNOWN,
                Box::new(|r| r.transaction.currency = "XXX".into()),
            ),
            (
                code::TIME_IN_FUTURE,
                Box::new(|r| {
                    r.transaction.transaction_time = r.envelope.received_at + 5 * 60_000 + 1
                }),
            ),
            (
                code::TIME_TOO_OLD,
                Box::new(|r| {
                    r.transaction.transaction_time = r.envelope.received_at - 7 * 86_400_000 - 1
                }),
            ),
            (
                code::ORIGINAL_MISSING,
                Box::new(|r| r.transaction.kind = TransactionType::Refund),
            ),
            (
                code::MCC_INVALID,
                Box::new(|r| r.transaction.mcc = "54a1".into()),
            ),
            (
                code::LINE_ITEMS_MISMATCH,
                Box::new(|r| r.transaction.amount_minor = 1235),
            ),
        ];
        for (expected, mutate) in cases {
            let mut r = valid();
            mutate(&mut r);
            assert_eq!(codes(&r), vec![expected.to_string()]);
        }
    }

    #[test]
    fn limits_scale_with_minor_units() {
        let mut r = valid();
        r.transaction.line_items.clear();
        r.transaction.currency = "JPY".into();
        r.transaction.amount_minor = 100_000; // ¥100,000 is at the limit
        assert!(codes(&r).is_empty());
        r.transaction.amount_minor = 100_001;
        assert_eq!(codes(&r), vec![code::AMOUNT_OVER_LIMIT]);
    }

    #[test]
    fn several_violations_are_all_reported() {
        let mut r = valid();
        r.transaction.amount_minor = -5;
        r.transaction.currency = "EURO".into();
        assert_eq!(
            codes(&r),
            vec![
                code::AMOUNT_NOT_POSITIVE,
                code::CURRENCY_UNKNOWN,
                code::LINE_ITEMS_MISMATCH
            ]
        );
    }
}
