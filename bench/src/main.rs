//! posflow-bench: posflow against its ceilings, measured in the same run on the same machine.
//!
//! `bridge`: the same fleet (terminals publishing QoS 1 as fast as the broker takes them) first
//! into a subscriber that does nothing but acknowledge (the broker's ceiling), then through the
//! bridge into Kafka, answered back to each terminal. Throughput is transactions per second from
//! the first publish to the last receipt (ceiling) or answer (bridge); latency is per
//! transaction, publish → receipt or publish → answer. The bridge's own receive → PUBACK
//! latency comes from its histogram. Issue #7 grows this into `make bench`.

mod notify;
mod stages;

use clap::{Parser, Subcommand};
use posflow_e2e::{http_get, Deployment};
use posflow_runtime::Secret;
use posflow_simulator::{fleet, plan};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "posflow-bench", version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Bridge throughput and latency next to the broker's ceiling.
    Bridge {
        #[arg(long, default_value_t = 50)]
        terminals: usize,
        #[arg(long, default_value_t = 400)]
        per_terminal: usize,
        /// Write the figures as JSON here too.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Validator messages/s next to a consume->produce passthrough with no rules.
    Validator {
        #[arg(long, default_value_t = 200_000)]
        records: usize,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Fraud messages/s next to a passthrough, alert latency, memory under 1,000,000 cards.
    Fraud {
        #[arg(long, default_value_t = 200_000)]
        records: usize,
        #[arg(long, default_value_t = 1_000_000)]
        cards: usize,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Webhook deliveries/s next to the HTTPS receiver's own ceiling (a load generator).
    Notifier {
        #[arg(long, default_value_t = 20_000)]
        records: usize,
        #[arg(long, default_value_t = 20)]
        merchants: usize,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Storage rows/s next to a plain PostgreSQL COPY of the same rows.
    Storage {
        #[arg(long, default_value_t = 200_000)]
        records: usize,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

fn machine() -> serde_json::Value {
    serde_json::json!({"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)})
}

fn write_json(path: Option<std::path::PathBuf>, value: serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(&path, serde_json::to_string_pretty(&value)?)?;
        eprintln!("[bench] results in {}", path.display());
    }
    Ok(())
}

async fn run_validator(records: usize, json: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let results = stages::validator(records).await?;
    println!(
        "{:<16} {:>16} {:>16} {:>8}",
        "delivery", "passthrough/s", "validator/s", "ratio"
    );
    let mut out = Vec::new();
    for (mode, p, v) in &results {
        println!(
            "{:<16} {:>16.0} {:>16.0} {:>8.2}",
            mode,
            p.per_s(),
            v.per_s(),
            v.per_s() / p.per_s()
        );
        out.push(serde_json::json!({"delivery": mode, "records": records, "passthrough_per_s": p.per_s(), "validator_per_s": v.per_s(), "ratio": v.per_s() / p.per_s()}));
    }
    write_json(
        json,
        serde_json::json!({"machine": machine(), "scenario": "validator", "results": out}),
    )
}

async fn run_fraud(
    records: usize,
    cards: usize,
    json: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let (p, f) = stages::fraud(records).await?;
    let (alerts, p50, p99) = stages::fraud_latency(2000, 10).await?;
    let d = posflow_e2e::Deployment::kafka_only().await;
    let mem = posflow_e2e::fraud_memory(&d, cards).await;
    println!("{:<40} {:>14}", "contender (exactly-once)", "messages/s");
    println!("{:<40} {:>14.0}", "consume->produce passthrough", p.per_s());
    println!("{:<40} {:>14.0}", "posflow-fraud", f.per_s());
    println!("fraud / passthrough: {:.2}", f.per_s() / p.per_s());
    println!("alert latency at 2,000 tx/s ({alerts} alerts): p50 <= {p50} ms, p99 <= {p99} ms (histogram bucket bounds)");
    println!(
        "memory, {} distinct cards: RSS {} -> {} -> {} MiB, state keys {} -> {} -> {} (start, after the stream, after the windows expired)",
        mem.cards,
        mem.rss_kib[0] / 1024, mem.rss_kib[1] / 1024, mem.rss_kib[2] / 1024,
        mem.state_keys[0], mem.state_keys[1], mem.state_keys[2]
    );
    write_json(
        json,
        serde_json::json!({"machine": machine(), "scenario": "fraud", "records": records,
        "passthrough_per_s": p.per_s(), "fraud_per_s": f.per_s(), "ratio": f.per_s() / p.per_s(),
        "alert_latency_ms": {"rate_per_s": 2000, "alerts": alerts, "p50_le": p50, "p99_le": p99},
        "memory": {"cards": mem.cards, "rss_kib": mem.rss_kib, "state_keys": mem.state_keys}}),
    )
}

async fn run_storage(records: usize, json: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let (copy, storage) = stages::storage(records).await?;
    println!("{:<28} {:>12}", "contender", "rows/s");
    println!(
        "{:<28} {:>12.0}",
        "PostgreSQL COPY (baseline)",
        copy.per_s()
    );
    println!("{:<28} {:>12.0}", "posflow-storage", storage.per_s());
    println!("storage / COPY: {:.2}", storage.per_s() / copy.per_s());
    write_json(
        json,
        serde_json::json!({"machine": machine(), "scenario": "storage", "records": records,
        "copy_rows_per_s": copy.per_s(), "storage_rows_per_s": storage.per_s(), "ratio": storage.per_s() / copy.per_s()}),
    )
}

async fn run_notifier(
    records: usize,
    merchants: usize,
    json: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let (ceiling, notifier) = notify::webhooks(records, merchants).await?;
    println!(
        "{:<52} {:>14}",
        "contender (HTTPS, signed, verified)", "deliveries/s"
    );
    println!(
        "{:<52} {:>14.0}",
        "load generator straight to the receiver (ceiling)",
        ceiling.per_s()
    );
    println!(
        "{:<52} {:>14.0}",
        "posflow-notifier (Kafka -> outbox -> webhook)",
        notifier.per_s()
    );
    println!(
        "notifier / ceiling: {:.2}",
        notifier.per_s() / ceiling.per_s()
    );
    write_json(
        json,
        serde_json::json!({"machine": machine(), "scenario": "notifier", "records": records, "merchants": merchants,
        "receiver_ceiling_per_s": ceiling.per_s(), "notifier_per_s": notifier.per_s(), "ratio": notifier.per_s() / ceiling.per_s()}),
    )
}

struct Figures {
    name: &'static str,
    count: usize,
    elapsed: Duration,
    latency_us: Vec<u64>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.latency_us.clone();
        v.sort_unstable();
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
    }
}

fn fleet_for(
    run: &str,
    first: usize,
    terminals: usize,
    per_terminal: usize,
) -> Vec<Vec<plan::Planned>> {
    let cfg = plan::FleetConfig {
        terminals,
        per_terminal,
        merchants: 10,
        invalid_every: 0,
        seed: 1,
        first_terminal: first,
        run_id: run.into(),
    };
    plan::plan(&cfg, posflow_schema::now_millis())
}

/// The ceiling: a subscriber that only acknowledges, in the bridge's place.
async fn ceiling(d: &Deployment, terminals: usize, per_terminal: usize) -> anyhow::Result<Figures> {
    let total = terminals * per_terminal;
    let progress = Arc::new(fleet::Progress::default());
    let received = Arc::new(AtomicU64::new(0));
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    posflow_e2e::clear_mqtt_session(&d.stack, "bridge-3", &d.stack.bridge_password).await;
    let mut o = rumqttc::v5::MqttOptions::new("bridge-3", &d.stack.mqtt_host, d.stack.mqtt_port);
    o.set_credentials("bridge-3", &d.stack.bridge_password);
    o.set_receive_maximum(Some(256));
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
    let sub = {
        let (progress, received, last) = (progress.clone(), received.clone(), last.clone());
        tokio::spawn(async move {
            while received.load(Ordering::Relaxed) < total as u64 {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        // Latency needs the id; the parse is the only work this subscriber does.
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                            let sent = v["transaction_id"]
                                .as_str()
                                .and_then(|id| progress.sent_at.lock().unwrap().get(id).copied());
                            if let Some(t) = sent {
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
    let opts = fleet::PublishOptions {
        rate_per_terminal: 0.0,
        retry_after: Duration::from_secs(60),
        deadline: Duration::from_secs(300),
        await_answers: false,
    };
    let started = Instant::now();
    fleet::run(
        &d.stack.mqtt_args(),
        &Secret::new(&d.stack.terminal_password),
        fleet_for("ceil", 1, terminals, per_terminal),
        &opts,
        progress.clone(),
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(120), sub).await??;
    let elapsed = last.lock().unwrap().duration_since(started);
    let _ = client.disconnect().await;
    let latency_us = std::mem::take(&mut *progress.answer_latency_us.lock().unwrap());
    Ok(Figures {
        name: "broker ceiling (do-nothing QoS 1 subscriber)",
        count: total,
        elapsed,
        latency_us,
    })
}

async fn bridge(
    d: &Deployment,
    terminals: usize,
    per_terminal: usize,
) -> anyhow::Result<(Figures, String)> {
    let total = terminals * per_terminal;
    let bridge = d.start_bridge(4).await;
    let progress = Arc::new(fleet::Progress::default());
    let opts = fleet::PublishOptions {
        rate_per_terminal: 0.0,
        retry_after: Duration::from_secs(60),
        deadline: Duration::from_secs(300),
        await_answers: true,
    };
    let started = Instant::now();
    let report = fleet::run(
        &d.stack.mqtt_args(),
        &Secret::new(&d.stack.terminal_password),
        fleet_for("brdg", 1, terminals, per_terminal),
        &opts,
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
    Ok((
        Figures {
            name: "posflow-bridge (MQTT -> Kafka, acks=all, answer back)",
            count: total,
            elapsed,
            latency_us,
        },
        metrics,
    ))
}

/// A quantile from a Prometheus histogram (upper bound of the bucket it falls in), in ms.
fn histogram_quantile(page: &str, name: &str, q: f64) -> f64 {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (terminals, per_terminal, json) = match Args::parse().scenario {
        Scenario::Bridge {
            terminals,
            per_terminal,
            json,
        } => (terminals, per_terminal, json),
        Scenario::Validator { records, json } => return run_validator(records, json).await,
        Scenario::Storage { records, json } => return run_storage(records, json).await,
        Scenario::Notifier {
            records,
            merchants,
            json,
        } => return run_notifier(records, merchants, json).await,
        Scenario::Fraud {
            records,
            cards,
            json,
        } => return run_fraud(records, cards, json).await,
    };
    let d = Deployment::kafka_only().await;
    eprintln!("[bench] ceiling: {terminals} terminals x {per_terminal} ...");
    let c = ceiling(&d, terminals, per_terminal).await?;
    eprintln!("[bench] bridge: {terminals} terminals x {per_terminal} ...");
    let (b, metrics) = bridge(&d, terminals, per_terminal).await?;
    let ack_p50 = histogram_quantile(&metrics, "posflow_bridge_ack_latency_seconds", 0.5);
    let ack_p99 = histogram_quantile(&metrics, "posflow_bridge_ack_latency_seconds", 0.99);
    println!(
        "{:<56} {:>10} {:>12} {:>12}",
        "scenario", "tx/s", "p50 ms", "p99 ms"
    );
    for f in [&c, &b] {
        println!(
            "{:<56} {:>10.0} {:>12.1} {:>12.1}",
            f.name,
            f.rate(),
            f.pct(0.5),
            f.pct(0.99)
        );
    }
    println!(
        "{:<56} {:>10} {:>12} {:>12}",
        "bridge receive -> PUBACK (histogram bucket bound)",
        "",
        format!("<= {ack_p50}"),
        format!("<= {ack_p99}")
    );
    println!("bridge / ceiling throughput: {:.2}", b.rate() / c.rate());
    if let Some(path) = json {
        let fig = |f: &Figures| serde_json::json!({"scenario": f.name, "transactions": f.count, "elapsed_s": f.elapsed.as_secs_f64(), "tx_per_s": f.rate(), "latency_p50_ms": f.pct(0.5), "latency_p99_ms": f.pct(0.99)});
        let out = serde_json::json!({
            "machine": machine(),
            "ceiling": fig(&c), "bridge": fig(&b),
            "bridge_ack_latency_ms": {"p50_le": ack_p50, "p99_le": ack_p99},
            "ratio": b.rate() / c.rate(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
