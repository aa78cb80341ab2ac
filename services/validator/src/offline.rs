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
//! **Across a restart** (docs/validation.md, "Offline capture"). Each change to a terminal's
//! outages — an accepted offline transaction, or an online one that ends a run without
//! `offline_since` — is also a small record for the outages state topic
//! (`pos.validator.state.outages`, partition for partition with the raw topic), produced in the
//! same Kafka transaction as the answer it belongs to. A replica that takes a raw partition over
//! reads that partition's records back ([`Outages::restore`]) before it judges the partition's
//! first transaction, so a flush that straddles a restart or a rebalance is held to one cap.
//! Records are idempotent: one written again (a batch judged again after an abort) changes
//! nothing.

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

/// One terminal's outages, and the raw partition they came from (dropped with it).
#[derive(Debug)]
struct Terminal {
    partition: i32,
    outages: Vec<Outage>,
    /// The sequence of the online transaction that last ended a run without `offline_since`:
    /// judged again (after an abort), it writes its record again, as the first one was lost
    /// with the aborted transaction.
    run_ended_by: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Outages {
    by_terminal: DashMap<String, Terminal>,
    /// Outages held in all: kept as they come and go, so the gauge walks no map.
    held: AtomicUsize,
}

/// An offline transaction's answer from the outage caps.
#[derive(Debug, Default)]
pub struct Admitted {
    /// Empty: accepted.
    pub reasons: Vec<RejectionReason>,
    /// The state record of an acceptance, for the outages state topic.
    pub record: Option<Vec<u8>>,
}

impl Outages {
    /// Judges an offline transaction that every other rule accepts against its outage's count
    /// and total, and remembers it when it is accepted.
    pub fn admit(&self, partition: i32, t: &Transaction, caps: &OfflineCaps) -> Admitted {
        debug_assert!(t.offline);
        let mut terminal = self.terminal(partition, &t.terminal_id);
        let outage = self.outage(&mut terminal, t.offline_since);
        let record = || {
            Some(record::accepted(
                t.offline_since,
                t.sequence,
                &t.currency,
                t.amount_minor,
            ))
        };
        let at = outage.accepted.partition_point(|(s, _, _)| *s < t.sequence);
        if outage
            .accepted
            .get(at)
            .is_some_and(|(s, _, _)| *s == t.sequence)
        {
            // Accepted before: judged again after an abort, which also lost its record.
            return Admitted {
                reasons: Vec::new(),
                record: record(),
            };
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
        if !out.is_empty() {
            return Admitted {
                reasons: out,
                record: None,
            };
        }
        outage
            .accepted
            .insert(at, (t.sequence, t.currency.clone(), t.amount_minor));
        Admitted {
            reasons: out,
            record: record(),
        }
    }

    /// An online transaction: the terminal's link is back, so its run of offline transactions
    /// without `offline_since` is over (outages named by `offline_since` stay: their flush may
    /// still be arriving behind new online sales). The state record when it ended a run.
    pub fn online(&self, terminal_id: &str, sequence: i64) -> Option<Vec<u8>> {
        let mut terminal = self.by_terminal.get_mut(terminal_id)?;
        if self.end_run(&mut terminal, sequence) || terminal.run_ended_by == Some(sequence) {
            Some(record::online(sequence))
        } else {
            None
        }
    }

    /// Applies a record of the outages state topic, read back from `partition`.
    pub fn restore(
        &self,
        partition: i32,
        terminal_id: &str,
        b: &[u8],
    ) -> Result<(), record::Error> {
        match record::decode(b)? {
            record::Change::Accepted {
                since,
                sequence,
                currency,
                amount_minor,
            } => {
                let mut terminal = self.terminal(partition, terminal_id);
                let outage = self.outage(&mut terminal, since);
                let at = outage.accepted.partition_point(|(s, _, _)| *s < sequence);
                if outage
                    .accepted
                    .get(at)
                    .is_none_or(|(s, _, _)| *s != sequence)
                {
                    outage
                        .accepted
                        .insert(at, (sequence, currency, amount_minor));
                }
            }
            record::Change::Online { sequence } => {
                if let Some(mut terminal) = self.by_terminal.get_mut(terminal_id) {
                    self.end_run(&mut terminal, sequence);
                }
            }
        }
        Ok(())
    }

    /// Forgets the outages of terminals on `partition` (revoked from this replica).
    pub fn drop_partition(&self, partition: i32) {
        self.by_terminal.retain(|_, t| {
            let keep = t.partition != partition;
            if !keep {
                self.held.fetch_sub(t.outages.len(), Ordering::Relaxed);
            }
            keep
        });
    }

    /// Outages held, for the gauge.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn terminal(
        &self,
        partition: i32,
        terminal_id: &str,
    ) -> dashmap::mapref::one::RefMut<'_, String, Terminal> {
        let mut t = self
            .by_terminal
            .entry(terminal_id.to_string())
            .or_insert_with(|| Terminal {
                partition,
                outages: Vec::new(),
                run_ended_by: None,
            });
        // The raw topic is keyed by terminal: a terminal moves partition only if the topic's
        // partition count changes, and then its state follows it.
        t.partition = partition;
        t
    }

