//! What analysts rely on, against the real registry and Kafka: the schema gate (docs/schemas.md)
//! passes the committed schemas and refuses an incompatible change in the registry's own words; a
//! schema evolved the allowed way is read across versions in both directions; `posflow-admin
//! tail` prints a topic's committed records decoded, filtered and from a chosen position.

use apache_avro::types::Value;
use apache_avro::Schema;
use posflow_e2e::notify::{validated, CliRun};
use posflow_e2e::*;
use posflow_schema::gate::COMPATIBILITY;
use posflow_schema::{TransactionType, TransactionValidated, ValueSchema};
use std::path::{Path, PathBuf};

fn repo(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir)
}

/// `posflow-admin schema-check` over a copy of `schemas/` changed by `edit`.
fn check_with(d: &Deployment, edit: impl FnOnce(&Path)) -> CliRun {
    let scratch =
        std::env::temp_dir().join(format!("posflow-e2e-schemas-{}", rand::random::<u32>()));
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .args([repo("schemas"), scratch.clone()])
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::remove_dir_all(scratch.join("history")).unwrap();
    edit(&scratch);
    let run = d.cli(
        "posflow-admin",
        &[
            "schema-check",
            "--schemas",
            scratch.to_str().unwrap(),
            "--history",
            repo("schemas/history").to_str().unwrap(),
        ],
    );
    std::fs::remove_dir_all(&scratch).unwrap();
    run
}

/// Rewrites one field of a top-level schema file.
fn edit_field(
    dir: &Path,
    file: &str,
    field: &str,
    change: impl FnOnce(&mut Vec<serde_json::Value>, usize),
) {
    let path = dir.join(file);
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let fields = doc["fields"].as_array_mut().unwrap();
    let at = fields.iter().position(|f| f["name"] == field).unwrap();
    change(fields, at);
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_passes_the_committed_schemas_and_refuses_incompatible_changes() {
    let d = Deployment::new().await;
    let passed = check_with(&d, |_| {});
    passed.expect_ok();
    for schema in <ValueSchema as posflow_schema::strum::IntoEnumIterator>::iter() {
        assert!(
            passed
                .stdout
                .lines()
                .any(|l| l.starts_with(schema.stem()) && l.ends_with(": compatible")),
            "{}: {}",
            schema.stem(),
            passed.stdout
        );
    }

    // A field removed without a default: an old reader of new records has nothing for it.
    let removed = check_with(&d, |dir| {
        edit_field(
            dir,
            ValueSchema::TransactionValidated.file(),
            "validated_at",
            |f, at| {
                f.remove(at);
            },
        )
    });
    // A type changed: neither side can read the other.
    let retyped = check_with(&d, |dir| {
        edit_field(dir, ValueSchema::AuditRecord.file(), "seq", |f, at| {
            f[at]["type"] = serde_json::json!("string");
        })
    });
    for (run, stem, field) in [
        (
            &removed,
            "pos.transactions.validated",
            "validated_at at /fields/2",
        ),
        (
            &retyped,
            "pos.audit",
            "not compatible with writer type: STRING at /fields/0/type",
        ),
    ] {
        assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with(stem))
            .unwrap_or_else(|| panic!("{stem} not listed: {}", run.stdout));
        // Apicurio's own words, naming the field by name or position.
        assert!(
            line.contains("INCOMPATIBLE: the working copy refused (HTTP 409)")
                && line.contains("Incompatible artifact")
                && line.contains(field),
            "{line}"
        );
        let others = run
            .stdout
            .lines()
            .filter(|l| l.contains("INCOMPATIBLE"))
            .count();
        assert_eq!(others, 1, "only {stem} is refused: {}", run.stdout);
        assert!(
            run.stderr.contains("1 schema(s) break FULL_TRANSITIVE"),
            "{}",
            run.stderr
        );
    }
    // The scratch subjects are gone.
    let left: Vec<String> = d
        .kafka
        .registry()
        .subjects()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.starts_with("schema-check-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The worked example of docs/schemas.md: v2 of the validated record adds an optional field.
/// Through the real registry, posflow's own v1 decoder reads v2 records, and a v2 reader reads
/// records posflow wrote with v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_consumer_reads_v2_records_and_a_v2_consumer_reads_v1_records() {
    let d = Deployment::new().await;
    let registry = d.kafka.registry();
    let subject = format!("{}.gate-example-value", d.prefix);
    registry
        .set_compatibility(&subject, COMPATIBILITY)
        .await
        .unwrap();
    let v1_text = ValueSchema::TransactionValidated.json();
    let mut v2_doc: serde_json::Value = serde_json::from_str(v1_text).unwrap();
    v2_doc["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
            {"name": "loyalty_id", "type": ["null", "string"], "default": null}
        ));
    let v2_text = v2_doc.to_string();
    let v1_id = registry.register(&subject, v1_text).await.unwrap();
    let v2_id = registry
        .register(&subject, &v2_text)
        .await
        .expect("v2 is FULL_TRANSITIVE-compatible");
    assert_ne!(v1_id, v2_id);
    let v2 = Schema::parse_str(&v2_text).unwrap();
    let record = validated("gate-1", "M001", TransactionType::Sale, 1234, "EUR");

    // v2 data, written as a v2 producer would (Confluent wire format, v2's id) ...
    let Value::Record(mut fields) = apache_avro::to_value(&record)
        .unwrap()
        .resolve(ValueSchema::TransactionValidated.schema())
        .unwrap()
    else {
        panic!("not a record")
    };
    fields.push((
        "loyalty_id".into(),
        Value::Union(1, Box::new(Value::String("L-42".into()))),
    ));
    let mut wire = vec![0];
    wire.extend_from_slice(&v2_id.to_be_bytes());
    wire.extend(apache_avro::to_avro_datum(&v2, Value::Record(fields)).unwrap());
    // ... read by posflow's v1 decoder, which fetches the writer's schema by id.
    let decoder = posflow_schema::Decoder::<TransactionValidated>::new(registry.clone());
    assert_eq!(decoder.decode(&wire).await.unwrap(), record);

    // v1 data, written by posflow's encoder under v1's id, read with the v2 schema.
    let v1_wire = posflow_schema::codec::encode_with_id(v1_id, &record).unwrap();
    assert_eq!(v1_wire[1..5], v1_id.to_be_bytes());
    let writer = Schema::parse_str(&registry.schema_by_id(v1_id).await.unwrap()).unwrap();
    let read = apache_avro::from_avro_datum(&writer, &mut &v1_wire[5..], Some(&v2)).unwrap();
    let Value::Record(ref read_fields) = read else {
        panic!("not a record")
    };
    assert_eq!(
        read_fields
            .iter()
            .find(|(n, _)| n == "loyalty_id")
            .map(|(_, v)| v),
        Some(&Value::Union(0, Box::new(Value::Null))),
        "the v2 reader gets the default"
    );
    assert_eq!(
        apache_avro::from_value::<TransactionValidated>(&read).unwrap(),
        record
    );
    registry.delete_subject(&subject).await.unwrap();
}

