//! Merchant delivery preferences: what each merchant receives, how and where.
//!
//! They live in PostgreSQL (`merchant_preferences`), written by `posflow-notifier merchants
//! apply --file F` from a TOML file and read by every replica. A table rather than a file
//! mounted into each pod: merchants are onboarded and change their URL or secret while the
//! notifier runs, every replica must see the same preferences, and the table is where support
//! looks when a merchant asks why nothing arrived. The TOML file is the reviewable input; the
//! table is the state. See docs/notifier.md.

use posflow_runtime::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// When a merchant hears about its transactions. Fraud alerts are always sent at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    PerEvent,
    Digest { every: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// The kinds of event a merchant can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    /// Sales, pre-authorisations, completions.
    Transaction,
    /// Refunds and voids.
    Refund,
    FraudAlert,
    /// A periodic summary (digest mode only; not subscribed to, implied by the mode).
    Digest,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Transaction => "transaction",
            EventKind::Refund => "refund",
            EventKind::FraudAlert => "fraud_alert",
            EventKind::Digest => "digest",
        }
    }
    /// The name in a preferences file.
    fn subscription(self) -> &'static str {
        match self {
            EventKind::Transaction => "transactions",
            EventKind::Refund => "refunds",
            EventKind::FraudAlert => "fraud-alerts",
            EventKind::Digest => "digests",
        }
    }
    fn from_subscription(s: &str) -> Option<Self> {
        [Self::Transaction, Self::Refund, Self::FraudAlert]
            .into_iter()
            .find(|k| k.subscription() == s)
    }
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub secret: Secret,
    /// During a rotation's overlap: the previous secret, and until when deliveries are signed
    /// with it too (docs/notifier.md, "Rotating a signing secret").
    pub previous: Option<(Secret, std::time::SystemTime)>,
}

