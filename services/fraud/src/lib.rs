//! posflow-fraud: stateful fraud rules over the transaction stream, exactly once.
//!
//! Card rules read `pos.transactions.validated` (keyed by card token: one replica owns all of a
//! card's transactions, in order); terminal rules read `pos.transactions.raw` (keyed by terminal,
//! every attempt that reached Kafka, including the ones the validator rejects — what card-testing
//! detection wants). Both inputs go through one consumer group and one Kafka transaction per
//! batch, so an alert and the offsets of the transactions that raised it commit together.
//!
//! State is per input partition, in memory, bounded by event time (`engine`). Every judged
//! transaction is also written, with the alerts it raised, to the partition's state topic, in
//! the same Kafka transaction (`changelog`). A partition this replica did not hold — newly
//! assigned, or rewound after an aborted transaction — is restored before its first record is
//! judged, by reading its state partition back over the rules' horizon
//! (`posflow_kafka::replay`): the previous owner's state exactly as it committed it, so alerts
//! are neither missed nor raised twice (docs/fraud.md, "State changelog and recovery").
//! `--rebuild-from input` judges the horizon's input again instead, the way before the
//! changelog (the upgrade path, and the benchmark's baseline).
//!
//! With `--state-dir`, a replica also keeps a copy of what its state partitions committed on
//! its own disk (`store`): restarted there, it reads back only what they gained since its last
//! write, and each key's history from the copy when the key's transactions come — so the time
//! it is blind after a restart does not grow with the horizon (docs/fraud.md, "Local state
//! store").

pub mod changelog;
pub mod engine;
pub mod rules;
pub mod store;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use engine::Feed;
use posflow_kafka::deadletter::{DeadLetters, Refused};
use posflow_kafka::pipeline::{self, Input, Output, Retry};
use posflow_kafka::replay::Start;
use posflow_kafka::{headers, ExactlyOnceArgs, KafkaArgs};
use posflow_runtime::metrics::{counter, counter_vec, gauge, histogram};
use posflow_runtime::{CommonArgs, ConfigErrors, Context};
use posflow_schema::{
    now_millis, Decoder, Encoder, FraudAlert, Transaction, TransactionReceived,
    TransactionValidated,
};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// posflow-fraud: real-time fraud rules over the transaction stream.
#[derive(Debug, Parser)]
#[command(name = "posflow-fraud", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub exactly_once: ExactlyOnceArgs,
    /// Rule settings (TOML, docs/fraud.md); without it the built-in defaults.
    #[arg(long, env = "POSFLOW_FRAUD_RULES")]
    pub rules_file: Option<PathBuf>,
    /// How far ahead of the bridge a terminal clock may run (the validator's skew), in seconds:
    /// a rebuild replays from this much before the horizon, as Kafka timestamps go by receipt.
    #[arg(long, env = "POSFLOW_MAX_CLOCK_SKEW_SECS", default_value_t = 300)]
    pub max_clock_skew_secs: i64,
    /// Where a partition's state comes from when this replica takes it over: its state topic
    /// (`changelog`, what the previous owner committed) or the input's horizon judged again
    /// (`input`: for the first horizon after upgrading from a release without state topics).
    #[arg(long, env = "POSFLOW_FRAUD_REBUILD_FROM", value_enum, default_value_t = RebuildFrom::Changelog)]
    pub rebuild_from: RebuildFrom,
    /// A directory on this replica's own disk for a copy of its partitions' state (`store`):
    /// restarted on the same disk it reads back only what its state topics gained since,
    /// instead of their whole horizon. Kept under `<dir>/<instance id>/`. Without it, state
    /// is read back from the state topics on every takeover.
    #[arg(long, env = "POSFLOW_FRAUD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// See `--rebuild-from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebuildFrom {
    Changelog,
    Input,
}

/// Checked configuration.
pub struct Config {
    pub args: Args,
    pub settings: rules::Settings,
}

