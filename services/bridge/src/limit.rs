//! Per-terminal rate limiting, GCRA. A terminal that sends faster than its quota is either
//! refused (`reject`: governor's keyed limiter on a dashmap; dead-lettered as RATE_LIMITED and
//! answered "rejected", so the terminal retries later) or slowed down (`delay`: each message is
//! given the next free slot of its terminal and waits for it before it is produced). Delay needs
//! its own schedule because governor cannot reserve a future slot: without reservation, every
//! waiting message would wake at the same moment, and their order could change.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// What happens to a terminal's message over its quota (`--rate-limit-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OverLimit {
    Delay,
    Reject,
}

/// What the limiter says of one message: go now, wait this long, or refuse.
#[derive(Debug, PartialEq, Eq)]
pub enum Pace {
    Pass,
    Delay(Duration),
    Reject,
}

pub struct TerminalLimiter {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    policy: OverLimit,
    /// Delay policy: the emission interval, the burst tolerance, and each terminal's
    /// theoretical arrival time (GCRA's TAT).
    interval: Duration,
    tolerance: Duration,
    schedule: HashMap<String, Instant>,
}

impl TerminalLimiter {
    /// `per_second` 0 turns limiting off.
    pub fn new(per_second: u32, burst: u32, policy: OverLimit) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(1)).expect("max(1)");
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let interval = Duration::from_secs(1) / per_second.max(1);
        let tolerance = interval * burst.max(1).saturating_sub(1);
        Self {
            limiter,
            policy,
            interval,
            tolerance,
            schedule: HashMap::new(),
        }
    }

    pub fn check(&mut self, terminal: &str) -> Pace {
        let Some(l) = &self.limiter else {
            return Pace::Pass;
        };
        match self.policy {
            OverLimit::Reject => match l.check_key(&terminal.to_string()) {
                Ok(()) => Pace::Pass,
                Err(_) => Pace::Reject,
            },
            OverLimit::Delay => {
                let now = Instant::now();
                let tat = self.schedule.get(terminal).copied().unwrap_or(now).max(now);
                let start = tat.checked_sub(self.tolerance).unwrap_or(now).max(now);
                self.schedule
                    .insert(terminal.to_string(), tat + self.interval);
                match start.duration_since(now) {
                    d if d.is_zero() => Pace::Pass,
                    d => Pace::Delay(d),
                }
            }
        }
    }

    /// Forgets terminals whose quota has fully recovered (bounds memory by active terminals).
    pub fn retain_recent(&mut self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
        }
        let now = Instant::now();
        self.schedule.retain(|_, tat| *tat > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_lets_the_burst_through_per_terminal() {
        let mut r = TerminalLimiter::new(1, 3, OverLimit::Reject);
        assert_eq!(
            (0..3)
                .map(|_| r.check("T1"))
                .filter(|v| *v == Pace::Pass)
                .count(),
            3
        );
        assert_eq!(r.check("T1"), Pace::Reject);
        assert_eq!(
            r.check("T2"),
            Pace::Pass,
            "another terminal has its own quota"
        );
        assert_eq!(
            TerminalLimiter::new(0, 0, OverLimit::Reject).check("T1"),
            Pace::Pass
        );
    }

    #[test]
    fn delay_gives_each_message_a_later_slot() {
        // 2 at once, then one slot per 100 ms, each later than the one before.
        let mut d = TerminalLimiter::new(10, 2, OverLimit::Delay);
        assert_eq!((d.check("T1"), d.check("T1")), (Pace::Pass, Pace::Pass));
        let waits: Vec<Duration> = (0..3)
            .map(|_| match d.check("T1") {
                Pace::Delay(w) => w,
                v => panic!("{v:?}"),
            })
            .collect();
        assert!(
            waits[0] > Duration::from_millis(50) && waits[0] <= Duration::from_millis(100),
            "{waits:?}"
        );
        assert!(waits[1] > waits[0] + Duration::from_millis(90), "{waits:?}");
        assert!(waits[2] > waits[1] + Duration::from_millis(90), "{waits:?}");
        assert_eq!(d.check("T2"), Pace::Pass);
    }
}
