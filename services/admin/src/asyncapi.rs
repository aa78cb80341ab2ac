//! `posflow-admin asyncapi`: the topic catalogue and the value schemas as an AsyncAPI 3.0
//! document, for analysts' tools (docs/topics.md). Generated, never written by hand: the copy in
//! `docs/asyncapi.json` is checked against this output by a test, and validated with the
//! AsyncAPI parser by `make asyncapi-check`.

use posflow_kafka::topics::{Retention, TopicSpec};
use posflow_kafka::CATALOGUE;
use serde_json::{json, Map, Value};

/// The stages and tools that are posflow's own: each becomes an operation on the topics it
/// writes or reads. Other readers (analysts, operators, SIEMs) are named in the description.
const OURS: &[&str] = &[
    "bridge",
    "validator",
    "storage",
    "fraud",
    "notifier",
    "api",
    "posflow-admin",
];

/// Fields that carry card or location data, wherever they appear: the card's token, BIN, last
/// four and earlier tokens (`card`), a bare token (`card_token`), the terminal's position, and a
/// dead letter's `payload` (what a terminal sent: card numbers masked, sensitive authentication
/// data removed, the rest as it came).
const SENSITIVE: &[&str] = &["card", "card_token", "location", "payload"];

/// Kafka headers by topic (docs/topics.md, "Headers").
fn headers(topic: &str) -> Vec<(&'static str, &'static str)> {
    let mut h = vec![(
        "traceparent",
        "W3C trace context of the stage that produced the record",
    )];
    if matches!(
        topic,
        "pos.transactions.raw" | "pos.transactions.validated" | "pos.deadletter"
    ) {
        h.push((
            "posflow-mqtt-topic",
            "the MQTT topic the message arrived on",
        ));
        h.push((
            "posflow-received-at",
            "bridge receive time, ms since the epoch, decimal",
        ));
    }
    if matches!(topic, "pos.transactions.raw" | "pos.deadletter") {
        h.push(("tracestate", "W3C vendor trace state, the terminal's"));
    }
    if matches!(topic, "pos.transactions.rejected" | "pos.deadletter") {
        h.push((
            "posflow-reason",
            "reason code(s), comma-separated (docs/reason-codes.md)",
        ));
    }
    h
}

/// The whole document.
pub fn document() -> Value {
    let (mut channels, mut operations, mut messages) = (Map::new(), Map::new(), Map::new());
    for t in CATALOGUE {
        let id = t.name.replace('.', "_");
        let message = record_name(t);
        channels.insert(id.clone(), channel(t, &message));
        messages.insert(message.clone(), self::message(t, &message));
        for (action, who) in [("send", t.writers), ("receive", t.readers)] {
            for stage in parties(who).filter(|p| OURS.contains(p)) {
                operations.insert(
                    format!("{}_{action}s_{id}", stage.replace('-', "_")),
                    json!({
                        "action": action,
                        "channel": { "$ref": format!("#/channels/{id}") },
                        "summary": format!("{stage} {action}s {}", t.name),
                        "messages": [{ "$ref": format!("#/channels/{id}/messages/{message}") }],
                    }),
                );
            }
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "posflow topics",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Card-present transactions from POS terminals, as posflow's stages write them to Kafka. Values are Avro in the Confluent wire format (0x00, a 4-byte schema id, Avro binary), schemas in the registry under <topic>-value at FULL_TRANSITIVE (docs/schemas.md); keys are UTF-8 strings. A deployment may prefix every topic name (POSFLOW_TOPIC_PREFIX). Fields listed in a message's x-posflow-sensitive carry card or location data: a card appears only as its token, BIN and last four; never a card number, CVV, PIN or track data.",
        },
        "servers": {
            "kafka": {
                "host": "{brokers}",
                "protocol": "kafka-secure",
                "description": "The deployment's brokers (POSFLOW_KAFKA_BROKERS): SASL_SSL with the chart's defaults, plaintext on the local stack.",
                "variables": { "brokers": { "default": "127.0.0.1:29092" } },
                "bindings": { "kafka": {
                    "schemaRegistryUrl": "http://127.0.0.1:28081/apis/ccompat/v7",
                    "schemaRegistryVendor": "apicurio",
                    "bindingVersion": "0.5.0",
                } },
            }
        },
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages },
    })
}

/// The value schema's record name (`TransactionReceived`): the message's name.
fn record_name(t: &TopicSpec) -> String {
    let schema: Value = serde_json::from_str(t.value.json()).expect("schemas are JSON");
    schema["name"].as_str().unwrap_or(t.name).to_string()
}

