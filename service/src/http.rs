//! `/healthz`, `/readyz` and Prometheus `/metrics`, served over plain HTTP/1.
//!
//! Liveness means the process answers; readiness is set by the daemon once its pipeline runs
//! (agent: programs attached; collector: output open), so orchestration can tell them apart.

use std::{net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for health/metrics on {addr}: {source} (choose another address with http.listen)")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds now (so a taken port fails start-up) and serves in a background task.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    ready: watch::Receiver<bool>,
) -> Result<SocketAddr, BindError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| BindError { addr, source })?;
    let local = listener.local_addr().map_err(|source| BindError { addr, source })?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "health/metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let response = respond(&req, &registry, *ready.borrow());
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                // Errors here are a client's broken connection: nothing to do.
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(local)
}

fn respond<B>(req: &Request<B>, registry: &Registry, ready: bool) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n".to_owned(), "text/plain"),
        "/readyz" if ready => (StatusCode::OK, "ready\n".to_owned(), "text/plain"),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned(), "text/plain"),
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (
                    StatusCode::OK,
                    text,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}\n"), "text/plain"),
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned(), "text/plain"),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}