    /// The outage named `since`, added (the oldest dropped past [`OUTAGES_PER_TERMINAL`]).
    fn outage<'a>(&self, terminal: &'a mut Terminal, since: Option<i64>) -> &'a mut Outage {
        let outages = &mut terminal.outages;
        let i = match outages.iter().position(|o| o.since == since) {
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
                    since,
                    accepted: Vec::new(),
                });
                outages.len() - 1
            }
        };
        &mut outages[i]
    }

    /// Drops the run without `offline_since`; whether there was one.
    fn end_run(&self, terminal: &mut Terminal, sequence: i64) -> bool {
        let before = terminal.outages.len();
        terminal.outages.retain(|o| o.since.is_some());
        let ended = before - terminal.outages.len();
        if ended > 0 {
            self.held.fetch_sub(ended, Ordering::Relaxed);
            terminal.run_ended_by = Some(sequence);
        }
        ended > 0
    }
}

/// The outages state topic's record format. Private to the validator, so not Avro: a fixed
/// little-endian layout, first byte the format version (a replica refuses one it does not know
/// rather than guess). Keyed by terminal id.
///
/// ```text
/// u8 version (1) · u8 change
/// change 1, accepted: u8 named · i64 offline_since (0 unless named) · i64 sequence
///                     · i64 amount_minor · u8 length · currency (UTF-8)
/// change 2, online:   i64 sequence (the online transaction that ended a run)
/// ```
pub mod record {
    const VERSION: u8 = 1;

