//! Query strings, strictly: each route names the parameters it takes; an unknown or repeated
//! parameter, a bad value or an oversize limit is a 400 listing every field at fault. Values
//! only ever become bind parameters, never SQL text.
//!
//! Cursors are opaque and signed: `base64url(json).base64url(hmac)`, the MAC covering the
//! route, the filter they were issued for and the position. A changed cursor, or one replayed
//! with other filters, is refused.

use crate::problem::{FieldError, Problem};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;
/// Text filters are identifiers; anything longer is a mistake or an attack.
const MAX_TEXT: usize = 64;

/// The parameters of one request, checked against what its route accepts.
pub struct Params {
    values: BTreeMap<String, String>,
    errors: Vec<FieldError>,
}

impl Params {
    pub fn parse(query: Option<&str>, accepted: &[&str]) -> Self {
        let mut values = BTreeMap::new();
        let mut errors = Vec::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !accepted.contains(&k.as_ref()) {
                errors.push(FieldError {
                    field: k.chars().take(MAX_TEXT).collect(),
                    message: format!("unknown parameter; accepted: {}", accepted.join(", ")),
                });
            } else if values.insert(k.to_string(), v.to_string()).is_some() {
                errors.push(FieldError {
                    field: k.to_string(),
                    message: "given more than once".into(),
                });
            }
        }
        Params { values, errors }
    }

    /// Records a problem with `field` found by the caller.
    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// A short identifier-like text (currency, terminal, codes).
    pub fn text(&mut self, field: &str, check: fn(&str) -> bool, expect: &str) -> Option<String> {
        let v = self.values.get(field)?.clone();
        if v.len() > MAX_TEXT || !check(&v) {
            self.fail(field, format!("must be {expect}"));
            return None;
        }
        Some(v)
    }

    pub fn int(&mut self, field: &str, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        let v = self.values.get(field)?.clone();
        match v.parse::<i64>() {
            Ok(n) if range.contains(&n) => Some(n),
            _ => {
                self.fail(
                    field,
                    format!("must be an integer in {}..={}", range.start(), range.end()),
                );
                None
            }
        }
    }

    /// An RFC 3339 time, e.g. 2026-12-01T00:00:00Z.
    pub fn time(&mut self, field: &str) -> Option<SystemTime> {
        let v = self.values.get(field)?.clone();
        match parse_time(&v) {
            Some(t) => Some(t),
            None => {
                self.fail(field, "must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z");
                None
            }
        }
    }

    pub fn limit(&mut self) -> i64 {
        self.int("limit", 1..=MAX_LIMIT).unwrap_or(DEFAULT_LIMIT)
    }

    /// `from`/`to` (from inclusive, to exclusive); `to` must be after `from`.
    pub fn range(&mut self) -> (Option<SystemTime>, Option<SystemTime>) {
        let (from, to) = (self.time("from"), self.time("to"));
        if let (Some(f), Some(t)) = (from, to) {
            if t <= f {
                self.fail("to", "must be after from");
            }
        }
        (from, to)
    }

    /// The cursor, checked against `key`, `route` and this request's other parameters.
    pub fn cursor(&mut self, key: &CursorKey, route: &str) -> Option<Position> {
        let v = self.values.get("cursor")?.clone();
        match key.open(route, &self.filter_fingerprint(), &v) {
            Some(p) => Some(p),
            None => {
                self.fail(
                    "cursor",
                    "is not a cursor this API issued for these filters",
                );
                None
            }
        }
    }

    /// The filters as the audit log records them (the cursor left out: it is opaque).
    pub fn filter_json(&self) -> String {
        let shown: BTreeMap<_, _> = self
            .values
            .iter()
            .filter(|(k, _)| k.as_str() != "cursor")
            .collect();
        serde_json::to_string(&shown).unwrap_or_default()
    }

    /// What a cursor is bound to: every parameter but the cursor and the page size.
    fn filter_fingerprint(&self) -> String {
        let bound: BTreeMap<_, _> = self
            .values
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "cursor" | "limit"))
            .collect();
        serde_json::to_string(&bound).unwrap_or_default()
    }

    /// The next page's cursor after `p`.
    pub fn next_cursor(&self, key: &CursorKey, route: &str, p: &Position) -> String {
        key.seal(route, &self.filter_fingerprint(), p)
    }

    /// Whether every parameter read so far was valid (the errors are handed over once).
    pub fn finish(&mut self) -> Result<(), Problem> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Problem::Invalid(std::mem::take(&mut self.errors)))
        }
    }

    /// Records a problem the caller found (a required parameter missing).
    pub fn require<T>(&mut self, field: &str, v: Option<T>) -> Option<T> {
        if v.is_none() && !self.values.contains_key(field) {
            self.fail(field, "is required");
        }
        v
    }
}

/// An RFC 3339 time in UTC (`Z` or `+00:00`), e.g. 2026-12-01T10:20:30.5Z.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let normalised = s.strip_suffix("+00:00").map(|p| format!("{p}Z"));
    normalised
        .as_deref()
        .unwrap_or(s)
        .parse::<rfc3339::Utc>()
        .ok()
        .map(|t| t.0)
}

/// A minimal RFC 3339 (UTC, `Z`) parser: `YYYY-MM-DDTHH:MM:SS[.fff…]Z`.
mod rfc3339 {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub struct Utc(pub SystemTime);

