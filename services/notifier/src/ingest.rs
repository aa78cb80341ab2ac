//! Kafka → outbox. Validated transactions and fraud alerts are rendered into deliveries (or
//! digest items) and inserted in batches, one database transaction each; offsets are stored
//! only after the commit. Inserts are idempotent on the idempotency key, so a record consumed
//! twice — after a crash or a rebalance — adds nothing.

use crate::store::{self, DigestItem, NewDelivery};
use crate::{render, Args, Conn, Prefs};
use anyhow::Context as _;
use posflow_kafka::headers;
use posflow_kafka::pipeline::{consumed, decode_with_retry, produce_until_confirmed, Output};
use posflow_runtime::metrics::counter_vec;
use posflow_runtime::{Backoff, Context};
use posflow_schema::{now_millis, DeadLetter, Decoder, Encoder, FraudAlert, TransactionValidated};
use prometheus::IntCounterVec;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedHeaders};
use std::collections::BTreeMap;
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

/// One consumed record, ready to insert.
struct Piece {
    source: String,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    deliveries: Vec<NewDelivery>,
    item: Option<DigestItem>,
    /// A fraud alert, kept with the merchant's record whether or not it is delivered.
    alert: Option<FraudAlert>,
    /// A transaction's terminal timestamp (alerts have none), for the end-to-end histogram.
    transaction_time: Option<i64>,
    /// Tracing on: this record's span, ended when its batch is in the outbox.
    _span: tracing::Span,
}

