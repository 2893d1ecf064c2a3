//! Metrics of the Kubernetes pod watch.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub reason: &'static str,
}

/// Why a list or watch of the API server failed (the `reason` label).
pub mod reason {
    /// 403: the service account may not list or watch pods (RBAC).
    pub const FORBIDDEN: &str = "forbidden";
    /// 401: the token is missing, expired or not accepted.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// 410: the watch's resourceVersion is too old; the watcher lists again.
    pub const GONE: &str = "gone";
    /// Any other answer from the API server.
    pub const API_ERROR: &str = "api_error";
    /// No answer: connection refused or reset, TLS, timeout.
    pub const UNREACHABLE: &str = "unreachable";
    /// An answer that could not be read.
    pub const OTHER: &str = "other";
}

#[derive(Clone, Debug, Default)]
pub struct K8sMetrics {
    pub pods: Gauge,
    pub synced: Gauge,
    pub watch_restarts: Counter,
    pub relists: Counter,
    pub watch_errors: Family<ErrorLabel, Counter>,
    pub owner_lookups_failed: Counter,
}

impl K8sMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("peregrine_agent");
        r.register(
            "k8s_pods",
            "Pods in the Kubernetes pod store, deleted ones within their retention included",
            self.pods.clone(),
        );
        r.register("k8s_synced", "1 while the pod store has a full list and the watch works", self.synced.clone());
        r.register(
            "k8s_watch_restarts",
            "Pod watches opened again after the first (watch timeout, broken connection, error)",
            self.watch_restarts.clone(),
        );
        r.register(
            "k8s_relists",
            "Full pod lists completed after the first (the watch's resourceVersion expired)",
            self.relists.clone(),
        );
        r.register(
            "k8s_watch_errors",
            "Failed pod lists and watches, by reason: forbidden, unauthorized, gone, api_error, unreachable, other",
            self.watch_errors.clone(),
        );
        r.register(
            "k8s_owner_lookups_failed",
            "ReplicaSet or Job lookups for a pod's top owner that failed or timed out",
            self.owner_lookups_failed.clone(),
        );
    }

    pub fn watch_error(&self, reason: &'static str) {
        self.watch_errors.get_or_create(&ErrorLabel { reason }).inc();
    }

    #[cfg_attr(not(test), allow(dead_code))] // read by the tests
    pub fn watch_errors_for(&self, reason: &'static str) -> u64 {
        self.watch_errors.get_or_create(&ErrorLabel { reason }).get()
    }
}
