//! The bridge against its two ceilings and a peer, the same fleet in the same run:
//!
//! - (a) broker: the fleet (terminals publishing QoS 1 as fast as the broker takes them) into a
//!   subscriber that does nothing but acknowledge. Latency: publish → delivered to it.
//! - (a') broker, answered: the same subscriber also publishes each terminal's answer (QoS 1,
//!   the contract's topic and shape) and the fleet waits for it, as it does for the bridge: the
//!   broker's work per transaction is the bridge's (two publishes in, two deliveries out), with
//!   no Kafka. Latency: publish → answer.
//! - bridge: the same fleet through `posflow-bridge` into Kafka and answered back to each
//!   terminal. Latency: publish → the terminal's answer (the bridge's PUBACK waits for Kafka's
//!   acks=all; its own receive → PUBACK histogram is reported beside it).
//! - (b) Kafka: the very records the bridge produced (read back from its topic, same keys, same
//!   bytes) produced again by a producer with the bridge's settings (`clients::producer`:
//!   idempotent, acks=all, same batching) and the bridge's in-flight window. Latency: send →
//!   delivery report.
//! - peer: Benthos v4 on the same broker and topic filter into the same Kafka topic. It
//!   acknowledges MQTT on receipt, before Kafka has the record (at-most-once across a crash),
//!   and moves the payload as it is: no tokenisation, no Avro, no answer to the terminal.
//!
//! - traced: the bridge again, same fleet, exporting its spans (`--otlp-endpoint`) to an OTLP
//!   receiver in this process (which only keeps the request bodies), alternated with untraced
//!   runs: the cost of tracing is the mean traced rate against the mean untraced rate.
//!
//! Throughput: transactions from the first publish (or send) to the last receipt / answer /
//! delivery / record out.

use crate::stages::Rate;
use futures::stream::{FuturesUnordered, StreamExt};
use posflow_e2e::{http_get, Deployment};
use posflow_runtime::Secret;
use posflow_simulator::{fleet, plan};
use rdkafka::producer::FutureRecord;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The bridge's default `--in-flight`: the Kafka ceiling gets the same window.
const IN_FLIGHT: usize = 256;

/// A throughput with the latency of each transaction.
pub struct Figures {
    pub count: usize,
    pub elapsed: Duration,
    pub latency_us: Vec<u64>,
}

