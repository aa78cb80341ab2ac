//! posflow-lake: validated and rejected transactions and fraud alerts as Parquet files on a
//! directory, for analysts' DuckDB, Spark or Athena — exactly once.
//!
//! A [`BatchSink`] like storage: a batch is a roll. Each Kafka partition's rows of the batch
//! become one file per event date, staged, then committed as the partition's next manifest
//! version with the batch's next offset, then renamed into place ([`store`] says why in that
//! order). The manifest is the truth on where a partition resumes; Kafka's committed offsets
//! move only after the manifest, so they are never ahead of it.
//!
//! docs/lake.md is the reader's guide: the layout, the columns, the queries.

pub mod parquet_file;
#[cfg(test)]
mod sample;
pub mod store;
pub mod table;

use clap::Parser;
use parquet_file::Format;
use posflow_kafka::deadletter::{DeadLetterProducer, DeadLetters};
use posflow_kafka::pipeline::{decode_with_retry, Batching, Input};
use posflow_kafka::sink::{self, BatchSink, NextOffsets, WriteError};
use posflow_kafka::KafkaArgs;
use posflow_runtime::metrics::{counter, counter_vec};
use posflow_runtime::{CommonArgs, ConfigErrors, Context};
use posflow_schema::{Decoder, FraudAlert, TransactionRejected, TransactionValidated};
use prometheus::{IntCounter, IntCounterVec};
use rdkafka::consumer::Consumer;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use store::{Commit, Lake, Position};
use table::{Record, Table, Value};

/// posflow-lake: the validated, rejected and fraud-alert topics as Parquet files, exactly once.
#[derive(Debug, Parser)]
#[command(name = "posflow-lake", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The lake's root directory (a volume shared by every replica: docs/lake.md).
    #[arg(long, env = "POSFLOW_LAKE_ROOT")]
    pub root: PathBuf,
    /// Rows per roll, at most, over all partitions of this replica: each roll writes one file
    /// per partition and event date.
    #[arg(long, env = "POSFLOW_LAKE_ROLL_ROWS", default_value_t = 50_000)]
    pub roll_rows: usize,
    /// Seconds a roll waits to fill before it is written anyway: how stale the lake may be.
    #[arg(long, env = "POSFLOW_LAKE_ROLL_SECONDS", default_value_t = 60)]
    pub roll_seconds: u64,
    /// zstd level of the files (1..=22).
    #[arg(long, env = "POSFLOW_LAKE_ZSTD_LEVEL", default_value_t = 3)]
    pub zstd_level: i32,
}

impl Args {
    pub fn check(self) -> Result<Self, ConfigErrors> {
        let mut e = ConfigErrors::new();
        self.kafka.check(&mut e);
        e.check(
            !self.root.as_os_str().is_empty(),
            "--root (POSFLOW_LAKE_ROOT) must name a directory",
        );
        e.check(
            (1..=1_000_000).contains(&self.roll_rows),
            "--roll-rows must be 1..=1000000",
        );
        e.check(
            (1..=3600).contains(&self.roll_seconds),
            "--roll-seconds must be 1..=3600",
        );
        e.check(
            (1..=22).contains(&self.zstd_level),
            "--zstd-level must be 1..=22",
        );
        e.into_result(self)
    }
}

struct Metrics {
    received: IntCounter,
    skipped: IntCounter,
    rows: IntCounterVec,
    files: IntCounterVec,
    bytes: IntCounterVec,
    commits: IntCounter,
    lost: IntCounter,
    write_errors: IntCounter,
    dead_lettered: IntCounterVec,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        received: counter("posflow_lake_received_total", "Records consumed"),
        skipped: counter(
            "posflow_lake_skipped_total",
            "Records below their partition's manifest offset (in the lake already)",
        ),
        rows: counter_vec(
            "posflow_lake_rows_written_total",
            "Rows in committed files, by table",
            &["table"],
        ),
        files: counter_vec(
            "posflow_lake_files_written_total",
            "Committed files, by table",
            &["table"],
        ),
        bytes: counter_vec(
            "posflow_lake_bytes_written_total",
            "Bytes of committed files, by table",
            &["table"],
        ),
        commits: counter(
            "posflow_lake_manifest_commits_total",
            "Manifest versions committed (one per partition per roll)",
        ),
        lost: counter(
            "posflow_lake_commits_lost_total",
            "Commits another replica won (a rebalance moved the partition mid-roll); what was left is written from the winner's offset",
        ),
        write_errors: counter(
            "posflow_lake_write_errors_total",
            "Rolls that failed to write (retried): a full or unwritable volume",
        ),
        dead_lettered: counter_vec(
            "posflow_lake_dead_lettered_total",
            "Records sent to the dead-letter topic, by reason",
            &["reason"],
        ),
    })
}

