//! Outbox → merchants. Claims due deliveries and sends each on its own task, so one slow or
//! dead merchant holds at most `--merchant-concurrency` tasks and never the others' deliveries.
//! Per merchant: a rate limit (governor), a concurrency cap (enforced in the claim itself) and a
//! circuit breaker. Every attempt's outcome goes to the status topic before the outbox row is
//! settled, so an outcome may be repeated after a crash but never lost.

use crate::email::{Mail, Mailer};
use crate::policy::{Answer, Breaker, RetryPolicy};
use crate::prefs::Preferences;
use crate::store::{self, Claimed, Settle, Settled};
use crate::webhook::{Request, Sender};
use crate::{Args, Prefs};
use anyhow::Context as _;
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use posflow_kafka::deadletter::{DeadLetters, Refused};
use posflow_kafka::pipeline::{produce_until_confirmed, Output};
use posflow_pg::connect_with_backoff;
use posflow_runtime::metrics::{counter, counter_vec, gauge, histogram_vec};
use posflow_runtime::{Backoff, Context};
use posflow_schema::{
    now_millis, Channel, DeliveryStatus, Encoder, NotificationOutcome, ReasonCode,
};
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureProducer;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_postgres::Client;

struct Metrics {
    deliveries: IntCounterVec,
    attempt_seconds: HistogramVec,
    latency: HistogramVec,
    dead_lettered: IntCounterVec,
    breaker_opened: IntCounterVec,
    breakers_open: IntGauge,
    in_flight: IntGauge,
    rate_limited: IntCounter,
    pending: IntGauge,
    claim_seconds: prometheus::Histogram,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        deliveries: counter_vec(
            "posflow_notifier_attempts_total",
            "Delivery attempts, by channel and resulting status (delivered, retrying, failed)",
            &["channel", "status"],
        ),
        attempt_seconds: histogram_vec(
            "posflow_notifier_attempt_seconds",
            "Time one attempt took (HTTP exchange or SMTP send), by channel",
            &["channel"],
            posflow_runtime::metrics::LATENCY_BUCKETS,
        ),
        latency: histogram_vec(
            "posflow_notifier_delivery_latency_seconds",
            "From the event's arrival in the outbox to its delivery, by channel",
            &["channel"],
            &[
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ],
        ),
        dead_lettered: counter_vec(
            "posflow_notifier_dead_lettered_total",
            "Deliveries given up and dead-lettered, by reason",
            &["reason"],
        ),
        breaker_opened: counter_vec(
            "posflow_notifier_breaker_opened_total",
            "Times a merchant's circuit opened, by channel",
            &["channel"],
        ),
        breakers_open: gauge(
            "posflow_notifier_breakers_open",
            "Merchants whose circuit is open on this replica",
        ),
        in_flight: gauge(
            "posflow_notifier_in_flight",
            "Deliveries claimed by this replica and not yet settled",
        ),
        claim_seconds: posflow_runtime::metrics::histogram(
            "posflow_notifier_claim_seconds",
            "Time one claim of due deliveries took (one database transaction)",
            posflow_runtime::metrics::LATENCY_BUCKETS,
        ),
        rate_limited: counter(
            "posflow_notifier_rate_limited_total",
            "Deliveries held back by their merchant's rate limit (--merchant-rate)",
        ),
        pending: gauge(
            "posflow_notifier_outbox_pending",
            "Deliveries pending in the outbox (all replicas), sampled every 5 s",
        ),
    })
}

pub struct Dispatcher {
    shared: Arc<Shared>,
    settlements: tokio::sync::mpsc::UnboundedReceiver<Settled>,
}

