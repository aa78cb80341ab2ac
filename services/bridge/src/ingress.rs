//! One MQTT message, in three steps whose types say what can happen:
//!
//! 1. [`Ingress::classify`]: the message is a [`Classified::New`] transaction, a
//!    [`Classified::Repeat`] of one Kafka already has, or a [`Classified::Refused`] input with
//!    its reason code (topic, sensitive data in a user property, the terminal registry, the rate
//!    limit, the payload contract, a changed repeat).
//! 2. [`Ingress::build`]: a new transaction becomes a record for the raw topic, a refusal a dead
//!    letter (through `posflow_kafka::deadletter`, which logs and counts it), a repeat needs no
//!    record — [`Step::Produce`] or [`Step::Answer`].
//! 3. [`deliver`]: produce until Kafka confirms (if there is anything to produce), then the
//!    terminal's answer and what the recent-id cache should remember.

use crate::{card, limit, metrics, payload, recent};
use posflow_kafka::deadletter::{DeadLetters, Refused};
use posflow_kafka::headers;
use posflow_kafka::pipeline::{produce_until_confirmed, Output};
use posflow_mqtt::TopicIds;
use posflow_registry::Decision;
use posflow_runtime::Context;
use posflow_schema::{now_millis, Encoder, Envelope, ReasonCode, TransactionReceived};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rumqttc::v5::mqttbytes::v5::Publish;
use std::time::{Duration, Instant};

/// Everything the bridge needs to turn one MQTT message into one Kafka record.
pub(crate) struct Ingress {
    pub terminals: posflow_registry::Cache,
    pub bridge_id: String,
    pub max_payload_bytes: usize,
    pub tokenizer: card::Tokenizer,
    pub encoder: Encoder<TransactionReceived>,
    pub raw_topic: String,
    pub dead_letters: DeadLetters,
    pub recent: recent::RecentIds,
    pub limiter: limit::TerminalLimiter,
}

/// What a message is (step 1).
// Nearly every message is New: boxing its transaction would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Classified {
    /// A transaction Kafka does not have yet (`delay`: the rate limit's delay policy).
    New {
        parsed: payload::Parsed,
        delay: Option<Duration>,
    },
    /// The same transaction again, same bytes: Kafka has it at `seen`.
    Repeat {
        transaction_id: String,
        seen: recent::Seen,
    },
    Refused(payload::Refusal),
}

/// A received message and what the bridge knows about it before classifying it.
struct Received<'a> {
    publish: &'a Publish,
    topic: String,
    received_at: i64,
    /// The headers the record gets: the MQTT topic, the receive time, the trace context.
    headers: OwnedHeaders,
    /// A user property named as sensitive authentication data (its name masked; never its value).
    sad_property: Option<String>,
}

/// What to do for one message (step 2).
pub(crate) enum Step {
    /// Produce `output`, then answer per `then`.
    Produce {
        output: Output,
        /// Rate limiting with the delay policy: wait this long before producing.
        delay: Option<Duration>,
        then: Produced,
    },
    /// Answer at once: Kafka has this transaction already.
    Answer {
        transaction_id: String,
        seen: recent::Seen,
    },
}

/// What a produced record was.
pub(crate) enum Produced {
    Accepted {
        transaction_id: String,
        fingerprint: u64,
        /// The terminal's timestamp, for `posflow_end_to_end_seconds`.
        transaction_time: i64,
    },
    Rejected {
        reason: ReasonCode,
        transaction_id: Option<String>,
    },
}

/// One message on its way to Kafka.
pub(crate) struct Job {
    pub publish: Publish,
    pub received: Instant,
    /// Where to answer the terminal, when the topic named one.
    pub reply_to: Option<String>,
    pub step: Step,
    /// Tracing on: the Kafka produce span, ended when Kafka has confirmed the record.
    pub span: tracing::Span,
}

/// A message Kafka has: what to acknowledge, answer and remember.
pub(crate) struct Outcome {
    pub publish: Publish,
    pub received: Instant,
    /// (reply topic, JSON) for the terminal, when the topic named one.
    pub reply: Option<(String, Vec<u8>)>,
    /// A newly produced transaction, for the recent-id cache.
    pub remember: Option<(String, recent::Seen)>,
}

