//! Card data at ingress: the PAN becomes a keyed token plus BIN and last four, and anything
//! that looks like a card number is masked before it is stored anywhere else (dead letters).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use posflow_runtime::Secret;
use posflow_schema::{Card, PreviousToken};
use sha2::Sha256;

/// Luhn checksum over ASCII digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

/// Turns full PANs into tokens under the current key (and, during a rotation, the previous
/// ones). The keys never leave this struct.
pub struct Tokenizer {
    current: (String, Hmac<Sha256>),
    previous: Vec<(String, Hmac<Sha256>)>,
}

/// A card-token key and its id (what `Card::token_key_id` records).
pub struct TokenKey {
    pub id: String,
    pub secret: Secret,
}

/// Parses `id=key,id=key` (the previous keys' setting); keys at least 32 bytes, ids as
/// [`valid_key_id`]. Every mistake is listed, never a key.
pub fn parse_keys(text: &str) -> Result<Vec<TokenKey>, Vec<String>> {
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        match item.split_once('=') {
            Some((id, key)) if valid_key_id(id) && key.len() >= 32 => keys.push(TokenKey {
                id: id.to_string(),
                secret: Secret::new(key),
            }),
            Some((id, _)) if !valid_key_id(id) => errors.push(format!(
                "previous key {}: its id must be 1-32 of [A-Za-z0-9_.-]",
                i + 1
            )),
            Some((id, _)) => errors.push(format!("previous key {id}: at least 32 bytes")),
            None => errors.push(format!("previous key {}: not id=key", i + 1)),
        }
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(errors)
    }
}

/// A key id: 1-32 of [A-Za-z0-9_.-] (it travels in every record; it is not secret).
pub fn valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn mac(secret: &Secret) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key length")
}

