//! The terminal payload contract, versions 1 and 2 (docs/terminal-contract.md): JSON, UTF-8, at
//! most `max_bytes`. Parsing never panics and every refusal carries a reason code.

use crate::card::{find_sad_field, mask_text, PanError, Tokenizer};
use posflow_mqtt::TopicIds;
use posflow_schema::{LineItem, Location, ReasonCode, Transaction};
use serde::Deserialize;
use strum::IntoEnumIterator;

/// The versions this bridge reads. Version 2 adds the offline fields (`offline`,
/// `offline_since`); version 1 is version 2 without them, and stays valid for ever.
pub const PAYLOAD_VERSIONS: std::ops::RangeInclusive<i32> = 1..=2;

/// A payload that keeps the contract: the transaction (card tokenised) and the version it was
/// sent in (the envelope's `payload_version`).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub transaction: Transaction,
    pub version: i32,
}

/// A refusal: the reason code and a message for people, with card numbers masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: ReasonCode,
    pub detail: String,
    /// The transaction id, when the payload got far enough to have one (for the terminal's answer).
    pub transaction_id: Option<String>,
}

impl Refusal {
    fn with_id(mut self, id: Option<String>) -> Self {
        self.transaction_id = id;
        self
    }
}

fn refuse(reason: ReasonCode, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: mask_text(&detail.into()),
        transaction_id: None,
    }
}

