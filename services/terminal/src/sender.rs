//! The terminal's side of the wire, for any source of transactions: MQTT 5, QoS 1 on the
//! terminal's own topic, republished with the same id and bytes until the bridge answers
//! (docs/terminal-contract.md, "Answers"). The client's durable queue ([`crate::flush`]) and the
//! simulator's planned fleet are both [`Source`]s, so every load test sends through this code.
//!
//! - **Capture order.** New transactions go out in the order the source gives them, at most
//!   `in_flight` unanswered at a time (a flush of hundreds neither floods the broker nor
//!   overtakes itself), and no faster than `pace` if set.
//! - **Answers.** `accepted` and `rejected` go to the source, once per transaction, with the
//!   time from its first publish. `RATE_LIMITED` is not an answer: the contract says retry later, so the
//!   transaction goes again after a jittered pause that grows while refusals continue.
//! - **No answer** within `retry_after` → published again, same bytes, same trace.
//! - **Connection lost** → reconnect after a jittered, doubling pause (0.5 s up to 30 s,
//!   `posflow_runtime::Backoff`), so a shop's terminals coming back together do not reconnect
//!   in step. Every ConnAck subscribes to the answers again.
//! - **Broker only** (`await_answers: false`): done once the broker acknowledged (PUBACK) every
//!   publish; nothing is republished. For measuring the broker without the bridge.

use crate::queue::Answer;
use posflow_runtime::Backoff;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// A transaction to send: its id and the exact bytes of every attempt.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub transaction_id: String,
    pub payload: Vec<u8>,
}

/// Where a sender's transactions come from and where their answers go.
pub trait Source {
    /// The next transaction to send for the first time, in capture order; `None` when none is
    /// left.
    fn next(&mut self) -> Option<Outgoing>;
    /// How many [`next`](Self::next) would still give.
    fn remaining(&self) -> usize;
    /// The bridge's answer to a transaction this sender published, once per transaction;
    /// `latency` from its first publish to the answer's arrival. An error ends the send (the
    /// source could not keep the answer: a full disk).
    fn answered(&mut self, id: &str, answer: Answer, latency: Duration) -> anyhow::Result<()>;
    /// A publish left for the broker; `again` for a republish.
    fn published(&mut self, _id: &str, _again: bool) {}
    /// The broker acknowledged `n` more publishes (PUBACK), republishes included.
    fn broker_acked(&mut self, _n: u64) {}
}

#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Republish a transaction with no answer after this long.
    pub retry_after: Duration,
    /// At most this many sent and unanswered.
    pub in_flight: usize,
    /// Give up (and leave the rest unanswered) this long after the start.
    pub deadline: Duration,
    /// At least this long between two first publishes (a terminal's selling rate).
    pub pace: Option<Duration>,
    /// Wait for the bridge's answers (and republish the unanswered); off: done at the broker's
    /// PUBACKs.
    pub await_answers: bool,
    /// Fail if not subscribed to the answers by then (a load test's wrong password), instead of
    /// reconnecting until the deadline as a terminal does.
    pub subscribed_within: Option<Duration>,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            retry_after: Duration::from_secs(15),
            in_flight: 32,
            deadline: Duration::from_secs(300),
            pace: None,
            await_answers: true,
            subscribed_within: None,
        }
    }
}

/// How a send went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sent {
    pub published: u64,
    pub republished: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// `RATE_LIMITED` answers: sent again later.
    pub rate_limited: u64,
    /// Still unanswered at the end (never sent included); with `await_answers` off, 0.
    pub unanswered: usize,
}

impl Sent {
    /// Adds `other`'s counts to these (a fleet's total).
    pub fn add(&mut self, other: &Sent) {
        self.published += other.published;
        self.republished += other.republished;
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        self.rate_limited += other.rate_limited;
        self.unanswered += other.unanswered;
    }
}

enum Heard {
    Subscribed,
    /// `None`: `RATE_LIMITED`, try again later. `at`: when it arrived (the sender may be busy
    /// publishing when it does, and an answer's latency must not count that).
    Answer {
        id: String,
        answer: Option<Answer>,
        at: Instant,
    },
}

