//! Observability against the real stack: one transaction is one trace through every stage, the
//! merchant's webhook included (exported over OTLP to a receiver in this test), log lines carry its trace id, and every
//! service's /metrics holds the catalogue (docs/metrics.md) with counts that agree with what
//! was sent.

use posflow_e2e::*;
use posflow_e2e::{notify, otlp};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_transaction_is_one_trace_through_every_stage() {
    let d = Deployment::new().await.with_own_schema().await;
    let (t, m) = ("T0495", &*merchant_of("T0495"));
    // The merchant takes per-event webhooks: the notifier's delivery is part of the trace too.
    let hooks = notify::Receiver::start().await;
    let url = hooks.merchant(m, "whsec-trace-0123456789abcdef", notify::Behaviour::Accept);
    d.apply_merchants(&format!(
        "[merchants.{m}]\nwebhook_url = \"{url}\"\nwebhook_secret = \"whsec-trace-0123456789abcdef\"\n"
    ));
    let receiver = otlp::Receiver::start().await;
    let traced = ["--otlp-endpoint", receiver.endpoint.as_str()];
    let mut bridge = d.start_bridge_with(6, &traced).await;
    let mut validator = Service::start("posflow-validator", &d.env(), &traced).await;
    let mut fraud = Service::start("posflow-fraud", &d.env(), &traced).await;
    let mut storage = Service::start("posflow-storage", &d.env(), &traced).await;
    let mut notifier = d.start_notifier("trace-0", &traced).await;

    let (client, mut rx) = answered_terminal(&d.stack, t, m).await;
    // The terminal starts the trace, as instrumented firmware does.
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let terminal_span = "00f067aa0ba902b7";
    let bad_trace = format!("{:032x}", rand::random::<u128>() | 1);
    let tx = format!("trace{:08x}", rand::random::<u32>());
    for (payload, trace) in [
        (
            // Recent, or the validator rejects it as too old.
            valid_payload(&tx, t, m).replace(
                "2026-01-01T00:00:00Z",
                &posflow_schema::rfc3339_millis(posflow_schema::now_millis()),
            ),
            &trace_id,
        ),
        // Refused by the bridge: its dead-letter log line must carry this trace's id.
        ("not json {".to_string(), &bad_trace),
    ] {
        let props = PublishProperties {
            user_properties: vec![(
                "traceparent".into(),
                format!("00-{trace}-{terminal_span}-01"),
            )],
            ..Default::default()
        };
        client
            .publish_with_properties(
                posflow_mqtt::tx_topic(m, t),
                QoS::AtLeastOnce,
                false,
                payload.into_bytes(),
                props,
            )
            .await
            .unwrap();
    }
    let got = answers(&mut rx, 2).await;
    assert_eq!(got[0]["status"], "accepted", "{got:?}");
    assert_eq!(got[1]["reason"], "NOT_JSON", "{got:?}");
    let db = db(&d.stack).await;
    let stored = wait_for_count(
        &db,
        "SELECT count(*) FROM transactions WHERE transaction_id = $1",
        &[&tx],
        1,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(stored, 1);
    hooks.wait_delivered(m, 1, Duration::from_secs(30)).await;

    // SIGTERM flushes each exporter's queue; then every span is at the receiver.
    for s in [
        &mut notifier,
        &mut storage,
        &mut fraud,
        &mut validator,
        &mut bridge,
    ] {
        assert!(s.terminate().success(), "{} exit", s.name);
    }
    let expected = [
        ("bridge", "bridge.receive"),
        ("bridge", "bridge.produce"),
        ("validator", "validator.validate"),
        ("fraud", "fraud.evaluate"),
        ("fraud", "fraud.evaluate"),
        ("storage", "storage.store"),
        ("notifier", "notifier.enqueue"),
        ("notifier", "notifier.deliver"),
    ];
    let all = receiver
        .wait_for_trace(Duration::from_secs(20), |s| {
            s.iter().filter(|x| x.trace_id == trace_id).count() >= expected.len()
        })
        .await;
    let spans: Vec<&otlp::Span> = all.iter().filter(|s| s.trace_id == trace_id).collect();
    let mut names: Vec<(&str, &str)> = spans
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    names.sort();
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(names, want, "one trace, one span per step: {spans:#?}");

    // Causal order: each span is the child of the step before it and starts after it.
    let one = |name: &str| *spans.iter().find(|s| s.name == name).unwrap();
    let receive = one("bridge.receive");
    let produce = one("bridge.produce");
    let validate = one("validator.validate");
    let store = one("storage.store");
    let enqueue = one("notifier.enqueue");
    let deliver = one("notifier.deliver");
    assert_eq!(
        receive.parent_span_id, terminal_span,
        "child of the terminal's span"
    );
    for (parent, child) in [
        (receive, produce),
        (produce, validate),
        (validate, store),
        (validate, enqueue),
        (enqueue, deliver),
    ] {
        assert_eq!(
            child.parent_span_id, parent.span_id,
            "{} is the child of {}",
            child.name, parent.name
        );
        assert!(
            child.start_ns >= parent.start_ns,
            "{} starts after {}",
            child.name,
            parent.name
        );
    }
    for s in &spans {
        assert!(s.end_ns >= s.start_ns, "{s:?}");
    }
    // Fraud judges the raw record (child of the bridge) and the validated one (of the validator).
    let mut fraud_parents: Vec<&str> = spans
        .iter()
        .filter(|s| s.name == "fraud.evaluate")
        .map(|s| s.parent_span_id.as_str())
        .collect();
    fraud_parents.sort();
    let mut want_parents = vec![produce.span_id.as_str(), validate.span_id.as_str()];
    want_parents.sort();
    assert_eq!(fraud_parents, want_parents);

    // The refused message: its own trace at the bridge, and a log line naming it.
    let log = bridge.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("dead-lettered") && l.contains(&bad_trace))
        .unwrap_or_else(|| panic!("no dead-letter log line with trace id {bad_trace}:\n{log}"));
    let json: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(json["trace_id"], bad_trace.as_str());
    assert_eq!(json["reason"], "NOT_JSON");
    assert!(all
        .iter()
        .any(|s| s.trace_id == bad_trace && s.name == "bridge.receive"));
}

