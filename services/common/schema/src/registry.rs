//! A client for the Confluent schema-registry API (served by Apicurio at `/apis/ccompat/v7`,
//! and by Confluent Schema Registry, Karapace, Redpanda at their roots).

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::json;
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
    client: Client<HttpConnector, Full<Bytes>>,
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
    /// `base` is the Confluent API root, e.g. `http://127.0.0.1:28081/apis/ccompat/v7`.
    pub fn new(base: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Self {
            base: base.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RegistryError> {
        let uri = format!("{}{}", self.base, path);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
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
            .map_err(|e| RegistryError::Unavailable(format!("{uri}: {e}")))?;
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
