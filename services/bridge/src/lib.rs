//! posflow-bridge: MQTT → Kafka. A terminal's message is acknowledged (PUBACK) only after Kafka
//! confirmed it — on the raw topic, or on the dead-letter topic with a reason — and PUBACKs go
//! out in arrival order. Until then the message stays in the broker's session for this replica,
//! so a crash loses nothing: the broker redelivers.

pub mod card;
pub mod handoff;
mod ingress;
pub mod limit;
mod metrics;
pub mod payload;
pub mod recent;

use anyhow::Context as _;
use clap::Parser;
use futures::stream::{FuturesOrdered, StreamExt};
use ingress::{Ingress, Outcome};
use posflow_kafka::deadletter::DeadLetters;
use posflow_kafka::KafkaArgs;
use posflow_mqtt::MqttArgs;
use posflow_runtime::{Backoff, CommonArgs, ConfigErrors, Context, Secret};
use posflow_schema::{Encoder, TransactionReceived};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use metrics::metrics;

/// posflow-bridge: MQTT → Kafka ingress for POS transactions.
#[derive(Debug, Parser)]
#[command(name = "posflow-bridge", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mqtt: MqttArgs,
    /// This replica's id: its MQTT client id and username (stable per replica, e.g. the
    /// StatefulSet pod name), so its persistent session survives restarts.
    #[arg(long, env = "POSFLOW_BRIDGE_ID", default_value = "bridge-0")]
    pub bridge_id: String,
    /// Shared-subscription group: replicas in one group split the terminals' messages.
    #[arg(
        long,
        env = "POSFLOW_MQTT_SHARE_GROUP",
        default_value = "posflow-bridge"
    )]
    pub share_group: String,
    /// Messages in flight (received, not yet acknowledged); the MQTT receive maximum.
    #[arg(long, env = "POSFLOW_BRIDGE_IN_FLIGHT", default_value_t = 256)]
    pub in_flight: u16,
    /// Seconds the broker keeps this replica's session (and its queued share) while it is away.
    #[arg(long, env = "POSFLOW_MQTT_SESSION_EXPIRY", default_value_t = 86_400)]
    pub session_expiry: u32,
    /// Seconds without a message, while connected, before subscribing again (0: never). The
    /// subscription is unchanged; the SUBSCRIBE makes a broker that only announces messages to
    /// a shared group when its queue was empty (HiveMQ CE) look at the queue for this replica
    /// (docs/bridge.md, brokers).
    #[arg(long, env = "POSFLOW_BRIDGE_IDLE_RESUBSCRIBE", default_value_t = 5)]
    pub idle_resubscribe: u64,
    /// Largest payload accepted, in bytes; larger ones are dead-lettered as OVERSIZE.
    #[arg(long, env = "POSFLOW_BRIDGE_MAX_PAYLOAD", default_value_t = 16_384)]
    pub max_payload_bytes: usize,
    /// Transactions per second each terminal may send (0: no limit). Real terminals send far
    /// less than one per second; the limit protects the pipeline from a runaway one.
    #[arg(long, env = "POSFLOW_BRIDGE_RATE_LIMIT", default_value_t = 20)]
    pub rate_limit: u32,
    /// Transactions a terminal may send at once above its rate (a store-and-forward flush).
    #[arg(long, env = "POSFLOW_BRIDGE_RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// What happens above the limit: delay the terminal's messages, or reject them
    /// (dead-lettered as RATE_LIMITED, answered "rejected"; the terminal retries).
    #[arg(
        long,
        env = "POSFLOW_BRIDGE_RATE_LIMIT_POLICY",
        value_enum,
        default_value = "reject"
    )]
    pub rate_limit_policy: limit::OverLimit,
    /// Seconds without finishing any message, while some wait, before liveness fails.
    #[arg(long, env = "POSFLOW_BRIDGE_STALL_TIMEOUT", default_value_t = 300)]
    pub stall_timeout: u64,
    /// Transaction ids remembered to answer repeats without producing them again (0: off).
    #[arg(long, env = "POSFLOW_BRIDGE_RECENT_IDS", default_value_t = 100_000)]
    pub recent_ids: usize,
    /// HMAC key for card tokens (at least 32 bytes). From a Secret; never logged.
    #[arg(
        long,
        env = "POSFLOW_CARD_TOKEN_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub card_token_key: Secret,
    /// The current key's id, recorded with every token (`card.token_key_id`). A new id with
    /// every new key: docs/operations.md, rotating the card-token key.
    #[arg(long, env = "POSFLOW_CARD_TOKEN_KEY_ID", default_value = "k1")]
    pub card_token_key_id: String,
    /// During a rotation, the previous keys as `id=key,id=key`: each card also gets its token
    /// under each (`card.previous_tokens`), so its history links across the rotation. From a
    /// Secret; never logged.
    #[arg(
        long,
        env = "POSFLOW_CARD_TOKEN_PREVIOUS_KEYS",
        hide_env_values = true,
        default_value = ""
    )]
    pub card_token_previous_keys: Secret,
    /// Test only, never in production: a deliberately broken bridge, so the chaos checker can
    /// be shown to fail (`make chaos-proof`, docs/chaos.md). Hidden from --help; start-up
    /// logs an error while it is set.
    #[arg(long, env = "POSFLOW_BRIDGE_TEST_DEFECT", value_enum, hide = true)]
    pub test_defect: Option<TestDefect>,
}

