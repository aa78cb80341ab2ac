//! Metrics live in the process-wide Prometheus registry. Each stage defines its own metrics
//! (`posflow_<stage>_*`) with these helpers; the few every stage shares — same name everywhere,
//! told apart by a `stage` label — are on [`Shared`]. docs/metrics.md is the catalogue, and an
//! e2e test holds every service to it. Labels are low-cardinality by rule: stage, reason,
//! outcome, topic, partition — never a card token, PAN, terminal id or raw error text.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};
use std::sync::OnceLock;

static STAGE: OnceLock<&'static str> = OnceLock::new();

/// Names this process's stage for the shared metrics; `posflow_runtime::main` calls it first.
pub fn set_stage(stage: &'static str) {
    let _ = STAGE.set(stage);
}

/// The metrics every stage shares: one name each, told apart by the `stage` label. Each is
/// registered on first use, so a stage exposes only the ones it records.
pub struct Shared;

fn stage() -> &'static str {
    STAGE.get().copied().unwrap_or("unknown")
}

fn shared_histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        Histogram::with_opts(
            HistogramOpts::new(name, help)
                .const_label("stage", stage())
                .buckets(buckets.to_vec()),
        )
        .expect("valid metric name"),
    )
}

impl Shared {
    /// Terminal time (the transaction's own timestamp) → this stage done with it.
    pub fn end_to_end() -> &'static Histogram {
        static M: OnceLock<Histogram> = OnceLock::new();
        M.get_or_init(|| {
            shared_histogram(
                "posflow_end_to_end_seconds",
                "From the terminal's transaction time to this stage being done with it",
                END_TO_END_BUCKETS,
            )
        })
    }

    /// One record's (for batch writers: one batch's) processing time in this stage.
    pub fn processing() -> &'static Histogram {
        static M: OnceLock<Histogram> = OnceLock::new();
        M.get_or_init(|| {
            shared_histogram(
                "posflow_processing_seconds",
                "Time this stage spends on one record (batch writers: on one batch)",
                LATENCY_BUCKETS,
            )
        })
    }

    /// Records per batch: per Kafka transaction, database write or outbox insert.
    pub fn batch_size() -> &'static Histogram {
        static M: OnceLock<Histogram> = OnceLock::new();
        M.get_or_init(|| {
            shared_histogram(
                "posflow_batch_size",
                "Records per batch (Kafka transaction, database write, outbox insert)",
                &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
            )
        })
    }

    /// Records not yet consumed, per partition this replica owns.
    pub fn consumer_lag() -> &'static IntGaugeVec {
        static M: OnceLock<IntGaugeVec> = OnceLock::new();
        M.get_or_init(|| {
            register(
                IntGaugeVec::new(
                    Opts::new(
                        "posflow_consumer_lag",
                        "Records behind the end of the partition, per partition this replica consumes",
                    )
                    .const_label("stage", stage()),
                    &["topic", "partition"],
                )
                .expect("valid metric name"),
            )
        })
    }
}

/// Observes `transaction_time_ms` (the terminal's clock) → now in [`Shared::end_to_end`].
/// A terminal clock ahead of ours counts as zero.
pub fn observe_end_to_end(transaction_time_ms: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Shared::end_to_end().observe((now - transaction_time_ms).max(0) as f64 / 1000.0);
}

/// End to end spans minutes when a terminal stored transactions offline and sent them later.
pub const END_TO_END_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // A second registration (a stage started twice in one test process) keeps the first.
    let _ = prometheus::default_registry().register(Box::new(c.clone()));
    c
}

pub fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("valid metric name"))
}

pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name"))
}

pub fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).expect("valid metric name"))
}

/// Latency buckets from 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric name"),
    )
}

pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    register(
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("valid metric name"),
    )
}

/// The Prometheus text exposition of everything registered.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
