//! A client for the Confluent schema-registry API (served by Apicurio at `/apis/ccompat/v7`,
//! and by Confluent Schema Registry, Karapace, Redpanda at their roots).

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{pem::PemObject, CertificateDer};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or answered 5xx: worth retrying.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// The registry answered, and the answer is no (unknown subject or id, incompatible schema).
    #[error("schema registry refused: HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("schema registry answered something unexpected: {0}")]
    Protocol(String),
}

impl RegistryError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

#[derive(Clone)]
pub struct Registry {
    base: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The `Authorization` header value, when the registry wants credentials.
    authorization: Option<Arc<str>>,
}

/// How to authenticate to the registry.
pub enum Auth<'a> {
    /// HTTP Basic (Confluent Schema Registry, Karapace, Apicurio behind a gateway).
    Basic {
        username: &'a str,
        password: &'a str,
    },
    /// A bearer token (OAuth2 gateways, Confluent Cloud with an API token).
    Bearer(&'a str),
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base)
            .finish()
    }
}

/// Confluent's TopicNameStrategy: the value schema of topic `t` is subject `t-value`.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

impl Registry {
    /// `base` is the Confluent API root, e.g. `http://127.0.0.1:28081/apis/ccompat/v7`; https
    /// is verified against the system's roots.
    pub fn new(base: &str) -> Self {
        Self::with(base, None, None).expect("no CA file to read")
    }

    /// With https verified against the system's roots plus `ca_file` (PEM), and credentials.
    pub fn with(
        base: &str,
        ca_file: Option<&Path>,
        auth: Option<Auth<'_>>,
    ) -> Result<Self, String> {
        use base64::Engine as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert); // a malformed system certificate is not ours to fail on
        }
        if let Some(path) = ca_file {
            let bad =
                |e: &dyn std::fmt::Display| format!("schema registry CA {}: {e}", path.display());
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let authorization = auth.map(|a| {
            Arc::from(match a {
                Auth::Basic { username, password } => format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"))
                ),
                Auth::Bearer(token) => format!("Bearer {token}"),
            })
        });
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            authorization,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RegistryError> {
        let uri = format!("{}{}", self.base, path);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = Request::builder();
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a.as_ref());
        }
        let req = req
            .method(method)
            .uri(&uri)
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .header(
                "accept",
                "application/vnd.schemaregistry.v1+json, application/json",
            )
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| RegistryError::Protocol(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(15), self.client.request(req))
            .await
            .map_err(|_| RegistryError::Unavailable(format!("{uri}: timed out")))?
            .map_err(|e| {
                RegistryError::Unavailable(format!("{uri}: {}", posflow_runtime::logs::causes(&e)))
            })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?
            .to_bytes();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(RegistryError::Unavailable(format!("{uri}: HTTP {status}")));
        }
        if !status.is_success() {
            return Err(RegistryError::Refused {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(500).collect(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol(e.to_string()))
    }

    /// Registers `schema` under `subject` (a no-op returning the existing id when it is already
    /// there) and returns its global id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let v = self
            .call(
                Method::POST,
                &format!("/subjects/{subject}/versions"),
                Some(json!({ "schema": schema, "schemaType": "AVRO" })),
            )
            .await?;
        id_of(&v)
    }

    /// The id of `schema` if it is registered under `subject`.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let v = self
            .call(
                Method::POST,
                &format!("/subjects/{subject}"),
                Some(json!({ "schema": schema, "schemaType": "AVRO" })),
            )
            .await?;
        id_of(&v)
    }

    /// Sets the subject's compatibility level (BACKWARD, FULL, ...).
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        self.call(
            Method::PUT,
            &format!("/config/{subject}"),
            Some(json!({ "compatibility": level })),
        )
        .await
        .map(|_| ())
    }

    /// The schema text registered under a global id.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let v = self
            .call(Method::GET, &format!("/schemas/ids/{id}"), None)
            .await?;
        v.get("schema")
            .and_then(|s| s.as_str())
            .map(str::to_string)
            .ok_or_else(|| RegistryError::Protocol(format!("no schema in answer for id {id}")))
    }

    /// Deletes a subject and its versions for good: a soft delete, then the permanent one the
    /// Confluent API requires after it.
    pub async fn delete_subject(&self, subject: &str) -> Result<(), RegistryError> {
        self.call(Method::DELETE, &format!("/subjects/{subject}"), None)
            .await?;
        self.call(
            Method::DELETE,
            &format!("/subjects/{subject}?permanent=true"),
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let v = self.call(Method::GET, "/subjects", None).await?;
        serde_json::from_value(v).map_err(|e| RegistryError::Protocol(e.to_string()))
    }
}

fn id_of(v: &serde_json::Value) -> Result<u32, RegistryError> {
    v.get("id")
        .and_then(|i| i.as_u64())
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| RegistryError::Protocol(format!("no id in {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the client sends with each kind of credentials. The local registry (Apicurio) only
    /// authenticates through an OIDC server, so the header is checked here against a listener
    /// that records the request and answers like a registry.
    async fn sent_with(auth: Option<Auth<'_>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]",
            )
            .await
            .unwrap();
            String::from_utf8_lossy(&request).to_lowercase()
        });
        let registry = Registry::with(&base, None, auth).unwrap();
        assert_eq!(registry.subjects().await.unwrap(), Vec::<String>::new());
        server.await.unwrap()
    }

    #[tokio::test]
    async fn credentials_travel_as_an_authorization_header() {
        let basic = sent_with(Some(Auth::Basic {
            username: "u",
            password: "p",
        }))
        .await;
        assert!(basic.contains("authorization: basic dtpw\r\n"), "{basic}");
        let bearer = sent_with(Some(Auth::Bearer("tok-123"))).await;
        assert!(
            bearer.contains("authorization: bearer tok-123\r\n"),
            "{bearer}"
        );
        assert!(!sent_with(None).await.contains("authorization"));
    }
}
