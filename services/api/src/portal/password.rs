//! Passwords: the rules a new one must pass, and argon2id for storing and checking it.
//!
//! The rules follow NIST SP 800-63B §5.1.1.2 rather than composition rules: long enough, not
//! absurdly long, and not something an attacker tries first — a common or breached password,
//! even dressed up with capitals, digits and a `!` ("Password2024!"), a keyboard or alphabet
//! run, one character repeated, or the person's own email or merchant. No rule about which
//! character classes to use (they push people to predictable patterns).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use posflow_runtime::Secret;

pub const MIN_CHARS: usize = 12;
pub const MAX_CHARS: usize = 128;

/// Bases of passwords seen most often in breach corpora (lower case, decorations removed): a
/// password whose base is one of these, or is one of these repeated, is refused whatever
/// digits or symbols surround it.
const COMMON: &[&str] = &[
    "password",
    "passw0rd",
    "p@ssword",
    "p@ssw0rd",
    "qwerty",
    "qwertyuiop",
    "asdfgh",
    "asdfghjkl",
    "zxcvbn",
    "zxcvbnm",
    "letmein",
    "welcome",
    "iloveyou",
    "admin",
    "administrator",
    "login",
    "monkey",
    "dragon",
    "master",
    "shadow",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "superman",
    "batman",
    "trustno",
    "trustnoone",
    "whatever",
    "starwars",
    "freedom",
    "hello",
    "secret",
    "changeme",
    "default",
    "abc",
    "abcd",
    "qazwsx",
    "qwe",
    "azerty",
    "merchant",
    "posflow",
    "summer",
    "winter",
    "spring",
    "autumn",
    "michael",
    "jessica",
    "charlie",
    "access",
    "computer",
    "internet",
    "cafe",
    "coffee",
    "store",
    "shop",
];

/// Runs that keyboards and alphabets make: four or more characters of one, in either
/// direction, are refused as (most of) a password.
const RUNS: &[&str] = &[
    "abcdefghijklmnopqrstuvwxyz",
    "0123456789",
    "qwertyuiop",
    "asdfghjkl",
    "zxcvbnm",
    "1qaz2wsx3edc4rfv",
];

/// Why a password is refused (shown to the person as is).
pub fn refuse(password: &str, email: &str, merchants: &[String]) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_CHARS {
        return Some(format!("must be at least {MIN_CHARS} characters"));
    }
    if chars > MAX_CHARS {
        return Some(format!("must be at most {MAX_CHARS} characters"));
    }
    let lower = password.to_lowercase();
    let letters: String = lower.chars().filter(|c| c.is_alphabetic()).collect();
    let base = lower.trim_matches(|c: char| !c.is_alphabetic());
    let distinct = {
        let mut c: Vec<char> = lower.chars().collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    };
    if distinct < 5 {
        return Some("uses too few different characters".into());
    }
    if is_common(base) || is_common(&letters) {
        return Some(
            "is a common password with digits or symbols around it: choose a phrase of your own"
                .into(),
        );
    }
    if run_share(&lower) * 2 >= chars {
        return Some("is mostly a keyboard or alphabet run".into());
    }
    let local = email.split('@').next().unwrap_or("").to_lowercase();
    if local.len() >= 4 && lower.contains(&local) {
        return Some("contains your email address".into());
    }
    if merchants
        .iter()
        .any(|m| m.len() >= 4 && lower.contains(&m.to_lowercase()))
    {
        return Some("contains your merchant's id".into());
    }
    None
}

/// `s` is a common base, or one repeated ("monkeymonkey").
fn is_common(s: &str) -> bool {
    !s.is_empty()
        && COMMON.iter().any(|c| {
            s == *c
                || (s.len() % c.len() == 0
                    && s.as_bytes().chunks(c.len()).all(|p| p == c.as_bytes()))
        })
}

/// How many characters of `s` sit in runs of 4 or more from [`RUNS`] (either direction).
fn run_share(s: &str) -> usize {
    let b = s.as_bytes();
    let mut covered = vec![false; b.len()];
    for run in RUNS {
        let fwd = run.as_bytes();
        let rev: Vec<u8> = fwd.iter().rev().copied().collect();
        for seq in [fwd, rev.as_slice()] {
            for w in 4..=seq.len().min(b.len()) {
                for i in 0..=b.len() - w {
                    if seq.windows(w).any(|x| x == &b[i..i + w]) {
                        covered[i..i + w].iter_mut().for_each(|c| *c = true);
                    }
                }
            }
        }
    }
    covered.iter().filter(|c| **c).count()
}

/// An argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`): OWASP's parameters, a random
/// salt per password.
pub fn hash(password: &Secret) -> String {
    Argon2::default()
        .hash_password(
            password.expose().as_bytes(),
            &SaltString::generate(&mut OsRng),
        )
        .expect("argon2 with default parameters hashes any input")
        .to_string()
}

/// Whether `password` is the one `stored` was made from (false for a malformed `stored`).
pub fn matches(password: &Secret, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.expose().as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &str) -> Option<String> {
        refuse(p, "ana.lima@example.com", &["CAFE042".to_string()])
    }

    #[test]
    fn long_own_phrases_pass() {
        for ok in [
            "correct horse battery staple",
            "my café opens at 7, every day",
            "Tr0mbone-Lantern-Quiet",
            "ümlaut über alles 1987",
        ] {
            assert_eq!(refused(ok), None, "{ok}");
        }
    }

    #[test]
    fn short_long_common_runs_and_personal_ones_are_refused_with_a_reason() {
        for (bad, why) in [
            ("short", "at least 12"),
            ("elevenchars", "at least 12"),
            (&"x".repeat(129), "at most 128"),
            ("aaaaaaaaaaaaaa", "too few different"),
            ("abababababab12", "too few different"),
            ("Password2024!", "common password"),
            ("!!P@ssw0rd!!2024", "common password"),
            ("monkeymonkey99", "common password"),
            ("Qwertyuiop123", "common password"),
            ("abcdefgh1234567", "keyboard or alphabet run"),
            ("987654321lkjhgfdsa", "keyboard or alphabet run"),
            ("ana.lima is my name", "your email"),
            ("cafe042 rocks forever", "merchant"),
        ] {
            let r = refused(bad).unwrap_or_default();
            assert!(r.contains(why), "{bad:?}: {r:?} should say {why:?}");
        }
    }

    #[test]
    fn a_hash_is_argon2id_salted_and_checks_only_its_password() {
        let p = Secret::new("correct horse battery staple");
        let (h1, h2) = (hash(&p), hash(&p));
        assert!(h1.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h1}");
        assert_ne!(h1, h2, "a salt per hash");
        assert!(matches(&p, &h1) && matches(&p, &h2));
        assert!(!matches(&Secret::new("correct horse battery stapl"), &h1));
        assert!(!matches(&p, "not a hash"));
    }
}
