//! Everything a terminal controls at the bridge: the MQTT topic and the payload bytes.
//! `make fuzz` runs it seeded with tests/corpus/bridge. Properties: no panic; a refusal's
//! detail, the masked payload and the stored (dead-letter) payload hold no Luhn-valid card
//! number; masking keeps the length and every UUID-shaped identifier (a transaction id) in place;
//! a stored payload that parses holds no value under a sensitive-authentication-data name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posflow_bridge::card::{find_sad_field, is_pan, mask_card_numbers, stored_payload, Tokenizer, REMOVED};
use posflow_bridge::payload;
use posflow_runtime::Secret;
use std::sync::OnceLock;

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::new(&Secret::new("fuzz-key-0123456789abcdef0123456789abcdef")))
}

fn no_pan(bytes: &[u8]) -> bool {
    bytes.split(|b| !b.is_ascii_digit()).all(|run| !is_pan(run))
}

fuzz_target!(|data: &[u8]| {
    // The first byte says where the topic ends and the payload starts.
    let split = usize::from(data.first().copied().unwrap_or(0)).min(data.len().saturating_sub(1));
    let (topic, body) = data.get(1..).map(|d| d.split_at(split.min(d.len()))).unwrap_or((&[], &[]));
    let topic = String::from_utf8_lossy(topic);
    let masked = mask_card_numbers(body);
    assert_eq!(masked.len(), body.len());
    assert!(no_pan(&masked));
    for at in uuids(body) {
        assert_eq!(&masked[at..at + 36], &body[at..at + 36], "an identifier was masked");
    }
    let stored = stored_payload(body);
    assert!(no_pan(&stored));
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&stored) {
        // Every SAD-named field holds the removal marker: blank them and none is left.
        strip_removed(&mut v);
        assert!(find_sad_field(&v).is_none(), "SAD value kept: {v}");
    }
    let ids = posflow_mqtt::parse_tx_topic(&topic).unwrap_or(posflow_mqtt::TopicIds { merchant_id: "M1", terminal_id: "T1" });
    if let Err(refusal) = payload::parse(body, &ids, 16_384, tokenizer()) {
        assert!(no_pan(refusal.detail.as_bytes()), "card number in a refusal detail");
    }
});

/// Drops every field whose value is the removal marker.
fn strip_removed(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, v| v.as_str() != Some(REMOVED));
            m.values_mut().for_each(strip_removed);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_removed),
        _ => {}
    }
}

/// Where UUID-shaped identifiers (8-4-4-4-12 hex) stand on their own in `b`.
fn uuids(b: &[u8]) -> Vec<usize> {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let joins = |c: u8| c.is_ascii_hexdigit() || c == b'-';
    (0..b.len().saturating_sub(35))
        .filter(|&i| {
            let mut j = i;
            for (k, n) in GROUPS.iter().enumerate() {
                if !b[j..j + n].iter().all(u8::is_ascii_hexdigit) {
                    return false;
                }
                j += n;
                if k < 4 {
                    if b[j] != b'-' {
                        return false;
                    }
                    j += 1;
                }
            }
            !(i > 0 && joins(b[i - 1])) && !(j < b.len() && joins(b[j]))
        })
        .collect()
}
