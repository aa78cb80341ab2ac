//! The rule settings, per merchant and transaction type, from a TOML file (docs/validation.md).
//! Everything has a built-in default, so no file means the defaults for every merchant. The
//! file is read once at start-up and checked completely: every mistake is listed before the
//! stage refuses to start. Each merchant's settings are resolved once, so the hot path does one
//! map lookup per transaction.

use posflow_schema::{EntryMode, TransactionType};
use serde::Deserialize;
use std::collections::HashMap;
use strum::{EnumCount, IntoEnumIterator};

/// The effective rules for one merchant.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Largest amount per type, in major units of the currency (scaled by its minor units).
    max_amount_major: [i64; TransactionType::COUNT],
    /// How far the terminal clock may run ahead of the bridge's receive time.
    pub max_clock_skew_ms: i64,
    /// How old a transaction may be when it arrives (store-and-forward terminals queue offline).
    pub max_age_ms: i64,
    types: [bool; TransactionType::COUNT],
    entry_modes: [bool; EntryMode::COUNT],
    /// `None`: any well-formed MCC.
    mccs: Option<Vec<String>>,
    /// Store-and-forward limits (`[….offline]`).
    pub offline: OfflineCaps,
}

/// The longest offline `max_age_hours`: an outage's accepted transactions are read back from
/// the outages state topic (8 days' retention, `topics::STATE_TOPICS`) over that long.
pub const MAX_OFFLINE_AGE_HOURS: i64 = 7 * 24;

/// What a merchant allows a terminal to capture without a link to posflow (payload version 2's
/// `offline: true`), after Adyen's store-and-forward settings (docs/validation.md). Amounts are
/// in major units of the transaction's currency, scaled by its minor units like `max_amount`.
#[derive(Debug, Clone, PartialEq)]
pub struct OfflineCaps {
    /// `false`: every offline transaction is refused (OFFLINE_NOT_ALLOWED).
    pub allowed: bool,
    /// Per offline transaction (OFFLINE_AMOUNT_OVER_CAP).
    pub max_amount_major: i64,
    /// From capture to the bridge's receipt (OFFLINE_TOO_OLD).
    pub max_age_ms: i64,
    /// Accepted offline transactions per terminal per outage (OFFLINE_COUNT_OVER_CAP).
    pub max_count: u32,
    /// Accepted offline amount per terminal per outage and currency (OFFLINE_TOTAL_OVER_CAP).
    pub max_total_major: i64,
}

impl Default for OfflineCaps {
    /// Moneris' published defaults for the amount and count (250 per transaction, 500 records);
    /// 10,000 per outage and three days are ours.
    fn default() -> Self {
        Self {
            allowed: true,
            max_amount_major: 250,
            max_age_ms: 72 * 3_600_000,
            max_count: 500,
            max_total_major: 10_000,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_amount_major: [100_000; TransactionType::COUNT],
            max_clock_skew_ms: 5 * 60_000,
            max_age_ms: 7 * 86_400_000,
            types: [true; TransactionType::COUNT],
            entry_modes: [true; EntryMode::COUNT],
            mccs: None,
            offline: OfflineCaps::default(),
        }
    }
}

// The per-type and per-mode arrays are indexed by declaration order (fieldless enums).
fn type_index(t: TransactionType) -> usize {
    t as usize
}

fn mode_index(m: EntryMode) -> usize {
    m as usize
}

impl Policy {
    pub fn max_amount_major(&self, t: TransactionType) -> i64 {
        self.max_amount_major[type_index(t)]
    }
    pub fn allows_type(&self, t: TransactionType) -> bool {
        self.types[type_index(t)]
    }
    pub fn allows_entry_mode(&self, m: EntryMode) -> bool {
        self.entry_modes[mode_index(m)]
    }
    /// `None` when the merchant accepts any well-formed MCC.
    pub fn mccs(&self) -> Option<&[String]> {
        self.mccs.as_deref()
    }
}

/// Every merchant's policy; merchants the file does not name get the defaults.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    defaults: Policy,
    merchants: HashMap<String, Policy>,
}

impl Policies {
    pub fn for_merchant(&self, merchant_id: &str) -> &Policy {
        self.merchants.get(merchant_id).unwrap_or(&self.defaults)
    }

    pub fn merchant_count(&self) -> usize {
        self.merchants.len()
    }

    /// The longest offline `max_age` of any merchant: how far back a replica reads the outages
    /// state topic when it takes a raw partition over.
    pub fn longest_offline_age_ms(&self) -> i64 {
        self.merchants
            .values()
            .chain([&self.defaults])
            .map(|p| p.offline.max_age_ms)
            .max()
            .unwrap_or(0)
    }

