//! Flushing the queue: its pending transactions, oldest first, through the [`sender`], each
//! answer recorded durably in the queue before it counts (docs/terminal-client.md).
//! `accepted` → gone from the queue at the next open; `rejected` → kept with its reason for the
//! merchant.

use crate::queue::{Answer, Queue};
use crate::sender::{self, Outgoing, SendOptions, Sent, Source};
use rumqttc::v5::MqttOptions;
use std::time::Duration;

/// The queue as a sender's source: a cursor over its pending transactions, and the answers
/// written back to it.
struct Pending<'q, F> {
    queue: &'q mut Queue,
    at: usize,
    answered: Sent,
    progress: F,
}

impl<F: FnMut(&Sent)> Source for Pending<'_, F> {
    fn next(&mut self) -> Option<Outgoing> {
        let (at, e) = self.queue.pending_from(self.at)?;
        self.at = at + 1;
        Some(Outgoing {
            transaction_id: e.transaction_id.clone(),
            payload: e.payload.clone().into_bytes(),
        })
    }

    fn remaining(&self) -> usize {
        let mut n = 0;
        let mut at = self.at;
        while let Some((i, _)) = self.queue.pending_from(at) {
            n += 1;
            at = i + 1;
        }
        n
    }

    fn answered(&mut self, id: &str, answer: Answer, _latency: Duration) -> anyhow::Result<()> {
        let accepted = answer == Answer::Accepted;
        if self.queue.answer(id, answer)? {
            if accepted {
                self.answered.accepted += 1;
            } else {
                self.answered.rejected += 1;
            }
            self.answered.unanswered = self.queue.counts().pending;
            (self.progress)(&self.answered);
        }
        Ok(())
    }
}

/// Sends `queue`'s pending transactions until each is answered or the deadline passes.
/// `progress` is called after each answer with the answers so far and what is still pending.
pub async fn flush(
    queue: &mut Queue,
    options: MqttOptions,
    merchant_id: &str,
    terminal_id: &str,
    opts: &SendOptions,
    progress: impl FnMut(&Sent),
) -> anyhow::Result<Sent> {
    let mut source = Pending {
        queue,
        at: 0,
        answered: Sent::default(),
        progress,
    };
    let mut sent = sender::send(&mut source, options, merchant_id, terminal_id, opts).await?;
    sent.unanswered = source.queue.counts().pending;
    Ok(sent)
}
