//! Distributed tracing: one trace per transaction across every stage.
//!
//! The W3C `traceparent` travels with the record — an MQTT 5 user property from the terminal,
//! then a Kafka header on every topic. A stage opens one span per record as a child of the
//! context it received (or a new trace root when there is none), keeps it while it works on the
//! record, and writes that span's context as the `traceparent` of what it produces, so the next
//! stage's span is a child of this one: MQTT receive → Kafka produce → validate → store / fraud / notify.
//!
//! Off unless `--otlp-endpoint` is set. Off costs nothing on the hot path: [`record_span`]
//! returns `Span::none()` without allocating, and stages pass the incoming `traceparent` through
//! untouched, so a traced stage downstream still joins the terminal's trace. On, spans go to the
//! OTLP/HTTP endpoint in batches from a background thread (the SDK's batch processor; its queue
//! drops spans rather than slow a stage down — `OTEL_BSP_*` variables tune it).

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of per-record spans: the only spans the OpenTelemetry layer exports.
pub const TARGET: &str = "posflow::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported (an OTLP endpoint is configured).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Exporting spans; dropping it flushes what is queued (bounded by the exporter's timeout).
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("tracing: flushing spans at exit failed: {e}");
        }
    }
}

/// Builds the exporter to `endpoint` (the collector's OTLP/HTTP base URL; `/v1/traces` is
/// appended) and the `tracing` layer that feeds it. Traces started here are kept with
/// probability `sample_ratio`; a trace the terminal started follows the terminal's decision.
pub fn exporter<S>(
    service: &'static str,
    endpoint: &str,
    sample_ratio: f64,
) -> Result<(Exporter, impl tracing_subscriber::Layer<S>), String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry_otlp::WithExportConfig;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_tracked_inactivity(false)
        .with_threads(false);
    ENABLED.store(true, Ordering::Relaxed);
    Ok((Exporter { provider }, layer))
}

/// A span for one record: a child of `traceparent` (the previous hop's W3C context) or, without
/// a valid one, the root of a new trace. `Span::none()` when tracing is off.
pub fn record_span(name: &'static str, traceparent: Option<&[u8]>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span =
        tracing::info_span!(target: TARGET, "record", otel.name = name, otel.kind = "consumer");
    if let Some(parent) = traceparent.and_then(parse) {
        let _ = span.set_parent(parent);
    }
    span
}

/// `span`'s trace id (32 hex digits), for a log line about the record: `None` when tracing is
/// off, which a log field of type `Option` leaves out.
pub fn trace_id(span: &Span) -> Option<String> {
    if span.is_none() {
        return None;
    }
    let sc = span.context().span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// A child of `parent` for a later step of the same record (the bridge's Kafka produce).
pub fn child_span(name: &'static str, parent: &Span) -> Span {
    if parent.is_none() {
        return Span::none();
    }
    tracing::info_span!(target: TARGET, parent: parent, "step", otel.name = name, otel.kind = "producer")
}

/// The W3C `traceparent` naming `span` as the parent of the next hop; `None` when tracing is
/// off or the span was not sampled into a valid context.
pub fn traceparent(span: &Span) -> Option<String> {
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Parses a W3C `traceparent`; `None` for anything malformed (a new trace starts instead).
fn parse(value: &[u8]) -> Option<opentelemetry::Context> {
    let value = std::str::from_utf8(value).ok()?;
    let carrier = HashMap::from([("traceparent".to_string(), value.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_valid_traceparents() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parse(ok).expect("valid");
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // All-zero trace and span ids are invalid in W3C trace context.
        let zero_trace = format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32));
        let zero_span = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", "0".repeat(16));
        for bad in [
            &b"garbage"[..],
            zero_trace.as_bytes(),
            zero_span.as_bytes(),
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn off_means_no_span_and_no_header() {
        assert!(!enabled());
        let s = record_span(
            "x",
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert!(s.is_none());
        assert!(child_span("y", &s).is_none());
        assert_eq!(traceparent(&s), None);
        assert_eq!(trace_id(&s), None);
    }
}
