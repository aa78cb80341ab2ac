//! Rule state for one input partition, and the rules' evaluation. Pure: no Kafka, no clock.
//!
//! **Canonical order.** A key's events are held in event-time order (ties by transaction id),
//! whatever order they arrived in. A windowed rule evaluated *at* an event looks at the events
//! up to and including it in that order, and fires when its condition *becomes* true there
//! (true with the event, false without it) and it has not fired on the key within its window
//! either side: one alert per burst, the same alert whoever computes it.
//!
//! **Late events** (an offline terminal's flush, a backlog) are placed in that order, judged at
//! their place, and the later events of the key whose answer the late one can change (each
//! rule within its window after it; travel at the next event) are judged again: a late
//! transaction can complete a pattern that on-time ones started. An alert already raised is
//! not raised again — each key remembers what it raised within its horizon; an alert id is a
//! hash of the rule, the key and the evidence, and a windowed rule's burst is one alert
//! however its evidence changed — and none is ever withdrawn. So a key whose events arrive in
//! event-time order gets exactly the alerts of the in-order run, whatever else shares its
//! partition and however late they all are within the lateness allowance; a late event
//! inserted *between* events already judged adds what it completes (docs/fraud.md, "Late
//! transactions").
//!
//! **Lateness.** An event further behind the partition's newest (the watermark) than
//! `allowed_lateness_secs` is not judged: `too_late`, for the stage to dead-letter. State keeps
//! the longest window *plus* that allowance, so everything a judged event's windows can reach is
//! still held — the reason decisions do not depend on the partition's other traffic, and a
//! replica that rebuilds a partition by replaying the horizon decides exactly as the previous
//! owner did.
//!
//! **Restore.** Each filed transaction yields a state record (`Outcome::state_record`: the event
//! and the alerts its judging raised, `changelog`). Filing those records again in their order
//! (`Engine::restore`) gives the state the writer had, alerts raised included, without judging:
//! how a replica takes a partition over (docs/fraud.md, "State changelog and recovery").

use crate::changelog;
use crate::rules::{
    id, AmountAnomaly, CardTesting, ImpossibleTravel, NightMcc, RepeatedDeclines, Settings,
};
use posflow_schema::{Severity, Transaction};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};

/// What a rule keeps of one transaction.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) id: Box<str>,
    pub(crate) time: i64,
    pub(crate) amount_minor: i64,
    pub(crate) currency: [u8; 3],
    pub(crate) approved: bool,
    pub(crate) location: Option<(f32, f32)>,
    /// Where it happened: an alert anchored at this event names them.
    pub(crate) merchant_id: Box<str>,
    pub(crate) terminal_id: Box<str>,
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
            merchant_id: t.merchant_id.as_str().into(),
            terminal_id: t.terminal_id.as_str().into(),
        }
    }

    fn order(&self) -> (i64, &str) {
        (self.time, &self.id)
    }
}

/// One key's events in canonical order within the horizon, and the alerts raised on them.
#[derive(Debug, Default)]
struct History {
    events: VecDeque<Event>,
    /// Every alert raised within the horizon.
    raised: Vec<Raised>,
}

/// An alert a key raised, as much as telling it again takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Raised {
    pub(crate) rule: &'static str,
    pub(crate) anchor_time: i64,
    pub(crate) digest: u128,
}

impl Raised {
    fn of(a: &Alert) -> Self {
        Self {
            rule: a.rule_id,
            anchor_time: a.anchor_time,
            digest: a.digest,
        }
    }
}

impl History {
    /// Files `e` in canonical order and drops what fell out of the horizon; `e`'s index, or
    /// `None` if the key has the very same transaction already (a replayed input).
    fn insert(&mut self, e: Event, horizon_ms: i64) -> Option<usize> {
        let at = self.events.partition_point(|x| x.order() < e.order());
        if self.events.get(at).is_some_and(|x| x.order() == e.order()) {
            return None;
        }
        self.events.insert(at, e);
        let cutoff = self.newest() - horizon_ms;
        let mut dropped = 0;
        while self.events.front().is_some_and(|x| x.time < cutoff) {
            self.events.pop_front();
            dropped += 1;
        }
        self.raised.retain(|r| r.anchor_time >= cutoff);
        at.checked_sub(dropped)
    }