fn token(mac: &Hmac<Sha256>, digits: &[u8]) -> String {
    let mut mac = mac.clone();
    mac.update(digits);
    // base64url, not hex: hex tokens hold long all-digit runs often enough to look like card
    // numbers to a PAN scanner; 43 base64url characters practically never do.
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanError {
    /// Not 13–19 digits (spaces and dashes between groups allowed).
    Format,
    /// Digits fine, check digit wrong.
    Luhn,
}

impl Tokenizer {
    /// One key, id `k1`.
    pub fn new(key: &Secret) -> Self {
        Self::with_keys(
            &TokenKey {
                id: "k1".into(),
                secret: key.clone(),
            },
            &[],
        )
    }

    pub fn with_keys(current: &TokenKey, previous: &[TokenKey]) -> Self {
        Self {
            current: (current.id.clone(), mac(&current.secret)),
            previous: previous
                .iter()
                .map(|k| (k.id.clone(), mac(&k.secret)))
                .collect(),
        }
    }

    pub fn tokenize(&self, pan: &str) -> Result<Card, PanError> {
        let digits: Vec<u8> = pan.bytes().filter(|b| *b != b' ' && *b != b'-').collect();
        if !(13..=19).contains(&digits.len()) || !digits.iter().all(u8::is_ascii_digit) {
            return Err(PanError::Format);
        }
        if !luhn_valid(&digits) {
            return Err(PanError::Luhn);
        }
        let previous_tokens = self
            .previous
            .iter()
            .map(|(id, mac)| PreviousToken {
                key_id: id.clone(),
                token: token(mac, &digits),
            })
            .collect();
        let token = token(&self.current.1, &digits);
        let text = String::from_utf8(digits).expect("ascii digits");
        Ok(Card {
            token,
            bin: text[..6].to_string(),
            last4: text[text.len() - 4..].to_string(),
            token_key_id: self.current.0.clone(),
            previous_tokens,
        })
    }
}

/// Whether these digits are a card number: 13–19 of them, Luhn-valid, and an issuer prefix a
/// payment card can have (2–9; a 13-digit card is a Visa, 4). The prefix is what leaves epoch
/// timestamps (13 digits from 1…, 16 from 1…) alone.
pub fn is_pan(digits: &[u8]) -> bool {
    let prefix_ok = match digits.len() {
        13 => digits[0] == b'4',
        14..=19 => (b'2'..=b'9').contains(&digits[0]),
        _ => false,
    };
    prefix_ok && digits.iter().all(u8::is_ascii_digit) && luhn_valid(digits)
}

/// Replaces every card number with `*` (digit for digit, so the length stays): a run of 13–19
/// digits that [`is_pan`], written plain or in the groups cards are printed in — 4-4-4-1…4-4-4-4-3
/// or 4-6-4/4-6-5, split by single spaces or dashes, not glued to a longer hex token — and
/// every digit run longer than 19 (we cannot tell what it hides, a card number glued to other
/// digits among them). Digits grouped
/// any other way (a UUID's 8-4-4-4-12, a date) are judged group by group, and a 13–19 digit run
/// as a whole, so identifiers and timestamps stay intact; trace and span ids are skipped.
pub fn mask_card_numbers(input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let ids = hex_ids(input);
    let in_id = |pos: usize| ids.iter().any(|&(a, b)| (a..b).contains(&pos));
    let mut i = 0;
    while i < input.len() {
        if let Some(&(_, end)) = ids.iter().find(|&&(a, b)| (a..b).contains(&i)) {
            i = end;
            continue;
        }
        if !input[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A candidate: digit groups, optionally separated by single ' ' or '-'.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < input.len() && input[j].is_ascii_digit() {
                j += 1;
            }
            groups.push((start, j));
            if j + 1 < input.len()
                && matches!(input[j], b' ' | b'-')
                && input[j + 1].is_ascii_digit()
                && !in_id(j + 1)
            {
                j += 1;
            } else {
                break;
            }
        }
        let lens: Vec<usize> = groups.iter().map(|(a, b)| b - a).collect();
        let all: Vec<u8> = groups
            .iter()
            .flat_map(|&(a, b)| input[a..b].iter().copied())
            .collect();
        let (first, last) = (groups[0].0, groups[groups.len() - 1].1);
        if groups.len() > 1
            && is_card_layout(&lens)
            && !glued(input, first, -1)
            && !glued(input, last, 1)
            && is_pan(&all)
        {
            mask(&mut out, groups[0].0, groups[groups.len() - 1].1);
        } else {
            for &(a, b) in &groups {
                let run = &input[a..b];
                if run.len() > 19 || is_pan(run) {
                    mask(&mut out, a, b);
                }
            }
        }
        i = j.max(i + 1);
    }
    out
}

/// Trace context the masking leaves as it is: a whole W3C `traceparent` (its ids may happen to
/// be all digits), and standalone trace and span ids — 32 or 16 lowercase hex digits with at
/// least one letter.
fn hex_ids(input: &[u8]) -> Vec<(usize, usize)> {
    let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    let mut ids = Vec::new();
    let mut i = 0;
    while i < input.len() {
        if !hex(&input[i]) || (i > 0 && input[i - 1].is_ascii_alphanumeric()) {
            i += 1;
            continue;
        }
        // A whole traceparent (version-traceid-spanid-flags): its ids may be all digits.
        let shape = [2, 32, 16, 2];
        let mut at = i;
        let traceparent = shape.iter().enumerate().all(|(n, len)| {
            let ok = input.len() >= at + len
                && input[at..at + len].iter().all(hex)
                && (n == 3 || input.get(at + len) == Some(&b'-'));
            at += len + 1;
            ok
        }) && input.get(at - 1).is_none_or(|b| !b.is_ascii_alphanumeric());
        if traceparent {
            ids.push((i, at - 1));
            i = at - 1;
            continue;
        }
        let end = i + input[i..].iter().take_while(|b| hex(b)).count();
        let alone = input.get(end).is_none_or(|b| !b.is_ascii_alphanumeric());
        if alone && matches!(end - i, 16 | 32) && input[i..end].iter().any(u8::is_ascii_alphabetic)
        {
            ids.push((i, end));
        }
        i = end;
    }
    ids
}

fn mask(out: &mut [u8], from: usize, to: usize) {
    for b in &mut out[from..to] {
        if b.is_ascii_digit() {
            *b = b'*';
        }
    }
}

/// Whether the text next to `edge` (before it for `dir` -1, from it for 1) continues a longer
/// hex token — directly, or past one `-` as a UUID's groups do: grouped digits inside such a
/// token are no card. A space ends a token: "card 4111 1111 …" is a card number after a word
/// whose last letter happens to be a hex digit (that case once let spaced and dashed card
/// numbers through after "card", "paid", "used").
fn glued(input: &[u8], edge: usize, dir: isize) -> bool {
    let at = |k: isize| -> Option<u8> {
        let k = edge as isize + k;
        (k >= 0).then(|| input.get(k as usize).copied()).flatten()
    };
    let first = if dir < 0 { -1 } else { 0 };
    match at(first) {
        Some(b'-') => at(first + dir).is_some_and(|b| b.is_ascii_hexdigit()),
        Some(b) => b.is_ascii_hexdigit(),
        None => false,
    }
}

/// The groups cards are printed in: fours ending in a group of 1–4 (13–19 digits), or the
/// 4-6-4 and 4-6-5 of Diners and Amex.
fn is_card_layout(lens: &[usize]) -> bool {
    let (last, rest) = lens.split_last().expect("at least one group");
    let fours = rest.len() >= 3 && rest.iter().all(|l| *l == 4) && (1..=4).contains(last);
    fours || lens == [4, 6, 4] || lens == [4, 6, 5]
}

/// Field names that carry sensitive authentication data (PCI DSS 3.3.1: never stored after
/// authorisation, refused or not), compared without case and without `_`, `-`, `.` or spaces,
/// so `CVV2`, `pin-block` and `Track_2_Data` all match.
const SAD_FIELDS: &[&str] = &[
    "cvv",
    "cvv2",
    "icvv",
    "dcvv",
    "cvc",
    "cvc2",
    "cvc3",
    "cvn",
    "cvn2",
    "cav2",
    "cid",
    "csc",
    "cvd",
    "securitycode",
    "cardsecuritycode",
    "pin",
    "pinblock",
    "pindata",
    "encryptedpin",
    "encryptedpinblock",
    "track",
    "track1",
    "track2",
    "track3",
    "trackdata",
    "track1data",
    "track2data",
    "track3data",
    "magstripe",
    "magstripedata",
    "magneticstripe",
    "magneticstripedata",
];

/// Whether a field (or MQTT user property) of this name carries sensitive authentication data.
pub fn is_sad_field(name: &str) -> bool {
    // Called for every key of every payload: folded into a stack buffer, no allocation. The
    // longest name listed is 18 bytes; anything longer after folding, or not ASCII, is no match.
    let mut buf = [0u8; 24];
    let mut n = 0;
    for b in name
        .bytes()
        .filter(|b| !matches!(b, b'_' | b'-' | b'.' | b' '))
    {
        if n == buf.len() || !b.is_ascii() {
            return false;
        }
        buf[n] = b.to_ascii_lowercase();
        n += 1;
    }
    SAD_FIELDS.iter().any(|f| f.as_bytes() == &buf[..n])
}

/// The first field, at any depth, whose name is sensitive authentication data.
pub fn find_sad_field(v: &serde_json::Value) -> Option<&str> {
    match v {
        serde_json::Value::Object(m) => m.iter().find_map(|(k, v)| {
            if is_sad_field(k) {
                Some(k.as_str())
            } else {
                find_sad_field(v)
            }
        }),
        serde_json::Value::Array(a) => a.iter().find_map(find_sad_field),
        _ => None,
    }
}

/// What is stored of a refused payload (the dead letter): the value of every field that is
/// sensitive authentication data removed — its name stays, its value becomes `REMOVED` —
/// then every card number masked. A payload that parses is rewritten only if it holds such a
/// field (its bytes otherwise stay as they came); one that does not parse is scrubbed as text.
pub fn stored_payload(payload: &[u8]) -> Vec<u8> {
    let scrubbed = match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(mut v) if find_sad_field(&v).is_some() => {
            remove_sad_values(&mut v);
            serde_json::to_vec(&v).expect("a JSON value serialises")
        }
        Ok(_) => payload.to_vec(),
        Err(_) => remove_sad_values_in_text(payload),
    };
    mask_card_numbers(&scrubbed)
}