/// The bridge's answer payload: `accepted`, `rejected` with its reason, or `None` for
/// "try again later" (`RATE_LIMITED`).
fn parse_answer(payload: &[u8]) -> Option<(String, Option<Answer>)> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let id = v["transaction_id"].as_str()?.to_string();
    let answer = match (v["status"].as_str()?, v["reason"].as_str()) {
        ("accepted", _) => Some(Answer::Accepted),
        ("rejected", Some("RATE_LIMITED")) => None,
        ("rejected", reason) => Some(Answer::Rejected {
            reason: reason.unwrap_or("REJECTED").to_string(),
        }),
        _ => return None,
    };
    Some((id, answer))
}

/// A sent, unanswered transaction.
struct Flight {
    payload: Vec<u8>,
    /// W3C trace context: one trace per transaction, a new span per attempt.
    trace: u128,
    first_sent: Instant,
    /// When it goes again if still unanswered.
    due: Instant,
}

/// Sends `source`'s transactions as `terminal_id` of `merchant_id` until each is answered, the
/// source is empty and the deadline passes, whichever comes first.
pub async fn send(
    source: &mut impl Source,
    options: MqttOptions,
    merchant_id: &str,
    terminal_id: &str,
    opts: &SendOptions,
) -> anyhow::Result<Sent> {
    let started = Instant::now();
    // A short hand-off to the connection: a publish waits here rather than in a long queue,
    // so "sent" (the latency's start) is close to the wire.
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ack_topic = posflow_mqtt::ack_topic(merchant_id, terminal_id);
    // PUBACKs are counted where they arrive and wake the sender only when it waits for them
    // (broker only): a message per PUBACK through the channel cost the broker-alone
    // benchmark 7% of its rate and a quarter more p99 (BENCHMARKS.md).
    let acked = Arc::new((AtomicU64::new(0), Notify::new()));
    let poller = {
        let client = client.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut reconnect = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
            loop {
                let heard = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        reconnect.reset();
                        posflow_mqtt::subscribe_detached(&client, ack_topic.clone());
                        continue;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => Heard::Subscribed,
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.0.fetch_add(1, Ordering::Relaxed);
                        acked.1.notify_one();
                        continue;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => match parse_answer(&p.payload) {
                        Some((id, answer)) => Heard::Answer {
                            id,
                            answer,
                            at: Instant::now(),
                        },
                        None => continue,
                    },
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => continue,
                    Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
                    Err(e) => {
                        let pause = reconnect.next_delay();
                        tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "connection lost; reconnecting");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                };
                if tx.send(heard).is_err() {
                    return;
                }
            }
        })
    };
    let topic = posflow_mqtt::tx_topic(merchant_id, terminal_id);
    let mut report = Sent::default();
    let mut subscribed = false;
    let mut flights: HashMap<String, Flight> = HashMap::new();
    // (due, id) of every flight; an entry whose flight is gone or due later is stale.
    let mut resend: BinaryHeap<Reverse<(Instant, String)>> = BinaryHeap::new();
    let mut next_new = started;
    let mut exhausted = false;
    let mut acks = 0u64;
    let wait_for_acks = !opts.await_answers;
    // RATE_LIMITED answers in a row: each waits longer (the bridge's quota refills at its rate).
    let mut limited = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let outcome = loop {
        let now_acked = acked.0.load(Ordering::Relaxed);
        if now_acked > acks {
            source.broker_acked(now_acked - acks);
            acks = now_acked;
        }
        // Ends on the last answer (or PUBACK), not at the next tick after it.
        let done = if opts.await_answers {
            flights.is_empty() && (exhausted || source.remaining() == 0)
        } else {
            (exhausted || source.remaining() == 0) && acks >= report.published
        };
        let now = Instant::now();
        if done || now.duration_since(started) > opts.deadline {
            break Ok(());
        }
        if !subscribed {
            if let Some(within) = opts.subscribed_within {
                if now.duration_since(started) > within {
                    break Err(anyhow::anyhow!(
                        "{terminal_id}: not subscribed to its answers within {within:?} (broker down or credentials refused?)"
                    ));
                }
            }
        }
        if subscribed {
            // Republish what stayed unanswered.
            while let Some(Reverse((due, _))) = resend.peek() {
                if *due > now {
                    break;
                }
                let Reverse((due, id)) = resend.pop().expect("peeked");
                let Some(f) = flights.get_mut(&id).filter(|f| f.due == due) else {
                    continue;
                };
                publish(&client, &topic, &f.payload, f.trace).await?;
                f.due = Instant::now() + opts.retry_after;
                resend.push(Reverse((f.due, id.clone())));
                report.republished += 1;
                source.published(&id, true);
            }
            // New ones, in order, within the in-flight cap and the pace.
            while !exhausted && flights.len() < opts.in_flight && now >= next_new {
                let Some(o) = source.next() else {
                    exhausted = true;
                    break;
                };
                let trace: u128 = rand::random();
                // Stamped per publish: one may wait for room in the hand-off to the connection.
                let sent = Instant::now();
                publish(&client, &topic, &o.payload, trace).await?;
                report.published += 1;
                source.published(&o.transaction_id, false);
                if let Some(gap) = opts.pace {
                    // On schedule, not drifting by the time a publish takes.
                    next_new = next_new.max(now.checked_sub(gap).unwrap_or(now)) + gap;
                }
                if opts.await_answers {
                    let due = sent + opts.retry_after;
                    resend.push(Reverse((due, o.transaction_id.clone())));
                    let f = Flight {
                        payload: o.payload,
                        trace,
                        first_sent: sent,
                        due,
                    };
                    flights.insert(o.transaction_id, f);
                }
            }
        }
        // Sleep until something is due, an answer comes, or 100 ms (the deadline's check).
        let mut wake = now + Duration::from_millis(100);
        if subscribed {
            if let Some(Reverse((due, _))) = resend.peek() {
                wake = wake.min(*due);
            }
            if !exhausted && flights.len() < opts.in_flight {
                wake = wake.min(next_new);
            }
        }
        let heard = tokio::select! {
            h = rx.recv() => match h {
                Some(h) => h,
                None => break Err(anyhow::anyhow!("the MQTT connection task ended")),
            },
            _ = acked.1.notified(), if wait_for_acks => continue,
            _ = tokio::time::sleep_until(wake.into()) => continue,
        };
        match heard {
            Heard::Subscribed => subscribed = true,
            // A repeat answer (to a republish) finds no flight: the first one counted.
            Heard::Answer { id, answer, at } => match (answer, flights.get_mut(&id)) {
                (_, None) => {}
                (None, Some(f)) => {
                    report.rate_limited += 1;
                    f.due = Instant::now() + limited.next_delay();
                    resend.push(Reverse((f.due, id)));
                }
                (Some(a), Some(_)) => {
                    limited.reset();
                    let f = flights.remove(&id).expect("present");
                    if a == Answer::Accepted {
                        report.accepted += 1;
                    } else {
                        report.rejected += 1;
                    }
                    let latency = at.saturating_duration_since(f.first_sent);
                    if let Err(e) = source.answered(&id, a, latency) {
                        break Err(e);
                    }
                }
            },
        }
    };
    if opts.await_answers {
        report.unanswered = flights.len() + source.remaining();
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    outcome.map(|()| report)
}