    /// The events in `(events[i].time - window, events[i].time]` up to and including index
    /// `i` in canonical order.
    fn window(&self, i: usize, window_secs: i64) -> impl Iterator<Item = &Event> {
        let from = self.events[i].time - window_secs * 1000;
        let first = self
            .events
            .range(..i)
            .rev()
            .take_while(|x| x.time > from)
            .count();
        self.events.range(i - first..=i)
    }

    fn newest(&self) -> i64 {
        self.events.back().map_or(i64::MIN, |e| e.time)
    }

    /// The alerts not raised before, remembered as raised now. A windowed rule's alert is
    /// also not raised when the same rule already fired on this key within its window either
    /// side: that is the same burst, seen again after a late arrival changed its evidence.
    fn keep_new(&mut self, alerts: Vec<Alert>) -> Vec<Alert> {
        let mut out = Vec::with_capacity(alerts.len());
        for a in alerts {
            let seen = self.raised.iter().any(|r| {
                r.digest == a.digest
                    || a.burst_ms.is_some_and(|w| {
                        r.rule == a.rule_id && (r.anchor_time - a.anchor_time).abs() < w
                    })
            });
            if !seen {
                self.raised.push(Raised::of(&a));
                out.push(a);
            }
        }
        out
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
    /// The transaction it fired at: its time, terminal and merchant.
    pub anchor_time: i64,
    pub terminal_id: String,
    pub merchant_id: String,
    /// The id's 128 bits.
    digest: u128,
    /// A windowed rule's window (one alert per burst); `None` for a per-transaction rule.
    burst_ms: Option<i64>,
}

fn alert(
    rule: &'static str,
    key: &str,
    at: &Event,
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
    let bits: [u8; 16] = digest[..16].try_into().expect("16 of 32 bytes");
    Alert {
        alert_id: bits.iter().map(|b| format!("{b:02x}")).collect(),
        rule_id: rule,
        severity,
        score: score.clamp(0.0, 1.0),
        evidence,
        anchor_time: at.time,
        terminal_id: at.terminal_id.to_string(),
        merchant_id: at.merchant_id.to_string(),
        digest: u128::from_be_bytes(bits),
        burst_ms: None,
    }
}

impl Alert {
    /// Marks a windowed rule's alert: one per burst of `window_secs`.
    fn burst(mut self, window_secs: i64) -> Self {
        self.burst_ms = Some(window_secs * 1000);
        self
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

/// Many small amounts on one card in a window: someone testing stolen numbers.
fn card_testing(h: &History, i: usize, c: &CardTesting, key: &str) -> Option<Alert> {
    let e = &h.events[i];
    if !c.enabled || e.amount_minor > c.small_amount_minor {
        return None;
    }
    let ids: Vec<String> = h
        .window(i, c.window_secs)
        .filter(|x| x.amount_minor <= c.small_amount_minor)
        .map(|x| x.id.to_string())
        .collect();
    // Without the current one: `len - 1 >= min`, i.e. `len > min`.
    crossed(ids.len() >= c.min_small, ids.len() > c.min_small)
        .then(|| alert(id::CARD_TESTING, key, e, Severity::High, 0.8, ids).burst(c.window_secs))
}

fn repeated_declines(h: &History, i: usize, d: &RepeatedDeclines, key: &str) -> Option<Alert> {
    let e = &h.events[i];
    if !d.enabled || e.approved {
        return None;
    }
    let ids: Vec<String> = h
        .window(i, d.window_secs)
        .filter(|x| !x.approved)
        .map(|x| x.id.to_string())
        .collect();
    crossed(ids.len() >= d.min_declines, ids.len() > d.min_declines).then(|| {
        alert(id::REPEATED_DECLINES, key, e, Severity::Medium, 0.6, ids).burst(d.window_secs)
    })
}

/// An approved amount far above the card's recent mean in the same currency.
fn amount_anomaly(h: &History, i: usize, a: &AmountAnomaly, key: &str) -> Option<Alert> {
    let e = &h.events[i];
    if !a.enabled || !e.approved {
        return None;
    }
    let recent: Vec<i64> = h
        .window(i, a.window_secs)
        .take_while(|x| !std::ptr::eq(*x, e))
        .filter(|x| x.approved && x.currency == e.currency)
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
            e,
            Severity::Medium,
            score,
            vec![e.id.to_string()],
        )
    })
}

