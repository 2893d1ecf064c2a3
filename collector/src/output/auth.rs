//! Microsoft Entra ID access tokens for the Logs Ingestion API (scope
//! `https://monitor.azure.com/.default`), by client secret, by workload identity (a federated
//! client assertion read from a file at every refresh) or by managed identity (IMDS).
//!
//! Tokens are cached and refreshed five minutes before they expire (or at half their life, if
//! shorter); `invalidate` forces a refresh (after a 401 from the ingestion endpoint).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Deserialize;
use tokio::sync::Mutex;

pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
pub const DEFAULT_SCOPE: &str = "https://monitor.azure.com/.default";
pub const DEFAULT_IMDS: &str = "http://169.254.169.254";
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSettings {
    /// An app registration's client secret (`client_secret`, or read from `client_secret_file`).
    ClientSecret {
        tenant_id: String,
        client_id: String,
        #[serde(default)]
        client_secret: Option<String>,
        #[serde(default)]
        client_secret_file: Option<PathBuf>,
        #[serde(default)]
        authority_host: Option<String>,
        #[serde(default)]
        scope: Option<String>,
    },
    /// Kubernetes workload identity: defaults from the webhook's `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`.
    WorkloadIdentity {
        #[serde(default)]
        tenant_id: Option<String>,
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        token_file: Option<PathBuf>,
        #[serde(default)]
        authority_host: Option<String>,
        #[serde(default)]
        scope: Option<String>,
    },
    /// The node's or pod's managed identity through IMDS (`client_id` picks a user-assigned one).
    ManagedIdentity {
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        scope: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub enum Credential {
    ClientSecret { tenant: String, client_id: String, secret: String },
    WorkloadIdentity { tenant: String, client_id: String, token_file: PathBuf },
    ManagedIdentity { client_id: Option<String>, endpoint: String },
}

impl AuthSettings {
    /// Resolves defaults (environment, files) into a credential and its authority and scope.
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<(Credential, String, String), String> {
        let host = |h: &Option<String>, envname: Option<&str>| {
            h.clone()
                .or_else(|| envname.and_then(&env))
                .unwrap_or_else(|| DEFAULT_AUTHORITY.into())
                .trim_end_matches('/')
                .to_owned()
        };
        let scope = |s: &Option<String>| s.clone().unwrap_or_else(|| DEFAULT_SCOPE.into());
        match self {
            Self::ClientSecret { tenant_id, client_id, client_secret, client_secret_file, authority_host, scope: s } => {
                let secret = match (client_secret, client_secret_file) {
                    (Some(secret), None) => secret.clone(),
                    (None, Some(path)) => std::fs::read_to_string(path)
                        .map(|s| s.trim().to_owned())
                        .map_err(|e| format!("auth.client_secret_file {}: {e}", path.display()))?,
                    _ => return Err("auth: set exactly one of client_secret, client_secret_file".into()),
                };
                Ok((
                    Credential::ClientSecret { tenant: tenant_id.clone(), client_id: client_id.clone(), secret },
                    host(authority_host, None),
                    scope(s),
                ))
            }
            Self::WorkloadIdentity { tenant_id, client_id, token_file, authority_host, scope: s } => {
                let tenant = tenant_id.clone().or_else(|| env("AZURE_TENANT_ID")).ok_or("auth.tenant_id (or AZURE_TENANT_ID) is required")?;
                let client_id = client_id.clone().or_else(|| env("AZURE_CLIENT_ID")).ok_or("auth.client_id (or AZURE_CLIENT_ID) is required")?;
                let token_file = token_file
                    .clone()
                    .or_else(|| env("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from))
                    .ok_or("auth.token_file (or AZURE_FEDERATED_TOKEN_FILE) is required")?;
                Ok((
                    Credential::WorkloadIdentity { tenant, client_id, token_file },
                    host(authority_host, Some("AZURE_AUTHORITY_HOST")),
                    scope(s),
                ))
            }
            Self::ManagedIdentity { client_id, endpoint, scope: s } => Ok((
                Credential::ManagedIdentity {
                    client_id: client_id.clone(),
                    endpoint: endpoint.clone().unwrap_or_else(|| DEFAULT_IMDS.into()).trim_end_matches('/').to_owned(),
                },
                String::new(),
                scope(s),
            )),
        }
    }
}

#[derive(Debug)]
struct Token {
    value: String,
    refresh_at: Instant,
}

pub struct TokenSource {
    credential: Credential,
    authority: String,
    scope: String,
    http: reqwest::Client,
    cache: Mutex<Option<Token>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

impl TokenSource {
    pub fn new(credential: Credential, authority: String, scope: String, http: reqwest::Client) -> Self {
        Self { credential, authority, scope, http, cache: Mutex::new(None) }
    }

    /// Names the credential source, for errors: which method, which identity, which authority.
    pub fn describe(&self) -> String {
        match &self.credential {
            Credential::ClientSecret { tenant, client_id, .. } => {
                format!("client secret of client {client_id} in tenant {tenant} at {}", self.authority)
            }
            Credential::WorkloadIdentity { tenant, client_id, token_file } => format!(
                "workload identity (federated token file {}) of client {client_id} in tenant {tenant} at {}",
                token_file.display(),
                self.authority
            ),
            Credential::ManagedIdentity { client_id, endpoint } => match client_id {
                Some(id) => format!("managed identity {id} via IMDS at {endpoint}"),
                None => format!("system-assigned managed identity via IMDS at {endpoint}"),
            },
        }
    }

    /// The IMDS resource for the scope: `https://monitor.azure.com/.default` -> `https://monitor.azure.com`.
    fn resource(&self) -> &str {
        self.scope.trim_end_matches("/.default")
    }

    /// The token request this credential makes (built fresh: the workload identity's assertion
    /// file is read every time, as the kubelet rotates it).
    pub fn request(&self) -> Result<reqwest::Request, String> {
        let built = match &self.credential {
            Credential::ClientSecret { tenant, client_id, secret } => self
                .http
                .post(format!("{}/{tenant}/oauth2/v2.0/token", self.authority))
                .form(&[
                    ("client_id", client_id.as_str()),
                    ("client_secret", secret.as_str()),
                    ("scope", self.scope.as_str()),
                    ("grant_type", "client_credentials"),
                ])
                .build(),
            Credential::WorkloadIdentity { tenant, client_id, token_file } => {
                let assertion = std::fs::read_to_string(token_file)
                    .map_err(|e| format!("reading the federated token file {}: {e}", token_file.display()))?;
                self.http
                    .post(format!("{}/{tenant}/oauth2/v2.0/token", self.authority))
                    .form(&[
                        ("client_id", client_id.as_str()),
                        ("client_assertion_type", ASSERTION_TYPE),
                        ("client_assertion", assertion.trim()),
                        ("scope", self.scope.as_str()),
                        ("grant_type", "client_credentials"),
                    ])
                    .build()
            }
            Credential::ManagedIdentity { client_id, endpoint } => {
                let mut query = vec![("api-version", "2018-02-01"), ("resource", self.resource())];
                if let Some(id) = client_id {
                    query.push(("client_id", id.as_str()));
                }
                self.http.get(format!("{endpoint}/metadata/identity/oauth2/token")).query(&query).header("Metadata", "true").build()
            }
        };
        built.map_err(|e| format!("building the token request: {e}"))
    }

    /// A valid access token, from the cache or freshly fetched.
    pub async fn token(&self) -> Result<String, String> {
        let mut cache = self.cache.lock().await;
        if let Some(t) = cache.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        let request = self.request()?;
        let response = self.http.execute(request).await.map_err(|e| format!("token request failed: {e}"))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| format!("reading the token response: {e}"))?;
        if !status.is_success() {
            return Err(format!("HTTP {}: {}", status.as_u16(), describe_error(&body)));
        }
        let parsed: TokenResponse =
            serde_json::from_str(&body).map_err(|e| format!("the token response is not the expected JSON: {e}"))?;
        let lifetime = parsed
            .expires_in
            .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
            .unwrap_or(300);
        let refresh_in = if lifetime > 600 { lifetime - 300 } else { lifetime / 2 };
        *cache = Some(Token { value: parsed.access_token.clone(), refresh_at: Instant::now() + Duration::from_secs(refresh_in) });
        Ok(parsed.access_token)
    }

    /// Drops the cached token: the next `token()` fetches a new one.
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }
}

/// Entra's `{"error":..., "error_description":...}` on one line, or the body itself (shortened).
fn describe_error(body: &str) -> String {
    #[derive(Deserialize)]
    struct E {
        error: String,
        #[serde(default)]
        error_description: String,
    }
    match serde_json::from_str::<E>(body) {
        Ok(e) => format!("{}: {}", e.error, e.error_description.lines().next().unwrap_or_default()),
        Err(_) => body.chars().take(300).collect::<String>().replace('\n', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(cred: Credential, authority: &str) -> TokenSource {
        TokenSource::new(cred, authority.into(), DEFAULT_SCOPE.into(), reqwest::Client::new())
    }

    #[test]
    fn imds_request_is_built_but_never_sent() {
        let s = source(Credential::ManagedIdentity { client_id: None, endpoint: DEFAULT_IMDS.into() }, "");
        let r = s.request().unwrap();
        assert_eq!(r.method(), reqwest::Method::GET);
        assert_eq!(r.url().scheme(), "http");
        assert_eq!(r.url().host_str(), Some("169.254.169.254"));
        assert_eq!(r.url().path(), "/metadata/identity/oauth2/token");
        let q: Vec<(String, String)> = r.url().query_pairs().into_owned().collect();
        assert_eq!(q, [("api-version".into(), "2018-02-01".into()), ("resource".into(), "https://monitor.azure.com".into())]);
        assert_eq!(r.headers()["Metadata"], "true");
        assert!(r.body().is_none());

        let user = source(Credential::ManagedIdentity { client_id: Some("abc".into()), endpoint: DEFAULT_IMDS.into() }, "");
        let q: Vec<(String, String)> = user.request().unwrap().url().query_pairs().into_owned().collect();
        assert_eq!(q[2], ("client_id".into(), "abc".into()));
        assert!(user.describe().contains("managed identity abc via IMDS at http://169.254.169.254"));
    }

    fn form(r: &reqwest::Request) -> Vec<(String, String)> {
        let body = r.body().and_then(|b| b.as_bytes()).unwrap();
        url_decode_pairs(std::str::from_utf8(body).unwrap())
    }

    fn url_decode_pairs(s: &str) -> Vec<(String, String)> {
        reqwest::Url::parse(&format!("http://x/?{s}")).unwrap().query_pairs().into_owned().collect()
    }

    #[test]
    fn client_secret_and_workload_identity_forms() {
        let s = source(
            Credential::ClientSecret { tenant: "t1".into(), client_id: "c1".into(), secret: "s&=1".into() },
            "https://login.microsoftonline.us",
        );
        let r = s.request().unwrap();
        assert_eq!(r.url().as_str(), "https://login.microsoftonline.us/t1/oauth2/v2.0/token");
        assert_eq!(r.headers()["content-type"], "application/x-www-form-urlencoded");
        assert_eq!(
            form(&r),
            [
                ("client_id".into(), "c1".into()),
                ("client_secret".into(), "s&=1".into()),
                ("scope".into(), DEFAULT_SCOPE.into()),
                ("grant_type".into(), "client_credentials".into())
            ]
        );

        let dir = std::env::temp_dir().join(format!("peregrine-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "first.jwt\n").unwrap();
        let w = source(Credential::WorkloadIdentity { tenant: "t2".into(), client_id: "c2".into(), token_file: file.clone() }, DEFAULT_AUTHORITY);
        let f = form(&w.request().unwrap());
        assert!(f.contains(&("client_assertion".into(), "first.jwt".into())));
        assert!(f.contains(&("client_assertion_type".into(), ASSERTION_TYPE.into())));
        std::fs::write(&file, "second.jwt").unwrap();
        let f = form(&w.request().unwrap());
        assert!(f.contains(&("client_assertion".into(), "second.jwt".into())), "re-read at every refresh");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn workload_identity_defaults_come_from_the_webhook_environment() {
        let s = AuthSettings::WorkloadIdentity { tenant_id: None, client_id: None, token_file: None, authority_host: None, scope: None };
        let env = |k: &str| match k {
            "AZURE_TENANT_ID" => Some("t".to_owned()),
            "AZURE_CLIENT_ID" => Some("c".to_owned()),
            "AZURE_FEDERATED_TOKEN_FILE" => Some("/var/run/secrets/azure/tokens/azure-identity-token".to_owned()),
            "AZURE_AUTHORITY_HOST" => Some("https://login.chinacloudapi.cn/".to_owned()),
            _ => None,
        };
        let (cred, authority, scope) = s.resolve(env).unwrap();
        assert!(matches!(cred, Credential::WorkloadIdentity { ref tenant, .. } if tenant == "t"));
        assert_eq!(authority, "https://login.chinacloudapi.cn");
        assert_eq!(scope, DEFAULT_SCOPE);
        let e = s.resolve(|_| None).unwrap_err();
        assert!(e.contains("AZURE_TENANT_ID"), "{e}");
    }
}
