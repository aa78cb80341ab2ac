//! Rule state for one input partition, and the rules' evaluation. Pure: no Kafka, no clock.
//!
//! Every decision is a function of the events within the rule's window before and including the
//! current one — never of what fired earlier. A windowed rule fires when its condition *becomes*
//! true with the current event (true with it, false without it): one alert per burst, and the
//! same alert whoever computes it. That is what lets a replica rebuild a partition's state by
//! replaying the last `horizon` of event time and then decide exactly as the previous owner
//! would have: no alert missed, none raised twice (docs/fraud.md).

use crate::rules::{
    id, AmountAnomaly, CardTesting, ImpossibleTravel, NightMcc, RepeatedDeclines, Settings,
};
use posflow_schema::{Severity, Transaction};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};

/// What a rule keeps of one transaction.
#[derive(Debug, Clone)]
struct Event {
    id: Box<str>,
    time: i64,
    amount_minor: i64,
    currency: [u8; 3],
    approved: bool,
    location: Option<(f32, f32)>,
}

impl Event {
    fn of(t: &Transaction) -> Self {
        let c = t.currency.as_bytes();
        let currency = [
            c.first().copied().unwrap_or(0),
            c.get(1).copied().unwrap_or(0),
            c.get(2).copied().unwrap_or(0),
        ];
        Self {
            id: t.transaction_id.as_str().into(),
            time: t.transaction_time,
            amount_minor: t.amount_minor,
            currency,
            approved: t.response_code == "00",
            location: t.location.map(|l| (l.latitude as f32, l.longitude as f32)),
        }
    }
}

/// One key's events, oldest first, within the horizon.
#[derive(Debug, Default)]
struct History(VecDeque<Event>);

impl History {
    fn insert(&mut self, e: Event, horizon_ms: i64) {
        // Arrival is nearly in time order: insert from the back.
        let at = self
            .0
            .iter()
            .rposition(|x| x.time <= e.time)
            .map_or(0, |i| i + 1);
        self.0.insert(at, e);
        let newest = self.0.back().map_or(i64::MIN, |x| x.time);
        while self.0.front().is_some_and(|x| x.time < newest - horizon_ms) {
            self.0.pop_front();
        }
    }

    /// Events in `(t - window, t]`, oldest first.
    fn window(&self, t: i64, window_secs: i64) -> impl Iterator<Item = &Event> {
        let from = t - window_secs * 1000;
        self.0.iter().filter(move |e| e.time > from && e.time <= t)
    }

    fn newest(&self) -> i64 {
        self.0.back().map_or(i64::MIN, |e| e.time)
    }
}

/// An alert before it becomes a `FraudAlert` record.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub alert_id: String,
    pub rule_id: &'static str,
    pub severity: Severity,
    pub score: f64,
    pub evidence: Vec<String>,
}

