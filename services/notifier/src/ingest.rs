//! Kafka → outbox. Validated transactions and fraud alerts are rendered into deliveries (or
//! digest items) and inserted in batches, one database transaction each; offsets are stored
//! only after the commit. Inserts are idempotent on the idempotency key, so a record consumed
//! twice — after a crash or a rebalance — adds nothing.

use crate::store::{self, DigestItem, NewDelivery};
use crate::{render, Args, Prefs};
use posflow_kafka::deadletter::{DeadLetterProducer, DeadLetters};
use posflow_kafka::pipeline::{decode_with_retry, Batching, Input};
use posflow_kafka::sink::{self, BatchSink, NextOffsets, WriteError};
use posflow_pg::Conn;
use posflow_runtime::metrics::counter_vec;
use posflow_runtime::Context;
use posflow_schema::{Decoder, FraudAlert, TransactionValidated};
use prometheus::IntCounterVec;
use rdkafka::consumer::Consumer;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

struct Metrics {
    events: IntCounterVec,
    enqueued: IntCounterVec,
    ignored: IntCounterVec,
    dead_lettered: IntCounterVec,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        events: counter_vec(
            "posflow_notifier_events_total",
            "Records consumed, by input (transaction, fraud_alert)",
            &["input"],
        ),
        enqueued: counter_vec(
            "posflow_notifier_enqueued_total",
            "New outbox rows (delivery) and digest items (digest_item); redeliveries add none",
            &["kind"],
        ),
        ignored: counter_vec(
            "posflow_notifier_ignored_total",
            "Events no merchant asked for, by reason (no_preferences, not_subscribed)",
            &["reason"],
        ),
        dead_lettered: counter_vec(
            "posflow_notifier_ingest_dead_lettered_total",
            "Records dead-lettered on the way in, by reason",
            &["reason"],
        ),
    })
}

/// One consumed record, rendered.
pub struct Piece {
    deliveries: Vec<NewDelivery>,
    item: Option<DigestItem>,
    /// A fraud alert, kept with the merchant's record whether or not it is delivered.
    alert: Option<FraudAlert>,
    /// A transaction's terminal timestamp (alerts have none), for the end-to-end histogram.
    transaction_time: Option<i64>,
}

pub async fn run(
    args: Arc<Args>,
    prefs: Prefs,
    wake: Arc<Notify>,
    ctx: Context,
) -> anyhow::Result<()> {
    let topics = args.kafka.topics();
    let (validated_t, alerts_t) = (topics.validated(), topics.fraud_alerts());
    let registry = args.kafka.registry();
    let client_id = format!("notifier-{}", std::process::id());
    let dead = DeadLetterProducer {
        letters: DeadLetters::for_stage(&args.kafka, "notifier", metrics().dead_lettered.clone())
            .await?,
        producer: posflow_kafka::clients::producer(&args.kafka, &client_id)?,
    };
    let consumer = sink::consumer(
        &args.kafka,
        &args.kafka.group("posflow-notifier"),
        &client_id,
    )?;
    consumer.subscribe(&[&validated_t, &alerts_t])?;
    // An input deleted under the running notifier must stop it, not leave it ready and idle.
    let vanished = posflow_kafka::clients::input_vanished(
        args.kafka.clone(),
        vec![validated_t.clone(), alerts_t],
    );
    let outbox = Outbox {
        conn: tokio::sync::Mutex::new(Conn::new(&args.db)),
        prefs,
        wake,
        validated_t,
        validated_dec: Decoder::new(registry.clone()),
        alert_dec: Decoder::new(registry),
    };
    let batching = Batching {
        max_records: args.batch_size,
        linger: Duration::from_millis(args.batch_linger_ms),
    };
    sink::run(&consumer, &outbox, &dead, batching, &ctx, vanished).await
}

/// The outbox as a batch sink. Kafka's committed offsets are the truth on where to resume:
/// inserts are idempotent on the idempotency key, so a record consumed twice adds nothing.
struct Outbox {
    /// Locked by a write: the next batch is prepared meanwhile.
    conn: tokio::sync::Mutex<Conn>,
    prefs: Prefs,
    /// Told after every batch: the dispatcher looks for new rows at once.
    wake: Arc<Notify>,
    validated_t: String,
    validated_dec: Decoder<TransactionValidated>,
    alert_dec: Decoder<FraudAlert>,
}

