//! Sending the queue: MQTT 5, QoS 1, the terminal's own topic; republished with the same id
//! and bytes until the bridge answers (docs/terminal-contract.md, "Answers").
//!
//! - **Capture order.** Pending transactions go out oldest first, at most `in_flight`
//!   unanswered at a time, so a flush of hundreds neither floods the broker nor overtakes
//!   itself.
//! - **Answers.** `accepted` → recorded, gone from the queue at the next open. `rejected` →
//!   recorded with its reason and kept for the merchant, except `RATE_LIMITED`, which the
//!   contract says to retry later: the transaction stays pending and goes again after a
//!   jittered pause.
//! - **No answer** within `retry_after` → published again, same bytes.
//! - **Connection lost** → reconnect after a jittered, doubling pause (0.5 s up to 30 s,
//!   `posflow_runtime::Backoff`), so a shop's terminals coming back together do not reconnect
//!   in step.

use crate::queue::{Answer, Queue};
use posflow_runtime::Backoff;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct FlushOptions {
    pub retry_after: Duration,
    pub in_flight: usize,
    /// Give up (and leave the rest pending) after this long.
    pub deadline: Duration,
}

/// How a flush went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flushed {
    pub published: u64,
    pub republished: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// `RATE_LIMITED` answers: sent again later.
    pub rate_limited: u64,
    /// Still unanswered at the deadline.
    pub pending: usize,
}

enum Heard {
    Subscribed,
    Answer { id: String, answer: Option<Answer> },
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

/// Sends `queue`'s pending transactions until each is answered or the deadline passes.
/// `progress` is called after each answer with (answered so far, pending).
pub async fn flush(
    queue: &mut Queue,
    options: MqttOptions,
    merchant_id: &str,
    terminal_id: &str,
    opts: &FlushOptions,
    mut progress: impl FnMut(&Flushed),
) -> anyhow::Result<Flushed> {
    let started = Instant::now();
    let (client, mut eventloop) = AsyncClient::new(options, 512);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ack_topic = posflow_mqtt::ack_topic(merchant_id, terminal_id);
    let poller = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut reconnect = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        reconnect.reset();
                        posflow_mqtt::subscribe_detached(&client, ack_topic.clone());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(Heard::Subscribed);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some((id, answer)) = parse_answer(&p.payload) {
                            let _ = tx.send(Heard::Answer { id, answer });
                        }
                    }
                    Ok(_) => {}
                    Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
                    Err(e) => {
                        let pause = reconnect.next_delay();
                        tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "connection lost; reconnecting");
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        })
    };
    let topic = posflow_mqtt::tx_topic(merchant_id, terminal_id);
    let mut report = Flushed::default();
    let mut subscribed = false;
    // Sent and unanswered: when last sent. Rate-limited: not before this instant.
    let mut in_flight: HashMap<String, Instant> = HashMap::new();
    let mut not_before: HashMap<String, Instant> = HashMap::new();
    // RATE_LIMITED answers in a row: each waits longer (the bridge's quota refills at its rate).
    let mut limited = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        // Walked by reference each round: only the payloads due now are copied out (a flush
        // of hundreds answered one by one would otherwise copy the whole queue per answer).
        let pending = queue.pending();
        report.pending = pending.len();
        if pending.is_empty() || started.elapsed() > opts.deadline {
            break;
        }
        let mut due = Vec::new();
        if subscribed {
            let now = Instant::now();
            for e in pending {
                let id = &e.transaction_id;
                let ready = match in_flight.get(id) {
                    Some(sent) => now.duration_since(*sent) >= opts.retry_after,
                    None => {
                        in_flight.len() < opts.in_flight
                            && not_before.get(id).is_none_or(|t| now >= *t)
                    }
                };
                if !ready {
                    continue;
                }
                if in_flight.insert(id.clone(), now).is_some() || not_before.remove(id).is_some() {
                    report.republished += 1;
                } else {
                    report.published += 1;
                }
                due.push(e.payload.clone().into_bytes());
            }
        }
        for payload in due {
            client
                .publish(&topic, QoS::AtLeastOnce, false, payload)
                .await?;
        }
        let heard = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await;
        match heard {
            Ok(Some(Heard::Subscribed)) => subscribed = true,
            Ok(Some(Heard::Answer { id, answer })) => {
                in_flight.remove(&id);
                match answer {
                    None => {
                        report.rate_limited += 1;
                        not_before.insert(id, Instant::now() + limited.next_delay());
                    }
                    Some(a) => {
                        limited.reset();
                        let accepted = a == Answer::Accepted;
                        if queue.answer(&id, a)? {
                            if accepted {
                                report.accepted += 1;
                            } else {
                                report.rejected += 1;
                            }
                            report.pending = report.pending.saturating_sub(1);
                            progress(&report);
                        }
                    }
                }
            }
            Ok(None) => anyhow::bail!("the MQTT connection task ended"),
            Err(_) => {}
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    Ok(report)
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