impl Webhook {
    /// The secrets to sign with at `now`: the current one, and the previous during its overlap.
    pub fn signing_secrets(&self, now: std::time::SystemTime) -> Vec<&[u8]> {
        let mut out = vec![self.secret.expose().as_bytes()];
        if let Some((old, until)) = &self.previous {
            if now < *until {
                out.push(old.expose().as_bytes());
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Preferences {
    pub merchant_id: String,
    pub mode: Mode,
    pub format: Format,
    pub events: Vec<EventKind>,
    pub webhook: Option<Webhook>,
    /// Receipts and digests.
    pub emails: Vec<String>,
    /// Fraud alerts by email; `emails` when empty.
    pub risk_emails: Vec<String>,
}

impl Preferences {
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }
    /// Where fraud alerts are emailed.
    pub fn risk_contacts(&self) -> &[String] {
        if self.risk_emails.is_empty() {
            &self.emails
        } else {
            &self.risk_emails
        }
    }
    pub fn events_as_strings(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|k| k.subscription().to_string())
            .collect()
    }
    /// Rebuilds from the table's columns (checked by the table's constraints when written).
    #[allow(clippy::too_many_arguments)]
    pub fn from_columns(
        merchant_id: String,
        mode: &str,
        digest_every_secs: Option<i32>,
        format: &str,
        events: Vec<String>,
        webhook: Option<(String, Secret)>,
        emails: Vec<String>,
        risk_emails: Vec<String>,
    ) -> Self {
        Preferences {
            merchant_id,
            mode: match (mode, digest_every_secs) {
                ("digest", Some(s)) => Mode::Digest {
                    every: Duration::from_secs(s.max(10) as u64),
                },
                _ => Mode::PerEvent,
            },
            format: Format::parse(format).unwrap_or(Format::Json),
            events: events
                .iter()
                .filter_map(|e| EventKind::from_subscription(e))
                .collect(),
            webhook: webhook.map(|(url, secret)| Webhook {
                url,
                secret,
                previous: None,
            }),
            emails,
            risk_emails,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    merchants: BTreeMap<String, Entry>,
}

/// One merchant's settings as written in a preferences file or sent to the merchant API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub mode: Option<String>,
    pub digest_every: Option<String>,
    pub format: Option<String>,
    pub events: Option<Vec<String>>,
    pub webhook_url: Option<String>,
    /// The secret itself — fine for local files; in production prefer `webhook_secret_env`.
    pub webhook_secret: Option<String>,
    /// The name of an environment variable holding the secret (e.g. from a Kubernetes Secret).
    /// Files only: the API refuses it.
    pub webhook_secret_env: Option<String>,
    #[serde(default)]
    pub emails: Vec<String>,
    #[serde(default)]
    pub risk_emails: Vec<String>,
}

/// Digests at most every 10 s (useful in tests) and at least weekly.
const DIGEST_RANGE: std::ops::RangeInclusive<u64> = 10..=7 * 86_400;
const MIN_SECRET_BYTES: usize = 16;

/// Parses a preferences file; every problem is listed. `env` resolves `webhook_secret_env`.
pub fn parse(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Preferences>, Vec<String>> {
    let file: File = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (id, e) in file.merchants {
        match check(&id, e, &env) {
            Ok(p) => out.push(p),
            Err(problems) => errors.extend(
                problems
                    .into_iter()
                    .map(|(_, m)| format!("merchants.{id}: {m}")),
            ),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Every problem with one merchant's settings, as (field, message).
type Problems = Vec<(&'static str, String)>;

/// Checks one merchant's settings — from a preferences file or the merchant API, the same
/// rules — into preferences, or every problem as (field, message), in field order.
pub fn check(
    id: &str,
    e: Entry,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Preferences, Problems> {
    let mut errors = Problems::new();
    if id.is_empty() || id.len() > 64 {
        errors.push(("merchant_id", "merchant id must be 1-64 characters".into()));
    }
    let mode = check_mode(&e, &mut errors);
    let format = e.format.as_deref().unwrap_or("json");
    let format = Format::parse(format).or_else(|| {
        let m = format!("format {format:?} is not one of json, csv");
        errors.push(("format", m));
        None
    });
    let events = check_events(e.events.clone(), &mut errors);
    let secret = check_secret(&e, env, &mut errors);
    let webhook = check_webhook(&e, secret, &mut errors);
    for (field, list) in [("emails", &e.emails), ("risk_emails", &e.risk_emails)] {
        for a in list {
            if a.parse::<lettre::Address>().is_err() {
                errors.push((field, format!("{a:?} is not an email address")));
            }
        }
    }
    if webhook.is_none()
        && e.webhook_url.is_none()
        && e.emails.is_empty()
        && e.risk_emails.is_empty()
    {
        errors.push((
            "webhook_url",
            "no channel: give webhook_url or emails".into(),
        ));
    }
    match (mode, format) {
        (Some(mode), Some(format)) if errors.is_empty() => Ok(Preferences {
            merchant_id: id.to_string(),
            mode,
            format,
            events,
            webhook,
            emails: e.emails,
            risk_emails: e.risk_emails,
        }),
        _ => Err(errors),
    }
}

fn check_mode(e: &Entry, errors: &mut Problems) -> Option<Mode> {
    let (field, problem) = match (e.mode.as_deref().unwrap_or("per-event"), &e.digest_every) {
        ("per-event", None) => return Some(Mode::PerEvent),
        ("per-event", Some(_)) => (
            "digest_every",
            "digest_every needs mode = \"digest\"".to_string(),
        ),
        ("digest", Some(every)) => match humantime::parse_duration(every) {
            Ok(d) if DIGEST_RANGE.contains(&d.as_secs()) => return Some(Mode::Digest { every: d }),
            Ok(_) => (
                "digest_every",
                format!("digest_every {every:?} must be between 10s and 7days"),
            ),
            Err(x) => ("digest_every", format!("digest_every {every:?}: {x}")),
        },
        ("digest", None) => (
            "digest_every",
            "mode = \"digest\" needs digest_every (e.g. \"1h\", \"1day\")".to_string(),
        ),
        (other, _) => (
            "mode",
            format!("mode {other:?} is not one of per-event, digest"),
        ),
    };
    errors.push((field, problem));
    None
}

/// The subscribed events, sorted, without repeats (default: all three).
fn check_events(names: Option<Vec<String>>, errors: &mut Problems) -> Vec<EventKind> {
    let names = names.unwrap_or_else(|| {
        vec![
            "transactions".into(),
            "refunds".into(),
            "fraud-alerts".into(),
        ]
    });
    let mut events = Vec::new();
    for name in names {
        match EventKind::from_subscription(&name) {
            Some(k) if !events.contains(&k) => events.push(k),
            Some(_) => {}
            None => errors.push((
                "events",
                format!("event {name:?} is not one of transactions, refunds, fraud-alerts"),
            )),
        }
    }
    events.sort();
    events
}

/// The webhook secret, given in the entry or by the name of an environment variable.
fn check_secret(
    e: &Entry,
    env: impl Fn(&str) -> Option<String>,
    errors: &mut Problems,
) -> Option<String> {
    match (&e.webhook_secret, &e.webhook_secret_env) {
        (Some(s), None) => Some(s.clone()),
        (None, Some(var)) => {
            let s = env(var);
            if s.is_none() {
                errors.push((
                    "webhook_secret_env",
                    format!("webhook_secret_env: {var} is not set"),
                ));
            }
            s
        }
        (Some(_), Some(_)) => {
            errors.push((
                "webhook_secret",
                "give webhook_secret or webhook_secret_env, not both".into(),
            ));
            None
        }
        (None, None) => None,
    }
}

fn check_webhook(e: &Entry, secret: Option<String>, errors: &mut Problems) -> Option<Webhook> {
    match (&e.webhook_url, secret) {
        (Some(url), Some(secret)) => {
            if !url.starts_with("https://") {
                errors.push(("webhook_url", format!("webhook_url {url:?} must be an https:// URL (webhooks are only sent over TLS)")));
            }
            if url.parse::<hyper::Uri>().is_err() {
                errors.push((
                    "webhook_url",
                    format!("webhook_url {url:?} is not a valid URL"),
                ));
            }
            if secret.len() < MIN_SECRET_BYTES {
                errors.push((
                    "webhook_secret",
                    format!("the webhook secret must be at least {MIN_SECRET_BYTES} bytes"),
                ));
            }
            Some(Webhook {
                url: url.clone(),
                secret: Secret::new(secret),
                previous: None,
            })
        }
        (Some(_), None) => {
            if e.webhook_secret_env.is_none() {
                errors.push((
                    "webhook_secret",
                    "webhook_url needs webhook_secret or webhook_secret_env".into(),
                ));
            }
            None
        }
        (None, Some(_)) => {
            errors.push(("webhook_url", "a webhook secret without webhook_url".into()));
            None
        }
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [merchants.M001]
        emails = ["owner@example.com"]
        mode = "digest"
        digest_every = "1day"
        format = "csv"
        events = ["transactions", "refunds"]

        [merchants.M002]
        webhook_url = "https://hooks.example.com/posflow"
        webhook_secret_env = "M002_SECRET"
        risk_emails = ["risk@example.com"]
    "#;

    fn env(var: &str) -> Option<String> {
        (var == "M002_SECRET").then(|| "0123456789abcdef0123".to_string())
    }

    #[test]
    fn a_good_file_parses_with_defaults() {
        let p = parse(GOOD, env).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].mode,
            Mode::Digest {
                every: Duration::from_secs(86_400)
            }
        );
        assert_eq!(p[0].format, Format::Csv);
        assert_eq!(p[0].events, vec![EventKind::Transaction, EventKind::Refund]);
        assert!(p[0].webhook.is_none());
        assert_eq!(p[1].mode, Mode::PerEvent);
        assert_eq!(p[1].format, Format::Json);
        assert_eq!(
            p[1].events,
            vec![
                EventKind::Transaction,
                EventKind::Refund,
                EventKind::FraudAlert
            ]
        );
        assert_eq!(
            p[1].webhook.as_ref().unwrap().secret.expose(),
            "0123456789abcdef0123"
        );
        assert_eq!(p[1].risk_contacts(), ["risk@example.com"]);
        assert_eq!(p[0].risk_contacts(), ["owner@example.com"]);
    }

    #[test]
    fn every_mistake_is_listed() {
        let bad = r#"
            [merchants.A]
            mode = "hourly"
            format = "xml"
            events = ["sales"]
            [merchants.B]
            mode = "digest"
            digest_every = "2s"
            webhook_url = "ftp://x"
            webhook_secret = "short"
            emails = ["not an address"]
            [merchants.C]
            webhook_url = "https://x.example"
            webhook_secret_env = "UNSET"
            [merchants.D]
            format = "json"
        "#;
        let errors = parse(bad, env).unwrap_err();
        let want = [
            "merchants.A: mode \"hourly\"",
            "merchants.A: format \"xml\"",
            "merchants.A: event \"sales\"",
            "merchants.A: no channel",
            "merchants.B: digest_every \"2s\" must be between",
            "merchants.B: webhook_url \"ftp://x\" must be",
            "merchants.B: the webhook secret must be at least 16",
            "merchants.B: \"not an address\" is not an email",
            "merchants.C: webhook_secret_env: UNSET is not set",
            "merchants.D: no channel",
        ];
        for w in want {
            assert!(
                errors.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), want.len(), "{errors:#?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = parse("[merchants.A]\nemail = [\"a@b.c\"]\n", env).unwrap_err();
        assert!(e[0].contains("unknown field `email`"), "{e:?}");
    }
}
