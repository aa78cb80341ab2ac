//! The fraud rules and their settings. Each rule is computed on one key — a card token or a
//! terminal — over a window of *event time* (the transaction time), and fires at most once per
//! window per key: after firing it stays silent until the window it fired on has passed, so one
//! burst is one alert, not one per transaction. Settings come from a TOML file with defaults
//! (docs/fraud.md).

use serde::Deserialize;

/// Rule identifiers, as they appear in alerts (`rule_id`) and metrics.
pub mod id {
    pub const VELOCITY_CARD: &str = "VELOCITY_CARD";
    pub const VELOCITY_TERMINAL: &str = "VELOCITY_TERMINAL";
    pub const CARD_TESTING: &str = "CARD_TESTING";
    pub const TERMINAL_DECLINES: &str = "TERMINAL_DECLINES";
    pub const REPEATED_DECLINES: &str = "REPEATED_DECLINES";
    pub const AMOUNT_ANOMALY: &str = "AMOUNT_ANOMALY";
    pub const IMPOSSIBLE_TRAVEL: &str = "IMPOSSIBLE_TRAVEL";
    pub const NIGHT_HIGH_RISK_MCC: &str = "NIGHT_HIGH_RISK_MCC";

    /// Every rule, in a fixed order: the state records name a rule by its index here, so add
    /// new rules at the end.
    pub const ALL: [&str; 8] = [
        VELOCITY_CARD,
        VELOCITY_TERMINAL,
        CARD_TESTING,
        TERMINAL_DECLINES,
        REPEATED_DECLINES,
        AMOUNT_ANOMALY,
        IMPOSSIBLE_TRAVEL,
        NIGHT_HIGH_RISK_MCC,
    ];
}

/// Every rule's settings. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How late (event time behind the newest seen on its partition) a transaction may arrive
    /// and still be judged: an offline terminal's flush, a backlog. State keeps this much more
    /// than the longest window, so it costs memory in proportion (docs/fraud.md).
    pub allowed_lateness_secs: i64,
    pub velocity_card: Velocity,
    pub velocity_terminal: Velocity,
    pub card_testing: CardTesting,
    pub terminal_declines: DeclineRatio,
    pub repeated_declines: RepeatedDeclines,
    pub amount_anomaly: AmountAnomaly,
    pub impossible_travel: ImpossibleTravel,
    pub night_high_risk_mcc: NightMcc,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            // Two hours: a router's or a shop's outage flushed the same morning. Longer outages
            // are the merchant's call (docs/fraud.md, "Late transactions").
            allowed_lateness_secs: 7200,
            velocity_card: Velocity {
                enabled: true,
                max: 5,
                window_secs: 60,
            },
            velocity_terminal: Velocity {
                enabled: true,
                max: 120,
                window_secs: 60,
            },
            card_testing: CardTesting::default(),
            terminal_declines: DeclineRatio::default(),
            repeated_declines: RepeatedDeclines::default(),
            amount_anomaly: AmountAnomaly::default(),
            impossible_travel: ImpossibleTravel::default(),
            night_high_risk_mcc: NightMcc::default(),
        }
    }
}

/// More than `max` transactions within `window_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Velocity {
    pub enabled: bool,
    pub max: usize,
    pub window_secs: i64,
}

/// Card testing on one card: at least `min_small` authorisations of at most `small_amount_minor`
/// within `window_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CardTesting {
    pub enabled: bool,
    pub small_amount_minor: i64,
    pub min_small: usize,
    pub window_secs: i64,
}

impl Default for CardTesting {
    fn default() -> Self {
        Self {
            enabled: true,
            small_amount_minor: 200,
            min_small: 4,
            window_secs: 300,
        }
    }
}

/// Card testing at one terminal: of at least `min_attempts` transactions within `window_secs`,
/// a share of declines at or above `min_ratio`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeclineRatio {
    pub enabled: bool,
    pub min_attempts: usize,
    pub min_ratio: f64,
    pub window_secs: i64,
}

impl Default for DeclineRatio {
    fn default() -> Self {
        Self {
            enabled: true,
            min_attempts: 10,
            min_ratio: 0.5,
            window_secs: 300,
        }
    }
}

/// At least `min_declines` declined transactions on one card within `window_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepeatedDeclines {
    pub enabled: bool,
    pub min_declines: usize,
    pub window_secs: i64,
}

impl Default for RepeatedDeclines {
    fn default() -> Self {
        Self {
            enabled: true,
            min_declines: 3,
            window_secs: 600,
        }
    }
}

/// An amount at least `factor` times the card's mean over its last `history` transactions in
/// the same currency (needing at least `min_history` of them), within `window_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmountAnomaly {
    pub enabled: bool,
    pub factor: f64,
    pub min_history: usize,
    pub history: usize,
    pub window_secs: i64,
}

impl Default for AmountAnomaly {
    fn default() -> Self {
        Self {
            enabled: true,
            factor: 10.0,
            min_history: 5,
            history: 20,
            // A day: what a rebuild replays (docs/fraud.md). Longer memory wants a changelog.
            window_secs: 86_400,
        }
    }
}

/// The same card at two places further apart than `max_speed_kmh` allows in the time between
/// them (and at least `min_distance_km` apart: terminals report coarse positions). Compared
/// with the card's previous transaction within `window_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImpossibleTravel {
    pub enabled: bool,
    pub max_speed_kmh: f64,
    pub min_distance_km: f64,
    pub window_secs: i64,
}

