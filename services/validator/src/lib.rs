//! posflow-validator: business rules over the raw topic. Valid → validated topic; invalid →
//! rejected topic with every reason code. Nothing is dropped: a record that cannot even be
//! decoded goes to the dead-letter topic. Exactly once by default (Kafka transactions), at
//! least once by configuration.

pub mod offline;
pub mod policy;
pub mod rules;
pub mod sequence;

use anyhow::Context as _;
use clap::Parser;
use posflow_kafka::deadletter::{DeadLetters, Refused};
use posflow_kafka::pipeline::{self, Delivery, Input, Output, Retry};
use posflow_kafka::{headers, ExactlyOnceArgs, KafkaArgs};
use posflow_runtime::metrics::{counter, counter_vec, gauge};
use posflow_runtime::{CommonArgs, ConfigErrors, Context};
use posflow_schema::{
    now_millis, Decoder, Encoder, Transaction, TransactionReceived, TransactionRejected,
    TransactionValidated,
};
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use std::path::PathBuf;
use std::sync::OnceLock;

/// posflow-validator: checks every raw transaction against the business rules.
#[derive(Debug, Parser)]
#[command(name = "posflow-validator", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Rules per merchant and transaction type (TOML, docs/validation.md). Without it every
    /// merchant gets the built-in defaults.
    #[arg(long, env = "POSFLOW_VALIDATOR_RULES")]
    pub rules_file: Option<PathBuf>,
    /// exactly-once: Kafka transactions; at-least-once: idempotent produce, may repeat after a crash.
    #[arg(long, env = "POSFLOW_DELIVERY", value_enum, default_value_t = Delivery::ExactlyOnce)]
    pub delivery: Delivery,
    #[command(flatten)]
    pub exactly_once: ExactlyOnceArgs,
    /// at-least-once: records in flight between consume and confirmed produce.
    #[arg(long, env = "POSFLOW_VALIDATOR_IN_FLIGHT", default_value_t = 1000)]
    pub in_flight: usize,
}

/// Checked configuration: the arguments and the parsed rules.
pub struct Config {
    pub args: Args,
    pub policies: policy::Policies,
}

impl Args {
    /// Checks everything, including the rules file, listing every problem.
    pub fn check(self) -> Result<Config, ConfigErrors> {
        let mut e = ConfigErrors::new();
        self.kafka.check(&mut e);
        e.check(self.in_flight >= 1, "--in-flight must be at least 1");
        self.exactly_once.check(&mut e);
        let policies = posflow_runtime::config::load_file(
            self.rules_file.as_deref(),
            "--rules-file",
            policy::Policies::from_toml,
            &mut e,
        );
        e.into_result(Config {
            args: self,
            policies,
        })
    }
}

struct Metrics {
    received: IntCounter,
    validated: IntCounter,
    rejected: IntCounter,
    rejection_reasons: IntCounterVec,
    dead_lettered: IntCounterVec,
    sequence_gaps: IntCounter,
    sequence_missing: IntCounter,
    sequence_behind: IntCounter,
    terminals: IntGauge,
    offline: IntCounter,
    outages: IntGauge,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        received: counter(
            "posflow_validator_received_total",
            "Raw records consumed (an aborted transaction's records count again on retry)",
        ),
        validated: counter(
            "posflow_validator_validated_total",
            "Transactions that passed every rule",
        ),
        rejected: counter(
            "posflow_validator_rejected_total",
            "Transactions that broke one or more rules",
        ),
        rejection_reasons: counter_vec(
            "posflow_validator_rejection_reasons_total",
            "Rule violations, by reason code (a transaction with two reasons counts in both)",
            &["reason"],
        ),
        dead_lettered: counter_vec(
            "posflow_validator_dead_lettered_total",
            "Raw records that could not be decoded",
            &["reason"],
        ),
        sequence_gaps: counter(
            "posflow_validator_sequence_gaps_total",
            "Times a terminal's sequence number skipped ahead",
        ),
        sequence_missing: counter(
            "posflow_validator_sequence_missing_total",
            "Sequence numbers skipped in those gaps",
        ),
        sequence_behind: counter(
            "posflow_validator_sequence_behind_total",
            "Transactions at or below their terminal's last sequence number (resends, reordering)",
        ),
        terminals: gauge(
            "posflow_validator_terminals_tracked",
            "Terminals whose last sequence number this replica holds",
        ),
        offline: counter(
            "posflow_validator_offline_total",
            "Transactions captured offline (payload version 2 `offline: true`), accepted or not",
        ),
        outages: gauge(
            "posflow_validator_outages_tracked",
            "Terminal outages whose accepted offline count and total this replica holds",
        ),
    })
}