/// What replaces a removed value.
pub const REMOVED: &str = "[removed]";

fn remove_sad_values(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if is_sad_field(k) {
                    *v = serde_json::Value::String(REMOVED.into());
                } else {
                    remove_sad_values(v);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(remove_sad_values),
        _ => {}
    }
}

/// For text that is not JSON (truncated, garbled): every `"name" : value` whose name is
/// sensitive authentication data loses its value — a string up to its closing quote (or the
/// end), anything else up to the next `,` `}` `]` or white space.
fn remove_sad_values_in_text(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'"' {
            out.push(input[i]);
            i += 1;
            continue;
        }
        // A quoted name: up to the next quote.
        let Some(len) = input[i + 1..].iter().position(|b| *b == b'"') else {
            out.extend_from_slice(&input[i..]);
            break;
        };
        let name_end = i + 1 + len;
        let name = String::from_utf8_lossy(&input[i + 1..name_end]);
        out.extend_from_slice(&input[i..=name_end]);
        i = name_end + 1;
        let mut j = i;
        while j < input.len() && input[j].is_ascii_whitespace() {
            j += 1;
        }
        if !(is_sad_field(&name) && input.get(j) == Some(&b':')) {
            continue;
        }
        j += 1;
        while j < input.len() && input[j].is_ascii_whitespace() {
            j += 1;
        }
        out.extend_from_slice(&input[i..j]);
        let value_end = if input.get(j) == Some(&b'"') {
            let mut k = j + 1;
            while k < input.len() && input[k] != b'"' {
                k += if input[k] == b'\\' { 2 } else { 1 };
            }
            (k + 1).min(input.len())
        } else {
            input[j..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                .map_or(input.len(), |n| j + n)
        };
        out.extend_from_slice(format!("\"{REMOVED}\"").as_bytes());
        i = value_end;
    }
    out
}

