//! Gaps in a terminal's sequence numbers: a sign of lost transactions upstream (a terminal that
//! dropped its queue, a broker that lost a message). Reported — a metric and a log event —
//! never a rejection: the transactions that did arrive are still good.
//!
//! The raw topic is keyed by terminal, so one replica sees all of a terminal's transactions in
//! order and the last number per terminal can live in this replica's memory. After a restart or
//! a rebalance the first transaction of a terminal sets its baseline again (a gap across that
//! moment is not reported). The map holds one small entry per terminal that sent anything, which
//! is bounded by the fleet's size.

use dashmap::DashMap;

/// What one transaction's sequence number says about its terminal's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// The terminal's first transaction this replica has seen (its baseline).
    First,
    /// The next one.
    InOrder,
    /// `missing` numbers were skipped before this one.
    Gap { expected: i64, missing: i64 },
    /// At or below the last one seen: a resend or a reordering, nothing missing.
    Behind { last: i64 },
}

#[derive(Debug, Default)]
pub struct Tracker {
    last: DashMap<String, i64>,
}

impl Tracker {
    pub fn observe(&self, terminal_id: &str, sequence: i64) -> Sequence {
        let Some(mut last) = self.last.get_mut(terminal_id) else {
            self.last.insert(terminal_id.to_string(), sequence);
            return Sequence::First;
        };
        let prev = *last;
        if sequence <= prev {
            return Sequence::Behind { last: prev };
        }
        *last = sequence;
        if sequence == prev + 1 {
            Sequence::InOrder
        } else {
            Sequence::Gap {
                expected: prev + 1,
                missing: sequence - prev - 1,
            }
        }
    }

    pub fn terminals(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_counted_resends_are_not() {
        let t = Tracker::default();
        assert_eq!(t.observe("T1", 5), Sequence::First);
        assert_eq!(t.observe("T1", 6), Sequence::InOrder);
        assert_eq!(
            t.observe("T1", 9),
            Sequence::Gap {
                expected: 7,
                missing: 2
            }
        );
        assert_eq!(t.observe("T1", 8), Sequence::Behind { last: 9 });
        assert_eq!(t.observe("T1", 10), Sequence::InOrder);
        assert_eq!(t.observe("T2", 1), Sequence::First);
        assert_eq!(t.terminals(), 2);
    }
}
