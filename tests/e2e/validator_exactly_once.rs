//! The validator in exactly-once mode, scaled out mid-stream (a rebalance moves partitions
//! between live replicas), then one replica SIGKILLed and restarted: read with read_committed,
//! the validated and rejected topics hold each input exactly once.

use posflow_e2e::*;
use posflow_schema::{Decoder, TransactionReceived, TransactionRejected, TransactionValidated};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const INPUTS: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_validator_killed_mid_stream_leaves_each_input_exactly_once() {
    let d = Deployment::kafka_only().await;
    let run = format!("eos{:08x}", rand::random::<u32>());
    // 40 terminals; every 10th transaction has a negative amount.
    let inputs: Vec<TransactionReceived> = (0..INPUTS)
        .map(|n| {
            let terminal = format!("T{:04}", 300 + n % 40);
            let mut r = received_sale(&format!("{run}-{n:06}"), &terminal, (n / 40) as i64);
            if n % 10 == 9 {
                r.transaction.amount_minor = -1;
            }
            r
        })
        .collect();
    let invalid = INPUTS / 10;

    // The same instance id across the restart, as a StatefulSet pod or a restarted process has:
    // the new incarnation fences the old one and aborts its open transaction at once.
    let mut env = d.env();
    env.push(("POSFLOW_INSTANCE_ID".into(), format!("{run}-0")));
    let mut validator = Service::start("posflow-validator", &env, &[]).await;

    // Publish in the background so the kill lands while input is still arriving.
    let producer = {
        let (d, inputs) = (d.clone(), inputs.clone());
        tokio::spawn(async move {
            for chunk in inputs.chunks(2000) {
                d.produce("pos.transactions.raw", chunk, |r| {
                    r.transaction.terminal_id.clone()
                })
                .await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let scale_at = 1500 + rand::random::<u64>() % 1500;
    let kill_at = 3500 + rand::random::<u64>() % 2500;
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(
        &validator.metrics().await,
        "posflow_validator_received_total",
    )
    .unwrap_or(0.0)
        < scale_at as f64
    {
        assert!(Instant::now() < deadline, "validator not progressing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut env_b = d.env();
    env_b.push(("POSFLOW_INSTANCE_ID".into(), format!("{run}-1")));
    let _second = Service::start("posflow-validator", &env_b, &[]).await;
    let received_at_kill = loop {
        let n = metric(
            &validator.metrics().await,
            "posflow_validator_received_total",
        )
        .unwrap_or(0.0);
        if n as u64 >= kill_at {
            validator.kill();
            break n as u64;
        }
        assert!(Instant::now() < deadline, "validator stuck at {n} received");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        (received_at_kill as usize) < INPUTS,
        "the kill must land mid-stream"
    );
    let _restarted = Service::start("posflow-validator", &env, &[]).await;
    producer.await.unwrap();

    let validated = read_topic(
        &d.stack.brokers,
        &d.topic("pos.transactions.validated"),
        INPUTS - invalid,
        Duration::from_secs(120),
        Duration::from_secs(5),
    );
    let rejected = read_topic(
        &d.stack.brokers,
        &d.topic("pos.transactions.rejected"),
        invalid,
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    let vdec = Decoder::<TransactionValidated>::new(d.kafka.registry());
    for r in &validated {
        let v = vdec.decode(&r.value).await.unwrap();
        assert_eq!(
            r.key.as_deref(),
            Some(v.transaction.card.as_ref().unwrap().token.as_bytes()),
            "validated is keyed by card token"
        );
        *seen.entry(v.transaction.transaction_id).or_default() += 1;
    }
    let rdec = Decoder::<TransactionRejected>::new(d.kafka.registry());
    for r in &rejected {
        let v = rdec.decode(&r.value).await.unwrap();
        assert_eq!(v.reasons.len(), 1);
        assert_eq!(v.reasons[0].code, "AMOUNT_NOT_POSITIVE");
        *seen.entry(v.transaction.transaction_id).or_default() += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(repeated.is_empty(), "outputs repeated: {repeated:?}");
    assert_eq!(validated.len(), INPUTS - invalid, "validated count");
    assert_eq!(rejected.len(), invalid, "rejected count");
    for r in &inputs {
        assert!(
            seen.contains_key(&r.transaction.transaction_id),
            "{} lost",
            r.transaction.transaction_id
        );
    }
    println!(
        "killed after {received_at_kill} received; {} validated + {} rejected, each once",
        validated.len(),
        rejected.len()
    );
}

/// A gap in a terminal's sequence numbers is reported (metrics and a log event), and the
/// transactions are still validated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_gaps_are_reported_not_rejected() {
    let d = Deployment::kafka_only().await;
    let run = format!("gap{:08x}", rand::random::<u32>());
    // T0390 sends 1, 2, then 5 (3 and 4 missing), 6, then 4 again late.
    let inputs: Vec<TransactionReceived> = [1, 2, 5, 6, 4]
        .iter()
        .map(|&seq| received_sale(&format!("{run}-{seq}"), "T0390", seq))
        .collect();
    d.produce("pos.transactions.raw", &inputs, |r| {
        r.transaction.terminal_id.clone()
    })
    .await;
    let validator = Service::start("posflow-validator", &d.env(), &[]).await;
    read_topic(
        &d.stack.brokers,
        &d.topic("pos.transactions.validated"),
        5,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    let m = validator.metrics().await;
    assert_eq!(
        metric(&m, "posflow_validator_sequence_gaps_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "posflow_validator_sequence_missing_total"),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "posflow_validator_sequence_behind_total"),
        Some(1.0)
    );
    assert_eq!(metric(&m, "posflow_validator_validated_total"), Some(5.0));
    assert_eq!(metric(&m, "posflow_validator_terminals_tracked"), Some(1.0));
    let log = validator.log_text();
    let gap = log
        .lines()
        .find(|l| l.contains("\"event\":\"sequence_gap\""))
        .unwrap_or_else(|| panic!("no sequence_gap event in:\n{log}"));
    assert!(
        gap.contains("\"terminal_id\":\"T0390\"")
            && gap.contains("\"expected\":3")
            && gap.contains("\"got\":5"),
        "{gap}"
    );
}
