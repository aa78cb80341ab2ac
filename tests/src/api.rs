//! The merchant API under test: a deployment with its own PostgreSQL schema (so its audit chain
//! and data are its own), the API served over HTTPS with the local stack's certificate, an
//! HTTPS client, keys made as an operator would, and stored records seeded by SQL.

use crate::{free_port, Deployment, Service};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use posflow_api::auth::Role;
use rustls::pki_types::{pem::PemObject, CertificateDer};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The cursor-signing key the tests give the API.
pub const CURSOR_KEY: &str = "e2e-cursor-key-0123456789abcdef0123456789";

pub struct Api {
    pub d: Deployment,
    pub service: Service,
    /// `https://127.0.0.1:<port>`
    pub base: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A response: status, headers, and the body as JSON (`Null` if it was not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub json: Value,
}

impl Deployment {
    /// This deployment in its own schema with the API's migrations too.
    pub async fn with_api_schema(&self) -> Deployment {
        let d = self.with_own_schema().await;
        d.cli("posflow-api", &["migrate"]).expect_ok();
        d
    }
}

impl Api {
    /// Starts posflow-api on `d` (see `Deployment::with_api_schema`) with `extra` flags.
    pub async fn start(d: &Deployment, extra: &[&str]) -> Api {
        let port = free_port();
        let tls = crate::local_tls_dir();
        let listen = format!("127.0.0.1:{port}");
        let (cert, key) = (tls.join("server.crt"), tls.join("server.key"));
        let base = format!("https://127.0.0.1:{port}");
        // The portal's invitations link to this replica and go through the local SMTP server.
        let smtp = crate::local_smtp_url();
        let mut args = vec![
            "--listen",
            &listen,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--cursor-key",
            CURSOR_KEY,
            "--portal-url",
            &base,
            "--smtp-url",
            &smtp,
        ];
        args.extend_from_slice(extra);
        let service = Service::start("posflow-api", &d.env(), &args).await;
        Api {
            d: d.clone(),
            service,
            base,
            client: client(),
        }
    }

    /// One request. `key` goes in `Authorization: Bearer`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (h, v) in headers {
            req = req.header(*h, *v);
        }
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req.body(Full::new(Bytes::from(bytes))).expect("a request");
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("the API answers within 30 s")
            .expect("the API answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("a body").to_bytes();
        Resp {
            status,
            headers,
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        }
    }

    /// A request carrying `X-Request-Id`, to find its audit record.
    pub async fn with_id(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
        request_id: &str,
    ) -> Resp {
        self.call(method, path, key, body, &[("x-request-id", request_id)])
            .await
    }

    /// `PUT …/settings` with `body`.
    pub async fn put_settings(&self, merchant: &str, key: &str, body: &Value) -> Resp {
        let path = format!("/v1/merchants/{merchant}/settings");
        self.call("PUT", &path, Some(key), Some(body), &[]).await
    }

    /// Gives `merchant` a webhook (through the API, as its owner would).
    pub async fn set_webhook(&self, merchant: &str, key: &str, url: &str, secret: &str) {
        let body = serde_json::json!({"webhook_url": url, "webhook_secret": secret});
        let r = self.put_settings(merchant, key, &body).await;
        assert_eq!(r.status, 200, "{}", r.json);
    }

    /// A GET's body as bytes (a report's file).
    pub async fn raw_get(&self, path: &str, key: &str) -> Vec<u8> {
        let (status, body) = self.raw_status_get(path, key).await;
        assert_eq!(status, 200);
        body
    }

    /// A GET's status and body, unparsed (what a load generator needs, and no more).
    pub async fn raw_status_get(&self, path: &str, key: &str) -> (u16, Vec<u8>) {
        let auth = format!("Bearer {key}");
        let (status, _, body) = self.raw("GET", path, &[("authorization", &auth)]).await;
        (status, body)
    }