fn parties(who: &str) -> impl Iterator<Item = &str> {
    who.split(", ").filter_map(|p| p.split_whitespace().next())
}

fn channel(t: &TopicSpec, message: &str) -> Value {
    let (policy, retention_ms) = match t.retention {
        Retention::Days(d) => ("delete", d * 86_400_000),
        Retention::Compacted => ("compact", -1),
    };
    json!({
        "address": t.name,
        "title": t.name,
        "description": format!("Key: {}. Written by {}; read by {}. Retention: {}.", t.key, t.writers, t.readers, t.retention.label()),
        "messages": { message: { "$ref": format!("#/components/messages/{message}") } },
        "bindings": { "kafka": {
            "topic": t.name,
            "partitions": t.partitions,
            "replicas": 3,
            "topicConfiguration": {
                "cleanup.policy": [policy],
                "retention.ms": retention_ms,
                "min.insync.replicas": 2,
            },
            "bindingVersion": "0.5.0",
        } },
    })
}

fn message(t: &TopicSpec, name: &str) -> Value {
    let schema: Value = serde_json::from_str(t.value.json()).expect("schemas are JSON");
    let mut sensitive = Vec::new();
    sensitive_paths(&schema, "", &mut sensitive);
    let properties: Map<String, Value> = headers(t.name)
        .into_iter()
        .map(|(h, what)| {
            (
                h.to_string(),
                json!({ "type": "string", "description": what }),
            )
        })
        .collect();
    json!({
        "name": name,
        "title": name,
        "contentType": "application/vnd.apache.avro+json",
        "headers": { "type": "object", "properties": properties },
        "payload": {
            "schemaFormat": "application/vnd.apache.avro+json;version=1.9.0",
            "schema": schema,
        },
        "bindings": { "kafka": {
            "key": { "type": "string", "description": t.key },
            "schemaIdLocation": "payload",
            "schemaIdPayloadEncoding": "confluent",
            "bindingVersion": "0.5.0",
        } },
        "x-posflow-sensitive": sensitive,
    })
}

/// The dotted paths of the [`SENSITIVE`] fields in an Avro record schema.
fn sensitive_paths(schema: &Value, prefix: &str, out: &mut Vec<String>) {
    let Some(fields) = schema.get("fields").and_then(Value::as_array) else {
        return;
    };
    for f in fields {
        let name = f["name"].as_str().unwrap_or_default();
        let path = format!("{prefix}{name}");
        if SENSITIVE.contains(&name) {
            out.push(path);
            continue;
        }
        // A record, or a union/array holding one: look inside.
        let mut inner = vec![&f["type"]];
        while let Some(t) = inner.pop() {
            match t {
                Value::Array(branches) => inner.extend(branches),
                Value::Object(o) if o.get("type") == Some(&json!("array")) => {
                    inner.push(&o["items"])
                }
                Value::Object(_) => sensitive_paths(t, &format!("{path}."), out),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document is what the code generates (docs/topics.md).
    #[test]
    fn docs_asyncapi_json_is_what_the_catalogue_generates() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/asyncapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let generated = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        assert!(
            committed == generated,
            "docs/asyncapi.json is stale: ./target/debug/posflow-admin asyncapi > docs/asyncapi.json"
        );
    }

    #[test]
    fn every_topic_is_a_channel_with_its_sensitive_fields_marked() {
        let doc = document();
        assert_eq!(doc["channels"].as_object().unwrap().len(), CATALOGUE.len());
        let raw = &doc["components"]["messages"]["TransactionReceived"]["x-posflow-sensitive"];
        assert_eq!(raw, &json!(["transaction.card", "transaction.location"]));
        let alert = &doc["components"]["messages"]["FraudAlert"]["x-posflow-sensitive"];
        assert_eq!(alert, &json!(["card_token"]));
        let dead = &doc["components"]["messages"]["DeadLetter"]["x-posflow-sensitive"];
        assert_eq!(dead, &json!(["payload"]));
        let audit = &doc["components"]["messages"]["AuditRecord"]["x-posflow-sensitive"];
        assert_eq!(audit, &json!([]));
        let ops = doc["operations"].as_object().unwrap();
        assert!(ops.contains_key("bridge_sends_pos_transactions_raw"));
        assert!(ops.contains_key("fraud_receives_pos_transactions_validated"));
        assert!(!ops.keys().any(|k| k.starts_with("analysts")));
    }
}