pub async fn run(
    args: Arc<Args>,
    prefs: Prefs,
    wake: Arc<Notify>,
    ctx: Context,
) -> anyhow::Result<()> {
    let m = metrics();
    let topics = args.kafka.topics();
    let (validated_t, alerts_t, dlq_t) = (
        topics.validated(),
        topics.fraud_alerts(),
        topics.deadletter(),
    );
    let registry = args.kafka.registry();
    let dlq_enc = Encoder::<DeadLetter>::for_topic(&registry, &dlq_t)
        .await
        .context("dead-letter schema (run posflow-admin provision)")?;
    let validated_dec = Decoder::<TransactionValidated>::new(registry.clone());
    let alert_dec = Decoder::<FraudAlert>::new(registry);
    let client_id = format!("notifier-{}", std::process::id());
    let consumer = posflow_kafka::clients::consumer(
        &args.kafka,
        &args.kafka.group("posflow-notifier"),
        &client_id,
    )?;
    consumer.subscribe(&[&validated_t, &alerts_t])?;
    // An input deleted under the running notifier must stop it, not leave it ready and idle.
    let vanished = posflow_kafka::clients::input_vanished(
        args.kafka.clone(),
        vec![validated_t.clone(), alerts_t.clone()],
    );
    tokio::pin!(vanished);
    let producer = posflow_kafka::clients::producer(&args.kafka, &client_id)?;
    let mut conn = Conn::new(&args.db);
    let linger = Duration::from_millis(args.batch_linger_ms);
    let mut batch: Vec<Piece> = Vec::with_capacity(args.batch_size);
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    loop {
        let deadline = tokio::time::Instant::now() + linger;
        let mut stopping = false;
        while batch.len() < args.batch_size {
            tokio::select! {
                msg = consumer.recv() => {
                    let Some(msg) = consumed(msg, &ctx).await? else { continue };
                    let (topic, partition, offset) = (msg.topic().to_string(), msg.partition(), msg.offset());
                    let payload = msg.payload().unwrap_or_default().to_vec();
                    let hdrs = msg.headers().map(|h| h.detach()).unwrap_or_default();
                    drop(msg);
                    let source = format!("{topic}/{partition}/{offset}");
                    let rendered = if topic == validated_t {
                        m.events.with_label_values(&["transaction"]).inc();
                        decode_with_retry(&validated_dec, &payload, &ctx).await.map(|r| r.map(|v| (transaction(&prefs, &v), Some(v.transaction.transaction_time), None)))
                    } else {
                        m.events.with_label_values(&["fraud_alert"]).inc();
                        decode_with_retry(&alert_dec, &payload, &ctx).await.map(|r| r.map(|a| (alert(&prefs, &a), None, Some(a))))
                    };
                    match rendered {
                        Some(Ok(((mut deliveries, item), transaction_time, alert))) => {
                            let span = headers::record_span("notifier.enqueue", Some(&hdrs));
                            // Each attempt will be a span of this trace (dispatch).
                            if let Some(tp) = posflow_runtime::trace::traceparent(&span) {
                                deliveries.iter_mut().for_each(|d| d.traceparent = Some(tp.clone()));
                            }
                            batch.push(Piece { source, payload, headers: hdrs, deliveries, item, alert, transaction_time, _span: span })
                        }
                        Some(Err(detail)) => {
                            let letter = DeadLetter { reason: "DECODE_FAILED".into(), detail, stage: "notifier".into(), source, received_at: now_millis(), payload };
                            if !dead_letter(&producer, &dlq_t, &dlq_enc, letter, hdrs, &ctx).await? {
                                stopping = true;
                                break;
                            }
                        }
                        None => { stopping = true; break; }
                    }
                    next.insert((topic, partition), offset + 1);
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = ctx.shutdown.wait() => { stopping = true; break; }
                e = &mut vanished => return Err(e),
            }
        }
        if !batch.is_empty() {
            let started = std::time::Instant::now();
            if !write(&mut conn, &batch, &producer, &dlq_t, &dlq_enc, &ctx).await? {
                break;
            }
            use posflow_runtime::metrics::Shared;
            Shared::processing().observe(started.elapsed().as_secs_f64());
            Shared::batch_size().observe(batch.len() as f64);
            for t in batch.iter().filter_map(|p| p.transaction_time) {
                posflow_runtime::metrics::observe_end_to_end(t);
            }
            batch.clear();
            wake.notify_one();
        }
        // Everything up to `next` is in the outbox or the dead-letter topic.
        posflow_kafka::pipeline::store_next_offsets(&consumer, &mut next);
        if stopping {
            break;
        }
    }
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    Ok(())
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

fn alert(prefs: &Prefs, a: &FraudAlert) -> (Vec<NewDelivery>, Option<DigestItem>) {
    let m = metrics();
    let Some(p) = prefs.get(&a.merchant_id) else {
        m.ignored.with_label_values(&["no_preferences"]).inc();
        return (vec![], None);
    };
    let out = render::alert(&p, a);
    if out.is_empty() {
        m.ignored.with_label_values(&["not_subscribed"]).inc();
    }
    (out, None)
}

/// Inserts the batch, retrying transient failures; if the database refuses it for good (a
/// value it cannot store), each record is inserted alone and the refused ones dead-lettered.
/// `false` on shutdown before the batch was written.
async fn write(
    conn: &mut Conn,
    batch: &[Piece],
    producer: &rdkafka::producer::FutureProducer,
    dlq_t: &str,
    dlq_enc: &Encoder<DeadLetter>,
    ctx: &Context,
) -> anyhow::Result<bool> {
    let deliveries: Vec<NewDelivery> = batch
        .iter()
        .flat_map(|p| p.deliveries.iter().cloned())
        .collect();
    let items: Vec<DigestItem> = batch.iter().filter_map(|p| p.item.clone()).collect();
    let alerts: Vec<&FraudAlert> = batch.iter().filter_map(|p| p.alert.as_ref()).collect();
    match insert(conn, &deliveries, &items, &alerts, ctx).await {
        None => return Ok(false),
        Some(Ok(())) => return Ok(true),
        Some(Err(e)) => {
            tracing::warn!(error = %e.summary(), "the database refused a batch; inserting its records one by one")
        }
    }
    for p in batch {
        let items: Vec<DigestItem> = p.item.iter().cloned().collect();
        let alerts: Vec<&FraudAlert> = p.alert.iter().collect();
        match insert(conn, &p.deliveries, &items, &alerts, ctx).await {
            None => return Ok(false),
            Some(Ok(())) => {}
            Some(Err(e)) => {
                let letter = DeadLetter {
                    reason: "DB_REJECTED".into(),
                    detail: e.summary(),
                    stage: "notifier".into(),
                    source: p.source.clone(),
                    received_at: now_millis(),
                    payload: p.payload.clone(),
                };
                if !dead_letter(producer, dlq_t, dlq_enc, letter, p.headers.clone(), ctx).await? {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

/// `Some(Err)` only for a permanent refusal; transient failures are retried until shutdown.
async fn insert(
    conn: &mut Conn,
    deliveries: &[NewDelivery],
    items: &[DigestItem],
    alerts: &[&FraudAlert],
    ctx: &Context,
) -> Option<Result<(), posflow_pg::DbError>> {
    let m = metrics();
    let mut backoff = Backoff::outage();
    loop {
        let client = conn.get(ctx).await?;
        match store::enqueue(client, deliveries, items, alerts).await {
            Ok((new_deliveries, new_items)) => {
                m.enqueued
                    .with_label_values(&["delivery"])
                    .inc_by(new_deliveries);
                m.enqueued
                    .with_label_values(&["digest_item"])
                    .inc_by(new_items);
                ctx.health.set_ready(true);
                return Some(Ok(()));
            }
            Err(e) if e.is_permanent() => return Some(Err(e)),
            Err(e) => {
                tracing::warn!(error = %e.summary(), "outbox insert failed; retrying");
                ctx.health.set_ready(false);
                if !backoff.wait(&ctx.shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// `Ok(false)` on shutdown before Kafka took it.
async fn dead_letter(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    enc: &Encoder<DeadLetter>,
    letter: DeadLetter,
    hdrs: OwnedHeaders,
    ctx: &Context,
) -> anyhow::Result<bool> {
    metrics()
        .dead_lettered
        .with_label_values(&[&letter.reason])
        .inc();
    let o = Output {
        topic: topic.to_string(),
        key: letter.source.clone(),
        value: enc.encode(&letter)?,
        headers: headers::with_reason(hdrs, &letter.reason),
    };
    Ok(produce_until_confirmed(producer, &o, ctx).await.is_some())
}
