//! Configuration conventions: every flag also reads `POSFLOW_<NAME>`; a stage checks its whole
//! configuration at start and reports every problem at once, not the first.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Flags every stage takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Address of the /healthz, /readyz and /metrics endpoint.
    #[arg(long, env = "POSFLOW_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    pub http_addr: SocketAddr,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `info,rdkafka=warn`.
    #[arg(long, env = "POSFLOW_LOG", default_value = "info")]
    pub log_level: String,
    /// Seconds to finish in-flight work after SIGTERM; what is left is redelivered to the next
    /// owner. Keep it below the orchestrator's termination grace period.
    #[arg(long, env = "POSFLOW_DRAIN_TIMEOUT", default_value_t = 20)]
    pub drain_timeout: u64,
    /// OpenTelemetry collector, OTLP over HTTP (base URL, e.g. `http://otel-collector:4318`;
    /// spans go to `/v1/traces`). Unset: no tracing, and no tracing cost.
    #[arg(long, env = "POSFLOW_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of the traces this stage starts that are kept (0–1). A trace begun upstream
    /// (a terminal's `traceparent`) keeps the upstream decision.
    #[arg(long, env = "POSFLOW_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,
}

impl CommonArgs {
    /// Records every problem with the common flags.
    pub fn check(&self, e: &mut ConfigErrors) {
        e.check(
            (0.0..=1.0).contains(&self.trace_sample_ratio),
            "--trace-sample-ratio must be between 0 and 1",
        );
        if let Some(url) = &self.otlp_endpoint {
            e.check(
                // Plain HTTP on purpose: the exporter talks to a collector beside the pod (agent
                // or sidecar), which owns TLS to the backend; no TLS stack is built in for it.
                url.starts_with("http://") && url.len() > "http://".len(),
                format!("--otlp-endpoint must be an http:// URL of a collector, got {url:?}"),
            );
        }
    }
    pub fn drain(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.drain_timeout)
    }
}

/// Every configuration problem found, one per line.
#[derive(Debug, Default)]
pub struct ConfigErrors(Vec<String>);

impl ConfigErrors {
    pub fn new() -> Self {
        Self::default()
    }
    /// Records `message` unless `ok`.
    pub fn check(&mut self, ok: bool, message: impl Into<String>) {
        if !ok {
            self.0.push(message.into());
        }
    }
    /// Records "`flag` must be a..=b (got v)" unless `value` is in `range`.
    pub fn in_range(&mut self, flag: &str, value: u64, range: std::ops::RangeInclusive<u64>) {
        let (a, b) = (range.start(), range.end());
        self.check(
            range.contains(&value),
            format!("{flag} must be {a}..={b} (got {value})"),
        );
    }
    pub fn push(&mut self, message: impl Into<String>) {
        self.0.push(message.into());
    }
    pub fn extend(&mut self, other: ConfigErrors) {
        self.0.extend(other.0);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `Ok(value)` when nothing was recorded.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A secret from configuration (password, key). Debug and Display print `****`; the value is
/// reachable only through [`Secret::expose`], so it cannot end up in a log line by accident.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// Replaces the password of a `scheme://user:password@host/...` URL with `****`, for logs.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            if let Some((user, _)) = creds.split_once(':') {
                return format!("{scheme}://{user}:****@{host}");
            }
        }
    }
    url.to_string()
}

/// Reads and parses an optional configuration file named by `flag` (rules files): `None` gives
/// `T::default()`. A file that cannot be read or parsed adds every problem to `errors`, each
/// prefixed with the flag and path, and gives the default so the other checks still run.
pub fn load_file<T: Default>(
    path: Option<&std::path::Path>,
    flag: &str,
    parse: impl FnOnce(&str) -> Result<T, Vec<String>>,
    errors: &mut ConfigErrors,
) -> T {
    let Some(path) = path else {
        return T::default();
    };
    let problems = match std::fs::read_to_string(path) {
        Err(e) => vec![e.to_string()],
        Ok(text) => match parse(&text) {
            Ok(v) => return v,
            Err(problems) => problems,
        },
    };
    for p in problems {
        errors.push(format!("{flag} {}: {p}", path.display()));
    }
    T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "**** ****");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn errors_list_every_problem() {
        let mut e = ConfigErrors::new();
        e.check(true, "fine");
        e.check(false, "first");
        e.push("second");
        assert_eq!(e.to_string(), "  - first\n  - second");
        assert!(e.into_result(()).is_err());
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("postgres://u:pw@h:1/db"),
            "postgres://u:****@h:1/db"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}
