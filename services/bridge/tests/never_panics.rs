//! The fuzz target's properties on stable Rust, for every test run: each corpus case, and
//! thousands of deterministic mutations of them (bit flips, truncations, splices), parse
//! without panicking, no refusal detail or stored (dead-letter) payload holds a card number, and
//! no stored payload that parses holds a value under a sensitive-authentication-data name.
//! Coverage-guided fuzzing: `make fuzz` (fuzz/fuzz_targets/bridge_input.rs).

use posflow_bridge::card::{
    is_pan, is_sad_field, mask_card_numbers, stored_payload, Tokenizer, REMOVED,
};
use posflow_bridge::payload;
use posflow_mqtt::TopicIds;
use posflow_runtime::Secret;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn no_pan(bytes: &[u8]) -> bool {
    bytes.split(|b| !b.is_ascii_digit()).all(|run| !is_pan(run))
}

/// Values kept under a sensitive-authentication-data name, at any depth.
fn sad_values(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .flat_map(|(k, v)| {
                if is_sad_field(k) && v.as_str() != Some(REMOVED) {
                    vec![v.to_string()]
                } else {
                    sad_values(v)
                }
            })
            .collect(),
        serde_json::Value::Array(a) => a.iter().flat_map(sad_values).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn mutated_corpus_never_panics_and_never_leaks_a_card_number() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus/bridge");
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(seeds.len() >= 30);
    let tokenizer = Tokenizer::new(&Secret::new("test-key-0123456789abcdef0123456789abcdef"));
    let ids = TopicIds {
        merchant_id: "M470",
        terminal_id: "T0470",
    };
    let mut rng = StdRng::seed_from_u64(0x9e37_79b9);
    let mut checked = 0;
    for round in 0..200 {
        for seed in &seeds {
            let mut b = seed.clone();
            match round % 4 {
                0 if !b.is_empty() => {
                    let i = rng.gen_range(0..b.len());
                    b[i] ^= 1 << rng.gen_range(0..8);
                }
                1 => b.truncate(rng.gen_range(0..=b.len())),
                2 => {
                    let other = &seeds[rng.gen_range(0..seeds.len())];
                    let cut = rng.gen_range(0..=b.len());
                    b.truncate(cut);
                    b.extend_from_slice(&other[rng.gen_range(0..=other.len())..]);
                }
                _ => {
                    let i = rng.gen_range(0..=b.len());
                    b.insert(i, rng.gen());
                }
            }
            let masked = mask_card_numbers(&b);
            assert_eq!(masked.len(), b.len());
            assert!(
                no_pan(&masked),
                "masking left a card number in {:?}",
                String::from_utf8_lossy(&b)
            );
            let stored = stored_payload(&b);
            assert!(
                no_pan(&stored),
                "a stored payload kept a card number: {:?}",
                String::from_utf8_lossy(&b)
            );
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&stored) {
                assert_eq!(sad_values(&v), Vec::<String>::new(), "{v}");
            }
            if let Err(r) = payload::parse(&b, &ids, 16_384, &tokenizer) {
                assert!(
                    no_pan(r.detail.as_bytes()),
                    "card number in the detail of {:?}",
                    r.reason
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 9_000);
}

/// The one-pass parse and the checked path give the same answer — the same transaction or the
/// same refusal, reason, detail and id — for every corpus case, every mutation of it, and the
/// shapes where a typed pass could differ from the tree (arrays, repeats, nesting, versions).
#[test]
fn the_fast_parse_answers_exactly_as_the_checked_one() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus/bridge");
    let mut cases: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let valid = r#"{"version": 1, "transaction_id": "fast-1", "terminal_id": "T0470", "merchant_id": "M005", "sequence": 1, "transaction_time": "2026-11-27T10:15:30.123Z", "type": "sale", "amount_minor": 1234, "currency": "EUR", "payment_method": "card", "entry_mode": "chip", "card": {"pan": "4111111111111111"}, "response_code": "00", "mcc": "5814", "location": {"lat": 52.52, "lon": 13.405}, "line_items": [{"sku": "COF-01", "description": "Coffee", "unit_price_minor": 617, "quantity": 2}]}"#;
    let edits: &[(&str, &str)] = &[
        ("", ""),
        (r#""version": 1"#, r#""version": 2"#),
        (r#""version": 1"#, r#""version": 1.0"#),
        (r#""version": 1"#, r#""version": "1""#),
        (r#""mcc": "5814""#, r#""mcc": "5814", "mcc": "5814""#),
        (r#""mcc": "5814""#, r#""mcc": "5814", "\u006dcc": "6011""#),
        (r#""mcc": "5814""#, r#""mcc": "5814", "x": 1, "x": 2"#),
        (
            r#""pan": "4111111111111111""#,
            r#""pan": "4111111111111111", "cvv": "123""#,
        ),
        (r#""quantity": 2"#, r#""quantity": 2, "Track_2": "x""#),
        (r#""quantity": 2"#, r#""quantity": 2, "quantity": 3"#),
        (r#""lat": 52.52"#, r#""lat": 52.52, "lat": 1"#),
        (r#""card": {"pan": "4111111111111111"}"#, r#""card": null"#),
        (r#""line_items": ["#, r#""line_items": null, "l": ["#),
        (r#""sequence": 1"#, r#""sequence": 1e3"#),
        (r#""sequence": 1"#, r#""sequence": -1"#),
        (r#""merchant_id": "M005""#, r#""merchant_id": "M006""#),
        (r#""transaction_id": "fast-1""#, r#""transaction_id": """#),
        ("{", " \n{"),
        // Version 1 with a version-2 field.
        (r#""mcc": "5814""#, r#""mcc": "5814", "offline": true"#),
    ];
    for (from, to) in edits {
        cases.push(valid.replacen(from, to, 1).into_bytes());
    }
    // Version 2, offline, and its refusals.
    let v2 = valid.replacen(r#""version": 1"#, r#""version": 2"#, 1);
    for offline in [
        r#""offline": true, "offline_since": "2026-11-27T09:00:00Z""#,
        r#""offline": true, "offline_since": "2026-11-28T09:00:00Z""#,
        r#""offline": false, "offline_since": "2026-11-27T09:00:00Z""#,
        r#""offline": null"#,
    ] {
        cases.push(
            v2.replacen(
                r#""mcc": "5814""#,
                &format!(r#""mcc": "5814", {offline}"#),
                1,
            )
            .into_bytes(),
        );
    }
    // The same values in the struct's field order as an array: serde's derive would read a
    // struct from it; the contract says object.
    cases.push(
        br#"[1, "fast-2", "T0470", "M005", 1, "2026-11-27T10:15:30.123Z", "sale", null, 1234, "EUR", "card", "chip", null, null, "00", "5814", null, []]"#
            .to_vec(),
    );
    let tokenizer = Tokenizer::new(&Secret::new("test-key-0123456789abcdef0123456789abcdef"));
    let ids = TopicIds {
        merchant_id: "M005",
        terminal_id: "T0470",
    };
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let (mut accepted, mut compared) = (0, 0);
    for round in 0..50 {
        for case in &cases {
            let mut b = case.clone();
            if round > 0 && !b.is_empty() {
                let i = rng.gen_range(0..b.len());
                b[i] ^= 1 << rng.gen_range(0..8);
            }
            let fast = payload::parse(&b, &ids, 16_384, &tokenizer);
            let checked = payload::parse_checked(&b, &ids, 16_384, &tokenizer);
            assert_eq!(fast, checked, "{}", String::from_utf8_lossy(&b));
            accepted += fast.is_ok() as usize;
            compared += 1;
        }
    }
    assert!(
        compared > 5_000 && accepted > 10,
        "{compared} compared, {accepted} accepted"
    );
}