/// A defect the bridge can be started with, for the chaos checker's proof (test only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TestDefect {
    /// PUBACK and answer "accepted" as soon as a message is taken, producing to Kafka in the
    /// background: a crash loses what Kafka had not confirmed, though terminals were told
    /// "accepted".
    AnswerBeforeKafka,
}

impl Args {
    pub fn check(self) -> Result<Self, ConfigErrors> {
        let mut e = ConfigErrors::new();
        self.kafka.check(&mut e);
        self.mqtt.check(&mut e);
        e.check(
            posflow_mqtt::is_valid_id(&self.bridge_id),
            "--bridge-id must be 1-64 of [A-Za-z0-9_-]",
        );
        e.check(
            posflow_mqtt::is_valid_id(&self.share_group),
            "--share-group must be 1-64 of [A-Za-z0-9_-]",
        );
        e.check(self.in_flight >= 1, "--in-flight must be at least 1");
        e.check(
            self.rate_limit == 0 || self.rate_limit_burst >= 1,
            "--rate-limit-burst must be at least 1",
        );
        e.check(
            self.stall_timeout >= 10,
            "--stall-timeout must be at least 10 seconds",
        );
        e.check(
            (1024..=1_048_576).contains(&self.max_payload_bytes),
            "--max-payload-bytes must be 1024..=1048576",
        );
        e.check(
            self.card_token_key.expose().len() >= 32,
            "--card-token-key (POSFLOW_CARD_TOKEN_KEY) must be set, at least 32 bytes",
        );
        e.check(
            card::valid_key_id(&self.card_token_key_id),
            "--card-token-key-id must be 1-32 of [A-Za-z0-9_.-]",
        );
        match card::parse_keys(self.card_token_previous_keys.expose()) {
            Err(errors) => errors
                .into_iter()
                .for_each(|m| e.check(false, format!("--card-token-previous-keys: {m}"))),
            Ok(keys) => {
                let mut ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
                ids.push(&self.card_token_key_id);
                ids.sort();
                ids.dedup();
                e.check(
                    ids.len() == keys.len() + 1,
                    "--card-token-previous-keys: every key id must differ from the others and from --card-token-key-id",
                );
                e.check(
                    keys.iter()
                        .all(|k| k.secret.expose() != self.card_token_key.expose()),
                    "--card-token-previous-keys: a previous key equals the current one (give the new key a new value)",
                );
            }
        }
        e.check(
            !self.mqtt.mqtt_password.is_empty() || self.mqtt.has_client_certificate(),
            "--mqtt-password (POSFLOW_MQTT_PASSWORD) or a client certificate (--mqtt-tls-cert) must be set",
        );
        e.into_result(self)
    }
}