impl Figures {
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p` quantile of the latencies, in ms.
    pub fn pct(&self, p: f64) -> f64 {
        let mut v = self.latency_us.clone();
        v.sort_unstable();
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"transactions": self.count, "elapsed_s": self.elapsed.as_secs_f64(),
            "tx_per_s": self.rate(), "latency_ms": {"p50": self.pct(0.5), "p99": self.pct(0.99), "p99_9": self.pct(0.999)}})
    }
}

pub struct Results {
    pub broker: Figures,
    pub broker_answered: Figures,
    pub bridge: Figures,
    pub kafka: Figures,
    /// Receive → PUBACK quantiles from the bridge's histogram (bucket upper bounds), ms.
    pub bridge_puback_ms: [f64; 3],
    pub peer: Option<Rate>,
    pub tracing: Tracing,
}

/// How many traced runs the tracing cost is measured over.
const TRACING_ROUNDS: usize = 3;

/// The bridge with tracing on against tracing off, same fleet, alternated.
pub struct Tracing {
    pub traced_tx_s: Vec<f64>,
    pub traced_p99_ms: Vec<f64>,
    /// The main bridge run, then one after each traced run.
    pub untraced_tx_s: Vec<f64>,
    /// Spans the receiver got, of at most 2 per transaction (the SDK's queue drops spans rather
    /// than hold the bridge up).
    pub spans_exported: usize,
    pub spans_at_most: usize,
}

impl Tracing {
    pub fn traced_mean(&self) -> f64 {
        mean(&self.traced_tx_s)
    }
    pub fn untraced_mean(&self) -> f64 {
        mean(&self.untraced_tx_s)
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub fn fleet_for(
    run: &str,
    first: usize,
    terminals: usize,
    per_terminal: usize,
) -> Vec<Vec<plan::Planned>> {
    let cfg = plan::FleetConfig {
        terminals,
        per_terminal,
        merchants: 5,
        invalid_every: 0,
        seed: 1,
        first_terminal: first,
        run_id: run.into(),
    };
    plan::plan(&cfg, posflow_schema::now_millis())
}

/// Everything above, in this order: the broker alone, the peer (before the bridge, whose
/// persistent session would otherwise queue the peer's share), the bridge, then Kafka with the
/// bridge's records.
pub async fn run(
    terminals: usize,
    per_terminal: usize,
    peer: Option<PathBuf>,
) -> anyhow::Result<Results> {
    let total = terminals * per_terminal;
    let d = Deployment::kafka_only().await;
    eprintln!("[bench] bridge (a) broker ceiling: {terminals} terminals x {per_terminal} ...");
    let broker = broker_ceiling(&d, terminals, per_terminal, false).await?;
    eprintln!("[bench] bridge (a') broker ceiling, answered: same fleet ...");
    let broker_answered = broker_ceiling(&d, terminals, per_terminal, true).await?;
    let peer = match peer {
        Some(bin) => {
            eprintln!("[bench] bridge peer: Benthos, same fleet ...");
            // Its own topics (provisioned like the bridge's): its JSON stays out of the records
            // the Kafka ceiling reads back.
            let own = Deployment::kafka_only().await;
            Some(benthos(&own, &bin, terminals, per_terminal).await?)
        }
        None => None,
    };
    eprintln!("[bench] bridge: posflow-bridge, same fleet ...");
    let (plain, metrics) = run_bridge(&d, "brdg", terminals, per_terminal, &[]).await?;
    // Tracing on and off, alternated (on, off, on, off, on, off after the run above): the machine
    // is shared and noisy, so each traced run sits between two untraced ones.
    let mut traced = Vec::new();
    let mut untraced = vec![plain.rate()];
    let mut spans_exported = 0;
    for round in 0..TRACING_ROUNDS {
        eprintln!(
            "[bench] bridge: tracing on, round {} of {TRACING_ROUNDS} ...",
            round + 1
        );
        let otlp = posflow_e2e::otlp::Receiver::start().await;
        let args = ["--otlp-endpoint", otlp.endpoint.as_str()];
        let run = format!("brt{round}");
        traced.push(
            run_bridge(&d, &run, terminals, per_terminal, &args)
                .await?
                .0,
        );
        spans_exported += otlp.span_count();
        eprintln!(
            "[bench] bridge: tracing off, round {} of {TRACING_ROUNDS} ...",
            round + 1
        );
        let run = format!("bro{round}");
        untraced.push(
            run_bridge(&d, &run, terminals, per_terminal, &[])
                .await?
                .0
                .rate(),
        );
    }
    let q = |p| histogram_quantile(&metrics, "posflow_bridge_ack_latency_seconds", p);
    let bridge_puback_ms = [q(0.5), q(0.99), q(0.999)];
    eprintln!("[bench] bridge (b) Kafka ceiling: the bridge's {total} records again ...");
    let kafka = kafka_ceiling(&d, total).await?;
    Ok(Results {
        broker,
        broker_answered,
        bridge: plain,
        kafka,
        bridge_puback_ms,
        peer,
        tracing: Tracing {
            traced_tx_s: traced.iter().map(Figures::rate).collect(),
            traced_p99_ms: traced.iter().map(|f| f.pct(0.99)).collect(),
            untraced_tx_s: untraced,
            spans_exported,
            spans_at_most: 2 * traced.iter().map(|f| f.count).sum::<usize>(),
        },
    })
}

/// (a): a subscriber that only acknowledges, in the bridge's place; (a'), `answer`: it also
/// answers each terminal, and the fleet waits for the answers.
async fn broker_ceiling(
    d: &Deployment,
    terminals: usize,
    per_terminal: usize,
    answer: bool,
) -> anyhow::Result<Figures> {
    let total = terminals * per_terminal;
    let progress = Arc::new(fleet::Progress::default());
    let received = Arc::new(AtomicU64::new(0));
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    posflow_e2e::clear_mqtt_session(&d.stack, "bridge-3", &d.stack.bridge_password).await;
    let mut o = rumqttc::v5::MqttOptions::new("bridge-3", &d.stack.mqtt_host, d.stack.mqtt_port);
    o.set_credentials("bridge-3", &d.stack.bridge_password);
    o.set_receive_maximum(Some(IN_FLIGHT as u16));
    let (client, mut ev) = AsyncClient::new(o, 1024);
    client
        .subscribe(
            format!(
                "$share/{}-ceiling/{}",
                d.share_group,
                posflow_mqtt::tx_filter()
            ),
            QoS::AtLeastOnce,
        )
        .await?;
    // Answers go out from their own task: the event loop below must keep polling for the
    // client's requests to leave.
    let (answers, mut to_answer) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    let answerer = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some((topic, body)) = to_answer.recv().await {
                let _ = client.publish(topic, QoS::AtLeastOnce, false, body).await;
            }
        })
    };
    // Answering, the event loop runs until the fleet has every answer (the answers leave
    // after the last delivery); otherwise until the last delivery.
    let fleet_done = Arc::new(tokio::sync::Notify::new());
    let sub = {
        let (progress, received, last) = (progress.clone(), received.clone(), last.clone());
        let fleet_done = fleet_done.clone();
        tokio::spawn(async move {
            loop {
                let all_in = received.load(Ordering::Relaxed) >= total as u64;
                if all_in && !answer {
                    break;
                }
                let polled = tokio::select! {
                    e = ev.poll() => e,
                    _ = fleet_done.notified(), if all_in => break,
                };
                match polled {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        // Latency needs the id; the parse is the only work this subscriber does.
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                            let id = v["transaction_id"].as_str().unwrap_or_default();
                            if answer {
                                let topic = posflow_mqtt::ack_topic(
                                    v["merchant_id"].as_str().unwrap_or_default(),
                                    v["terminal_id"].as_str().unwrap_or_default(),
                                );
                                let body = serde_json::json!({"offset": 0, "partition": 0,
                                    "status": "accepted", "transaction_id": id});
                                let _ = answers.send((topic, body.to_string().into_bytes()));
                            } else if let Some(t) = progress.sent_at.lock().unwrap().get(id) {
                                progress
                                    .answer_latency_us
                                    .lock()
                                    .unwrap()
                                    .push(t.elapsed().as_micros() as u64);
                            }
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                        *last.lock().unwrap() = Instant::now();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("ceiling subscriber: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await; // SUBACK before the first publish
    let started = Instant::now();
    let report = fleet::run(
        &d.stack.mqtt_args(),
        &Secret::new(&d.stack.terminal_password),
        fleet_for(
            if answer { "ceila" } else { "ceil" },
            1,
            terminals,
            per_terminal,
        ),
        &publish_options(answer),
        progress.clone(),
    )
    .await?;
    anyhow::ensure!(
        report.unanswered.is_empty(),
        "{} unanswered",
        report.unanswered.len()
    );
    let answered = started.elapsed();
    fleet_done.notify_one();
    tokio::time::timeout(Duration::from_secs(120), sub).await??;
    // Answered: until the fleet had every answer; otherwise until the last delivery.
    let elapsed = if answer {
        answered
    } else {
        last.lock().unwrap().duration_since(started)
    };
    answerer.abort();
    let _ = client.disconnect().await;
    let latency_us = std::mem::take(&mut *progress.answer_latency_us.lock().unwrap());
    Ok(Figures {
        count: total,
        elapsed,
        latency_us,
    })
}

fn publish_options(await_answers: bool) -> fleet::PublishOptions {
    fleet::PublishOptions {
        rate_per_terminal: 0.0,
        retry_after: Duration::from_secs(60),
        deadline: Duration::from_secs(300),
        await_answers,
    }
}

async fn run_bridge(
    d: &Deployment,
    run: &str,
    terminals: usize,
    per_terminal: usize,
    extra: &[&str],
) -> anyhow::Result<(Figures, String)> {
    let total = terminals * per_terminal;
    let mut bridge = d.start_bridge_with(4, extra).await;
    crate::pin::stage_started(bridge.child.id());
    let progress = Arc::new(fleet::Progress::default());
    let started = Instant::now();
    let report = fleet::run(
        &d.stack.mqtt_args(),
        &Secret::new(&d.stack.terminal_password),
        fleet_for(run, 1, terminals, per_terminal),
        &publish_options(true),
        progress.clone(),
    )
    .await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        report.unanswered.is_empty(),
        "{} unanswered",
        report.unanswered.len()
    );
    let metrics = http_get(&bridge.http, "/metrics")
        .await
        .map(|r| r.1)
        .unwrap_or_default();
    let latency_us = std::mem::take(&mut *progress.answer_latency_us.lock().unwrap());
    // SIGTERM: a traced bridge flushes its span queue on the way out.
    bridge.terminate();
    Ok((
        Figures {
            count: total,
            elapsed,
            latency_us,
        },
        metrics,
    ))
}

/// (b): the bridge's own records, produced again with its producer settings and window.
async fn kafka_ceiling(d: &Deployment, total: usize) -> anyhow::Result<Figures> {
    let raw = d.topic("pos.transactions.raw");
    let records = posflow_e2e::read_topic(
        &d.stack.brokers,
        &raw,
        total,
        Duration::from_secs(60),
        Duration::ZERO,
    );
    anyhow::ensure!(
        records.len() == total,
        "read {} of {total} bridge records",
        records.len()
    );
    // Into the validated topic of this deployment: provisioned like raw, read by nobody here.
    let out = d.topic("pos.transactions.validated");
    let producer = posflow_kafka::clients::producer(&d.kafka, "bench-kafka-ceiling")?;
    let send = |r: &posflow_e2e::Record| {
        let key = r.key.clone().unwrap_or_default();
        producer
            .send_result(FutureRecord::to(&out).key(&key).payload(&r.value))
            .map_err(|(e, _)| e)
    };
    // The first record alone, untimed: connections and metadata, as the bridge had them
    // before its first transaction.
    let mut next = records.iter();
    if let Some(first) = next.next() {
        send(first)?.await?.map_err(|(e, _)| e)?;
    }
    let mut pending = FuturesUnordered::new();
    let mut latency_us = Vec::with_capacity(total);
    let started = Instant::now();
    loop {
        while pending.len() < IN_FLIGHT {
            let Some(r) = next.next() else { break };
            let fut = send(r)?;
            let sent = Instant::now();
            pending.push(async move { (fut.await, sent) });
        }
        match pending.next().await {
            Some((Ok(Ok(_)), sent)) => latency_us.push(sent.elapsed().as_micros() as u64),
            Some((result, _)) => anyhow::bail!("Kafka ceiling: delivery failed: {result:?}"),
            None => break,
        }
    }
    Ok(Figures {
        count: latency_us.len(),
        elapsed: started.elapsed(),
        latency_us,
    })
}

/// The peer: Benthos with an `mqtt` input and a `kafka_franz` output, finished when its
/// `output_sent` counter reaches the fleet's size.
async fn benthos(
    d: &Deployment,
    bin: &PathBuf,
    terminals: usize,
    per_terminal: usize,
) -> anyhow::Result<Rate> {
    let total = (terminals * per_terminal) as u64;
    let port = posflow_e2e::free_port();
    let dir = std::env::temp_dir().join(format!("posflow-bench-benthos-{port}"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("benthos.yaml");
    posflow_e2e::clear_mqtt_session(&d.stack, "bridge-5", &d.stack.bridge_password).await;
    std::fs::write(
        &config,
        format!(
            r#"http:
  address: 127.0.0.1:{port}
input:
  mqtt:
    urls: ["tcp://{host}:{mqtt_port}"]
    topics: ["$share/{group}-peer/{filter}"]
    client_id: bridge-5
    user: bridge-5
    password: "{password}"
    qos: 1
    clean_session: true
output:
  kafka_franz:
    seed_brokers: ["{brokers}"]
    topic: "{topic}"
    key: '${{! meta("mqtt_topic") }}'
    max_in_flight: {IN_FLIGHT}
logger:
  level: WARN
metrics:
  prometheus: {{}}
"#,
            host = d.stack.mqtt_host,
            mqtt_port = d.stack.mqtt_port,
            group = d.share_group,
            filter = posflow_mqtt::tx_filter(),
            password = d.stack.bridge_password,
            brokers = d.stack.brokers,
            topic = d.topic("pos.transactions.raw"),
        ),
    )?;
    let log = std::fs::File::create(dir.join("benthos.log"))?;
    let _child = KillOnDrop(
        std::process::Command::new(bin)
            .args(["-c", &config.to_string_lossy()])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting Benthos ({}): {e}", bin.display()))?,
    );
    crate::pin::stage_started(_child.0.id());
    let base = format!("http://127.0.0.1:{port}");
    let base_ref = &base;
    let sent = move || async move {
        let page = http_get(base_ref, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        page.lines()
            .filter(|l| l.starts_with("output_sent"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    // Ready: its metrics answer and its subscription is in place.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&base, "/ready").await.map(|r| r.0) != Some(200) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "Benthos not ready; log in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fleet = tokio::spawn({
        let (mqtt, pw) = (d.stack.mqtt_args(), Secret::new(&d.stack.terminal_password));
        async move {
            fleet::run(
                &mqtt,
                &pw,
                fleet_for("peer", 1, terminals, per_terminal),
                &publish_options(false),
                Arc::new(fleet::Progress::default()),
            )
            .await
        }
    });
    let started = Instant::now();
    crate::stages::measure(total, "Benthos", sent).await;
    // From the first publish to the last record out, like the bridge.
    let elapsed = started.elapsed();
    fleet.await??;
    Ok(Rate {
        records: total,
        elapsed,
    })
}

/// The peer's process, stopped however the run ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A quantile from a Prometheus histogram (upper bound of the bucket it falls in), in ms.
pub fn histogram_quantile(page: &str, name: &str, q: f64) -> f64 {
    let buckets: Vec<(f64, f64)> = page
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (le, v) = rest.split_once("\"} ")?;
            Some((
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                },
                v.trim().parse().ok()?,
            ))
        })
        .collect();
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, c)| *c >= total * q)
        .map(|(le, _)| le * 1000.0)
        .unwrap_or(f64::NAN)
}
