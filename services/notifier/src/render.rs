//! What a merchant receives: events turned into deliveries, one per channel, rendered once at
//! enqueue time so every attempt sends the same bytes under the same idempotency key.
//!
//! Merchants see the card's last four digits only — never the token (an internal join key) or
//! the BIN.

use crate::prefs::{EventKind, Format, Mode, Preferences};
use crate::store::{Attachment, DigestItem, NewDelivery};
use posflow_schema::currency::format_minor;
use posflow_schema::Channel;
use posflow_schema::{rfc3339_millis, FraudAlert, TransactionType, TransactionValidated};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The idempotency key of one event on one channel: derived from the event alone, so the same
/// event always gets the same key, whichever replica consumes it and however often.
pub fn idempotency_key(
    merchant: &str,
    channel: Channel,
    kind: EventKind,
    event_id: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [merchant, channel.as_str(), kind.as_str(), event_id] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Which subscription a transaction falls under.
pub fn kind_of(t: TransactionType) -> EventKind {
    match t {
        TransactionType::Refund | TransactionType::Void => EventKind::Refund,
        _ => EventKind::Transaction,
    }
}

/// The deliveries for one validated transaction, or the digest item it becomes.
pub fn transaction(
    p: &Preferences,
    v: &TransactionValidated,
) -> (Vec<NewDelivery>, Option<DigestItem>) {
    let t = &v.transaction;
    let kind = kind_of(t.kind);
    if !p.wants(kind) {
        return (vec![], None);
    }
    if let Mode::Digest { .. } = p.mode {
        return (vec![], Some(digest_item(v)));
    }
    let mut out = Vec::new();
    if p.webhook.is_some() {
        let key = idempotency_key(&p.merchant_id, Channel::Webhook, kind, &t.transaction_id);
        let (content_type, body) = match p.format {
            Format::Json => (
                "application/json",
                serde_json::to_vec(&json!({
                    "event_type": kind.as_str(),
                    "idempotency_key": key,
                    "merchant_id": t.merchant_id,
                    "transaction": transaction_json(v),
                }))
                .unwrap_or_default(),
            ),
            Format::Csv => ("text/csv", csv(&[digest_item(v)])),
        };
        out.push(NewDelivery {
            idempotency_key: key,
            merchant_id: p.merchant_id.clone(),
            event_id: t.transaction_id.clone(),
            channel: Channel::Webhook,
            event_type: kind.as_str(),
            priority: 1,
            subject: None,
            content_type: content_type.into(),
            body,
            attachment: None,
            risk_contact: false,
            traceparent: None,
        });
    }
    if !p.emails.is_empty() {
        out.push(NewDelivery {
            idempotency_key: idempotency_key(
                &p.merchant_id,
                Channel::Email,
                kind,
                &t.transaction_id,
            ),
            merchant_id: p.merchant_id.clone(),
            event_id: t.transaction_id.clone(),
            channel: Channel::Email,
            event_type: kind.as_str(),
            priority: 1,
            subject: Some(format!(
                "Receipt: {} {} {} at {}",
                t.kind.as_str(),
                format_minor(t.amount_minor, &t.currency),
                t.currency,
                t.terminal_id
            )),
            content_type: "text/plain; charset=utf-8".into(),
            body: receipt(v).into_bytes(),
            attachment: None,
            risk_contact: false,
            traceparent: None,
        });
    }
    (out, None)
}

/// The deliveries for one fraud alert: always at once, to the webhook and the risk contacts,
/// at priority 0 so they are claimed ahead of any backlog.
pub fn alert(p: &Preferences, a: &FraudAlert) -> Vec<NewDelivery> {
    if !p.wants(EventKind::FraudAlert) {
        return vec![];
    }
    let kind = EventKind::FraudAlert;
    let data = json!({
        "alert_id": a.alert_id,
        "rule_id": a.rule_id,
        "severity": format!("{:?}", a.severity).to_lowercase(),
        "score": a.score,
        "terminal_id": a.terminal_id,
        "evidence_transaction_ids": a.evidence_transaction_ids,
        "detected_at": rfc3339_millis(a.detected_at),
    });
    let mut out = Vec::new();
    if p.webhook.is_some() {
        let key = idempotency_key(&p.merchant_id, Channel::Webhook, kind, &a.alert_id);
        let body = json!({"event_type": kind.as_str(), "idempotency_key": key, "merchant_id": a.merchant_id, "alert": data});
        out.push(NewDelivery {
            idempotency_key: key,
            merchant_id: p.merchant_id.clone(),
            event_id: a.alert_id.clone(),
            channel: Channel::Webhook,
            event_type: kind.as_str(),
            priority: 0,
            subject: None,
            content_type: "application/json".into(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
            attachment: None,
            risk_contact: false,
            traceparent: None,
        });
    }
    if !p.risk_contacts().is_empty() {
        let text = format!(
            "posflow flagged activity at your terminal {} (rule {}, severity {:?}, score {:.2}).\n\
             Transactions: {}\nDetected at {}.\nAlert id {}.\n",
            a.terminal_id,
            a.rule_id,
            a.severity,
            a.score,
            a.evidence_transaction_ids.join(", "),
            rfc3339_millis(a.detected_at),
            a.alert_id
        );
        out.push(NewDelivery {
            idempotency_key: idempotency_key(&p.merchant_id, Channel::Email, kind, &a.alert_id),
            merchant_id: p.merchant_id.clone(),
            event_id: a.alert_id.clone(),
            channel: Channel::Email,
            event_type: kind.as_str(),
            priority: 0,
            subject: Some(format!(
                "Fraud alert {}: {} at {}",
                a.rule_id,
                format!("{:?}", a.severity).to_uppercase(),
                a.terminal_id
            )),
            content_type: "text/plain; charset=utf-8".into(),
            body: text.into_bytes(),
            attachment: None,
            risk_contact: true,
            traceparent: None,
        });
    }
    out
}

/// The deliveries of one digest period.
pub fn digest(
    p: &Preferences,
    start_ms: i64,
    end_ms: i64,
    items: &[DigestItem],
) -> Vec<NewDelivery> {
    let kind = EventKind::Digest;
    let period = format!("{}/{}", rfc3339_millis(start_ms), rfc3339_millis(end_ms));
    let (content_type, data, ext) = match p.format {
        Format::Csv => ("text/csv", csv(items), "csv"),
        Format::Json => (
            "application/json",
            serde_json::to_vec(&json!({
                "event_type": "digest",
                "merchant_id": p.merchant_id,
                "period_start": rfc3339_millis(start_ms),
                "period_end": rfc3339_millis(end_ms),
                "transactions": items.iter().map(item_json).collect::<Vec<_>>(),
            }))
            .unwrap_or_default(),
            "json",
        ),
    };
    let mut out = Vec::new();
    if p.webhook.is_some() {
        out.push(NewDelivery {
            idempotency_key: idempotency_key(&p.merchant_id, Channel::Webhook, kind, &period),
            merchant_id: p.merchant_id.clone(),
            event_id: period.clone(),
            channel: Channel::Webhook,
            event_type: kind.as_str(),
            priority: 1,
            subject: None,
            content_type: content_type.into(),
            body: data.clone(),
            attachment: None,
            risk_contact: false,
            traceparent: None,
        });
    }
    if !p.emails.is_empty() {
        let name = format!(
            "posflow-digest-{}-{}.{ext}",
            p.merchant_id,
            rfc3339_millis(end_ms).replace(':', "")
        );
        out.push(NewDelivery {
            idempotency_key: idempotency_key(&p.merchant_id, Channel::Email, kind, &period),
            merchant_id: p.merchant_id.clone(),
            event_id: period.clone(),
            channel: Channel::Email,
            event_type: kind.as_str(),
            priority: 1,
            subject: Some(format!(
                "posflow digest for {}: {} transactions, {} to {}",
                p.merchant_id,
                items.len(),
                rfc3339_millis(start_ms),
                rfc3339_millis(end_ms)
            )),
            content_type: "text/plain; charset=utf-8".into(),
            body: digest_text(&p.merchant_id, start_ms, end_ms, items).into_bytes(),
            attachment: Some(Attachment {
                name,
                content_type: content_type.into(),
                bytes: data,
            }),
            risk_contact: false,
            traceparent: None,
        });
    }
    out
}

pub fn digest_item(v: &TransactionValidated) -> DigestItem {
    let t = &v.transaction;
    DigestItem {
        merchant_id: t.merchant_id.clone(),
        transaction_id: t.transaction_id.clone(),
        received_at_ms: v.envelope.received_at,
        transaction_time_ms: t.transaction_time,
        terminal_id: t.terminal_id.clone(),
        kind: t.kind.as_str().into(),
        amount_minor: t.amount_minor,
        currency: t.currency.clone(),
        entry_mode: t.entry_mode.as_str().into(),
        card_last4: t.card.as_ref().map(|c| c.last4.clone()),
        auth_code: t.auth_code.clone(),
    }
}

fn transaction_json(v: &TransactionValidated) -> serde_json::Value {
    let t = &v.transaction;
    json!({
        "transaction_id": t.transaction_id,
        "terminal_id": t.terminal_id,
        "sequence": t.sequence,
        "transaction_time": rfc3339_millis(t.transaction_time),
        "received_at": rfc3339_millis(v.envelope.received_at),
        "type": t.kind.as_str(),
        "original_transaction_id": t.original_transaction_id,
        "amount_minor": t.amount_minor,
        "amount": format_minor(t.amount_minor, &t.currency),
        "currency": t.currency,
        "payment_method": t.payment_method.as_str(),
        "entry_mode": t.entry_mode.as_str(),
        "card_last4": t.card.as_ref().map(|c| &c.last4),
        "auth_code": t.auth_code,
        "response_code": t.response_code,
        "mcc": t.mcc,
        "line_items": t.line_items.iter().map(|l| json!({
            "sku": l.sku, "description": l.description, "unit_price_minor": l.unit_price_minor, "quantity": l.quantity,
        })).collect::<Vec<_>>(),
    })
}

fn item_json(i: &DigestItem) -> serde_json::Value {
    json!({
        "transaction_id": i.transaction_id,
        "transaction_time": rfc3339_millis(i.transaction_time_ms),
        "received_at": rfc3339_millis(i.received_at_ms),
        "terminal_id": i.terminal_id,
        "type": i.kind,
        "amount_minor": i.amount_minor,
        "amount": format_minor(i.amount_minor, &i.currency),
        "currency": i.currency,
        "entry_mode": i.entry_mode,
        "card_last4": i.card_last4,
        "auth_code": i.auth_code,
    })
}

fn receipt(v: &TransactionValidated) -> String {
    let t = &v.transaction;
    let mut s = format!(
        "Merchant {}\nTerminal {}  #{}\n{}\n\n",
        t.merchant_id,
        t.terminal_id,
        t.sequence,
        rfc3339_millis(t.transaction_time)
    );
    for l in &t.line_items {
        s += &format!(
            "{:>3} x {:<30} {:>12}\n",
            l.quantity,
            l.description,
            // i128: an i64 price times an i32 quantity cannot overflow it.
            format_minor(
                i128::from(l.unit_price_minor) * i128::from(l.quantity),
                &t.currency
            )
        );
    }
    s += &format!(
        "\n{} {:>12} {}\n{} {}{}\nAuth {}  Response {}\nTransaction {}\n",
        t.kind.as_str().to_uppercase(),
        format_minor(t.amount_minor, &t.currency),
        t.currency,
        t.entry_mode.as_str(),
        t.payment_method.as_str(),
        t.card
            .as_ref()
            .map(|c| format!(" **** {}", c.last4))
            .unwrap_or_default(),
        t.auth_code.as_deref().unwrap_or("-"),
        t.response_code,
        t.transaction_id
    );
    s
}

pub const CSV_HEADER: &str = "transaction_id,transaction_time,received_at,terminal_id,type,amount_minor,amount,currency,entry_mode,card_last4,auth_code";

/// RFC 4180 CSV, CRLF line ends, a header line. Amounts are as recorded (refunds positive),
/// in minor units and in the currency's major units.
pub fn csv(items: &[DigestItem]) -> Vec<u8> {
    let mut out = String::with_capacity(64 + items.len() * 128);
    out += CSV_HEADER;
    out += "\r\n";
    for i in items {
        // Text a terminal chose (ids, auth code) is neutralised against formula injection;
        // numbers and posflow's own enums are written as they are.
        let (time, received) = (
            rfc3339_millis(i.transaction_time_ms),
            rfc3339_millis(i.received_at_ms),
        );
        let (minor, major) = (
            i.amount_minor.to_string(),
            format_minor(i.amount_minor, &i.currency),
        );
        out += &csv_record(
            &[
                Cell::Text(&i.transaction_id),
                Cell::Plain(&time),
                Cell::Plain(&received),
                Cell::Text(&i.terminal_id),
                Cell::Plain(&i.kind),
                Cell::Plain(&minor),
                Cell::Plain(&major),
                Cell::Plain(&i.currency),
                Cell::Plain(&i.entry_mode),
                Cell::Text(i.card_last4.as_deref().unwrap_or("")),
                Cell::Text(i.auth_code.as_deref().unwrap_or("")),
            ],
            "\r\n",
        );
    }
    out.into_bytes()
}

/// A CSV cell.
pub enum Cell<'a> {
    /// Text a terminal or a merchant chose: a spreadsheet must not take it for a formula
    /// (OWASP "CSV injection"). One that starts with `=`, `+`, `-`, `@`, a tab or a carriage
    /// return gets a leading `'`.
    Text(&'a str),
    /// Numbers, times and posflow's own names, written as they are.
    Plain(&'a str),
}

/// One CSV record, in every CSV posflow writes (digests here, the API's reports): RFC 4180
/// through the csv crate (a cell is quoted only where it must be), ended by `end`.
pub fn csv_record(cells: &[Cell<'_>], end: &str) -> String {
    let mut w = csv::WriterBuilder::new()
        .buffer_capacity(512)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::with_capacity(256));
    let cells = cells.iter().map(|c| match c {
        Cell::Text(f) if f.starts_with(['=', '+', '-', '@', '\t', '\r']) => format!("'{f}").into(),
        Cell::Text(f) | Cell::Plain(f) => std::borrow::Cow::Borrowed(*f),
    });
    // Writing to a Vec fails only on allocation; the cells are UTF-8, so the record is.
    let record = w
        .write_record(cells.collect::<Vec<_>>().iter().map(|c| c.as_bytes()))
        .and_then(|()| w.into_inner().map_err(|e| e.into_error().into()))
        .expect("a CSV record into memory");
    let mut s = String::from_utf8(record).expect("UTF-8 cells make a UTF-8 record");
    s.pop(); // the writer's "\n"
    s.push_str(end);
    s
}

/// Count and sum of amounts per (currency, type): what the digest's text states and what a
/// merchant reconciles against (docs/notifier.md has the matching SQL).
/// Sums are i128: no number of i64 amounts a digest can hold overflows it.
pub fn totals(items: &[DigestItem]) -> BTreeMap<(String, String), (u64, i128)> {
    let mut t: BTreeMap<(String, String), (u64, i128)> = BTreeMap::new();
    for i in items {
        let e = t.entry((i.currency.clone(), i.kind.clone())).or_default();
        e.0 += 1;
        e.1 += i128::from(i.amount_minor);
    }
    t
}

fn digest_text(merchant: &str, start_ms: i64, end_ms: i64, items: &[DigestItem]) -> String {
    let mut s = format!(
        "posflow digest for merchant {merchant}\nReceived from {} to {}: {} transactions.\n\nTotals by currency and type:\n",
        rfc3339_millis(start_ms),
        rfc3339_millis(end_ms),
        items.len()
    );
    for ((currency, kind), (count, sum)) in totals(items) {
        s += &format!(
            "  {currency} {kind:<18} {count:>6} x  {:>14}\n",
            format_minor(sum, &currency)
        );
    }
    s += "\nEvery transaction is in the attachment, one per line. A transaction that reached posflow\n\
          after its period's digest was sent is in the next digest.\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, kind: &str, amount: i64, currency: &str) -> DigestItem {
        DigestItem {
            merchant_id: "M1".into(),
            transaction_id: id.into(),
            received_at_ms: 1_700_000_000_000,
            transaction_time_ms: 1_700_000_000_000,
            terminal_id: "T1".into(),
            kind: kind.into(),
            amount_minor: amount,
            currency: currency.into(),
            entry_mode: "chip".into(),
            card_last4: Some("4242".into()),
            auth_code: None,
        }
    }

    #[test]
    fn keys_depend_on_every_part_and_nothing_else() {
        let k = |m, c, e| idempotency_key(m, c, EventKind::Transaction, e);
        assert_eq!(
            k("M1", Channel::Webhook, "t1"),
            k("M1", Channel::Webhook, "t1")
        );
        assert_ne!(
            k("M1", Channel::Webhook, "t1"),
            k("M1", Channel::Email, "t1")
        );
        assert_ne!(
            k("M1", Channel::Webhook, "t1"),
            k("M2", Channel::Webhook, "t1")
        );
        // The separator keeps ("M1", "x") and ("M", "1x") apart.
        assert_ne!(
            k("M1", Channel::Webhook, "x"),
            k("M", Channel::Webhook, "1x")
        );
        assert_eq!(k("M1", Channel::Webhook, "t1").len(), 32);
    }

    #[test]
    fn csv_quotes_what_needs_quoting_and_totals_add_up() {
        let items = [
            item("a,1", "sale", 1250, "EUR"),
            item("b\"2", "refund", 250, "EUR"),
            item("c", "sale", 700, "JPY"),
            item("d", "sale", 50, "EUR"),
        ];
        let text = String::from_utf8(csv(&items)).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert!(
            lines[1].starts_with("\"a,1\",2023-11-14T22:13:20.000Z,"),
            "{}",
            lines[1]
        );
        assert!(lines[2].starts_with("\"b\"\"2\","), "{}", lines[2]);
        assert!(lines[3].contains(",sale,700,700,JPY,"), "{}", lines[3]);
        assert_eq!(lines.len(), 6); // header, 4 rows, empty after the last CRLF
                                    // Formula injection: a terminal-chosen id that a spreadsheet would evaluate.
        let hostile = [
            item("=HYPERLINK(\"http://x\")", "sale", 1, "EUR"),
            item("+1", "sale", 1, "EUR"),
            item("-2", "sale", 1, "EUR"),
            item("@SUM(A1)", "sale", 1, "EUR"),
            item("\tx", "sale", 1, "EUR"),
        ];
        let text = String::from_utf8(csv(&hostile)).unwrap();
        let firsts: Vec<&str> = text
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| l.split(",20").next().unwrap())
            .collect();
        assert_eq!(
            firsts,
            [
                "\"'=HYPERLINK(\"\"http://x\"\")\"",
                "'+1",
                "'-2",
                "'@SUM(A1)",
                "'\tx"
            ]
        );
        // Sums of amounts beyond i64 are exact.
        let big = [
            item("x", "sale", i64::MAX, "EUR"),
            item("y", "sale", i64::MAX, "EUR"),
        ];
        assert_eq!(
            totals(&big)[&("EUR".into(), "sale".into())],
            (2, 2 * i128::from(i64::MAX))
        );
        let t = totals(&items);
        assert_eq!(t[&("EUR".into(), "sale".into())], (2, 1300));
        assert_eq!(t[&("EUR".into(), "refund".into())], (1, 250));
        assert_eq!(t[&("JPY".into(), "sale".into())], (1, 700));
        let body = digest_text("M1", 0, 60_000, &items);
        assert!(
            body.contains("EUR sale                    2 x           13.00"),
            "{body}"
        );
    }
}
