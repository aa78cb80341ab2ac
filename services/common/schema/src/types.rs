//! Rust mirrors of the `.avsc` files in `schemas/`. The `.avsc` files are the source of truth;
//! `tests/agree.rs` in this crate proves each type round-trips through its schema, field by field.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Card {
    /// HMAC-SHA256 of the PAN under the bridge's current key, base64url without padding (43 chars).
    pub token: String,
    pub bin: String,
    pub last4: String,
    /// The key that made `token` ("" before key ids existed).
    #[serde(default)]
    pub token_key_id: String,
    /// The same PAN under each previous key still configured (a rotation's transition).
    #[serde(default)]
    pub previous_tokens: Vec<PreviousToken>,
}

/// A card's token under an earlier key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousToken {
    pub key_id: String,
    pub token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: String,
    pub description: String,
    pub unit_price_minor: i64,
    pub quantity: i32,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::EnumIter,
    strum::EnumCount,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
/// Its `as_str` is the lower-case name used in the terminal payload, the database and docs.
#[strum(serialize_all = "snake_case")]
pub enum TransactionType {
    Sale,
    Refund,
    Void,
    PreAuthorisation,
    Completion,
}

impl TransactionType {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::EnumIter,
    strum::EnumCount,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
/// Its `as_str` is the lower-case name used in the terminal payload, the database and docs.
#[strum(serialize_all = "snake_case")]
pub enum PaymentMethod {
    Card,
    Wallet,
}

impl PaymentMethod {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::EnumIter,
    strum::EnumCount,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
/// Its `as_str` is the lower-case name used in the terminal payload, the database and docs.
#[strum(serialize_all = "snake_case")]
pub enum EntryMode {
    Chip,
    Contactless,
    Swipe,
    Manual,
    Qr,
}

impl EntryMode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub transaction_id: String,
    pub terminal_id: String,
    pub merchant_id: String,
    pub sequence: i64,
    /// Milliseconds since the Unix epoch (Avro timestamp-millis).
    pub transaction_time: i64,
    #[serde(rename = "type")]
    pub kind: TransactionType,
    pub original_transaction_id: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method: PaymentMethod,
    pub entry_mode: EntryMode,
    pub card: Option<Card>,
    pub auth_code: Option<String>,
    pub response_code: String,
    pub mcc: String,
    pub location: Option<Location>,
    pub line_items: Vec<LineItem>,
    /// Captured offline (store-and-forward) and sent when the link returned (payload version 2).
    #[serde(default)]
    pub offline: bool,
    /// Milliseconds since the Unix epoch: when the terminal lost its link, if it knows.
    #[serde(default)]
    pub offline_since: Option<i64>,
}

impl Transaction {
    /// A plain online sale of 12.34 EUR without a card, at 2026-11-27T10:15:30Z: the base
    /// that tests and examples change what they need on.
    pub fn example(transaction_id: &str, terminal_id: &str) -> Self {
        Transaction {
            transaction_id: transaction_id.into(),
            terminal_id: terminal_id.into(),
            merchant_id: "M001".into(),
            sequence: 1,
            transaction_time: 1_795_774_530_000,
            kind: TransactionType::Sale,
            original_transaction_id: None,
            amount_minor: 1234,
            currency: "EUR".into(),
            payment_method: PaymentMethod::Card,
            entry_mode: EntryMode::Chip,
            card: None,
            auth_code: None,
            response_code: "00".into(),
            mcc: "5814".into(),
            location: None,
            line_items: vec![],
            offline: false,
            offline_since: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub received_at: i64,
    pub mqtt_topic: String,
    pub bridge_id: String,
    pub payload_version: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionReceived {
    pub envelope: Envelope,
    pub transaction: Transaction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionValidated {
    pub envelope: Envelope,
    pub transaction: Transaction,
    pub validated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectionReason {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionRejected {
    pub envelope: Envelope,
    pub transaction: Transaction,
    pub reasons: Vec<RejectionReason>,
    pub rejected_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FraudAlert {
    pub alert_id: String,
    pub rule_id: String,
    pub severity: Severity,
    pub score: f64,
    pub evidence_transaction_ids: Vec<String>,
    pub card_token: Option<String>,
    pub merchant_id: String,
    pub terminal_id: String,
    pub detected_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Channel {
    Webhook,
    Email,
}

impl Channel {
    /// The name in the notifier's tables (`notification_outbox.channel`).
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Email => "email",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryStatus {
    Delivered,
    Retrying,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationOutcome {
    pub idempotency_key: String,
    pub merchant_id: String,
    pub channel: Channel,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: String,
    pub detail: String,
    pub stage: String,
    pub source: String,
    pub received_at: i64,
    #[serde(with = "serde_bytes_compat")]
    pub payload: Vec<u8>,
}

/// One terminal's entry in the registry (`pos.terminals`): the latest per terminal id counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalRegistration {
    pub terminal_id: String,
    pub merchant_id: String,
    /// `active`, `blocked` or `retired` (posflow-registry's `Status`).
    pub status: String,
    pub changed_at: i64,
    pub changed_by: String,
    pub note: String,
}

/// One audit record (`pos.audit`; the API's `api_audit` table is the source).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub role: String,
    pub merchant_id: String,
    pub action: String,
    pub resource: String,
    pub filter: String,
    pub row_count: i32,
    pub status: i32,
    pub outcome: String,
    pub source: String,
    pub request_id: String,
    pub reason: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// Avro `bytes` must be serialised as bytes, not as a sequence of ints.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}