/// Where a validated transaction goes: keyed by card token, so every transaction of a card lands
/// on one partition in order — what the fraud stage's per-card windows need. A payment without a
/// card number falls back to its terminal (`terminal:<id>`, which cannot collide with a token).
pub fn validated_key(t: &Transaction) -> String {
    match &t.card {
        Some(c) => c.token.clone(),
        None => format!("terminal:{}", t.terminal_id),
    }
}

/// Added to the longest offline max age when reading outages back: record timestamps are the
/// time a record was written, which may trail the clock of the judgement by a batch.
const OUTAGE_READ_MARGIN_MS: i64 = 10 * 60_000;

/// Everything one record needs, shared by both delivery modes.
struct Validator {
    decoder: Decoder<TransactionReceived>,
    validated: (String, Encoder<TransactionValidated>),
    rejected: (String, Encoder<TransactionRejected>),
    dead_letters: DeadLetters,
    policies: policy::Policies,
    sequences: sequence::Tracker,
    outages: offline::Outages,
    outage_state: OutageState,
}

/// Where the per-outage counts survive a restart (`offline` module docs): the state topic, and
/// which raw partitions this replica has restored it for.
struct OutageState {
    topic: String,
    replayer: posflow_kafka::replay::Replayer,
    /// Exactly-once only: partitions moved, from its rebalance callback. At least once, the
    /// counts are this replica's memory (docs/validation.md).
    moves: Option<pipeline::TxnContext>,
    restored: tokio::sync::Mutex<std::collections::HashSet<i32>>,
    /// How far back to read: the longest offline max age, plus a margin for record timestamps
    /// (the write time) trailing the clock that judged against the age.
    window_ms: i64,
}

impl Validator {
    /// One record with its span (a child of the bridge's produce span; ends when this returns).
    async fn handle(&self, input: Input) -> Result<Vec<Output>, Retry> {
        let span = headers::record_span("validator.validate", input.headers.as_ref());
        self.validate(input, &span).await
    }

