//! Exponential backoff with jitter, for every "retry until it works or we are told to stop"
//! loop (Kafka sends, registry look-ups, database writes, reconnects).

use crate::Shutdown;
use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            next: first,
            max,
        }
    }

    /// 200 ms doubling to 10 s: the default for waiting out an outage.
    pub fn outage() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(10))
    }

    /// The next wait: a random point in [d/2, d] ("equal jitter", so replicas that failed
    /// together do not retry together), then doubles d up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let ms = self.next.as_millis() as u64;
        self.next = (self.next * 2).min(self.max);
        Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms.max(1)))
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the next delay; `false` if shutdown came first.
    pub async fn wait(&mut self, shutdown: &Shutdown) -> bool {
        let d = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = shutdown.wait() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        for (lo, hi) in [(50, 100), (100, 200), (200, 400), (200, 400)] {
            let d = b.next_delay().as_millis() as u64;
            assert!((lo..=hi).contains(&d), "{d} not in {lo}..={hi}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn wait_stops_at_shutdown() {
        let s = Shutdown::new();
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        s.trigger();
        assert!(!b.wait(&s).await);
    }
}
