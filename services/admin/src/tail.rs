//! `posflow-admin tail TOPIC`: a topic's records, decoded through the schema registry, as JSON
//! lines (docs/topics.md). Committed records only (read_committed, what every consumer sees);
//! partitions assigned directly, with no consumer group, so it moves nobody's offsets; Ctrl-C
//! stops it between records, with every printed line complete.

use anyhow::{anyhow, bail, Context as _};
use apache_avro::Schema;
use futures::StreamExt;
use posflow_kafka::{KafkaArgs, CATALOGUE};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value as Json};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, SystemTime};

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// A catalogue topic (`posflow-admin topics`), without the deployment's prefix.
    pub topic: String,
    /// Where to start on every partition: `beginning`, `end` (only what arrives from now on),
    /// an offset, or a time in RFC 3339 (the first record at or after it).
    #[arg(long, default_value = "end", value_parser = parse_start)]
    pub from: Start,
    /// Only records with this field value, as `field=value` (repeat: all must hold). A dotted
    /// path (`transaction.merchant_id`) names one field; a bare name matches at any depth.
    #[arg(long = "where", value_parser = parse_filter)]
    pub filters: Vec<Filter>,
    /// Stop after printing this many records.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Stop at the end of every partition instead of waiting for more.
    #[arg(long)]
    pub to_end: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    End,
    Offset(i64),
    /// Milliseconds since the epoch.
    Time(i64),
}

