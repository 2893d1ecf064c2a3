//! This node's certificate from the collector (`collector.tls.enroll_token_file`): the agent
//! makes its own key, sends a certificate signing request with its projected service-account
//! token, and keeps what the collector signs in `collector.tls.cert_file` and `key_file`. Done
//! before a connect when there is no usable certificate or a third of its lifetime is left,
//! so a certificate is renewed while the old one still works.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use peregrine_proto::v1::{EnrollRequest, enrollment_client::EnrollmentClient};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use tonic::transport::{ClientTlsConfig, Endpoint};

/// Where the token is read from and the certificate and key are kept.
pub struct Enrollment<'a> {
    pub token_file: &'a Path,
    pub cert_file: &'a Path,
    pub key_file: &'a Path,
    pub node: &'a str,
}

/// How long the collector gets to answer (it asks the Kubernetes API in turn).
const ENROLL_TIMEOUT: Duration = Duration::from_secs(15);

impl Enrollment<'_> {
    /// Enrolls unless the kept certificate is for the kept key and has more than a third of
    /// its lifetime left. `Err` says why enrolling failed (the caller retries with backoff).
    pub async fn ensure(&self, endpoint: &Endpoint, trust: &ClientTlsConfig) -> Result<(), String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let kept = self.kept_validity();
        let Some((renew_at, not_after)) = kept else { return self.enroll(endpoint, trust).await };
        if now < renew_at {
            return Ok(());
        }
        tracing::info!(cert_file = %self.cert_file.display(), "node certificate due for renewal; enrolling");
        match self.enroll(endpoint, trust).await {
            // The API server or the collector may be briefly unable to renew (a restart, a
            // throttled TokenReview): the kept certificate is used while it is valid.
            Err(e) if now < not_after => {
                tracing::warn!(error = %e, not_after_unix = not_after, "renewing the node certificate failed; using the current one until it expires");
                Ok(())
            }
            outcome => outcome,
        }
    }

    async fn enroll(&self, endpoint: &Endpoint, trust: &ClientTlsConfig) -> Result<(), String> {
        let token = std::fs::read_to_string(self.token_file)
            .map_err(|e| format!("reading the service-account token {} (collector.tls.enroll_token_file): {e}", self.token_file.display()))?;
        let token = token.trim();
        let key = KeyPair::generate().map_err(|e| format!("generating this node's key: {e}"))?;
        let mut params =
            CertificateParams::new(vec![self.node.to_owned()]).map_err(|e| format!("node name `{}`: {e}", self.node))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, self.node);
        let csr = params.serialize_request(&key).map_err(|e| format!("building the certificate signing request: {e}"))?;

        let channel = endpoint
            .clone()
            .tls_config(trust.clone())
            .map_err(|e| format!("collector TLS settings: {}", crate::kernel::error_chain(&e)))?
            .connect()
            .await
            .map_err(|e| format!("enrollment: {}", crate::kernel::error_chain(&e)))?;
        let mut request = tonic::Request::new(EnrollRequest { node: self.node.to_owned(), csr_der: csr.der().to_vec() });
        request.set_timeout(ENROLL_TIMEOUT);
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| format!("the token in {} is not a valid header value", self.token_file.display()))?;
        request.metadata_mut().insert("authorization", bearer);
        let response = EnrollmentClient::new(channel)
            .enroll(request)
            .await
            .map_err(|s| format!("the collector refused to enroll node `{}` ({:?}): {}", self.node, s.code(), s.message()))?
            .into_inner();
        let chain = response.certificate_chain_pem;
        match certificate_facts(chain.as_bytes()) {
            Some((spki, _)) if spki == key.subject_public_key_info() => {}
            _ => return Err("the collector answered with a certificate that is not for this node's key".into()),
        }
        // The key first: a certificate is only ever next to the key it was issued for, or
        // next to a newer key (then the check above fails and the agent enrolls again).
        write_private(self.key_file, key.serialize_pem().as_bytes(), 0o600)?;
        write_private(self.cert_file, chain.as_bytes(), 0o644)?;
        tracing::info!(
            node = self.node,
            cert_file = %self.cert_file.display(),
            not_after_unix = response.not_after_unix,
            "enrolled: node certificate from the collector"
        );
        Ok(())
    }

    /// When the kept certificate should be renewed and when it expires (Unix seconds), or
    /// `None` when there is no usable one: missing, unreadable, or not for the kept key.
    fn kept_validity(&self) -> Option<(i64, i64)> {
        let cert = std::fs::read(self.cert_file).ok()?;
        let key = KeyPair::from_pem(&std::fs::read_to_string(self.key_file).ok()?).ok()?;
        let (spki, (not_before, not_after)) = certificate_facts(&cert)?;
        (spki == key.subject_public_key_info()).then_some((not_after - (not_after - not_before) / 3, not_after))
    }

    /// Forgets the kept certificate, so the next connect enrolls: the collector refused it
    /// (its enrollment CA changed, say), and waiting for the renewal time would leave the
    /// node unheard until then.
    pub fn discard(&self) {
        if std::fs::remove_file(self.cert_file).is_ok() {
            tracing::warn!(cert_file = %self.cert_file.display(), "the collector refused the enrolled certificate; enrolling again");
        }
    }
}

/// Whether a connect or stream error says the collector refused this node's certificate: a
/// TLS alert about it, or the Ingest service's refusal of a stream (no certificate, expired).
/// A CA replaced by one of the same name (a renewal with a new key) fails the signature check:
/// `DecryptError`.
pub fn refuses_certificate(error: &str) -> bool {
    const REFUSALS: [&str; 7] = [
        "fatal alert: UnknownCA",
        "fatal alert: BadCertificate",
        "fatal alert: CertificateUnknown",
        "fatal alert: CertificateExpired",
        "fatal alert: DecryptError",
        "no client certificate",
        "the client certificate expired",
    ];
    REFUSALS.iter().any(|r| error.contains(r))
}

/// The first certificate's public key (DER SubjectPublicKeyInfo) and validity (Unix seconds).
fn certificate_facts(pem: &[u8]) -> Option<(Vec<u8>, (i64, i64))> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let validity = cert.validity();
    Some((cert.public_key().raw.to_vec(), (validity.not_before.timestamp(), validity.not_after.timestamp())))
}

/// Replaces `path` with `bytes` at once (a temporary file renamed over it), with `mode`.
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let fail = |e: std::io::Error| format!("writing {}: {e}", path.display());
    // A leftover from an interrupted write would keep its mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(fail)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