    async fn validate(&self, input: Input, span: &tracing::Span) -> Result<Vec<Output>, Retry> {
        let m = metrics();
        m.received.inc();
        let hdrs = headers::with_trace(input.headers.clone().unwrap_or_default(), span);
        let payload = input.payload.as_deref().unwrap_or_default();
        let received = match self.decoder.decode(payload).await {
            Ok(r) => r,
            Err(e) if e.is_retriable() => return Err(Retry(e.to_string())),
            Err(e) => {
                let refused = Refused {
                    reason: posflow_schema::ReasonCode::DecodeFailed,
                    detail: e.to_string(),
                    source: input.position(),
                    key: input.position(),
                    payload: payload.to_vec(),
                    headers: hdrs,
                };
                // In the pipeline's Kafka transaction, like every output. An encode failure
                // (a bug) is waited out: see posflow_kafka::deadletter.
                let letter = self
                    .dead_letters
                    .output(refused)
                    .map_err(|e| Retry(e.to_string()))?;
                return Ok(vec![letter]);
            }
        };
        self.take_over(input.partition).await?;
        self.track_sequence(&received.transaction, span);
        posflow_runtime::metrics::observe_end_to_end(received.transaction.transaction_time);
        let policy = self
            .policies
            .for_merchant(&received.transaction.merchant_id);
        let mut reasons = rules::check(&received, policy);
        let t = &received.transaction;
        let state_record = if !t.offline {
            self.outages.online(&t.terminal_id, t.sequence)
        } else {
            m.offline.inc();
            // The outage's count and total only for a transaction every other rule accepts:
            // one refused for another reason takes nothing from the outage's allowance.
            let record = if reasons.is_empty() {
                let admitted = self.outages.admit(input.partition, t, &policy.offline);
                reasons = admitted.reasons;
                admitted.record
            } else {
                None
            };
            m.outages.set(self.outages.held() as i64);
            record
        };
        // The outage's change commits with the answer and the offset, or not at all.
        let state_record = state_record.map(|value| Output {
            topic: self.outage_state.topic.clone(),
            partition: Some(input.partition),
            key: t.terminal_id.clone(),
            value,
            headers: Default::default(),
        });
        let output = if reasons.is_empty() {
            m.validated.inc();
            let v = TransactionValidated {
                envelope: received.envelope,
                transaction: received.transaction,
                validated_at: now_millis(),
            };
            let (topic, enc) = &self.validated;
            Output {
                topic: topic.clone(),
                partition: None,
                key: validated_key(&v.transaction),
                value: enc
                    .encode(&v)
                    .map_err(|e| Retry(format!("encoding: {e}")))?,
                headers: hdrs,
            }
        } else {
            m.rejected.inc();
            for r in &reasons {
                m.rejection_reasons
                    .with_label_values(&[r.code.as_str()])
                    .inc();
            }
            let codes = reasons
                .iter()
                .map(|r| r.code.as_str())
                .collect::<Vec<_>>()
                .join(",");
            let v = TransactionRejected {
                envelope: received.envelope,
                transaction: received.transaction,
                reasons,
                rejected_at: now_millis(),
            };
            let (topic, enc) = &self.rejected;
            Output {
                topic: topic.clone(),
                partition: None,
                key: v.transaction.terminal_id.clone(),
                value: enc
                    .encode(&v)
                    .map_err(|e| Retry(format!("encoding: {e}")))?,
                headers: headers::with_reason(hdrs, &codes),
            }
        };
        Ok(std::iter::once(output).chain(state_record).collect())
    }

    /// Before a raw partition's first record here: drops the outages of partitions moved
    /// since, and reads this one's back from the outages state topic, so its terminals' outages
    /// count what the previous owner accepted.
    async fn take_over(&self, partition: i32) -> Result<(), Retry> {
        let s = &self.outage_state;
        let Some(moves) = &s.moves else {
            return Ok(());
        };
        let mut restored = s.restored.lock().await;
        for (_, p) in moves.take_moved() {
            if restored.remove(&p) {
                self.outages.drop_partition(p);
            }
        }
        if restored.contains(&partition) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let records = s
            .replayer
            .read(
                &s.topic,
                partition,
                posflow_kafka::replay::Start::Time(now_millis() - s.window_ms),
                None,
            )
            .await
            .map_err(|e| Retry(format!("reading {}/{partition}: {e}", s.topic)))?;
        for r in &records {
            let terminal = String::from_utf8_lossy(&r.key);
            // A record this release cannot read stops the partition (retried, logged) rather
            // than judging its outages without it.
            self.outages
                .restore(partition, &terminal, &r.payload)
                .map_err(|e| Retry(format!("{}/{partition}: {e}", s.topic)))?;
        }
        restored.insert(partition);
        metrics().outages.set(self.outages.held() as i64);
        tracing::info!(
            partition,
            records = records.len(),
            outages = self.outages.held(),
            seconds = started.elapsed().as_secs_f64(),
            "outages restored"
        );
        Ok(())
    }