impl Table {
    /// The metrics label and docs name.
    pub fn label(self) -> &'static str {
        match self {
            Table::Validated => "validated",
            Table::Rejected => "rejected",
            Table::FraudAlerts => "fraud_alerts",
        }
    }
}

pub async fn run(args: Args, ctx: Context) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.root).map_err(|e| {
        anyhow::anyhow!("the lake's root {} is not usable: {e}", args.root.display())
    })?;
    let topics = args.kafka.topics();
    let registry = args.kafka.registry();
    let tables: HashMap<String, Table> = [
        (topics.validated(), Table::Validated),
        (topics.rejected(), Table::Rejected),
        (topics.fraud_alerts(), Table::FraudAlerts),
    ]
    .into();
    let names: Vec<String> = tables.keys().cloned().collect();
    let group = args.kafka.group("posflow-lake");
    let client_id = format!("lake-{}", std::process::id());
    let dead = DeadLetterProducer {
        letters: DeadLetters::for_stage(&args.kafka, "lake", metrics().dead_lettered.clone())
            .await?,
        producer: posflow_kafka::clients::producer(&args.kafka, &client_id)?,
    };
    let consumer = sink::consumer(&args.kafka, &group, &client_id)?;
    consumer.subscribe(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
    let vanished = posflow_kafka::clients::input_vanished(args.kafka.clone(), names);
    let writer = format!(
        "{client_id}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let sink = LakeSink {
        writer: Arc::new(Writer {
            lake: Lake::new(&args.root, writer),
            format: Format {
                zstd_level: args.zstd_level,
                ..Format::default()
            },
            tables,
            positions: Mutex::new(HashMap::new()),
        }),
        validated_dec: Decoder::new(registry.clone()),
        rejected_dec: Decoder::new(registry.clone()),
        alert_dec: Decoder::new(registry),
    };
    ctx.health.set_ready(true);
    let batching = Batching {
        max_records: args.roll_rows,
        linger: Duration::from_secs(args.roll_seconds),
    };
    sink::run(&consumer, &sink, &dead, batching, &ctx, vanished).await
}

/// A consumed record, ready for its file. Shared, not copied, with the thread that writes
/// its roll.
#[derive(Debug, Clone)]
pub struct Row(Arc<RowData>);

#[derive(Debug)]
struct RowData {
    table: Table,
    partition: i32,
    offset: i64,
    /// The event date, `YYYY-MM-DD` (UTC): the file's `date=` directory.
    date: String,
    values: Vec<Value>,
}

struct LakeSink {
    writer: Arc<Writer>,
    validated_dec: Decoder<TransactionValidated>,
    rejected_dec: Decoder<TransactionRejected>,
    alert_dec: Decoder<FraudAlert>,
}

/// What writes files and commits manifests. A roll runs on a blocking thread of its own, so
/// the sink's task goes on consuming and decoding the next roll meanwhile (with
/// `block_in_place` it could not: the task itself would wait).
struct Writer {
    lake: Lake,
    format: Format,
    /// Topic name → its table.
    tables: HashMap<String, Table>,
    /// Where each partition this replica has opened stands.
    positions: Mutex<HashMap<(String, i32), Position>>,
}

impl Writer {
    /// A roll: each partition of `next` committed in turn.
    fn write_roll(&self, rows: &[Row], next: &NextOffsets) -> std::io::Result<()> {
        let mut by_partition: HashMap<(&str, i32), Vec<&RowData>> = HashMap::new();
        for Row(r) in rows {
            let topic = self
                .tables
                .iter()
                .find(|(_, t)| **t == r.table)
                .map(|(n, _)| n.as_str())
                .expect("a row's table is one of the lake's");
            by_partition
                .entry((topic, r.partition))
                .or_default()
                .push(r);
        }
        for ((topic, partition), &next) in next {
            let rows = by_partition
                .get(&(topic.as_str(), *partition))
                .map(Vec::as_slice)
                .unwrap_or_default();
            self.write_partition(topic, *partition, rows, next)?;
        }
        Ok(())
    }