impl Ingress {
    /// Steps 1 and 2 for one message. An error is a dead letter that cannot be encoded — a bug:
    /// the bridge stops, and the broker redelivers what it did not acknowledge
    /// (posflow_kafka::deadletter's one rule).
    pub fn handle(&mut self, publish: Publish) -> anyhow::Result<Job> {
        let received = Instant::now();
        // Tracing on: this message's span is a child of the terminal's traceparent (or starts
        // the trace), and Kafka gets the produce span's context instead of the terminal's.
        let span = posflow_runtime::trace::record_span("bridge.receive", terminal_trace(&publish));
        let produce_span = posflow_runtime::trace::child_span("bridge.produce", &span);
        let r = receive(&publish, posflow_runtime::trace::traceparent(&produce_span));
        let ids = posflow_mqtt::parse_tx_topic(&r.topic);
        let reply_to = ids
            .as_ref()
            .ok()
            .map(|ids| posflow_mqtt::ack_topic(ids.merchant_id, ids.terminal_id));
        let fingerprint = recent::fingerprint(&publish.payload);
        let classified = match &ids {
            Err(e) => Classified::Refused(refusal(ReasonCode::TopicInvalid, e.to_string())),
            Ok(ids) => self.classify(&r, ids, fingerprint),
        };
        let step = span.in_scope(|| self.build(r, classified, fingerprint))?;
        Ok(Job {
            publish,
            received,
            reply_to,
            step,
            span: produce_span,
        })
    }

    /// Step 1 for a message on a valid topic: the first refusal wins, in the order of the
    /// terminal contract (sensitive data, registry, rate, payload, repeats).
    fn classify(&mut self, r: &Received<'_>, ids: &TopicIds<'_>, fingerprint: u64) -> Classified {
        if let Some(name) = &r.sad_property {
            return Classified::Refused(refusal(
                ReasonCode::CardDataForbidden,
                format!("MQTT user property {name:?} is sensitive authentication data and is never accepted"),
            ));
        }
        match self.terminals.decide(ids.terminal_id, ids.merchant_id) {
            Decision::Allowed => {}
            refused => return Classified::Refused(registry_refusal(refused, ids)),
        }
        let delay = match self.limiter.check(ids.terminal_id) {
            limit::Pace::Reject => {
                metrics().throttled.with_label_values(&["reject"]).inc();
                // Named in the answer: the terminal retries that one later (the contract).
                return Classified::Refused(payload::Refusal {
                    transaction_id: payload::transaction_id_of(
                        &r.publish.payload,
                        self.max_payload_bytes,
                    ),
                    ..refusal(
                        ReasonCode::RateLimited,
                        "terminal above its rate limit; retry later",
                    )
                });
            }
            limit::Pace::Delay(d) => {
                metrics().throttled.with_label_values(&["delay"]).inc();
                Some(d)
            }
            limit::Pace::Pass => None,
        };
        let payload = &r.publish.payload;
        let parsed = match payload::parse(payload, ids, self.max_payload_bytes, &self.tokenizer) {
            Ok(p) => p,
            Err(refused) => return Classified::Refused(refused),
        };
        match self
            .recent
            .lookup(&parsed.transaction.transaction_id, fingerprint)
        {
            recent::Lookup::New => Classified::New { parsed, delay },
            recent::Lookup::Repeat(seen) => Classified::Repeat {
                transaction_id: parsed.transaction.transaction_id,
                seen,
            },
            recent::Lookup::Conflict => Classified::Refused(payload::Refusal {
                reason: ReasonCode::DuplicateTransactionId,
                detail: "this transaction_id was accepted with different content".into(),
                transaction_id: Some(parsed.transaction.transaction_id),
            }),
        }
    }