/// The masking for text (error messages that may quote input).
pub fn mask_text(s: &str) -> String {
    String::from_utf8_lossy(&mask_card_numbers(s.as_bytes())).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Well-known test PANs (not real cards), kept in a fixture file so no card-number literal
    // sits in the code.
    const PANS: &str = include_str!("../tests/fixtures/test-pans.txt");

    fn pan(i: usize) -> &'static str {
        PANS.lines().nth(i).unwrap()
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid(pan(0).as_bytes()));
        assert!(luhn_valid(pan(1).as_bytes()));
        assert!(!luhn_valid(b"4111111111111112"));
    }

    #[test]
    fn tokens_are_keyed_stable_and_keep_only_bin_and_last4() {
        let a = Tokenizer::new(&Secret::new("k1-0123456789abcdef0123456789abcdef"));
        let b = Tokenizer::new(&Secret::new("k2-0123456789abcdef0123456789abcdef"));
        let c = a.tokenize(pan(0)).unwrap();
        assert_eq!(c.bin, "411111");
        assert_eq!(c.last4, "1111");
        assert_eq!(c.token.len(), 43);
        assert!(!c.token.contains(pan(0)));
        assert_eq!(
            a.tokenize("4111 1111 1111 1111").unwrap(),
            c,
            "grouping does not change the token"
        );
        assert_ne!(
            b.tokenize(pan(0)).unwrap().token,
            c.token,
            "another key, another token"
        );
        // Rotation: the current key's token and id, and the previous key's token alongside,
        // equal to what that key alone made.
        let rotated = Tokenizer::with_keys(
            &TokenKey {
                id: "k2".into(),
                secret: Secret::new("k2-0123456789abcdef0123456789abcdef"),
            },
            &parse_keys("k1=k1-0123456789abcdef0123456789abcdef").unwrap(),
        );
        let r = rotated.tokenize(pan(0)).unwrap();
        assert_eq!(
            (r.token_key_id.as_str(), r.token.as_str()),
            ("k2", b.tokenize(pan(0)).unwrap().token.as_str())
        );
        assert_eq!(
            r.previous_tokens,
            [PreviousToken {
                key_id: "k1".into(),
                token: c.token.clone()
            }]
        );
        assert_eq!(c.token_key_id, "k1");
        assert_eq!(
            parse_keys("k1=short, =x0123456789abcdef0123456789abcdef, nokey")
                .err()
                .unwrap(),
            [
                "previous key k1: at least 32 bytes",
                "previous key 2: its id must be 1-32 of [A-Za-z0-9_.-]",
                "previous key 3: not id=key"
            ]
        );
        assert_eq!(a.tokenize("4111111111111112"), Err(PanError::Luhn));
        assert_eq!(a.tokenize("41111111"), Err(PanError::Format));
        assert_eq!(a.tokenize("4111x11111111111"), Err(PanError::Format));
    }

    #[test]
    fn uuids_timestamps_and_trace_ids_stay_intact_card_numbers_do_not() {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let (visa, mc) = (pan(0), pan(1));
        for _ in 0..10_000 {
            let b: [u8; 16] = rng.gen();
            let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
            let uuid = dashed_uuid(&h);
            let digits: String = (0..32)
                .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
                .collect();
            let digit_uuid = dashed_uuid(&digits);
            let millis: u64 = rng.gen_range(1_000_000_000_000..2_000_000_000_000);
            let micros: u64 = millis * 1000 + rng.gen_range(0..1000);
            let trace = format!("00-{h}-{}-01", &h[..16]);
            let text = format!(
                r#"{{"transaction_id":"{uuid}","other":"{digit_uuid}","at":{millis},"at_us":{micros},"traceparent":"{trace}","pan":"{visa}","spaced":"{}","dashed":"{}"}}"#,
                grouped(mc, ' '),
                grouped(visa, '-'),
            );
            let masked = String::from_utf8(stored_payload(text.as_bytes())).unwrap();
            for kept in [
                &uuid,
                &digit_uuid,
                &millis.to_string(),
                &micros.to_string(),
                &trace,
            ] {
                assert!(masked.contains(kept.as_str()), "{kept} lost in {masked}");
            }
            assert!(masked.contains(r#""pan":"****************""#), "{masked}");
            assert!(
                masked.contains(r#""spaced":"**** **** **** ****""#),
                "{masked}"
            );
            assert!(
                masked.contains(r#""dashed":"****-****-****-****""#),
                "{masked}"
            );
        }
    }

    fn dashed_uuid(h: &str) -> String {
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    fn grouped(pan: &str, sep: char) -> String {
        pan.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(&sep.to_string())
    }

    #[test]
    fn sad_field_names_match_whatever_their_case_and_separators() {
        for name in [
            "cvv",
            "CVV2",
            "Cvc",
            "pin-block",
            "PIN_BLOCK",
            "Track_2_Data",
            "track1",
            "magStripe",
            "cid",
        ] {
            assert!(is_sad_field(name), "{name}");
        }
        for name in [
            "pan",
            "card",
            "pinned",
            "transaction_id",
            "tracking",
            "cvv_status_x",
        ] {
            assert!(!is_sad_field(name), "{name}");
        }
    }

    #[test]
    fn a_stored_payload_keeps_sad_names_and_loses_their_values_at_any_depth() {
        let input = br#"{"a":1,"card":{"pan":"x","CVV2":"918"},"items":[{"Pin-Block":"0412AC89ABCDEF67"}],"note":"cvv"}"#;
        let stored = String::from_utf8(stored_payload(input)).unwrap();
        assert!(
            !stored.contains("918") && !stored.contains("0412AC89ABCDEF67"),
            "{stored}"
        );
        assert!(stored.contains(r#""CVV2":"[removed]""#), "{stored}");
        assert!(stored.contains(r#""Pin-Block":"[removed]""#), "{stored}");
        assert!(stored.contains(r#""note":"cvv""#), "{stored}");
        // Without SAD, a payload that parses is stored byte for byte (card numbers masked).
        let plain = br#"{ "b" : 2,  "a":1 }"#;
        assert_eq!(stored_payload(plain), plain.to_vec());
    }

    #[test]
    fn text_that_does_not_parse_is_scrubbed_too() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"cvv": "918", "x":"#, r#"{"cvv": "[removed]", "x":"#),
            (br#"{"track2":"4111=2812101"#, r#"{"track2":"[removed]""#),
            (
                br#"{"pin_block" :  0412 ,"#,
                r#"{"pin_block" :  "[removed]" ,"#,
            ),
            (br#"{"cvv":"9\"18","#, r#"{"cvv":"[removed]","#),
            (br#"["cvv"] garbage"#, r#"["cvv"] garbage"#),
        ];
        for (input, want) in cases {
            assert_eq!(String::from_utf8(stored_payload(input)).unwrap(), want);
        }
    }

    #[test]
    fn masking_hides_every_pan_shape_and_nothing_else() {
        let (visa, mc) = (pan(0), pan(1));
        let input = format!(
            r#"{{"pan":"{visa}","b":"4111 1111 1111 1111","c":"5555-5555-5555-4444","glued":"0000{mc}","order":1234567890123,"seq":42}}"#
        );
        let masked = String::from_utf8(mask_card_numbers(input.as_bytes())).unwrap();
        assert!(!masked.contains(visa) && !masked.contains(mc), "{masked}");
        assert!(masked.contains(r#""b":"**** **** **** ****""#), "{masked}");
        assert!(masked.contains(r#""c":"****-****-****-****""#), "{masked}");
        assert!(masked.contains(r#""seq":42"#));
        // 1234567890123 is not Luhn-valid: an order number stays.
        assert!(masked.contains("1234567890123"), "{masked}");
        // After a word that ends in a hex letter ("card", "paid"), and before one ("at"): still
        // a card number. A UUID's digit groups past a '-' are still not.
        for text in [
            "card 4111 1111 1111 1111 at the till",
            "paid 4111-1111-1111-1111 fee",
        ] {
            let masked = String::from_utf8(mask_card_numbers(text.as_bytes())).unwrap();
            assert!(!masked.contains("1111"), "{masked}");
        }
        let id = "abcd4111-1111-1111-1111-1fedcba98765";
        assert_eq!(mask_card_numbers(id.as_bytes()), id.as_bytes());
    }
}
