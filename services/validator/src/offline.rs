//! The offline caps that need state: how many offline transactions, and how much, one terminal
//! has had accepted in one outage (OFFLINE_COUNT_OVER_CAP, OFFLINE_TOTAL_OVER_CAP;
//! docs/validation.md).
//!
//! **An outage** is a terminal's `offline_since` (payload version 2). A terminal that does not
//! know when its link went down sends none; its offline transactions since its last online one
//! are then one outage.
//!
//! **Deterministic under replay.** The raw topic is keyed by terminal, so one replica sees a
//! terminal's transactions in order. An aborted Kafka transaction makes the pipeline hand the
//! same records to the rules again, and they must be judged as before. So an outage keeps the
//! transactions it accepted, by sequence number, and a transaction is judged against those
//! *before* it: its own acceptance, or one after it, never counts against it. A transaction
//! judged again gets the same answer.
//!
//! **Bounded.** An outage holds at most `max_count` entries (only accepted ones are kept), and a
//! terminal at most [`OUTAGES_PER_TERMINAL`] outages, the oldest dropped.
//!
//! **Not yet across a restart.** The state is this replica's memory: after a restart or a
//! rebalance in the middle of a flush, the replica that takes the terminal over counts that
//! outage from there, so up to one more cap's worth can be accepted. The way to carry it is
//! fraud's (docs/fraud.md, "State changelog and recovery"): a state topic mirroring the raw
//! topic's partitions, one record per accepted offline transaction written in the same Kafka
//! transaction, read back when a replica takes a partition over (docs/offline.md).

use crate::policy::OfflineCaps;
use dashmap::DashMap;
use posflow_schema::currency::major_to_minor;
use posflow_schema::{ReasonCode, RejectionReason, Transaction};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Outages remembered per terminal: a terminal flushes one outage before the next normally;
/// a few cover a flush that overlaps a second outage.
pub const OUTAGES_PER_TERMINAL: usize = 4;

#[derive(Debug)]
struct Outage {
    /// `offline_since`; `None`: the run since the terminal's last online transaction.
    since: Option<i64>,
    /// Accepted transactions: (sequence, currency, amount_minor), sorted by sequence.
    accepted: Vec<(i64, String, i64)>,
}

#[derive(Debug, Default)]
pub struct Outages {
    by_terminal: DashMap<String, Vec<Outage>>,
    /// Outages held in all: kept as they come and go, so the gauge walks no map.
    held: AtomicUsize,
}

impl Outages {
    /// Judges an offline transaction that every other rule accepts against its outage's count
    /// and total, and remembers it when it is accepted. Empty: accepted.
    pub fn admit(&self, t: &Transaction, caps: &OfflineCaps) -> Vec<RejectionReason> {
        debug_assert!(t.offline);
        let mut outages = self.by_terminal.entry(t.terminal_id.clone()).or_default();
        let i = match outages.iter().position(|o| o.since == t.offline_since) {
            Some(i) => i,
            None => {
                if outages.len() == OUTAGES_PER_TERMINAL {
                    // The oldest by `offline_since` (a run without one counts as newest).
                    let oldest = (0..outages.len())
                        .min_by_key(|&i| outages[i].since.unwrap_or(i64::MAX))
                        .unwrap_or(0);
                    outages.remove(oldest);
                    self.held.fetch_sub(1, Ordering::Relaxed);
                }
                self.held.fetch_add(1, Ordering::Relaxed);
                outages.push(Outage {
                    since: t.offline_since,
                    accepted: Vec::new(),
                });
                outages.len() - 1
            }
        };
        let outage = &mut outages[i];
        let at = outage.accepted.partition_point(|(s, _, _)| *s < t.sequence);
        if outage
            .accepted
            .get(at)
            .is_some_and(|(s, _, _)| *s == t.sequence)
        {
            return Vec::new(); // accepted before: judged again after an abort
        }
        let before = &outage.accepted[..at];
        let mut out = Vec::new();
        if before.len() >= caps.max_count as usize {
            out.push(RejectionReason {
                code: ReasonCode::OfflineCountOverCap.code().to_string(),
                message: format!(
                    "the outage already has {} accepted offline transactions; the cap is {}",
                    before.len(),
                    caps.max_count
                ),
            });
        }
        if let Some(cap) = major_to_minor(caps.max_total_major, &t.currency) {
            let total = before
                .iter()
                .filter(|(_, c, _)| *c == t.currency)
                .fold(0i64, |sum, (_, _, a)| sum.saturating_add(*a));
            if total.saturating_add(t.amount_minor) > cap {
                out.push(RejectionReason {
                    code: ReasonCode::OfflineTotalOverCap.code().to_string(),
                    message: format!(
                        "the outage's offline total in {} would be {}; the cap is {cap}",
                        t.currency,
                        total.saturating_add(t.amount_minor)
                    ),
                });
            }
        }
        if out.is_empty() {
            outage
                .accepted
                .insert(at, (t.sequence, t.currency.clone(), t.amount_minor));
        }
        out
    }

