//! An OTLP/HTTP trace receiver inside the test process: what a collector would get from the
//! services, decoded with the same generated protobuf messages the exporter encodes with.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One span as received.
#[derive(Debug, Clone)]
pub struct Span {
    /// The exporting service's `service.name`.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Keeps each export request's body as it came and decodes on demand: receiving costs next to
/// nothing, so a benchmark beside it measures the exporter, not this receiver.
pub struct Receiver {
    /// Base URL for `--otlp-endpoint`.
    pub endpoint: String,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = bodies.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let b = b.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| export(req, b.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { endpoint, bodies }
    }

    /// Every span received so far, decoded.
    pub fn spans(&self) -> Vec<Span> {
        let bodies = self.bodies.lock().unwrap().clone();
        bodies.into_iter().flat_map(decode).collect()
    }

    pub fn span_count(&self) -> usize {
        self.spans().len()
    }

    /// Every span received, once `done` says the ones awaited are there (or `within` passes).
    pub async fn wait_for_trace(
        &self,
        within: Duration,
        done: impl Fn(&[Span]) -> bool,
    ) -> Vec<Span> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn export(
    req: Request<Incoming>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path_ok = req.uri().path() == "/v1/traces";
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let Some(body) = body.ok().filter(|_| path_ok) else {
        return Ok(Response::builder()
            .status(400)
            .body(Full::new(Bytes::new()))
            .unwrap());
    };
    bodies.lock().unwrap().push(body);
    let ok = ExportTraceServiceResponse::default().encode_to_vec();
    Ok(Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(ok)))
        .unwrap())
}

/// The spans of one export request (none if it is not a valid one).
fn decode(body: Bytes) -> Vec<Span> {
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        return vec![];
    };
    let mut got = Vec::new();
    for rs in export.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(Span {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                });
            }
        }
    }
    got
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
