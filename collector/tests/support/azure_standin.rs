//! A LOCAL STAND-IN for Microsoft Entra ID's token endpoint and the Azure Monitor Logs
//! Ingestion API — not Azure. It implements the documented contract the collector relies on,
//! over HTTPS (rustls, the test CA) on 127.0.0.1 only:
//!
//! * `POST /{tenant}/oauth2/v2.0/token` (form: `client_id`, `scope`, `grant_type =
//!   client_credentials`, and `client_secret` or `client_assertion_type` jwt-bearer +
//!   `client_assertion`) -> `{"token_type":"Bearer","expires_in":..,"access_token":..}`, or
//!   401 `{"error":"invalid_client","error_description":"AADSTS7000215: ..."}`.
//! * `GET /{tenant}/v2.0/.well-known/openid-configuration` (what MSAL asks first).
//! * `POST /dataCollectionRules/{dcr}/streams/{stream}?api-version=2023-01-01` with a JSON array
//!   body (optionally `Content-Encoding: gzip`) and a bearer token -> 204 and the rows stored;
//!   401 for an unknown or expired token; 413 for a body over the size limit (1 MB by
//!   default, uncompressed); 400 for a body that is not a JSON array of objects, or a row
//!   containing the poison marker; and, on demand, 429 with `Retry-After`, an expired token,
//!   or a dropped connection.
//! * The DCR is the one `deploy/sentinel/peregrine-sentinel.json` deploys: a stream it does not
//!   declare is refused (404 `InvalidStream`), and columns a row has beyond the stream's
//!   declaration are removed before the row is stored, as Azure's ingestion drops them
//!   (`State::undeclared` lists them, so a test can insist there are none).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    io::Read,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::TestCa;

pub const POISON: &str = "POISON-ROW";

/// What the next ingestion request gets, before normal processing.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 429 with `Retry-After: <secs>`.
    Throttle(u64),
    /// The presented token is declared expired (401) and must be refreshed.
    ExpireToken,
    /// The connection is closed without an answer.
    Drop,
    /// 503.
    Unavailable,
}

#[derive(Debug, Clone)]
pub struct Stored {
    pub dcr: String,
    pub stream: String,
    pub api_version: String,
    pub gzip: bool,
    pub content_type: String,
    pub uncompressed_len: usize,
    pub rows: Vec<Value>,
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    pub path: String,
    pub status: u16,
}

#[derive(Debug, Default)]
pub struct State {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    pub assertion: String,
    pub expires_in: u64,
    pub max_body: usize,
    pub issued: Vec<(String, bool)>,
    pub token_forms: Vec<BTreeMap<String, String>>,
    pub behaviours: VecDeque<Behaviour>,
    pub stored: Vec<Stored>,
    pub log: Vec<Logged>,
    /// The deployed DCR's streams and their declared columns.
    pub declarations: BTreeMap<String, BTreeSet<String>>,
    /// (stream, column) pairs that arrived undeclared and were dropped.
    pub undeclared: BTreeSet<(String, String)>,
}

/// The stream declarations of the DCR in the project's Sentinel template.
pub fn deployed_declarations() -> BTreeMap<String, BTreeSet<String>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sentinel/peregrine-sentinel.json");
    let template: Value = serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dcr = template["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["type"] == "Microsoft.Insights/dataCollectionRules"))
        .unwrap_or_else(|| panic!("{}: no data collection rule", path.display()));
    let Some(decls) = dcr["properties"]["streamDeclarations"].as_object() else { panic!("{}: no streamDeclarations", path.display()) };
    decls
        .iter()
        .map(|(stream, d)| {
            let cols = d["columns"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect();
            (stream.clone(), cols)
        })
        .collect()
}

pub struct StandIn {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl StandIn {
    pub async fn start(ca: &TestCa) -> Self {
        let state = Arc::new(Mutex::new(State {
            tenant: "tenant-1".into(),
            client_id: "client-1".into(),
            client_secret: "right-secret".into(),
            assertion: "federated.jwt.1".into(),
            expires_in: 3599,
            max_body: 1_048_576,
            declarations: deployed_declarations(),
            ..Default::default()
        }));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(ca.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca.key_der.clone())),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn stored(&self) -> Vec<Stored> {
        self.with(|s| s.stored.clone())
    }

    /// Columns that arrived without a declaration in the deployed DCR (and were dropped).
    pub fn undeclared(&self) -> BTreeSet<(String, String)> {
        self.with(|s| s.undeclared.clone())
    }

    pub fn rows(&self, stream: &str) -> Vec<Value> {
        self.stored().into_iter().filter(|s| s.stream == stream).flat_map(|s| s.rows).collect()
    }

    pub fn statuses(&self, path_part: &str) -> Vec<u16> {
        self.with(|s| s.log.iter().filter(|l| l.path.contains(path_part)).map(|l| l.status).collect())
    }
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(if body.is_null() { String::new() } else { body.to_string() })));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    if !body.is_null() {
        r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    }
    r
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    url::form_urlencoded_parse(body)
}