impl BatchSink for Outbox {
    type Item = Piece;
    const SPAN: &'static str = "notifier.enqueue";

    async fn prepare(
        &self,
        input: &Input,
        span: &tracing::Span,
        ctx: &Context,
    ) -> Option<Result<Piece, String>> {
        let m = metrics();
        let payload = input.payload.as_deref().unwrap_or_default();
        let piece = if input.topic == self.validated_t {
            m.events.with_label_values(&["transaction"]).inc();
            decode_with_retry(&self.validated_dec, payload, ctx)
                .await?
                .map(|v| {
                    let (deliveries, item) = transaction(&self.prefs, &v);
                    Piece {
                        deliveries,
                        item,
                        alert: None,
                        transaction_time: Some(v.transaction.transaction_time),
                    }
                })
        } else {
            m.events.with_label_values(&["fraud_alert"]).inc();
            decode_with_retry(&self.alert_dec, payload, ctx)
                .await?
                .map(|a| Piece {
                    deliveries: alert(&self.prefs, &a),
                    item: None,
                    alert: Some(a),
                    transaction_time: None,
                })
        };
        Some(piece.map(|mut p| {
            // Each attempt will be a span of this trace (dispatch).
            if let Some(tp) = posflow_runtime::trace::traceparent(span) {
                p.deliveries
                    .iter_mut()
                    .for_each(|d| d.traceparent = Some(tp.clone()));
            }
            p
        }))
    }

    async fn write(
        &self,
        batch: &[Piece],
        _next: &NextOffsets,
        ctx: &Context,
    ) -> Option<Result<(), WriteError>> {
        if batch.is_empty() {
            return Some(Ok(())); // the offsets live in Kafka
        }
        let deliveries: Vec<NewDelivery> = batch
            .iter()
            .flat_map(|p| p.deliveries.iter().cloned())
            .collect();
        let items: Vec<DigestItem> = batch.iter().filter_map(|p| p.item.clone()).collect();
        let alerts: Vec<&FraudAlert> = batch.iter().filter_map(|p| p.alert.as_ref()).collect();
        let mut conn = self.conn.lock().await;
        let client = conn.get(ctx).await?;
        let (new_deliveries, new_items) =
            match store::enqueue(client, &deliveries, &items, &alerts).await {
                Ok(n) => n,
                Err(e) => return Some(Err(e.into())),
            };
        let m = metrics();
        m.enqueued
            .with_label_values(&["delivery"])
            .inc_by(new_deliveries);
        m.enqueued
            .with_label_values(&["digest_item"])
            .inc_by(new_items);
        Some(Ok(()))
    }

    fn committed(&self, batch: &[Piece]) {
        for t in batch.iter().filter_map(|p| p.transaction_time) {
            posflow_runtime::metrics::observe_end_to_end(t);
        }
        if !batch.is_empty() {
            self.wake.notify_one();
        }
    }
}

fn transaction(prefs: &Prefs, v: &TransactionValidated) -> (Vec<NewDelivery>, Option<DigestItem>) {
    let m = metrics();
    let Some(p) = prefs.get(&v.transaction.merchant_id) else {
        m.ignored.with_label_values(&["no_preferences"]).inc();
        return (vec![], None);
    };
    let out = render::transaction(&p, v);
    if out.0.is_empty() && out.1.is_none() {
        m.ignored.with_label_values(&["not_subscribed"]).inc();
    }
    out
}

fn alert(prefs: &Prefs, a: &FraudAlert) -> Vec<NewDelivery> {
    let m = metrics();
    let Some(p) = prefs.get(&a.merchant_id) else {
        m.ignored.with_label_values(&["no_preferences"]).inc();
        return vec![];
    };
    let out = render::alert(&p, a);
    if out.is_empty() {
        m.ignored.with_label_values(&["not_subscribed"]).inc();
    }
    out
}