    /// Step 2: the record to produce, if any.
    fn build(
        &self,
        r: Received<'_>,
        classified: Classified,
        fingerprint: u64,
    ) -> anyhow::Result<Step> {
        let (
            payload::Parsed {
                transaction,
                version,
            },
            delay,
        ) = match classified {
            Classified::New { parsed, delay } => (parsed, delay),
            Classified::Repeat {
                transaction_id,
                seen,
            } => {
                metrics().repeats.inc();
                return Ok(Step::Answer {
                    transaction_id,
                    seen,
                });
            }
            Classified::Refused(refused) => return self.dead_letter(r, refused),
        };
        let (transaction_id, transaction_time) = (
            transaction.transaction_id.clone(),
            transaction.transaction_time,
        );
        let key = transaction.terminal_id.clone();
        let record = TransactionReceived {
            envelope: Envelope {
                received_at: r.received_at,
                mqtt_topic: r.topic.clone(),
                bridge_id: self.bridge_id.clone(),
                payload_version: version,
            },
            transaction,
        };
        let value = match self.encoder.encode(&record) {
            Ok(v) => v,
            // A value the contract allows but the schema does not (a field the parser let
            // through): refused like any other invalid field.
            Err(e) => {
                let refused = payload::Refusal {
                    reason: ReasonCode::FieldInvalid,
                    detail: card::mask_text(&e.to_string()),
                    transaction_id: Some(transaction_id),
                };
                return self.dead_letter(r, refused);
            }
        };
        Ok(Step::Produce {
            output: Output {
                topic: self.raw_topic.clone(),
                partition: None,
                key,
                value,
                headers: r.headers,
            },
            delay,
            then: Produced::Accepted {
                transaction_id,
                fingerprint,
                transaction_time,
            },
        })
    }

    /// A refused message as a dead letter: the payload kept with card numbers masked and
    /// sensitive fields removed, the source the masked topic.
    fn dead_letter(&self, r: Received<'_>, refused: payload::Refusal) -> anyhow::Result<Step> {
        let source = card::mask_text(&r.topic);
        let output = self.dead_letters.output(Refused {
            reason: refused.reason,
            detail: refused.detail,
            key: source.clone(),
            source,
            payload: card::stored_payload(&r.publish.payload),
            headers: r.headers,
        })?;
        Ok(Step::Produce {
            output,
            delay: None,
            then: Produced::Rejected {
                reason: refused.reason,
                transaction_id: refused.transaction_id,
            },
        })
    }
}

/// The terminal's W3C traceparent, if it sent one as a user property.
fn terminal_trace(publish: &Publish) -> Option<&[u8]> {
    publish.properties.as_ref().and_then(|p| {
        p.user_properties
            .iter()
            .find(|(k, _)| k == headers::TRACEPARENT)
            .map(|(_, v)| v.as_bytes())
    })
}

/// The record's headers from the message. Of the terminal's user properties only the W3C trace
/// context travels on: a terminal cannot supply a `posflow-*` header (a reason, a topic) or
/// anything else a reader might trust. A property named as sensitive authentication data goes
/// nowhere — not into a header, not into the dead letter — and refuses the message.
fn receive(publish: &Publish, traced: Option<String>) -> Received<'_> {
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let received_at = now_millis();
    let mut hdrs = OwnedHeaders::new()
        .insert(Header {
            key: headers::MQTT_TOPIC,
            value: Some(topic.as_bytes()),
        })
        .insert(Header {
            key: headers::RECEIVED_AT,
            value: Some(received_at.to_string().as_bytes()),
        });
    let mut sad_property = None;
    let properties = publish.properties.as_ref();
    for (k, v) in properties
        .map(|p| p.user_properties.as_slice())
        .unwrap_or_default()
    {
        if card::is_sad_field(k) {
            sad_property.get_or_insert_with(|| card::mask_text(k));
        } else if !(traced.is_some() && k == headers::TRACEPARENT) && headers::from_terminal(k, v) {
            hdrs = hdrs.insert(Header {
                key: k.as_str(),
                value: Some(v.as_bytes()),
            });
        }
    }
    if let Some(tp) = &traced {
        hdrs = hdrs.insert(Header {
            key: headers::TRACEPARENT,
            value: Some(tp.as_bytes()),
        });
    }
    Received {
        publish,
        topic,
        received_at,
        headers: hdrs,
        sad_property,
    }
}

fn refusal(reason: ReasonCode, detail: impl Into<String>) -> payload::Refusal {
    payload::Refusal {
        reason,
        detail: detail.into(),
        transaction_id: None,
    }
}

/// Why the registry refuses a terminal. The answer goes to whoever holds the terminal's
/// credentials, so it never names the merchant the terminal is registered to.
fn registry_refusal(d: Decision, ids: &TopicIds<'_>) -> payload::Refusal {
    let terminal = ids.terminal_id;
    match d {
        Decision::Unknown => refusal(
            ReasonCode::TerminalUnknown,
            format!("terminal {terminal} is not registered"),
        ),
        Decision::Blocked => refusal(
            ReasonCode::TerminalBlocked,
            format!("terminal {terminal} is blocked"),
        ),
        Decision::Retired => refusal(
            ReasonCode::TerminalRetired,
            format!("terminal {terminal} is retired"),
        ),
        Decision::OtherMerchant | Decision::Allowed => refusal(
            ReasonCode::IdentityMismatch,
            format!(
                "terminal {terminal} is not registered to merchant {}",
                ids.merchant_id
            ),
        ),
    }
}

