//! The Rust types and the `.avsc` files agree: every type, with every optional field both
//! absent and present and every enum symbol, encodes under its schema and decodes back equal;
//! and the record fields the Rust side writes are exactly the schema's, in order.

use apache_avro::{schema::Schema, types::Value};
use posflow_schema::codec::{from_datum, to_datum};
use posflow_schema::strum::{EnumCount, IntoEnumIterator};
use posflow_schema::*;
use rand::{rngs::StdRng, SeedableRng};

fn transaction(i: usize) -> Transaction {
    Transaction {
        transaction_id: format!("tx-{i}"),
        terminal_id: "T0001".into(),
        merchant_id: "M001".into(),
        sequence: i as i64,
        transaction_time: 1_790_000_000_000 + i as i64,
        kind: TransactionType::iter()
            .nth(i % TransactionType::COUNT)
            .unwrap(),
        original_transaction_id: (i % 2 == 1).then(|| "tx-0".to_string()),
        amount_minor: 1234,
        currency: "EUR".into(),
        payment_method: PaymentMethod::iter().nth(i % PaymentMethod::COUNT).unwrap(),
        entry_mode: EntryMode::iter().nth(i % EntryMode::COUNT).unwrap(),
        card: (i % 2 == 0).then(|| Card {
            token: "ab".repeat(32),
            bin: "411111".into(),
            last4: "1111".into(),
            token_key_id: "k1".into(),
            previous_tokens: vec![],
        }),
        auth_code: (i % 2 == 0).then(|| "A1B2C3".into()),
        response_code: "00".into(),
        mcc: "5411".into(),
        location: (i % 2 == 0).then_some(Location {
            latitude: 52.52,
            longitude: 13.405,
        }),
        line_items: if i % 2 == 0 {
            vec![LineItem {
                sku: "sku-1".into(),
                description: "Coffee".into(),
                unit_price_minor: 617,
                quantity: 2,
            }]
        } else {
            vec![]
        },
        offline: i % 2 == 1,
        offline_since: (i % 2 == 1).then_some(1_789_990_000_000),
    }
}

fn envelope() -> Envelope {
    Envelope {
        received_at: 1_790_000_000_500,
        mqtt_topic: "pos/M001/T0001/tx".into(),
        bridge_id: "bridge-0".into(),
        payload_version: 1,
    }
}

fn round_trip<T: AvroRecord + PartialEq + std::fmt::Debug>(value: T) {
    let schema = T::SCHEMA.schema();
    // Field names and order written by serde are the schema's.
    let Value::Record(fields) = apache_avro::to_value(&value).unwrap() else {
        panic!("not a record")
    };
    let Schema::Record(rs) = schema else {
        panic!("schema is not a record")
    };
    let written: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    let declared: Vec<&str> = rs.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(written, declared, "{:?}", T::SCHEMA);
    let bytes = to_datum(&value).unwrap_or_else(|e| panic!("{:?}: {e}", T::SCHEMA));
    let back: T = from_datum(schema, &bytes).unwrap();
    assert_eq!(back, value);
    // The wire format wraps it with the id.
    let framed = codec::encode_with_id(7, &value).unwrap();
    assert_eq!(&framed[..5], &[0, 0, 0, 0, 7]);
    assert_eq!(&framed[5..], &bytes[..]);
}

#[test]
fn every_schema_parses_and_is_self_contained() {
    for s in ValueSchema::iter() {
        let parsed = Schema::parse_str(s.json()).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert!(matches!(parsed, Schema::Record(_)), "{s:?}");
    }
}

#[test]
fn transactions_agree() {
    for i in 0..10 {
        round_trip(TransactionReceived {
            envelope: envelope(),
            transaction: transaction(i),
        });
        round_trip(TransactionValidated {
            envelope: envelope(),
            transaction: transaction(i),
            validated_at: 5,
        });
        round_trip(TransactionRejected {
            envelope: envelope(),
            transaction: transaction(i),
            reasons: vec![RejectionReason {
                code: "AMOUNT_NOT_POSITIVE".into(),
                message: "amount must be > 0".into(),
            }],
            rejected_at: 6,
        });
    }
}

