//! Plumbing every Peregrine daemon shares: layered configuration, the health and metrics
//! endpoints, logging, the Kubernetes API connection, and the shutdown signal.

pub mod config;
pub mod http;
pub mod kube;

use tracing_subscriber::EnvFilter;

/// Keeps this process's memory in 4 KiB pages: no transparent huge pages.
///
/// The allocator (mimalloc v3) maps memory in large regions and asks for huge pages on them
/// (`MADV_HUGEPAGE`), which the kernel grants under THP `madvise` (this machine kind) as under
/// `always`. A 2 MiB page touched in one place is resident as a whole, and each fault after
/// the allocator purged one clears 2 MiB. Under an exec storm the
/// agent's anonymous memory was 26 MiB with huge pages and 16 MiB without, the collector's
/// resident memory 90 and 50 MiB, at the same CPU (docs/PERFORMANCE.md, exec). The flag covers
/// later faults of existing mappings too, so calling this first thing is enough; children
/// inherit it.
pub fn disable_huge_pages() -> HugePagesOff {
    // SAFETY: PR_SET_THP_DISABLE takes integers only and sets a flag of this process's memory
    // map; no memory is read or written through the arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    HugePagesOff(if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) })
}

/// The outcome of [`disable_huge_pages`], which runs before logging is set up.
#[must_use = "report it once logging is set up"]
pub struct HugePagesOff(std::io::Result<()>);

impl HugePagesOff {
    /// Logs a failure; the daemon runs on either way.
    pub fn report(self) {
        if let Err(e) = self.0 {
            tracing::warn!(error = %e, "cannot turn transparent huge pages off for this process (prctl PR_SET_THP_DISABLE): its resident memory will be higher");
        }
    }
}

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