    /// Any request without a body: status, headers and the body's bytes (a portal page, a CSV).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, hyper::HeaderMap, Vec<u8>) {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (h, v) in headers {
            req = req.header(*h, *v);
        }
        let req = req.body(Full::new(Bytes::new())).expect("a request");
        let resp = self.client.request(req).await.expect("the API answers");
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        let body = resp.into_body().collect().await.expect("a body");
        (status, headers, body.to_bytes().to_vec())
    }

    pub async fn get(&self, path: &str, key: &str) -> Resp {
        self.call("GET", path, Some(key), None, &[]).await
    }
}

fn client() -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(crate::local_tls_dir().join("ca.crt")).expect("ca.crt") {
        roots.add(c.expect("a certificate")).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

/// Connects as the schema owner (the deployment's URL, search_path included).
pub async fn owner_db(d: &Deployment) -> tokio_postgres::Client {
    posflow_pg::connect(&d.stack.database_url)
        .await
        .expect("connecting as the owner")
}

/// Makes a key as `posflow-admin api-keys create` does; returns the whole key.
pub async fn make_key(d: &Deployment, role: Role, merchants: &[&str]) -> String {
    let db = owner_db(d).await;
    let merchants: Vec<String> = merchants.iter().map(|m| m.to_string()).collect();
    let (_, key) = posflow_api::keys::create(
        &db,
        &posflow_api::keys::NewKey {
            name: "e2e",
            role,
            merchants: &merchants,
            expires_at: None,
            created_by: "operator:e2e",
        },
    )
    .await
    .expect("creating a key");
    key
}

/// Stores `n` transactions (and a rejection for every fifth) for `merchant`, as storage would
/// have: ids `<merchant>-<i>`, times one minute apart back from 2026-11-30T12:00Z, amounts,
/// currencies, terminals, types, cards and response codes varied by i. Two line items each.
pub async fn seed(db: &tokio_postgres::Client, merchant: &str, n: i32) {
    db.batch_execute(&format!(
        "INSERT INTO transaction_keys (transaction_id, transaction_time)
           SELECT '{m}-' || i, timestamptz '2026-11-30 12:00Z' - i * interval '1 minute' FROM generate_series(1, {n}) i;
         INSERT INTO transactions (transaction_id, terminal_id, merchant_id, sequence, transaction_time, type,
             amount_minor, currency, payment_method, entry_mode, card_token, card_bin, card_last4, auth_code,
             response_code, mcc, received_at, bridge_id, validated_at, kafka_partition, kafka_offset)
           SELECT '{m}-' || i, '{m}-T' || (i % 7), '{m}', i, timestamptz '2026-11-30 12:00Z' - i * interval '1 minute',
             (ARRAY['sale','refund','sale','void'])[1 + i % 4], 100 + (i * 37) % 5000,
             (ARRAY['EUR','USD','GBP'])[1 + i % 3], 'card', 'contactless', 'tok' || i,
             (ARRAY['411111','550000','340000'])[1 + i % 3], lpad((i % 10000)::text, 4, '0'), 'A' || i,
             (ARRAY['00','05','00','51'])[1 + i % 4], '5814', now(), 'bridge-0', now(), 0, i
           FROM generate_series(1, {n}) i;
         INSERT INTO transaction_line_items (transaction_id, line_no, sku, description, unit_price_minor, quantity)
           SELECT '{m}-' || i, l, 'SKU' || l, 'item ' || l, 50 * l, l FROM generate_series(1, {n}) i, generate_series(1, 2) l;
         INSERT INTO rejections (transaction_id, terminal_id, merchant_id, transaction_time, type, amount_minor,
             currency, reason_codes, reasons, received_at, rejected_at, kafka_partition, kafka_offset)
           SELECT '{m}-r' || i, '{m}-T' || (i % 7), '{m}', timestamptz '2026-11-30 12:00Z' - i * interval '5 minute',
             'sale', 10 * i, 'EUR', ARRAY[(ARRAY['AMOUNT_OVER_LIMIT','CURRENCY_UNKNOWN'])[1 + i % 2]],
             '[]'::jsonb, now(), now(), 0, i
           FROM generate_series(1, {n} / 5) i;",
        m = merchant
    ))
    .await
    .expect("seeding");
}
