//! Webhooks: an HTTPS POST per delivery, signed, with its idempotency key.
//!
//! Signature (docs/notifier.md has a verification snippet):
//!   `Posflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`
//! The timestamp is signed with the body so a captured request cannot be replayed later: the
//! merchant rejects a `t` older than a few minutes. It changes on every attempt; the
//! idempotency key and the body do not.

use crate::egress::{Egress, GuardedResolver, Refused};
use crate::policy::{parse_retry_after, Answer};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{pem::PemObject, CertificateDer};
use sha2::Sha256;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const SIGNATURE_HEADER: &str = "posflow-signature";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// `t=<unix>,v1=<hex>[,v1=<hex>…]` for `body` signed at `unix`, one `v1` per secret (two
/// during a rotation's overlap: a receiver accepts the request if any matches its secret).
pub fn signature(secrets: &[&[u8]], unix: u64, body: &[u8]) -> String {
    let mut header = format!("t={unix}");
    for secret in secrets {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(unix.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        header += ",v1=";
        for b in mac.finalize().into_bytes() {
            header += &format!("{b:02x}");
        }
    }
    header
}

/// Classifies an HTTP status (and Retry-After) into an answer.
pub fn classify(status: u16, retry_after: Option<&str>, now: SystemTime) -> Answer {
    match status {
        200..=299 => Answer::Delivered,
        408 | 429 | 500..=599 => Answer::Retry {
            error: format!("HTTP {status}"),
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        _ => Answer::Refused {
            error: format!("HTTP {status}"),
        },
    }
}

/// The most of a response body read (and thrown away): 64 KiB. A merchant's endpoint has
/// nothing to tell us in a body; a larger one fails the attempt.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// One request to send.
pub struct Request<'a> {
    pub url: &'a str,
    /// The current secret, then the previous one during a rotation's overlap.
    pub secrets: &'a [&'a [u8]],
    pub idempotency_key: &'a str,
    pub event_type: &'a str,
    pub attempt: i32,
    pub content_type: &'a str,
    pub body: &'a [u8],
}

#[derive(Clone)]
pub struct Sender {
    client: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    timeout: Duration,
    egress: Arc<Egress>,
}

impl Sender {
    /// A pooled HTTPS client trusting the system's roots plus `extra_ca` (a PEM bundle, for
    /// merchants — or tests — behind a private CA), keeping up to `idle_per_host` connections
    /// open per endpoint: a TLS handshake costs far more CPU than the request it carries.
    /// Connections go only where `egress` allows (egress.rs).
    pub fn new(
        extra_ca: Option<&Path>,
        timeout: Duration,
        idle_per_host: usize,
        egress: Egress,
    ) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert); // a malformed system certificate is not ours to fail on
        }
        if let Some(path) = extra_ca {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("--webhook-ca-file {}: {e}", path.display()))?
            {
                roots.add(cert.map_err(|e| anyhow::anyhow!("--webhook-ca-file: {e}"))?)?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let egress = Arc::new(egress);
        let mut http = HttpConnector::new_with_resolver(GuardedResolver(egress.clone()));
        http.enforce_http(false); // https URLs: TLS wraps this connector
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(idle_per_host)
            .build(https);
        Ok(Sender {
            client,
            timeout,
            egress,
        })
    }

    pub async fn send(&self, r: &Request<'_>) -> Answer {
        if let Some(refused) = self.literal_refusal(r.url) {
            return refused;
        }
        let now = SystemTime::now();
        let unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let request = hyper::Request::post(r.url)
            .header("content-type", r.content_type)
            .header(
                "user-agent",
                concat!("posflow-notifier/", env!("CARGO_PKG_VERSION")),
            )
            .header(IDEMPOTENCY_HEADER, r.idempotency_key)
            .header("posflow-event-type", r.event_type)
            .header("posflow-attempt", r.attempt.to_string())
            .header(SIGNATURE_HEADER, signature(r.secrets, unix, r.body))
            .body(Full::new(Bytes::copy_from_slice(r.body)));
        let request = match request {
            Ok(req) => req,
            Err(e) => {
                return Answer::Refused {
                    error: format!("bad request: {e}"),
                }
            }
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            Ok::<_, hyper_util::client::legacy::Error>(drain(response).await)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(Err(too_large))) => too_large,
            Ok(Ok(Ok((status, retry_after)))) => classify(status, retry_after.as_deref(), now),
            // An address the guard refused will be refused again: not retried.
            Ok(Err(e)) if refused(&e) => Answer::Refused {
                error: connection_error(&e),
            },
            Ok(Err(e)) => Answer::Retry {
                error: connection_error(&e),
                retry_after: None,
            },
            Err(_) => Answer::Retry {
                error: format!("timed out after {:?}", self.timeout),
                retry_after: None,
            },
        }
    }
}

impl Sender {
    /// The connector skips its resolver for an IP literal: judge those here.
    fn literal_refusal(&self, url: &str) -> Option<Answer> {
        let host = url.parse::<hyper::Uri>().ok()?.host()?.to_string();
        let ip = host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .ok()?;
        let why = self.egress.refusal(ip)?;
        Some(Answer::Refused {
            error: format!("egress refused: {why}"),
        })
    }
}

/// The status and Retry-After of a response whose body is read and dropped, so the connection
/// goes back to the pool — at most MAX_RESPONSE_BODY of it: past that the body (and its
/// connection) is dropped and the attempt failed, so an endpoint cannot make us hold what it
/// sends.
async fn drain(
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<(u16, Option<String>), Answer> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = response.into_body();
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        read += frame.data_ref().map_or(0, Bytes::len);
        if read > MAX_RESPONSE_BODY {
            return Err(Answer::Retry {
                error: format!("HTTP {status} with a response body over {MAX_RESPONSE_BODY} bytes"),
                retry_after: None,
            });
        }
    }
    Ok((status, retry_after))
}

fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<Refused>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The error with its causes (hyper's top-level message alone says "client error (Connect)").
fn connection_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s += ": ";
        s += &c.to_string();
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_over_timestamp_dot_body() {
        // Python: hmac.new(b"whsec_test_0123456789", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature(&[b"whsec_test_0123456789"], 1_700_000_000, b"{}"),
            "t=1700000000,v1=875e3fae219931c6a6bb1177e37553968753cdb5e5fc0294caa82dbfaec6608c"
        );
        // During a rotation: the new secret's signature, then the old one's.
        assert_eq!(
            signature(&[b"new", b"whsec_test_0123456789"], 1_700_000_000, b"{}"),
            format!(
                "t=1700000000,v1={},v1=875e3fae219931c6a6bb1177e37553968753cdb5e5fc0294caa82dbfaec6608c",
                &signature(&[b"new"], 1_700_000_000, b"{}")["t=1700000000,v1=".len()..]
            )
        );
    }

    #[test]
    fn statuses_map_to_the_retry_policy() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(classify(204, None, now), Answer::Delivered);
        for s in [500, 502, 503, 408, 429] {
            assert!(
                matches!(classify(s, None, now), Answer::Retry { .. }),
                "{s}"
            );
        }
        for s in [301, 400, 401, 404, 410, 422] {
            assert!(
                matches!(classify(s, None, now), Answer::Refused { .. }),
                "{s}"
            );
        }
        assert_eq!(
            classify(429, Some("7"), now),
            Answer::Retry {
                error: "HTTP 429".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }
}