/// Runs until shutdown. Connection losses are retried, never fatal.
pub async fn run(args: Args, ctx: Context) -> anyhow::Result<()> {
    let m = metrics(); // registers every series now, so /metrics lists them from the start
    let producer: FutureProducer = posflow_kafka::clients::producer(&args.kafka, &args.bridge_id)
        .context("creating the Kafka producer")?;
    let ingress = ingress_for(&args, &ctx).await?;
    let window = usize::from(args.in_flight);
    let (client, mut eventloop) = AsyncClient::new(mqtt_options(&args)?, window * 2);
    // Two tasks, and neither ever waits on the other (issue 24): the poller reads the socket and
    // hands messages off without waiting; the pipeline takes at most `window` at a time. When
    // the hand-off fills — only when the broker ignores our receive maximum — its gate stops the
    // event loop from reading, while PUBACKs and pings still go out (handoff.rs).
    let (tx, rx, gate) = handoff::channel::<FromBroker>(window * 4);
    eventloop.set_read_gate(gate);
    let filter = format!("$share/{}/{}", args.share_group, posflow_mqtt::tx_filter());
    let delivered = Arc::new(AtomicU64::new(0));
    let mut poller = tokio::spawn(poll_mqtt(
        eventloop,
        client.clone(),
        filter.clone(),
        Poller {
            tx,
            receive_maximum: window,
            delivered: delivered.clone(),
        },
        ctx.clone(),
    ));
    if args.idle_resubscribe > 0 {
        tokio::spawn(resubscribe_when_idle(
            client.clone(),
            filter.clone(),
            Duration::from_secs(args.idle_resubscribe),
            delivered,
            ctx.clone(),
        ));
    }
    // Liveness from a thread of its own: messages wait (in the hand-off or in flight) and none
    // has been acknowledged for --stall-timeout.
    let waiting = rx.waiting();
    posflow_runtime::health::watch_progress(
        ctx.health.clone(),
        Duration::from_secs(args.stall_timeout),
        || m.acknowledged.get(),
        move || waiting.get() + m.in_flight.get().max(0) as usize,
    );
    let producer = Arc::new(producer);
    posflow_kafka::clients::watch_connectivity(producer.clone(), ctx.clone());
    if let Some(defect) = args.test_defect {
        tracing::error!(?defect, "TEST DEFECT ENABLED: this bridge loses transactions on purpose (POSFLOW_BRIDGE_TEST_DEFECT); never in production");
    }
    let mut pipeline = Pipeline {
        ingress,
        client: client.clone(),
        filter,
        rx,
        producer: producer.clone(),
        window,
        ctx: ctx.clone(),
        defect: args.test_defect,
    };
    // Draining ends at the drain timeout wherever the pipeline is (waiting on Kafka, on the
    // broker): what is not acknowledged by then stays with the broker for redelivery.
    let drain = args.common.drain();
    let result = tokio::select! {
        r = pipeline.run() => r,
        () = async { ctx.shutdown.wait().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(
                waiting = pipeline.rx.waiting().get(),
                in_flight = m.in_flight.get(),
                "drain timeout; the broker redelivers the rest when this replica id reconnects"
            );
            Ok(())
        }
    };
    ctx.health.set_ready(false);
    // Disconnect cleanly when the request channel has room (the session and anything
    // unacknowledged stay with the broker); a poller that does not finish soon is stopped.
    let _ = client.try_disconnect();
    if tokio::time::timeout(Duration::from_secs(2), &mut poller)
        .await
        .is_err()
    {
        poller.abort();
    }
    // Everything acknowledged was confirmed by Kafka already; a short flush only helps records
    // whose messages the broker will redeliver anyway.
    let _ =
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(Duration::from_secs(1))))
            .await;
    result
}

/// The ingress with its schemas, keys and the terminal registry — read to its end before the
/// first message is taken: a bridge that has not read it would refuse every terminal as unknown.
async fn ingress_for(args: &Args, ctx: &Context) -> anyhow::Result<Ingress> {
    let m = metrics();
    let registry = args.kafka.registry();
    let raw_topic = args.kafka.topics().raw();
    let encoder = retry_forever(ctx, "schema lookup", || {
        Encoder::<TransactionReceived>::for_topic(&registry, &raw_topic)
    })
    .await?;
    let dead_letters = retry_forever(ctx, "schema lookup", || {
        DeadLetters::for_stage(&args.kafka, "bridge", m.dead_lettered.clone())
    })
    .await?;
    let terminals = posflow_registry::Cache::default();
    posflow_registry::store::follow(&args.kafka, terminals.clone(), ctx.clone())
        .await
        .context("reading the terminal registry")?;
    m.registry_terminals.set(terminals.len() as i64);
    tracing::info!(terminals = terminals.len(), "terminal registry read");
    let current = card::TokenKey {
        id: args.card_token_key_id.clone(),
        secret: args.card_token_key.clone(),
    };
    let previous = card::parse_keys(args.card_token_previous_keys.expose())
        .map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    Ok(Ingress {
        terminals,
        bridge_id: args.bridge_id.clone(),
        max_payload_bytes: args.max_payload_bytes,
        tokenizer: card::Tokenizer::with_keys(&current, &previous),
        encoder,
        raw_topic,
        dead_letters,
        recent: recent::RecentIds::new(args.recent_ids),
        limiter: limit::TerminalLimiter::new(
            args.rate_limit,
            args.rate_limit_burst,
            args.rate_limit_policy,
        ),
    })
}

