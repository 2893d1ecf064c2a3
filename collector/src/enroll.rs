//! Enrollment: the collector-side CA that gives each agent its node certificate.
//!
//! A DaemonSet has one pod template, so it cannot mount a different certificate on each node.
//! Instead the agent proves where it runs with its projected service-account token: the
//! collector has the Kubernetes API review the token (TokenReview, audience-bound), checks the
//! service account is an agent's, and signs the agent's certificate signing request for the
//! node the token names (`authentication.kubernetes.io/node-name`, in bound tokens since
//! Kubernetes 1.30) and no other name. The agent's key never leaves its node; the collector
//! keeps no state per node. The Ingest service then checks every event's node against the
//! certificate, as for any other node certificate.

use std::{path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use peregrine_proto::v1::{EnrollRequest, EnrollResponse, enrollment_server::Enrollment};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use serde::Deserialize;
use tonic::{Request, Response, Status};

/// The extra a bound service-account token carries with the name of its pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// `[enroll]`: off unless `ca_cert_file` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollConfig {
    /// The CA that signs node certificates (PEM certificate and its PKCS#8 key). The Ingest
    /// service trusts it as a client CA, besides `tls.client_ca_file` if that is set.
    pub ca_cert_file: Option<PathBuf>,
    pub ca_key_file: Option<PathBuf>,
    /// The audience the agents' projected tokens are issued for (the `audience` of the
    /// `serviceAccountToken` projection); a token for another audience (the API server's
    /// own, say) is refused, so a token stolen from elsewhere does not enroll.
    pub audience: String,
    /// Service accounts allowed to enroll, as the API names them
    /// (`system:serviceaccount:<namespace>:<name>`).
    pub service_accounts: Vec<String>,
    /// Lifetime of an issued certificate; agents renew when a third of it is left.
    pub cert_lifetime_s: u64,
    /// The Kubernetes API that reviews tokens (in-cluster by default).
    pub kubernetes: ApiServerConfig,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        Self {
            ca_cert_file: None,
            ca_key_file: None,
            audience: "peregrine-collector".into(),
            service_accounts: vec!["system:serviceaccount:peregrine:peregrine-agent".into()],
            cert_lifetime_s: 86_400,
            kubernetes: ApiServerConfig::default(),
        }
    }
}

/// `[enroll.kubernetes]`: the API server; unset keys mean the in-cluster configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiServerConfig {
    pub api_url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_tls_verify: bool,
}

impl ApiServerConfig {
    fn api_server(&self) -> peregrine_service::kube::ApiServer<'_> {
        peregrine_service::kube::ApiServer {
            api_url: self.api_url.as_deref(),
            token_file: self.token_file.as_deref(),
            ca_file: self.ca_file.as_deref(),
            insecure_skip_tls_verify: self.insecure_skip_tls_verify,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("enroll.{key} {path}: {problem}", path = .path.display())]
    File { key: &'static str, path: PathBuf, problem: String },
    #[error("enroll.kubernetes.{0}")]
    ApiServer(#[source] peregrine_service::kube::ApiServerError),
}

impl EnrollConfig {
    pub fn enabled(&self) -> bool {
        self.ca_cert_file.is_some() || self.ca_key_file.is_some()
    }

    /// Semantic checks; on failure, the key (relative to this section) and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !self.enabled() {
            return Ok(());
        }
        if self.ca_cert_file.is_none() || self.ca_key_file.is_none() {
            return Err(("ca_cert_file".into(), "enrollment needs both enroll.ca_cert_file and enroll.ca_key_file".into()));
        }
        if self.audience.is_empty() {
            return Err(("audience".into(), "empty: name the audience of the agents' projected tokens".into()));
        }
        if self.service_accounts.is_empty() || self.service_accounts.iter().any(|a| !a.starts_with("system:serviceaccount:")) {
            return Err((
                "service_accounts".into(),
                "list the agents' service accounts as system:serviceaccount:<namespace>:<name>".into(),
            ));
        }
        if !(600..=31_536_000).contains(&self.cert_lifetime_s) {
            return Err(("cert_lifetime_s".into(), "must be between 600 (10 minutes) and 31536000 (a year)".into()));
        }
        self.kubernetes.api_server().validate().map_err(|problem| ("kubernetes.api_url".into(), problem))
    }