    fn track_sequence(&self, t: &Transaction, span: &tracing::Span) {
        let m = metrics();
        match self.sequences.observe(&t.terminal_id, t.sequence) {
            sequence::Sequence::InOrder => {}
            // The gauge moves only when the map grows: no shard walk per record.
            sequence::Sequence::First => m.terminals.inc(),
            sequence::Sequence::Gap { expected, missing } => {
                m.sequence_gaps.inc();
                m.sequence_missing.inc_by(missing.unsigned_abs());
                tracing::warn!(
                    event = "sequence_gap",
                    terminal_id = t.terminal_id,
                    merchant_id = t.merchant_id,
                    expected,
                    got = t.sequence,
                    missing,
                    trace_id = posflow_runtime::trace::trace_id(span),
                    "terminal sequence gap"
                );
            }
            sequence::Sequence::Behind { .. } => m.sequence_behind.inc(),
        }
    }
}

pub async fn run(config: Config, ctx: Context) -> anyhow::Result<()> {
    let Config { args, policies } = config;
    let topics = args.kafka.topics();
    let registry = args.kafka.registry();
    let (validated_t, rejected_t) = (topics.validated(), topics.rejected());
    let (raw, outages_t) = (topics.raw(), topics.validator_state_outages());
    let group = args.kafka.group("posflow-validator");
    let instance = args.exactly_once.instance();
    let client_id = format!("validator-{instance}");
    let moves = pipeline::TxnContext::default();
    let clients =
        || pipeline::transactional_clients(&args.kafka, &group, "validator", &instance, &moves);
    let exactly_once = match args.delivery {
        Delivery::ExactlyOnce => {
            let first = clients()?;
            posflow_kafka::replay::check_state_topics(&first.0, &[(&raw, &outages_t)])?;
            Some(first)
        }
        Delivery::AtLeastOnce => None,
    };
    let validator = Validator {
        validated: (
            validated_t.clone(),
            Encoder::for_topic(&registry, &validated_t)
                .await
                .context("validated schema (run posflow-admin provision)")?,
        ),
        rejected: (
            rejected_t.clone(),
            Encoder::for_topic(&registry, &rejected_t)
                .await
                .context("rejected schema (run posflow-admin provision)")?,
        ),
        dead_letters: DeadLetters::for_stage(
            &args.kafka,
            "validator",
            metrics().dead_lettered.clone(),
        )
        .await?,
        decoder: Decoder::new(registry),
        outage_state: OutageState {
            topic: outages_t,
            replayer: posflow_kafka::replay::Replayer::new(&args.kafka, "validator", 0),
            moves: exactly_once.is_some().then(|| moves.clone()),
            restored: Default::default(),
            window_ms: policies.longest_offline_age_ms() + OUTAGE_READ_MARGIN_MS,
        },
        policies,
        sequences: sequence::Tracker::default(),
        outages: offline::Outages::default(),
    };
    tracing::info!(
        delivery = ?args.delivery,
        merchants_with_own_rules = validator.policies.merchant_count(),
        "validating"
    );
    let transform = |input: Input| validator.handle(input);
    match exactly_once {
        Some(first) => {
            ctx.health.set_ready(true);
            let batching = args.exactly_once.batching();
            pipeline::run_transactional_restarting(
                first,
                clients,
                &[&raw],
                batching,
                &ctx,
                transform,
            )
            .await?;
        }
        None => {
            let consumer = posflow_kafka::clients::consumer(&args.kafka, &group, &client_id)?;
            rdkafka::consumer::Consumer::subscribe(&consumer, &[&raw])?;
            let producer = posflow_kafka::clients::producer(&args.kafka, &client_id)?;
            ctx.health.set_ready(true);
            pipeline::run(
                &consumer,
                &producer,
                args.in_flight,
                args.common.drain(),
                &ctx,
                transform,
            )
            .await?;
        }
    }
    Ok(())
}