    /// Parses and checks a rules file; the error lists every problem found.
    pub fn from_toml(text: &str) -> Result<Self, Vec<String>> {
        let file: File = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        let defaults = file
            .defaults
            .resolve(&Policy::default(), "[defaults]", &mut errors);
        let merchants = file
            .merchants
            .iter()
            .map(|(id, s)| {
                let p = s.resolve(&defaults, &format!("[merchants.{id}]"), &mut errors);
                (id.clone(), p)
            })
            .collect();
        if errors.is_empty() {
            Ok(Self {
                defaults,
                merchants,
            })
        } else {
            Err(errors)
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Settings,
    #[serde(default)]
    merchants: HashMap<String, Settings>,
}

/// One section of the file. Every field is optional: what a merchant leaves out comes from
/// `[defaults]`, and what that leaves out from the built-in defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    max_amount: Option<i64>,
    #[serde(default)]
    max_amount_by_type: HashMap<String, i64>,
    max_clock_skew_secs: Option<i64>,
    max_age_hours: Option<i64>,
    types: Option<Vec<String>>,
    entry_modes: Option<Vec<String>>,
    mccs: Option<Vec<String>>,
    #[serde(default)]
    offline: OfflineSettings,
}

/// `[….offline]`: each field optional, inherited like the rest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OfflineSettings {
    allowed: Option<bool>,
    max_amount: Option<i64>,
    max_age_hours: Option<i64>,
    max_count: Option<i64>,
    max_total: Option<i64>,
}