/// Six validated records of two merchants, produced to this deployment's topic.
async fn six_validated(d: &Deployment) -> Vec<TransactionValidated> {
    let records: Vec<_> = (0..6)
        .map(|i| {
            let merchant = if i % 2 == 0 { "M001" } else { "M002" };
            validated(
                &format!("tail-{i}"),
                merchant,
                TransactionType::Sale,
                100 + i,
                "EUR",
            )
        })
        .collect();
    d.produce("pos.transactions.validated", &records, |r| {
        r.transaction.transaction_id.clone()
    })
    .await;
    records
}

fn tail(d: &Deployment, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["tail", "pos.transactions.validated"];
    all.extend_from_slice(args);
    let run = d.cli("posflow-admin", &all);
    run.expect_ok();
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn ids(lines: &[serde_json::Value]) -> Vec<String> {
    let mut ids: Vec<String> = lines
        .iter()
        .map(|l| {
            l["value"]["transaction"]["transaction_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_committed_records_decoded_filtered_and_from_a_position() {
    let d = Deployment::new().await;
    let before = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let records = six_validated(&d).await;
    let after = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();

    let all = tail(&d, &["--from", "beginning", "--to-end"]);
    assert_eq!(
        ids(&all),
        ["tail-0", "tail-1", "tail-2", "tail-3", "tail-4", "tail-5"]
    );
    for line in &all {
        let id = line["value"]["transaction"]["transaction_id"]
            .as_str()
            .unwrap();
        let record = records
            .iter()
            .find(|r| r.transaction.transaction_id == id)
            .unwrap();
        assert_eq!(line["key"], id);
        assert_eq!(
            line["value"]["transaction"]["merchant_id"],
            record.transaction.merchant_id.as_str()
        );
        assert_eq!(
            line["value"]["transaction"]["amount_minor"],
            record.transaction.amount_minor
        );
        assert_eq!(line["value"]["validated_at"], record.validated_at);
    }
    let m001 = tail(
        &d,
        &[
            "--from",
            "beginning",
            "--to-end",
            "--where",
            "merchant_id=M001",
        ],
    );
    assert_eq!(ids(&m001), ["tail-0", "tail-2", "tail-4"]);
    let both = [
        "--where",
        "transaction.merchant_id=M002",
        "--where",
        "amount_minor=103",
    ];
    let one = tail(
        &d,
        &[&["--from", "beginning", "--to-end"][..], &both].concat(),
    );
    assert_eq!(ids(&one), ["tail-3"]);
    assert_eq!(tail(&d, &["--from", "beginning", "--limit", "2"]).len(), 2);
    assert_eq!(tail(&d, &["--from", &before, "--to-end"]).len(), 6);
    assert!(tail(&d, &["--from", &after, "--to-end"]).is_empty());
    assert!(tail(&d, &["--from", "end", "--to-end"]).is_empty());
    let unknown = d.cli("posflow-admin", &["tail", "pos.nothing"]);
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.contains("not a catalogue topic"),
        "{}",
        unknown.stderr
    );
}

/// Following (no --to-end), Ctrl-C ends it with exit 0 and every printed line whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_stops_cleanly_on_ctrl_c() {
    use std::io::BufRead;
    let d = Deployment::new().await;
    six_validated(&d).await;
    let args = ["tail", "pos.transactions.validated", "--from", "beginning"];
    let mut child = std::process::Command::new(bin("posflow-admin"))
        .args(args)
        .envs(stage_env("posflow-admin", &args, &d.env()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..6 {
        let line = lines.next().unwrap().unwrap();
        serde_json::from_str::<serde_json::Value>(&line).unwrap();
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        child.wait().unwrap().success(),
        "tail did not end cleanly on SIGINT"
    );
    assert!(lines.next().is_none(), "nothing after the six records");
}

/// A record of each topic as posflow writes it (posflow's encoder, the schema id it registered),
/// decoded with stock tools — Python's confluent-kafka `AvroDeserializer` through the registry,
/// no posflow code — and compared value for value, every field, with what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reads_every_topic_record_for_record() {
    let d = Deployment::new().await;
    let mut expected = write_one_of_each(&d).await;
    let topics: Vec<String> = posflow_kafka::CATALOGUE
        .iter()
        .map(|t| d.topic(t.name))
        .collect();
    let mut args = vec![d.stack.brokers.clone(), d.stack.registry.clone()];
    args.extend(topics);
    let out = analyst_script("read_topics.py", &args);
    let mut read: Vec<(String, String, serde_json::Value)> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let topic = v["topic"].as_str().unwrap().to_string();
            let key = v["key"].as_str().unwrap().to_string();
            (topic, key, v["value"].take())
        })
        .collect();
    // The deployment's registry topic also holds the terminals `posflow-admin terminals`
    // imported for it: Python decoded them too (it stops on any record it cannot), and only ours
    // are compared field by field.
    let registry_topic = d.topic("pos.terminals");
    let imported = read.len();
    read.retain(|r| r.0 != registry_topic || r.1 == "T9001");
    assert!(
        imported - read.len() >= 500,
        "the imported registry was read too"
    );
    read.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    expected.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert_eq!(read.len(), expected.len(), "records read: {read:#?}");
    for (r, e) in read.iter().zip(&expected) {
        assert_eq!(r, e);
    }
    let kinds: std::collections::HashSet<&str> = read.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        kinds.len(),
        posflow_kafka::CATALOGUE.len(),
        "every topic read"
    );
}

