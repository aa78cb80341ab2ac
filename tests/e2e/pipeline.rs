//! One thousand transactions from ten terminals, terminal → MQTT → bridge → Kafka → validator →
//! storage → PostgreSQL, checked field by field at the end.

use posflow_bridge::card::Tokenizer;
use posflow_e2e::*;
use posflow_runtime::Secret;
use posflow_schema::{Decoder, TransactionReceived, TransactionRejected};
use posflow_simulator::{fleet, plan};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_transactions_reach_postgres_exactly_once_and_no_card_number_leaks() {
    let d = Deployment::new().await;
    let bridge = d.start_bridge(5).await;
    let mut validator = d.start("posflow-validator").await;
    let mut storage = d.start("posflow-storage").await;

    let run_id = format!("pipe{:08x}", rand::random::<u32>());
    let cfg = plan::FleetConfig {
        terminals: 10,
        per_terminal: 100,
        merchants: 5,
        invalid_every: 40,
        seed: 42,
        first_terminal: 101,
        run_id: run_id.clone(),
    };
    let fleet_plan = plan::plan(&cfg, posflow_schema::now_millis());
    let planned: Vec<plan::Planned> = fleet_plan.iter().flatten().cloned().collect();
    assert_eq!(planned.len(), 1000);
    let invalid: Vec<&plan::Planned> = planned
        .iter()
        .filter(|p| p.expected_rejection.is_some())
        .collect();
    assert_eq!(invalid.len(), 25);

    let mqtt = d.stack.mqtt_args();
    let opts = fleet::PublishOptions {
        rate_per_terminal: 0.0,
        retry_after: Duration::from_secs(20),
        deadline: Duration::from_secs(120),
        await_answers: true,
    };
    let report = fleet::run(
        &mqtt,
        &Secret::new(&d.stack.terminal_password),
        fleet_plan,
        &opts,
        Arc::default(),
    )
    .await
    .unwrap();
    assert!(
        report.unanswered.is_empty(),
        "{} unanswered, e.g. {:?}; bridge metrics:\n{}",
        report.unanswered.len(),
        &report.unanswered[..report.unanswered.len().min(5)],
        bridge
            .metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("posflow_bridge") && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        report.republished, 0,
        "every transaction answered the first time"
    );
    // Business-rule failures are the validator's to reject: the bridge accepts all 1,000.
    assert_eq!(report.accepted(), 1000, "{:?}", report.rejected_by_reason());

    // PostgreSQL: exactly the valid ones, each once, with what was published.
    let db = db(&d.stack).await;
    let like = format!("{run_id}-%");
    let rows = wait_for_count(
        &db,
        "SELECT count(*) FROM transactions WHERE transaction_id LIKE $1",
        &[&like],
        975,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(rows, 975, "rows in PostgreSQL");
    let distinct: i64 = db
        .query_one(
            "SELECT count(DISTINCT transaction_id) FROM transactions WHERE transaction_id LIKE $1",
            &[&like],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, 975);
    let tokenizer = Tokenizer::new(&Secret::new(CARD_TOKEN_KEY));
    let by_id: HashMap<&str, &plan::Planned> = planned
        .iter()
        .map(|p| (p.transaction_id.as_str(), p))
        .collect();
    let stored = db
        .query("SELECT transaction_id, amount_minor, currency, terminal_id, merchant_id, card_token, card_bin, card_last4, card_token_key_id FROM transactions WHERE transaction_id LIKE $1", &[&like])
        .await
        .unwrap();
    for row in &stored {
        let id: String = row.get(0);
        let p = by_id[id.as_str()];
        assert!(
            p.expected_rejection.is_none(),
            "{id} should have been rejected"
        );
        assert_eq!(row.get::<_, i64>(1), p.amount_minor, "{id} amount");
        assert_eq!(row.get::<_, String>(2), p.currency, "{id} currency");
        assert_eq!(row.get::<_, String>(3), p.terminal_id, "{id} terminal");
        assert_eq!(row.get::<_, String>(4), p.merchant_id, "{id} merchant");
        let card = tokenizer.tokenize(&p.pan).unwrap();
        assert_eq!(
            row.get::<_, Option<String>>(5),
            Some(card.token),
            "{id} token"
        );
        assert_eq!(
            row.get::<_, Option<String>>(6),
            Some(p.pan[..6].to_string())
        );
        assert_eq!(
            row.get::<_, Option<String>>(7),
            Some(p.pan[12..].to_string())
        );
        assert_eq!(
            row.get::<_, Option<String>>(8).as_deref(),
            Some("k1"),
            "{id} key id"
        );
    }

    // The rejected topic: exactly the invalid ones, each with the reason it was built to break.
    let rejected_decoder = Decoder::<TransactionRejected>::new(d.kafka.registry());
    let raw_decoder = Decoder::<TransactionReceived>::new(d.kafka.registry());
    let rejected = read_topic(
        &d.stack.brokers,
        &d.topic("pos.transactions.rejected"),
        25,
        Duration::from_secs(30),
        Duration::from_secs(2),
    );
    assert_eq!(rejected.len(), 25);
    let mut got = BTreeMap::new();
    for r in &rejected {
        assert_eq!(r.value[0], 0, "Confluent wire format");
        let rec = rejected_decoder.decode(&r.value).await.unwrap();
        let p = by_id[rec.transaction.transaction_id.as_str()];
        let codes: Vec<&str> = rec.reasons.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(
            codes,
            vec![p.expected_rejection.unwrap().code()],
            "{}",
            p.transaction_id
        );
        assert_eq!(
            r.headers.get("posflow-reason").map(String::as_str),
            p.expected_rejection.map(|c| c.code())
        );
        assert_eq!(
            r.key.as_deref(),
            Some(p.terminal_id.as_bytes()),
            "rejected keyed by terminal"
        );
        *got.entry(codes[0].to_string()).or_insert(0) += 1;
    }
    let mut want = BTreeMap::new();
    for p in &invalid {
        *want
            .entry(p.expected_rejection.unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(got, want);

    // The raw topic: all 1,000, keyed by terminal, each terminal's in publish order.
    let raw = read_topic(
        &d.stack.brokers,
        &d.topic("pos.transactions.raw"),
        1000,
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    assert_eq!(raw.len(), 1000);
    let mut last_seq: HashMap<(i32, String), i64> = HashMap::new();
    let mut ordered = raw.clone();
    ordered.sort_by_key(|r| (r.partition, r.offset));
    for r in &ordered {
        let rec = raw_decoder.decode(&r.value).await.unwrap();
        assert_eq!(
            r.key.as_deref(),
            Some(rec.transaction.terminal_id.as_bytes())
        );
        assert!(
            r.headers.contains_key(posflow_kafka::headers::TRACEPARENT),
            "traceparent header carried"
        );
        let k = (r.partition, rec.transaction.terminal_id.clone());
        if let Some(prev) = last_seq.insert(k, rec.transaction.sequence) {
            assert!(rec.transaction.sequence > prev, "terminal order kept");
        }
    }

    // No card number anywhere: not in any topic (values, keys, headers), not in PostgreSQL.
    let pans: Vec<&str> = planned.iter().map(|p| p.pan.as_str()).collect();
    let validated = read_topic(
        &d.stack.brokers,
        &d.topic("pos.transactions.validated"),
        975,
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    let dlq = read_topic(
        &d.stack.brokers,
        &d.topic("pos.deadletter"),
        0,
        Duration::from_secs(10),
        Duration::from_secs(1),
    );
    assert_eq!(dlq.len(), 0, "nothing dead-lettered");
    for r in raw.iter().chain(&validated).chain(&rejected) {
        assert_eq!(
            luhn_runs(&r.value),
            Vec::<String>::new(),
            "card-number-like digits in a topic value"
        );
        let all_headers: String = r.headers.values().cloned().collect();
        for pan in &pans {
            assert!(!all_headers.contains(pan), "PAN in a header");
            assert!(
                !r.value.windows(pan.len()).any(|w| w == pan.as_bytes()),
                "PAN in a value"
            );
        }
    }
    let dump = texts(
        &db,
        "SELECT t::text FROM transactions t WHERE transaction_id LIKE $1",
        &like,
    )
    .await;
    for line in &dump {
        assert_eq!(
            luhn_runs(line.as_bytes()),
            Vec::<String>::new(),
            "card-number-like digits in a row: {line}"
        );
        assert!(!pans.iter().any(|p| line.contains(p)));
    }

    // The services agree with what happened, and stop cleanly on SIGTERM.
    let vm = validator.metrics().await;
    assert_eq!(
        metric(&vm, "posflow_validator_received_total"),
        Some(1000.0)
    );
    assert_eq!(
        metric(&vm, "posflow_validator_validated_total"),
        Some(975.0)
    );
    let sm = storage.metrics().await;
    assert_eq!(metric(&sm, "posflow_storage_stored_total"), Some(975.0));
    assert!(
        validator.terminate().success(),
        "validator exit after SIGTERM"
    );
    assert!(storage.terminate().success(), "storage exit after SIGTERM");
}
