//! The `kubernetes` configuration section and the kube client configuration built from it.

use std::{path::PathBuf, time::Duration};

use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde::Deserialize;

use super::K8sError;

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
        if let Some(url) = &self.api_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(("api_url", format!("`{url}` is not an http:// or https:// URL")));
        }
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

    /// The kube client configuration: in-cluster unless `api_url` is set, then the explicit
    /// token and CA files on top.
    pub(crate) fn client_config(&self) -> Result<kube::Config, K8sError> {
        let mut config = match &self.api_url {
            None => kube::Config::incluster().map_err(K8sError::InCluster)?,
            Some(url) => {
                let uri = url.parse::<http::Uri>().map_err(|e| K8sError::ApiUrl(url.clone(), e.to_string()))?;
                kube::Config::new(uri)
            }
        };
        if let Some(path) = &self.token_file {
            config.auth_info.token_file = Some(path.display().to_string());
        }
        if let Some(path) = &self.ca_file {
            config.root_cert = Some(read_ca(path)?);
            // kube re-reads this file to follow CA rotation, as it does in-cluster.
            config.root_cert_file = Some(path.clone());
        }
        config.accept_invalid_certs = self.insecure_skip_tls_verify;
        Ok(config)
    }
}

/// The DER certificates of a PEM bundle; an error names the file when there are none.
fn read_ca(path: &std::path::Path) -> Result<Vec<Vec<u8>>, K8sError> {
    let ca_err = |reason: String| K8sError::CaFile(path.to_path_buf(), reason);
    let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_err("no PEM certificate in it".to_owned()));
    }
    Ok(certs)
}