/// The card's previous transaction (in canonical order) too far away for the time between.
fn impossible_travel(h: &History, i: usize, tr: &ImpossibleTravel, key: &str) -> Option<Alert> {
    let (p, e) = (&h.events[i.checked_sub(1)?], &h.events[i]);
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
        alert(id::IMPOSSIBLE_TRAVEL, key, e, Severity::High, score, ids)
    })
}

/// A large amount at a high-risk MCC at night, local time from the terminal's longitude. Of
/// the transaction alone: never judged again.
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
            e,
            Severity::Low,
            0.5,
            vec![e.id.to_string()],
        )
    })
}

/// More than `v.max` in the window, crossed at event `i`.
fn velocity(
    h: &History,
    i: usize,
    v: &crate::rules::Velocity,
    rule: &'static str,
    key: &str,
) -> Option<Alert> {
    if !v.enabled {
        return None;
    }
    let ids: Vec<String> = h
        .window(i, v.window_secs)
        .map(|e| e.id.to_string())
        .collect();
    crossed(ids.len() > v.max, ids.len() - 1 > v.max).then(|| {
        let score = ids.len() as f64 / (2.0 * v.max.max(1) as f64);
        alert(rule, key, &h.events[i], Severity::Medium, score, ids).burst(v.window_secs)
    })
}

/// Of the attempts at a terminal in the window, too many declined, crossed at event `i`.
fn terminal_declines(
    h: &History,
    i: usize,
    d: &crate::rules::DeclineRatio,
    key: &str,
) -> Option<Alert> {
    if !d.enabled {
        return None;
    }
    let e = &h.events[i];
    let in_window: Vec<&Event> = h.window(i, d.window_secs).collect();
    let declines = in_window.iter().filter(|x| !x.approved).count();
    let holds = |attempts: usize, declines: usize| {
        attempts >= d.min_attempts && declines as f64 >= d.min_ratio * attempts as f64
    };
    let without = holds(in_window.len() - 1, declines - usize::from(!e.approved));
    crossed(holds(in_window.len(), declines), without).then(|| {
        let ids = in_window
            .iter()
            .filter(|x| !x.approved)
            .map(|x| x.id.to_string())
            .collect();
        let score = declines as f64 / in_window.len() as f64;
        alert(id::TERMINAL_DECLINES, key, e, Severity::High, score, ids).burst(d.window_secs)
    })
}

/// Where event `k` stands from the transaction just filed at `i`: `k - i` events and
/// `since_ms` later. A rule is judged again at `k` only where the new one can change its
/// answer: within the rule's window, and for travel (which compares an event with the one
/// before) only at the next event.
#[derive(Clone, Copy)]
struct After {
    steps: usize,
    since_ms: i64,
}

impl After {
    fn within(self, window_secs: i64) -> bool {
        self.since_ms <= window_secs * 1000
    }
}

/// The card rules that read the card's history, at event `k`.
fn card_rules_at(h: &History, k: usize, at: After, s: &Settings, key: &str) -> Vec<Alert> {
    let mut out = Vec::new();
    if at.within(s.velocity_card.window_secs) {
        out.extend(velocity(h, k, &s.velocity_card, id::VELOCITY_CARD, key));
    }
    if at.within(s.card_testing.window_secs) {
        out.extend(card_testing(h, k, &s.card_testing, key));
    }
    if at.within(s.repeated_declines.window_secs) {
        out.extend(repeated_declines(h, k, &s.repeated_declines, key));
    }
    if at.within(s.amount_anomaly.window_secs) {
        out.extend(amount_anomaly(h, k, &s.amount_anomaly, key));
    }
    if at.steps <= 1 {
        out.extend(impossible_travel(h, k, &s.impossible_travel, key));
    }
    out
}

