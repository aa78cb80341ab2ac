//! Liveness and readiness. Ready: the stage's connections are up and it can take work.
//! Live: the process is not wedged — a stage marks itself failed when it stops making progress.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    /// Set by a Kafka connectivity watch: not ready while the brokers cannot be reached.
    kafka_down: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.kafka_down.load(Ordering::Relaxed)
            && !self.is_failed()
    }
    pub fn set_kafka_reachable(&self, reachable: bool) {
        self.kafka_down.store(!reachable, Ordering::Relaxed);
    }
    /// Liveness fails from now on: the orchestrator restarts the process.
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Progress as a stall watchdog sees it: a count that grows with every unit of work finished,
/// and how many units wait. Stalled: something waits and nothing has finished for `stall`.
/// Pure, so it is tested without clocks; [`watch_progress`] drives it.
pub struct StallClock {
    stall: Duration,
    finished: u64,
    since: Instant,
}

impl StallClock {
    pub fn new(stall: Duration, now: Instant) -> Self {
        Self {
            stall,
            finished: 0,
            since: now,
        }
    }

    /// Records a sample; the time without progress while work waits, once it exceeds `stall`.
    pub fn observe(&mut self, now: Instant, finished: u64, waiting: usize) -> Option<Duration> {
        if finished != self.finished || waiting == 0 {
            // Progress, or nothing to do (idle is not stalled): the clock starts again.
            self.finished = finished;
            self.since = now;
            return None;
        }
        let stuck = now.saturating_duration_since(self.since);
        (stuck > self.stall).then_some(stuck)
    }
}

/// Liveness that the loop it watches cannot block: an OS thread of its own (not a task of the
/// async runtime, which a wedged stage may be starving) samples `finished` and `waiting` every
/// second and fails liveness once work has waited `stall` without anything finishing. Both
/// closures must be cheap and must not block (atomics, a short lock).
pub fn watch_progress<F, W>(health: Health, stall: Duration, finished: F, waiting: W)
where
    F: Fn() -> u64 + Send + 'static,
    W: Fn() -> usize + Send + 'static,
{
    let spawned = std::thread::Builder::new()
        .name("stall-watch".into())
        .spawn(move || {
            let mut clock = StallClock::new(stall, Instant::now());
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let waiting = waiting();
                if let Some(stuck) = clock.observe(Instant::now(), finished(), waiting) {
                    if !health.is_failed() {
                        tracing::error!(
                            waiting,
                            stalled_s = stuck.as_secs(),
                            "no progress; failing liveness"
                        );
                        health.set_failed();
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the stall watchdog");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_only_when_work_waits_and_nothing_finishes() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut c = StallClock::new(Duration::from_secs(10), t0);
        // Idle for a long time: not stalled, and the clock starts when work appears.
        assert_eq!(c.observe(s(50), 0, 0), None);
        assert_eq!(c.observe(s(55), 0, 3), None);
        assert_eq!(c.observe(s(60), 0, 3), None);
        // Progress resets the clock.
        assert_eq!(c.observe(s(64), 2, 3), None);
        assert_eq!(c.observe(s(74), 2, 3), None);
        assert_eq!(c.observe(s(75), 2, 3), Some(Duration::from_secs(11)));
        assert_eq!(c.observe(s(80), 2, 3), Some(Duration::from_secs(16)));
        // Finishing again ends the stall.
        assert_eq!(c.observe(s(81), 3, 1), None);
    }
}
