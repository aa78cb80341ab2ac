//! Kafka header names posflow writes. Analysts and the replay tooling read them.

/// Machine-readable reason code on dead-letter and rejected records.
pub const REASON: &str = "posflow-reason";
/// The MQTT topic a record arrived on.
pub const MQTT_TOPIC: &str = "posflow-mqtt-topic";
/// When the bridge received it, milliseconds since the epoch, decimal.
pub const RECEIVED_AT: &str = "posflow-received-at";
/// The W3C trace context, passed through from the terminal.
pub const TRACEPARENT: &str = "traceparent";

/// `h` with the reason code header added (dead letters, rejections).
pub fn with_reason(
    h: rdkafka::message::OwnedHeaders,
    reason: &str,
) -> rdkafka::message::OwnedHeaders {
    h.insert(rdkafka::message::Header {
        key: REASON,
        value: Some(reason.as_bytes()),
    })
}