/// The terminal rules at event `k`.
fn terminal_rules_at(h: &History, k: usize, at: After, s: &Settings, key: &str) -> Vec<Alert> {
    let mut out = Vec::new();
    if at.within(s.velocity_terminal.window_secs) {
        out.extend(velocity(
            h,
            k,
            &s.velocity_terminal,
            id::VELOCITY_TERMINAL,
            key,
        ));
    }
    if at.within(s.terminal_declines.window_secs) {
        out.extend(terminal_declines(h, k, &s.terminal_declines, key));
    }
    out
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
    /// Older than the watermark by more than the lateness allowance: not judged.
    pub too_late: bool,
    /// Events judged again because this one landed before them (a late arrival).
    pub rejudged: usize,
    /// The record for the state topic (`changelog`): the transaction was filed. `None`: too
    /// late, or the key had it already (a replayed input).
    pub state_record: Option<Vec<u8>>,
}

impl Outcome {
    fn too_late() -> Self {
        Self {
            too_late: true,
            ..Self::default()
        }
    }
}

/// Which rules a partition's keys get: card rules (the validated topic, keyed by card) or
/// terminal rules (the raw topic, keyed by terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feed {
    Card,
    Terminal,
}

impl Feed {
    /// How much history a key keeps: the longest window plus the lateness allowance.
    pub fn horizon_ms(self, s: &Settings) -> i64 {
        match self {
            Feed::Card => s.card_horizon_ms(),
            Feed::Terminal => s.terminal_horizon_ms(),
        }
    }
}

impl Engine {
    /// An empty state at `watermark`: a partition whose keys come from the local store bucket
    /// by bucket ([`Engine::restore`]) as their transactions arrive.
    pub fn resumed(watermark: i64) -> Self {
        Self {
            keys: HashMap::new(),
            watermark: watermark.max(0),
        }
    }

    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// The watermark: the newest transaction time this partition has seen.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Drops keys with nothing inside `horizon_ms` of the watermark; returns how many.
    pub fn evict(&mut self, horizon_ms: i64) -> usize {
        let before = self.keys.len();
        let cutoff = self.watermark - horizon_ms;
        self.keys.retain(|_, h| h.newest() >= cutoff);
        before - self.keys.len()
    }

    /// Files a state record — a transaction judged before and the alerts its judging raised — under
    /// `key` as judging it did, without judging it again: the partition's state as the replica
    /// that wrote the record had it. Records in the order they were written.
    pub fn restore(
        &mut self,
        feed: Feed,
        key: &str,
        record: &[u8],
        s: &Settings,
    ) -> Result<(), changelog::Error> {
        let (event, raised) = changelog::decode(record)?;
        self.watermark = self.watermark.max(event.time);
        let h = self.keys.entry(key.into()).or_default();
        if h.insert(event, feed.horizon_ms(s)).is_some() {
            h.raised.extend(raised);
        }
        Ok(())
    }