    /// Loads the CA and connects the Kubernetes client; any problem is named with its key.
    pub fn build(&self, metrics: EnrollMetrics) -> Result<EnrollService, EnrollError> {
        let ca_pem = read("ca_cert_file", self.ca_cert_file.as_ref())?;
        let key_pem = read("ca_key_file", self.ca_key_file.as_ref())?;
        let file_err = |key: &'static str, path: &Option<PathBuf>, problem: String| EnrollError::File {
            key,
            path: path.clone().unwrap_or_default(),
            problem,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            file_err(
                "ca_key_file",
                &self.ca_key_file,
                format!("not a PKCS#8 PEM private key (cert-manager: privateKey.encoding: PKCS8; openssl pkcs8 -topk8 -nocrypt converts one): {e}"),
            )
        })?;
        let ca_spki = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
            .ok()
            .and_then(|(_, pem)| pem.parse_x509().ok().map(|c| c.public_key().raw.to_vec()));
        match ca_spki {
            None => return Err(file_err("ca_cert_file", &self.ca_cert_file, "not a PEM certificate".into())),
            Some(spki) if spki != key.subject_public_key_info() => {
                return Err(file_err(
                    "ca_key_file",
                    &self.ca_key_file,
                    "is not the key of enroll.ca_cert_file: certificates signed with it would be refused".into(),
                ));
            }
            Some(_) => {}
        }
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)
            .map_err(|e| file_err("ca_cert_file", &self.ca_cert_file, format!("not a PEM CA certificate: {e}")))?;
        let client = self.kubernetes.api_server().client().map_err(EnrollError::ApiServer)?;
        Ok(EnrollService {
            inner: Arc::new(Inner {
                issuer,
                ca_pem,
                reviews: Api::all(client),
                audience: self.audience.clone(),
                service_accounts: self.service_accounts.clone(),
                lifetime: Duration::from_secs(self.cert_lifetime_s),
                metrics,
                in_progress: tokio::sync::Semaphore::new(MAX_CONCURRENT),
            }),
        })
    }
}

fn read(key: &'static str, path: Option<&PathBuf>) -> Result<String, EnrollError> {
    let path = path.ok_or(EnrollError::File { key, path: PathBuf::new(), problem: "not set".into() })?;
    std::fs::read_to_string(path).map_err(|e| EnrollError::File { key, path: path.clone(), problem: e.to_string() })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Enrollments by result: `issued`, `unauthenticated` (no token, or the API did not accept
/// it), `denied` (a service account or node it may not have), `invalid` (a malformed
/// request), `unavailable` (the API could not be asked), `busy` (too many at once).
#[derive(Clone, Debug, Default)]
pub struct EnrollMetrics {
    pub enrollments: Family<ResultLabel, Counter>,
}

impl EnrollMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.sub_registry_with_prefix("peregrine_collector").register(
            "enrollments",
            "Node certificate requests, by result",
            self.enrollments.clone(),
        );
    }
}

#[derive(Clone)]
pub struct EnrollService {
    inner: Arc<Inner>,
}

impl EnrollService {
    /// The CA's certificate (PEM), as loaded: the Ingest service trusts it as a client CA.
    pub fn ca_pem(&self) -> &str {
        &self.inner.ca_pem
    }
}

struct Inner {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    reviews: Api<TokenReview>,
    audience: String,
    service_accounts: Vec<String>,
    lifetime: Duration,
    metrics: EnrollMetrics,
    /// Enrollments being answered; any client that completes the handshake can ask, and each
    /// asks the API server in turn.
    in_progress: tokio::sync::Semaphore,
}

/// Enrollments answered at once; more are told to retry (agents do, with backoff). A node
/// fleet enrolls a few at a time: a new node, a renewal, a restarted pod.
const MAX_CONCURRENT: usize = 16;

/// A refused enrollment: the status the agent gets and the metric's result label.
struct Refusal {
    result: &'static str,
    status: Status,
}

impl Refusal {
    fn new(result: &'static str, status: Status) -> Self {
        Self { result, status }
    }
}

/// Who a reviewed token belongs to.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenOwner {
    pub username: String,
    pub node: String,
    pub pod: Option<String>,
}

