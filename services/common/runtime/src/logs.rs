//! JSON logs on stdout, one line per event, with the service name on the first line. A log line
//! about one record carries `trace_id` (see `trace::trace_id`) when tracing is on.
//!
//! When tracing is on, the same subscriber feeds the OpenTelemetry layer, which sees only the
//! per-record spans (target `posflow::trace`) and never a log event; the JSON layer never sees
//! those spans, so tracing adds no log formatting per record.

use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::prelude::*;

/// An error with its causes ("client error (Connect): invalid peer certificate: UnknownIssuer"):
/// many libraries' own message does not say why (hyper, tokio-postgres), their sources do.
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        text += &format!(": {c}");
        next = c.source();
    }
    text
}

/// Starts logging, and tracing when `otlp_endpoint` is set. Keep the returned exporter until
/// exit: dropping it flushes the spans still queued.
pub fn init(
    service: &'static str,
    filter: &str,
    otlp_endpoint: Option<&str>,
    sample_ratio: f64,
) -> Result<Option<crate::trace::Exporter>, String> {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let not_records = filter_fn(|m| !(m.is_span() && m.target() == crate::trace::TARGET));
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(true)
        .with_filter(filter)
        .with_filter(not_records);
    let registry = tracing_subscriber::registry().with(fmt);
    let exporter = match otlp_endpoint {
        None => {
            let _ = registry.try_init();
            None
        }
        Some(endpoint) => {
            let (exporter, layer) = crate::trace::exporter(service, endpoint, sample_ratio)?;
            let only_records = filter_fn(|m| m.target() == crate::trace::TARGET);
            let _ = registry.with(layer.with_filter(only_records)).try_init();
            Some(exporter)
        }
    };
    tracing::info!(service, tracing = exporter.is_some(), "logging started");
    Ok(exporter)
}
