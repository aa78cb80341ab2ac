//! Card data at ingress: the PAN becomes a keyed token plus BIN and last four, and anything
//! that looks like a card number is masked before it is stored anywhere else (dead letters).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use posflow_runtime::Secret;
use posflow_schema::Card;
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

/// Turns full PANs into tokens. The key never leaves this struct.
pub struct Tokenizer {
    mac: Hmac<Sha256>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanError {
    /// Not 13–19 digits (spaces and dashes between groups allowed).
    Format,
    /// Digits fine, check digit wrong.
    Luhn,
}

impl Tokenizer {
    pub fn new(key: &Secret) -> Self {
        Self {
            mac: Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
                .expect("HMAC takes any key length"),
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
        let mut mac = self.mac.clone();
        mac.update(&digits);
        // base64url, not hex: hex tokens hold long all-digit runs often enough to look like card
        // numbers to a PAN scanner; 43 base64url characters practically never do.
        let token = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let text = String::from_utf8(digits).expect("ascii digits");
        Ok(Card {
            token,
            bin: text[..6].to_string(),
            last4: text[text.len() - 4..].to_string(),
        })
    }
}

/// Replaces every Luhn-valid run of 13–19 digits (groups may be split by single spaces or
/// dashes, as printed on cards) with `*`, and every digit run longer than 19 too: we cannot tell
/// what such a run hides. Other bytes are left as they are, so the payload stays readable.
pub fn mask_card_numbers(input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let mut i = 0;
    while i < input.len() {
        if !input[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A candidate: digits, optionally separated by single ' ' or '-'.
        let start = i;
        let mut end = i;
        let mut digits = Vec::new();
        let mut j = i;
        while j < input.len() {
            if input[j].is_ascii_digit() {
                digits.push(input[j]);
                end = j + 1;
                j += 1;
            } else if (input[j] == b' ' || input[j] == b'-')
                && j + 1 < input.len()
                && input[j + 1].is_ascii_digit()
                && !digits.is_empty()
            {
                j += 1;
            } else {
                break;
            }
        }
        if digits.len() > 19 || (digits.len() >= 13 && luhn_valid(&digits)) || contains_pan(&digits)
        {
            for b in &mut out[start..end] {
                if b.is_ascii_digit() {
                    *b = b'*';
                }
            }
        }
        i = end.max(i + 1);
    }
    out
}

/// True if any 13–19 digit window is Luhn-valid (a PAN glued to other digits).
fn contains_pan(digits: &[u8]) -> bool {
    if digits.len() < 13 {
        return false;
    }
    (13..=19.min(digits.len())).any(|w| digits.windows(w).any(luhn_valid))
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
        assert_eq!(a.tokenize("4111111111111112"), Err(PanError::Luhn));
        assert_eq!(a.tokenize("41111111"), Err(PanError::Format));
        assert_eq!(a.tokenize("4111x11111111111"), Err(PanError::Format));
    }

    #[test]
    fn masking_hides_every_pan_shape_and_nothing_else() {
        let (visa, mc) = (pan(0), pan(1));
        let input = format!(
            r#"{{"pan":"{visa}","b":"4111 1111 1111 1111","c":"5555-5555-5555-4444","glued":"99{mc}","order":1234567890123,"seq":42}}"#
        );
        let masked = String::from_utf8(mask_card_numbers(input.as_bytes())).unwrap();
        assert!(!masked.contains(visa) && !masked.contains(mc), "{masked}");
        assert!(masked.contains(r#""b":"**** **** **** ****""#), "{masked}");
        assert!(masked.contains(r#""c":"****-****-****-****""#), "{masked}");
        assert!(masked.contains(r#""seq":42"#));
        // 1234567890123 is not Luhn-valid: an order number stays.
        assert!(masked.contains("1234567890123"), "{masked}");
    }
}
