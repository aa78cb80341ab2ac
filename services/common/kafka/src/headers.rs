//! Kafka header names posflow writes. Analysts and the replay tooling read them.

/// Machine-readable reason code on dead-letter and rejected records.
pub const REASON: &str = "posflow-reason";
/// The MQTT topic a record arrived on.
pub const MQTT_TOPIC: &str = "posflow-mqtt-topic";
/// When the bridge received it, milliseconds since the epoch, decimal.
pub const RECEIVED_AT: &str = "posflow-received-at";
/// The W3C trace context, passed through from the terminal.
pub const TRACEPARENT: &str = "traceparent";
/// Vendor trace state that goes with `traceparent` (W3C), passed through from the terminal.
pub const TRACESTATE: &str = "tracestate";

/// Whether a terminal's MQTT user property travels on as a Kafka header: only the W3C trace
/// context, within its size limits (traceparent 55 bytes, tracestate 512). Everything else a
/// terminal sends as a property — `posflow-*` names above all — is dropped, so every header a
/// reader finds that is not trace context was written by posflow.
pub fn from_terminal(name: &str, value: &str) -> bool {
    match name {
        TRACEPARENT => value.len() <= 55,
        TRACESTATE => value.len() <= 512,
        _ => false,
    }
}

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

/// The value of header `key`, if present.
pub fn get<'a>(h: Option<&'a rdkafka::message::OwnedHeaders>, key: &str) -> Option<&'a [u8]> {
    use rdkafka::message::Headers;
    h?.iter().find(|x| x.key == key).and_then(|x| x.value)
}

/// The span for one consumed record at `name`: a child of the record's `traceparent`
/// (`Span::none()` when tracing is off — see `posflow_runtime::trace`).
pub fn record_span(
    name: &'static str,
    h: Option<&rdkafka::message::OwnedHeaders>,
) -> tracing::Span {
    // Checked first so that, off, not even the headers are searched.
    if !posflow_runtime::trace::enabled() {
        return tracing::Span::none();
    }
    posflow_runtime::trace::record_span(name, get(h, TRACEPARENT))
}

/// `h` with its `traceparent` naming `span`, so the next stage's span is its child. Unchanged
/// when tracing is off: the context received is passed on as it came.
pub fn with_trace(
    h: rdkafka::message::OwnedHeaders,
    span: &tracing::Span,
) -> rdkafka::message::OwnedHeaders {
    use rdkafka::message::{Header, Headers, OwnedHeaders};
    let Some(tp) = posflow_runtime::trace::traceparent(span) else {
        return h;
    };
    let mut out = OwnedHeaders::new_with_capacity(h.count() + 1);
    for x in h.iter().filter(|x| x.key != TRACEPARENT) {
        out = out.insert(x);
    }
    out.insert(Header {
        key: TRACEPARENT,
        value: Some(tp.as_bytes()),
    })
}