mod url {
    /// `application/x-www-form-urlencoded` decoding (a test needs no crate for it).
    pub fn form_urlencoded_parse(body: &[u8]) -> std::collections::BTreeMap<String, String> {
        let text = String::from_utf8_lossy(body);
        text.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect()
    }
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let h = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                    match h {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let headers = req.headers().clone();
    let body = req.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    let mut st = state.lock().map_err(|_| std::io::Error::other("poisoned"))?;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let response = match (method.as_str(), segments.as_slice()) {
        ("GET", [tenant, "v2.0", ".well-known", "openid-configuration"]) => {
            let base = format!("https://{}", headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1"));
            reply(
                200,
                json!({
                    "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
                    "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
                    "issuer": format!("{base}/{tenant}/v2.0"),
                    "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
                    "end_session_endpoint": format!("{base}/{tenant}/oauth2/v2.0/logout"),
                    "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
                    "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                    "tenant_region_scope": "WW",
                }),
            )
        }
        ("POST", [tenant, "oauth2", "v2.0", "token"]) => {
            let f = form(&body);
            st.token_forms.push(f.clone());
            let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
            let ok_secret = get("client_secret") == st.client_secret && !st.client_secret.is_empty();
            let ok_assertion = get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                && get("client_assertion") == st.assertion;
            if *tenant != st.tenant {
                reply(400, json!({"error": "invalid_request", "error_description": format!("AADSTS90002: Tenant '{tenant}' not found.")}))
            } else if get("grant_type") != "client_credentials" || get("scope") != "https://monitor.azure.com/.default" {
                reply(400, json!({"error": "invalid_scope", "error_description": "AADSTS70011: The provided value for scope is not valid."}))
            } else if get("client_id") != st.client_id || !(ok_secret || ok_assertion) {
                reply(401, json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: stand-in"}))
            } else {
                let token = format!("tok-{}", st.issued.len() + 1);
                st.issued.push((token.clone(), false));
                reply(200, json!({"token_type": "Bearer", "expires_in": st.expires_in, "ext_expires_in": st.expires_in, "access_token": token}))
            }
        }
        ("POST", ["dataCollectionRules", dcr, "streams", stream]) => {
            let token = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            let behaviour = st.behaviours.pop_front();
            if matches!(behaviour, Some(Behaviour::Drop)) {
                st.log.push(Logged { at: Instant::now(), path: path.clone(), status: 0 });
                return Err(std::io::Error::other("dropped on demand"));
            }
            if matches!(behaviour, Some(Behaviour::ExpireToken))
                && let Some(t) = st.issued.iter_mut().find(|(t, _)| *t == token)
            {
                t.1 = true;
            }
            let valid = st.issued.iter().any(|(t, expired)| *t == token && !expired);
            let gzip = headers.get("content-encoding").and_then(|v| v.to_str().ok()) == Some("gzip");
            let raw = if gzip {
                let mut out = Vec::new();
                match flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out) {
                    Ok(_) => Some(out),
                    Err(_) => None,
                }
            } else {
                Some(body.to_vec())
            };
            let api_version = query.strip_prefix("api-version=").unwrap_or_default().to_owned();
            if !valid {
                reply(401, json!({"error": {"code": "InvalidToken", "message": "The access token is invalid or expired."}}))
            } else if let Some(Behaviour::Throttle(secs)) = behaviour {
                let mut r = reply(429, json!({"error": {"code": "TooManyRequests", "message": "Throttled."}}));
                r.headers_mut().insert("retry-after", secs.to_string().parse().unwrap());
                r
            } else if matches!(behaviour, Some(Behaviour::Unavailable)) {
                reply(503, json!({"error": {"code": "ServiceUnavailable", "message": "Try again."}}))
            } else if !st.declarations.contains_key(*stream) {
                reply(404, json!({"error": {"code": "InvalidStream", "message": format!("Stream {stream} is not declared in the data collection rule.")}}))
            } else if api_version != "2023-01-01" {
                reply(400, json!({"error": {"code": "InvalidApiVersion", "message": "api-version"}}))
            } else {
                match raw {
                    None => reply(400, json!({"error": {"code": "InvalidContentEncoding", "message": "not gzip"}})),
                    Some(raw) if raw.len() > st.max_body => {
                        reply(413, json!({"error": {"code": "ContentLengthLimitExceeded", "message": "Maximum allowed content length: 1048576 bytes (1 MB)."}}))
                    }
                    Some(raw) => match serde_json::from_slice::<Value>(&raw) {
                        Ok(Value::Array(mut rows)) if rows.iter().all(Value::is_object) => {
                            let declared = st.declarations.get(*stream).cloned().unwrap_or_default();
                            for row in rows.iter_mut().filter_map(Value::as_object_mut) {
                                let extra: Vec<String> = row.keys().filter(|k| !declared.contains(*k)).cloned().collect();
                                for k in extra {
                                    row.remove(&k);
                                    st.undeclared.insert(((*stream).to_owned(), k));
                                }
                            }
                            if rows.iter().any(|r| r.to_string().contains(POISON)) {
                                reply(400, json!({"error": {"code": "InvalidContent", "message": "A record does not match the stream declaration."}}))
                            } else {
                                st.stored.push(Stored {
                                    dcr: (*dcr).to_owned(),
                                    stream: (*stream).to_owned(),
                                    api_version,
                                    gzip,
                                    content_type: headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned(),
                                    uncompressed_len: raw.len(),
                                    rows,
                                });
                                reply(204, Value::Null)
                            }
                        }
                        _ => reply(400, json!({"error": {"code": "InvalidContent", "message": "The body is not a JSON array of objects."}})),
                    },
                }
            }
        }
        _ => reply(404, json!({"error": "not found"})),
    };
    st.log.push(Logged { at: Instant::now(), path, status: response.status().as_u16() });
    Ok(response)
}