/// Alerts a fraud replica raised, all rules.
fn alerts_raised(page: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with("posflow_fraud_alerts_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// `posflow_consumer_lag` on a /metrics page: (topic, value) per partition series.
fn lag_series(page: &str) -> Vec<(String, f64)> {
    page.lines()
        .filter(|l| l.starts_with("posflow_consumer_lag{"))
        .map(|l| {
            let topic = l
                .split("topic=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            (
                topic.to_string(),
                l.rsplit(' ').next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// The catalogue's rows: metric name → (type, labels, services), from docs/metrics.md.
fn catalogue() -> BTreeMap<String, (String, BTreeSet<String>, BTreeSet<String>)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
        .expect("docs/metrics.md");
    let mut rows = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `posflow_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let set = |c: &str| -> BTreeSet<String> {
            c.split(',')
                .map(|x| x.trim().trim_matches('`').to_string())
                .filter(|x| !x.is_empty() && x != "—")
                .collect()
        };
        rows.insert(
            cells[1].trim_matches('`').to_string(),
            (cells[2].to_string(), set(cells[3]), set(cells[4])),
        );
    }
    assert!(rows.len() > 30, "catalogue table not found");
    rows
}

/// Every `posflow_*` family on a /metrics page: name → (type, label names).
fn families(page: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for l in page.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            if name.starts_with("posflow_") {
                out.insert(name.to_string(), (kind.to_string(), BTreeSet::new()));
            }
        } else if let Some((series, _)) = l.split_once(' ') {
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| out.contains_key(*b)))
                .unwrap_or(name);
            if let Some((_, set)) = out.get_mut(base) {
                for kv in labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|x| !x.is_empty())
                {
                    let k = kv.split('=').next().unwrap();
                    if k != "le" {
                        set.insert(k.to_string());
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_exposes_the_catalogue_and_the_counts_agree() {
    let d = Deployment::new().await.with_own_schema().await;
    let mut bridge = d.start_bridge(7).await;
    let mut validator = d.start("posflow-validator").await;
    let mut storage = d.start("posflow-storage").await;
    let mut fraud = d.start("posflow-fraud").await;
    let mut notifier = d.start_notifier("metrics-0", &[]).await;

    // 240 transactions, every 8th breaking a business rule, and 3 the bridge refuses.
    let (fleet, plan) = d.fleet_with_invalid("metrics", 410, 6, 40, 8);
    let (t, m) = ("T0496", &*merchant_of("T0496"));
    let (client, mut rx) = answered_terminal(&d.stack, t, m).await;
    for i in 0..3 {
        client
            .publish(
                posflow_mqtt::tx_topic(m, t),
                QoS::AtLeastOnce,
                false,
                format!("not json {i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    assert!(answers(&mut rx, 3)
        .await
        .iter()
        .all(|a| a["reason"] == "NOT_JSON"));
    let report = fleet.finish().await;
    assert_eq!(report.accepted(), 240, "{:?}", report.rejected_by_reason());
    let invalid = plan
        .iter()
        .filter(|p| p.expected_rejection.is_some())
        .count() as f64;
    assert_eq!(invalid, 30.0);
    let valid = 240.0 - invalid;

    // Wait until the last stage has everything, then read every page once.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(&storage.metrics().await, "posflow_storage_received_total") != Some(240.0)
        || metric(
            &notifier.metrics().await,
            "posflow_notifier_events_total{input=\"transaction\"}",
        ) != Some(valid)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "stages did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Lag comes from librdkafka's statistics every 5 s: wait until every consumer stage reports
    // a lag for each of its input topics and none behind (a partition that never had a record
    // and has no commit has no position, so no series).
    let (raw, validated_t, rejected_t, alerts_t) = (
        d.topic("pos.transactions.raw"),
        d.topic("pos.transactions.validated"),
        d.topic("pos.transactions.rejected"),
        d.topic("pos.fraud.alerts"),
    );
    let topics =
        |names: &[&String]| -> BTreeSet<String> { names.iter().map(|t| t.to_string()).collect() };
    // The alerts topic has a position at the notifier only if fraud raised an alert in this run.
    let inputs = |alerts: f64| -> Vec<(&str, BTreeSet<String>)> {
        vec![
            ("validator", topics(&[&raw])),
            ("storage", topics(&[&validated_t, &rejected_t])),
            ("fraud", topics(&[&raw, &validated_t])),
            (
                "notifier",
                if alerts > 0.0 {
                    topics(&[&validated_t, &alerts_t])
                } else {
                    topics(&[&validated_t])
                },
            ),
        ]
    };
    let services = [&validator, &storage, &fraud, &notifier];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Every alert fraud raised has reached the notifier, and no stage is behind.
        let raised = alerts_raised(&fraud.metrics().await);
        let mut settled = raised
            == metric(
                &notifier.metrics().await,
                "posflow_notifier_events_total{input=\"fraud_alert\"}",
            )
            .unwrap_or(0.0);
        for ((_, want), service) in inputs(raised).iter().zip(services) {
            let lags = lag_series(&service.metrics().await);
            let got: BTreeSet<String> = lags.iter().map(|(t, _)| t.clone()).collect();
            settled &= &got == want && lags.iter().all(|(_, v)| *v == 0.0);
        }
        if settled || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pages: Vec<(&str, String)> = vec![
        ("bridge", bridge.metrics().await),
        ("validator", validator.metrics().await),
        ("storage", storage.metrics().await),
        ("fraud", fraud.metrics().await),
        ("notifier", notifier.metrics().await),
    ];
    let get = |stage: &str, series: &str| {
        let page = &pages.iter().find(|(s, _)| *s == stage).unwrap().1;
        metric(page, series).unwrap_or_else(|| panic!("{stage}: no {series}"))
    };

    for (stage, page) in &pages {
        assert_matches_catalogue(stage, page);
    }

    // Counts agree with what was sent, stage to stage.
    let produced = get("bridge", "posflow_bridge_produced_total");
    assert_eq!(get("bridge", "posflow_bridge_received_total"), 243.0);
    assert_eq!(produced, 240.0);
    assert_eq!(
        get(
            "bridge",
            "posflow_bridge_dead_lettered_total{reason=\"NOT_JSON\"}"
        ),
        3.0
    );
    let received = get("validator", "posflow_validator_received_total");
    let (validated, rejected) = (
        get("validator", "posflow_validator_validated_total"),
        get("validator", "posflow_validator_rejected_total"),
    );
    assert_eq!(received, produced, "bridge produced = validator received");
    assert_eq!(
        validated + rejected,
        received,
        "validated + rejected = received"
    );
    assert_eq!((validated, rejected), (valid, invalid));
    assert_eq!(
        get("storage", "posflow_storage_received_total"),
        validated + rejected
    );
    assert_eq!(get("storage", "posflow_storage_stored_total"), validated);
    assert_eq!(
        get("storage", "posflow_storage_rejections_stored_total"),
        rejected
    );
    assert_eq!(
        get("fraud", "posflow_fraud_received_total{input=\"card\"}")
            + get("fraud", "posflow_fraud_received_total{input=\"terminal\"}"),
        validated + produced,
        "fraud judges every validated and every raw record"
    );
    // No merchant has preferences here: every event is ignored, alerts included.
    let (events, alerts) = (
        get(
            "notifier",
            "posflow_notifier_events_total{input=\"transaction\"}",
        ),
        get(
            "notifier",
            "posflow_notifier_events_total{input=\"fraud_alert\"}",
        ),
    );
    assert_eq!(events, validated);
    assert_eq!(
        get(
            "notifier",
            "posflow_notifier_ignored_total{reason=\"no_preferences\"}"
        ),
        events + alerts
    );
    // The shared histograms count what each stage finished.
    assert_eq!(
        get(
            "bridge",
            "posflow_end_to_end_seconds_count{stage=\"bridge\"}"
        ),
        produced
    );
    assert_eq!(
        get(
            "validator",
            "posflow_end_to_end_seconds_count{stage=\"validator\"}"
        ),
        received
    );
    assert_eq!(
        get(
            "validator",
            "posflow_processing_seconds_count{stage=\"validator\"}"
        ),
        received
    );
    assert_eq!(
        get(
            "storage",
            "posflow_end_to_end_seconds_count{stage=\"storage\"}"
        ),
        validated + rejected
    );
    assert_eq!(
        get("storage", "posflow_batch_size_sum{stage=\"storage\"}"),
        validated + rejected
    );
    assert_eq!(
        get("validator", "posflow_batch_size_sum{stage=\"validator\"}"),
        received
    );
    assert_eq!(
        get(
            "notifier",
            "posflow_end_to_end_seconds_count{stage=\"notifier\"}"
        ),
        validated
    );
    // Caught up: no lag on any partition, every input topic covered, at most 4 partitions each.
    let raised = alerts_raised(&pages.iter().find(|(s, _)| *s == "fraud").unwrap().1);
    assert_eq!(
        alerts, raised,
        "every alert fraud raised reached the notifier"
    );
    for (stage, want) in &inputs(raised) {
        let page = &pages.iter().find(|(s, _)| s == stage).unwrap().1;
        let lags = lag_series(page);
        let topics: BTreeSet<String> = lags.iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(&topics, want, "{stage}: lag per input topic");
        assert!(lags.len() <= 4 * want.len(), "{stage}: {lags:?}");
        assert!(lags.iter().all(|(_, v)| *v == 0.0), "{stage}: lag {lags:?}");
    }
    for s in [
        &mut bridge,
        &mut validator,
        &mut storage,
        &mut fraud,
        &mut notifier,
    ] {
        assert!(s.terminate().success(), "{} exit", s.name);
        // 240 card payments went through: none of their numbers may reach a log line.
        let log = s.log_text();
        assert!(log.lines().count() > 3, "{}: a log", s.name);
        assert_eq!(
            luhn_runs(log.as_bytes()),
            Vec::<String>::new(),
            "{}: card-number-like digits in the log",
            s.name
        );
        for line in log.lines() {
            let json: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|_| panic!("{}: not a JSON line: {line}", s.name));
            assert!(
                json["timestamp"].is_string() && json["level"].is_string(),
                "{line}"
            );
        }
    }
}

/// The catalogue, both ways, for one service's /metrics page: what it exposes is documented
/// with its type and labels, and what is documented for it (unlabelled, or labelled only by
/// `stage`) is there.
pub(crate) fn assert_matches_catalogue(stage: &str, page: &str) {
    let rows = catalogue();
    let exposed = families(page);
    for (name, (kind, labels)) in &exposed {
        let Some((doc_kind, doc_labels, services)) = rows.get(name) else {
            panic!("{stage} exposes {name}, which docs/metrics.md does not list");
        };
        assert_eq!(kind, doc_kind, "{name}: type");
        assert!(services.contains(stage), "{name}: {stage} not listed");
        assert!(
            labels.is_subset(doc_labels),
            "{name}: labels {labels:?}, documented {doc_labels:?}"
        );
    }
    for (name, (_, labels, services)) in &rows {
        let exercised = labels.is_empty() || labels.iter().all(|l| l == "stage");
        if services.contains(stage) && exercised {
            assert!(exposed.contains_key(name), "{stage} lacks {name}");
        }
    }
}