/// The first key that an object repeats, at any depth. Two parsers may read such a payload
/// differently (first value or last), so payment messages must not have them.
fn duplicate_key(text: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
    struct Unique;
    impl<'de> DeserializeSeed<'de> for Unique {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Unique {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if let Some(key) = seen.replace(key) {
                    return Err(A::Error::custom(key));
                }
                map.next_value_seed(Unique)?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Unique)?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    // Only called on text that parsed as JSON, so the one error left is a repeated key.
    Unique
        .deserialize(&mut serde_json::Deserializer::from_str(text))
        .err()
        .map(|e| {
            let s = e.to_string();
            // serde_json appends " at line L column C" to a custom error.
            s.rsplit_once(" at line ")
                .map_or(s.clone(), |(k, _)| k.to_string())
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    /// Anything outside [`PAYLOAD_VERSIONS`] takes the checked path, for its own reason.
    version: i32,
    transaction_id: String,
    terminal_id: String,
    merchant_id: String,
    sequence: i64,
    /// RFC 3339, e.g. 2026-11-27T10:15:30.123Z
    transaction_time: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    original_transaction_id: Option<String>,
    amount_minor: i64,
    currency: String,
    payment_method: String,
    entry_mode: String,
    #[serde(default)]
    card: Option<WireCard>,
    #[serde(default)]
    auth_code: Option<String>,
    response_code: String,
    mcc: String,
    #[serde(default)]
    location: Option<WireLocation>,
    #[serde(default)]
    line_items: Vec<WireLineItem>,
    /// Version 2 on: captured offline. A version-1 payload naming it is refused as an
    /// unknown field, as it would have been before version 2 existed.
    #[serde(default)]
    offline: Option<bool>,
    /// Version 2 on, RFC 3339: when the link went down (needs `offline: true`).
    #[serde(default)]
    offline_since: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCard {
    pan: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireLocation {
    lat: f64,
    lon: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireLineItem {
    sku: String,
    description: String,
    unit_price_minor: i64,
    quantity: i32,
}

/// One of the enum's lower-case names (`as_str`), or FIELD_INVALID listing them.
fn enum_field<T>(field: &str, v: &str) -> Result<T, Refusal>
where
    T: IntoEnumIterator + std::str::FromStr + Into<&'static str>,
{
    v.parse().map_err(|_| {
        let allowed: Vec<&'static str> = T::iter().map(Into::into).collect();
        refuse(
            ReasonCode::FieldInvalid,
            format!("{field} must be one of {allowed:?}"),
        )
    })
}

fn short_text(field: &str, v: &str, max: usize) -> Result<(), Refusal> {
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(refuse(
            ReasonCode::FieldInvalid,
            format!("{field} must be 1-{max} printable characters"),
        ));
    }
    Ok(())
}

/// Parses and checks one payload received on `topic` (already parsed). Checks here are about
/// the contract and identity; business rules belong to the validator.
///
/// One typed pass for a payload that keeps the contract, straight into [`Wire`]: it refuses
/// every field it does not know at every depth (so no sensitive authentication data can be
/// in it: no known field has such a name) and, being serde's derive, any known field given
/// twice (a repeated unknown key is an unknown field). Anything else — not an object, another
/// version, any error — goes to [`parse_checked`], whose tree gives each refusal its own reason,
/// so the answer is the same either way (`tests/never_panics.rs` holds the two paths to that).
/// The tree was a quarter of the bridge's CPU (BENCHMARKS.md, issue 20).
pub fn parse(
    bytes: &[u8],
    topic: &TopicIds<'_>,
    max_bytes: usize,
    tokenizer: &Tokenizer,
) -> Result<Parsed, Refusal> {
    if bytes.len() <= max_bytes && bytes.trim_ascii_start().first() == Some(&b'{') {
        if let Ok(w) = serde_json::from_slice::<Wire>(bytes) {
            if PAYLOAD_VERSIONS.contains(&w.version) {
                return w.checked(topic, tokenizer);
            }
        }
    }
    parse_checked(bytes, topic, max_bytes, tokenizer)
}

/// The reference path: the payload as a tree first, so each way it breaks the contract gets
/// its reason in the documented order (version, sensitive data, repeated key, schema).
pub fn parse_checked(
    bytes: &[u8],
    topic: &TopicIds<'_>,
    max_bytes: usize,
    tokenizer: &Tokenizer,
) -> Result<Parsed, Refusal> {
    if bytes.len() > max_bytes {
        return Err(oversize(bytes, max_bytes));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        refuse(
            ReasonCode::NotUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| refuse(ReasonCode::NotJson, e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| refuse(ReasonCode::NotJson, "payload is JSON but not an object"))?;
    let tx_id = obj
        .get("transaction_id")
        .and_then(|v| v.as_str())
        .filter(|s| s.len() <= 64)
        .map(str::to_string);
    check_shape(obj, &value, text).map_err(|r| r.with_id(tx_id.clone()))?;
    let w: Wire = serde_json::from_value(value)
        .map_err(|e| refuse(ReasonCode::SchemaViolation, e.to_string()).with_id(tx_id.clone()))?;
    w.checked(topic, tokenizer)
}

/// OVERSIZE, with the transaction id when one can be read, so the terminal can tell which
/// transaction the answer is about. The broker's packet limit (2 x the payload limit) bounds
/// what is parsed here.
fn oversize(bytes: &[u8], max_bytes: usize) -> Refusal {
    let mut r = refuse(
        ReasonCode::Oversize,
        format!("payload is {} bytes, the limit is {max_bytes}", bytes.len()),
    );
    r.transaction_id = transaction_id_of(bytes, max_bytes);
    r
}

/// The payload's `transaction_id`, if it is JSON with one of at most 64 characters: for an
/// answer to a message refused before it is parsed (over its size, over its terminal's rate),
/// so the terminal knows which transaction to retry. Not looked for in a payload over four
/// times the size limit: a refused message (a runaway terminal's) must stay cheap.
pub fn transaction_id_of(bytes: &[u8], max_bytes: usize) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        transaction_id: Option<String>,
    }
    if bytes.len() > 4 * max_bytes {
        return None;
    }
    serde_json::from_slice::<Id>(bytes)
        .ok()
        .and_then(|i| i.transaction_id)
        .filter(|id| id.len() <= 64)
}

/// The checks before typed parsing: the version (its own reason), sensitive authentication
/// data at any depth (never accepted, not even to drop it: the dead letter keeps the name
/// only), and repeated keys.
fn check_shape(
    obj: &serde_json::Map<String, serde_json::Value>,
    value: &serde_json::Value,
    text: &str,
) -> Result<(), Refusal> {
    match obj.get("version") {
        Some(v)
            if v.as_i64().is_some_and(|v| {
                (i64::from(*PAYLOAD_VERSIONS.start())..=i64::from(*PAYLOAD_VERSIONS.end()))
                    .contains(&v)
            }) => {}
        Some(v) if v.is_i64() => {
            return Err(refuse(
                ReasonCode::UnsupportedVersion,
                format!(
                    "version {v} is not supported; this bridge reads {} to {}",
                    PAYLOAD_VERSIONS.start(),
                    PAYLOAD_VERSIONS.end()
                ),
            ))
        }
        _ => {
            return Err(refuse(
                ReasonCode::SchemaViolation,
                "version must be an integer",
            ))
        }
    }
    if let Some(k) = find_sad_field(value) {
        return Err(refuse(
            ReasonCode::CardDataForbidden,
            format!("field {k:?} is sensitive authentication data and is never accepted"),
        ));
    }
    if let Some(k) = duplicate_key(text) {
        let k: String = k.chars().take(64).collect();
        return Err(refuse(
            ReasonCode::DuplicateKey,
            format!("key {k:?} appears twice in one object"),
        ));
    }
    Ok(())
}

impl Wire {
    /// Identity against the topic, then the value checks; a refusal names the transaction.
    fn checked(self, topic: &TopicIds<'_>, tokenizer: &Tokenizer) -> Result<Parsed, Refusal> {
        let id = Some(&self.transaction_id)
            .filter(|s| s.len() <= 64)
            .cloned();
        if self.terminal_id != topic.terminal_id || self.merchant_id != topic.merchant_id {
            return Err(refuse(
                ReasonCode::IdentityMismatch,
                "terminal_id/merchant_id in the payload differ from the topic's",
            )
            .with_id(id));
        }
        let version = self.version;
        self.into_transaction(tokenizer)
            .map(|transaction| Parsed {
                transaction,
                version,
            })
            .map_err(|r| r.with_id(id))
    }

    /// The contract's value checks, in the order their refusals are given, then the record
    /// (the card tokenized; its number goes no further).
    fn into_transaction(self, tokenizer: &Tokenizer) -> Result<Transaction, Refusal> {
        self.check_texts()?;
        let time = rfc3339_millis("transaction_time", &self.transaction_time)?;
        let (offline, offline_since) = self.check_offline(time)?;
        if self.sequence < 0 {
            return Err(refuse(ReasonCode::FieldInvalid, "sequence must be >= 0"));
        }
        let card = match &self.card {
            None => None,
            Some(c) => Some(tokenizer.tokenize(&c.pan).map_err(|e| match e {
                PanError::Format => refuse(ReasonCode::PanInvalid, "card.pan must be 13-19 digits"),
                PanError::Luhn => refuse(ReasonCode::PanInvalid, "card.pan fails the Luhn check"),
            })?),
        };
        let location = self
            .location
            .as_ref()
            .map(WireLocation::check)
            .transpose()?;
        self.check_line_items()?;
        Ok(Transaction {
            kind: enum_field("type", &self.kind)?,
            payment_method: enum_field("payment_method", &self.payment_method)?,
            entry_mode: enum_field("entry_mode", &self.entry_mode)?,
            transaction_time: time,
            offline,
            offline_since,
            card,
            location,
            line_items: self
                .line_items
                .into_iter()
                .map(|l| LineItem {
                    sku: l.sku,
                    description: l.description,
                    unit_price_minor: l.unit_price_minor,
                    quantity: l.quantity,
                })
                .collect(),
            transaction_id: self.transaction_id,
            terminal_id: self.terminal_id,
            merchant_id: self.merchant_id,
            sequence: self.sequence,
            original_transaction_id: self.original_transaction_id,
            amount_minor: self.amount_minor,
            currency: self.currency,
            auth_code: self.auth_code,
            response_code: self.response_code,
            mcc: self.mcc,
        })
    }

    /// The offline fields: version 2 only; `offline_since` only with `offline: true`, and not
    /// after the capture (both are the terminal's clock).
    fn check_offline(&self, time: i64) -> Result<(bool, Option<i64>), Refusal> {
        if self.version < 2 {
            if let Some(name) = [
                ("offline", self.offline.is_some()),
                ("offline_since", self.offline_since.is_some()),
            ]
            .into_iter()
            .find_map(|(name, given)| given.then_some(name))
            {
                return Err(refuse(
                    ReasonCode::SchemaViolation,
                    format!(
                        "unknown field `{name}` in version 1: the offline fields need version 2"
                    ),
                ));
            }
        }
        let offline = self.offline.unwrap_or(false);
        let Some(since) = &self.offline_since else {
            return Ok((offline, None));
        };
        if !offline {
            return Err(refuse(
                ReasonCode::FieldInvalid,
                "offline_since is only for a transaction with offline: true",
            ));
        }
        let since = rfc3339_millis("offline_since", since)?;
        if since > time {
            return Err(refuse(
                ReasonCode::FieldInvalid,
                "offline_since must not be after transaction_time",
            ));
        }
        Ok((offline, Some(since)))
    }

    fn check_texts(&self) -> Result<(), Refusal> {
        short_text("transaction_id", &self.transaction_id, 64)?;
        if let Some(o) = &self.original_transaction_id {
            short_text("original_transaction_id", o, 64)?;
        }
        Ok(())
    }

    /// Line items, then the short codes (their refusals come in this order).
    fn check_line_items(&self) -> Result<(), Refusal> {
        for (i, li) in self.line_items.iter().enumerate() {
            short_text(&format!("line_items[{i}].sku"), &li.sku, 64)?;
            short_text(
                &format!("line_items[{i}].description"),
                &li.description,
                200,
            )?;
        }
        if self.line_items.len() > 200 {
            return Err(refuse(ReasonCode::FieldInvalid, "at most 200 line_items"));
        }
        short_text("currency", &self.currency, 3)?;
        short_text("response_code", &self.response_code, 4)?;
        short_text("mcc", &self.mcc, 4)?;
        if let Some(a) = &self.auth_code {
            short_text("auth_code", a, 12)?;
        }
        Ok(())
    }
}

/// Milliseconds since the epoch of an RFC 3339 time, or FIELD_INVALID naming the field.
fn rfc3339_millis(field: &str, v: &str) -> Result<i64, Refusal> {
    humantime::parse_rfc3339_weak(v)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| {
            refuse(
                ReasonCode::FieldInvalid,
                format!("{field} must be RFC 3339, e.g. 2026-11-27T10:15:30.123Z"),
            )
        })
}

impl WireLocation {
    fn check(&self) -> Result<Location, Refusal> {
        if (-90.0..=90.0).contains(&self.lat) && (-180.0..=180.0).contains(&self.lon) {
            Ok(Location {
                latitude: self.lat,
                longitude: self.lon,
            })
        } else {
            Err(refuse(
                ReasonCode::FieldInvalid,
                "location lat must be -90..90 and lon -180..180",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"version": 1, "transaction_id": "off-1", "terminal_id": "T1", "merchant_id": "M1", "sequence": 7, "transaction_time": "2026-11-27T10:15:30.123Z", "type": "sale", "amount_minor": 1234, "currency": "EUR", "payment_method": "card", "entry_mode": "chip", "response_code": "00", "mcc": "5814""#;

    /// Both parse paths, which must agree; the answer.
    fn parse_both(
        extra: &str,
        version: i32,
    ) -> Result<(i32, bool, Option<i64>), (ReasonCode, String)> {
        let text = format!(
            "{}{extra}}}",
            V1.replacen("\"version\": 1", &format!("\"version\": {version}"), 1)
        );
        let tokenizer = Tokenizer::new(&posflow_runtime::Secret::new(
            "test-key-0123456789abcdef0123456789abcdef",
        ));
        let ids = TopicIds {
            merchant_id: "M1",
            terminal_id: "T1",
        };
        let fast = parse(text.as_bytes(), &ids, 16_384, &tokenizer);
        assert_eq!(
            fast,
            parse_checked(text.as_bytes(), &ids, 16_384, &tokenizer),
            "{text}"
        );
        fast.map(|p| {
            (
                p.version,
                p.transaction.offline,
                p.transaction.offline_since,
            )
        })
        .map_err(|r| (r.reason, r.detail))
    }

    /// The offline fields of version 2, and version 1 without them (docs/terminal-contract.md).
    #[test]
    fn offline_fields_need_version_2_and_agree_with_the_capture_time() {
        let since = 1_795_770_000_000; // 2026-11-27T09:00:00Z
        assert_eq!(parse_both("", 1), Ok((1, false, None)));
        assert_eq!(parse_both("", 2), Ok((2, false, None)));
        assert_eq!(parse_both(r#", "offline": false"#, 2), Ok((2, false, None)));
        assert_eq!(parse_both(r#", "offline": true"#, 2), Ok((2, true, None)));
        assert_eq!(
            parse_both(
                r#", "offline": true, "offline_since": "2026-11-27T09:00:00Z""#,
                2
            ),
            Ok((2, true, Some(since)))
        );
        // Version 1 never had them: refused as the unknown fields they were.
        for extra in [
            r#", "offline": true"#,
            r#", "offline_since": "2026-11-27T09:00:00Z""#,
        ] {
            let (code, detail) = parse_both(extra, 1).unwrap_err();
            assert_eq!(code, ReasonCode::SchemaViolation, "{detail}");
            assert!(detail.contains("need version 2"), "{detail}");
        }
        let invalid = |extra| parse_both(extra, 2).unwrap_err();
        assert_eq!(
            invalid(r#", "offline_since": "2026-11-27T09:00:00Z""#),
            (
                ReasonCode::FieldInvalid,
                "offline_since is only for a transaction with offline: true".into()
            )
        );
        assert_eq!(
            invalid(r#", "offline": true, "offline_since": "yesterday""#),
            (
                ReasonCode::FieldInvalid,
                "offline_since must be RFC 3339, e.g. 2026-11-27T10:15:30.123Z".into()
            )
        );
        assert_eq!(
            invalid(r#", "offline": true, "offline_since": "2026-11-27T10:15:31Z""#),
            (
                ReasonCode::FieldInvalid,
                "offline_since must not be after transaction_time".into()
            )
        );
        assert_eq!(
            invalid(r#", "offline": "yes""#).0,
            ReasonCode::SchemaViolation
        );
        assert_eq!(
            parse_both("", 3).unwrap_err(),
            (
                ReasonCode::UnsupportedVersion,
                "version 3 is not supported; this bridge reads 1 to 2".into()
            )
        );
    }

    #[test]
    fn repeated_keys_are_found_at_any_depth() {
        assert_eq!(duplicate_key(r#"{"a":1,"b":{"c":[{"d":1}]}}"#), None);
        assert_eq!(duplicate_key(r#"{"a":1,"a":2}"#).as_deref(), Some("a"));
        assert_eq!(
            duplicate_key(r#"{"a":1,"b":[{"x":1},{"y":[{"z":1,"z":1}]}]}"#).as_deref(),
            Some("z")
        );
        // The same key in two objects is no repeat.
        assert_eq!(duplicate_key(r#"[{"a":1},{"a":1}]"#), None);
        // Escapes are compared decoded: "\u0061" is "a".
        assert_eq!(duplicate_key(r#"{"a":1,"\u0061":2}"#).as_deref(), Some("a"));
    }
}