impl Args {
    pub fn check(self) -> Result<Config, ConfigErrors> {
        let mut e = ConfigErrors::new();
        self.kafka.check(&mut e);
        self.exactly_once.check(&mut e);
        e.check(
            self.max_clock_skew_secs >= 0,
            "--max-clock-skew-secs must be >= 0",
        );
        e.check(
            self.state_dir.is_none() || self.rebuild_from == RebuildFrom::Changelog,
            "--state-dir keeps a copy of the state topics: it needs --rebuild-from changelog",
        );
        let settings = posflow_runtime::config::load_file(
            self.rules_file.as_deref(),
            "--rules-file",
            rules::Settings::from_toml,
            &mut e,
        );
        e.into_result(Config {
            args: self,
            settings,
        })
    }
}

struct Metrics {
    received: IntCounterVec,
    alerts: IntCounterVec,
    too_late: IntCounter,
    rejudged: IntCounter,
    dead_lettered: IntCounterVec,
    undecodable: IntCounter,
    rebuilds: IntCounter,
    rebuild_seconds: Histogram,
    replayed: IntCounter,
    restored: IntCounter,
    restored_bytes: IntCounter,
    loaded: IntCounter,
    store_pruned: IntCounter,
    store_failures: IntCounter,
    evicted: IntCounter,
    state_keys: IntGauge,
    alert_latency: Histogram,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        received: counter_vec(
            "posflow_fraud_received_total",
            "Transactions judged, by input (card: validated topic, terminal: raw topic)",
            &["input"],
        ),
        alerts: counter_vec(
            "posflow_fraud_alerts_total",
            "Alerts raised, by rule (an aborted transaction's alerts count again on retry)",
            &["rule"],
        ),
        too_late: counter(
            "posflow_fraud_too_late_total",
            "Transactions older than the watermark by more than the allowed lateness: not judged, dead-lettered TOO_LATE",
        ),
        rejudged: counter(
            "posflow_fraud_rejudged_total",
            "Events judged again because a late transaction of their key landed before them",
        ),
        dead_lettered: counter_vec(
            "posflow_fraud_dead_lettered_total",
            "Input records dead-lettered, by reason (TOO_LATE: not judged)",
            &["reason"],
        ),
        undecodable: counter(
            "posflow_fraud_undecodable_total",
            "Input records that could not be decoded (skipped; the validator dead-letters raw ones)",
        ),
        rebuilds: counter(
            "posflow_fraud_state_rebuilds_total",
            "Partition states rebuilt (assignment, rewind after an abort)",
        ),
        rebuild_seconds: histogram(
            "posflow_fraud_state_rebuild_seconds",
            "Time to rebuild one partition's state, during which its transactions wait",
            &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
        ),
        replayed: counter(
            "posflow_fraud_replayed_total",
            "Input records judged again to rebuild state (--rebuild-from input)",
        ),
        restored: counter(
            "posflow_fraud_restored_total",
            "State records read back to restore state (--rebuild-from changelog)",
        ),
        restored_bytes: counter(
            "posflow_fraud_restored_bytes_total",
            "Bytes of the state records read back: the state's size on the wire",
        ),
        loaded: counter(
            "posflow_fraud_store_loaded_total",
            "State records loaded from the local store as their keys' transactions came (--state-dir)",
        ),
        store_pruned: counter(
            "posflow_fraud_store_pruned_total",
            "State records dropped from the local store after their horizon passed (--state-dir)",
        ),
        store_failures: counter(
            "posflow_fraud_store_failures_total",
            "Local store failures; the stage then goes on without it, restoring from the state topics",
        ),
        evicted: counter(
            "posflow_fraud_state_evicted_total",
            "Keys dropped from state after their windows expired",
        ),
        state_keys: gauge(
            "posflow_fraud_state_keys",
            "Cards and terminals held in state, all partitions",
        ),
        alert_latency: histogram(
            "posflow_fraud_alert_latency_seconds",
            "Transaction time to alert produced",
            posflow_runtime::metrics::LATENCY_BUCKETS,
        ),
    })
}