/// This replica's MQTT session: persistent, manual acknowledgements, our receive maximum.
fn mqtt_options(args: &Args) -> anyhow::Result<rumqttc::v5::MqttOptions> {
    let mut opts = args
        .mqtt
        .options(&args.bridge_id, &args.mqtt.mqtt_password)
        .context("MQTT TLS files")?;
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(args.session_expiry));
    opts.set_receive_maximum(Some(args.in_flight));
    opts.set_manual_acks(true);
    opts.set_max_packet_size(Some(args.max_payload_bytes as u32 * 2 + 4096));
    Ok(opts)
}

/// The pipeline task: takes messages from the hand-off, at most `window` in flight, and
/// acknowledges them in arrival order once Kafka has them.
struct Pipeline {
    ingress: Ingress,
    client: AsyncClient,
    filter: String,
    rx: handoff::Receiver<FromBroker>,
    producer: Arc<FutureProducer>,
    window: usize,
    ctx: Context,
    defect: Option<TestDefect>,
}

impl Pipeline {
    async fn run(&mut self) -> anyhow::Result<()> {
        let m = metrics();
        let mut inflight = FuturesOrdered::new();
        // Draining (after SIGTERM): unsubscribed first, so the broker gives our share to the
        // other replicas; then everything already sent to us is finished and acknowledged.
        let mut draining = false;
        let mut unsubscribed = false;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                biased;
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    m.in_flight.dec();
                    // A send abandoned at shutdown (Kafka failing): acknowledging anything after
                    // it would break arrival order, so the rest is left to redelivery too.
                    let Some(o) = done else {
                        tracing::warn!(left = inflight.len(), "send abandoned at shutdown; the broker redelivers the rest");
                        return Ok(());
                    };
                    self.finish(o).await;
                }
                // At most `window` messages in the pipeline, whatever the broker sent.
                msg = self.rx.recv(), if inflight.len() < self.window => match msg {
                    Some(FromBroker::Publish(publish)) => {
                        m.waiting.set(self.rx.waiting().get() as i64);
                        m.received.inc();
                        m.in_flight.inc();
                        let job = self.ingress.handle(publish)?;
                        inflight.push_back(ingress::deliver(self.producer.clone(), job, self.ctx.clone(), self.defect));
                    }
                    Some(FromBroker::Unsubscribed) => unsubscribed = true,
                    None => return Ok(()),
                },
                _ = self.ctx.shutdown.wait(), if !draining => {
                    tracing::info!(in_flight = inflight.len(), waiting = self.rx.waiting().get(), "draining: unsubscribing, finishing what was received");
                    draining = true;
                    let (client, filter) = (self.client.clone(), self.filter.clone());
                    // Not awaited here: the pipeline goes on finishing while it is queued.
                    tokio::spawn(async move {
                        if let Err(e) = client.unsubscribe(filter).await {
                            tracing::warn!(error = %e, "unsubscribe not queued");
                        }
                    });
                }
                _ = tick.tick() => {
                    self.ingress.limiter.retain_recent();
                    m.registry_terminals.set(self.ingress.terminals.len() as i64);
                    m.waiting.set(self.rx.waiting().get() as i64);
                }
            }
            if draining && unsubscribed && self.rx.is_empty() && inflight.is_empty() {
                tracing::info!("drained: nothing left for this replica");
                return Ok(());
            }
        }
    }

    /// A message Kafka has: PUBACK, remember, answer.
    async fn finish(&mut self, o: Outcome) {
        let m = metrics();
        // PUBACK in arrival order: FuturesOrdered yields in the order pushed. Queuing it may
        // wait for room in the request channel; the event loop drains that channel without ever
        // waiting on the pipeline, so the wait ends as soon as the broker is connected.
        if let Err(e) = self.client.ack(&o.publish).await {
            tracing::warn!(error = %e, "PUBACK not sent; the broker will redeliver");
            return;
        }
        m.acknowledged.inc();
        m.ack_latency.observe(o.received.elapsed().as_secs_f64());
        if let Some((id, seen)) = o.remember {
            self.ingress.recent.remember(&id, seen);
            m.recent_ids.set(self.ingress.recent.len() as i64);
        }
        if let Some((topic, body)) = o.reply {
            // QoS 0: the answer is advice. A terminal that misses it republishes after its
            // timeout and gets its answer then; QoS 1 would make the broker queue answers for
            // every offline terminal.
            if let Err(e) = self
                .client
                .publish(topic, QoS::AtMostOnce, false, body)
                .await
            {
                tracing::warn!(error = %e, "answer to terminal not queued");
            }
        }
    }
}

