//! Kafka as a three-node cluster (by hand: `make test-cluster`, which runs a cluster stack beside
//! the default one; docs/local-stack.md). The node that leads the most partitions of the raw
//! topic is SIGKILLed mid-stream and restarted, or hung (SIGSTOP) for 25 s and thawed: every
//! transaction a terminal saw accepted is stored exactly once, with replication 3 and
//! `min.insync.replicas` 2 doing what they promise.

use posflow_e2e::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// What happens to the node leading the most raw partitions.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL; restarted once the pipeline has moved on without it.
    Kill,
    /// SIGSTOP for this long (a hang: connections open, nothing answered), then SIGCONT.
    Hang(Duration),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a three-node Kafka: make test-cluster"]
async fn a_partition_leader_killed_mid_stream_loses_and_doubles_nothing() {
    leader_fault(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a three-node Kafka: make test-cluster"]
async fn a_partition_leader_hung_for_25_seconds_loses_and_doubles_nothing() {
    leader_fault(Fault::Hang(Duration::from_secs(25))).await;
}

/// 20,000 transactions from 50 terminals (one in 40 breaking a rule) through bridge, validator
/// and storage; `fault` on the busiest raw-partition leader at a random point. Then: every
/// transaction answered and accepted, the valid ones stored, each once.
async fn leader_fault(fault: Fault) {
    let nodes: u32 = std::env::var("POSFLOW_LOCAL_KAFKA_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    assert!(
        nodes >= 3,
        "a three-node Kafka is needed: make test-cluster"
    );
    let d = Deployment::new().await;
    let _bridge = d.start_bridge(6).await;
    let _validator = d.start("posflow-validator").await;
    let _storage = d.start("posflow-storage").await;
    let (fleet, planned) = d.fleet_with_invalid("clu", 351, 50, 400, 40);
    let valid: HashSet<&str> = planned
        .iter()
        .filter(|p| p.expected_rejection.is_none())
        .map(|p| p.transaction_id.as_str())
        .collect();
    let like = format!("{}-%", planned[0].transaction_id.split('-').next().unwrap());
    let db = db(&d.stack).await;

    // At a random point between 10% and 60% of the answers.
    let at = 2_000 + u64::from(rand::random::<u16>()) % 10_000;
    fleet.answers_reach(at).await;
    let partitions = partitions(&d.stack.brokers, &d.topic("pos.transactions.raw"));
    for p in &partitions {
        assert_eq!(
            (p.replicas, p.in_sync),
            (3, 3),
            "partition {}: three replicas, all in sync",
            p.id
        );
    }
    let (victim, led) = busiest_leader(&partitions);
    let began = Instant::now();
    let before = count_stored(&db, &like).await;
    let during = match fault {
        Fault::Kill => {
            stack_ctl(&["kill", &victim]);
            // The pipeline goes on on the other two nodes: more rows while the node is down.
            rows_grow(&db, &like, before + 500, &victim).await;
            let moved_on = began.elapsed();
            stack_ctl(&["start", &victim]);
            format!(
                "SIGKILLed; 500 more rows {:.1} s later on the other nodes",
                moved_on.as_secs_f64()
            )
        }
        Fault::Hang(secs) => {
            let hang = Pause::begin(&victim);
            tokio::time::sleep(secs).await; // the fault's length, not a wait for a condition
            let stored_while_hung = count_stored(&db, &like).await - before;
            drop(hang);
            let resumed = Instant::now();
            let now = count_stored(&db, &like).await;
            rows_grow(&db, &like, now + 500, &victim).await;
            format!(
                "hung {} s: {stored_while_hung} rows stored meanwhile; 500 more {:.1} s after SIGCONT",
                secs.as_secs(),
                resumed.elapsed().as_secs_f64()
            )
        }
    };

    let report = fleet.finish_answered().await;
    let accepted = report.accepted_ids();
    assert_eq!(accepted.len(), planned.len(), "every transaction accepted");
    let stored = stored_once(&db, &like, valid.len()).await;
    println!(
        "cluster: {victim} (leader of {led} raw partitions) after {at} answers {during}; \
         {} rows, {} valid",
        stored.len(),
        valid.len()
    );
    let valid: HashSet<String> = valid.into_iter().map(String::from).collect();
    assert_eq!(stored, valid, "rows = the valid transactions published");
}

/// Waits until at least `n` rows are stored under `like` (two minutes at most).
async fn rows_grow(db: &tokio_postgres::Client, like: &str, n: i64, victim: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_stored(db, like).await < n {
        assert!(
            Instant::now() < deadline,
            "no progress after the fault on {victim}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count_stored(db: &tokio_postgres::Client, like: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM transactions WHERE transaction_id LIKE $1",
        &[&like],
    )
    .await
    .map(|r| r.get(0))
    .unwrap_or(-1)
}
