//! `/healthz`, `/readyz` and Prometheus `/metrics`, served over plain HTTP/1.
//!
//! Liveness means the process answers; readiness is set by the daemon once its pipeline runs
//! (agent: programs attached; collector: output open), so orchestration can tell them apart.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

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

/// Run before a scrape of /metrics is encoded: brings up to date what the daemon reads only
/// when asked (reading it all the time would cost more than the scrapes do).
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Binds now (so a taken port fails start-up) and serves in a background task.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    ready: watch::Receiver<bool>,
    refresh: Option<Refresh>,
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
            let refresh = refresh.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let registry = registry.clone();
                    let ready = *ready.borrow();
                    let refresh = refresh.clone();
                    async move {
                        if let Some(refresh) = refresh.filter(|_| req.uri().path() == "/metrics") {
                            refresh().await;
                        }
                        Ok::<_, std::convert::Infallible>(respond(&req, &registry, ready))
                    }
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