struct Shared {
    args: Arc<Args>,
    prefs: Prefs,
    owner: String,
    policy: RetryPolicy,
    claims: SharedConn,
    /// Settlements go to one writer that commits them in batches.
    settle: tokio::sync::mpsc::UnboundedSender<Settled>,
    sender: Sender,
    mailer: Mailer,
    limiter: DefaultKeyedRateLimiter<String>,
    /// Per merchant and channel: a dead SMTP server must not stop webhooks.
    breakers: DashMap<(String, &'static str), Breaker>,
    /// Deliveries held per merchant (claimed, not yet settled), up to `depth()`.
    held: DashMap<String, usize>,
    /// Per merchant: `--merchant-concurrency` permits for attempts under way.
    permits: DashMap<String, Arc<tokio::sync::Semaphore>>,
    total: AtomicUsize,
    settled: Notify,
    producer: FutureProducer,
    status_topic: String,
    status_enc: Encoder<NotificationOutcome>,
    dead_letters: DeadLetters,
}

impl Dispatcher {
    pub async fn new(args: &Arc<Args>, prefs: Prefs) -> anyhow::Result<Self> {
        let topics = args.kafka.topics();
        let registry = args.kafka.registry();
        let status_topic = topics.notification_status();
        let status_enc = Encoder::for_topic(&registry, &status_topic)
            .await
            .context("notification status schema (run posflow-admin provision)")?;
        let dead_letters =
            DeadLetters::for_stage(&args.kafka, "notifier", metrics().dead_lettered.clone())
                .await?;
        let timeout = Duration::from_millis(args.delivery_timeout_ms);
        let rate = NonZeroU32::new(args.merchant_rate).unwrap_or(NonZeroU32::MIN);
        let owner = args.instance.instance();
        let (settle, settlements) = tokio::sync::mpsc::unbounded_channel();
        Ok(Dispatcher {
            settlements,
            shared: Arc::new(Shared {
                args: args.clone(),
                prefs,
                policy: args.retry_policy(),
                claims: SharedConn::new(&args.db),
                settle,
                // One host may serve many merchants (a platform's endpoint): keep as many
                // connections alive as may be in use at once.
                sender: Sender::new(
                    args.webhook_ca_file.as_deref(),
                    timeout,
                    args.concurrency,
                    args.egress.egress(),
                )?,
                mailer: args.smtp.mailer(timeout)?,
                limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(rate)),
                breakers: DashMap::new(),
                held: DashMap::new(),
                permits: DashMap::new(),
                total: AtomicUsize::new(0),
                settled: Notify::new(),
                producer: posflow_kafka::clients::producer(
                    &args.kafka,
                    &format!("notifier-{owner}"),
                )?,
                status_topic,
                status_enc,
                dead_letters,
                owner,
            }),
        })
    }

    pub async fn run(self, wake: Arc<Notify>, ctx: Context) -> anyhow::Result<()> {
        let s = self.shared;
        let settler = tokio::spawn(settler(
            s.args.clone(),
            s.owner.clone(),
            self.settlements,
            ctx.clone(),
        ));
        let Some(db) = s.claims.get(&ctx).await else {
            return Ok(());
        };
        match store::release_leases_of(&db, &s.owner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deliveries = n,
                owner = s.owner,
                "took back the deliveries this instance held before it restarted"
            ),
            Err(e) => {
                tracing::warn!(error = %e.summary(), "could not release this instance's old leases; they expire by themselves")
            }
        }
        s.claim_until_shutdown(&wake, &ctx).await;
        // Let attempts under way finish; what is left is released at the next start (same
        // instance id) or when its lease runs out.
        let deadline = Instant::now() + s.args.common.drain();
        while s.total.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::select! {
                _ = s.settled.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        // The settler ends once every sender is gone: the tasks', then this one.
        drop(s);
        let _ = tokio::time::timeout(Duration::from_secs(5), settler).await;
        Ok(())
    }
}

/// Merchants believed to have due deliveries, served in rotation. Rediscovered every second
/// (retries falling due, other replicas' inserts) and whenever ingest adds rows.
#[derive(Default)]
struct Rotation {
    active: Vec<String>,
    discovered: Option<Instant>,
    turn: usize,
}

impl Rotation {
    /// A merchant that gave fewer than asked has nothing more due now: leave it until the next
    /// discovery.
    fn drop_exhausted(&mut self, wants: &[(String, i32)], claimed: &[Claimed]) {
        let mut got: HashMap<&str, i32> = HashMap::new();
        for c in claimed {
            *got.entry(c.merchant_id.as_str()).or_default() += 1;
        }
        let short: HashSet<&str> = wants
            .iter()
            .filter(|(m, n)| got.get(m.as_str()).copied().unwrap_or(0) < *n)
            .map(|(m, _)| m.as_str())
            .collect();
        self.active.retain(|m| !short.contains(m.as_str()));
    }
}