struct PartitionState {
    engine: engine::Engine,
    /// The last offset judged: a record at or below it means the consumer was rewound.
    last_offset: i64,
    since_eviction: u32,
}

/// What the stage holds between records: its partitions' state, and the local store.
struct States {
    parts: HashMap<(String, i32), PartitionState>,
    /// `--state-dir`; dropped (and every partition read back from its state topic) if it fails.
    store: Option<store::Store>,
    /// When the store was last flushed.
    flushed: std::time::Instant,
}

/// How often the store is flushed: what a restart reads back from the state topics at most.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

struct Stage {
    settings: rules::Settings,
    /// Card rules read the validated topic; terminal rules the raw one.
    validated_topic: String,
    /// The state topics of the card and the terminal rules.
    state_topics: (String, String),
    rebuild_from: RebuildFrom,
    validated: Decoder<TransactionValidated>,
    raw: Decoder<TransactionReceived>,
    alerts: (String, Encoder<FraudAlert>),
    dead_letters: DeadLetters,
    replayer: posflow_kafka::replay::Replayer,
    /// Partitions revoked or assigned: their state is dropped, and restored before their next
    /// record. Also hands back the state records that committed, for the store.
    moves: pipeline::TxnContext,
    states: tokio::sync::Mutex<States>,
}

impl Stage {
    fn input_of(&self, topic: &str) -> Feed {
        if topic == self.validated_topic {
            Feed::Card
        } else {
            Feed::Terminal
        }
    }

    async fn decode(&self, input: Feed, payload: &[u8]) -> Result<Option<Transaction>, Retry> {
        let r = match input {
            Feed::Card => self.validated.decode(payload).await.map(|v| v.transaction),
            Feed::Terminal => self.raw.decode(payload).await.map(|r| r.transaction),
        };
        match r {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.is_retriable() => Err(Retry(e.to_string())),
            Err(_) => {
                metrics().undecodable.inc();
                Ok(None)
            }
        }
    }

    fn horizon_ms(&self, input: Feed) -> i64 {
        input.horizon_ms(&self.settings)
    }

    fn state_topic(&self, input: Feed) -> &str {
        match input {
            Feed::Card => &self.state_topics.0,
            Feed::Terminal => &self.state_topics.1,
        }
    }

    /// The key the feed's rules compute on: the card token or the terminal. `None`: a payment
    /// without a card number has no card rules.
    fn key(input: Feed, t: &Transaction) -> Option<&str> {
        match (input, &t.card) {
            (Feed::Card, Some(card)) => Some(&card.token),
            (Feed::Card, None) => None,
            (Feed::Terminal, _) => Some(&t.terminal_id),
        }
    }

    fn judge(&self, input: Feed, e: &mut engine::Engine, t: &Transaction) -> engine::Outcome {
        match Self::key(input, t) {
            Some(key) => e.judge(input, key, t, &self.settings),
            None => engine::Outcome::default(),
        }
    }

    /// One record with its span (a child of the stage that produced the record).
    async fn handle(&self, input: Input) -> Result<Vec<Output>, Retry> {
        let span = headers::record_span("fraud.evaluate", input.headers.as_ref());
        self.evaluate(input, &span).await
    }

