//! posflow-lake against the real stack: exactly once through crashes, checked by DuckDB — an
//! analyst's tool, no posflow code — against what storage put in PostgreSQL.

use posflow_e2e::*;
use posflow_lake::store::Lake;
use posflow_schema::{
    now_millis, FraudAlert, RejectionReason, Severity, TransactionRejected, TransactionValidated,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const VALID: usize = 100_000;
const REJECTED: usize = 1_000;
const ALERTS: usize = 200;
const MERCHANTS: usize = 10;

/// Validated transactions over ten merchants, three event dates and varied amounts.
fn validated(run: &str, from: usize, n: usize) -> Vec<TransactionValidated> {
    (from..from + n)
        .map(|i| {
            let terminal = format!("T{:04}", 1 + i % 200);
            let r = received_sale(&format!("{run}-{i:08}"), &terminal, i as i64);
            let mut t = r.transaction;
            t.merchant_id = format!("M{:03}", 1 + i % MERCHANTS);
            t.amount_minor = 100 + (i as i64 * 7919) % 50_000;
            t.transaction_time -= (i % 3) as i64 * 86_400_000;
            TransactionValidated {
                envelope: r.envelope,
                transaction: t,
                validated_at: now_millis(),
            }
        })
        .collect()
}

fn rejected(run: &str) -> Vec<TransactionRejected> {
    (0..REJECTED)
        .map(|i| {
            let terminal = format!("T{:04}", 1 + i % 50);
            let r = received_sale(&format!("{run}-r{i:06}"), &terminal, i as i64);
            TransactionRejected {
                envelope: r.envelope,
                transaction: r.transaction,
                reasons: vec![RejectionReason {
                    code: "AMOUNT_OUT_OF_RANGE".into(),
                    message: "amount above the merchant's limit".into(),
                }],
                rejected_at: now_millis(),
            }
        })
        .collect()
}

fn alerts(run: &str) -> Vec<FraudAlert> {
    (0..ALERTS)
        .map(|i| FraudAlert {
            alert_id: format!("{run}-a{i:05}"),
            rule_id: "velocity".into(),
            severity: Severity::High,
            score: 0.75,
            evidence_transaction_ids: vec![format!("{run}-{i:08}")],
            card_token: Some(format!("tok-{i}")),
            merchant_id: "M001".into(),
            terminal_id: format!("T{:04}", 1 + i % 50),
            detected_at: now_millis(),
        })
        .collect()
}

/// Per partition of `topic`, the next offset its manifest records.
fn manifest_offsets(root: &Path, topic: &str) -> BTreeMap<i32, i64> {
    let lake = Lake::new(root, "e2e-reader");
    (0..4)
        .filter_map(|p| {
            let v = lake.versions(topic, p).ok()?.pop()?;
            Some((p, v.next_offset))
        })
        .collect()
}

/// Per partition of `topic`, its end (high watermark).
fn ends(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("watermark client");
    (0..4)
        .map(|p| {
            let (_, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, high)
        })
        .collect()
}

/// Waits until the lake's manifests hold at least `rows` offsets of `topic` in all.
async fn lake_reaches(root: &Path, topic: &str, rows: i64, lakes: &mut [Service]) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let n: i64 = manifest_offsets(root, topic).values().sum();
        if n >= rows {
            return;
        }
        for lake in lakes.iter_mut() {
            assert!(lake.is_running(), "a lake exited:\n{}", lake.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "the lake reached {n} of {rows} offsets:\n{}",
            lakes[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_lake(d: &Deployment, root: &Path) -> impl std::future::Future<Output = Service> {
    let env = d.env();
    let root = root.display().to_string();
    async move {
        Service::start(
            "posflow-lake",
            &env,
            &[
                "--root",
                &root,
                "--roll-rows",
                "5000",
                "--roll-seconds",
                "1",
            ],
        )
        .await
    }
}

/// DuckDB's answers over the lake's files (tests/analysts/lake_query.py).
fn duckdb(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&analyst_script("lake_query.py", &[root])).expect("one JSON object")
}

/// 100,000 valid transactions (and rejections and alerts) produced in ten bursts while the lake
/// is SIGKILLed twice mid-stream. DuckDB over the Parquet files then counts every valid
/// transaction exactly once — as many rows as distinct ids and distinct Kafka positions — each
/// in its event date's directory, and its per-merchant counts and sums equal PostgreSQL's,
/// which storage filled from the same topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_killed_twice_during_100k_transactions_holds_each_once_as_postgres_does() {
    lake_through_two_kills(1).await;
}

/// The same with two replicas sharing the partitions, each SIGKILLed once: every kill and
/// restart is a rebalance, with rolls in flight on both sides (store.rs: the loser of a commit
/// writes what is left above the winner's offset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lake_replicas_each_killed_once_hold_each_transaction_once() {
    lake_through_two_kills(2).await;
}

async fn lake_through_two_kills(replicas: usize) {
    let d = Deployment::new().await;
    let root = std::env::temp_dir().join(format!("posflow-lake-e2e-{}", d.prefix));
    let _ = std::fs::remove_dir_all(&root);
    let run = format!("lk{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _storage = d.start("posflow-storage").await;
    let mut lakes = vec![];
    for _ in 0..replicas {
        lakes.push(start_lake(&d, &root).await);
    }

    let producer = {
        let (d, run) = (d.clone(), run.clone());
        tokio::spawn(async move {
            d.produce_at_once("pos.transactions.rejected", &rejected(&run), |r| {
                r.transaction.terminal_id.clone()
            })
            .await;
            d.produce_at_once("pos.fraud.alerts", &alerts(&run), |a| a.terminal_id.clone())
                .await;
            for burst in 0..10 {
                let records = validated(&run, burst * VALID / 10, VALID / 10);
                d.produce_at_once("pos.transactions.validated", &records, |v| {
                    posflow_validator::validated_key(&v.transaction)
                })
                .await;
            }
        })
    };
    let topic = d.topic("pos.transactions.validated");
    // Two crashes, each at a random point of the stream: mid-roll, mid-commit or between.
    let mut kills = vec![];
    for (k, lo) in [15_000, 55_000].into_iter().enumerate() {
        let at = lo + i64::from(rand::random::<u16>()) % 20_000;
        lake_reaches(&root, &topic, at, &mut lakes).await;
        kills.push(manifest_offsets(&root, &topic).values().sum::<i64>());
        let victim = k % replicas;
        lakes[victim].kill();
        lakes[victim] = start_lake(&d, &root).await;
    }
    producer.await.expect("producer");

    // Done when every partition's manifest reaches the partition's last record: its end less
    // the commit marker of the transaction that wrote it (a consumer never sees the marker).
    for base in [
        "pos.transactions.validated",
        "pos.transactions.rejected",
        "pos.fraud.alerts",
    ] {
        let t = d.topic(base);
        let last: BTreeMap<i32, i64> = ends(&d.stack.brokers, &t)
            .into_iter()
            .filter(|(_, end)| *end > 0)
            .map(|(p, end)| (p, end - 1))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(180);
        while manifest_offsets(&root, &t) != last {
            assert!(
                Instant::now() < deadline,
                "{t}: manifests {:?}, records end at {last:?}:\n{}",
                manifest_offsets(&root, &t),
                lakes[0].log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let like = format!("{run}-%");
    let db = db(&d.stack).await;
    stored_once(&db, &like, VALID).await;
    let lake_view = duckdb(&root);
    println!("lake faults ({replicas} replicas): SIGKILL at {kills:?} committed offsets; DuckDB: {lake_view}");

    let v = &lake_view["validated"];
    assert_eq!(v["rows"], VALID, "{v}");
    assert_eq!(v["distinct_ids"], VALID, "a transaction twice: {v}");
    assert_eq!(v["distinct_positions"], VALID, "a Kafka record twice: {v}");
    assert_eq!(
        v["misdated"], 0,
        "a row outside its event date's directory: {v}"
    );
    let mut postgres = serde_json::Map::new();
    for row in db
        .query(
            "SELECT merchant_id, count(*), sum(amount_minor)::bigint FROM transactions \
             WHERE transaction_id LIKE $1 GROUP BY 1",
            &[&like],
        )
        .await
        .unwrap()
    {
        let (m, n, sum): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        postgres.insert(m, serde_json::json!([n, sum]));
    }
    assert_eq!(postgres.len(), MERCHANTS);
    assert_eq!(
        v["by_merchant"],
        serde_json::Value::Object(postgres),
        "per merchant [rows, sum of amount_minor]: lake (left) against PostgreSQL (right)"
    );

    let r = &lake_view["rejected"];
    let stored_rejections = wait_for_count(
        &db,
        "SELECT count(*) FROM rejections WHERE transaction_id LIKE $1",
        &[&like],
        REJECTED as i64,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r["rows"], stored_rejections, "{r}");
    assert_eq!(r["distinct_ids"], REJECTED, "{r}");
    let a = &lake_view["fraud_alerts"];
    assert_eq!(a["rows"], ALERTS, "{a}");
    assert_eq!(a["distinct_ids"], ALERTS, "{a}");

    // The last replica's metrics: in the catalogue, and every record it consumed either
    // skipped (below the manifest it resumed from) or in a committed file.
    let mut lost = 0.0;
    for lake in &lakes {
        let page = lake.metrics().await;
        crate::observability::assert_matches_catalogue("lake", &page);
        let get = |series: &str| metric(&page, series).unwrap_or(0.0);
        let written: f64 = ["validated", "rejected", "fraud_alerts"]
            .iter()
            .map(|t| get(&format!("posflow_lake_rows_written_total{{table=\"{t}\"}}")))
            .sum();
        // A loser's rows above the winner's offset are written, the rest were skipped: the
        // balance holds only where no commit was lost.
        lost += get("posflow_lake_commits_lost_total");
        if get("posflow_lake_commits_lost_total") == 0.0 {
            assert_eq!(
                get("posflow_lake_received_total"),
                get("posflow_lake_skipped_total") + written,
                "{page}"
            );
        }
    }
    println!("lake replicas {replicas}: {lost} commits lost to another replica");
    if replicas == 1 {
        assert_eq!(lost, 0.0, "one replica lost a commit");
    }
    std::fs::remove_dir_all(&root).unwrap();
}