#[test]
fn alerts_outcomes_and_dead_letters_agree() {
    for (i, severity) in [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ]
    .into_iter()
    .enumerate()
    {
        round_trip(FraudAlert {
            alert_id: "a".into(),
            rule_id: "velocity_card".into(),
            severity,
            score: 0.9,
            evidence_transaction_ids: vec!["tx-1".into(), "tx-2".into()],
            card_token: (i % 2 == 0).then(|| "ab".repeat(32)),
            merchant_id: "M001".into(),
            terminal_id: "T0001".into(),
            detected_at: 9,
        });
    }
    for (i, status) in [
        DeliveryStatus::Delivered,
        DeliveryStatus::Retrying,
        DeliveryStatus::Failed,
    ]
    .into_iter()
    .enumerate()
    {
        round_trip(NotificationOutcome {
            idempotency_key: "k".into(),
            merchant_id: "M001".into(),
            channel: if i % 2 == 0 {
                Channel::Webhook
            } else {
                Channel::Email
            },
            event_type: "transaction".into(),
            status,
            attempts: 4,
            latency_ms: 12,
            error: (i == 2).then(|| "HTTP 500".into()),
            at: 10,
        });
    }
    round_trip(DeadLetter {
        reason: "NOT_JSON".into(),
        detail: "expected value at line 1".into(),
        stage: "bridge".into(),
        source: "pos/M001/T0001/tx".into(),
        received_at: 11,
        payload: vec![0, 159, 146, 150, b'{'],
    });
}

