//! Every reason code posflow gives an input it does not accept, in one type for the whole
//! system: the bridge's dead letters, the validator's rejections, the Kafka stages' dead letters
//! and the notifier's given-up deliveries. Codes are stable API (new ones may be added, existing
//! ones keep their meaning). The tables in docs/reason-codes.md are generated from this enum —
//! the code, who gives it and its meaning — and a test fails when they differ
//! (`POSFLOW_BLESS=1 cargo test -p posflow-schema reason` rewrites them).

use crate::Channel;
use strum::{EnumMessage, IntoEnumIterator};

/// A reason code. `code()` is the wire form (`SCREAMING_SNAKE_CASE`), `meaning()` its
/// documentation.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::EnumIter,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumMessage,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum ReasonCode {
    // Given by the bridge.
    #[strum(message = "the MQTT topic is not `pos/<merchant>/<terminal>/tx` with valid ids")]
    TopicInvalid,
    #[strum(message = "payload larger than `--max-payload-bytes` (16 KiB)")]
    Oversize,
    #[strum(serialize = "NOT_UTF8", message = "payload is not UTF-8")]
    NotUtf8,
    #[strum(message = "payload is not a JSON object")]
    NotJson,
    #[strum(message = "a field is missing, unknown, or of the wrong type")]
    SchemaViolation,
    #[strum(message = "`version` is not a payload version this bridge reads")]
    UnsupportedVersion,
    #[strum(message = "the topic's terminal is not in the terminal registry (docs/terminals.md)")]
    TerminalUnknown,
    #[strum(
        message = "the terminal is blocked in the registry (stolen, tampered with); refused until an operator reactivates it"
    )]
    TerminalBlocked,
    #[strum(message = "the terminal is retired in the registry; its id is never accepted again")]
    TerminalRetired,
    #[strum(
        message = "the topic's merchant is not the one the registry gives the terminal, or the payload's `terminal_id`/`merchant_id` differ from the topic's (spoofing)"
    )]
    IdentityMismatch,
    #[strum(
        message = "a field (at any depth) or MQTT user property named as sensitive authentication data — CVV/CVC/CID/CSC, PIN or PIN block, track or magnetic-stripe data, any case and separators — was sent; never accepted. The dead letter keeps the field's name, its value replaced by `[removed]`"
    )]
    CardDataForbidden,
    #[strum(
        message = "a JSON object repeats a key (at any depth): two parsers could read the payload differently, so it is refused"
    )]
    DuplicateKey,
    #[strum(message = "the card number is not 13–19 digits or fails the Luhn check")]
    PanInvalid,
    #[strum(message = "a field has a value outside the contract (enum, RFC 3339 time, length)")]
    FieldInvalid,
    #[strum(
        message = "the terminal is above its rate limit and the bridge's policy is `reject`; retry later"
    )]
    RateLimited,
    #[strum(
        message = "the `transaction_id` was accepted recently with *different* content (the same content again is a repeat: answered with its original position, not produced again)"
    )]
    DuplicateTransactionId,

    // Given by the validator.
    #[strum(message = "`amount_minor` ≤ 0")]
    AmountNotPositive,
    #[strum(
        message = "above the merchant's limit for the transaction type (default 100,000 major units of the currency)"
    )]
    AmountOverLimit,
    #[strum(message = "not an active ISO 4217 code")]
    CurrencyUnknown,
    #[strum(
        message = "transaction time ahead of the bridge's receive time by more than the allowed skew (default 5 min)"
    )]
    TimeInFuture,
    #[strum(message = "older than the maximum age (default 7 days) at receipt")]
    TimeTooOld,
    #[strum(message = "the merchant's rules do not accept this transaction type")]
    TypeNotAllowed,
    #[strum(
        message = "a refund, void or completion without `original_transaction_id`, or referencing itself"
    )]
    OriginalMissing,
    #[strum(message = "a sale or pre-authorisation with an `original_transaction_id`")]
    OriginalUnexpected,
    #[strum(
        message = "the merchant's rules do not accept this entry mode (e.g. keyed-in `manual`)"
    )]
    EntryModeNotAllowed,
    #[strum(
        message = "merchant category code is not 4 digits, or not one registered for the merchant"
    )]
    MccInvalid,
    #[strum(message = "line items present and their total differs from the amount")]
    LineItemsMismatch,
    #[strum(
        message = "captured offline (`offline: true`), and the merchant's rules do not allow offline capture"
    )]
    OfflineNotAllowed,
    #[strum(
        message = "captured offline, above the merchant's offline amount per transaction (default 250 major units)"
    )]
    OfflineAmountOverCap,
    #[strum(
        message = "captured offline longer ago than the merchant's offline maximum age (default 72 h) at receipt"
    )]
    OfflineTooOld,
    #[strum(
        message = "captured offline after the terminal's outage already had the merchant's maximum number of offline transactions (default 500)"
    )]
    OfflineCountOverCap,
    #[strum(
        message = "captured offline, and the outage's offline total in this currency would exceed the merchant's cap (default 10,000 major units)"
    )]
    OfflineTotalOverCap,

    // Given by any stage that consumes from Kafka.
    #[strum(
        message = "a record on an input topic could not be decoded with its registered schema"
    )]
    DecodeFailed,
    #[strum(
        message = "storage or the notifier: PostgreSQL refused the record's row for good (SQLSTATE class 22, 23 or 54); the detail is `SQLSTATE <code>: <message>`, never the row"
    )]
    DbRejected,
    #[strum(
        message = "fraud: the transaction's time is further behind the newest on its input partition than `allowed_lateness_secs` (default 2 h): not judged by the fraud rules (it is validated, stored and notified as usual)"
    )]
    TooLate,

    // Given by the notifier's dispatcher.
    #[strum(
        message = "the merchant's endpoint failed (5xx, 408, 429, timeout, connection) on every attempt of the retry policy"
    )]
    WebhookExhausted,
    #[strum(
        message = "the endpoint answered a 4xx other than 408/429 (or a 3xx), or the merchant no longer has a webhook or preferences"
    )]
    WebhookRefused,
    #[strum(message = "the SMTP server failed transiently (4xx, connection) on every attempt")]
    EmailExhausted,
    #[strum(
        message = "the SMTP server refused the mail for good (5xx), or the merchant no longer has an address"
    )]
    EmailRefused,
}