    /// Files the transaction under `key`, judges it at its place and judges again each later
    /// event of the key it can change.
    pub fn judge(&mut self, feed: Feed, key: &str, t: &Transaction, s: &Settings) -> Outcome {
        let lateness = s.allowed_lateness_secs * 1000;
        if t.transaction_time < self.watermark - lateness {
            return Outcome::too_late();
        }
        self.watermark = self.watermark.max(t.transaction_time);
        let horizon = feed.horizon_ms(s);
        // How far after an event its effect reaches: the longest window.
        let reach = horizon - lateness;
        let h = self.keys.entry(key.into()).or_default();
        let Some(i) = h.insert(Event::of(t), horizon) else {
            return Outcome::default();
        };
        let mut alerts = Vec::new();
        let mut k = i;
        while k < h.events.len() && (k == i || h.events[k].time <= t.transaction_time + reach) {
            let at = After {
                steps: k - i,
                since_ms: h.events[k].time - t.transaction_time,
            };
            match feed {
                Feed::Card => alerts.extend(card_rules_at(h, k, at, s, key)),
                Feed::Terminal => alerts.extend(terminal_rules_at(h, k, at, s, key)),
            }
            k += 1;
        }
        if let Feed::Card = feed {
            alerts.extend(night_high_risk_mcc(
                t,
                &h.events[i],
                &s.night_high_risk_mcc,
                key,
            ));
        }
        let alerts = h.keep_new(alerts);
        let raised: Vec<Raised> = alerts.iter().map(Raised::of).collect();
        Outcome {
            state_record: Some(changelog::encode(&h.events[i], &raised)),
            alerts,
            too_late: false,
            rejudged: k - i - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posflow_schema::Location;

    impl Engine {
        fn on_card(&mut self, key: &str, t: &Transaction, s: &Settings) -> Outcome {
            self.judge(Feed::Card, key, t, s)
        }

        fn on_terminal(&mut self, key: &str, t: &Transaction, s: &Settings) -> Outcome {
            self.judge(Feed::Terminal, key, t, s)
        }
    }

    const T0: i64 = 1_800_000_000_000; // 2027-01-15T08:00:00Z

    fn tx(id: &str, secs: i64, amount: i64) -> Transaction {
        Transaction {
            transaction_time: T0 + secs * 1000,
            amount_minor: amount,
            location: Some(Location {
                latitude: 52.52,
                longitude: 13.40,
            }),
            ..Transaction::example(id, "T1")
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
        s.allowed_lateness_secs = 60;
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

    /// The mixed stream with two cards' transactions flushed late, newest first (each lands
    /// before events already judged): the stream, its delivery order and the uninterrupted
    /// run's outcome of each delivery.
    fn flushed_late(s: &Settings) -> (Vec<(&'static str, Transaction)>, Vec<usize>, Vec<Outcome>) {
        let stream = mixed_stream();
        let (offline, online): (Vec<usize>, Vec<usize>) =
            (0..stream.len()).partition(|&i| matches!(stream[i].0, "c4" | "c5"));
        let order: Vec<usize> = online.iter().chain(offline.iter().rev()).copied().collect();
        let mut whole = Engine::default();
        let outcomes: Vec<Outcome> = order
            .iter()
            .map(|&i| whole.on_card(stream[i].0, &stream[i].1, s))
            .collect();
        (stream, order, outcomes)
    }

    #[test]
    fn a_state_restored_from_its_records_decides_like_the_original() {
        // The mixed stream with two cards' transactions flushed late, newest first (each lands
        // before events already judged), cut at any point: a replica that restores the state
        // records written before the cut and carries on raises exactly the uninterrupted run's
        // alerts after it — none missed, none raised twice.
        let s = Settings::default();
        let (stream, order, outcomes) = flushed_late(&s);
        assert!(outcomes.iter().all(|o| o.state_record.is_some()));
        let fired = outcomes.iter().filter(|o| !o.alerts.is_empty()).count();
        assert!(fired > 10, "the stream fires: {fired}");
        for cut in [1usize, 97, 300, 450, 520, 599] {
            let mut restored = Engine::default();
            for (&i, o) in order[..cut].iter().zip(&outcomes) {
                let record = o.state_record.as_deref().unwrap();
                restored
                    .restore(Feed::Card, stream[i].0, record, &s)
                    .unwrap();
            }
            assert_eq!(
                restored.watermark(),
                whole_watermark(&stream, &order[..cut])
            );
            for (n, &i) in order.iter().enumerate().skip(cut) {
                let got = restored.on_card(stream[i].0, &stream[i].1, &s);
                assert_eq!(got.alerts, outcomes[n].alerts, "cut at {cut}, record {n}");
                assert_eq!(got.state_record, outcomes[n].state_record);
            }
        }
        // Without the raised alerts in the records, a restored replica raises some again.
        let raised_again = |cut: usize| {
            let mut forgetful = Engine::default();
            for (&i, o) in order[..cut].iter().zip(&outcomes) {
                let (event, _) = changelog::decode(o.state_record.as_deref().unwrap()).unwrap();
                let bare = changelog::encode(&event, &[]);
                forgetful
                    .restore(Feed::Card, stream[i].0, &bare, &s)
                    .unwrap();
            }
            let again: usize = order[cut..]
                .iter()
                .map(|&i| {
                    forgetful
                        .on_card(stream[i].0, &stream[i].1, &s)
                        .alerts
                        .len()
                })
                .sum();
            again
                - outcomes[cut..]
                    .iter()
                    .map(|o| o.alerts.len())
                    .sum::<usize>()
        };
        let doubled: usize = (1..order.len()).step_by(11).map(raised_again).sum();
        assert!(doubled > 0, "forgetting raised alerts changes nothing");
    }

    #[test]
    fn a_state_loaded_key_by_key_from_the_local_store_decides_like_the_original() {
        // As above, but the records before the cut go through the local store (a real redb
        // file), and the resumed replica loads a key's history only when its first transaction
        // after the cut comes: the same alerts, none missed, none twice.
        let s = Settings::default();
        let (stream, order, outcomes) = flushed_late(&s);
        let part = (Feed::Card, 3);
        for cut in [1usize, 300, 520] {
            let path = crate::store::tests::temp_path(&format!("lazy-{cut}"));
            let mut store = crate::store::Store::open(&path, "test").unwrap();
            for (offset, (&i, o)) in order[..cut].iter().zip(&outcomes).enumerate() {
                let record = o.state_record.clone().unwrap();
                store.add(part, offset as i64, stream[i].0.to_string(), record);
            }
            store.sync(|f| f.horizon_ms(&s)).unwrap();
            drop(store);
            // Reopened, as by a restarted replica.
            let mut store = crate::store::Store::open(&path, "test").unwrap();
            let mark = store.mark(part).unwrap().unwrap();
            assert_eq!(mark.next, cut as i64);
            assert_eq!(mark.watermark, whole_watermark(&stream, &order[..cut]));
            let mut resumed = Engine::resumed(mark.watermark);
            for (n, &i) in order.iter().enumerate().skip(cut) {
                let key = stream[i].0;
                for (k, r) in store.read_bucket(part, key).unwrap().unwrap_or_default() {
                    resumed.restore(Feed::Card, &k, &r, &s).unwrap();
                }
                let got = resumed.on_card(key, &stream[i].1, &s);
                assert_eq!(got.alerts, outcomes[n].alerts, "cut at {cut}, record {n}");
                assert_eq!(got.state_record, outcomes[n].state_record);
            }
            drop(store);
            let _ = std::fs::remove_file(&path);
        }
    }

    fn whole_watermark(stream: &[(&str, Transaction)], order: &[usize]) -> i64 {
        order
            .iter()
            .map(|&i| stream[i].1.transaction_time)
            .max()
            .unwrap()
    }

    #[test]
    fn late_events_beyond_the_allowance_are_not_judged_and_idle_keys_are_evicted() {
        let s = Settings::default(); // 2 h
        let mut e = Engine::default();
        let now = 10_000;
        e.on_card("A", &tx("a", now, 100), &s);
        assert!(e.on_card("B", &tx("late", now - 7201, 100), &s).too_late);
        assert!(!e.on_card("B", &tx("ok", now - 7199, 100), &s).too_late);
        assert_eq!(e.keys(), 2);
        e.on_card("C", &tx("c", now + s.card_horizon_ms() / 1000 + 1, 100), &s);
        assert_eq!(e.evict(s.card_horizon_ms()), 2);
        assert_eq!(e.keys(), 1);
    }

    /// Every alert id a run raises, delivering `order` (indices into `stream`).
    fn alert_ids(stream: &[(&str, Transaction)], order: &[usize], s: &Settings) -> Vec<String> {
        let mut e = Engine::default();
        order
            .iter()
            .flat_map(|&i| e.on_card(stream[i].0, &stream[i].1, s).alerts)
            .map(|a| a.alert_id)
            .collect()
    }

    /// Cards with bursts, declines, small amounts, an anomaly and travel, over 90 minutes.
    fn mixed_stream() -> Vec<(&'static str, Transaction)> {
        const CARDS: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];
        let mut stream: Vec<(&str, Transaction)> = (0..600i64)
            .map(|i| {
                let card = CARDS[(i * 7 % 6) as usize];
                let mut t = tx(
                    &format!("m{i:03}"),
                    i * 9 + (i % 4) * 2,
                    if i % 13 == 0 {
                        100
                    } else {
                        1500 + i * 37 % 900
                    },
                );
                if i % 11 == 0 {
                    t.response_code = "05".into();
                }
                if i % 17 == 0 {
                    t.amount_minor = 40_000;
                }
                if i % 23 == 0 {
                    t.location = Some(Location {
                        latitude: 48.86,
                        longitude: 2.35,
                    });
                }
                (card, t)
            })
            .collect();
        stream.sort_by_key(|(_, t)| t.transaction_time);
        stream
    }

    #[test]
    fn a_keys_alerts_do_not_depend_on_other_keys_or_on_lateness_within_the_allowance() {
        let s = Settings::default();
        let stream = mixed_stream();
        let in_order: Vec<usize> = (0..stream.len()).collect();
        let want = alert_ids(&stream, &in_order, &s);
        assert!(want.len() > 10, "the stream fires: {}", want.len());
        // Cards c4 and c5 were offline: their transactions come as one flush after everything
        // else (up to 90 minutes late), each card's own in capture order.
        let (offline, online): (Vec<usize>, Vec<usize>) = in_order
            .iter()
            .partition(|&&i| matches!(stream[i].0, "c4" | "c5"));
        let flushed: Vec<usize> = online.iter().chain(&offline).copied().collect();
        let mut got = alert_ids(&stream, &flushed, &s);
        let mut want_sorted = want.clone();
        want_sorted.sort();
        got.sort();
        assert_eq!(got, want_sorted);
        // Today's 60 s allowance skips the flush: the test can fail.
        let strict = Settings {
            allowed_lateness_secs: 60,
            ..Settings::default()
        };
        assert_ne!(alert_ids(&stream, &flushed, &strict).len(), want.len());
    }

    #[test]
    fn a_late_event_between_judged_ones_adds_what_it_completes_and_misses_nothing() {
        let s = Settings::default();
        let stream = mixed_stream();
        let in_order: Vec<usize> = (0..stream.len()).collect();
        let want: std::collections::BTreeSet<String> =
            alert_ids(&stream, &in_order, &s).into_iter().collect();
        // Every tenth transaction held back an hour: late events land between judged ones of
        // their own card.
        let (late, rest): (Vec<usize>, Vec<usize>) = in_order.iter().partition(|&&i| i % 10 == 3);
        let mut order = Vec::new();
        let mut late = late.into_iter().peekable();
        for i in rest {
            while late.peek().is_some_and(|&l| {
                stream[l].1.transaction_time + 3_600_000 <= stream[i].1.transaction_time
            }) {
                order.push(late.next().unwrap());
            }
            order.push(i);
        }
        order.extend(late);
        let got = alert_ids(&stream, &order, &s);
        let unique: std::collections::BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(unique.len(), got.len(), "an alert raised twice");
        assert!(
            unique.is_superset(&want),
            "missed: {:?}",
            want.difference(&unique)
        );
    }

    #[test]
    fn a_late_transaction_completes_travel_and_velocity_started_on_time() {
        let s = Settings::default();
        let mut e = Engine::default();
        // On time: Berlin at 0 and 40 min, four more 10 s later: five in a minute, no alert.
        let mut on_time = vec![tx("b1", 0, 1000), tx("b2", 2400, 1000)];
        on_time.extend((0..4).map(|i| tx(&format!("v{i}"), 2410 + i, 1000)));
        for t in &on_time {
            assert!(e.on_card("K", t, &s).alerts.is_empty());
        }
        // An hour later, the offline terminal's flush: Paris at 20 min (Berlin–Paris–Berlin
        // in 20-minute legs) and one more sale inside the velocity minute.
        let mut paris = tx("p", 1200, 1000);
        paris.location = Some(Location {
            latitude: 48.86,
            longitude: 2.35,
        });
        paris.terminal_id = "T-offline".into();
        let o = e.on_card("K", &paris, &s);
        let travel: Vec<(Vec<String>, &str)> = o
            .alerts
            .iter()
            .map(|a| (a.evidence.clone(), a.terminal_id.as_str()))
            .collect();
        assert_eq!(
            travel,
            vec![
                (vec!["b1".to_string(), "p".into()], "T-offline"),
                (vec!["p".to_string(), "b2".into()], "T1"),
            ]
        );
        assert_eq!(o.rejudged, 5);
        // The sixth in the minute, late: the burst is complete at v3, where it fires.
        let v = e.on_card("K", &tx("v-late", 2405, 1000), &s);
        let fired: Vec<(&str, Vec<String>)> = v
            .alerts
            .iter()
            .map(|a| (a.rule_id, a.evidence.clone()))
            .collect();
        let ids = ["b2", "v-late", "v0", "v1", "v2", "v3"]
            .map(String::from)
            .to_vec();
        assert_eq!(fired, vec![(id::VELOCITY_CARD, ids)]);
        // The same transaction again changes nothing.
        assert_eq!(
            e.on_card("K", &tx("v-late", 2405, 1000), &s),
            Outcome::default()
        );
    }

    /// A busy terminal near its velocity limit whose transactions reach the stage slightly out
    /// of order (two bridge replicas interleave on the raw topic): one alert per burst, as in
    /// order — not one per reordered evidence set (the chaos run of 2026-12-04 raised 13 times
    /// as many before bursts were deduplicated).
    #[test]
    fn reordering_within_a_burst_raises_no_more_alerts() {
        let s = Settings::default(); // > 120 in 60 s
                                     // Ten minutes of 1.5 to 2.5 a second: the count crosses 120 now and then.
        let stream: Vec<Transaction> = (0..1200i64)
            .map(|i| {
                tx(
                    &format!("t{i:04}"),
                    i * 500 / 1000 + (i / 97 % 3) * 60 * (i % 2),
                    1000,
                )
            })
            .collect();
        let mut sorted = stream.clone();
        sorted.sort_by_key(|t| (t.transaction_time, t.transaction_id.clone()));
        let run = |order: &[Transaction]| {
            let mut e = Engine::default();
            order
                .iter()
                .flat_map(|t| e.on_terminal("T", t, &s).alerts)
                .collect::<Vec<Alert>>()
        };
        let in_order = run(&sorted);
        assert!(!in_order.is_empty(), "the stream crosses the limit");
        // Every seventh neighbour pair swapped: a few hundred milliseconds out of order.
        let mut shuffled = sorted.clone();
        for i in (0..shuffled.len() - 1).step_by(7) {
            shuffled.swap(i, i + 1);
        }
        let reordered = run(&shuffled);
        assert!(
            reordered.len() <= in_order.len(),
            "{} alerts reordered, {} in order",
            reordered.len(),
            in_order.len()
        );
        for a in &in_order {
            assert!(
                reordered
                    .iter()
                    .any(|b| b.rule_id == a.rule_id
                        && (b.anchor_time - a.anchor_time).abs() < 60_000),
                "the burst at {} has no alert when reordered",
                a.anchor_time
            );
        }
    }

    #[test]
    fn alert_ids_depend_on_rule_key_and_evidence_only() {
        let at = Event::of(&tx("x", 0, 1));
        let make = |severity, score, last: &str| {
            alert(
                id::VELOCITY_CARD,
                "K",
                &at,
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
