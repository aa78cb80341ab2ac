//! Records for the unit tests: one of each kind per `i`, with every optional field both set and
//! unset across them.

use crate::table::Record;
use posflow_schema::*;

pub fn records(n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    for i in 0..n {
        let t = transaction(i);
        let envelope = Envelope {
            received_at: t.transaction_time + 150,
            mqtt_topic: format!("pos/{}/{}/tx", t.merchant_id, t.terminal_id),
            bridge_id: "bridge-0".into(),
            payload_version: 1,
        };
        out.push(Record::Validated(TransactionValidated {
            envelope: envelope.clone(),
            transaction: t.clone(),
            validated_at: t.transaction_time + 200,
        }));
        out.push(Record::Rejected(TransactionRejected {
            envelope,
            transaction: t.clone(),
            reasons: vec![RejectionReason {
                code: "CURRENCY_UNKNOWN".into(),
                message: "XYZ is not an ISO 4217 code".into(),
            }],
            rejected_at: t.transaction_time + 200,
        }));
        out.push(Record::FraudAlert(FraudAlert {
            alert_id: format!("A{i:06}"),
            rule_id: "velocity".into(),
            severity: Severity::High,
            score: 0.5 + i as f64 / 100.0,
            evidence_transaction_ids: vec![t.transaction_id.clone(), "other".into()],
            card_token: (i % 2 == 0).then(|| format!("tok-{i}")),
            merchant_id: t.merchant_id.clone(),
            terminal_id: t.terminal_id.clone(),
            detected_at: t.transaction_time + 300,
        }));
    }
    out
}

/// A sale at one of 3 merchants; every other one without a card, location or auth code. An
/// hour apart from 2025-11-30 23:00 UTC, so the records span dates.
pub fn transaction(i: usize) -> Transaction {
    let card = i % 2 == 0;
    Transaction {
        transaction_id: format!("tx-{i:08}"),
        terminal_id: format!("T{:04}", i % 5),
        merchant_id: format!("M{:03}", 1 + i % 3),
        sequence: i as i64,
        transaction_time: 1_764_543_600_000 + i as i64 * 3_600_000,
        kind: TransactionType::Sale,
        original_transaction_id: None,
        amount_minor: 100 + i as i64,
        currency: "EUR".into(),
        payment_method: if card {
            PaymentMethod::Card
        } else {
            PaymentMethod::Wallet
        },
        entry_mode: EntryMode::Contactless,
        card: card.then(|| Card {
            token: format!("tok-{i}"),
            bin: "411111".into(),
            last4: "1111".into(),
            token_key_id: "k1".into(),
            previous_tokens: vec![],
        }),
        auth_code: card.then(|| "123456".into()),
        response_code: "00".into(),
        mcc: "5814".into(),
        location: card.then_some(Location {
            latitude: 52.37,
            longitude: 4.89,
        }),
        line_items: vec![LineItem {
            sku: "COF-1".into(),
            description: "Flat white, \"large\"".into(),
            unit_price_minor: 100 + i as i64,
            quantity: 1,
        }],
        offline: i % 5 == 0,
        offline_since: (i % 5 == 0).then_some(1_790_000_000_000),
    }
}