    /// One partition's rows, from where the partition stands up to `next`, staged per date and
    /// committed.
    ///
    /// Where it stands is the latest manifest version, whoever wrote it. A retried roll finds
    /// its earlier attempt's commit there; a replica that lost a commit to another (a rebalance
    /// moved the partition while a roll was in flight) finds the winner's. Either way only the
    /// rows at or above that offset are written, and nothing if it is at `next` already. That
    /// keeps the lake whole and free of repeats: each replica's rows are contiguous from the
    /// offset it resumed from, and a partition's offset only grows.
    fn write_partition(
        &self,
        topic: &str,
        partition: i32,
        rows: &[&RowData],
        next: i64,
    ) -> std::io::Result<()> {
        let key = (topic.to_owned(), partition);
        let mut at = match self.positions.lock().unwrap().get(&key).copied() {
            Some(at) => at,
            None => self.lake.open(topic, partition)?,
        };
        while at.next_offset < next {
            let mut by_date: BTreeMap<&str, Vec<&RowData>> = BTreeMap::new();
            for r in rows.iter().filter(|r| r.offset >= at.next_offset) {
                by_date.entry(&r.date).or_default().push(r);
            }
            let mut staged = Vec::with_capacity(by_date.len());
            for (date, rows) in by_date {
                let table = rows[0].table;
                let values: Vec<&[Value]> = rows.iter().map(|r| r.values.as_slice()).collect();
                let range = (rows[0].offset, rows[rows.len() - 1].offset);
                staged.push(self.lake.stage(
                    topic,
                    partition,
                    date,
                    range,
                    rows.len() as u64,
                    |f| {
                        let out = std::io::BufWriter::with_capacity(1 << 20, f);
                        parquet_file::write(table, &values, self.format, out)
                            .map_err(std::io::Error::other)
                    },
                )?);
            }
            let files: Vec<_> = staged.iter().map(|s| s.file.clone()).collect();
            let m = metrics();
            at = match self.lake.commit(topic, partition, at, staged, next)? {
                Commit::Committed(p) => {
                    m.commits.inc();
                    if let Some(table) = self.tables.get(topic) {
                        for f in &files {
                            m.rows.with_label_values(&[table.label()]).inc_by(f.rows);
                            m.files.with_label_values(&[table.label()]).inc();
                            m.bytes.with_label_values(&[table.label()]).inc_by(f.bytes);
                        }
                    }
                    p
                }
                Commit::Lost(p) => {
                    m.lost.inc();
                    tracing::warn!(topic, partition, seq = p.seq, next_offset = p.next_offset,
                        "another replica committed this partition first; writing what is left from there");
                    p
                }
            };
            self.positions.lock().unwrap().insert(key.clone(), at);
        }
        Ok(())
    }
}

impl BatchSink for LakeSink {
    type Item = Row;
    const SPAN: &'static str = "lake.write";

    async fn prepare(
        &self,
        input: &Input,
        _span: &tracing::Span,
        ctx: &Context,
    ) -> Option<Result<Row, String>> {
        metrics().received.inc();
        let payload = input.payload.as_deref().unwrap_or_default();
        let record = match self.writer.tables.get(&input.topic)? {
            Table::Validated => decode_with_retry(&self.validated_dec, payload, ctx)
                .await?
                .map(Record::Validated),
            Table::Rejected => decode_with_retry(&self.rejected_dec, payload, ctx)
                .await?
                .map(Record::Rejected),
            Table::FraudAlerts => decode_with_retry(&self.alert_dec, payload, ctx)
                .await?
                .map(Record::FraudAlert),
        };
        Some(record.map(|r| {
            Row(Arc::new(RowData {
                table: r.table(),
                partition: input.partition,
                offset: input.offset,
                date: utc_date(r.event_time()),
                values: r.into_row(input.partition, input.offset),
            }))
        }))
    }