/// A record of each kind, covering optional fields set and empty, several enum symbols, a
/// float, bytes and non-ASCII text, written to every topic; returns what each should read as.
async fn write_one_of_each(d: &Deployment) -> Vec<(String, String, serde_json::Value)> {
    use posflow_schema::*;
    let mut expected: Vec<(String, String, serde_json::Value)> = Vec::new();
    let now = now_millis();
    let received: Vec<TransactionReceived> = (0..3)
        .map(|i| received_sale(&format!("py-raw-{i}"), "T0001", i))
        .collect();
    write(d, &mut expected, "pos.transactions.raw", &received, |r| {
        r.transaction.transaction_id.clone()
    })
    .await;
    let valid: Vec<TransactionValidated> = (0..3)
        .map(|i| {
            validated(
                &format!("py-ok-{i}"),
                "M001",
                TransactionType::Refund,
                250 + i,
                "GBP",
            )
        })
        .collect();
    write(
        d,
        &mut expected,
        "pos.transactions.validated",
        &valid,
        |r| r.transaction.transaction_id.clone(),
    )
    .await;
    let rejected = vec![TransactionRejected {
        envelope: received[0].envelope.clone(),
        transaction: received[0].transaction.clone(),
        reasons: vec![RejectionReason {
            code: "AMOUNT_NOT_POSITIVE".into(),
            message: "amount must be > 0".into(),
        }],
        rejected_at: now,
    }];
    write(
        d,
        &mut expected,
        "pos.transactions.rejected",
        &rejected,
        |_| "T0001".into(),
    )
    .await;
    let alerts: Vec<FraudAlert> = [Severity::Low, Severity::Critical]
        .into_iter()
        .enumerate()
        .map(|(i, severity)| FraudAlert {
            alert_id: format!("py-alert-{i}"),
            rule_id: "velocity_card".into(),
            severity,
            score: 0.875,
            evidence_transaction_ids: vec!["py-ok-0".into(), "py-ok-1".into()],
            card_token: (i == 0).then(|| "ab".repeat(32)),
            merchant_id: "M001".into(),
            terminal_id: "T0001".into(),
            detected_at: now,
        })
        .collect();
    write(d, &mut expected, "pos.fraud.alerts", &alerts, |a| {
        a.alert_id.clone()
    })
    .await;
    let outcomes = vec![NotificationOutcome {
        idempotency_key: "py-key-1".into(),
        merchant_id: "M001".into(),
        channel: Channel::Email,
        event_type: "transaction".into(),
        status: DeliveryStatus::Failed,
        attempts: 4,
        latency_ms: 12,
        error: Some("HTTP 500".into()),
        at: now,
    }];
    write(
        d,
        &mut expected,
        "pos.notifications.status",
        &outcomes,
        |o| o.idempotency_key.clone(),
    )
    .await;
    let dead = vec![DeadLetter {
        reason: "NOT_JSON".into(),
        detail: "expected value at line 1".into(),
        stage: "bridge".into(),
        source: "pos/M001/T0001/tx".into(),
        received_at: now,
        payload: vec![0, 159, 146, 150, b'{'],
    }];
    write(d, &mut expected, "pos.deadletter", &dead, |l| {
        l.source.clone()
    })
    .await;
    let terminals = vec![TerminalRegistration {
        terminal_id: "T9001".into(),
        merchant_id: "M001".into(),
        status: "active".into(),
        changed_at: now,
        changed_by: "analyst-proof".into(),
        note: "é € 💳".into(),
    }];
    write(d, &mut expected, "pos.terminals", &terminals, |t| {
        t.terminal_id.clone()
    })
    .await;
    let audit = vec![AuditRecord {
        seq: 1,
        at: now,
        actor: "key:ab12".into(),
        merchant_id: "M001".into(),
        after: Some("{}".into()),
        ..AuditRecord::default()
    }];
    write(d, &mut expected, "pos.audit", &audit, |a| {
        a.merchant_id.clone()
    })
    .await;

    expected
}

/// Produces `records` with posflow's encoder and notes each as the JSON an Avro reader should
/// see: the record resolved to its schema (unions to their branch, enums to their symbol).
async fn write<T: posflow_schema::AvroRecord + serde::Serialize>(
    d: &Deployment,
    expected: &mut Vec<(String, String, serde_json::Value)>,
    base: &str,
    records: &[T],
    key: impl Fn(&T) -> String,
) {
    d.produce(base, records, &key).await;
    for r in records {
        let value = apache_avro::to_value(r)
            .unwrap()
            .resolve(T::SCHEMA.schema())
            .unwrap();
        expected.push((
            d.topic(base),
            key(r),
            serde_json::Value::try_from(value).unwrap(),
        ));
    }
}
