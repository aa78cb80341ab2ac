//! Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP): HMAC-SHA-1, 30-second steps,
//! 6 digits — what every authenticator app accepts. The secret is 20 random bytes (RFC 4226's
//! recommended 160 bits), shown to the person once as base32 text and as an `otpauth://` URI
//! (the QR code's content).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;

/// Seconds per step.
pub const STEP_S: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Steps either side of now that a code may come from: a phone's clock a little off, or a code
/// typed as it changed.
pub const SKEW_STEPS: u64 = 1;

/// A fresh secret.
pub fn new_secret() -> [u8; 20] {
    let mut s = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut s);
    s
}

/// The step that `unix_s` falls in.
pub fn step_of(unix_s: u64) -> u64 {
    unix_s / STEP_S
}

/// RFC 4226's HOTP value of `secret` at `counter`, `digits` long (zero-padded text).
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    // Dynamic truncation (RFC 4226 §5.3).
    let off = (h[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(digits),
        width = digits as usize
    )
}

/// The code for the step `unix_s` falls in.
pub fn code_at(secret: &[u8], unix_s: u64) -> String {
    hotp(secret, step_of(unix_s), DIGITS)
}

/// The step whose code `code` is, within [`SKEW_STEPS`] of `unix_s` and after `last_used` (a
/// code is good once: a replayed or older one is refused); `None` if there is none.
pub fn verify(secret: &[u8], code: &str, unix_s: u64, last_used: Option<u64>) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_of(unix_s);
    (now.saturating_sub(SKEW_STEPS)..=now + SKEW_STEPS)
        .filter(|s| last_used.is_none_or(|l| *s > l))
        // Compared in full whatever the first differing digit: no timing hint.
        .find(|s| constant_time_eq(hotp(secret, *s, DIGITS).as_bytes(), code.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding: how authenticator apps take a secret typed in.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buf, mut bits) = (0u64, 0u32);
    for &b in bytes {
        buf = (buf << 8) | b as u64;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The inverse of [`base32`] (case, spaces and padding ignored); `None` on any other character.
pub fn from_base32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u64, 0u32);
    for c in text.bytes().filter(|c| !matches!(c, b' ' | b'=' | b'-')) {
        let v = BASE32.iter().position(|&x| x == c.to_ascii_uppercase())? as u64;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

/// What an authenticator app scans: `otpauth://totp/<issuer>:<account>?secret=…`.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_S}",
        enc(issuer),
        enc(account),
        base32(secret),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows (8 digits), and the same at 6 digits.
    #[test]
    fn rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (t, code) in [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            assert_eq!(hotp(secret, step_of(t), 8), code, "t={t}");
            assert_eq!(code_at(secret, t), code[2..], "t={t}, 6 digits");
        }
    }

    /// RFC 4226 appendix D.
    #[test]
    fn rfc_4226_test_vectors() {
        let secret = b"12345678901234567890";
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(hotp(secret, counter as u64, 6), *code);
        }
    }

    #[test]
    fn a_code_is_good_within_one_step_either_side_and_only_once() {
        let secret = b"12345678901234567890";
        let t = 1111111109;
        let now = step_of(t);
        let code = code_at(secret, t);
        assert_eq!(verify(secret, &code, t, None), Some(now));
        assert_eq!(verify(secret, &format!(" {code} "), t, None), Some(now));
        assert_eq!(
            verify(secret, &code, t + STEP_S, None),
            Some(now),
            "a step late"
        );
        assert_eq!(
            verify(secret, &code, t - STEP_S, None),
            Some(now),
            "a step early"
        );
        assert_eq!(
            verify(secret, &code, t + 2 * STEP_S, None),
            None,
            "two steps late"
        );
        assert_eq!(verify(secret, &code, t, Some(now)), None, "replayed");
        assert_eq!(verify(secret, &code, t, Some(now - 1)), Some(now));
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert_eq!(verify(secret, &wrong, t, None), None);
        for bad in ["", "12345", "1234567", "12a456", "１２３４５６"] {
            assert_eq!(verify(secret, bad, t, None), None, "{bad:?}");
        }
    }

    #[test]
    fn base32_round_trips_and_matches_rfc_4648() {
        assert_eq!(
            base32(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(from_base32("mzxw 6ytb oi"), Some(b"foobar".to_vec()));
        assert_eq!(from_base32("MZXW6YTBOI======"), Some(b"foobar".to_vec()));
        assert_eq!(from_base32("MZXW1"), None, "1 is not base32");
        for _ in 0..50 {
            let s = new_secret();
            assert_eq!(from_base32(&base32(&s)).unwrap(), s);
        }
    }

    #[test]
    fn the_uri_names_issuer_and_account_and_carries_the_secret() {
        let uri = otpauth_uri("posflow", "ana@café.example", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/posflow:ana%40caf%C3%A9.example?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=posflow&algorithm=SHA1&digits=6&period=30"
        );
    }
}