/// Reads a TokenReview's answer: the token must be authenticated for `audience`, belong to one
/// of `service_accounts`, and name `node` as its pod's node. The reasons go back to the agent.
pub fn check_review(
    status: Option<&TokenReviewStatus>,
    audience: &str,
    service_accounts: &[String],
    node: &str,
) -> Result<TokenOwner, (&'static str, String)> {
    let Some(status) = status.filter(|s| s.authenticated == Some(true)) else {
        let why = status.and_then(|s| s.error.clone()).filter(|e| !e.is_empty()).unwrap_or_else(|| "no reason given".into());
        return Err(("unauthenticated", format!("the Kubernetes API did not authenticate the token: {why}")));
    };
    // An audience-aware authenticator lists the audiences it checked; one that is not
    // audience-aware lists none, and its tokens cannot be trusted to be meant for us.
    if !status.audiences.iter().flatten().any(|a| a == audience) {
        return Err((
            "unauthenticated",
            format!("the token is not for audience `{audience}` (project it with audience: {audience})"),
        ));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.clone()).unwrap_or_default();
    if !service_accounts.contains(&username) {
        return Err(("denied", format!("`{username}` may not enroll (enroll.service_accounts)")));
    }
    let extra = |key: &str| -> Option<String> {
        let values = user?.extra.as_ref()?.get(key)?;
        match values.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    };
    let Some(token_node) = extra(NODE_NAME_EXTRA) else {
        return Err((
            "denied",
            format!(
                "the token names no node ({NODE_NAME_EXTRA}): use a projected service-account token \
                 from Kubernetes 1.30 or later, which names its pod's node"
            ),
        ));
    };
    if token_node != node {
        return Err(("denied", format!("the token is from node `{token_node}`, not `{node}`")));
    }
    Ok(TokenOwner { username, node: token_node, pod: extra(POD_NAME_EXTRA) })
}

/// The request's public key, once its signature is verified (whoever asks holds the key).
pub fn read_csr(der: &[u8]) -> Result<CertificateSigningRequestParams, String> {
    CertificateSigningRequestParams::from_der(&der.into())
        .map_err(|e| format!("the certificate signing request is unreadable or not signed by its key: {e}"))
}

/// A client certificate for `node` and the request's key, and nothing the request asked for
/// besides: its only name is the node's, it cannot sign, and it serves only client
/// authentication.
pub fn issue(
    issuer: &Issuer<'_, KeyPair>,
    node: &str,
    csr: CertificateSigningRequestParams,
    lifetime: Duration,
) -> Result<(rcgen::Certificate, time::OffsetDateTime), rcgen::Error> {
    let now = time::OffsetDateTime::now_utc();
    let not_after = now + lifetime;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node);
    params.subject_alt_names = vec![SanType::DnsName(node.try_into()?)];
    // Five minutes of slack for clocks that are a little behind.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(rcgen::SerialNumber::from(fastrand::u64(1..u64::MAX >> 1)));
    params.use_authority_key_identifier_extension = true;
    let signed = CertificateSigningRequestParams { params, public_key: csr.public_key }.signed_by(issuer)?;
    Ok((signed, not_after))
}

