//! Storage: exactly once in PostgreSQL through crashes and a database restart; refused rows
//! dead-lettered; resuming from the database's own offsets; the documented queries run.

use posflow_e2e::*;
use posflow_schema::{DeadLetter, Decoder, LineItem, TransactionValidated};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// `sql`'s bigint for this run's `LIKE` pattern; -1 while the database cannot answer (during a
/// restart), so a poll counts it as not yet.
async fn count_like(db: &tokio_postgres::Client, sql: &str, like: &str) -> i64 {
    db.query_one(sql, &[&like])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// Polls the number of stored rows of this run until it reaches `n` (errors count as not yet).
async fn stored_reaches(db: &tokio_postgres::Client, like: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while count_like(
        db,
        "SELECT count(*) FROM transactions WHERE transaction_id LIKE $1",
        like,
    )
    .await
        < n
    {
        assert!(Instant::now() < deadline, "storage did not reach {n} rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_thousand_transactions_stored_once_through_two_storage_kills_and_a_postgres_restart()
{
    let d = Deployment::new().await;
    let _bridge = d.start_bridge(6).await;
    let _validator = d.start("posflow-validator").await;
    let mut storage = d.start("posflow-storage").await;
    let (fleet, planned) = d.fleet_with_invalid("store", 351, 50, 1000, 40);
    assert_eq!(planned.len(), 50_000);
    let run_id = planned[0]
        .transaction_id
        .split('-')
        .next()
        .unwrap()
        .to_string();
    let like = format!("{run_id}-%");
    let valid: HashSet<&str> = planned
        .iter()
        .filter(|p| p.expected_rejection.is_none())
        .map(|p| p.transaction_id.as_str())
        .collect();
    let mut expected_reasons: BTreeMap<String, i64> = BTreeMap::new();
    for p in &planned {
        if let Some(r) = p.expected_rejection {
            *expected_reasons.entry(r.to_string()).or_default() += 1;
        }
    }
    assert_eq!(valid.len(), 48_750);

    // Faults at random points of the stream: storage SIGKILLed, PostgreSQL restarted, storage
    // SIGKILLed again.
    let r = |lo: i64| lo + i64::from(rand::random::<u16>()) % 10_000;
    let (kill1, pg_restart, kill2) = (r(3_000), r(18_000), r(33_000));
    let mut db = db(&d.stack).await;
    stored_reaches(&db, &like, kill1).await;
    storage.kill();
    storage = d.start("posflow-storage").await;
    stored_reaches(&db, &like, pg_restart).await;
    {
        let _outage = Outage::begin("postgres");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    db = posflow_e2e::db(&d.stack).await;
    stored_reaches(&db, &like, kill2).await;
    storage.kill();
    let storage = d.start("posflow-storage").await;

    let report = fleet.finish().await;
    assert!(
        report.unanswered.is_empty(),
        "{} unanswered",
        report.unanswered.len()
    );
    let distinct = stored_once(&db, &like, valid.len()).await;
    let rejections = wait_for_count(
        &db,
        "SELECT count(*) FROM rejections WHERE transaction_id LIKE $1",
        &[&like],
        1_250,
        Duration::from_secs(60),
    )
    .await;
    let line_item_dups = count_like(
        &db,
        "SELECT count(*) - count(DISTINCT (transaction_id, line_no)) FROM transaction_line_items WHERE transaction_id LIKE $1",
        &like,
    )
    .await;
    let mut by_reason: BTreeMap<String, i64> = BTreeMap::new();
    for row in db
        .query(
            "SELECT code, count(*) FROM rejections, unnest(reason_codes) AS code WHERE transaction_id LIKE $1 GROUP BY code",
            &[&like],
        )
        .await
        .unwrap()
    {
        by_reason.insert(row.get(0), row.get(1));
    }
    println!(
        "storage faults: kill at {kill1}, PostgreSQL restart at {pg_restart}, kill at {kill2} rows; \
         {} rows, each once, {rejections} rejections {by_reason:?}; last storage skipped {} and saw {} duplicates",
        distinct.len(),
        metric(&storage.metrics().await, "posflow_storage_skipped_total").unwrap_or(0.0),
        metric(&storage.metrics().await, "posflow_storage_duplicates_total").unwrap_or(0.0),
    );
    let valid: HashSet<String> = valid.into_iter().map(String::from).collect();
    assert_eq!(
        distinct, valid,
        "rows = the distinct valid transaction ids published"
    );
    assert_eq!(line_item_dups, 0, "duplicate line items");
    assert_eq!(rejections, 1_250, "rejected count = invalid count");
    assert_eq!(by_reason, expected_reasons, "rejections per reason");
}

/// A batch is first written as if all its ids were new; a repeated id fails that write on the
/// ledger's key and the batch is written again checking each id (db.rs, `Ledger`). Whichever
/// way each batch goes, every id is stored once with its line items, and the repeats counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_ids_among_new_ones_are_stored_once_and_counted() {
    let d = Deployment::new().await;
    let run = format!("rep{:08x}", rand::random::<u32>());
    let record = |n: i64| {
        let r = received_sale(&format!("{run}-{n:04}"), "T0451", n);
        TransactionValidated {
            envelope: r.envelope,
            transaction: r.transaction,
            validated_at: posflow_schema::now_millis(),
        }
    };
    let one_partition = |_: &TransactionValidated| "card".to_string();
    let storage = d.start("posflow-storage").await;
    let db = db(&d.stack).await;
    let like = format!("{run}-%");

    let first: Vec<TransactionValidated> = (0..300).map(record).collect();
    d.produce("pos.transactions.validated", &first, one_partition)
        .await;
    stored_reaches(&db, &like, 300).await;
    // 100 repeats (ids 200..299, same content) between 100 new ids (300..399), one repeat
    // twice, in one Kafka transaction: they arrive together, every batch with a repeat.
    let mut second = Vec::new();
    for n in 0..100 {
        second.push(first[200 + n].clone());
        second.push(record(300 + n as i64));
    }
    second.push(first[250].clone());
    d.produce_at_once("pos.transactions.validated", &second, one_partition)
        .await;
    stored_reaches(&db, &like, 400).await;
    // New ids only after the repeats.
    let third: Vec<TransactionValidated> = (400..450).map(record).collect();
    d.produce("pos.transactions.validated", &third, one_partition)
        .await;
    stored_reaches(&db, &like, 450).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let counters = loop {
        let page = storage.metrics().await;
        let counter = |name: &str| metric(&page, name).unwrap_or(0.0) as i64;
        let counters = (
            counter("posflow_storage_stored_total"),
            counter("posflow_storage_duplicates_total"),
            counter("posflow_storage_rechecked_batches_total"),
        );
        if counters.0 == 450 && counters.1 == 101 || Instant::now() > deadline {
            break counters;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let line_items: i64 = first
        .iter()
        .chain(second.iter().skip(1).step_by(2)) // the new ids among the repeats
        .chain(&third)
        .map(|v| v.transaction.line_items.len() as i64)
        .sum();
    assert_eq!(
        (counters.0, counters.1),
        (450, 101),
        "stored, duplicates: every id once, every repeat counted"
    );
    assert!(
        counters.2 >= 1,
        "the batch with the first repeat was written again, checked: {counters:?}"
    );
    let distinct = count_like(
        &db,
        "SELECT count(DISTINCT transaction_id) FROM transactions WHERE transaction_id LIKE $1",
        &like,
    )
    .await;
    let rows = count_like(
        &db,
        "SELECT count(*) FROM transactions WHERE transaction_id LIKE $1",
        &like,
    )
    .await;
    let items = count_like(
        &db,
        "SELECT count(*) FROM transaction_line_items WHERE transaction_id LIKE $1",
        &like,
    )
    .await;
    assert_eq!((rows, distinct, items), (450, 450, line_items));
    let dead = metric(
        &storage.metrics().await,
        "posflow_storage_dead_lettered_total{reason=\"DB_REJECTED\"}",
    );
    assert_eq!(dead.unwrap_or(0.0), 0.0, "nothing refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_rows_are_dead_lettered_and_storage_resumes_from_its_own_offsets() {
    let d = Deployment::new().await;
    let run = format!("ref{:08x}", rand::random::<u32>());
    let records: Vec<TransactionValidated> = (0..8)
        .map(|n| {
            let r = received_sale(&format!("{run}-{n}"), "T0450", n);
            let mut v = TransactionValidated {
                envelope: r.envelope,
                transaction: r.transaction,
                validated_at: posflow_schema::now_millis(),
            };
            match n {
                // PostgreSQL text cannot hold NUL (SQLSTATE 22021).
                6 => v.transaction.line_items.push(LineItem {
                    sku: "s".into(),
                    description: "nul\0byte".into(),
                    unit_price_minor: 1234,
                    quantity: 1,
                }),
                // The currency CHECK constraint (SQLSTATE 23514).
                7 => v.transaction.currency = "eur".into(),
                _ => {}
            }
            v
        })
        .collect();
    // One key: one partition, offsets 0..7 in order.
    d.produce("pos.transactions.validated", &records, |_| {
        "card".to_string()
    })
    .await;
    let topic = d.topic("pos.transactions.validated");
    let on_kafka = read_topic(
        &d.stack.brokers,
        &topic,
        8,
        Duration::from_secs(30),
        Duration::ZERO,
    );
    let partition = on_kafka[0].partition;
    assert_eq!(on_kafka.iter().map(|r| r.offset).max(), Some(7));

    // The database says offsets below 3 are stored already; Kafka has no commit for the group.
    // Storage must trust the database.
    let db = db(&d.stack).await;
    let group = d.kafka.group("posflow-storage");
    db.execute(
        "INSERT INTO kafka_offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, 3)",
        &[&group, &topic, &partition],
    )
    .await
    .unwrap();
    let storage = d.start("posflow-storage").await;
    let like = format!("{run}-%");
    let dlq = read_topic(
        &d.stack.brokers,
        &d.topic("pos.deadletter"),
        2,
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    let stored = wait_for_count(
        &db,
        "SELECT count(*) FROM transactions WHERE transaction_id LIKE $1",
        &[&like],
        3,
        Duration::from_secs(30),
    )
    .await;
    let ids: BTreeMap<String, i64> = db
        .query(
            "SELECT transaction_id, kafka_offset FROM transactions WHERE transaction_id LIKE $1",
            &[&like],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored, 3);
    assert_eq!(
        ids.values().copied().collect::<Vec<_>>(),
        vec![3, 4, 5],
        "offsets 0..2 skipped (stored per the database), 6 and 7 refused"
    );
    let decoder = Decoder::<DeadLetter>::new(d.kafka.registry());
    let mut letters = Vec::new();
    for r in &dlq {
        let l = decoder.decode(&r.value).await.unwrap();
        assert_eq!(
            r.headers
                .get(posflow_kafka::headers::REASON)
                .map(String::as_str),
            Some("DB_REJECTED")
        );
        letters.push((
            l.source,
            l.reason,
            l.detail.split(':').next().unwrap_or("").to_string(),
        ));
    }
    letters.sort();
    assert_eq!(
        letters,
        vec![
            (
                format!("{topic}/{partition}/6"),
                "DB_REJECTED".into(),
                "SQLSTATE 22021".into()
            ),
            (
                format!("{topic}/{partition}/7"),
                "DB_REJECTED".into(),
                "SQLSTATE 23514".into()
            ),
        ]
    );
    let next: i64 = db
        .query_one(
            "SELECT next_offset FROM kafka_offsets WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
            &[&group, &topic, &partition],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, 8, "the refused rows' offsets are passed too");
    let m = storage.metrics().await;
    // The first record read (offset 0) is skipped, then a seek jumps past the rest.
    assert!(metric(&m, "posflow_storage_skipped_total").unwrap_or(0.0) >= 1.0);
    assert_eq!(
        metric(
            &m,
            "posflow_storage_dead_lettered_total{reason=\"DB_REJECTED\"}"
        ),
        Some(2.0)
    );
}

/// Every query in docs/storage.md runs against the migrated schema (maintenance blocks that
/// change the schema are skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_queries_run() {
    let d = Deployment::new().await;
    // The group roles the documented logins join: every stage's migrations.
    for binary in ["posflow-notifier", "posflow-api"] {
        d.cli(binary, &["migrate"]).expect_ok();
    }
    let db = db(&d.stack).await;
    // The documented logins, from an earlier run, go first: the blocks create them.
    db.batch_execute("DROP ROLE IF EXISTS storage, notifier, api")
        .await
        .unwrap();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/storage.md"))
        .unwrap();
    let blocks: Vec<&str> = doc
        .split("```sql")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| !b.trim_start().starts_with("BEGIN"))
        .collect();
    assert!(blocks.len() >= 5, "docs/storage.md has its queries");
    for sql in blocks {
        let sql = sql.replace("$1", "'a-token'");
        if let Err(e) = db.batch_execute(&sql).await {
            panic!("documented query fails: {e}\n{sql}");
        }
    }
}

/// An error and its causes, lower case, for matching.
fn causes(e: &dyn std::error::Error) -> String {
    posflow_runtime::logs::causes(e).to_lowercase()
}

/// The local PostgreSQL takes TCP connections over TLS only, and the stages' connections are
/// TLS with the server's certificate verified (verify-full): the tier is not passing in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_reached_over_verified_tls_only() {
    let stack = Stack::from_env();
    assert!(
        stack.database_url.contains("sslmode=verify-full"),
        "the e2e tier connects with verify-full: {}",
        posflow_runtime::config::redact_url(&stack.database_url)
    );
    let db = db(&stack).await;
    let row = db
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "this connection is not encrypted");
    assert!(row.get::<_, String>(1).starts_with("TLSv1."));

    let (base, _) = stack.database_url.split_once('?').unwrap();
    // Without TLS: the server refuses.
    let plain = posflow_pg::connect(&format!("{base}?sslmode=disable"))
        .await
        .expect_err("a plaintext connection was accepted");
    assert!(
        plain.summary().contains("no encryption"),
        "refused for another reason: {plain}"
    );
    // Verified against roots that did not sign the server's certificate (the system's): refused
    // by the client before a password is sent.
    let unverified = posflow_pg::connect(&format!("{base}?sslmode=verify-full"))
        .await
        .expect_err("an unverifiable server was trusted");
    assert!(
        causes(&unverified).contains("invalid peer certificate"),
        "{}",
        causes(&unverified)
    );
    // verify-full checks the name: the certificate is for 127.0.0.1 and localhost, so the same
    // server under another name is refused; verify-ca (chain only) accepts it.
    let ca = stack.database_url.split("sslrootcert=").nth(1).unwrap();
    let other_name = format!(
        "{}&hostaddr=127.0.0.1&sslrootcert={ca}",
        base.replace("@127.0.0.1:", "@db.invalid:") + "?x=1"
    )
    .replace("?x=1&", "?");
    let wrong_name = posflow_pg::connect(&format!("{other_name}&sslmode=verify-full"))
        .await
        .expect_err("a certificate for another name was accepted");
    assert!(
        causes(&wrong_name).contains("not valid for name"),
        "{}",
        causes(&wrong_name)
    );
    posflow_pg::connect(&format!("{other_name}&sslmode=verify-ca"))
        .await
        .unwrap_or_else(|e| panic!("verify-ca under another name: {e}"));
}

/// Least privilege (docs/storage.md): each stage's login reaches its own tables only — storage
/// cannot read the notifier's webhook secrets, the notifier cannot read transactions, and
/// neither can delete history or change the schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_login_reaches_only_its_own_tables() {
    use tokio_postgres::error::SqlState;
    let d = Deployment::new().await.with_own_schema().await;
    let owner = &d.stack.database_url;
    let storage = posflow_pg::connect(&with_login(owner, "posflow_storage_app", "storage-local"))
        .await
        .unwrap();
    let notifier =
        posflow_pg::connect(&with_login(owner, "posflow_notifier_app", "notifier-local"))
            .await
            .unwrap();
    let outcome = |r: Result<u64, tokio_postgres::Error>| match r {
        Ok(_) => "allowed",
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => "denied",
        Err(e) => panic!("neither allowed nor denied: {e:?}"),
    };
    let cases = [
        (&storage, "SELECT count(*) FROM transactions", "allowed"),
        (&storage, "SELECT count(*) FROM kafka_offsets", "allowed"),
        (
            &storage,
            "SELECT webhook_secret FROM merchant_preferences",
            "denied",
        ),
        (
            &storage,
            "SELECT count(*) FROM notification_outbox",
            "denied",
        ),
        (&storage, "DELETE FROM transactions", "denied"),
        (&storage, "CREATE TABLE intruder (a int)", "denied"),
        (
            &notifier,
            "SELECT count(*) FROM merchant_preferences",
            "allowed",
        ),
        (&notifier, "SELECT count(*) FROM transactions", "denied"),
        (&notifier, "SELECT count(*) FROM rejections", "denied"),
        (&notifier, "DROP TABLE digests", "denied"),
    ];
    let got: Vec<(&str, &str)> = {
        let mut got = Vec::new();
        for (client, sql, _) in &cases {
            got.push((*sql, outcome(client.execute(*sql, &[]).await)));
        }
        got
    };
    let want: Vec<(&str, &str)> = cases.iter().map(|(_, sql, o)| (*sql, *o)).collect();
    assert_eq!(got, want);
}
