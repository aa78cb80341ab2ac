//! Dead letters, one way for every stage that consumes from Kafka: a refused record
//! ([`Refused`]) becomes a `DeadLetter` on the dead-letter topic with its reason code in a
//! header, logged once (warn) and counted once (the stage's `…_dead_lettered_total{reason}`),
//! here and nowhere else.
//!
//! **Encode failures.** The dead-letter schema takes any bytes and was fetched at start, so
//! encoding fails only through a bug. Whatever the stage, the error goes back to the caller and
//! the record is not passed: a batch sink stops the stage, the validator's transform retries
//! (the partition waits for a fixed deployment; nothing is lost either way). The notifier's
//! dispatcher is the one exception, and on purpose: its dead letters are copies for operators
//! of outbox rows already marked dead in PostgreSQL, so it logs the failure and goes on.

use crate::headers;
use crate::pipeline::{produce_until_confirmed, Output};
use posflow_runtime::Context;
use posflow_schema::{now_millis, DeadLetter, Encoder, ReasonCode};
use prometheus::IntCounterVec;
use rdkafka::message::OwnedHeaders;
use std::future::Future;

/// A record refused on the way, and why.
#[derive(Debug, Clone)]
pub struct Refused {
    pub reason: ReasonCode,
    pub detail: String,
    /// Where it came from: `topic/partition/offset`, or `outbox/<id>/<key>`.
    pub source: String,
    /// The Kafka key of the letter.
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// The dead-letter topic of one stage.
pub struct DeadLetters {
    /// The stage the letters name.
    pub stage: &'static str,
    pub topic: String,
    pub encoder: Encoder<DeadLetter>,
    /// The stage's own counter, by reason.
    pub counter: IntCounterVec,
}

impl DeadLetters {
    /// The stage's letters to the deployment's dead-letter topic (its schema fetched now).
    pub async fn for_stage(
        args: &crate::KafkaArgs,
        stage: &'static str,
        counter: IntCounterVec,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let topic = args.topics().deadletter();
        let encoder = Encoder::<DeadLetter>::for_topic(&args.registry(), &topic)
            .await
            .context("dead-letter schema (run posflow-admin provision)")?;
        Ok(DeadLetters {
            stage,
            topic,
            encoder,
            counter,
        })
    }

    /// The letter as a record to produce (the validator's go into its Kafka transaction); the
    /// log line and the count happen here.
    pub fn output(&self, r: Refused) -> anyhow::Result<Output> {
        // In the record's span (tracing on), the line names its trace: an operator goes from
        // the log to the whole trace.
        let trace_id = posflow_runtime::trace::trace_id(&tracing::Span::current());
        tracing::warn!(stage = self.stage, reason = %r.reason, detail = %r.detail, source = %r.source, trace_id, "dead-lettered");
        self.counter.with_label_values(&[r.reason.code()]).inc();
        let headers = headers::with_reason(r.headers, r.reason.code());
        let letter = DeadLetter {
            reason: r.reason.code().to_string(),
            detail: r.detail,
            stage: self.stage.into(),
            source: r.source,
            received_at: now_millis(),
            payload: r.payload,
        };
        Ok(Output {
            topic: self.topic.clone(),
            partition: None,
            key: r.key,
            value: self.encoder.encode(&letter)?,
            headers,
        })
    }
}

/// Where refused records go, sent one at a time: [`DeadLetterProducer`] in the stages, a
/// recording fake in the batch sink's tests.
pub trait DeadLetterOut: Sync {
    /// Sends until Kafka confirms; `Ok(false)` when shutdown comes first (then no offset may
    /// pass the record).
    fn send(&self, r: Refused, ctx: &Context) -> impl Future<Output = anyhow::Result<bool>> + Send;
}

/// [`DeadLetters`] with a producer of its own.
pub struct DeadLetterProducer {
    pub letters: DeadLetters,
    pub producer: rdkafka::producer::FutureProducer,
}

impl DeadLetterOut for DeadLetterProducer {
    async fn send(&self, r: Refused, ctx: &Context) -> anyhow::Result<bool> {
        let out = self.letters.output(r)?;
        Ok(produce_until_confirmed(&self.producer, &out, ctx)
            .await
            .is_some())
    }
}
