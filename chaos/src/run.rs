//! One chaos run: deploy, load, faults, quiet, check, report.

use crate::check::{self, Observed};
use crate::nemesis::{self, Nemesis};
use crate::report::{self, Report};
use crate::stages::Stages;
use crate::topics::{self, Stored};
use crate::Args;
use anyhow::Context as _;
use posflow_e2e::notify::{Behaviour, Receiver};
use posflow_e2e::{db, metric, Deployment, Service};
use posflow_schema::{
    AvroRecord, Decoder, FraudAlert, TransactionReceived, TransactionRejected, TransactionValidated,
};
use posflow_simulator::{fleet::PublishOptions, plan::FleetConfig};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The merchant that gets a webhook for every transaction (the local registry's M001).
const NOTIFIED: &str = "M001";

fn kafka_nodes() -> u32 {
    std::env::var("POSFLOW_LOCAL_KAFKA_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

pub async fn run(args: &Args, seed: u64) -> anyhow::Result<Report> {
    let nodes = kafka_nodes();
    anyhow::ensure!(
        nodes >= 3,
        "a three-node Kafka is needed (POSFLOW_LOCAL_KAFKA_NODES={nodes}): make chaos starts one"
    );
    let plan = nemesis::schedule(seed, args.seconds);
    println!(
        "[chaos] seed {seed}: {} s at {} tx/s, {} faults planned (posflow-chaos --seed {seed} --seconds {} --plan-only lists them)",
        args.seconds, args.rate, plan.len(), args.seconds
    );
    let w = World::deploy(args).await;
    let started_at = now_rfc3339(&w.d).await;
    let loaded = load(&w, args, seed, &plan).await;
    let fleet = &loaded.fleet;
    let notified_expected = loaded
        .planned
        .iter()
        .filter(|p| p.merchant_id == NOTIFIED && p.expected_rejection.is_none())
        .filter(|p| fleet.answers.get(&p.transaction_id).map(String::as_str) == Some("accepted"))
        .count();
    let mut exited = loaded.exited;
    let expect = (fleet.accepted() as i64, notified_expected);
    settle(&w, expect, loaded.t0, &mut exited).await;
    w.stages.stop_all().await;
    let client = db(&w.d.stack).await;
    let observed = observe(&w.d, &client, &w.receiver).await?;
    let checks = check::checks(&loaded.planned, &fleet.answers, NOTIFIED, &observed);
    let series = report::series(&client, loaded.t0_ms).await?;
    let events = loaded.events;
    let impacts = report::impacts(&series, &events, args.seconds as f64);
    let paired: Vec<_> = events
        .iter()
        .cloned()
        .zip(impacts.iter().cloned())
        .collect();
    let r = Report {
        seed,
        seconds: args.seconds,
        offered_tx_per_s: args.rate,
        terminals: args.terminals,
        kafka_nodes: nodes,
        mqtt_broker: posflow_e2e::mqtt_broker(),
        bridge_defect: args.prove_checker,
        started_at,
        transactions_planned: loaded.planned.len(),
        published: fleet.published,
        republished: fleet.republished,
        passed: checks.iter().all(check::Check::passed),
        overlapping_faults: report::overlapping(&events),
        by_kind: report::by_kind(&paired),
        checks,
        schedule: plan,
        events,
        impacts,
        exited,
        series,
    };
    write(&r, &args.out)?;
    Ok(r)
}

/// The run's deployment: its topics and schema, the webhook receiver, the stages.
struct World {
    d: Deployment,
    receiver: Receiver,
    stages: Arc<Stages>,
}

impl World {
    async fn deploy(args: &Args) -> World {
        let d = Deployment::new().await.with_own_schema().await;
        let receiver = Receiver::start().await;
        let url = receiver.merchant(NOTIFIED, "whsec-chaos-0123456789abcdef", Behaviour::Accept);
        d.apply_merchants(&format!(
            "[merchants.{NOTIFIED}]\nwebhook_url = \"{url}\"\nwebhook_secret = \"whsec-chaos-0123456789abcdef\"\nevents = [\"transactions\", \"refunds\"]\n"
        ));
        let defect = if args.prove_checker {
            vec![(
                "POSFLOW_BRIDGE_TEST_DEFECT".to_string(),
                "answer-before-kafka".to_string(),
            )]
        } else {
            vec![]
        };
        let stages = Arc::new(Stages::start(&d, defect).await);
        println!("[chaos] 5 stages x 2 replicas ready on prefix {}", d.prefix);
        World {
            d,
            receiver,
            stages,
        }
    }
}

/// What the load phase leaves: the plan, the terminals' answers, the faults as they happened.
struct Loaded {
    planned: Vec<posflow_simulator::plan::Planned>,
    fleet: posflow_simulator::fleet::Report,
    events: Vec<nemesis::Event>,
    exited: Vec<String>,
    t0: Instant,
    t0_ms: f64,
}

/// The terminals at the offered rate and the nemesis on its schedule, until every terminal has
/// all its answers and every fault is undone; a supervisor restarts replicas that exit.
async fn load(w: &World, args: &Args, seed: u64, plan: &[nemesis::Fault]) -> Loaded {
    let per_terminal = ((args.rate * args.seconds as f64) / args.terminals as f64).ceil() as usize;
    let cfg = FleetConfig {
        terminals: args.terminals,
        per_terminal,
        merchants: 5,
        invalid_every: 40,
        seed,
        first_terminal: 101,
        run_id: format!("chaos{seed}x{:06x}", rand::random::<u32>() & 0xff_ffff),
    };
    let opts = PublishOptions {
        rate_per_terminal: args.rate / args.terminals as f64,
        retry_after: Duration::from_secs(20),
        deadline: Duration::from_secs(args.seconds + 420),
        await_answers: true,
    };
    let t0 = Instant::now();
    let t0_ms = posflow_schema::now_millis() as f64;
    let (fleet, planned) = w.d.fleet_of(&cfg, opts);
    let nemesis = Arc::new(Nemesis {
        stages: w.stages.clone(),
        brokers: w.d.stack.brokers.clone(),
        raw_topic: w.d.topic("pos.transactions.raw"),
        t0,
        events: Default::default(),
    });
    let faults = tokio::spawn(nemesis.clone().run(plan.to_vec()));
    let (mut exited, mut last_print) = (Vec::new(), Instant::now());
    while !(fleet.is_finished() && faults.is_finished()) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        supervise(&w.stages, t0, &mut exited);
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let p = &fleet.progress;
            println!(
                "[chaos {:>6.1}s] published {} (republished {}), answered {}, rows {}",
                t0.elapsed().as_secs_f64(),
                p.published.load(Relaxed),
                p.republished.load(Relaxed),
                p.accepted.load(Relaxed) + p.rejected.load(Relaxed),
                rows(&w.d).await
            );
        }
    }
    let mut events = std::mem::take(&mut *nemesis.events.lock().expect("poisoned"));
    events.sort_by(|a, b| a.began_s.total_cmp(&b.began_s));
    Loaded {
        planned,
        fleet: fleet.finish().await,
        events,
        exited,
        t0,
        t0_ms,
    }
}

async fn now_rfc3339(d: &Deployment) -> String {
    let c = db(&d.stack).await;
    c.query_one(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
        &[],
    )
    .await
    .map(|r| r.get(0))
    .unwrap_or_default()
}

/// Rows stored so far (-1 while the database is away): a connection of its own each time, as
/// PostgreSQL restarts under it.
async fn rows(d: &Deployment) -> i64 {
    let Ok(client) = posflow_pg::connect(&d.stack.database_url).await else {
        return -1;
    };
    client
        .query_one(
            "SELECT (SELECT count(*) FROM transactions) + (SELECT count(*) FROM rejections)",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// Starts again, as Kubernetes would, the replicas that exited by themselves, and notes them.
fn supervise(stages: &Stages, t0: Instant, exited: &mut Vec<String>) {
    for x in stages.restart_exited() {
        println!(
            "[chaos {:>6.1}s] {x}: started again",
            t0.elapsed().as_secs_f64()
        );
        exited.push(x);
    }
}

/// Waits for the pipeline to finish what the terminals were told it has: a row per accepted
/// transaction, a webhook per notified one (`expect`), supervising the replicas meanwhile —
/// until that, or 60 s without a new row or webhook, or 5 minutes. Whatever is short then is
/// the checker's to report.
async fn settle(w: &World, expect: (i64, usize), t0: Instant, exited: &mut Vec<String>) {
    let (accepted, notified) = expect;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut seen, mut moved) = ((0, 0), Instant::now());
    loop {
        supervise(&w.stages, t0, exited);
        let (r, n) = (rows(&w.d).await, delivered(&w.receiver).len());
        if (r, n) != seen {
            (seen, moved) = ((r, n), Instant::now());
        }
        let stuck = moved.elapsed() > Duration::from_secs(60);
        if (r >= accepted && n >= notified) || stuck || Instant::now() > deadline {
            println!(
                "[chaos {:>6.1}s] settled: rows {r} of {accepted}, webhooks {n} of {notified}",
                t0.elapsed().as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Fraud judges what it has not yet committed before its alerts are compared: a replica
    // still restoring a partition is behind, not wrong. One stuck stays behind, and the
    // checker reports the alerts it never raised.
    let (brokers, group) = (
        w.d.stack.brokers.clone(),
        format!("{}posflow-fraud", w.d.prefix),
    );
    let inputs = vec![
        w.d.topic("pos.transactions.raw"),
        w.d.topic("pos.transactions.validated"),
    ];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut told = Instant::now() - Duration::from_secs(10);
    loop {
        supervise(&w.stages, t0, exited);
        let (b, g, i) = (brokers.clone(), group.clone(), inputs.clone());
        let behind = tokio::task::spawn_blocking(move || topics::group_behind(&b, &g, &i))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r);
        match behind {
            Ok(0) => {
                println!(
                    "[chaos {:>6.1}s] fraud has committed every input record",
                    t0.elapsed().as_secs_f64()
                );
                break;
            }
            Ok(n) if Instant::now() > deadline => {
                println!(
                    "[chaos {:>6.1}s] fraud still {n} records behind after 120 s",
                    t0.elapsed().as_secs_f64()
                );
                break;
            }
            Err(e) if Instant::now() > deadline => {
                println!("[chaos] fraud's lag unknown: {e}");
                break;
            }
            other => {
                if told.elapsed() >= Duration::from_secs(10) {
                    told = Instant::now();
                    match other {
                        Ok(n) => println!(
                            "[chaos {:>6.1}s] fraud {n} records behind; waiting",
                            t0.elapsed().as_secs_f64()
                        ),
                        Err(e) => println!("[chaos] fraud's lag: {e} (again)"),
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await
            }
        }
    }
    // Anything extra (a duplicate) has a moment to show.
    tokio::time::sleep(Duration::from_secs(5)).await;
}

/// (transaction id, idempotency key) of every webhook the notified merchant accepted.
fn delivered(receiver: &Receiver) -> Vec<(String, String)> {
    receiver
        .received_by(NOTIFIED)
        .into_iter()
        .filter(|r| (200..300).contains(&r.status))
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            Some((
                v["transaction"]["transaction_id"].as_str()?.to_string(),
                r.idempotency_key,
            ))
        })
        .collect()
}

/// Every record of `base` decoded, mapped by `f`; and the records as read.
async fn decoded<T: AvroRecord, F: Fn(T) -> String>(
    d: &Deployment,
    base: &str,
    f: F,
) -> anyhow::Result<(Vec<Stored>, Vec<String>)> {
    let (brokers, topic) = (d.stack.brokers.clone(), d.topic(base));
    let records = tokio::task::spawn_blocking(move || topics::read_all(&brokers, &topic)).await??;
    let dec = Decoder::<T>::new(d.kafka.registry());
    let mut out = Vec::with_capacity(records.len());
    for r in &records {
        out.push(f(dec
            .decode(&r.value)
            .await
            .with_context(|| format!("a record of {base}"))?));
    }
    Ok((records, out))
}

async fn observe(
    d: &Deployment,
    client: &tokio_postgres::Client,
    receiver: &Receiver,
) -> anyhow::Result<Observed> {
    let ids = |q: &'static str| async move {
        anyhow::Ok(
            client
                .query(q, &[])
                .await?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>(),
        )
    };
    // Read once: the checker's ids, and the fault-free fraud run's input.
    let (raw_records, raw) = decoded(d, "pos.transactions.raw", |t: TransactionReceived| {
        t.transaction.transaction_id
    })
    .await?;
    let (validated_records, validated) = decoded(
        d,
        "pos.transactions.validated",
        |t: TransactionValidated| t.transaction.transaction_id,
    )
    .await?;
    Ok(Observed {
        raw,
        validated,
        rejected: decoded(d, "pos.transactions.rejected", |t: TransactionRejected| {
            t.transaction.transaction_id
        })
        .await?
        .1,
        stored: ids("SELECT transaction_id FROM transactions").await?,
        stored_rejections: ids("SELECT transaction_id FROM rejections").await?,
        notified: delivered(receiver),
        alerts: decoded(d, "pos.fraud.alerts", |a: FraudAlert| a.alert_id)
            .await?
            .1,
        reference_alerts: reference_alerts(raw_records, validated_records).await?,
    })
}

/// The alert ids one fraud replica raises, with no fault, from the run's raw and validated
/// topics copied record for record (same partitions, keys, timestamps, order) into a fresh
/// deployment.
async fn reference_alerts(raw: Vec<Stored>, validated: Vec<Stored>) -> anyhow::Result<Vec<String>> {
    let reference = Deployment::unregistered().await;
    let (n_raw, n_valid) = (raw.len() as f64, validated.len() as f64);
    for (base, records) in [
        ("pos.transactions.raw", raw),
        ("pos.transactions.validated", validated),
    ] {
        let (brokers, topic) = (reference.stack.brokers.clone(), reference.topic(base));
        tokio::task::spawn_blocking(move || topics::copy(&brokers, &topic, &records)).await??;
    }
    let mut env = reference.env();
    env.push(("POSFLOW_INSTANCE_ID".into(), "chaos-reference".into()));
    let mut fraud = Service::start("posflow-fraud", &env, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let page = fraud.metrics().await;
        let got = |input: &str| {
            metric(
                &page,
                &format!("posflow_fraud_received_total{{input=\"{input}\"}}"),
            )
            .unwrap_or(0.0)
        };
        if (got("terminal") >= n_raw && got("card") >= n_valid) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // SIGTERM: the replica commits what it has and exits, so nothing is left in an open
    // transaction when the alerts are read.
    tokio::task::spawn_blocking(move || fraud.terminate()).await?;
    Ok(
        decoded(&reference, "pos.fraud.alerts", |a: FraudAlert| a.alert_id)
            .await?
            .1,
    )
}

/// The .md and .svg of a run again, from its .json (after a change to how they are drawn).
pub fn redraw(json: &std::path::Path) -> anyhow::Result<()> {
    let r: Report = serde_json::from_slice(&std::fs::read(json)?)?;
    let dir = json.parent().unwrap_or(std::path::Path::new("."));
    write(&r, dir)
}

fn write(r: &Report, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let base = dir.join(format!("chaos-{}", r.seed));
    let svg_name = format!("chaos-{}.svg", r.seed);
    let json = rounded(serde_json::to_value(r)?);
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    std::fs::write(base.with_extension("svg"), report::svg(r))?;
    let md = report::markdown(r, &svg_name);
    std::fs::write(base.with_extension("md"), &md)?;
    println!("{md}\n[chaos] report: {}.{{json,md,svg}}", base.display());
    Ok(())
}

/// Every number to three decimals: the seconds and milliseconds mean nothing finer, and long
/// float tails read as digit runs (card-number scanners flag them).
fn rounded(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => n
            .as_f64()
            .and_then(|x| serde_json::Number::from_f64((x * 1000.0).round() / 1000.0))
            .map_or(Value::Number(n), Value::Number),
        Value::Array(a) => Value::Array(a.into_iter().map(rounded).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, rounded(v))).collect()),
        other => other,
    }
}