impl Inner {
    async fn enroll(&self, token: &str, request: &EnrollRequest) -> Result<EnrollResponse, Refusal> {
        let node = request.node.as_str();
        let invalid = |why: String| Refusal::new("invalid", Status::invalid_argument(why));
        match rustls::pki_types::ServerName::try_from(node) {
            Ok(rustls::pki_types::ServerName::DnsName(_)) => {}
            _ => return Err(invalid(format!("node `{node}` is not a DNS name"))),
        }
        let csr = read_csr(&request.csr_der).map_err(invalid)?;

        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: Some(vec![self.audience.clone()]) },
            ..TokenReview::default()
        };
        let reviewed = self.reviews.create(&PostParams::default(), &review).await.map_err(|e| {
            Refusal::new("unavailable", Status::unavailable(format!("could not have the Kubernetes API review the token: {e}")))
        })?;
        let owner = check_review(reviewed.status.as_ref(), &self.audience, &self.service_accounts, node).map_err(
            |(result, why)| {
                let status =
                    if result == "denied" { Status::permission_denied(why) } else { Status::unauthenticated(why) };
                Refusal::new(result, status)
            },
        )?;

        let (signed, not_after) = issue(&self.issuer, node, csr, self.lifetime)
            .map_err(|e| Refusal::new("invalid", Status::internal(format!("signing the node certificate failed: {e}"))))?;
        tracing::info!(
            node,
            service_account = %owner.username,
            pod = owner.pod.as_deref().unwrap_or(""),
            not_after = %not_after,
            "enrolled: node certificate issued"
        );
        Ok(EnrollResponse {
            certificate_chain_pem: format!("{}{}", signed.pem(), self.ca_pem),
            not_after_unix: not_after.unix_timestamp(),
        })
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollService {
    async fn enroll(&self, request: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        let outcome = match token {
            None => Err(Refusal::new(
                "unauthenticated",
                Status::unauthenticated("no token: send the projected service-account token as `authorization: Bearer <token>`"),
            )),
            Some(token) => match self.inner.in_progress.try_acquire() {
                Ok(_permit) => self.inner.enroll(&token, request.get_ref()).await,
                Err(_) => Err(Refusal::new(
                    "busy",
                    Status::resource_exhausted(format!("{MAX_CONCURRENT} enrollments are being answered; retry")),
                )),
            },
        };
        let result = match &outcome {
            Ok(_) => "issued",
            Err(refusal) => {
                // The node is the client's word: quoted, and cut short, in the log.
                let node: String = request.get_ref().node.chars().take(253).collect();
                tracing::warn!(%peer, ?node, error = %refusal.status.message(), "enrollment refused");
                refusal.result
            }
        };
        self.inner.metrics.enrollments.get_or_create(&ResultLabel { result }).inc();
        outcome.map(Response::new).map_err(|r| r.status)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    const AGENT: &str = "system:serviceaccount:peregrine:peregrine-agent";

    fn status(user: &str, node: Option<&str>, audiences: &[&str]) -> TokenReviewStatus {
        let mut extra = BTreeMap::new();
        if let Some(n) = node {
            extra.insert(NODE_NAME_EXTRA.to_owned(), vec![n.to_owned()]);
        }
        extra.insert(POD_NAME_EXTRA.to_owned(), vec!["peregrine-agent-x7k2p".to_owned()]);
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            user: Some(UserInfo { username: Some(user.to_owned()), extra: Some(extra), ..UserInfo::default() }),
            error: None,
        }
    }

    /// Whatever the request asks for (other names, a CA, server use), the certificate names
    /// only the node, cannot sign, and serves client authentication only; a request whose
    /// signature does not match its key is refused.
    #[test]
    fn the_certificate_is_for_the_node_and_client_use_only() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec!["aks-pool-1".to_owned(), "collector.peregrine.svc".to_owned()]).unwrap();
        asked.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        asked.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = asked.serialize_request(&key).unwrap();
        let (cert, not_after) = issue(&issuer, "aks-pool-1", read_csr(csr.der()).unwrap(), Duration::from_secs(3600)).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        let sans: Vec<String> =
            parsed.subject_alternative_name().unwrap().unwrap().value.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(sans, ["DNSName(aks-pool-1)"]);
        assert_eq!(parsed.subject().to_string(), "CN=aks-pool-1");
        assert!(!parsed.basic_constraints().unwrap().unwrap().value.ca);
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth, "{eku:?}");
        assert_eq!(parsed.public_key().raw, key.subject_public_key_info().as_slice());
        assert_eq!(parsed.validity().not_after.timestamp(), not_after.unix_timestamp());

        let mut forged = csr.der().to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 0x55;
        assert!(read_csr(&forged).unwrap_err().contains("not signed by its key"));
        assert!(read_csr(b"not a request").is_err());
    }

    fn check(s: &TokenReviewStatus, node: &str) -> Result<TokenOwner, (&'static str, String)> {
        check_review(Some(s), "peregrine-collector", &[AGENT.to_owned()], node)
    }

    #[test]
    fn a_token_of_an_agent_on_that_node_enrolls_it() {
        let owner = check(&status(AGENT, Some("aks-pool-1"), &["peregrine-collector"]), "aks-pool-1").unwrap();
        assert_eq!(
            owner,
            TokenOwner { username: AGENT.into(), node: "aks-pool-1".into(), pod: Some("peregrine-agent-x7k2p".into()) }
        );
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        let other_node = check(&status(AGENT, Some("aks-pool-2"), &["peregrine-collector"]), "aks-pool-1").unwrap_err();
        assert_eq!(other_node, ("denied", "the token is from node `aks-pool-2`, not `aks-pool-1`".to_owned()));
        let other_sa = check(&status("system:serviceaccount:default:web", Some("n"), &["peregrine-collector"]), "n");
        assert_eq!(
            other_sa.unwrap_err(),
            ("denied", "`system:serviceaccount:default:web` may not enroll (enroll.service_accounts)".to_owned())
        );
        let api_audience = check(&status(AGENT, Some("n"), &["https://kubernetes.default.svc"]), "n").unwrap_err();
        assert_eq!(api_audience.0, "unauthenticated");
        assert!(api_audience.1.contains("not for audience `peregrine-collector`"), "{}", api_audience.1);
        let no_node = check(&status(AGENT, None, &["peregrine-collector"]), "n").unwrap_err();
        assert_eq!(no_node.0, "denied");
        assert!(no_node.1.contains("names no node"), "{}", no_node.1);
        let rejected = TokenReviewStatus { authenticated: Some(false), error: Some("token has expired".into()), ..Default::default() };
        assert_eq!(
            check(&rejected, "n").unwrap_err(),
            ("unauthenticated", "the Kubernetes API did not authenticate the token: token has expired".to_owned())
        );
        assert_eq!(check_review(None, "a", &[], "n").unwrap_err().0, "unauthenticated");
    }
}
