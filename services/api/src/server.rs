//! HTTP(S) for the API: HTTP/1.1, TLS when given a certificate (or plain behind an ingress that
//! terminates it), bodies capped, JSON and problem+json out. On shutdown it stops accepting and
//! lets requests in flight finish, up to the drain timeout.

use crate::portal;
use crate::problem::Problem;
use crate::reports::{self, Download};
use crate::routes::OPENAPI_PATH;
use crate::service::{self, Incoming, State};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use posflow_runtime::Shutdown;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves until shutdown, then waits (up to `drain`) for requests in flight.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    shutdown: Shutdown,
    drain: Duration,
) -> anyhow::Result<()> {
    let in_flight = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
            _ = shutdown.wait() => break,
        };
        let (state, tls, in_flight) = (state.clone(), tls.clone(), in_flight.clone());
        let on_tls = tls.is_some();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (state, in_flight) = (state.clone(), in_flight.clone());
                async move {
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let r = answer(&state, req, peer, on_tls).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(r)
                }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let _ = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => http.serve_connection(TokioIo::new(s), svc).await,
                    Err(e) => {
                        tracing::debug!(error = %e, %peer, "TLS handshake failed");
                        return;
                    }
                },
                None => http.serve_connection(TokioIo::new(stream), svc).await,
            };
        });
    }
    let deadline = tokio::time::Instant::now() + drain;
    while in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

async fn answer(
    state: &Arc<State>,
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    tls: bool,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    if parts.method == hyper::Method::GET && parts.uri.path() == OPENAPI_PATH {
        return respond(
            200,
            "application/json",
            Bytes::from(state.openapi.clone()),
            None,
            None,
        );
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(Problem::TooLarge),
    };
    if parts.uri.path() == "/portal" || parts.uri.path().starts_with("/portal/") {
        return portal_page(state, &parts, body.unwrap_or_default(), peer, tls).await;
    }
    let reply = service::handle(
        state,
        Incoming {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            body,
            source: peer.ip(),
        },
    )
    .await;
    if let Some(d) = reply.download {
        return stream(state.clone(), d, &reply.request_id);
    }
    let ctype = if reply.status >= 400 {
        "application/problem+json"
    } else {
        "application/json"
    };
    let mut text = reply.body;
    text.push(b'\n');
    respond(
        reply.status,
        ctype,
        Bytes::from(text),
        reply.retry_after,
        Some(&reply.request_id),
    )
}

/// A portal page (portal::pages), with the headers every page carries.
async fn portal_page(
    state: &Arc<State>,
    parts: &hyper::http::request::Parts,
    body: Bytes,
    peer: SocketAddr,
    tls: bool,
) -> Response<Body> {
    let request_id = service::request_id(&parts.headers);
    let cookies = parts
        .headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    let reply = portal::pages::handle(
        state,
        &portal::pages::PageRequest {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            cookies: &cookies,
            body: &body,
            source: peer.ip(),
            request_id: &request_id,
        },
    )
    .await;
    if let Some(d) = reply.download {
        return stream(state.clone(), d, &request_id);
    }
    let mut r = Response::builder()
        .status(reply.status)
        .header("x-request-id", &request_id);
    for (k, v) in portal::session::page_headers(tls) {
        r = r.header(k, v);
    }
    for (k, v) in reply.headers {
        r = r.header(k, v);
    }
    r.body(
        Full::new(Bytes::from(reply.body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
    .expect("static response parts")
}

/// A report's file, chunk by chunk from the database: one chunk (1 MiB) in memory at a time,
/// whatever the file's size. A failure mid-way cuts the response (the checksum in the report
/// tells a client its copy is incomplete).
fn stream(state: Arc<State>, d: Download, request_id: &str) -> Response<Body> {
    let (ctype, filename) = (d.content_type, d.filename.clone());
    let chunks = futures::stream::unfold((state, d, 0), |(state, d, n)| async move {
        if n >= d.chunks {
            return None;
        }
        let data = match state.pool.get().await {
            Ok(mut c) => reports::chunk(&mut c, &d, n).await.map_err(|e| e.summary()),
            Err(e) => Err(e.summary()),
        };
        let frame = data
            .map(|b| Frame::data(Bytes::from(b)))
            .map_err(|why| std::io::Error::other(format!("report chunk {n}: {why}")));
        Some((frame, (state, d, n + 1)))
    });
    Response::builder()
        .status(200)
        .header("content-type", ctype)
        .header(
            "content-disposition",
            format!("attachment; filename=\"{filename}\""),
        )
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header("x-request-id", request_id)
        .body(BodyExt::boxed_unsync(StreamBody::new(chunks)))
        .expect("static response parts")
}

fn respond(
    status: u16,
    ctype: &str,
    body: Bytes,
    retry_after: Option<u64>,
    request_id: Option<&str>,
) -> Response<Body> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff");
    if let Some(secs) = retry_after {
        r = r.header("retry-after", secs.to_string());
    }
    if let Some(id) = request_id {
        r = r.header("x-request-id", id);
    }
    r.body(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
    .expect("static response parts")
}