#[test]
fn money_is_minor_units_and_cards_are_tokens_only() {
    let tx = ValueSchema::TransactionReceived.json();
    assert!(
        tx.contains(r#""name":"amount_minor","type":"long""#),
        "{tx}"
    );
    assert!(tx.contains(r#""name":"currency","type":"string""#));
    for forbidden in [
        "pan",
        "cvv",
        "cvc",
        "cvv2",
        "track1",
        "track2",
        "pin",
        "pin_block",
        "expiry",
    ] {
        for s in ValueSchema::iter() {
            let field = format!(r#""name":"{forbidden}""#);
            assert!(
                !s.json().to_lowercase().contains(&field),
                "{s:?} has a field {forbidden}"
            );
        }
    }
}

/// A random value of `schema`, every kind posflow's schemas use (and the others the
/// schema-aware reader knows), with edge values mixed in.
fn generated(schema: &Schema, rng: &mut StdRng) -> Value {
    use rand::Rng;
    let long = |rng: &mut StdRng| match rng.gen_range(0..4) {
        0 => [0, -1, 1, i64::MIN, i64::MAX, 63, 64, -64, -65][rng.gen_range(0..9)],
        _ => rng.gen::<i64>() >> rng.gen_range(0..63),
    };
    let text = |rng: &mut StdRng| -> String {
        let pool = ["a", "Z", "0", " ", "é", "€", "💳", "\"", "\\", "\u{0}", "ø"];
        (0..rng.gen_range(0..24))
            .map(|_| pool[rng.gen_range(0..pool.len())])
            .collect()
    };
    match schema {
        Schema::Null => Value::Null,
        Schema::Boolean => Value::Boolean(rng.gen()),
        Schema::Int => Value::Int(long(rng) as i32),
        Schema::Long => Value::Long(long(rng)),
        Schema::TimestampMillis => Value::TimestampMillis(long(rng)),
        Schema::Float => Value::Float(rng.gen::<f32>() * 1e3 - 5e2),
        Schema::Double => Value::Double(rng.gen::<f64>() * 360.0 - 180.0),
        Schema::Bytes => Value::Bytes((0..rng.gen_range(0..40)).map(|_| rng.gen()).collect()),
        Schema::String => Value::String(text(rng)),
        Schema::Enum(e) => {
            let i = rng.gen_range(0..e.symbols.len());
            Value::Enum(i as u32, e.symbols[i].clone())
        }
        Schema::Array(a) => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| generated(&a.items, rng))
                .collect(),
        ),
        Schema::Union(u) => {
            let i = rng.gen_range(0..u.variants().len());
            Value::Union(i as u32, Box::new(generated(&u.variants()[i], rng)))
        }
        Schema::Record(r) => Value::Record(
            r.fields
                .iter()
                .map(|f| (f.name.clone(), generated(&f.schema, rng)))
                .collect(),
        ),
        other => panic!("no generator for {other:?}: add one"),
    }
}

/// The schema-aware read (`codec::from_datum`, straight from the bytes into the type) and
/// apache-avro's (`from_datum_via_value`, through its `Value` tree) agree on every schema:
/// the same value for 2,000 generated datums each, written again byte for byte as read, and
/// both refusing the same truncated and corrupted datums.
#[test]
fn the_schema_aware_read_agrees_with_apache_avro_on_every_schema() {
    fn check<T: AvroRecord + PartialEq + std::fmt::Debug>(rng: &mut StdRng) -> usize {
        use rand::Rng;
        let schema = T::SCHEMA.schema();
        assert!(posflow_schema::avro_de::usable(schema), "{:?}", T::SCHEMA);
        let mut read = 0;
        for _ in 0..2_000 {
            let v = generated(schema, rng);
            let bytes = apache_avro::to_avro_datum(schema, v).unwrap();
            let fast: T = from_datum(schema, &bytes).unwrap();
            let tree: T = codec::from_datum_via_value(schema, &bytes).unwrap();
            assert_eq!(fast, tree);
            assert_eq!(to_datum(&fast).unwrap(), bytes, "{:?}", T::SCHEMA);
            // Broken datums: cut short, or one byte changed. Both refuse, or both read the same.
            let mut broken = bytes.clone();
            if rng.gen() {
                broken.truncate(rng.gen_range(0..bytes.len()));
            } else {
                let i = rng.gen_range(0..bytes.len());
                broken[i] = rng.gen();
            }
            let fast = from_datum::<T>(schema, &broken).ok();
            let tree = codec::from_datum_via_value::<T>(schema, &broken).ok();
            // apache-avro reads a union index cut off by the end of the datum (none, or an
            // unfinished varint) as null (its decode.rs, for old writers): a datum cut in a last
            // optional field's index. The schema-aware read refuses it, as a cut datum should be.
            let cut_before_a_trailing_null = fast.is_none()
                && tree.as_ref().is_some_and(|t| {
                    let whole = to_datum(t).unwrap();
                    let (index, before) = whole.split_last().unwrap();
                    *index == 0
                        && broken.starts_with(before)
                        && broken[before.len()..].iter().all(|b| b & 0x80 != 0)
                });
            if !cut_before_a_trailing_null {
                assert_eq!(fast, tree, "{:?} on {broken:?}", T::SCHEMA);
            }
            read += 1;
        }
        read
    }
    let mut rng = StdRng::seed_from_u64(20);
    let read = check::<TransactionReceived>(&mut rng)
        + check::<TransactionValidated>(&mut rng)
        + check::<TransactionRejected>(&mut rng)
        + check::<FraudAlert>(&mut rng)
        + check::<NotificationOutcome>(&mut rng)
        + check::<DeadLetter>(&mut rng)
        + check::<TerminalRegistration>(&mut rng)
        + check::<AuditRecord>(&mut rng);
    assert_eq!(read, 8 * 2_000);
    // Every record type above, and no schema without its type here.
    assert_eq!(ValueSchema::iter().count(), 8);
}
