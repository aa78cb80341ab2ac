//! Kafka stages against their ceilings, in the same run on the same records:
//!
//! - `validator`: the validator process next to a consume→produce passthrough with no rules,
//!   built on the same pipeline code and client settings (exactly-once: same transactions and
//!   batching; at-least-once: same in-flight window). Throughput is measured the same way for
//!   both: the group's committed offsets, from the first commit to the last record.
//! - `storage`: the storage process next to a plain PostgreSQL `COPY` of the same rows (and
//!   their line items) into the same tables, with the same indexes.
//! - `lake`: the lake process next to the Parquet writer alone writing the same rows, in files
//!   of the same size, to the same disk.

use crate::cpu::{Cpu, CpuPerUnit};
use posflow_e2e::{db, received_sale, Deployment, Service};
use posflow_kafka::pipeline::{self, Batching, Output};
use posflow_schema::{LineItem, TransactionReceived, TransactionValidated};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// A measured run: how many records, over how long.
pub struct Rate {
    pub records: u64,
    pub elapsed: Duration,
}

impl Rate {
    pub fn per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

/// `n` raw transactions from 200 terminals, one in ten breaking a rule, two line items each.
fn raw_records(run: &str, n: usize) -> Vec<TransactionReceived> {
    (0..n)
        .map(|i| {
            let terminal = format!("T{:04}", 1 + i % 200);
            let mut r = received_sale(&format!("{run}-{i:08}"), &terminal, (i / 200) as i64);
            r.transaction.line_items = vec![
                LineItem {
                    sku: "COF-1".into(),
                    description: "Flat white".into(),
                    unit_price_minor: 617,
                    quantity: 1,
                },
                LineItem {
                    sku: "BAK-2".into(),
                    description: "Croissant".into(),
                    unit_price_minor: 617,
                    quantity: 1,
                },
            ];
            if i % 10 == 9 {
                r.transaction.currency = "XYZ".into();
            }
            r
        })
        .collect()
}

/// Sum of the group's committed offsets on `topic` (records fully handled).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> u64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .create()
        .expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(5))
        .map(|t| {
            t.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o.max(0) as u64,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Records on `topics` (sum of high watermarks): outputs as soon as they are produced.
fn produced(brokers: &str, topics: &[String], partitions: i32) -> u64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("watermark reader");
    topics
        .iter()
        .flat_map(|t| (0..partitions).map(move |p| (t, p)))
        .map(|(t, p)| {
            c.fetch_watermarks(t, p, Duration::from_secs(5))
                .map(|w| w.1.max(0) as u64)
                .unwrap_or(0)
        })
        .sum()
}

/// Waits until `progress()` reaches `total`; the rate runs from the first progress seen, so
/// process start-up is not counted, the same way for every contender.
pub async fn measure<F, Fut>(total: u64, what: &str, mut progress: F) -> Rate
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    let mut last_report = Instant::now();
    loop {
        let n = progress().await;
        let now = Instant::now();
        if n > 0 && first.is_none() {
            first = Some((now, n));
        }
        if n >= total {
            let (mut t0, mut n0) = first.unwrap_or((now, 0));
            if n0 >= total {
                // All done before the first look (a run too small to time from inside):
                // count from the start, start-up included.
                (t0, n0) = (started, 0);
            }
            return Rate {
                records: total - n0,
                elapsed: now.duration_since(t0).max(Duration::from_millis(1)),
            };
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("[bench]   {what}: {n}/{total}");
            last_report = Instant::now();
        }
        assert!(now < deadline, "{what} stalled at {n}/{total}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const PARTITIONS: i32 = 4;

/// The passthrough: records copied from `input` to `output` in `group`, nothing decoded,
/// nothing checked.
async fn passthrough(
    d: &Deployment,
    exactly_once: bool,
    group: &str,
    input: &str,
    output: &str,
) -> anyhow::Result<()> {
    let ctx = posflow_runtime::Context {
        shutdown: posflow_runtime::Shutdown::new(),
        health: posflow_runtime::Health::new(),
    };
    let group = d.kafka.group(group);
    let out = d.topic(output);
    let transform = |input: pipeline::Input| {
        let out = out.clone();
        async move {
            Ok(vec![Output {
                topic: out,
                partition: None,
                key: String::from_utf8_lossy(input.key.as_deref().unwrap_or_default()).into_owned(),
                value: input.payload.unwrap_or_default(),
                headers: input.headers.unwrap_or_default(),
            }])
        }
    };
    let raw = d.topic(input);
    if exactly_once {
        let (consumer, producer) = pipeline::transactional_clients(
            &d.kafka,
            &group,
            "passthrough",
            "0",
            &Default::default(),
        )?;
        consumer.subscribe(&[&raw])?;
        // The validator's defaults.
        let batching = Batching {
            max_records: 2000,
            linger: Duration::from_millis(10),
        };
        pipeline::run_transactional(&consumer, &producer, batching, &ctx, transform).await?;
    } else {
        let consumer = posflow_kafka::clients::consumer(&d.kafka, &group, "passthrough")?;
        consumer.subscribe(&[&raw])?;
        let producer = posflow_kafka::clients::producer(&d.kafka, "passthrough")?;
        pipeline::run(
            &consumer,
            &producer,
            1000,
            Duration::from_secs(5),
            &ctx,
            transform,
        )
        .await?;
    }
    Ok(())
}

/// What runs against a set of records: the passthrough in this process, or a stage binary.
enum Contender {
    Passthrough {
        exactly_once: bool,
        group: &'static str,
        input: &'static str,
        output: &'static str,
    },
    Stage {
        binary: &'static str,
        env: Vec<(String, String)>,
    },
}

/// Starts `c` on `d`'s topics, measures it until `progress()` reaches `n`, stops it.
async fn race(
    d: &Deployment,
    c: Contender,
    label: &str,
    n: usize,
    mut progress: impl FnMut() -> u64,
) -> Rate {
    let (task, service) = match c {
        Contender::Passthrough {
            exactly_once,
            group,
            input,
            output,
        } => {
            let d = d.clone();
            let task =
                tokio::spawn(
                    async move { passthrough(&d, exactly_once, group, input, output).await },
                );
            (Some(task), None)
        }
        Contender::Stage { binary, env } => {
            let s = Service::start(binary, &env, &[]).await;
            crate::pin::stage_started(s.child.id());
            (None, Some(s))
        }
    };
    let rate = measure(n as u64, label, || {
        let v = progress();
        async move { v }
    })
    .await;
    if let Some(t) = task {
        t.abort();
    }
    drop(service);
    rate
}

/// Validator vs passthrough, exactly-once and at-least-once: four runs of `n` records, each on
/// its own topics. Returns (mode, passthrough, validator) per mode.
pub async fn validator(n: usize) -> anyhow::Result<Vec<(&'static str, Rate, Rate)>> {
    let mut out = Vec::new();
    for (mode, eos) in [("exactly-once", true), ("at-least-once", false)] {
        let mut rates = Vec::new();
        for contender in ["passthrough", "validator"] {
            let d = Deployment::kafka_only().await;
            eprintln!("[bench] {contender} ({mode}): producing {n} raw records ...");
            let records = raw_records(&format!("vb{:08x}", rand::random::<u32>()), n);
            d.produce("pos.transactions.raw", &records, |r| {
                r.transaction.terminal_id.clone()
            })
            .await;
            let group = d.kafka.group("posflow-validator");
            let raw = d.topic("pos.transactions.raw");
            let c = if contender == "passthrough" {
                Contender::Passthrough {
                    exactly_once: eos,
                    group: "posflow-validator",
                    input: "pos.transactions.raw",
                    output: "pos.transactions.validated",
                }
            } else {
                let mut env = d.env();
                env.push(("POSFLOW_DELIVERY".into(), mode.into()));
                env.push(("POSFLOW_LOG".into(), "warn".into()));
                Contender::Stage {
                    binary: "posflow-validator",
                    env,
                }
            };
            let brokers = d.stack.brokers.clone();
            // Exactly-once: the offsets committed with each transaction. At-least-once: outputs on
            // the topics (its offsets are committed a second later, which would blur the end).
            let outputs = [
                d.topic("pos.transactions.validated"),
                d.topic("pos.transactions.rejected"),
            ];
            let label = format!("{contender} ({mode})");
            rates.push(
                race(&d, c, &label, n, || {
                    if eos {
                        committed(&brokers, &group, &raw, PARTITIONS)
                    } else {
                        produced(&brokers, &outputs, PARTITIONS)
                    }
                })
                .await,
            );
        }
        let v = rates.pop().unwrap();
        let p = rates.pop().unwrap();
        out.push((mode, p, v));
    }
    Ok(out)
}

fn ts(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Text COPY field: `\N` for NULL, backslash escapes for the separators.
fn field(s: Option<&str>) -> String {
    match s {
        None => "\\N".into(),
        Some(s) => s
            .replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n"),
    }
}

/// A stage and its ceiling in the same run: records a second, and the CPU each process spent
/// per record (cpu.rs), which is what says whether a shortfall is the stage's own work.
pub struct Versus {
    pub ceiling: Rate,
    pub ceiling_cpu: CpuPerUnit,
    pub stage: Rate,
    pub stage_cpu: CpuPerUnit,
}

impl Versus {
    pub fn print_cpu(&self, stage: &str, unit: &str, ceiling: &str) {
        println!(
            "{stage}: CPU ms per {unit} ({stage} / this process / PostgreSQL / JVMs = total):"
        );
        println!("  {stage:<32} {}", self.stage_cpu.line());
        println!("  {ceiling:<32} {}", self.ceiling_cpu.line());
    }

    pub fn cpu_json(&self, stage: &str) -> serde_json::Value {
        serde_json::json!({stage: self.stage_cpu.json(stage), "ceiling": self.ceiling_cpu.json(stage)})
    }
}

/// `validated` on the deployment's validated topic, then `binary` started on it (logging only
/// warnings); the CPU reading taken just before it started.
async fn start_on_validated(
    d: &Deployment,
    validated: &[TransactionValidated],
    binary: &str,
    args: &[&str],
) -> (Service, Cpu) {
    eprintln!(
        "[bench] {binary}: producing {} validated records ...",
        validated.len()
    );
    d.produce("pos.transactions.validated", validated, |v| {
        posflow_validator::validated_key(&v.transaction)
    })
    .await;
    let mut env = d.env();
    env.push(("POSFLOW_LOG".into(), "warn".into()));
    let cpu = Cpu::now(None);
    (Service::start(binary, &env, args).await, cpu)
}

/// Storage vs COPY of the same `n` rows (with their line items) into the same tables.
pub async fn storage(n: usize) -> anyhow::Result<Versus> {
    use futures::SinkExt;
    let validated = validated_from_raw(raw_records(&format!("sb{:08x}", rand::random::<u32>()), n));
    let d = Deployment::new().await;
    let client = db(&d.stack).await;

    // COPY: the same rows under other ids, straight into transactions and line items.
    eprintln!("[bench] COPY of {n} rows ...");
    let mut tx_rows = String::new();
    let mut li_rows = String::new();
    let copy_prefix = format!("copy{:08x}-", rand::random::<u32>());
    for (i, v) in validated.iter().enumerate() {
        let t = &v.transaction;
        let id = format!("{copy_prefix}{}", t.transaction_id);
        let card = t.card.as_ref();
        let cols: [Option<String>; 24] = [
            Some(id.clone()),
            Some(t.terminal_id.clone()),
            Some(t.merchant_id.clone()),
            Some(t.sequence.to_string()),
            Some(ts(t.transaction_time)),
            Some(t.kind.as_str().into()),
            t.original_transaction_id.clone(),
            Some(t.amount_minor.to_string()),
            Some(t.currency.clone()),
            Some(t.payment_method.as_str().into()),
            Some(t.entry_mode.as_str().into()),
            card.map(|c| c.token.clone()),
            card.map(|c| c.bin.clone()),
            card.map(|c| c.last4.clone()),
            t.auth_code.clone(),
            Some(t.response_code.clone()),
            Some(t.mcc.clone()),
            t.location.map(|l| l.latitude.to_string()),
            t.location.map(|l| l.longitude.to_string()),
            Some(ts(v.envelope.received_at)),
            Some(v.envelope.bridge_id.clone()),
            Some(ts(v.validated_at)),
            Some("0".into()),
            Some(i.to_string()),
        ];
        tx_rows.push_str(
            &cols
                .iter()
                .map(|c| field(c.as_deref()))
                .collect::<Vec<_>>()
                .join("\t"),
        );
        tx_rows.push('\n');
        for (no, li) in t.line_items.iter().enumerate() {
            li_rows.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\n",
                field(Some(&id)),
                no + 1,
                field(Some(&li.sku)),
                field(Some(&li.description)),
                li.unit_price_minor,
                li.quantity
            ));
        }
    }
    // The line items reference the ledger; COPY it too, as storage writes it.
    let mut key_rows = String::new();
    for v in &validated {
        key_rows.push_str(&format!(
            "{copy_prefix}{}\t{}\n",
            v.transaction.transaction_id,
            ts(v.transaction.transaction_time)
        ));
    }
    let started = Instant::now();
    let cpu = Cpu::now(None);
    client.batch_execute("BEGIN").await?;
    for (sql, data) in [
        ("COPY transaction_keys (transaction_id, transaction_time) FROM STDIN", key_rows),
        ("COPY transactions (transaction_id, terminal_id, merchant_id, sequence, transaction_time, type, original_transaction_id, amount_minor, currency, payment_method, entry_mode, card_token, card_bin, card_last4, auth_code, response_code, mcc, latitude, longitude, received_at, bridge_id, validated_at, kafka_partition, kafka_offset) FROM STDIN", tx_rows),
        ("COPY transaction_line_items (transaction_id, line_no, sku, description, unit_price_minor, quantity) FROM STDIN", li_rows),
    ] {
        let sink = client.copy_in::<_, bytes::Bytes>(sql).await?;
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(data)).await?;
        sink.finish().await?;
    }
    client.batch_execute("COMMIT").await?;
    let copy = Rate {
        records: n as u64,
        elapsed: started.elapsed(),
    };
    let copy_cpu = Cpu::now(None).per_unit_since(&cpu, n as u64);

    let (storage_stage, cpu) = start_on_validated(&d, &validated, "posflow-storage", &[]).await;
    crate::pin::stage_started(storage_stage.child.id());
    let group = d.kafka.group("posflow-storage");
    let topic = d.topic("pos.transactions.validated");
    let storage_rate = measure(n as u64, "storage", || {
        stored_offsets(&client, &group, &topic)
    })
    .await;
    let storage_cpu = Cpu::now(Some(storage_stage.child.id())).per_unit_since(&cpu, n as u64);
    client
        .execute(
            "DELETE FROM transaction_line_items WHERE transaction_id LIKE $1",
            &[&format!("{copy_prefix}%")],
        )
        .await?;
    client
        .execute(
            "DELETE FROM transactions WHERE transaction_id LIKE $1",
            &[&format!("{copy_prefix}%")],
        )
        .await?;
    client
        .execute(
            "DELETE FROM transaction_keys WHERE transaction_id LIKE $1",
            &[&format!("{copy_prefix}%")],
        )
        .await?;
    Ok(Versus {
        ceiling: copy,
        ceiling_cpu: copy_cpu,
        stage: storage_rate,
        stage_cpu: storage_cpu,
    })
}

/// Scale-out: `n` records through `replicas` replicas of a stage in one group, on fresh topics
/// of 4 partitions (one each at 4 replicas). The replicas start first and the group settles;
/// then the records appear at once (one Kafka transaction), so the figure is the replicas'
/// throughput, not their start-up or the producer's. Validator exactly-once: its committed
/// offsets; storage: the offsets in its database.
pub async fn scale_out(stage: &str, n: usize, replicas: usize) -> anyhow::Result<Rate> {
    let d = Deployment::kafka_only().await;
    let run = format!("so{:08x}", rand::random::<u32>());
    let mut env = d.env();
    env.push(("POSFLOW_LOG".into(), "warn".into()));
    let (binary, group) = match stage {
        "validator" => ("posflow-validator", d.kafka.group("posflow-validator")),
        _ => ("posflow-storage", d.kafka.group("posflow-storage")),
    };
    let mut services = Vec::new();
    for i in 0..replicas {
        let mut env = env.clone();
        env.push(("POSFLOW_INSTANCE_ID".into(), format!("{run}-{i}")));
        services.push(Service::start(binary, &env, &[]).await);
    }
    d.wait_for_group(&group, replicas).await;
    eprintln!("[bench] {stage} x{replicas}: {n} records appear at once ...");
    let label = format!("{stage} x{replicas}");
    let rate = if stage == "validator" {
        let records = raw_records(&run, n);
        d.produce_at_once("pos.transactions.raw", &records, |r| {
            r.transaction.terminal_id.clone()
        })
        .await;
        let (brokers, raw) = (d.stack.brokers.clone(), d.topic("pos.transactions.raw"));
        measure(n as u64, &label, || {
            let v = committed(&brokers, &group, &raw, PARTITIONS);
            async move { v }
        })
        .await
    } else {
        let validated = validated_from_raw(raw_records(&run, n));
        d.produce_at_once("pos.transactions.validated", &validated, |v| {
            posflow_validator::validated_key(&v.transaction)
        })
        .await;
        let client = db(&d.stack).await;
        let topic = d.topic("pos.transactions.validated");
        measure(n as u64, &label, || stored_offsets(&client, &group, &topic)).await
    };
    drop(services);
    Ok(rate)
}

/// Raw records as the validator would pass them.
fn validated_from_raw(raw: Vec<TransactionReceived>) -> Vec<TransactionValidated> {
    raw.into_iter()
        .map(|r| TransactionValidated {
            envelope: r.envelope,
            transaction: r.transaction,
            validated_at: posflow_schema::now_millis(),
        })
        .collect()
}

/// The sum of storage's next offsets on `topic` in its database: the records stored.
async fn stored_offsets(client: &tokio_postgres::Client, group: &str, topic: &str) -> u64 {
    client
        .query_one(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM kafka_offsets WHERE consumer_group = $1 AND topic = $2",
            &[&group, &topic],
        )
        .await
        .map(|r| r.get::<_, i64>(0) as u64)
        .unwrap_or(0)
}

/// `n` validated transactions on `cards` cards, event times `step_ms` apart from `t0`.
fn validated_records(
    run: &str,
    n: usize,
    cards: usize,
    t0: i64,
    step_ms: i64,
) -> Vec<TransactionValidated> {
    raw_records(run, n)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let mut t = r.transaction;
            t.currency = "EUR".into();
            t.transaction_time = t0 + i as i64 * step_ms;
            if let Some(c) = t.card.as_mut() {
                c.token = format!("{run}-card-{}", i % cards);
            }
            TransactionValidated {
                envelope: r.envelope,
                transaction: t,
                validated_at: posflow_schema::now_millis(),
            }
        })
        .collect()
}