async fn retry_forever<T, E: std::fmt::Display, F, Fut>(
    ctx: &Context,
    what: &str,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::outage();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                if !backoff.wait(&ctx.shutdown).await {
                    anyhow::bail!("{what}: stopped before it succeeded: {e}");
                }
            }
        }
    }
}

/// What the poller works with besides the connection.
struct Poller {
    tx: handoff::Sender<FromBroker>,
    receive_maximum: usize,
    /// PUBLISH packets received, for the idle re-subscription.
    delivered: Arc<AtomicU64>,
}

/// Subscribes again, unchanged, after `idle` without a message while connected. HiveMQ CE
/// announces a message to a shared group's members only when the group's queue was empty, and
/// a message that was in flight when the broker died stays in that queue, marked in flight to a
/// connection that no longer exists: the queue never empties again, so after a restart a member
/// hears of new messages only through its own PUBACKs or a SUBSCRIBE. With nothing in flight it
/// would wait forever (docs/bridge.md, brokers). A SUBSCRIBE to a subscription that exists is
/// idempotent on every broker we run; on HiveMQ it makes the broker read the queue for us.
async fn resubscribe_when_idle(
    client: AsyncClient,
    filter: String,
    idle: Duration,
    delivered: Arc<AtomicU64>,
    ctx: Context,
) {
    let mut seen = delivered.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            () = tokio::time::sleep(idle) => {}
            () = ctx.shutdown.wait() => return,
        }
        let now = delivered.load(Ordering::Relaxed);
        if now == seen && ctx.health.is_ready() && !ctx.shutdown.is_triggered() {
            metrics().idle_resubscribes.inc();
            let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
        }
        seen = now;
    }
}

/// What the poller hands the pipeline.
// Nearly every item is a Publish: boxing it would cost an allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
enum FromBroker {
    Publish(Publish),
    /// The broker confirmed our UNSUBSCRIBE: every message it will ever send us is already in
    /// the hand-off before this.
    Unsubscribed,
}

/// Drives the MQTT connection: (re)connects with backoff, subscribes (not while draining), and
/// hands each PUBLISH to the pipeline without ever waiting on it (the read gate holds the broker
/// back instead). Runs until the pipeline disconnects, so the PUBACKs of a drain are still sent.
async fn poll_mqtt(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filter: String,
    poller: Poller,
    ctx: Context,
) {
    let Poller {
        tx,
        receive_maximum,
        delivered,
    } = poller;
    let m = metrics();
    let mut backoff = Backoff::outage();
    // Unacknowledged messages beyond our receive maximum: the broker is not honouring it.
    let mut over: Option<usize> = None;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                tracing::info!(session_present = ack.session_present, "connected to MQTT");
                // Subscribe on every connect, resumed session or not: it is idempotent, keeps
                // the queued messages, and repairs a session whose subscription was made under
                // another configuration (a changed share group). Not while draining.
                if !ctx.shutdown.is_triggered() {
                    posflow_mqtt::subscribe_detached(&client, filter.clone());
                }
                ctx.health.set_ready(true);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                delivered.fetch_add(1, Ordering::Relaxed);
                let Ok(pushed) = tx.push(FromBroker::Publish(p)) else {
                    return;
                };
                if pushed.closed_gate {
                    m.read_gate_closed.inc();
                }
                let unacknowledged = pushed.waiting + m.in_flight.get().max(0) as usize;
                match over {
                    None if unacknowledged > receive_maximum => {
                        tracing::warn!(
                            receive_maximum,
                            unacknowledged,
                            "the broker sends beyond our receive maximum (Mosquitto does on resuming a session with a backlog); reading paces the pipeline"
                        );
                        over = Some(unacknowledged);
                    }
                    Some(peak) if unacknowledged <= receive_maximum => {
                        tracing::info!(peak, "the broker is within our receive maximum again");
                        over = None;
                    }
                    _ => {}
                }
                if let Some(peak) = over.as_mut() {
                    m.over_receive_maximum.inc();
                    *peak = (*peak).max(unacknowledged);
                }
            }
            Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                let _ = tx.push(FromBroker::Unsubscribed);
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                tracing::warn!(reason = ?d.reason_code, "broker disconnected us");
                ctx.health.set_ready(false);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
            Err(e) => {
                ctx.health.set_ready(false);
                tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
