//! Plumbing every Peregrine daemon shares: layered configuration, the health and metrics
//! endpoints, logging, the Kubernetes API connection, and the shutdown signal.

pub mod config;
pub mod http;
pub mod kube;

use tracing_subscriber::EnvFilter;

/// Logs to stderr; `RUST_LOG` wins over the configured level so an operator can dig in
/// without editing the config.
pub fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // kube-rs logs every retry of an unreachable API server; the agent's own watch logs each
    // cause once. Asking for kube's logs by name (RUST_LOG=kube_client=debug) still works.
    let asked_for_kube = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("kube")) || level.contains("kube");
    let filter = if asked_for_kube {
        filter
    } else {
        ["kube_client=off", "kube_runtime=off"]
            .into_iter()
            .filter_map(|d| d.parse().ok())
            .fold(filter, |f, d| f.add_directive(d))
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// Resolves on SIGINT or SIGTERM (Kubernetes stops pods with SIGTERM).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers we cannot shut down cleanly; wait forever rather than exit.
            std::future::pending::<()>().await
        }
    }
}