    /// Why a state record could not be read.
    #[derive(Debug, thiserror::Error, PartialEq)]
    pub enum Error {
        #[error(
            "outage record format {0} is not one this replica knows (1): a newer release wrote it"
        )]
        Version(u8),
        #[error("outage record cut short or malformed")]
        Malformed,
    }

    /// What one record says changed.
    #[derive(Debug, PartialEq)]
    pub enum Change {
        Accepted {
            since: Option<i64>,
            sequence: i64,
            currency: String,
            amount_minor: i64,
        },
        Online {
            sequence: i64,
        },
    }

    pub(super) fn accepted(
        since: Option<i64>,
        sequence: i64,
        currency: &str,
        amount: i64,
    ) -> Vec<u8> {
        let currency = &currency.as_bytes()[..currency.len().min(255)];
        let mut b = Vec::with_capacity(28 + currency.len());
        b.extend_from_slice(&[VERSION, 1, u8::from(since.is_some())]);
        b.extend_from_slice(&since.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&sequence.to_le_bytes());
        b.extend_from_slice(&amount.to_le_bytes());
        b.push(currency.len() as u8);
        b.extend_from_slice(currency);
        b
    }

    pub(super) fn online(sequence: i64) -> Vec<u8> {
        let mut b = vec![VERSION, 2];
        b.extend_from_slice(&sequence.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Change, Error> {
        let (&version, rest) = b.split_first().ok_or(Error::Malformed)?;
        if version != VERSION {
            return Err(Error::Version(version));
        }
        let i64_at = |at: usize| -> Result<i64, Error> {
            rest.get(at..at + 8)
                .map(|s| i64::from_le_bytes(s.try_into().expect("8 bytes")))
                .ok_or(Error::Malformed)
        };
        match rest.first() {
            Some(1) => {
                let named = *rest.get(1).ok_or(Error::Malformed)? != 0;
                let (since, sequence, amount_minor) = (i64_at(2)?, i64_at(10)?, i64_at(18)?);
                let len = usize::from(*rest.get(26).ok_or(Error::Malformed)?);
                let currency = rest.get(27..27 + len).ok_or(Error::Malformed)?;
                if rest.len() != 27 + len {
                    return Err(Error::Malformed);
                }
                Ok(Change::Accepted {
                    since: named.then_some(since),
                    sequence,
                    currency: String::from_utf8(currency.to_vec()).map_err(|_| Error::Malformed)?,
                    amount_minor,
                })
            }
            Some(2) if rest.len() == 9 => Ok(Change::Online {
                sequence: i64_at(1)?,
            }),
            _ => Err(Error::Malformed),
        }
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
                codes(o.admit(0, &tx(seq, outage, amount), &CAPS).reasons),
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
        assert!(o.admit(0, &tx(1, None, 100), &caps).reasons.is_empty());
        assert_eq!(
            codes(o.admit(0, &tx(2, None, 100), &caps).reasons),
            ["OFFLINE_COUNT_OVER_CAP"]
        );
        assert!(o.admit(0, &tx(3, Some(5), 100), &caps).reasons.is_empty());
        assert!(o.online("T0001", 4).is_some(), "it ended a run");
        assert_eq!(o.held(), 1, "the named outage stays");
        assert!(
            o.online("T0001", 4).is_some(),
            "judged again: its record again"
        );
        assert_eq!(o.online("T0001", 5), None, "nothing to end");
        assert!(o.admit(0, &tx(6, None, 100), &caps).reasons.is_empty());
    }

    #[test]
    fn a_terminal_keeps_its_newest_outages() {
        let o = Outages::default();
        for since in 0..10 {
            assert!(o
                .admit(0, &tx(since, Some(since), 100), &CAPS)
                .reasons
                .is_empty());
        }
        assert_eq!(o.held(), OUTAGES_PER_TERMINAL);
    }

    /// `(partition, sequence, outage, amount)`; an online transaction when `outage` is `Err(())`.
    type Step = (i32, i64, Result<Option<i64>, ()>, i64);

    /// Each step's codes, and the state records written with their partitions.
    type Ran = (Vec<Vec<String>>, Vec<(i32, Vec<u8>)>);

    /// Judges `steps` in order.
    fn run(o: &Outages, caps: &OfflineCaps, steps: &[Step]) -> Ran {
        let mut answers = Vec::new();
        let mut records = Vec::new();
        for &(partition, seq, outage, amount) in steps {
            match outage {
                Ok(since) => {
                    let a = o.admit(partition, &tx(seq, since, amount), caps);
                    answers.push(codes(a.reasons));
                    records.extend(a.record.map(|r| (partition, r)));
                }
                Err(()) => {
                    answers.push(Vec::new());
                    records.extend(o.online("T0001", seq).map(|r| (partition, r)));
                }
            }
        }
        (answers, records)
    }

    #[test]
    fn a_replica_restored_from_the_records_answers_like_the_one_that_wrote_them() {
        let caps = OfflineCaps {
            max_count: 2,
            ..CAPS
        };
        let named = Ok(Some(1_000));
        let first: Vec<Step> = vec![
            (3, 1, named, 7000),
            (3, 2, Ok(None), 100),
            (3, 3, Err(()), 0), // online: ends the run without offline_since
            (3, 4, Ok(None), 200),
        ];
        let then = [
            (3, 5, named, 4000),   // 70.00 + 40.00 > 100.00
            (3, 6, named, 500),    // second of the named outage
            (3, 7, named, 100),    // third: over the count
            (3, 8, Ok(None), 300), // second of the run after the online one
            (3, 9, Ok(None), 300), // third of it: over the count
        ];
        let writer = Outages::default();
        let (_, records) = run(&writer, &caps, &first);
        assert_eq!(records.len(), 4, "three acceptances and the run's end");
        let (want, _) = run(&writer, &caps, &then);
        assert_eq!(
            want,
            [
                vec!["OFFLINE_TOTAL_OVER_CAP"],
                vec![],
                vec!["OFFLINE_COUNT_OVER_CAP"],
                vec![],
                vec!["OFFLINE_COUNT_OVER_CAP"],
            ]
        );

        let restored = Outages::default();
        for (partition, r) in &records {
            restored.restore(*partition, "T0001", r).unwrap();
        }
        // Each record twice (written again after an abort): the same state.
        for (partition, r) in &records {
            restored.restore(*partition, "T0001", r).unwrap();
        }
        assert_eq!(restored.held(), 2);
        assert_eq!(run(&restored, &caps, &then).0, want);

        // Without the records, a fresh replica would accept what the writer refused.
        let fresh = Outages::default();
        assert_ne!(run(&fresh, &caps, &then).0, want);

        // A revoked partition's terminals are forgotten.
        restored.drop_partition(3);
        assert_eq!(restored.held(), 0);
    }

    #[test]
    fn records_read_back_as_written_and_unknown_ones_are_refused() {
        for since in [None, Some(1_700_000_000_000)] {
            let b = record::accepted(since, 42, "EUR", -7);
            assert_eq!(
                record::decode(&b),
                Ok(record::Change::Accepted {
                    since,
                    sequence: 42,
                    currency: "EUR".into(),
                    amount_minor: -7
                })
            );
            assert_eq!(
                record::decode(&b[..b.len() - 1]),
                Err(record::Error::Malformed)
            );
        }
        assert_eq!(
            record::decode(&record::online(9)),
            Ok(record::Change::Online { sequence: 9 })
        );
        let mut newer = record::online(9);
        newer[0] = 2;
        assert_eq!(record::decode(&newer), Err(record::Error::Version(2)));
        assert_eq!(record::decode(&[]), Err(record::Error::Malformed));
    }
}
