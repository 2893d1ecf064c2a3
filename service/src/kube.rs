//! The connection to the Kubernetes API server both daemons make (the agent's pod watch, the
//! collector's token reviews), built from the same few settings.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, pem::PemObject};

/// What is wrong with the API server settings; the caller prefixes its section's name.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("api_url is not set and there is no in-cluster Kubernetes configuration (outside a pod, set api_url): {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("api_url `{0}` {1}")]
    ApiUrl(String, String),
    #[error("ca_file {path}: {problem}", path = .0.display(), problem = .1)]
    CaFile(PathBuf, String),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Where the API server is and how to trust it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiServer<'a> {
    /// Unset: the in-cluster configuration (`KUBERNETES_SERVICE_HOST`/`_PORT`, the service
    /// account's token and CA).
    pub api_url: Option<&'a str>,
    /// Bearer token file, re-read as it rotates.
    pub token_file: Option<&'a Path>,
    /// PEM bundle of the CA that signed the API server's certificate.
    pub ca_file: Option<&'a Path>,
    pub insecure_skip_tls_verify: bool,
}

impl ApiServer<'_> {
    /// `Err` (the problem with `api_url`) when it is set and is not an http(s) URL.
    pub fn validate(&self) -> Result<(), String> {
        match self.api_url {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                Err(format!("`{url}` is not an http:// or https:// URL"))
            }
            _ => Ok(()),
        }
    }

    /// The kube client configuration: in-cluster unless `api_url` is set, then the explicit
    /// token and CA files on top.
    pub fn client_config(&self) -> Result<kube::Config, ApiServerError> {
        let mut config = match self.api_url {
            None => kube::Config::incluster().map_err(ApiServerError::InCluster)?,
            Some(url) => {
                let uri =
                    url.parse::<http::Uri>().map_err(|e| ApiServerError::ApiUrl(url.to_owned(), format!("is not a URL: {e}")))?;
                kube::Config::new(uri)
            }
        };
        if let Some(path) = self.token_file {
            config.auth_info.token_file = Some(path.display().to_string());
        }
        if let Some(path) = self.ca_file {
            config.root_cert = Some(read_ca(path)?);
            // kube re-reads this file to follow CA rotation, as it does in-cluster.
            config.root_cert_file = Some(path.to_path_buf());
        }
        config.accept_invalid_certs = self.insecure_skip_tls_verify;
        Ok(config)
    }

    /// A client for these settings.
    pub fn client(&self) -> Result<kube::Client, ApiServerError> {
        let config = self.client_config()?;
        use_ring();
        kube::Client::try_from(config).map_err(ApiServerError::Client)
    }
}

/// kube builds its rustls configuration from the process's default provider when one is
/// installed; make that ring (Peregrine's only provider) whatever else is linked in. An error
/// means one is installed already, which is as good.
pub fn use_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The DER certificates of a PEM bundle; an error names the file when there are none.
fn read_ca(path: &Path) -> Result<Vec<Vec<u8>>, ApiServerError> {
    let ca_err = |reason: String| ApiServerError::CaFile(path.to_path_buf(), reason);
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