    async fn evaluate(&self, input: Input, span: &tracing::Span) -> Result<Vec<Output>, Retry> {
        let m = metrics();
        let kind = self.input_of(&input.topic);
        let Some(t) = self
            .decode(kind, input.payload.as_deref().unwrap_or_default())
            .await?
        else {
            return Ok(vec![]);
        };
        let mut guard = self.states.lock().await;
        let states = &mut *guard;
        self.take_news(states);
        let key = (input.topic.clone(), input.partition);
        let stale = states
            .parts
            .get(&key)
            .is_none_or(|s| input.offset <= s.last_offset);
        if stale {
            let state = self.rebuild(kind, &input, &t, states).await?;
            states.parts.insert(key.clone(), state);
        }
        let state = states.parts.get_mut(&key).expect("inserted above");
        state.last_offset = input.offset;
        if let Err(e) = self.load_key(kind, input.partition, &t, state, &mut states.store) {
            self.store_failed(states, e);
            return Err(Retry(
                "local state store failed; restoring from the state topics".into(),
            ));
        }
        let outcome = self.judge(kind, &mut state.engine, &t);
        let watermark = state.engine.watermark();
        posflow_runtime::metrics::observe_end_to_end(t.transaction_time);
        m.received
            .with_label_values(&[match kind {
                Feed::Card => "card",
                Feed::Terminal => "terminal",
            }])
            .inc();
        m.rejudged.inc_by(outcome.rejudged as u64);
        state.since_eviction += 1;
        if state.since_eviction >= 1000 {
            state.since_eviction = 0;
            m.evicted
                .inc_by(state.engine.evict(self.horizon_ms(kind)) as u64);
            m.state_keys.set(
                states
                    .parts
                    .values()
                    .map(|s| s.engine.keys())
                    .sum::<usize>() as i64,
            );
        }
        if states.flushed.elapsed() >= FLUSH_EVERY {
            self.flush_store(states);
        }
        drop(guard);
        if outcome.too_late {
            m.too_late.inc();
            return Ok(vec![self.too_late(&input, &t, watermark, span)?]);
        }
        let key = Self::key(kind, &t).unwrap_or_default();
        let mut out = outcome
            .alerts
            .into_iter()
            .map(|a| self.alert(kind, key, a, span))
            .collect::<Result<Vec<_>, _>>()?;
        // The state record commits with the alerts and the offset, or not at all.
        out.extend(outcome.state_record.map(|value| Output {
            topic: self.state_topic(kind).to_string(),
            partition: Some(input.partition),
            key: key.to_string(),
            value,
            headers: Default::default(),
        }));
        Ok(out)
    }

    /// A transaction too late to judge, as a dead letter (in the batch's Kafka transaction):
    /// never silently skipped. The letter carries the input record as it was.
    fn too_late(
        &self,
        input: &Input,
        t: &Transaction,
        watermark: i64,
        span: &tracing::Span,
    ) -> Result<Output, Retry> {
        let behind_s = (watermark - t.transaction_time) / 1000;
        let refused = Refused {
            reason: posflow_schema::ReasonCode::TooLate,
            detail: format!(
                "transaction {} is {behind_s} s behind its partition's newest; the allowance is {} s: not judged by the fraud rules",
                t.transaction_id, self.settings.allowed_lateness_secs
            ),
            source: input.position(),
            key: input.position(),
            payload: input.payload.clone().unwrap_or_default(),
            headers: headers::with_trace(input.headers.clone().unwrap_or_default(), span),
        };
        self.dead_letters
            .output(refused)
            .map_err(|e| Retry(e.to_string()))
    }

