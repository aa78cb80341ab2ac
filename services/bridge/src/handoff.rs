//! The hand-off from the task that reads the MQTT socket to the pipeline.
//!
//! The reading task never waits on the pipeline: [`Sender::push`] returns at once. The
//! hand-off is bounded instead by a *read gate* (a patch to rumqttc, vendor/rumqttc): once
//! `high` messages wait, the gate closes and the MQTT event loop stops reading the socket —
//! while it still sends our PUBACKs and pings — until the pipeline has taken them down to
//! `high / 2`. Back-pressure therefore comes from not reading, never from blocking the task
//! that must also deliver our acknowledgements (the deadlock of issue 24). The broker's own
//! flow control (our receive maximum) normally keeps the hand-off far below `high`; the gate is
//! for a broker that ignores it (Mosquitto 2.0 resuming a session with a backlog).
//!
//! What can wait here at most: `high` plus what the event loop had already read when the gate
//! closed (one `readb` batch of at most 10 packets, and the rest of a partly read frame).

use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};

struct Shared {
    /// Messages pushed and not yet taken. Under the lock with the gate's state, so a push and
    /// a take racing each other cannot leave the gate closed over an emptying queue.
    waiting: Mutex<usize>,
    gate: watch::Sender<bool>,
    high: usize,
}

impl Shared {
    fn waiting(&self) -> MutexGuard<'_, usize> {
        // A panic while holding this lock leaves a plain count behind: still valid.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The reading task's end.
pub struct Sender<T> {
    tx: mpsc::UnboundedSender<T>,
    shared: Arc<Shared>,
}

/// The pipeline's end.
pub struct Receiver<T> {
    rx: mpsc::UnboundedReceiver<T>,
    shared: Arc<Shared>,
}

/// How many messages wait in the hand-off, readable from anywhere (the liveness watchdog).
#[derive(Clone)]
pub struct Waiting(Arc<Shared>);

impl Waiting {
    pub fn get(&self) -> usize {
        *self.0.waiting()
    }
}

/// A hand-off that closes the returned gate at `high` waiting messages and opens it again at
/// `high / 2`. Give the gate to `EventLoop::set_read_gate`.
pub fn channel<T>(high: usize) -> (Sender<T>, Receiver<T>, watch::Receiver<bool>) {
    assert!(high >= 2, "a hand-off needs room for at least two messages");
    let (tx, rx) = mpsc::unbounded_channel();
    let (gate, gate_rx) = watch::channel(true);
    let shared = Arc::new(Shared {
        waiting: Mutex::new(0),
        gate,
        high,
    });
    (
        Sender {
            tx,
            shared: shared.clone(),
        },
        Receiver { rx, shared },
        gate_rx,
    )
}

/// What a push left behind.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    /// How many wait now, this one included.
    pub waiting: usize,
    /// This push closed the read gate (it was open).
    pub closed_gate: bool,
}

/// The pipeline has gone: nothing more can be handed off.
#[derive(Debug)]
pub struct Closed;

impl<T> Sender<T> {
    /// Hands `item` off without waiting; closes the read gate when `high` are waiting.
    pub fn push(&self, item: T) -> Result<Pushed, Closed> {
        let mut waiting = self.shared.waiting();
        self.tx.send(item).map_err(|_| Closed)?;
        *waiting += 1;
        let closed_gate = *waiting >= self.shared.high
            && self
                .shared
                .gate
                .send_if_modified(|open| std::mem::replace(open, false));
        Ok(Pushed {
            waiting: *waiting,
            closed_gate,
        })
    }
}

impl<T> Receiver<T> {
    /// The next message; `None` once the sender is gone and everything was taken.
    /// Cancel-safe: a message is counted out only when it is returned.
    pub async fn recv(&mut self) -> Option<T> {
        let item = self.rx.recv().await?;
        let mut waiting = self.shared.waiting();
        *waiting -= 1;
        if *waiting <= self.shared.high / 2 {
            self.shared
                .gate
                .send_if_modified(|open| !std::mem::replace(open, true));
        }
        Some(item)
    }

    pub fn is_empty(&self) -> bool {
        *self.shared.waiting() == 0
    }

    pub fn waiting(&self) -> Waiting {
        Waiting(self.shared.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_closes_at_the_high_mark_and_opens_at_half_of_it() {
        let (tx, mut rx, gate) = channel::<u32>(8);
        let waiting = rx.waiting();
        // Pushing never waits, even far past the mark: the gate is what holds the reader back.
        for i in 0..7 {
            let pushed = tx.push(i).unwrap();
            assert_eq!(pushed.waiting, i as usize + 1);
            assert!(!pushed.closed_gate);
            assert!(*gate.borrow(), "open below the mark ({} waiting)", i + 1);
        }
        assert!(tx.push(7).unwrap().closed_gate, "this push closed it");
        assert!(!*gate.borrow(), "closed at 8 waiting");
        for i in 8..20 {
            assert!(!tx.push(i).unwrap().closed_gate, "closed already");
        }
        assert_eq!(waiting.get(), 20);
        // Taken in order; still closed until at most 4 wait.
        for i in 0..15 {
            assert_eq!(rx.recv().await, Some(i));
            assert!(!*gate.borrow(), "still closed at {} waiting", waiting.get());
        }
        assert_eq!(rx.recv().await, Some(15));
        assert_eq!(waiting.get(), 4);
        assert!(*gate.borrow(), "open again at 4 waiting");
        for i in 20..23 {
            assert!(!tx.push(i).unwrap().closed_gate);
        }
        assert!(
            tx.push(23).unwrap().closed_gate,
            "closed again at 8 waiting"
        );
        for i in 16..24 {
            assert_eq!(rx.recv().await, Some(i));
        }
        drop(tx);
        assert_eq!(rx.recv().await, None);
        assert!(rx.is_empty());
    }

    #[tokio::test]
    async fn a_gone_pipeline_is_reported_not_waited_on() {
        let (tx, rx, _gate) = channel::<u32>(4);
        drop(rx);
        assert!(tx.push(1).is_err());
    }
}