/// Who gives a code, and so where it goes: one table per giver in docs/reason-codes.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumIter)]
pub enum GivenBy {
    /// Dead-lettered by the bridge (`pos.deadletter`, stage `bridge`), answered to the terminal.
    Bridge,
    /// Rejected by the validator (`pos.transactions.rejected`).
    Validator,
    /// Dead-lettered by any stage that consumes from Kafka.
    KafkaStage,
    /// Dead-lettered by the notifier (`pos.deadletter`, stage `notifier`): a delivery given up.
    Notifier,
}

impl ReasonCode {
    /// The code on the wire, in headers, metrics and the API.
    pub fn code(self) -> &'static str {
        self.into()
    }

    /// What the code means, for people (docs/reason-codes.md).
    pub fn meaning(self) -> &'static str {
        // Every variant has a message: the test `every_code_is_documented` proves it.
        self.get_message().unwrap_or("")
    }

    pub fn given_by(self) -> GivenBy {
        use ReasonCode::*;
        match self {
            TopicInvalid
            | Oversize
            | NotUtf8
            | NotJson
            | SchemaViolation
            | UnsupportedVersion
            | TerminalUnknown
            | TerminalBlocked
            | TerminalRetired
            | IdentityMismatch
            | CardDataForbidden
            | DuplicateKey
            | PanInvalid
            | FieldInvalid
            | RateLimited
            | DuplicateTransactionId => GivenBy::Bridge,
            AmountNotPositive | AmountOverLimit | CurrencyUnknown | TimeInFuture | TimeTooOld
            | TypeNotAllowed | OriginalMissing | OriginalUnexpected | EntryModeNotAllowed
            | MccInvalid | LineItemsMismatch | OfflineNotAllowed | OfflineAmountOverCap
            | OfflineTooOld | OfflineCountOverCap | OfflineTotalOverCap => GivenBy::Validator,
            DecodeFailed | DbRejected | TooLate => GivenBy::KafkaStage,
            WebhookExhausted | WebhookRefused | EmailExhausted | EmailRefused => GivenBy::Notifier,
        }
    }

    /// Every code one stage gives, in documentation order.
    pub fn given_by_stage(by: GivenBy) -> impl Iterator<Item = ReasonCode> {
        Self::iter().filter(move |c| c.given_by() == by)
    }

    /// A delivery over `channel` failed on every attempt.
    pub fn exhausted(channel: Channel) -> Self {
        match channel {
            Channel::Webhook => Self::WebhookExhausted,
            Channel::Email => Self::EmailExhausted,
        }
    }

    /// A delivery over `channel` was refused for good.
    pub fn refused(channel: Channel) -> Self {
        match channel {
            Channel::Webhook => Self::WebhookRefused,
            Channel::Email => Self::EmailRefused,
        }
    }

    /// The markdown table of the codes `by` gives, as docs/reason-codes.md holds it.
    pub fn markdown_table(by: GivenBy) -> String {
        let mut out = String::from("| code | meaning |\n|---|---|\n");
        for c in Self::given_by_stage(by) {
            out.push_str(&format!("| `{}` | {} |\n", c.code(), c.meaning()));
        }
        out
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../docs/reason-codes.md");

    fn markers(by: GivenBy) -> (String, String) {
        (
            format!("<!-- generated from ReasonCode: {by:?} -->\n"),
            format!("<!-- end {by:?} -->"),
        )
    }

    /// docs/reason-codes.md with each generated table replaced by the current one.
    fn regenerated(doc: &str) -> String {
        let mut out = doc.to_string();
        for by in GivenBy::iter() {
            let (start, end) = markers(by);
            let from = out
                .find(&start)
                .unwrap_or_else(|| panic!("{DOC} lacks {start:?}"))
                + start.len();
            let to = from
                + out[from..]
                    .find(&end)
                    .unwrap_or_else(|| panic!("{DOC} lacks {end:?}"));
            out.replace_range(from..to, &ReasonCode::markdown_table(by));
        }
        out
    }

    #[test]
    fn docs_tables_are_generated_from_the_type() {
        let doc = std::fs::read_to_string(DOC).unwrap();
        let want = regenerated(&doc);
        if std::env::var_os("POSFLOW_BLESS").is_some() {
            std::fs::write(DOC, &want).unwrap();
            return;
        }
        assert!(
            doc == want,
            "docs/reason-codes.md differs from ReasonCode; regenerate: POSFLOW_BLESS=1 cargo test -p posflow-schema reason"
        );
    }

    #[test]
    fn every_code_is_documented_and_round_trips() {
        let mut seen = std::collections::HashSet::new();
        for c in ReasonCode::iter() {
            assert!(!c.meaning().is_empty(), "{c:?} has no meaning");
            assert!(seen.insert(c.code()), "{} twice", c.code());
            assert_eq!(c.code().parse::<ReasonCode>(), Ok(c));
            assert!(c
                .code()
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
        }
        // The wire forms that existed before this type, spelled out once: they must not change.
        for (c, code) in [
            (ReasonCode::NotUtf8, "NOT_UTF8"),
            (ReasonCode::CardDataForbidden, "CARD_DATA_FORBIDDEN"),
            (
                ReasonCode::DuplicateTransactionId,
                "DUPLICATE_TRANSACTION_ID",
            ),
            (ReasonCode::MccInvalid, "MCC_INVALID"),
            (ReasonCode::DbRejected, "DB_REJECTED"),
            (ReasonCode::exhausted(Channel::Email), "EMAIL_EXHAUSTED"),
            (ReasonCode::refused(Channel::Webhook), "WEBHOOK_REFUSED"),
        ] {
            assert_eq!(c.code(), code);
        }
        assert_eq!(seen.len(), 39);
    }
}