    /// A partition's state as it was before `input`: after a rebalance or a rewind. From the
    /// local store and what its state partition gained since (`--state-dir`), from the state
    /// partition's horizon, or by judging the input's horizon again (`--rebuild-from input`).
    async fn rebuild(
        &self,
        kind: Feed,
        input: &Input,
        t: &Transaction,
        states: &mut States,
    ) -> Result<PartitionState, Retry> {
        let m = metrics();
        let started = std::time::Instant::now();
        let from_time = t.transaction_time - self.horizon_ms(kind);
        let mut engine = engine::Engine::default();
        let (topic, until) = match self.rebuild_from {
            // Everything committed: what the transactions up to the committed offset wrote.
            RebuildFrom::Changelog => (self.state_topic(kind), None),
            RebuildFrom::Input => (input.topic.as_str(), Some(input.offset)),
        };
        let part = (kind, input.partition);
        // With a store, from where its copy of the partition stops (records queued but not
        // yet written are read again: writing one twice is harmless).
        let mark = match states.store.as_ref().map(|s| s.mark(part)).transpose() {
            Ok(mark) => mark.flatten(),
            Err(e) => {
                self.store_failed(states, e);
                return Err(Retry("local state store failed".into()));
            }
        };
        let from = mark.map_or(Start::Time(from_time), |m| Start::Offset(m.next));
        let mut records = self
            .replayer
            .read(topic, input.partition, from, until)
            .await;
        if let (Some(s), Err(e)) = (states.store.as_mut(), &records) {
            if posflow_kafka::replay::ahead_of_partition(e) {
                tracing::warn!(topic, partition = input.partition, ?from, "the local store is ahead of its state topic (a topic made again?): dropped, reading the horizon");
                s.clear(part).map_err(|e| Retry(e.to_string()))?;
                records = (self.replayer)
                    .read(topic, input.partition, Start::Time(from_time), until)
                    .await;
            }
        }
        let records =
            records.map_err(|e| Retry(format!("reading {topic}/{}: {e}", input.partition)))?;
        let count = records.len();
        let bytes: usize = records.iter().map(|r| r.key.len() + r.payload.len()).sum();
        match (self.rebuild_from, states.store.as_mut()) {
            // The tail is queued, not written: the next flush writes it, and a key's history
            // is loaded from the store and the queue alike. So a restart writes nothing
            // before judging again.
            (RebuildFrom::Changelog, Some(s)) => {
                s.taken_over(part);
                let mut watermark = mark.map_or(0, |m| m.watermark);
                for r in records {
                    let (event, _) = changelog::decode(&r.payload)
                        .map_err(|e| Retry(format!("{topic}/{}: {e}", input.partition)))?;
                    watermark = watermark.max(event.time);
                    s.add(
                        part,
                        r.offset,
                        String::from_utf8_lossy(&r.key).into_owned(),
                        r.payload,
                    );
                }
                engine = engine::Engine::resumed(watermark);
            }
            (RebuildFrom::Changelog, None) => {
                for r in records {
                    let key = String::from_utf8_lossy(&r.key);
                    engine
                        .restore(kind, &key, &r.payload, &self.settings)
                        .map_err(|e| Retry(format!("{topic}/{}: {e}", input.partition)))?;
                }
            }
            (RebuildFrom::Input, _) => {
                for r in records {
                    if let Some(past) = self.decode(kind, &r.payload).await? {
                        self.judge(kind, &mut engine, &past);
                    }
                }
            }
        }
        m.rebuilds.inc();
        match self.rebuild_from {
            RebuildFrom::Changelog => {
                m.restored.inc_by(count as u64);
                m.restored_bytes.inc_by(bytes as u64);
            }
            RebuildFrom::Input => m.replayed.inc_by(count as u64),
        }
        m.rebuild_seconds.observe(started.elapsed().as_secs_f64());
        tracing::info!(
            topic = input.topic,
            partition = input.partition,
            from = topic,
            since = ?from,
            records = count,
            keys = engine.keys(),
            seconds = started.elapsed().as_secs_f64(),
            "partition state rebuilt"
        );
        Ok(PartitionState {
            engine,
            last_offset: -1,
            since_eviction: 0,
        })
    }

    /// What the pipeline reported since the last call: partitions moved (their state dropped)
    /// and state records committed (queued for the store).
    fn take_news(&self, states: &mut States) {
        for key in self.moves.take_moved() {
            states.parts.remove(&key);
        }
        self.absorb_committed(states);
    }

