//! Liveness and readiness. Ready: the stage's connections are up and it can take work.
//! Live: the process is not wedged — a stage marks itself failed when it stops making progress.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
