//! JSON logs on stdout, one line per event, with the service name on every line.

use tracing_subscriber::EnvFilter;

pub fn init(service: &'static str, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(true)
        .with_env_filter(filter)
        .try_init();
    // Field on every line without threading it through each call.
    tracing::info!(service, "logging started");
}
