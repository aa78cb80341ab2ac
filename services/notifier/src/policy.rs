//! When to try a delivery again, and when to stop trying a merchant for a while. Pure logic,
//! unit-tested; the dispatcher applies it.

use rand::Rng;
use std::time::{Duration, Instant, SystemTime};

/// What a merchant's endpoint (webhook or SMTP server) made of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Delivered,
    /// Worth another attempt: 5xx, 408, 429, a timeout, a connection failure, an SMTP 4xx.
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Refused for good: any other HTTP 4xx (or 3xx: redirects are not followed), an SMTP 5xx.
    Refused {
        error: String,
    },
}

/// Exponential backoff with jitter, bounded attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The delay after the first failed attempt (before jitter).
    pub base: Duration,
    pub max_delay: Duration,
    /// Attempts in all, the first included; then the delivery is failed and dead-lettered.
    pub max_attempts: u32,
}

/// Retry-After is honoured up to this, even past `max_delay`: a merchant asking for an hour's
/// pause gets it, one asking for a week does not stall its outbox for a week.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

impl RetryPolicy {
    /// The delay before attempt `failed + 1`, `failed` >= 1 attempts having failed: base *
    /// 2^(failed-1), capped, then "equal jitter" (uniform in [d/2, d]) so merchants failing
    /// together do not retry in lockstep. A server's Retry-After is a floor.
    pub fn delay(
        &self,
        failed: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << failed.saturating_sub(1).min(20))
            .min(self.max_delay);
        let jittered = exp / 2 + exp.mul_f64(rng.gen::<f64>() / 2.0);
        match retry_after {
            Some(r) => jittered.max(r.min(RETRY_AFTER_CAP)),
            None => jittered,
        }
    }

    pub fn exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_attempts
    }
}

/// Retry-After: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A per-merchant circuit breaker. Closed: deliveries go. After `threshold` consecutive failed
/// attempts it opens: the merchant's deliveries stay in the outbox, untouched and not counted
/// as attempts, for `cooldown`. Then one probe goes (half-open): success closes it, failure
/// opens it for another cooldown.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// The probe is out.
    HalfOpen,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            failures: 0,
            state: State::Closed,
        }
    }

    /// Whether a delivery may go now; in half-open state only the first asking gets to.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    pub fn is_open(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => false,
            State::Open { until } => now < until,
            State::HalfOpen => true,
        }
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.state = State::Closed;
    }

    /// Returns true when this failure opened the circuit.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures += 1;
        let open = self.state == State::HalfOpen || self.failures >= self.threshold;
        if open {
            self.state = State::Open {
                until: now + self.cooldown,
            };
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_attempts: 8,
        };
        let mut rng = StdRng::seed_from_u64(7);
        for (failed, full) in [(1, 1), (2, 2), (3, 4), (4, 8), (7, 60), (30, 60)] {
            for _ in 0..200 {
                let d = p.delay(failed, None, &mut rng);
                let full = Duration::from_secs(full);
                assert!(d >= full / 2 && d <= full, "failed {failed}: {d:?}");
            }
        }
        // Retry-After is a floor, capped at an hour.
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(120)), &mut rng),
            Duration::from_secs(120)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(86_400)), &mut rng),
            Duration::from_secs(3600)
        );
        assert!(!p.exhausted(7) && p.exhausted(8));
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sat, 28 Nov 2026 10:00:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after(" 30 ", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 10:02:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        assert!(b.allow(t0));
        assert!(!b.failure(t0) && !b.failure(t0));
        assert!(b.failure(t0), "third consecutive failure opens");
        assert!(!b.allow(t0 + Duration::from_secs(9)));
        assert!(b.is_open(t0 + Duration::from_secs(9)));
        // Half-open: one probe only.
        assert!(b.allow(t0 + Duration::from_secs(10)));
        assert!(!b.allow(t0 + Duration::from_secs(10)));
        assert!(
            b.failure(t0 + Duration::from_secs(10)),
            "a failed probe reopens"
        );
        assert!(!b.allow(t0 + Duration::from_secs(19)));
        assert!(b.allow(t0 + Duration::from_secs(20)));
        b.success();
        assert!(!b.is_open(t0 + Duration::from_secs(20)));
        assert!(
            !b.failure(t0 + Duration::from_secs(20)),
            "the count starts again"
        );
    }
}