    /// The state records that committed since the last call, queued for the store: those of
    /// partitions held only (a partition taken over later reads them back from its topic).
    fn absorb_committed(&self, states: &mut States) {
        let (committed, gap) = self.moves.take_committed();
        let Some(store) = states.store.as_mut() else {
            return;
        };
        if gap {
            // A committed record is missing from what came back: read every partition back.
            tracing::warn!(
                "a committed state record came back without its offset: restoring every partition"
            );
            states.parts.clear();
            return;
        }
        if committed.is_empty() {
            return;
        }
        // The partitions held, once per call (not a lookup with a new string per record).
        let held: std::collections::HashSet<store::Part> = states
            .parts
            .keys()
            .map(|(topic, p)| (self.input_of(topic), *p))
            .collect();
        for c in committed {
            let feed = if c.topic == self.state_topics.0 {
                Feed::Card
            } else {
                Feed::Terminal
            };
            if held.contains(&(feed, c.partition)) {
                store.add((feed, c.partition), c.offset, c.key, c.value);
            }
        }
    }

    /// With a store, the transaction's key's history comes from it the first time a key of
    /// its bucket is seen since the partition was taken over, with the bucket's other keys.
    fn load_key(
        &self,
        kind: Feed,
        partition: i32,
        t: &Transaction,
        state: &mut PartitionState,
        store: &mut Option<store::Store>,
    ) -> Result<(), store::Error> {
        let (Some(store), Some(key)) = (store, Self::key(kind, t)) else {
            return Ok(());
        };
        let Some(records) = store.read_bucket((kind, partition), key)? else {
            return Ok(());
        };
        metrics().loaded.inc_by(records.len() as u64);
        for (key, r) in records {
            state.engine.restore(kind, &key, &r, &self.settings)?;
        }
        Ok(())
    }

    /// Writes what committed since the last flush to the store.
    fn flush_store(&self, states: &mut States) {
        states.flushed = std::time::Instant::now();
        let Some(s) = states.store.as_mut() else {
            return;
        };
        metrics().store_pruned.inc_by(s.take_pruned());
        if let Err(e) = s.flush(|f| self.horizon_ms(f)) {
            self.store_failed(states, e);
        }
    }

    /// The store failed (a full or broken disk): the stage goes on without it, every partition
    /// read back from its state topic, as without `--state-dir`.
    fn store_failed(&self, states: &mut States, e: store::Error) {
        tracing::error!(error = %e, "local state store failed: going on without it, restoring from the state topics");
        metrics().store_failures.inc();
        states.store = None;
        states.parts.clear();
    }

    /// One alert as a record for the alerts topic, keyed by the rules' key: the card token
    /// (card rules) or the terminal. Terminal and merchant are those of the transaction it fired
    /// at, which is not the one just read when a late arrival completed the pattern.
    fn alert(
        &self,
        kind: Feed,
        key: &str,
        a: engine::Alert,
        span: &tracing::Span,
    ) -> Result<Output, Retry> {
        let m = metrics();
        let (topic, enc) = &self.alerts;
        let now = now_millis();
        m.alerts.with_label_values(&[a.rule_id]).inc();
        m.alert_latency
            .observe((now - a.anchor_time).max(0) as f64 / 1000.0);
        let record = FraudAlert {
            alert_id: a.alert_id,
            rule_id: a.rule_id.to_string(),
            severity: a.severity,
            score: a.score,
            evidence_transaction_ids: a.evidence,
            card_token: (kind == Feed::Card).then(|| key.to_string()),
            merchant_id: a.merchant_id,
            terminal_id: a.terminal_id,
            detected_at: now,
        };
        Ok(Output {
            topic: topic.clone(),
            partition: None,
            key: key.to_string(),
            value: enc
                .encode(&record)
                .map_err(|e| Retry(format!("encoding: {e}")))?,
            headers: headers::with_trace(Default::default(), span),
        })
    }
}