/// One QoS 1 publish with a W3C trace context, as instrumented firmware would send: the
/// transaction's trace, a new span per attempt.
async fn publish(
    client: &AsyncClient,
    topic: &str,
    payload: &[u8],
    trace: u128,
) -> anyhow::Result<()> {
    let span: u64 = rand::random::<u64>() | 1;
    let props = PublishProperties {
        user_properties: vec![(
            "traceparent".into(),
            format!("00-{trace:032x}-{span:016x}-01"),
        )],
        ..Default::default()
    };
    client
        .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.to_vec(), props)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_the_contract_writes_them() {
        assert_eq!(
            parse_answer(br#"{"transaction_id":"a","status":"accepted","partition":3,"offset":1}"#),
            Some(("a".into(), Some(Answer::Accepted)))
        );
        assert_eq!(
            parse_answer(br#"{"transaction_id":"b","status":"rejected","reason":"PAN_INVALID"}"#),
            Some((
                "b".into(),
                Some(Answer::Rejected {
                    reason: "PAN_INVALID".into()
                })
            ))
        );
        assert_eq!(
            parse_answer(br#"{"transaction_id":"c","status":"rejected","reason":"RATE_LIMITED"}"#),
            Some(("c".into(), None))
        );
        assert_eq!(parse_answer(b"not json"), None);
    }
}