impl Shared {
    /// Claims due deliveries for the merchants in rotation, as many as there is room for, and
    /// starts each in a task of its own, until shutdown.
    async fn claim_until_shutdown(self: &Arc<Self>, wake: &Notify, ctx: &Context) {
        let m = metrics();
        let lease = Duration::from_secs(self.args.lease_secs);
        let mut sampled = Instant::now() - Duration::from_secs(60);
        let mut backoff = Backoff::outage();
        let mut r = Rotation::default();
        while !ctx.shutdown.is_triggered() {
            if sampled.elapsed() >= Duration::from_secs(5) {
                sampled = Instant::now();
                self.sample(ctx).await;
            }
            let Some(db) = self.claims.get(ctx).await else {
                return;
            };
            if r.discovered
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                match store::pending_merchants(&db).await {
                    Ok(m) => (r.active, r.discovered) = (m, Some(Instant::now())),
                    Err(e) => {
                        tracing::warn!(error = %e.summary(), "listing merchants with pending deliveries failed; retrying")
                    }
                }
            }
            let free = self
                .args
                .concurrency
                .saturating_sub(self.total.load(Ordering::SeqCst));
            let wants = self.wants(&r.active, free, &mut r.turn);
            if wants.is_empty() {
                tokio::select! {
                    _ = wake.notified() => r.discovered = None,
                    _ = self.settled.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = ctx.shutdown.wait() => return,
                }
                continue;
            }
            let started = Instant::now();
            let claimed = store::claim(&db, &self.owner, lease, &wants).await;
            m.claim_seconds.observe(started.elapsed().as_secs_f64());
            let claimed = match claimed {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e.summary(), "claiming deliveries failed; retrying");
                    ctx.health.set_ready(false);
                    if !backoff.wait(&ctx.shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            r.drop_exhausted(&wants, &claimed);
            for c in claimed {
                *self.held.entry(c.merchant_id.clone()).or_default() += 1;
                self.total.fetch_add(1, Ordering::SeqCst);
                m.in_flight.inc();
                let (s, ctx) = (self.clone(), ctx.clone());
                tokio::spawn(async move { s.deliver(c, &ctx).await });
            }
        }
    }
}

/// Writes settlements in batches: whatever arrived while the previous batch committed, up to
/// 1,000. Transient database failures are retried; on shutdown what is left unwritten stays
/// leased, and the next start of this instance (or the lease's end) makes it due again.
async fn settler(
    args: Arc<Args>,
    owner: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Settled>,
    ctx: Context,
) {
    let mut conn = posflow_pg::Conn::new(&args.db);
    let mut batch = Vec::with_capacity(1000);
    while rx.recv_many(&mut batch, 1000).await > 0 {
        let mut backoff = Backoff::outage();
        loop {
            let Some(client) = conn.get(&ctx).await else {
                return;
            };
            match store::settle_batch(client, &owner, &batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e.summary(), settlements = batch.len(), "recording delivery results failed; retrying");
                    if !backoff.wait(&ctx.shutdown).await {
                        return;
                    }
                }
            }
        }
        batch.clear();
    }
}

/// A connection shared by tasks (tokio-postgres pipelines their queries), reopened if it dropped.
struct SharedConn {
    db: posflow_pg::DatabaseArgs,
    slot: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl SharedConn {
    fn new(db: &posflow_pg::DatabaseArgs) -> Self {
        SharedConn {
            db: db.clone(),
            slot: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self, ctx: &Context) -> Option<Arc<Client>> {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = Some(Arc::new(connect_with_backoff(&self.db, ctx).await?));
        }
        slot.clone()
    }
}

impl Shared {
    /// Merchants to leave out of the next claim, and the room of those partly busy.
    /// How many deliveries of one merchant this replica holds at most: four rounds of its
    /// concurrency, refilled by halves, so a freed slot finds its next delivery at hand and
    /// each claim carries many rows (a claim costs about as much for 10 rows as for 100).
    fn depth(&self) -> usize {
        4 * self.args.merchant_concurrency
    }

    /// What to claim next: for each active merchant in turn whose circuits are closed and whose
    /// queue here is at most half full, enough to fill it — within the replica's free capacity.
    /// Refilling by halves makes each claim carry many deliveries rather than one.
    fn wants(&self, active: &[String], mut free: usize, turn: &mut usize) -> Vec<(String, i32)> {
        let depth = self.depth();
        let refill = (depth / 2).max(1);
        let now = Instant::now();
        let mut out = Vec::new();
        let n = active.len();
        for k in 0..n {
            if free == 0 {
                break;
            }
            let m = &active[(*turn + k) % n];
            let open = ["webhook", "email"].into_iter().any(|ch| {
                self.breakers
                    .get(&(m.clone(), ch))
                    .is_some_and(|b| b.is_open(now))
            });
            let held = self.held.get(m).map(|h| *h).unwrap_or(0);
            let room = depth.saturating_sub(held);
            if open || room < refill {
                continue;
            }
            let take = room.min(free);
            free -= take;
            out.push((m.clone(), take as i32));
        }
        *turn = (*turn + 1) % n.max(1);
        out
    }