pub async fn run(config: Config, ctx: Context) -> anyhow::Result<()> {
    let Config { args, settings } = config;
    let topics = args.kafka.topics();
    let registry = args.kafka.registry();
    let alerts_topic = topics.fraud_alerts();
    let group = args.kafka.group("posflow-fraud");
    let instance = args.exactly_once.instance();
    let moves = pipeline::TxnContext::default();
    let clients =
        || pipeline::transactional_clients(&args.kafka, &group, "fraud", &instance, &moves);
    let first = clients()?;
    let (validated_topic, raw_topic) = (topics.validated(), topics.raw());
    let state_topics = (topics.fraud_state_cards(), topics.fraud_state_terminals());
    posflow_kafka::replay::check_state_topics(
        &first.0,
        &[
            (&validated_topic, &state_topics.0),
            (&raw_topic, &state_topics.1),
        ],
    )?;
    let inputs = [validated_topic.clone(), raw_topic.clone()];
    let store = match &args.state_dir {
        Some(dir) => {
            let path = dir.join(&instance).join("fraud-state.redb");
            let cluster = tokio::task::block_in_place(|| {
                rdkafka::consumer::Consumer::client(&first.0)
                    .fetch_cluster_id(std::time::Duration::from_secs(10))
            })
            .unwrap_or_default();
            let identity = format!("{cluster}|{}|{}", state_topics.0, state_topics.1);
            let store = tokio::task::block_in_place(|| store::Store::open(&path, &identity))?;
            moves.track_commits(&[&state_topics.0, &state_topics.1]);
            tracing::info!(path = %path.display(), "local state store open");
            Some(store)
        }
        None => None,
    };
    let stage = Stage {
        alerts: (
            alerts_topic.clone(),
            Encoder::for_topic(&registry, &alerts_topic)
                .await
                .context("fraud alert schema (run posflow-admin provision)")?,
        ),
        dead_letters: DeadLetters::for_stage(&args.kafka, "fraud", metrics().dead_lettered.clone())
            .await?,
        validated: Decoder::new(registry.clone()),
        raw: Decoder::new(registry),
        replayer: posflow_kafka::replay::Replayer::new(
            &args.kafka,
            "fraud",
            args.max_clock_skew_secs * 1000,
        ),
        validated_topic,
        state_topics,
        rebuild_from: args.rebuild_from,
        settings,
        moves: moves.clone(),
        states: tokio::sync::Mutex::new(States {
            parts: HashMap::new(),
            store,
            flushed: std::time::Instant::now(),
        }),
    };
    tracing::info!(
        card_horizon_s = stage.settings.card_horizon_ms() / 1000,
        terminal_horizon_s = stage.settings.terminal_horizon_ms() / 1000,
        rebuild_from = ?stage.rebuild_from,
        "judging"
    );
    ctx.health.set_ready(true);
    let topics = [inputs[0].as_str(), inputs[1].as_str()];
    let judging = pipeline::run_transactional_restarting(
        first,
        clients,
        &topics,
        args.exactly_once.batching(),
        &ctx,
        |input| stage.handle(input),
    );
    // The store is flushed by the records as they come, and by this when none come: what
    // committed last before a quiet spell is on disk a second later, not at the next record.
    let flushing = async {
        loop {
            tokio::time::sleep(FLUSH_EVERY).await;
            let mut guard = stage.states.lock().await;
            if guard.store.is_some() && guard.flushed.elapsed() >= FLUSH_EVERY {
                stage.take_news(&mut guard);
                stage.flush_store(&mut guard);
            }
        }
    };
    tokio::select! {
        judged = judging => judged?,
        () = flushing => {}
    }
    // A clean stop (a rolling upgrade) writes everything that committed: the next start reads
    // no tail.
    let mut guard = stage.states.lock().await;
    stage.take_news(&mut guard);
    if let Some(s) = guard.store.as_mut() {
        tokio::task::block_in_place(|| s.sync(|f| stage.horizon_ms(f)))?;
    }
    Ok(())
}