impl Default for ImpossibleTravel {
    fn default() -> Self {
        Self {
            enabled: true,
            max_speed_kmh: 900.0,
            min_distance_km: 100.0,
            window_secs: 86_400,
        }
    }
}

/// A transaction of at least `min_amount_minor` at a merchant category in `mccs` between
/// `night_start_hour` and `night_end_hour`, local solar time at the terminal (longitude / 15°;
/// no time-zone database, documented).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NightMcc {
    pub enabled: bool,
    pub mccs: Vec<String>,
    pub night_start_hour: u32,
    pub night_end_hour: u32,
    pub min_amount_minor: i64,
}

impl Default for NightMcc {
    fn default() -> Self {
        Self {
            enabled: true,
            // Jewellery, electronics, money transfer, quasi-cash: what stolen cards buy.
            mccs: ["5944", "5732", "4829", "6051"].map(String::from).to_vec(),
            night_start_hour: 0,
            night_end_hour: 5,
            min_amount_minor: 50_000,
        }
    }
}

impl Settings {
    /// Parses and checks a rules file; the error lists every problem found.
    pub fn from_toml(text: &str) -> Result<Self, Vec<String>> {
        let s: Settings = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        let mut positive = |name: &str, v: i64| {
            if v <= 0 {
                errors.push(format!("{name} must be > 0, not {v}"));
            }
        };
        positive("velocity_card.window_secs", s.velocity_card.window_secs);
        positive(
            "velocity_terminal.window_secs",
            s.velocity_terminal.window_secs,
        );
        positive("card_testing.window_secs", s.card_testing.window_secs);
        positive(
            "terminal_declines.window_secs",
            s.terminal_declines.window_secs,
        );
        positive(
            "repeated_declines.window_secs",
            s.repeated_declines.window_secs,
        );
        positive("amount_anomaly.window_secs", s.amount_anomaly.window_secs);
        positive(
            "impossible_travel.window_secs",
            s.impossible_travel.window_secs,
        );
        if s.allowed_lateness_secs < 0 {
            errors.push("allowed_lateness_secs must be >= 0".into());
        }
        if !(0.0..=1.0).contains(&s.terminal_declines.min_ratio) {
            errors.push("terminal_declines.min_ratio must be within 0..=1".into());
        }
        if s.amount_anomaly.factor <= 1.0 {
            errors.push("amount_anomaly.factor must be > 1".into());
        }
        if s.amount_anomaly.min_history == 0
            || s.amount_anomaly.history < s.amount_anomaly.min_history
        {
            errors.push("amount_anomaly needs 1 <= min_history <= history".into());
        }
        if s.impossible_travel.max_speed_kmh <= 0.0 {
            errors.push("impossible_travel.max_speed_kmh must be > 0".into());
        }
        let n = &s.night_high_risk_mcc;
        if n.night_start_hour > 23 || n.night_end_hour > 24 {
            errors.push("night_high_risk_mcc hours must be 0..=23 (start) and 0..=24 (end)".into());
        }
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }

    /// The longest window any enabled card rule looks back over, plus the lateness allowance:
    /// how much history a card's state keeps, and how far a rebuild replays.
    pub fn card_horizon_ms(&self) -> i64 {
        let mut w = 0;
        if self.velocity_card.enabled {
            w = w.max(self.velocity_card.window_secs);
        }
        if self.card_testing.enabled {
            w = w.max(self.card_testing.window_secs);
        }
        if self.repeated_declines.enabled {
            w = w.max(self.repeated_declines.window_secs);
        }
        if self.amount_anomaly.enabled {
            w = w.max(self.amount_anomaly.window_secs);
        }
        if self.impossible_travel.enabled {
            w = w.max(self.impossible_travel.window_secs);
        }
        (w + self.allowed_lateness_secs) * 1000
    }

    /// The same for terminal rules.
    pub fn terminal_horizon_ms(&self) -> i64 {
        let mut w = 0;
        if self.velocity_terminal.enabled {
            w = w.max(self.velocity_terminal.window_secs);
        }
        if self.terminal_declines.enabled {
            w = w.max(self.terminal_declines.window_secs);
        }
        (w + self.allowed_lateness_secs) * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_is_the_defaults() {
        let file =
            Settings::from_toml(include_str!("../../../deploy/config/fraud-rules.toml")).unwrap();
        assert_eq!(format!("{file:?}"), format!("{:?}", Settings::default()));
    }

    #[test]
    fn every_mistake_is_listed_and_unknown_keys_refused() {
        let errors = Settings::from_toml(
            "allowed_lateness_secs = -1\n[velocity_card]\nenabled = true\nmax = 5\nwindow_secs = 0\n[amount_anomaly]\nfactor = 0.5\n",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        let errors = Settings::from_toml("[velocity_card]\nenabled = true\nmax = 5\nwindow = 60\n")
            .unwrap_err();
        assert!(errors[0].contains("window"), "{errors:?}");
    }

    #[test]
    fn horizons_cover_the_longest_enabled_window_and_the_lateness() {
        let mut s = Settings::default();
        assert_eq!(s.card_horizon_ms(), (86_400 + 7200) * 1000);
        assert_eq!(s.terminal_horizon_ms(), (300 + 7200) * 1000);
        s.amount_anomaly.enabled = false;
        s.impossible_travel.enabled = false;
        assert_eq!(s.card_horizon_ms(), (600 + 7200) * 1000);
    }
}
