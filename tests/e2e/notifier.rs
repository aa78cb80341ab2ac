//! The notifier against a real HTTPS receiver that verifies every signature, the real SMTP
//! server, Kafka and PostgreSQL.

use posflow_e2e::notify::{
    mails_to, outcomes, validated, verify_signature, wait_for_mail, Behaviour, Receiver,
};
use posflow_e2e::{db, rss_kib, Deployment};
use posflow_schema::{
    DeadLetter, DeliveryStatus, FraudAlert, NotificationOutcome, Severity, TransactionType,
    TransactionValidated,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

const VALIDATED: &str = "pos.transactions.validated";

fn secret(merchant: &str) -> String {
    format!("whsec-{merchant}-0123456789abcdef")
}

fn webhook_merchant(id: &str, url: &str, extra: &str) -> String {
    format!(
        "[merchants.{id}]\nwebhook_url = \"{url}\"\nwebhook_secret = \"{}\"\n{extra}\n",
        secret(id)
    )
}

fn by_key(outcomes: &[NotificationOutcome]) -> BTreeMap<String, Vec<&NotificationOutcome>> {
    let mut m: BTreeMap<String, Vec<&NotificationOutcome>> = BTreeMap::new();
    for o in outcomes {
        m.entry(o.idempotency_key.clone()).or_default().push(o);
    }
    for v in m.values_mut() {
        v.sort_by_key(|o| o.attempts);
    }
    m
}

async fn dead_letters(d: &Deployment, expected: usize) -> Vec<DeadLetter> {
    d.read_avro(
        "pos.deadletter",
        expected,
        Duration::from_secs(90),
        Duration::from_secs(2),
    )
    .await
}

/// Signed deliveries to a healthy merchant; 500, 500, 500, 200 → delivered once with attempts
/// 4; a merchant that never answers → dead-lettered after the policy while the healthy one's
/// deliveries go through at once; a 400 → dead-lettered without retry; a fraud alert jumps a
/// backlog and reaches the risk contact by email.
#[tokio::test]
async fn webhooks_are_signed_retried_dead_lettered_and_alerts_go_first() {
    let d = Deployment::new().await.with_own_schema().await;
    let rx = Receiver::start().await;
    let risk = format!("risk-{}@example.com", d.prefix.trim_end_matches('.'));
    let prefs = [
        webhook_merchant(
            "OK",
            &rx.merchant("OK", &secret("OK"), Behaviour::Accept),
            "",
        ),
        webhook_merchant(
            "FLAKY",
            &rx.merchant("FLAKY", &secret("FLAKY"), Behaviour::FailFirst(3)),
            "",
        ),
        webhook_merchant(
            "DEAD",
            &rx.merchant("DEAD", &secret("DEAD"), Behaviour::Hang),
            "",
        ),
        webhook_merchant(
            "REFUSE",
            &rx.merchant("REFUSE", &secret("REFUSE"), Behaviour::Status(400)),
            "",
        ),
        webhook_merchant(
            "PRIO",
            &rx.merchant(
                "PRIO",
                &secret("PRIO"),
                Behaviour::Slow(Duration::from_millis(100)),
            ),
            &format!("risk_emails = [\"{risk}\"]"),
        ),
    ]
    .concat();
    d.apply_merchants(&prefs);
    // The preferences as stored, secrets masked.
    let listed = d
        .cli("posflow-notifier", &["merchants", "list"])
        .expect_ok()
        .stdout
        .clone();
    assert_eq!(listed.lines().count(), 5, "{listed}");
    assert!(listed.contains("PRIO\tper-event\tjson\tevents=transactions,refunds,fraud-alerts\twebhook=https://127.0.0.1:"), "{listed}");
    assert!(
        listed.contains("(secret ****)") && !listed.contains(&secret("OK")),
        "{listed}"
    );
    // At rest the signing secrets are sealed (AES-256-GCM under the test KEK): no secret in
    // the table, each row's value its own.
    let sealed = db(&d.stack)
        .await
        .query(
            "SELECT merchant_id, webhook_secret FROM merchant_preferences WHERE webhook_secret IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(sealed.len(), 5, "every merchant here has a webhook");
    for r in &sealed {
        let (m, stored): (String, String) = (r.get(0), r.get(1));
        assert!(stored.starts_with("v1:e2e:"), "{m}: {stored}");
        assert!(
            !stored.contains(&secret(&m)),
            "{m}'s secret is in the clear"
        );
    }
    let timeout_ms = 2000;
    let _notifier = d
        .start_notifier(
            "n1",
            &[
                "--delivery-timeout-ms",
                &timeout_ms.to_string(),
                "--retry-base-ms",
                "200",
                "--retry-max-delay-secs",
                "1",
                "--max-attempts",
                "4",
                "--breaker-threshold",
                "5",
                "--breaker-cooldown-secs",
                "1",
                "--merchant-rate",
                "1000",
                "--lease-secs",
                "30",
            ],
        )
        .await;

    // The dead merchant's events first, so the healthy one's queue up behind them.
    let dead: Vec<TransactionValidated> = (0..3)
        .map(|i| {
            validated(
                &format!("dead-{i}"),
                "DEAD",
                TransactionType::Sale,
                500,
                "EUR",
            )
        })
        .collect();
    d.produce(VALIDATED, &dead, |v| v.transaction.transaction_id.clone())
        .await;
    let ok: Vec<TransactionValidated> = (0..100)
        .map(|i| {
            let kind = if i % 10 == 9 {
                TransactionType::Refund
            } else {
                TransactionType::Sale
            };
            validated(&format!("ok-{i}"), "OK", kind, 100 + i, "EUR")
        })
        .collect();
    let others = [
        validated("flaky-0", "FLAKY", TransactionType::Sale, 700, "EUR"),
        validated("refuse-0", "REFUSE", TransactionType::Sale, 800, "EUR"),
    ];
    d.produce(VALIDATED, &ok, |v| v.transaction.transaction_id.clone())
        .await;
    d.produce(VALIDATED, &others, |v| v.transaction.transaction_id.clone())
        .await;
    let prio: Vec<TransactionValidated> = (0..300)
        .map(|i| {
            validated(
                &format!("prio-{i}"),
                "PRIO",
                TransactionType::Sale,
                100,
                "EUR",
            )
        })
        .collect();
    d.produce(VALIDATED, &prio, |v| v.transaction.transaction_id.clone())
        .await;
    let alert = FraudAlert {
        alert_id: "alert-0001".into(),
        rule_id: "CARD_TESTING".into(),
        severity: Severity::High,
        score: 0.93,
        evidence_transaction_ids: vec!["prio-1".into(), "prio-2".into()],
        card_token: Some("tok".into()),
        merchant_id: "PRIO".into(),
        terminal_id: "PRIO-T1".into(),
        detected_at: posflow_schema::now_millis(),
    };
    d.produce("pos.fraud.alerts", &[alert], |a| a.alert_id.clone())
        .await;

    rx.wait_delivered("OK", 100, Duration::from_secs(60)).await;
    rx.wait_delivered("FLAKY", 1, Duration::from_secs(60)).await;
    rx.wait_delivered("PRIO", 301, Duration::from_secs(120))
        .await;

    // Every request carried a valid signature (the receiver answers 401 otherwise), and the
    // receiver's check does refuse a wrong secret.
    let all = rx.received();
    let bad: Vec<_> = all.iter().filter(|r| !r.signature_ok).collect();
    assert!(
        bad.is_empty(),
        "{} requests with a bad signature: {:?}",
        bad.len(),
        bad.first()
    );
    // A real request's signature: valid under its secret, not under another, not on another body.
    let sample = rx.received_by("OK").remove(0);
    let now = SystemTime::now();
    assert!(verify_signature(
        secret("OK").as_bytes(),
        &sample.signature,
        &sample.body,
        now
    ));
    assert!(!verify_signature(
        secret("FLAKY").as_bytes(),
        &sample.signature,
        &sample.body,
        now
    ));
    let mut tampered = sample.body.clone();
    tampered.push(b' ');
    assert!(!verify_signature(
        secret("OK").as_bytes(),
        &sample.signature,
        &tampered,
        now
    ));

    // Healthy: 100 distinct keys, each delivered once, 90 transactions and 10 refunds.
    let ok_rx = rx.received_by("OK");
    assert_eq!(ok_rx.len(), 100, "requests to OK");
    assert_eq!(rx.delivered_keys("OK").len(), 100);
    let kinds = ok_rx
        .iter()
        .fold(HashMap::<String, usize>::new(), |mut m, r| {
            *m.entry(r.event_type.clone()).or_default() += 1;
            m
        });
    assert_eq!(
        kinds,
        HashMap::from([("transaction".into(), 90), ("refund".into(), 10)])
    );
    let body: serde_json::Value = serde_json::from_slice(&ok_rx[0].body).unwrap();
    assert_eq!(body["idempotency_key"], ok_rx[0].idempotency_key.as_str());
    assert_eq!(body["transaction"]["card_last4"], "1111");
    assert!(
        body["transaction"].get("card_token").is_none(),
        "no token to merchants"
    );

    // Flaky: 500, 500, 500, 200 on one key, attempts numbered 1-4.
    let flaky = rx.received_by("FLAKY");
    assert_eq!(
        flaky.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    assert_eq!(
        flaky.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(
        flaky
            .iter()
            .map(|r| &r.idempotency_key)
            .collect::<HashSet<_>>()
            .len(),
        1
    );

    // Refused: one request, no retry.
    assert_eq!(rx.received_by("REFUSE").len(), 1);

    // Priority: the alert overtook the backlog of 300 slow deliveries.
    let prio_rx = rx.received_by("PRIO");
    let position = prio_rx
        .iter()
        .position(|r| r.event_type == "fraud_alert")
        .expect("alert delivered");
    println!(
        "fraud alert delivered as PRIO's request {} of {}",
        position + 1,
        prio_rx.len()
    );
    assert!(
        position < 100,
        "the alert waited behind {position} ordinary deliveries"
    );
    let mail = wait_for_mail(&risk, Duration::from_secs(30), |m| !m.is_empty()).await;
    assert_eq!(mail.len(), 1);
    assert!(
        mail[0].headers["subject"].starts_with("Fraud alert CARD_TESTING: HIGH at PRIO-T1"),
        "{:?}",
        mail[0].headers
    );
    assert!(mail[0].text.contains("prio-1, prio-2"), "{}", mail[0].text);

    // Outcomes: OK 100 + FLAKY 4 + DEAD 3 x 4 + REFUSE 1 + PRIO 301 webhooks + 1 alert email.
    let out = outcomes(&d, 419, Duration::from_secs(120), Duration::from_secs(3)).await;
    assert_eq!(out.len(), 419, "outcomes");
    let of = |m: &str| {
        out.iter()
            .filter(|o| o.merchant_id == m)
            .cloned()
            .collect::<Vec<_>>()
    };
    let ok_out = of("OK");
    assert!(ok_out
        .iter()
        .all(|o| o.status == DeliveryStatus::Delivered && o.attempts == 1));
    let ok_keys: HashSet<String> = ok_out.iter().map(|o| o.idempotency_key.clone()).collect();
    assert_eq!(ok_keys, rx.delivered_keys("OK"));
    // Not delayed by DEAD, whose attempts each hang for the whole timeout.
    let slowest = ok_out.iter().map(|o| o.latency_ms).max().unwrap();
    println!(
        "OK's slowest delivery: {slowest} ms (DEAD's attempts time out after {timeout_ms} ms)"
    );
    assert!(slowest < timeout_ms, "OK's deliveries waited {slowest} ms");

    let flaky_out = of("FLAKY");
    let statuses: Vec<(DeliveryStatus, i32)> =
        flaky_out.iter().map(|o| (o.status, o.attempts)).collect();
    assert_eq!(
        statuses,
        [
            (DeliveryStatus::Retrying, 1),
            (DeliveryStatus::Retrying, 2),
            (DeliveryStatus::Retrying, 3),
            (DeliveryStatus::Delivered, 4)
        ]
    );

    let dead_out = of("DEAD");
    for (key, attempts) in by_key(&dead_out) {
        let s: Vec<(DeliveryStatus, i32)> =
            attempts.iter().map(|o| (o.status, o.attempts)).collect();
        assert_eq!(
            s,
            [
                (DeliveryStatus::Retrying, 1),
                (DeliveryStatus::Retrying, 2),
                (DeliveryStatus::Retrying, 3),
                (DeliveryStatus::Failed, 4)
            ],
            "{key}"
        );
        assert!(
            attempts[3].error.as_deref().unwrap().contains("timed out"),
            "{:?}",
            attempts[3].error
        );
    }
    assert_eq!(by_key(&dead_out).len(), 3);
    let refuse_out = of("REFUSE");
    assert_eq!(refuse_out.len(), 1);
    assert_eq!(
        (refuse_out[0].status, refuse_out[0].attempts),
        (DeliveryStatus::Failed, 1)
    );
    assert_eq!(refuse_out[0].error.as_deref(), Some("HTTP 400"));

    // Dead letters: DEAD's three exhausted, REFUSE's one refused, nothing else.
    let letters = dead_letters(&d, 4).await;
    let mut reasons: Vec<(String, String)> = letters
        .iter()
        .map(|l| {
            (
                l.reason.clone(),
                String::from_utf8_lossy(&l.payload).into_owned(),
            )
        })
        .map(|(r, p)| {
            (
                r,
                serde_json::from_str::<serde_json::Value>(&p).unwrap()["transaction"]
                    ["transaction_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("WEBHOOK_EXHAUSTED".into(), "dead-0".into()),
            ("WEBHOOK_EXHAUSTED".into(), "dead-1".into()),
            ("WEBHOOK_EXHAUSTED".into(), "dead-2".into()),
            ("WEBHOOK_REFUSED".into(), "refuse-0".into()),
        ]
    );
}

/// SIGKILL with thousands of deliveries pending: after a restart every event is delivered, every
/// repeat carries the same idempotency key and body, and the de-duplicated count is the event count.
#[tokio::test]
async fn a_killed_notifier_delivers_everything_at_least_once_under_the_same_keys() {
    const MERCHANTS: usize = 5;
    const PER_MERCHANT: usize = 1_600;
    let d = Deployment::new().await.with_own_schema().await;
    let rx = Receiver::start().await;
    let prefs: String = (0..MERCHANTS)
        .map(|m| {
            let id = format!("K{m}");
            webhook_merchant(&id, &rx.merchant(&id, &secret(&id), Behaviour::Accept), "")
        })
        .collect();
    d.apply_merchants(&prefs);
    // 60 deliveries a second per merchant: 27 s of work. The kill comes as soon as 5,000 are
    // pending in the outbox, most likely while ingest is still inserting the rest.
    let flags = ["--merchant-rate", "60", "--lease-secs", "60"];
    let mut notifier = d.start_notifier("k1", &flags).await;
    let events: Vec<TransactionValidated> = (0..MERCHANTS * PER_MERCHANT)
        .map(|i| {
            validated(
                &format!("k-{i}"),
                &format!("K{}", i % MERCHANTS),
                TransactionType::Sale,
                100 + i as i64,
                "EUR",
            )
        })
        .collect();
    d.produce(VALIDATED, &events, |v| v.transaction.transaction_id.clone())
        .await;
    let client = db(&d.stack).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (at_kill_pending, at_kill_total) = loop {
        let row = client
            .query_one("SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FROM notification_outbox", &[])
            .await
            .unwrap();
        let (p, t): (i64, i64) = (row.get(0), row.get(1));
        if p >= 5_000 {
            break (p, t);
        }
        assert!(
            Instant::now() < deadline && (t as usize) < events.len(),
            "never 5,000 pending: {p} pending of {t} enqueued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    notifier.kill();
    let delivered_at_kill = rx.received().len();
    println!("SIGKILL with {at_kill_pending} of {at_kill_total} deliveries pending ({delivered_at_kill} requests received)");
    let _notifier = d.start_notifier("k1", &flags).await;
    for m in 0..MERCHANTS {
        rx.wait_delivered(&format!("K{m}"), PER_MERCHANT, Duration::from_secs(120))
            .await;
    }
    let received = rx.received();
    let mut bodies: HashMap<String, Vec<u8>> = HashMap::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    for r in &received {
        assert!(r.signature_ok);
        let first = bodies
            .entry(r.idempotency_key.clone())
            .or_insert_with(|| r.body.clone());
        assert_eq!(
            first, &r.body,
            "a repeat of {} with another body",
            r.idempotency_key
        );
        let id = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["transaction"]
            ["transaction_id"]
            .as_str()
            .unwrap()
            .to_string();
        let key = ids
            .entry(id.clone())
            .or_insert_with(|| r.idempotency_key.clone());
        assert_eq!(key, &r.idempotency_key, "{id} delivered under two keys");
    }
    let want: HashSet<String> = events
        .iter()
        .map(|v| v.transaction.transaction_id.clone())
        .collect();
    assert_eq!(ids.keys().cloned().collect::<HashSet<_>>(), want);
    assert_eq!(bodies.len(), events.len(), "de-duplicated deliveries");
    println!(
        "{} requests for {} events: {} repeats after the kill",
        received.len(),
        events.len(),
        received.len() - events.len()
    );
    let done: i64 = client
        .query_one(
            "SELECT count(*) FROM notification_outbox WHERE status = 'delivered'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(done as usize, events.len());
}

/// Digest mode: each transaction in exactly one digest, every period sent once even with two
/// replicas, and the CSV attachments' totals equal the database's.
#[tokio::test]
async fn digest_csv_totals_equal_the_database() {
    let d = Deployment::new().await.with_own_schema().await;
    let to = format!("owner-{}@example.com", d.prefix.trim_end_matches('.'));
    d.apply_merchants(&format!(
        "[merchants.DIG]\nmode = \"digest\"\ndigest_every = \"10s\"\nformat = \"csv\"\nevents = [\"transactions\", \"refunds\"]\nemails = [\"{to}\"]\n"
    ));
    let _storage = d.start("posflow-storage").await;
    let flags = ["--digest-grace-secs", "2"];
    let _n1 = d.start_notifier("d1", &flags).await;
    let _n2 = d.start_notifier("d2", &flags).await;
    // Three waves over ~12 s, so the transactions span more than one period.
    let mut all = Vec::new();
    for wave in 0..3 {
        let batch: Vec<TransactionValidated> = (0..100)
            .map(|i| {
                let n = wave * 100 + i;
                let (kind, currency) = match n % 10 {
                    0 => (TransactionType::Refund, "EUR"),
                    1 | 2 => (TransactionType::Sale, "JPY"),
                    3 => (TransactionType::Void, "EUR"),
                    _ => (TransactionType::Sale, "EUR"),
                };
                validated(
                    &format!("dig-{n}"),
                    "DIG",
                    kind,
                    50 + 7 * n as i64,
                    currency,
                )
            })
            .collect();
        d.produce(VALIDATED, &batch, |v| v.transaction.transaction_id.clone())
            .await;
        all.extend(batch);
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    let client = db(&d.stack).await;
    let stored = posflow_e2e::wait_for_count(
        &client,
        "SELECT count(*) FROM transactions WHERE merchant_id = 'DIG'",
        &[],
        all.len() as i64,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(stored as usize, all.len());
    let mails = wait_for_mail(&to, Duration::from_secs(90), |mails| {
        let rows: usize = mails
            .iter()
            .flat_map(|m| &m.attachments)
            .map(|(_, csv)| csv.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() - 1)
            .sum();
        rows >= 300
    })
    .await;
    // One email per closed period, whichever replica closed it.
    let periods: i64 = client
        .query_one(
            "SELECT count(*) FROM digests WHERE merchant_id = 'DIG'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(periods >= 2, "{periods} periods");
    assert_eq!(
        mails.len() as i64,
        periods,
        "digest emails vs periods closed"
    );
    let ids: HashSet<&String> = mails.iter().map(|m| &m.headers["message-id"]).collect();
    assert_eq!(ids.len(), mails.len(), "a digest sent twice");

    let mut seen = HashSet::new();
    let mut csv_totals: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for m in &mails {
        assert_eq!(m.attachments.len(), 1);
        let (name, csv) = &m.attachments[0];
        assert!(
            name.starts_with("posflow-digest-DIG-") && name.ends_with(".csv"),
            "{name}"
        );
        let text = String::from_utf8(csv.clone()).unwrap();
        let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
        let (id_c, type_c, amount_c, cur_c) = (
            col("transaction_id"),
            col("type"),
            col("amount_minor"),
            col("currency"),
        );
        let mut mail_totals: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            assert!(
                seen.insert(f[id_c].to_string()),
                "{} in two digests",
                f[id_c]
            );
            for totals in [&mut csv_totals, &mut mail_totals] {
                let e = totals
                    .entry((f[cur_c].into(), f[type_c].into()))
                    .or_default();
                e.0 += 1;
                e.1 += f[amount_c].parse::<i64>().unwrap();
            }
        }
        // The email's text states the attachment's totals.
        for ((currency, kind), (count, _)) in &mail_totals {
            let line = format!("{currency} {kind:<18} {count:>6} x");
            assert!(m.text.contains(&line), "{line:?} not in {}", m.text);
        }
    }
    assert_eq!(seen.len(), all.len(), "transactions across digests");
    let db_totals: BTreeMap<(String, String), (i64, i64)> = client
        .query(
            "SELECT currency, type, count(*), sum(amount_minor)::int8 FROM transactions WHERE merchant_id = 'DIG' GROUP BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect();
    println!("digest: {} emails, totals {csv_totals:?}", mails.len());
    assert_eq!(csv_totals, db_totals);
    assert_eq!(mails_to(&to).len(), mails.len(), "no further digest");
}

/// An endpoint that answers with a 100 MiB body: the notifier reads at most 64 KiB of it, drops
/// the connection and counts the attempt as failed — its memory does not follow the body.
#[tokio::test]
async fn a_huge_response_body_fails_the_attempt_without_costing_memory() {
    const HUGE: usize = 100 * 1024 * 1024;
    let d = Deployment::new().await.with_own_schema().await;
    let rx = Receiver::start().await;
    d.apply_merchants(&webhook_merchant(
        "HUGE",
        &rx.merchant("HUGE", &secret("HUGE"), Behaviour::HugeBody(HUGE)),
        "",
    ));
    let notifier = d
        .start_notifier(
            "h1",
            &[
                "--retry-base-ms",
                "200",
                "--retry-max-delay-secs",
                "1",
                "--max-attempts",
                "3",
            ],
        )
        .await;
    let pid = notifier.child.id();
    let before = rss_kib(pid);
    let events = [validated(
        "huge-0",
        "HUGE",
        TransactionType::Sale,
        100,
        "EUR",
    )];
    d.produce(VALIDATED, &events, |v| v.transaction.transaction_id.clone())
        .await;
    let mut peak = before;
    let started = Instant::now();
    while rx.received_by("HUGE").len() < 3 {
        peak = peak.max(rss_kib(pid));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "three attempts within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An outcome per attempt: retrying, retrying, failed.
    let out = outcomes(&d, 3, Duration::from_secs(30), Duration::from_secs(1)).await;
    peak = peak.max(rss_kib(pid));
    let failed: Vec<_> = out
        .iter()
        .filter(|o| o.status == DeliveryStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{out:?}");
    assert_eq!(failed[0].attempts, 3);
    let error = failed[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("response body over 65536 bytes"), "{error}");
    assert_eq!(
        rx.received_by("HUGE").len(),
        3,
        "three attempts, each answered with 100 MiB"
    );
    let grown_mib = peak.saturating_sub(before) / 1024;
    println!(
        "huge body: notifier RSS {} -> peak {} MiB",
        before / 1024,
        peak / 1024
    );
    assert!(grown_mib < 8, "the notifier's RSS grew by {grown_mib} MiB");
}

/// A notifier whose input topic is deleted under it does not sit there ready and idle: the
/// ingest task fails, and with it the whole process, non-zero, within seconds (its tasks are
/// supervised together: docs/notifier.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_whose_input_topic_vanishes_exits_non_zero() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let d = Deployment::kafka_only().await.with_own_schema().await;
    let mut notifier = d.start_notifier("vanish-0", &[]).await;
    let admin: AdminClient<DefaultClientContext> =
        d.kafka.client_config().create().expect("admin client");
    let deleted = admin
        .delete_topics(&[&d.topic(VALIDATED)], &AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted.iter().all(|r| r.is_ok()), "{deleted:?}");
    let since = std::time::Instant::now();
    let status = loop {
        if let Some(status) = notifier.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "still running 30 s after its input topic was deleted:\n{}",
            notifier.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.code(), Some(1), "{}", notifier.log_text());
    let log = notifier.log_text();
    assert!(log.contains("ingest"), "the failed task is named:\n{log}");
    eprintln!("exited {:?} after the deletion", since.elapsed());
}