    async fn write(
        &self,
        rows: &[Row],
        next: &NextOffsets,
        ctx: &Context,
    ) -> Option<Result<(), WriteError>> {
        // File writes and fsyncs block: on a thread of their own, while the next roll is
        // decoded. The rows go there as shared references, not copies.
        let (writer, rows, next) = (self.writer.clone(), rows.to_vec(), next.clone());
        let written = tokio::task::spawn_blocking(move || writer.write_roll(&rows, &next))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("the roll's thread: {e}"))));
        Some(match written {
            Ok(()) => {
                ctx.health.set_ready(true);
                Ok(())
            }
            Err(e) => {
                metrics().write_errors.inc();
                ctx.health.set_ready(false);
                Err(WriteError {
                    permanent: false,
                    summary: format!("writing to the lake: {e}"),
                })
            }
        })
    }

    async fn resume_from(
        &self,
        topic: &str,
        partition: i32,
        _ctx: &Context,
    ) -> Option<Result<Option<i64>, WriteError>> {
        let opened = tokio::task::block_in_place(|| self.writer.lake.open(topic, partition));
        Some(match opened {
            Ok(at) => {
                self.writer
                    .positions
                    .lock()
                    .unwrap()
                    .insert((topic.to_owned(), partition), at);
                Ok(Some(at.next_offset))
            }
            Err(e) => Err(WriteError {
                permanent: false,
                summary: format!("reading the manifest of {topic}/{partition}: {e}"),
            }),
        })
    }

    fn skipped(&self) {
        metrics().received.inc();
        metrics().skipped.inc();
    }
}

/// `YYYY-MM-DD` of a Unix time in milliseconds, UTC (Howard Hinnant's civil_from_days).
pub fn utc_date(millis: i64) -> String {
    let days = millis.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(root: &std::path::Path, id: &str) -> Writer {
        Writer {
            lake: Lake::new(root, id),
            format: Format::default(),
            tables: [("t".to_string(), Table::Validated)].into(),
            positions: Mutex::new(HashMap::new()),
        }
    }

    /// Validated rows at offsets `from..to` of partition 0.
    fn rows(from: i64, to: i64) -> Vec<RowData> {
        (from..to)
            .map(|o| {
                let t = sample::transaction(o as usize);
                let record = Record::Validated(posflow_schema::TransactionValidated {
                    envelope: posflow_schema::Envelope {
                        received_at: t.transaction_time,
                        mqtt_topic: String::new(),
                        bridge_id: "b".into(),
                        payload_version: 1,
                    },
                    validated_at: t.transaction_time,
                    transaction: t,
                });
                RowData {
                    table: Table::Validated,
                    partition: 0,
                    offset: o,
                    date: "2026-12-04".into(),
                    values: record.into_row(0, o),
                }
            })
            .collect()
    }

    /// Every committed file's offsets, in order: they must be 0..n, each once.
    fn committed_offsets(root: &std::path::Path) -> Vec<i64> {
        let lake = Lake::new(root, "reader");
        let mut out = vec![];
        for v in lake.versions("t", 0).unwrap() {
            for f in v.files {
                out.extend(f.first_offset..=f.last_offset);
            }
        }
        out.sort_unstable();
        out
    }

    /// Two replicas writing one partition for the moment of a rebalance: the old owner's roll
    /// overlaps the new owner's, each loses a commit to the other once, and the lake holds
    /// every offset exactly once, with no restart.
    #[test]
    fn two_writers_of_one_partition_leave_each_offset_once() {
        let root = std::env::temp_dir().join(format!("posflow-lake-{}", uuid::Uuid::new_v4()));
        let (a, b) = (writer(&root, "a"), writer(&root, "b"));
        let all = rows(0, 40);
        let refs = |from: usize, to: usize| all[from..to].iter().collect::<Vec<_>>();
        a.write_partition("t", 0, &refs(0, 10), 10).unwrap();
        // b takes the partition over at 10 and commits 10..25; a, not yet told, still has
        // 10..20 in flight: it loses, finds 25, and writes nothing.
        b.write_partition("t", 0, &refs(10, 25), 25).unwrap();
        a.write_partition("t", 0, &refs(10, 20), 20).unwrap();
        // a's next roll, 20..32, loses nothing new below 25 and writes 25..32; b's 25..40,
        // losing to it, writes 32..40.
        a.write_partition("t", 0, &refs(20, 32), 32).unwrap();
        b.write_partition("t", 0, &refs(25, 40), 40).unwrap();
        assert_eq!(committed_offsets(&root), (0..40).collect::<Vec<_>>());
        let writers: Vec<String> = Lake::new(&root, "reader")
            .versions("t", 0)
            .unwrap()
            .into_iter()
            .map(|v| format!("{}:{}", v.writer, v.next_offset))
            .collect();
        assert_eq!(writers, ["a:10", "b:25", "a:32", "b:40"]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(-1), "1969-12-31");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
        assert_eq!(utc_date(1_764_547_199_999), "2025-11-30");
        assert_eq!(utc_date(1_764_547_200_000), "2025-12-01");
    }
}
