//! The `kubernetes` configuration section and the kube client configuration built from it.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;


/// Pod context from the Kubernetes API: this node's pods, their labels, service account, top
/// owner workload and probe commands.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct K8sConfig {
    /// Watch this node's pods from the API server.
    pub enabled: bool,
    /// API server URL, e.g. `https://10.96.0.1:443` or `http://127.0.0.1:8001`. Unset: the
    /// in-cluster configuration (`KUBERNETES_SERVICE_HOST`/`_PORT` and the service account's
    /// token and CA under /var/run/secrets/kubernetes.io/serviceaccount).
    pub api_url: Option<String>,
    /// Bearer token file, re-read as it rotates. Unset: the service account's token in-cluster,
    /// none with `api_url`.
    pub token_file: Option<PathBuf>,
    /// PEM bundle of the CA that signed the API server's certificate. Unset: the service
    /// account's CA in-cluster, the system's roots with `api_url`.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For test clusters only: it lets anyone on the path pose as
    /// the API server.
    pub insecure_skip_tls_verify: bool,
    /// How long a deleted pod stays resolvable for events that arrive late.
    pub deleted_retention_ms: u64,
    /// Bound on one owner lookup (ReplicaSet or Job GET); the watch waits at most this long.
    pub owner_lookup_timeout_ms: u64,
}

impl Default for K8sConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            api_url: None,
            token_file: None,
            ca_file: None,
            insecure_skip_tls_verify: false,
            deleted_retention_ms: 300_000,
            owner_lookup_timeout_ms: 2_000,
        }
    }
}

impl K8sConfig {
    /// Semantic checks; on failure, the key (relative to this section) and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.api_server().validate().map_err(|problem| ("api_url", problem))?;
        if !(1..=60_000).contains(&self.owner_lookup_timeout_ms) {
            return Err(("owner_lookup_timeout_ms", "must be between 1 and 60000".to_owned()));
        }
        Ok(())
    }

    pub(crate) fn deleted_retention(&self) -> Duration {
        Duration::from_millis(self.deleted_retention_ms)
    }

    pub(crate) fn owner_lookup_timeout(&self) -> Duration {
        Duration::from_millis(self.owner_lookup_timeout_ms.max(1))
    }

    /// Where the API server is (in-cluster unless `api_url` is set).
    pub(crate) fn api_server(&self) -> peregrine_service::kube::ApiServer<'_> {
        peregrine_service::kube::ApiServer {
            api_url: self.api_url.as_deref(),
            token_file: self.token_file.as_deref(),
            ca_file: self.ca_file.as_deref(),
            insecure_skip_tls_verify: self.insecure_skip_tls_verify,
        }
    }
}