    impl std::str::FromStr for Utc {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let b = s.as_bytes();
            if b.len() < 20
                || b[4] != b'-'
                || b[7] != b'-'
                || !matches!(b[10], b'T' | b't')
                || b[13] != b':'
                || b[16] != b':'
                || !matches!(b[b.len() - 1], b'Z' | b'z')
            {
                return Err(());
            }
            let num = |r: std::ops::Range<usize>| -> Result<u64, ()> {
                let t = s.get(r).ok_or(())?;
                if t.bytes().all(|c| c.is_ascii_digit()) {
                    t.parse().map_err(|_| ())
                } else {
                    Err(())
                }
            };
            let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
            let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
            let frac = &s[19..s.len() - 1];
            let nanos = match frac.strip_prefix('.') {
                None if frac.is_empty() => 0,
                Some(f) if (1..=9).contains(&f.len()) && f.bytes().all(|c| c.is_ascii_digit()) => {
                    f.parse::<u64>().map_err(|_| ())? * 10u64.pow(9 - f.len() as u32)
                }
                _ => return Err(()),
            };
            if !(1970..=9999).contains(&y)
                || !(1..=12).contains(&mo)
                || h > 23
                || mi > 59
                || sec > 59
            {
                return Err(());
            }
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let days_in = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            if d < 1 || d > days_in[(mo - 1) as usize] {
                return Err(());
            }
            // Days since the epoch (Howard Hinnant's days_from_civil).
            let (y2, m2) = if mo <= 2 {
                (y as i64 - 1, mo + 9)
            } else {
                (y as i64, mo - 3)
            };
            let era = y2.div_euclid(400);
            let yoe = y2 - era * 400;
            let doy = (153 * m2 as i64 + 2) / 5 + d as i64 - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            let days = era * 146_097 + doe - 719_468;
            let secs = days as u64 * 86_400 + h * 3600 + mi * 60 + sec;
            Ok(Utc(UNIX_EPOCH
                + Duration::from_secs(secs)
                + Duration::from_nanos(nanos)))
        }
    }
}

pub fn is_currency(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
}
pub fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
pub fn is_digits<const N: usize>(s: &str) -> bool {
    s.len() == N && s.bytes().all(|b| b.is_ascii_digit())
}
pub fn is_bin(s: &str) -> bool {
    (6..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// Where a page ended: the last row's (time, id). The next page starts strictly after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Milliseconds since the epoch.
    pub t: i64,
    pub id: String,
}

impl Position {
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.t.max(0) as u64)
    }
}

/// The key cursors are signed with; every replica must share it.
#[derive(Clone)]
pub struct CursorKey(Vec<u8>);

impl CursorKey {
    pub fn new(key: &[u8]) -> Self {
        CursorKey(key.to_vec())
    }

    fn mac(&self, route: &str, filters: &str, payload: &str) -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        for part in [route, filters, payload] {
            m.update(part.as_bytes());
            m.update(&[0]);
        }
        m.finalize().into_bytes()[..16].to_vec()
    }

    pub fn seal(&self, route: &str, filters: &str, p: &Position) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(p).expect("a position serialises"));
        let mac = URL_SAFE_NO_PAD.encode(self.mac(route, filters, &payload));
        format!("{payload}.{mac}")
    }

    pub fn open(&self, route: &str, filters: &str, cursor: &str) -> Option<Position> {
        let (payload, mac) = cursor.split_once('.')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        if !crate::auth::same_hash(&mac, &self.mac(route, filters, payload)) {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Params {
        Params::parse(Some(q), &["from", "to", "limit", "currency", "cursor"])
    }

    #[test]
    fn every_bad_field_is_listed() {
        let mut p = params("from=yesterday&limit=501&currency=usd&colour=red&limit=2");
        p.range();
        p.limit();
        p.text("currency", is_currency, "an ISO 4217 code");
        let Err(Problem::Invalid(errors)) = p.finish() else {
            panic!("accepted")
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        // The repeated limit is one error; its values are not looked at further.
        assert_eq!(fields, ["colour", "limit", "from", "currency"]);
    }

    #[test]
    fn rfc3339_times_parse_exactly() {
        let t = parse_time("2026-12-01T10:20:30.5Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_millis(),
            1_796_120_430_500
        );
        assert_eq!(parse_time("1970-01-01T00:00:00+00:00"), Some(UNIX_EPOCH));
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-12-01 10:20:30Z",
            "2026-12-01T10:20:30",
            "'; DROP TABLE x;--",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn cursors_are_bound_to_their_route_and_filters() {
        let key = CursorKey::new(b"k");
        let p = Position {
            t: 5,
            id: "tx-1".into(),
        };
        let q = params("currency=EUR&limit=10");
        let c = q.next_cursor(&key, "transactions", &p);
        // The same filters (another page size) open it.
        let mut same = params(&format!("currency=EUR&limit=20&cursor={c}"));
        assert_eq!(same.cursor(&key, "transactions"), Some(p.clone()));
        // Other filters, another route, another key, a changed byte: refused.
        let mut other = params(&format!("currency=USD&cursor={c}"));
        assert_eq!(other.cursor(&key, "transactions"), None);
        let mut same2 = params(&format!("currency=EUR&cursor={c}"));
        assert_eq!(same2.cursor(&key, "rejections"), None);
        assert_eq!(
            CursorKey::new(b"other").open("transactions", "{\"currency\":\"EUR\"}", &c),
            None
        );
        let forged = key.seal(
            "transactions",
            "{\"currency\":\"EUR\"}",
            &Position {
                t: 9,
                id: "x".into(),
            },
        );
        let (payload, _) = forged.split_once('.').unwrap();
        let (_, mac) = c.split_once('.').unwrap();
        assert_eq!(
            key.open(
                "transactions",
                "{\"currency\":\"EUR\"}",
                &format!("{payload}.{mac}")
            ),
            None
        );
    }
}