    async fn sample(&self, ctx: &Context) {
        let m = metrics();
        let now = Instant::now();
        m.breakers_open.set(
            self.breakers
                .iter()
                .filter(|b| b.value().is_open(now))
                .count() as i64,
        );
        self.held.retain(|_, n| *n > 0);
        self.permits.retain(|_, p| Arc::strong_count(p) > 1);
        self.limiter.retain_recent();
        if let Some(db) = self.claims.get(ctx).await {
            if let Ok(n) = store::pending(&db).await {
                m.pending.set(n);
            }
        }
    }

    async fn deliver(self: Arc<Self>, c: Claimed, ctx: &Context) {
        let m = metrics();
        let channel = c.channel.as_str();
        let permits = self
            .permits
            .entry(c.merchant_id.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(self.args.merchant_concurrency))
            })
            .clone();
        let Ok(permit) = permits.acquire_owned().await else {
            return;
        };
        let prefs = self.prefs.get(&c.merchant_id);
        let breaker_key = (c.merchant_id.clone(), channel);
        let allowed = self
            .breakers
            .entry(breaker_key.clone())
            .or_insert_with(|| {
                Breaker::new(
                    self.args.breaker_threshold,
                    Duration::from_secs(self.args.breaker_cooldown_secs),
                )
            })
            .allow(Instant::now());
        let mut took_ms = 0;
        let settle = if !allowed {
            // The circuit opened after the claim: put it back untouched.
            Settle::Release {
                after: Duration::from_secs(self.args.breaker_cooldown_secs),
            }
        } else {
            if self.limiter.check_key(&c.merchant_id).is_err() {
                m.rate_limited.inc();
                self.limiter.until_key_ready(&c.merchant_id).await;
            }
            // A span of the event's trace per attempt (digests have no trace of their own).
            let span = c
                .traceparent
                .as_deref()
                .map_or_else(tracing::Span::none, |tp| {
                    posflow_runtime::trace::record_span("notifier.deliver", Some(tp.as_bytes()))
                });
            let started = Instant::now();
            let answer = self.attempt(&c, prefs.as_deref()).await;
            took_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
            drop(span);
            drop(permit); // the merchant's next delivery may go while this one is recorded
            m.attempt_seconds
                .with_label_values(&[channel])
                .observe(started.elapsed().as_secs_f64());
            self.judge(&c, answer, &breaker_key, ctx).await
        };
        let _ = self.settle.send(Settled {
            id: c.id,
            settle,
            took_ms,
        });
        if let Some(mut n) = self.held.get_mut(&c.merchant_id) {
            *n = n.saturating_sub(1);
        }
        self.total.fetch_sub(1, Ordering::SeqCst);
        m.in_flight.dec();
        self.settled.notify_one();
    }

    async fn attempt(&self, c: &Claimed, prefs: Option<&Preferences>) -> Answer {
        let Some(p) = prefs else {
            return Answer::Refused {
                error: "the merchant has no delivery preferences any more".into(),
            };
        };
        match c.channel {
            Channel::Webhook => {
                let Some(w) = &p.webhook else {
                    return Answer::Refused {
                        error: "the merchant has no webhook any more".into(),
                    };
                };
                let secrets = w.signing_secrets(std::time::SystemTime::now());
                self.sender
                    .send(&Request {
                        url: &w.url,
                        secrets: &secrets,
                        idempotency_key: &c.idempotency_key,
                        event_type: &c.event_type,
                        attempt: c.attempt,
                        content_type: &c.content_type,
                        body: &c.body,
                    })
                    .await
            }
            Channel::Email => {
                let to = if c.risk_contact {
                    p.risk_contacts()
                } else {
                    &p.emails
                };
                if to.is_empty() {
                    return Answer::Refused {
                        error: "the merchant has no email address any more".into(),
                    };
                }
                self.mailer
                    .send(&Mail {
                        to,
                        subject: c.subject.as_deref().unwrap_or("posflow"),
                        text: &c.body,
                        attachment: c.attachment.as_ref(),
                        idempotency_key: &c.idempotency_key,
                    })
                    .await
            }
        }
    }

    /// Applies the policy to an answer: the breaker, the next attempt or the end, the outcome
    /// on the status topic and (for a failure) the dead letter. Returns how to settle the row.
    async fn judge(
        &self,
        c: &Claimed,
        answer: Answer,
        breaker_key: &(String, &'static str),
        ctx: &Context,
    ) -> Settle {
        let m = metrics();
        let channel = c.channel.as_str();
        let (settle, status, error) = match answer {
            Answer::Delivered => {
                if let Some(mut b) = self.breakers.get_mut(breaker_key) {
                    b.success();
                }
                let latency = (now_millis() - c.created_at_ms).max(0) as f64 / 1000.0;
                m.latency.with_label_values(&[channel]).observe(latency);
                (Settle::Delivered, DeliveryStatus::Delivered, None)
            }
            Answer::Retry { error, retry_after } => {
                if let Some(mut b) = self.breakers.get_mut(breaker_key) {
                    if b.failure(Instant::now()) {
                        m.breaker_opened.with_label_values(&[channel]).inc();
                        tracing::warn!(
                            merchant = c.merchant_id,
                            channel,
                            error,
                            "circuit opened: this merchant's deliveries wait"
                        );
                    }
                }
                if self.policy.exhausted(c.attempt as u32) {
                    let error = format!("gave up after {} attempts: {error}", c.attempt);
                    self.dead_letter(c, ReasonCode::exhausted(c.channel), &error, ctx)
                        .await;
                    (
                        Settle::Failed {
                            error: error.clone(),
                        },
                        DeliveryStatus::Failed,
                        Some(error),
                    )
                } else {
                    let after =
                        self.policy
                            .delay(c.attempt as u32, retry_after, &mut rand::thread_rng());
                    (
                        Settle::Retry {
                            after,
                            error: error.clone(),
                        },
                        DeliveryStatus::Retrying,
                        Some(error),
                    )
                }
            }
            Answer::Refused { error } => {
                // The endpoint answered: it is up, so the breaker is not touched.
                self.dead_letter(c, ReasonCode::refused(c.channel), &error, ctx)
                    .await;
                (
                    Settle::Failed {
                        error: error.clone(),
                    },
                    DeliveryStatus::Failed,
                    Some(error),
                )
            }
        };
        let label = match status {
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Failed => "failed",
        };
        m.deliveries.with_label_values(&[channel, label]).inc();
        self.outcome(c, status, error, ctx).await;
        settle
    }

    async fn outcome(
        &self,
        c: &Claimed,
        status: DeliveryStatus,
        error: Option<String>,
        ctx: &Context,
    ) {
        let now = now_millis();
        let outcome = NotificationOutcome {
            idempotency_key: c.idempotency_key.clone(),
            merchant_id: c.merchant_id.clone(),
            channel: c.channel,
            event_type: c.event_type.clone(),
            status,
            attempts: c.attempt,
            latency_ms: (now - c.created_at_ms).max(0),
            error,
            at: now,
        };
        match self.status_enc.encode(&outcome) {
            Ok(value) => {
                let o = Output {
                    topic: self.status_topic.clone(),
                    partition: None,
                    key: c.merchant_id.clone(),
                    value,
                    headers: OwnedHeaders::new(),
                };
                produce_until_confirmed(&self.producer, &o, ctx).await;
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a notification outcome"),
        }
    }

    async fn dead_letter(&self, c: &Claimed, reason: ReasonCode, error: &str, ctx: &Context) {
        let refused = Refused {
            reason,
            detail: format!(
                "{} {} to merchant {}: {error}",
                c.channel.as_str(),
                c.event_type,
                c.merchant_id
            ),
            source: format!("outbox/{}/{}", c.id, c.idempotency_key),
            key: c.merchant_id.clone(),
            payload: c.body.clone(),
            headers: OwnedHeaders::new(),
        };
        // The outbox row is marked dead in PostgreSQL already: this copy is for operators, and
        // an encode failure (a bug) is logged, not fatal (posflow_kafka::deadletter).
        match self.dead_letters.output(refused) {
            Ok(o) => {
                produce_until_confirmed(&self.producer, &o, ctx).await;
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a dead letter"),
        }
    }
}