/// As deployed: with a local state store (under the temporary directory, per instance id).
fn fraud_env(d: &Deployment) -> Vec<(String, String)> {
    let mut env = d.env();
    env.push(("POSFLOW_LOG".into(), "warn".into()));
    env.push((
        "POSFLOW_INSTANCE_ID".into(),
        format!("bench-{}", rand::random::<u32>()),
    ));
    let dir = std::env::temp_dir().join("posflow-bench-fraud-state");
    env.push(("POSFLOW_FRAUD_STATE_DIR".into(), dir.display().to_string()));
    env
}

async fn produce_validated(d: &Deployment, records: &[TransactionValidated]) {
    d.produce("pos.transactions.validated", records, |v| {
        posflow_validator::validated_key(&v.transaction)
    })
    .await;
}

/// Fraud vs passthrough (exactly-once, the same batching), `n` records on 20,000 cards.
pub async fn fraud(n: usize) -> anyhow::Result<(Rate, Rate)> {
    let mut rates = Vec::new();
    for contender in ["passthrough", "fraud"] {
        let d = Deployment::kafka_only().await;
        eprintln!("[bench] {contender}: producing {n} validated records ...");
        let t0 = posflow_schema::now_millis() - 3_600_000;
        produce_validated(
            &d,
            &validated_records(
                &format!("fb{:08x}", rand::random::<u32>()),
                n,
                20_000,
                t0,
                10,
            ),
        )
        .await;
        let group = d.kafka.group("posflow-fraud");
        let input = d.topic("pos.transactions.validated");
        let c = if contender == "passthrough" {
            Contender::Passthrough {
                exactly_once: true,
                group: "posflow-fraud",
                input: "pos.transactions.validated",
                output: "pos.fraud.alerts",
            }
        } else {
            Contender::Stage {
                binary: "posflow-fraud",
                env: fraud_env(&d),
            }
        };
        let brokers = d.stack.brokers.clone();
        rates.push(
            race(&d, c, contender, n, || {
                committed(&brokers, &group, &input, PARTITIONS)
            })
            .await,
        );
    }
    let f = rates.pop().unwrap();
    Ok((rates.pop().unwrap(), f))
}

