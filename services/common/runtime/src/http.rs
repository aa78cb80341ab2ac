//! The HTTP endpoint: `/healthz` (liveness), `/readyz` (readiness), `/metrics` (Prometheus).

use crate::{health::Health, metrics, shutdown::Shutdown};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Binds `addr` and serves until shutdown. Returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                },
                _ = shutdown.wait() => return,
            };
            let health = health.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, health.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn handle(
    req: Request<Incoming>,
    health: Health,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body, ctype) = match req.uri().path() {
        "/healthz" if !health.is_failed() => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/healthz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no progress\n".into(),
            "text/plain",
        ),
        "/readyz" if health.is_ready() => (StatusCode::OK, "ready\n".into(), "text/plain"),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready\n".into(),
            "text/plain",
        ),
        "/metrics" => (
            StatusCode::OK,
            metrics::render(),
            "text/plain; version=0.0.4",
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts"))
}