/// Step 3: sends the job's record until Kafka confirms it. Failures are retried with backoff
/// (back-pressure: the broker stops sending once `in_flight` messages wait); `None` only when
/// shutdown interrupts, and then the message is left unacknowledged for redelivery.
pub(crate) async fn deliver(
    producer: std::sync::Arc<FutureProducer>,
    job: Job,
    ctx: Context,
    defect: Option<crate::TestDefect>,
) -> Option<Outcome> {
    let (answer, remember) = match job.step {
        Step::Answer {
            transaction_id,
            seen,
        } => (
            Answer::accepted(transaction_id, seen.partition, seen.offset),
            None,
        ),
        Step::Produce {
            output,
            delay,
            then,
        } => {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let m = metrics();
            let c = match defect {
                None => produce_until_confirmed(&producer, &output, &ctx).await?,
                Some(crate::TestDefect::AnswerBeforeKafka) => {
                    // Deliberately wrong (test only): answered before Kafka has it.
                    let (p, c) = (producer.clone(), ctx.clone());
                    tokio::spawn(async move { produce_until_confirmed(&p, &output, &c).await });
                    posflow_kafka::pipeline::Confirmed {
                        partition: -1,
                        offset: -1,
                        failed_attempts: 0,
                    }
                }
            };
            m.produce_errors.inc_by(u64::from(c.failed_attempts));
            if c.failed_attempts > 0 {
                ctx.health.set_ready(true); // Kafka is back
            }
            // The bridge's processing time: MQTT receive → Kafka confirmation.
            posflow_runtime::metrics::Shared::processing()
                .observe(job.received.elapsed().as_secs_f64());
            match then {
                Produced::Accepted {
                    transaction_id,
                    fingerprint,
                    transaction_time,
                } => {
                    m.produced.inc();
                    posflow_runtime::metrics::observe_end_to_end(transaction_time);
                    let seen = recent::Seen {
                        fingerprint,
                        partition: c.partition,
                        offset: c.offset,
                    };
                    let answer = Answer::accepted(transaction_id.clone(), c.partition, c.offset);
                    (answer, Some((transaction_id, seen)))
                }
                Produced::Rejected {
                    reason,
                    transaction_id,
                } => (
                    Answer::Rejected {
                        transaction_id,
                        reason,
                    },
                    None,
                ),
            }
        }
    };
    drop(job.span);
    Some(Outcome {
        reply: job.reply_to.map(|t| (t, answer.to_json())),
        publish: job.publish,
        received: job.received,
        remember,
    })
}

/// The terminal's answer (docs/terminal-contract.md).
enum Answer {
    Accepted {
        transaction_id: String,
        partition: i32,
        offset: i64,
    },
    Rejected {
        transaction_id: Option<String>,
        reason: ReasonCode,
    },
}

impl Answer {
    fn accepted(transaction_id: String, partition: i32, offset: i64) -> Self {
        Answer::Accepted {
            transaction_id,
            partition,
            offset,
        }
    }

    /// Serialised straight from borrowed fields (no `Value` tree: one allocation, the output),
    /// keys in the order the answer has always had.
    fn to_json(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Accepted<'a> {
            offset: i64,
            partition: i32,
            status: &'static str,
            transaction_id: &'a str,
        }
        #[derive(serde::Serialize)]
        struct Rejected<'a> {
            reason: &'static str,
            status: &'static str,
            transaction_id: Option<&'a str>,
        }
        let out = match self {
            Answer::Accepted {
                transaction_id,
                partition,
                offset,
            } => serde_json::to_vec(&Accepted {
                offset: *offset,
                partition: *partition,
                status: "accepted",
                transaction_id,
            }),
            Answer::Rejected {
                transaction_id,
                reason,
            } => serde_json::to_vec(&Rejected {
                reason: reason.code(),
                status: "rejected",
                transaction_id: transaction_id.as_deref(),
            }),
        };
        out.expect("plain fields serialise")
    }
}