/// Alert latency under a steady live load: `rate` transactions a second for `secs` seconds on
/// 500 cards (each card passes the velocity limit about once), event time = publish time.
/// Returns (alerts, p50 ms bound, p99 ms bound) from the stage's histogram.
pub async fn fraud_latency(rate: usize, secs: usize) -> anyhow::Result<(f64, f64, f64)> {
    let d = Deployment::kafka_only().await;
    let fraud = Service::start("posflow-fraud", &fraud_env(&d), &[]).await;
    let run = format!("fl{:08x}", rand::random::<u32>());
    eprintln!("[bench] fraud latency: {rate}/s for {secs} s ...");
    // One producer for the run, as a validator would have: creating one per tick would count
    // its connection set-up as alert latency.
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &d.stack.brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let topic = d.topic("pos.transactions.validated");
    let encoder =
        posflow_schema::Encoder::<TransactionValidated>::for_topic(&d.kafka.registry(), &topic)
            .await?;
    let per_tick = rate / 10;
    for tick in 0..secs * 10 {
        let started = Instant::now();
        let now = posflow_schema::now_millis();
        let mut pending = Vec::with_capacity(per_tick);
        for (i, mut v) in validated_records(&format!("{run}-{tick}"), per_tick, 1, now, 0)
            .into_iter()
            .enumerate()
        {
            let card = v.transaction.card.as_mut().expect("card");
            card.token = format!("{run}-card-{}", (tick * per_tick + i) % 500);
            let (key, value) = (card.token.clone(), encoder.encode(&v)?);
            let record = rdkafka::producer::FutureRecord::to(&topic)
                .key(&key)
                .payload(&value);
            pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for p in pending {
            p.await?.map_err(|(e, _)| e)?;
        }
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(started.elapsed())).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let page = fraud.metrics().await;
    let alerts = posflow_e2e::metric(&page, "posflow_fraud_alerts_total{rule=\"VELOCITY_CARD\"}")
        .unwrap_or(0.0);
    Ok((
        alerts,
        crate::bridge::histogram_quantile(&page, "posflow_fraud_alert_latency_seconds", 0.5),
        crate::bridge::histogram_quantile(&page, "posflow_fraud_alert_latency_seconds", 0.99),
    ))
}

/// Rows per file in the lake bench: the stage's default roll (50,000) over the test topics'
/// four partitions. The ceiling writes files of the same size.
const LAKE_FILE_ROWS: usize = 12_500;

/// The lake vs the Parquet writer alone on the same `n` validated rows: the writer gets the rows
/// ready-made (no Kafka, no Avro, no manifest), the stage consumes them from the topic.
pub async fn lake(n: usize) -> anyhow::Result<Versus> {
    use posflow_lake::parquet_file::{self, Format};
    use posflow_lake::table::{Record, Table};
    let validated = validated_from_raw(raw_records(&format!("lb{:08x}", rand::random::<u32>()), n));
    let d = Deployment::new().await;
    let root = std::env::temp_dir().join(format!("posflow-bench-lake-{}", d.prefix));
    std::fs::create_dir_all(&root)?;

    eprintln!("[bench] Parquet writer alone, {n} rows ...");
    let rows: Vec<Vec<posflow_lake::table::Value>> = validated
        .iter()
        .enumerate()
        .map(|(i, v)| Record::Validated(v.clone()).into_row(0, i as i64))
        .collect();
    let refs: Vec<&[posflow_lake::table::Value]> = rows.iter().map(Vec::as_slice).collect();
    let started = Instant::now();
    let cpu = Cpu::now(None);
    for (i, chunk) in refs.chunks(LAKE_FILE_ROWS).enumerate() {
        let path = root.join(format!("ceiling-{i}.parquet"));
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
        parquet_file::write(Table::Validated, chunk, Format::default(), &mut f)?;
        std::io::Write::flush(&mut f)?;
        f.into_inner()?.sync_all()?;
    }
    let ceiling = Rate {
        records: n as u64,
        elapsed: started.elapsed(),
    };
    let ceiling_cpu = Cpu::now(None).per_unit_since(&cpu, n as u64);
    drop(rows);

    let root_arg = root.join("lake").display().to_string();
    let args = ["--root", root_arg.as_str(), "--roll-seconds", "2"];
    let (stage, cpu) = start_on_validated(&d, &validated, "posflow-lake", &args).await;
    let lake = posflow_lake::store::Lake::new(&root_arg, "bench-reader");
    let topic = d.topic("pos.transactions.validated");
    let rate = measure(n as u64, "lake", || {
        let n: i64 = (0..PARTITIONS)
            .filter_map(|p| lake.versions(&topic, p).ok()?.pop())
            .map(|v| v.next_offset)
            .sum();
        async move { n as u64 }
    })
    .await;
    let stage_cpu = Cpu::now(Some(stage.child.id())).per_unit_since(&cpu, n as u64);
    drop(stage);
    std::fs::remove_dir_all(&root)?;
    Ok(Versus {
        ceiling,
        ceiling_cpu,
        stage: rate,
        stage_cpu,
    })
}