    /// An online transaction: the terminal's link is back, so its run of offline transactions
    /// without `offline_since` is over (outages named by `offline_since` stay: their flush may
    /// still be arriving behind new online sales).
    pub fn online(&self, terminal_id: &str) {
        if let Some(mut outages) = self.by_terminal.get_mut(terminal_id) {
            let before = outages.len();
            outages.retain(|o| o.since.is_some());
            self.held
                .fetch_sub(before - outages.len(), Ordering::Relaxed);
        }
    }

    /// Outages held, for the gauge.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(seq: i64, since: Option<i64>, amount: i64) -> Transaction {
        let mut t = Transaction::example(&format!("tx-{seq}"), "T0001");
        t.sequence = seq;
        t.offline = true;
        t.offline_since = since;
        t.amount_minor = amount;
        t.currency = "EUR".into();
        t
    }

    fn codes(r: Vec<RejectionReason>) -> Vec<String> {
        r.into_iter().map(|r| r.code).collect()
    }

    const CAPS: OfflineCaps = OfflineCaps {
        allowed: true,
        max_amount_major: 250,
        max_age_ms: 3_600_000,
        max_count: 3,
        max_total_major: 100,
    };

    #[test]
    fn count_and_total_per_outage_and_the_same_answer_when_judged_again() {
        let o = Outages::default();
        let since = Some(1_000);
        let none: &[&str] = &[];
        let total: &[&str] = &["OFFLINE_TOTAL_OVER_CAP"];
        // (sequence, outage, amount, codes)
        let judged: [(i64, Option<i64>, i64, &[&str]); 9] = [
            // 40.00 + 40.00 accepted; 30.00 would make 110.00 > 100.00; 20.00 fits (3rd).
            (1, since, 4000, none),
            (2, since, 4000, none),
            (3, since, 3000, total),
            (4, since, 2000, none),
            // A 4th: over the count (and the total).
            (
                5,
                since,
                100,
                &["OFFLINE_COUNT_OVER_CAP", "OFFLINE_TOTAL_OVER_CAP"],
            ),
            // An aborted transaction's records judged again: the same answers.
            (2, since, 4000, none),
            (3, since, 3000, total),
            (4, since, 2000, none),
            // Another outage of the same terminal counts from zero.
            (6, Some(9_000), 9000, none),
        ];
        for (seq, outage, amount, want) in judged {
            assert_eq!(
                codes(o.admit(&tx(seq, outage, amount), &CAPS)),
                want,
                "{seq}"
            );
        }
        assert_eq!(o.held(), 2);
    }

    #[test]
    fn a_run_without_offline_since_ends_with_an_online_transaction() {
        let o = Outages::default();
        let caps = OfflineCaps {
            max_count: 1,
            ..CAPS
        };
        assert!(o.admit(&tx(1, None, 100), &caps).is_empty());
        assert_eq!(
            codes(o.admit(&tx(2, None, 100), &caps)),
            ["OFFLINE_COUNT_OVER_CAP"]
        );
        assert!(o.admit(&tx(3, Some(5), 100), &caps).is_empty());
        o.online("T0001");
        assert_eq!(o.held(), 1, "the named outage stays");
        assert!(o.admit(&tx(4, None, 100), &caps).is_empty());
    }

    #[test]
    fn a_terminal_keeps_its_newest_outages() {
        let o = Outages::default();
        for since in 0..10 {
            assert!(o.admit(&tx(since, Some(since), 100), &CAPS).is_empty());
        }
        assert_eq!(o.held(), OUTAGES_PER_TERMINAL);
    }
}