fn alert(
    rule: &'static str,
    key: &str,
    severity: Severity,
    score: f64,
    evidence: Vec<String>,
) -> Alert {
    let mut h = Sha256::new();
    h.update(rule.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    for e in &evidence {
        h.update([0]);
        h.update(e.as_bytes());
    }
    let digest = h.finalize();
    let alert_id = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    Alert {
        alert_id,
        rule_id: rule,
        severity,
        score: score.clamp(0.0, 1.0),
        evidence,
    }
}

/// Great-circle distance in km.
fn distance_km(a: (f32, f32), b: (f32, f32)) -> f64 {
    let (lat1, lon1) = (f64::from(a.0).to_radians(), f64::from(a.1).to_radians());
    let (lat2, lon2) = (f64::from(b.0).to_radians(), f64::from(b.1).to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

/// Local solar hour (0..24) at `longitude` for a time in ms since the epoch.
fn local_hour(time_ms: i64, longitude: f64) -> u32 {
    let offset_s = (longitude / 15.0 * 3600.0) as i64;
    let secs = (time_ms / 1000 + offset_s).rem_euclid(86_400);
    (secs / 3600) as u32
}

/// Counts of a windowed condition with and without the current event.
fn crossed(with: bool, without: bool) -> bool {
    with && !without
}

/// More than `v.max` in the window, crossed by the event at `now`.
/// Many small amounts on one card in a window: someone testing stolen numbers.
fn card_testing(h: &History, e: &Event, c: &CardTesting, key: &str) -> Option<Alert> {
    if !c.enabled || e.amount_minor > c.small_amount_minor {
        return None;
    }
    let ids: Vec<String> = h
        .window(e.time, c.window_secs)
        .filter(|x| x.amount_minor <= c.small_amount_minor)
        .map(|x| x.id.to_string())
        .collect();
    // Without the current one: `len - 1 >= min`, i.e. `len > min`.
    crossed(ids.len() >= c.min_small, ids.len() > c.min_small)
        .then(|| alert(id::CARD_TESTING, key, Severity::High, 0.8, ids))
}

fn repeated_declines(h: &History, e: &Event, d: &RepeatedDeclines, key: &str) -> Option<Alert> {
    if !d.enabled || e.approved {
        return None;
    }
    let ids: Vec<String> = h
        .window(e.time, d.window_secs)
        .filter(|x| !x.approved)
        .map(|x| x.id.to_string())
        .collect();
    crossed(ids.len() >= d.min_declines, ids.len() > d.min_declines)
        .then(|| alert(id::REPEATED_DECLINES, key, Severity::Medium, 0.6, ids))
}

/// An approved amount far above the card's recent mean in the same currency.
fn amount_anomaly(h: &History, e: &Event, a: &AmountAnomaly, key: &str) -> Option<Alert> {
    if !a.enabled || !e.approved {
        return None;
    }
    let recent: Vec<i64> = h
        .window(e.time, a.window_secs)
        .filter(|x| x.approved && x.currency == e.currency && *x.id != *e.id)
        .map(|x| x.amount_minor)
        .collect();
    let recent = &recent[recent.len().saturating_sub(a.history)..];
    if recent.len() < a.min_history {
        return None;
    }
    let mean = recent.iter().sum::<i64>() as f64 / recent.len() as f64;
    let ratio = e.amount_minor as f64 / mean.max(1.0);
    (ratio >= a.factor).then(|| {
        let score = ratio / (2.0 * a.factor);
        alert(
            id::AMOUNT_ANOMALY,
            key,
            Severity::Medium,
            score,
            vec![e.id.to_string()],
        )
    })
}

/// The card's previous transaction `p` too far away for the time between them.
fn impossible_travel(p: &Event, e: &Event, tr: &ImpossibleTravel, key: &str) -> Option<Alert> {
    let (there, here) = (p.location?, e.location?);
    if !tr.enabled {
        return None;
    }
    let now = e.time;
    let km = distance_km(there, here);
    let hours = ((now - p.time) as f64 / 3_600_000.0).max(1.0 / 3600.0);
    let fast = now - p.time <= tr.window_secs * 1000
        && km >= tr.min_distance_km
        && km / hours > tr.max_speed_kmh;
    fast.then(|| {
        let score = (km / hours) / (2.0 * tr.max_speed_kmh);
        let ids = vec![p.id.to_string(), e.id.to_string()];
        alert(id::IMPOSSIBLE_TRAVEL, key, Severity::High, score, ids)
    })
}

/// A large amount at a high-risk MCC at night, local time from the terminal's longitude.
fn night_high_risk_mcc(t: &Transaction, e: &Event, n: &NightMcc, key: &str) -> Option<Alert> {
    if !n.enabled || t.amount_minor < n.min_amount_minor || !n.mccs.contains(&t.mcc) {
        return None;
    }
    let hour = local_hour(e.time, t.location?.longitude);
    let night = if n.night_start_hour <= n.night_end_hour {
        hour >= n.night_start_hour && hour < n.night_end_hour
    } else {
        hour >= n.night_start_hour || hour < n.night_end_hour
    };
    night.then(|| {
        alert(
            id::NIGHT_HIGH_RISK_MCC,
            key,
            Severity::Low,
            0.5,
            vec![e.id.to_string()],
        )
    })
}

fn velocity(
    h: &History,
    now: i64,
    v: &crate::rules::Velocity,
    rule: &'static str,
    key: &str,
) -> Option<Alert> {
    if !v.enabled {
        return None;
    }
    let ids: Vec<String> = h
        .window(now, v.window_secs)
        .map(|e| e.id.to_string())
        .collect();
    crossed(ids.len() > v.max, ids.len() - 1 > v.max).then(|| {
        let score = ids.len() as f64 / (2.0 * v.max.max(1) as f64);
        alert(rule, key, Severity::Medium, score, ids)
    })
}

/// The state of one input partition: card rules or terminal rules, by key.
#[derive(Debug, Default)]
pub struct Engine {
    keys: HashMap<Box<str>, History>,
    /// Newest event time seen on this partition (the watermark).
    watermark: i64,
}

/// What happened to one transaction.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub alerts: Vec<Alert>,
    /// Older than the watermark by more than the lateness allowance: not counted.
    pub too_late: bool,
}

impl Outcome {
    fn too_late() -> Self {
        Self {
            alerts: Vec::new(),
            too_late: true,
        }
    }
}

impl Engine {
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Drops keys with nothing inside `horizon_ms` of the watermark; returns how many.
    pub fn evict(&mut self, horizon_ms: i64) -> usize {
        let before = self.keys.len();
        let cutoff = self.watermark - horizon_ms;
        self.keys.retain(|_, h| h.newest() >= cutoff);
        before - self.keys.len()
    }

    /// Moves the watermark and files the transaction under `key`; `None` if it is too late.
    fn admit(
        &mut self,
        key: &str,
        t: &Transaction,
        s: &Settings,
        horizon: i64,
    ) -> Option<(&History, Event)> {
        if t.transaction_time < self.watermark - s.allowed_lateness_secs * 1000 {
            return None;
        }
        self.watermark = self.watermark.max(t.transaction_time);
        let h = self.keys.entry(key.into()).or_default();
        let e = Event::of(t);
        h.insert(e.clone(), horizon);
        Some((h, e))
    }

    /// Card rules for a transaction of the card `key`.
    pub fn on_card(&mut self, key: &str, t: &Transaction, s: &Settings) -> Outcome {
        let Some((h, e)) = self.admit(key, t, s, s.card_horizon_ms()) else {
            return Outcome::too_late();
        };
        let now = e.time;
        // The card's transaction before this one (by event time), for travel.
        let previous = h.0.iter().rev().find(|x| x.time <= now && x.id != e.id);
        let alerts = [
            velocity(h, now, &s.velocity_card, id::VELOCITY_CARD, key),
            card_testing(h, &e, &s.card_testing, key),
            repeated_declines(h, &e, &s.repeated_declines, key),
            amount_anomaly(h, &e, &s.amount_anomaly, key),
            previous.and_then(|p| impossible_travel(p, &e, &s.impossible_travel, key)),
            night_high_risk_mcc(t, &e, &s.night_high_risk_mcc, key),
        ];
        Outcome {
            alerts: alerts.into_iter().flatten().collect(),
            too_late: false,
        }
    }

    /// Terminal rules for a transaction at the terminal `key`.
    pub fn on_terminal(&mut self, key: &str, t: &Transaction, s: &Settings) -> Outcome {
        let Some((h, e)) = self.admit(key, t, s, s.terminal_horizon_ms()) else {
            return Outcome::too_late();
        };
        let now = e.time;
        let mut out: Vec<Alert> =
            velocity(h, now, &s.velocity_terminal, id::VELOCITY_TERMINAL, key)
                .into_iter()
                .collect();
        let d = &s.terminal_declines;
        if d.enabled {
            let in_window: Vec<&Event> = h.window(now, d.window_secs).collect();
            let declines = in_window.iter().filter(|x| !x.approved).count();
            let holds = |attempts: usize, declines: usize| {
                attempts >= d.min_attempts && declines as f64 >= d.min_ratio * attempts as f64
            };
            let without = holds(in_window.len() - 1, declines - usize::from(!e.approved));
            if crossed(holds(in_window.len(), declines), without) {
                let ids = in_window
                    .iter()
                    .filter(|x| !x.approved)
                    .map(|x| x.id.to_string())
                    .collect();
                let score = declines as f64 / in_window.len() as f64;
                out.push(alert(
                    id::TERMINAL_DECLINES,
                    key,
                    Severity::High,
                    score,
                    ids,
                ));
            }
        }
        Outcome {
            alerts: out,
            too_late: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posflow_schema::{EntryMode, Location, PaymentMethod, TransactionType};

    const T0: i64 = 1_800_000_000_000; // 2027-01-15T08:00:00Z

    fn tx(id: &str, secs: i64, amount: i64) -> Transaction {
        Transaction {
            transaction_id: id.into(),
            terminal_id: "T1".into(),
            merchant_id: "M1".into(),
            sequence: 0,
            transaction_time: T0 + secs * 1000,
            kind: TransactionType::Sale,
            original_transaction_id: None,
            amount_minor: amount,
            currency: "EUR".into(),
            payment_method: PaymentMethod::Card,
            entry_mode: EntryMode::Chip,
            card: None,
            auth_code: None,
            response_code: "00".into(),
            mcc: "5411".into(),
            location: Some(Location {
                latitude: 52.52,
                longitude: 13.40,
            }),
            line_items: vec![],
        }
    }

    fn rules_fired(
        e: &mut Engine,
        s: &Settings,
        txs: &[Transaction],
        terminal: bool,
    ) -> Vec<&'static str> {
        txs.iter()
            .flat_map(|t| {
                let o = if terminal {
                    e.on_terminal("K", t, s)
                } else {
                    e.on_card("K", t, s)
                };
                o.alerts.into_iter().map(|a| a.rule_id)
            })
            .collect()
    }

    #[test]
    fn velocity_fires_once_per_burst_and_not_below_the_limit() {
        let s = Settings::default(); // more than 5 in 60 s
        let benign: Vec<_> = (0..20)
            .map(|i| tx(&format!("b{i}"), i * 13, 1000))
            .collect();
        assert!(rules_fired(&mut Engine::default(), &s, &benign, false).is_empty());
        let burst: Vec<_> = (0..10).map(|i| tx(&format!("v{i}"), i * 5, 1000)).collect();
        assert_eq!(
            rules_fired(&mut Engine::default(), &s, &burst, false),
            vec![id::VELOCITY_CARD]
        );
        // A second burst after the window has emptied is a second alert.
        let two: Vec<_> = (0..10)
            .map(|i| tx(&format!("v{i}"), i * 5, 1000))
            .chain((0..6).map(|i| tx(&format!("w{i}"), 300 + i * 5, 1000)))
            .collect();
        assert_eq!(
            rules_fired(&mut Engine::default(), &s, &two, false),
            vec![id::VELOCITY_CARD; 2]
        );
    }

    #[test]
    fn card_testing_needs_small_amounts() {
        let s = Settings::default(); // 4 of <= 2.00 in 5 min
        let small: Vec<_> = (0..4).map(|i| tx(&format!("s{i}"), i * 50, 100)).collect();
        assert_eq!(
            rules_fired(&mut Engine::default(), &s, &small, false),
            vec![id::CARD_TESTING]
        );
        let large: Vec<_> = (0..4).map(|i| tx(&format!("l{i}"), i * 50, 5000)).collect();
        assert!(rules_fired(&mut Engine::default(), &s, &large, false).is_empty());
    }

    #[test]
    fn repeated_declines_count_declines_only() {
        let s = Settings::default(); // 3 declines in 10 min
        let mut declined: Vec<_> = (0..3).map(|i| tx(&format!("d{i}"), i * 60, 5000)).collect();
        declined
            .iter_mut()
            .for_each(|t| t.response_code = "05".into());
        assert_eq!(
            rules_fired(&mut Engine::default(), &s, &declined, false),
            vec![id::REPEATED_DECLINES]
        );
        let approved: Vec<_> = (0..3).map(|i| tx(&format!("a{i}"), i * 60, 5000)).collect();
        assert!(rules_fired(&mut Engine::default(), &s, &approved, false).is_empty());
    }

    #[test]
    fn amount_anomaly_compares_with_the_cards_history() {
        let s = Settings::default(); // 10x the mean of >= 5
        let mut txs: Vec<_> = (0..5)
            .map(|i| tx(&format!("h{i}"), i * 600, 2000))
            .collect();
        txs.push(tx("big", 4000, 25_000));
        assert_eq!(
            rules_fired(&mut Engine::default(), &s, &txs, false),
            vec![id::AMOUNT_ANOMALY]
        );
        txs.pop();
        txs.push(tx("normal", 4000, 15_000));
        assert!(rules_fired(&mut Engine::default(), &s, &txs, false).is_empty());
        // Too little history: silent.
        let short = vec![tx("a", 0, 2000), tx("b", 600, 50_000)];
        assert!(rules_fired(&mut Engine::default(), &s, &short, false).is_empty());
    }

    #[test]
    fn impossible_travel_is_distance_over_time() {
        let s = Settings::default(); // 900 km/h, 100 km
        let mut paris = tx("paris", 1800, 1000);
        paris.location = Some(Location {
            latitude: 48.86,
            longitude: 2.35,
        });
        // Berlin -> Paris (~880 km) in half an hour: too fast.
        let fast = vec![tx("berlin", 0, 1000), paris.clone()];
        assert_eq!(
            rules_fired(&mut Engine::default(), &s, &fast, false),
            vec![id::IMPOSSIBLE_TRAVEL]
        );
        // ... in two hours: a flight.
        paris.transaction_time = T0 + 7200 * 1000;
        let flight = vec![tx("berlin", 0, 1000), paris];
        assert!(rules_fired(&mut Engine::default(), &s, &flight, false).is_empty());
    }

    #[test]
    fn night_rule_uses_local_solar_time() {
        let s = Settings::default(); // jewellery etc. >= 500.00, 00:00-05:00 local
        let mut t = tx("j", 0, 80_000);
        t.mcc = "5944".into();
        // T0 is 08:00 UTC: 08:53 local solar time in Berlin, 02:09 in Chicago (longitude -87.6).
        assert!(rules_fired(&mut Engine::default(), &s, &[t.clone()], false).is_empty());
        t.location = Some(Location {
            latitude: 41.88,
            longitude: -87.63,
        });
        assert_eq!(
            rules_fired(&mut Engine::default(), &s, &[t.clone()], false),
            vec![id::NIGHT_HIGH_RISK_MCC]
        );
        t.mcc = "5411".into();
        assert!(rules_fired(&mut Engine::default(), &s, &[t], false).is_empty());
    }

    #[test]
    fn terminal_rules_velocity_and_decline_ratio() {
        let s = Settings::default(); // > 120 per minute; >= 10 attempts with half declined
        let busy: Vec<_> = (0..121)
            .map(|i| tx(&format!("t{i}"), i / 3, 1000))
            .collect();
        assert_eq!(
            rules_fired(&mut Engine::default(), &s, &busy, true),
            vec![id::VELOCITY_TERMINAL]
        );
        let mut testing: Vec<_> = (0..10).map(|i| tx(&format!("x{i}"), i * 10, 100)).collect();
        for t in testing.iter_mut().step_by(2) {
            t.response_code = "51".into();
        }
        assert_eq!(
            rules_fired(&mut Engine::default(), &s, &testing, true),
            vec![id::TERMINAL_DECLINES]
        );
        let healthy: Vec<_> = (0..30).map(|i| tx(&format!("y{i}"), i * 10, 100)).collect();
        assert!(rules_fired(&mut Engine::default(), &s, &healthy, true).is_empty());
    }

    #[test]
    fn a_rebuilt_state_decides_like_the_original() {
        // Any stream, cut at any point: replaying the last horizon before the cut and carrying on
        // gives the same alerts after the cut as the uninterrupted run.
        let mut s = Settings::default();
        // A horizon shorter than the stream.
        s.amount_anomaly.window_secs = 300;
        s.impossible_travel.window_secs = 300;
        assert_eq!(s.card_horizon_ms(), 660_000);
        let stream: Vec<_> = (0..400)
            .map(|i: i64| {
                let mut t = tx(
                    &format!("r{i}"),
                    i * 7 + (i % 5) * 3,
                    if i % 9 == 0 { 100 } else { 1500 + i * 37 % 900 },
                );
                if i % 11 == 0 {
                    t.response_code = "05".into();
                }
                t
            })
            .collect();
        let mut whole = Engine::default();
        let all: Vec<Vec<Alert>> = stream
            .iter()
            .map(|t| whole.on_card("K", t, &s).alerts)
            .collect();
        for cut in [50usize, 123, 299] {
            let start_time = stream[cut].transaction_time - s.card_horizon_ms();
            let mut rebuilt = Engine::default();
            for t in stream[..cut]
                .iter()
                .filter(|t| t.transaction_time >= start_time)
            {
                rebuilt.on_card("K", t, &s);
            }
            let after: Vec<Vec<Alert>> = stream[cut..]
                .iter()
                .map(|t| rebuilt.on_card("K", t, &s).alerts)
                .collect();
            assert_eq!(after, all[cut..].to_vec(), "cut at {cut}");
        }
        assert!(
            all.iter().any(|a| !a.is_empty()),
            "the stream fires something"
        );
    }

    #[test]
    fn late_events_beyond_the_allowance_are_not_counted_and_idle_keys_are_evicted() {
        let s = Settings::default();
        let mut e = Engine::default();
        e.on_card("A", &tx("a", 1000, 100), &s);
        assert!(e.on_card("B", &tx("late", 1000 - 61, 100), &s).too_late);
        assert!(!e.on_card("B", &tx("ok", 1000 - 59, 100), &s).too_late);
        assert_eq!(e.keys(), 2);
        e.on_card(
            "C",
            &tx("c", 1000 + s.card_horizon_ms() / 1000 + 1, 100),
            &s,
        );
        assert_eq!(e.evict(s.card_horizon_ms()), 2);
        assert_eq!(e.keys(), 1);
    }

    #[test]
    fn alert_ids_depend_on_rule_key_and_evidence_only() {
        let make = |severity, score, last: &str| {
            alert(
                id::VELOCITY_CARD,
                "K",
                severity,
                score,
                vec!["1".into(), last.into()],
            )
        };
        let a = make(Severity::Medium, 0.5, "2");
        let b = make(Severity::High, 0.9, "2");
        let c = make(Severity::Medium, 0.5, "3");
        assert_eq!(a.alert_id, b.alert_id);
        assert_ne!(a.alert_id, c.alert_id);
        assert_eq!(a.alert_id.len(), 32);
    }
}
