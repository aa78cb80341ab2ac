//! The bridge's metrics, all in one place (docs/metrics.md).

use posflow_runtime::metrics::{counter, counter_vec, gauge, histogram, LATENCY_BUCKETS};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use std::sync::OnceLock;

pub struct Metrics {
    pub received: IntCounter,
    pub produced: IntCounter,
    pub acknowledged: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub produce_errors: IntCounter,
    pub in_flight: IntGauge,
    pub waiting: IntGauge,
    pub over_receive_maximum: IntCounter,
    pub read_gate_closed: IntCounter,
    pub idle_resubscribes: IntCounter,
    pub repeats: IntCounter,
    pub throttled: IntCounterVec,
    pub recent_ids: IntGauge,
    pub registry_terminals: IntGauge,
    pub ack_latency: Histogram,
}

pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        received: counter("posflow_bridge_received_total", "MQTT messages received"),
        produced: counter(
            "posflow_bridge_produced_total",
            "Transactions Kafka confirmed on the raw topic",
        ),
        acknowledged: counter(
            "posflow_bridge_acknowledged_total",
            "MQTT messages acknowledged (PUBACK) after Kafka confirmed them",
        ),
        dead_lettered: counter_vec(
            "posflow_bridge_dead_lettered_total",
            "Messages sent to the dead-letter topic, by reason",
            &["reason"],
        ),
        produce_errors: counter(
            "posflow_bridge_produce_errors_total",
            "Kafka sends that failed and were retried",
        ),
        in_flight: gauge(
            "posflow_bridge_in_flight",
            "Messages in the pipeline: taken from the hand-off, not yet acknowledged",
        ),
        waiting: gauge(
            "posflow_bridge_waiting",
            "Messages read from the broker and waiting for a place in the pipeline",
        ),
        read_gate_closed: counter(
            "posflow_bridge_read_gate_closed_total",
            "Times the hand-off filled and the bridge stopped reading the MQTT socket",
        ),
        idle_resubscribes: counter(
            "posflow_bridge_idle_resubscribes_total",
            "SUBSCRIBEs sent again after --idle-resubscribe seconds without a message",
        ),
        over_receive_maximum: counter(
            "posflow_bridge_over_receive_maximum_total",
            "Messages the broker sent while more than our receive maximum were unacknowledged",
        ),
        repeats: counter(
            "posflow_bridge_repeats_total",
            "Transactions received again after Kafka had them; answered, not produced again",
        ),
        recent_ids: gauge(
            "posflow_bridge_recent_ids",
            "Transaction ids in the recent-id cache",
        ),
        registry_terminals: gauge(
            "posflow_bridge_registry_terminals",
            "Terminals in this replica's copy of the terminal registry (any status)",
        ),
        throttled: counter_vec(
            "posflow_bridge_throttled_total",
            "Messages above their terminal's rate limit, by policy (delay or reject)",
            &["policy"],
        ),
        ack_latency: histogram(
            "posflow_bridge_ack_latency_seconds",
            "MQTT receive to PUBACK",
            LATENCY_BUCKETS,
        ),
    })
}
