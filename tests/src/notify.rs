//! What the notifier's tests talk to: a real HTTPS webhook receiver that verifies every
//! signature as docs/notifier.md tells merchants to, the SMTP server's maildir, and the
//! notifier's own database schema.

use crate::{bin, free_port, Deployment, Service};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use sha2::Sha256;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How the receiver answers one merchant.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    Accept,
    /// 500 for the first `n` requests of each idempotency key, then 200.
    FailFirst(u32),
    /// Accepts the connection and never answers.
    Hang,
    /// Always this status.
    Status(u16),
    /// 200 after this long.
    Slow(Duration),
    /// 200 with a response body of this many bytes.
    HugeBody(usize),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub merchant: String,
    pub idempotency_key: String,
    pub event_type: String,
    pub attempt: u32,
    pub body: Vec<u8>,
    /// The Posflow-Signature header as sent.
    pub signature: String,
    pub signature_ok: bool,
    pub status: u16,
}

#[derive(Default)]
struct State {
    merchants: HashMap<String, (Vec<u8>, Behaviour)>,
    tries: HashMap<String, u32>,
    received: Vec<Received>,
}

/// An HTTPS webhook receiver on 127.0.0.1 with the local stack's server certificate.
#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let dir = crate::local_tls_dir();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("server.crt"))
                .expect("server.crt (make up)")
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Receiver {
            port,
            state: Arc::default(),
        };
        let state = r.state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        r
    }

    /// Registers a merchant; returns its webhook URL.
    pub fn merchant(&self, id: &str, secret: &str, behaviour: Behaviour) -> String {
        self.state
            .lock()
            .unwrap()
            .merchants
            .insert(id.to_string(), (secret.as_bytes().to_vec(), behaviour));
        format!("https://127.0.0.1:{}/hooks/{id}", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn received_by(&self, merchant: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.merchant == merchant)
            .collect()
    }

    /// Requests answered 2xx, all merchants (cheap: for polling under load).
    pub fn accepted(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| r.status > 0 && r.status < 300)
            .count()
    }

    /// Distinct idempotency keys `merchant` accepted (answered 2xx).
    pub fn delivered_keys(&self, merchant: &str) -> std::collections::HashSet<String> {
        self.received_by(merchant)
            .into_iter()
            .filter(|r| r.status < 300)
            .map(|r| r.idempotency_key)
            .collect()
    }

    /// Waits until `merchant` accepted `n` distinct keys; panics with the count after `within`.
    pub async fn wait_delivered(&self, merchant: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.delivered_keys(merchant).len();
            if got >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{merchant}: {got} of {n} deliveries after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Verifies `Posflow-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` exactly as docs/notifier.md
/// tells merchants: HMAC-SHA256 over `"<t>." + body`, constant-time comparison, `t` within five
/// minutes, and any one `v1` matching (two are sent during a secret rotation's overlap).
pub fn verify_signature(secret: &[u8], header: &str, body: &[u8], now: SystemTime) -> bool {
    let mut t = None;
    let mut v1s = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1s.push(v.to_string()),
            _ => {}
        }
    }
    let Some(t) = t else {
        return false;
    };
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    v1s.iter().any(|v1| {
        let Ok(expected) = (0..v1.len() / 2)
            .map(|i| u8::from_str_radix(v1.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
        else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let merchant = req
        .uri()
        .path()
        .strip_prefix("/hooks/")
        .unwrap_or_default()
        .to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (signature, key, event_type) = (
        header("posflow-signature"),
        header("idempotency-key"),
        header("posflow-event-type"),
    );
    let attempt = header("posflow-attempt").parse().unwrap_or(0);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let (secret, behaviour) = match state.lock().unwrap().merchants.get(&merchant) {
        Some((s, b)) => (s.clone(), *b),
        None => (vec![], Behaviour::Status(404)),
    };
    let signature_ok = verify_signature(&secret, &signature, &body, SystemTime::now());
    let status = match behaviour {
        _ if !signature_ok => 401,
        Behaviour::Accept => 200,
        Behaviour::Status(s) => s,
        Behaviour::FailFirst(n) => {
            let mut st = state.lock().unwrap();
            let tries = st.tries.entry(key.clone()).or_default();
            *tries += 1;
            if *tries <= n {
                500
            } else {
                200
            }
        }
        Behaviour::Hang => 0, // recorded, then never answered
        Behaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            200
        }
        Behaviour::HugeBody(_) => 200,
    };
    state.lock().unwrap().received.push(Received {
        merchant,
        idempotency_key: key,
        event_type,
        attempt,
        body,
        signature,
        signature_ok,
        status,
    });
    if status == 0 {
        std::future::pending::<()>().await;
    }
    let body = match behaviour {
        Behaviour::HugeBody(n) if signature_ok => Bytes::from(vec![b'x'; n]),
        _ => Bytes::new(),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    Ok(response)
}

/// One email from the SMTP server's maildir.
#[derive(Debug, Clone)]
pub struct Email {
    pub headers: HashMap<String, String>,
    pub text: String,
    /// (file name, decoded bytes)
    pub attachments: Vec<(String, Vec<u8>)>,
}

/// Every email in the local SMTP server's maildir whose To or Cc contains `to`.
pub fn mails_to(to: &str) -> Vec<Email> {
    let dir = PathBuf::from(
        std::env::var("POSFLOW_SMTP_MAILDIR")
            .unwrap_or_else(|_| format!("{}/../.stack/smtp/maildir", env!("CARGO_MANIFEST_DIR"))),
    );
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(raw) = std::fs::read(e.path()) else {
                continue;
            };
            let mail = parse_mail(&String::from_utf8_lossy(&raw));
            if mail.headers.get("to").is_some_and(|t| t.contains(to)) {
                out.push(mail);
            }
        }
    }
    out
}

/// Waits until `pred` holds for the mails to `to`; panics with what arrived after `within`.
pub async fn wait_for_mail(
    to: &str,
    within: Duration,
    pred: impl Fn(&[Email]) -> bool,
) -> Vec<Email> {
    let deadline = Instant::now() + within;
    loop {
        let mails = mails_to(to);
        if pred(&mails) {
            return mails;
        }
        assert!(
            Instant::now() < deadline,
            "mail to {to}: condition not met after {within:?}; {} mails: {:?}",
            mails.len(),
            mails
                .iter()
                .map(|m| m.headers.get("subject"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn split_head(s: &str) -> (HashMap<String, String>, &str) {
    let (head, body) = s
        .split_once("\r\n\r\n")
        .or_else(|| s.split_once("\n\n"))
        .unwrap_or((s, ""));
    let mut headers: HashMap<String, String> = HashMap::new();
    let mut last: Option<String> = None;
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(k) = &last {
                headers.get_mut(k).unwrap().push_str(line.trim_start());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            headers.insert(k.clone(), v.trim().to_string());
            last = Some(k);
        }
    }
    (headers, body)
}

fn decode(body: &str, encoding: Option<&String>) -> Vec<u8> {
    use base64::Engine;
    match encoding.map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(body.split_whitespace().collect::<String>())
            .expect("base64 part"),
        Some("quoted-printable") => {
            let joined = body.replace("=\r\n", "").replace("=\n", "");
            let b = joined.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'=' && i + 2 < b.len() {
                    if let Ok(v) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                }
                out.push(b[i]);
                i += 1;
            }
            out
        }
        _ => body.as_bytes().to_vec(),
    }
}

/// Enough MIME for our own mails: headers, a text part, base64/quoted-printable attachments.
fn parse_mail(raw: &str) -> Email {
    let (headers, body) = split_head(raw);
    let content_type = headers.get("content-type").cloned().unwrap_or_default();
    let mut mail = Email {
        headers: headers.clone(),
        text: String::new(),
        attachments: vec![],
    };
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string());
    let Some(boundary) = boundary else {
        mail.text =
            String::from_utf8_lossy(&decode(body, headers.get("content-transfer-encoding")))
                .into_owned();
        return mail;
    };
    for part in body.split(&format!("--{boundary}")).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let (h, b) = split_head(part.trim_start_matches(['\r', '\n']));
        let bytes = decode(b, h.get("content-transfer-encoding"));
        let disposition = h.get("content-disposition").cloned().unwrap_or_default();
        if disposition.starts_with("attachment") {
            let name = disposition
                .split(';')
                .find_map(|p| {
                    // Long names come as RFC 2231 continuations (filename*0=...), one part here.
                    let p = p.trim();
                    p.strip_prefix("filename=")
                        .or_else(|| p.strip_prefix("filename*0="))
                })
                .unwrap_or_default()
                .trim_matches('"')
                .to_string();
            mail.attachments.push((name, bytes));
        } else {
            mail.text += &String::from_utf8_lossy(&bytes);
        }
    }
    mail
}

impl Deployment {
    /// This deployment with its own PostgreSQL schema (search_path), so the notifier's outbox
    /// and preferences — shared by every replica by design — are not shared with other tests.
    /// Storage's and the notifier's migrations are applied there.
    pub async fn with_own_schema(&self) -> Deployment {
        let schema = format!("t_{}", self.prefix.trim_end_matches('.'));
        let client = crate::db(&self.stack).await;
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .unwrap();
        let mut d = self.clone();
        let sep = if d.stack.database_url.contains('?') {
            '&'
        } else {
            '?'
        };
        d.stack.database_url = format!(
            "{}{sep}options=-csearch_path%3D{schema}",
            d.stack.database_url
        );
        for binary in ["posflow-storage", "posflow-notifier"] {
            d.cli(binary, &["migrate"]).expect_ok();
        }
        d
    }

    /// Runs a binary's short command with this deployment's environment.
    pub fn cli(&self, binary: &str, args: &[&str]) -> CliRun {
        let out = Command::new(bin(binary))
            .args(args)
            .envs(crate::stage_env(binary, args, &self.env()))
            .env("POSFLOW_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
            .output()
            .unwrap_or_else(|e| panic!("{binary}: {e}"));
        CliRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Writes a preferences file and applies it with `posflow-notifier merchants apply`.
    pub fn apply_merchants(&self, toml: &str) {
        let path = std::env::temp_dir().join(format!(
            "posflow-e2e-merchants-{}.toml",
            rand::random::<u32>()
        ));
        std::fs::write(&path, toml).unwrap();
        self.cli(
            "posflow-notifier",
            &["merchants", "apply", "--file", path.to_str().unwrap()],
        )
        .expect_ok();
    }

    /// A notifier replica trusting the local CA and mailing the local SMTP server, with `extra` flags.
    pub async fn start_notifier(&self, instance: &str, extra: &[&str]) -> Service {
        let mut args = notifier_args(instance);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Service::start("posflow-notifier", &self.env(), &args).await
    }
}

/// A notifier replica's flags on the local stack: its instance id, the local CA for webhooks,
/// the local SMTP server, preferences re-read every second.
pub fn notifier_args(instance: &str) -> Vec<String> {
    let ca = crate::local_tls_dir().join("ca.crt");
    [
        "--instance-id",
        instance,
        "--webhook-ca-file",
        &ca.display().to_string(),
        "--smtp-url",
        &crate::local_smtp_url(),
        "--preferences-refresh-secs",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[derive(Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn expect_ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "failed: {}{}", self.stdout, self.stderr);
        self
    }
}

/// A validated transaction of `merchant`: `kind` of `amount_minor` `currency`, received now.
pub fn validated(
    id: &str,
    merchant: &str,
    kind: posflow_schema::TransactionType,
    amount_minor: i64,
    currency: &str,
) -> posflow_schema::TransactionValidated {
    let mut t = crate::received_sale(id, &format!("{merchant}-T1"), 1).transaction;
    let received = crate::received_sale(id, &t.terminal_id, 1).envelope;
    t.merchant_id = merchant.to_string();
    t.kind = kind;
    t.amount_minor = amount_minor;
    t.currency = currency.to_string();
    if kind != posflow_schema::TransactionType::Sale {
        t.original_transaction_id = Some(format!("{id}-original"));
    }
    posflow_schema::TransactionValidated {
        envelope: received,
        transaction: t,
        validated_at: posflow_schema::now_millis(),
    }
}

/// Every outcome on the status topic, once `expected` have arrived and `quiet` passed with no more.
pub async fn outcomes(
    d: &Deployment,
    expected: usize,
    within: Duration,
    quiet: Duration,
) -> Vec<posflow_schema::NotificationOutcome> {
    d.read_avro("pos.notifications.status", expected, within, quiet)
        .await
}