fn parse_start(s: &str) -> Result<Start, String> {
    match s {
        "beginning" => Ok(Start::Beginning),
        "end" => Ok(Start::End),
        _ => s.parse::<i64>().map(Start::Offset).or_else(|_| {
            humantime::parse_rfc3339(s)
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| Start::Time(d.as_millis() as i64))
                .ok_or_else(|| format!("{s:?}: not beginning, end, an offset or an RFC 3339 time"))
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    path: Vec<String>,
    value: String,
}

fn parse_filter(s: &str) -> Result<Filter, String> {
    let (field, value) = s
        .split_once('=')
        .filter(|(f, _)| !f.is_empty())
        .ok_or_else(|| format!("{s:?}: not field=value"))?;
    Ok(Filter {
        path: field.split('.').map(str::to_string).collect(),
        value: value.to_string(),
    })
}

impl Filter {
    fn matches(&self, record: &Json) -> bool {
        if let [name] = self.path.as_slice() {
            return any_depth(record, name, &self.value);
        }
        let mut at = record;
        for step in &self.path {
            match at.get(step) {
                Some(next) => at = next,
                None => return false,
            }
        }
        equals(at, &self.value)
    }
}

/// A field's value as text: strings as they are, numbers and booleans as JSON writes them.
fn equals(v: &Json, text: &str) -> bool {
    match v {
        Json::String(s) => s == text,
        Json::Number(n) => text.parse::<serde_json::Number>().is_ok_and(|t| t == *n),
        Json::Bool(b) => text.parse::<bool>() == Ok(*b),
        _ => false,
    }
}

fn any_depth(v: &Json, name: &str, text: &str) -> bool {
    match v {
        Json::Object(map) => map
            .iter()
            .any(|(k, child)| (k == name && equals(child, text)) || any_depth(child, name, text)),
        Json::Array(items) => items.iter().any(|i| any_depth(i, name, text)),
        _ => false,
    }
}

pub async fn run(kafka: &KafkaArgs, args: &TailArgs) -> anyhow::Result<std::process::ExitCode> {
    if !CATALOGUE.iter().any(|t| t.name == args.topic) {
        bail!(
            "{} is not a catalogue topic (posflow-admin topics lists them)",
            args.topic
        );
    }
    let topic = kafka.topics().name(&args.topic);
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", "posflow-admin-tail") // required by librdkafka; nothing is committed
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .context("creating the Kafka consumer")?;
    let partitions = assign(&consumer, &topic, args.from)?;
    let mut reader = Reader {
        registry: kafka.registry(),
        schemas: HashMap::new(),
    };
    let (mut printed, mut at_end) = (0u64, HashSet::new());
    let mut stream = consumer.stream();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut out = std::io::stdout().lock();
    while args.limit.is_none_or(|n| printed < n) && !(args.to_end && at_end.len() == partitions) {
        let next = tokio::select! {
            _ = &mut stop => break,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                let line = reader.line(&m).await;
                if args.filters.iter().all(|f| f.matches(&line["value"])) {
                    writeln!(out, "{line}")?;
                    printed += 1;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => eprintln!("posflow-admin tail: {e} (retrying)"),
            None => break,
        }
    }
    out.flush()?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Assigns every partition of `topic` at `from`; returns how many there are.
fn assign(consumer: &StreamConsumer, topic: &str, from: Start) -> anyhow::Result<usize> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .context("reading the topic's metadata")?;
    let ids: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    if ids.is_empty() {
        bail!("{topic} does not exist (posflow-admin provision creates it)");
    }
    let mut tpl = TopicPartitionList::new();
    for p in &ids {
        let offset = match from {
            Start::Beginning => Offset::Beginning,
            Start::End => Offset::End,
            Start::Offset(o) => Offset::Offset(o),
            Start::Time(ms) => Offset::Offset(ms),
        };
        tpl.add_partition_offset(topic, *p, offset)?;
    }
    if matches!(from, Start::Time(_)) {
        // The offsets hold times; Kafka answers with the first offset at or after each.
        tpl = consumer.offsets_for_times(tpl, Duration::from_secs(30))?;
    }
    consumer.assign(&tpl)?;
    Ok(ids.len())
}

/// Decodes values in the Confluent wire format, fetching each writer schema once.
struct Reader {
    registry: posflow_schema::Registry,
    schemas: HashMap<u32, Schema>,
}

impl Reader {
    /// The record as one JSON object; a value that does not decode is shown with the reason.
    async fn line(&mut self, m: &BorrowedMessage<'_>) -> Json {
        let value = match self.decode(m.payload().unwrap_or_default()).await {
            Ok(v) => v,
            Err(e) => json!({ "undecodable": e.to_string() }),
        };
        json!({
            "partition": m.partition(),
            "offset": m.offset(),
            "timestamp": m.timestamp().to_millis(),
            "key": m.key().map(String::from_utf8_lossy),
            "value": value,
        })
    }

    async fn decode(&mut self, bytes: &[u8]) -> anyhow::Result<Json> {
        let (0, Some(id)) = (
            bytes.first().copied().unwrap_or(1),
            bytes
                .get(1..5)
                .map(|b| u32::from_be_bytes(b.try_into().unwrap())),
        ) else {
            bail!("not in the Confluent wire format");
        };
        if !self.schemas.contains_key(&id) {
            let text = self.registry.schema_by_id(id).await?;
            self.schemas.insert(id, Schema::parse_str(&text)?);
        }
        let value = apache_avro::from_avro_datum(&self.schemas[&id], &mut &bytes[5..], None)?;
        Json::try_from(value).map_err(|e| anyhow!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_filters_parse_and_match() {
        assert_eq!(parse_start("beginning"), Ok(Start::Beginning));
        assert_eq!(parse_start("42"), Ok(Start::Offset(42)));
        assert_eq!(
            parse_start("2026-12-04T00:00:00Z"),
            Ok(Start::Time(1_796_342_400_000))
        );
        assert!(parse_start("yesterday").is_err());
        assert!(parse_filter("=M001").is_err());
        let record = json!({"envelope": {"bridge_id": "b1"}, "transaction": {"merchant_id": "M001", "amount_minor": 250}});
        let f = |s: &str| parse_filter(s).unwrap().matches(&record);
        assert!(f("merchant_id=M001"));
        assert!(f("transaction.merchant_id=M001"));
        assert!(f("amount_minor=250"));
        assert!(!f("merchant_id=M002"));
        assert!(!f("envelope.merchant_id=M001"));
    }
}
