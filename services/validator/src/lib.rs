//! posflow-validator: business rules over the raw topic. Valid → validated topic; invalid →
//! rejected topic with every reason code. Nothing is dropped: a record that cannot even be
//! decoded goes to the dead-letter topic.

pub mod currency;
pub mod rules;

use anyhow::Context as _;
use clap::Parser;
use posflow_kafka::pipeline::{self, Input, Output, Retry};
use posflow_kafka::{headers, KafkaArgs};
use posflow_runtime::metrics::{counter, counter_vec};
use posflow_runtime::{CommonArgs, ConfigErrors, Context};
use posflow_schema::{
    now_millis, DeadLetter, Decoder, Encoder, TransactionReceived, TransactionRejected,
    TransactionValidated,
};
use prometheus::{IntCounter, IntCounterVec};
use rdkafka::message::{Header, OwnedHeaders};
use std::sync::OnceLock;

/// posflow-validator: checks every raw transaction against the business rules.
#[derive(Debug, Parser)]
#[command(name = "posflow-validator", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Records in flight between consume and confirmed produce.
    #[arg(long, env = "POSFLOW_VALIDATOR_IN_FLIGHT", default_value_t = 1000)]
    pub in_flight: usize,
    /// How far (seconds) a terminal clock may run ahead of the bridge.
    #[arg(long, env = "POSFLOW_MAX_CLOCK_SKEW", default_value_t = 300)]
    pub max_clock_skew: i64,
    /// Oldest transaction accepted, in hours after the sale.
    #[arg(long, env = "POSFLOW_MAX_AGE_HOURS", default_value_t = 168)]
    pub max_age_hours: i64,
    /// Largest amount, in major currency units.
    #[arg(long, env = "POSFLOW_MAX_AMOUNT", default_value_t = 100_000)]
    pub max_amount: i64,
}

impl Args {
    pub fn check(self) -> Result<Self, ConfigErrors> {
        let mut e = ConfigErrors::new();
        self.kafka.check(&mut e);
        e.check(self.in_flight >= 1, "--in-flight must be at least 1");
        e.check(self.max_clock_skew >= 0, "--max-clock-skew must be >= 0");
        e.check(self.max_age_hours > 0, "--max-age-hours must be > 0");
        e.check(self.max_amount > 0, "--max-amount must be > 0");
        e.into_result(self)
    }

    fn rules(&self) -> rules::Rules {
        rules::Rules {
            max_amount_major: self.max_amount,
            max_clock_skew_ms: self.max_clock_skew * 1000,
            max_age_ms: self.max_age_hours * 3_600_000,
        }
    }
}

struct Metrics {
    received: IntCounter,
    validated: IntCounter,
    rejected: IntCounterVec,
    dead_lettered: IntCounterVec,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        received: counter(
            "posflow_validator_received_total",
            "Raw transactions consumed",
        ),
        validated: counter(
            "posflow_validator_validated_total",
            "Transactions that passed every rule",
        ),
        rejected: counter_vec(
            "posflow_validator_rejected_total",
            "Rejections, by reason code (a transaction with two reasons counts in both)",
            &["reason"],
        ),
        dead_lettered: counter_vec(
            "posflow_validator_dead_lettered_total",
            "Raw records that could not be decoded",
            &["reason"],
        ),
    })
}

pub async fn run(args: Args, ctx: Context) -> anyhow::Result<()> {
    let topics = args.kafka.topics();
    let registry = args.kafka.registry();
    let (validated_t, rejected_t, dlq_t) =
        (topics.validated(), topics.rejected(), topics.deadletter());
    let validated_enc = Encoder::<TransactionValidated>::for_topic(&registry, &validated_t)
        .await
        .context("validated schema (run posflow-admin provision)")?;
    let rejected_enc = Encoder::<TransactionRejected>::for_topic(&registry, &rejected_t)
        .await
        .context("rejected schema (run posflow-admin provision)")?;
    let dlq_enc = Encoder::<DeadLetter>::for_topic(&registry, &dlq_t)
        .await
        .context("dead-letter schema (run posflow-admin provision)")?;
    let decoder = Decoder::<TransactionReceived>::new(registry);
    let rules = args.rules();
    let client_id = format!("validator-{}", std::process::id());
    let consumer = posflow_kafka::clients::consumer(
        &args.kafka,
        &args.kafka.group("posflow-validator"),
        &client_id,
    )?;
    rdkafka::consumer::Consumer::subscribe(&consumer, &[&topics.raw()])?;
    let producer = posflow_kafka::clients::producer(&args.kafka, &client_id)?;
    ctx.health.set_ready(true);
    let m = metrics();

    pipeline::run(
        &consumer,
        &producer,
        args.in_flight,
        args.common.drain(),
        &ctx,
        |input: Input| {
            let (decoder, rules) = (&decoder, &rules);
            let (validated_enc, rejected_enc, dlq_enc) = (&validated_enc, &rejected_enc, &dlq_enc);
            let (validated_t, rejected_t, dlq_t) = (&validated_t, &rejected_t, &dlq_t);
            async move {
                m.received.inc();
                let hdrs = input.headers.clone().unwrap_or_default();
                let payload = input.payload.as_deref().unwrap_or_default();
                let received = match decoder.decode(payload).await {
                    Ok(r) => r,
                    Err(e) if e.is_retriable() => return Err(Retry(e.to_string())),
                    Err(e) => {
                        m.dead_lettered.with_label_values(&["DECODE_FAILED"]).inc();
                        let letter = DeadLetter {
                            reason: "DECODE_FAILED".into(),
                            detail: e.to_string(),
                            stage: "validator".into(),
                            source: input.position(),
                            received_at: now_millis(),
                            payload: payload.to_vec(),
                        };
                        let value = dlq_enc.encode(&letter).map_err(|e| Retry(e.to_string()))?;
                        return Ok(vec![Output {
                            topic: dlq_t.clone(),
                            key: letter.source,
                            value,
                            headers: hdrs.insert(Header {
                                key: headers::REASON,
                                value: Some("DECODE_FAILED"),
                            }),
                        }]);
                    }
                };
                let key = received.transaction.terminal_id.clone();
                let reasons = rules::check(&received, rules);
                let (topic, value, hdrs) = if reasons.is_empty() {
                    m.validated.inc();
                    let v = TransactionValidated {
                        envelope: received.envelope,
                        transaction: received.transaction,
                        validated_at: now_millis(),
                    };
                    (validated_t.clone(), validated_enc.encode(&v), hdrs)
                } else {
                    for r in &reasons {
                        m.rejected.with_label_values(&[r.code.as_str()]).inc();
                    }
                    let codes = reasons
                        .iter()
                        .map(|r| r.code.as_str())
                        .collect::<Vec<_>>()
                        .join(",");
                    let hdrs: OwnedHeaders = hdrs.insert(Header {
                        key: headers::REASON,
                        value: Some(codes.as_bytes()),
                    });
                    let v = TransactionRejected {
                        envelope: received.envelope,
                        transaction: received.transaction,
                        reasons,
                        rejected_at: now_millis(),
                    };
                    (rejected_t.clone(), rejected_enc.encode(&v), hdrs)
                };
                // Encoding a value we just decoded under the same schemas cannot fail short of a bug.
                let value = value.map_err(|e| Retry(format!("encoding: {e}")))?;
                Ok(vec![Output {
                    topic,
                    key,
                    value,
                    headers: hdrs,
                }])
            }
        },
    )
    .await?;
    Ok(())
}