impl OfflineSettings {
    fn resolve(
        &self,
        parent: &OfflineCaps,
        section: &str,
        errors: &mut Vec<String>,
    ) -> OfflineCaps {
        let mut c = parent.clone();
        let mut positive = |name: &str, v: Option<i64>| {
            v.inspect(|&v| {
                if v <= 0 {
                    errors.push(format!("{section}.offline {name} must be > 0, not {v}"));
                }
            })
        };
        if let Some(a) = self.allowed {
            c.allowed = a;
        }
        if let Some(a) = positive("max_amount", self.max_amount) {
            c.max_amount_major = a;
        }
        if let Some(h) = positive("max_age_hours", self.max_age_hours) {
            c.max_age_ms = h.saturating_mul(3_600_000);
        }
        if let Some(n) = positive("max_count", self.max_count) {
            c.max_count = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(t) = positive("max_total", self.max_total) {
            c.max_total_major = t;
        }
        if let Some(h) = self.max_age_hours.filter(|&h| h > MAX_OFFLINE_AGE_HOURS) {
            errors.push(format!(
                "{section}.offline max_age_hours must be at most {MAX_OFFLINE_AGE_HOURS}, not {h}: \
                 the outages state topic keeps 8 days (docs/validation.md)"
            ));
        }
        c
    }
}

impl Settings {
    /// Precedence, most specific first: this section's per-type limit, this section's
    /// `max_amount`, then the parent's limit for that type.
    fn resolve(&self, parent: &Policy, section: &str, errors: &mut Vec<String>) -> Policy {
        let mut p = parent.clone();
        if let Some(a) = self.max_amount {
            if a <= 0 {
                errors.push(format!("{section} max_amount must be > 0, not {a}"));
            }
            p.max_amount_major = [a; TransactionType::COUNT];
        }
        for (name, &a) in &self.max_amount_by_type {
            match name.parse::<TransactionType>().ok() {
                None => errors.push(format!(
                    "{section} max_amount_by_type: unknown type {name:?} (one of {})",
                    type_names()
                )),
                Some(_) if a <= 0 => errors.push(format!(
                    "{section} max_amount_by_type.{name} must be > 0, not {a}"
                )),
                Some(t) => p.max_amount_major[type_index(t)] = a,
            }
        }
        if let Some(s) = self.max_clock_skew_secs {
            if s < 0 {
                errors.push(format!("{section} max_clock_skew_secs must be >= 0"));
            }
            p.max_clock_skew_ms = s.saturating_mul(1000);
        }
        if let Some(h) = self.max_age_hours {
            if h <= 0 {
                errors.push(format!("{section} max_age_hours must be > 0"));
            }
            p.max_age_ms = h.saturating_mul(3_600_000);
        }
        if let Some(types) = &self.types {
            p.types = [false; TransactionType::COUNT];
            for name in types {
                match name.parse::<TransactionType>().ok() {
                    Some(t) => p.types[type_index(t)] = true,
                    None => errors.push(format!(
                        "{section} types: unknown type {name:?} (one of {})",
                        type_names()
                    )),
                }
            }
        }
        if let Some(modes) = &self.entry_modes {
            p.entry_modes = [false; EntryMode::COUNT];
            for name in modes {
                match name.parse::<EntryMode>().ok() {
                    Some(m) => p.entry_modes[mode_index(m)] = true,
                    None => errors.push(format!(
                        "{section} entry_modes: unknown entry mode {name:?} (one of {})",
                        names(EntryMode::iter().map(EntryMode::as_str))
                    )),
                }
            }
        }
        if let Some(mccs) = &self.mccs {
            for m in mccs.iter().filter(|m| !is_mcc(m)) {
                errors.push(format!("{section} mccs: {m:?} is not a 4-digit MCC"));
            }
            p.mccs = Some(mccs.clone());
        }
        p.offline = self.offline.resolve(&parent.offline, section, errors);
        p
    }
}

fn type_names() -> String {
    names(TransactionType::iter().map(TransactionType::as_str))
}

fn names(all: impl Iterator<Item = &'static str>) -> String {
    all.collect::<Vec<_>>().join(", ")
}

/// A merchant category code is four digits (ISO 18245). Here, not in `rules`: the rules read
/// policies, policies never read the rules.
pub fn is_mcc(s: &str) -> bool {
    s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_built_in_defaults_for_everyone() {
        let p = Policies::from_toml("").unwrap();
        assert_eq!(p.for_merchant("M1"), &Policy::default());
    }

    #[test]
    fn merchant_settings_override_defaults_most_specific_first() {
        let p = Policies::from_toml(
            r#"
            [defaults]
            max_amount = 50000
            max_clock_skew_secs = 60
            [defaults.max_amount_by_type]
            refund = 2000
            [merchants.M1]
            max_amount = 900
            entry_modes = ["chip", "contactless"]
            [merchants.M1.max_amount_by_type]
            void = 100
            [merchants.M2]
            types = ["sale"]
            mccs = ["5411"]
            "#,
        )
        .unwrap();
        let d = p.for_merchant("other");
        assert_eq!(d.max_amount_major(TransactionType::Sale), 50000);
        assert_eq!(d.max_amount_major(TransactionType::Refund), 2000);
        assert_eq!(d.max_clock_skew_ms, 60_000);
        let m1 = p.for_merchant("M1");
        assert_eq!(m1.max_amount_major(TransactionType::Sale), 900);
        assert_eq!(m1.max_amount_major(TransactionType::Refund), 900);
        assert_eq!(m1.max_amount_major(TransactionType::Void), 100);
        assert_eq!(m1.max_clock_skew_ms, 60_000, "inherited from [defaults]");
        assert!(m1.allows_entry_mode(EntryMode::Chip));
        assert!(!m1.allows_entry_mode(EntryMode::Manual));
        let m2 = p.for_merchant("M2");
        assert!(m2.allows_type(TransactionType::Sale));
        assert!(!m2.allows_type(TransactionType::Refund));
        assert_eq!(m2.max_amount_major(TransactionType::Refund), 2000);
        assert_eq!(m2.mccs(), Some(&["5411".to_string()][..]));
    }

    #[test]
    fn every_mistake_is_listed() {
        let errors = Policies::from_toml(
            r#"
            [defaults]
            max_amount = 0
            [merchants.M1]
            types = ["sale", "chargeback"]
            entry_modes = ["telepathy"]
            mccs = ["54"]
            [merchants.M1.max_amount_by_type]
            gift = 5
            "#,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors.iter().any(|e| e.contains("\"chargeback\"")));
        assert!(errors.iter().any(|e| e.contains("\"telepathy\"")));
        assert!(errors.iter().any(|e| e.contains("\"gift\"")));
    }

    #[test]
    fn offline_caps_are_inherited_field_by_field_and_checked() {
        let p = Policies::from_toml(
            r#"
            [defaults.offline]
            max_amount = 100
            max_count = 50
            [merchants.M1.offline]
            max_count = 5
            max_total = 300
            [merchants.M2.offline]
            allowed = false
            max_age_hours = 100
            "#,
        )
        .unwrap();
        assert_eq!(p.longest_offline_age_ms(), 100 * 3_600_000);
        let d = &p.for_merchant("other").offline;
        assert_eq!((d.max_amount_major, d.max_count), (100, 50));
        assert_eq!(d.max_total_major, OfflineCaps::default().max_total_major);
        let m1 = &p.for_merchant("M1").offline;
        assert_eq!(
            (
                m1.allowed,
                m1.max_amount_major,
                m1.max_count,
                m1.max_total_major
            ),
            (true, 100, 5, 300)
        );
        assert!(!p.for_merchant("M2").offline.allowed);
        let errors = Policies::from_toml(
            "[defaults.offline]\nmax_count = 0\nmax_age_hours = -1\n[merchants.M1.offline]\nmax_total = 0\nmax_age_hours = 169\n",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "[defaults].offline max_age_hours must be > 0, not -1",
                "[defaults].offline max_count must be > 0, not 0",
                "[merchants.M1].offline max_total must be > 0, not 0",
                "[merchants.M1].offline max_age_hours must be at most 168, not 169: the outages state topic keeps 8 days (docs/validation.md)",
            ]
        );
        let errors = Policies::from_toml("[defaults.offline]\nmax_amout = 5\n").unwrap_err();
        assert!(errors[0].contains("max_amout"), "{errors:?}");
    }

    #[test]
    fn a_misspelt_setting_is_refused() {
        let errors = Policies::from_toml("[defaults]\nmax_amout = 5\n").unwrap_err();
        assert!(errors[0].contains("max_amout"), "{errors:?}");
    }

    #[test]
    fn the_shipped_example_file_is_valid() {
        let text = include_str!("../../../deploy/config/validator-rules.toml");
        let p = Policies::from_toml(text).unwrap();
        assert!(p.merchant_count() > 0);
    }
}
