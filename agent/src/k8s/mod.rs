//! Kubernetes pod context: this node's pods from the API server, with their top owner workload
//! and probe commands, for the enrichment stage (on top of what the container runtime says).
//!
//! One task watches `pods` with `fieldSelector=spec.nodeName=<node>` through kube's watcher
//! (list, then watch from the list's resourceVersion with bookmarks; 410 Gone lists again) behind
//! its default backoff. The API server failing never blocks a reader: the store keeps what it
//! has, the failure is logged once (then every few minutes while it lasts) and shows in
//! [`PodStore::state`] and the metrics.

mod config;
mod metrics;
mod owner;
mod store;
mod watch;

#[cfg(test)]
mod tests;


pub use config::K8sConfig;
pub use metrics::K8sMetrics;
pub use store::{PodMeta, PodStore};
use tokio::task::JoinHandle;

use self::{
    owner::OwnerResolver,
    watch::{ObserveLayer, PodWatch, Tuning},
};

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("no node name to select this node's pods by: set node_name (NODE_NAME from the downward API)")]
    NoNodeName,
    #[error("kubernetes.{0}: {1}")]
    Invalid(&'static str, String),
    #[error("kubernetes.{0}")]
    ApiServer(#[source] peregrine_service::kube::ApiServerError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("the Kubernetes pod watch needs a tokio runtime to run on")]
    NoRuntime,
}

/// Spawns the watch (and owner resolution) on the current tokio runtime and returns at once;
/// an unreachable API server is not an error here (it is retried and reported).
///
/// Does not look at `config.enabled`: the caller decides whether to start.
pub fn start(config: &K8sConfig, node_name: &str, metrics: K8sMetrics) -> Result<(PodStore, JoinHandle<()>), K8sError> {
    start_tuned(config, node_name, metrics, Tuning::for_retention(config.deleted_retention()))
}

pub(crate) fn start_tuned(
    config: &K8sConfig,
    node_name: &str,
    metrics: K8sMetrics,
    tuning: Tuning,
) -> Result<(PodStore, JoinHandle<()>), K8sError> {
    if node_name.is_empty() {
        return Err(K8sError::NoNodeName);
    }
    config.validate().map_err(|(key, problem)| K8sError::Invalid(key, problem))?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| K8sError::NoRuntime)?;
    let client_config = config.api_server().client_config().map_err(K8sError::ApiServer)?;
    peregrine_service::kube::use_ring();
    let store = PodStore::new(metrics.clone());
    let client = kube::client::ClientBuilder::try_from(client_config)
        .map_err(K8sError::Client)?
        .with_layer(&ObserveLayer::new(store.shared.clone()))
        .build();
    let resolver = OwnerResolver::new(client.clone(), config.owner_lookup_timeout(), tuning.owner_retry, metrics);
    let watch = PodWatch::new(store.shared.clone(), resolver, config.deleted_retention());
    let handle = runtime.spawn(watch.run(client, node_name.to_owned(), tuning));
    Ok((store, handle))
}
