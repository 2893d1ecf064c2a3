//! A **stand-in** for the Kubernetes API server, for tests only. It is not Kubernetes: it serves
//! the few endpoints the agent's pod watch uses, answering with the JSON the real API server
//! sends (as documented in the API concepts: list with `metadata.resourceVersion` and
//! `limit`/`continue`, watch as newline-delimited `{"type":..,"object":..}` events with
//! `BOOKMARK`s and `ERROR` Status objects, `410 Gone` for an expired resourceVersion, `Status`
//! bodies for 403/404).
//!
//! Served:
//! - `GET /api/v1/pods?fieldSelector=spec.nodeName%3D<node>&limit=&continue=` (list)
//! - `GET /api/v1/pods?watch=true&resourceVersion=N&allowWatchBookmarks=true&fieldSelector=..`
//! - `GET /apis/<group>/<version>/namespaces/<ns>/<plural>/<name>` for objects put with
//!   [`KubeStandin::put_object`] (ReplicaSets, Jobs, ...).
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews` for tokens put with
//!   [`KubeStandin::put_token`], answered as the API server's service-account authenticator
//!   does (`201 Created`, the spec echoed, `status.authenticated`, `user` with the bound pod's
//!   and node's `extra`, `audiences` the intersection of the token's and the spec's, the
//!   API server's own audience when the spec names none; `error` for an unknown token or an
//!   audience mismatch; `401` without a bearer token of the caller's own).
//!
//! The test drives it: add, modify and delete pods (each bumps the resourceVersion), send a
//! bookmark, compact history (expire resourceVersions), send `410` to live watches, end or break
//! watch connections, hold new watches (an API server that hangs), answer 403 to everything, and
//! read back every request it received.
//!
//! Self-contained (hyper 1, tokio, serde_json) so unit tests inside the agent crate can include
//! it with `#[path = "../../tests/support/kube_standin.rs"] mod kube_standin;`.
// Test scaffolding: a failed set-up step should stop the test with its reason.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use hyper::{
    Request, Response, StatusCode,
    body::{Body, Bytes, Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};

/// One request the stand-in received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Query parameters, percent-decoded, in the order sent.
    pub query: Vec<(String, String)>,
    /// The caller's `Authorization` header.
    pub authorization: Option<String>,
    /// A POST's JSON body.
    pub body: Option<Value>,
}

impl RecordedRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn is_pod_watch(&self) -> bool {
        self.path == "/api/v1/pods" && self.param("watch") == Some("true")
    }

    pub fn is_pod_list(&self) -> bool {
        self.path == "/api/v1/pods" && self.param("watch") != Some("true")
    }
}

/// What a live watch connection is sent.
enum WatchFrame {
    Line(Bytes),
    /// Fail the response body mid-stream: the connection is cut without the final chunk.
    Abort,
}

struct Watcher {
    tx: mpsc::UnboundedSender<WatchFrame>,
    node: Option<String>,
    bookmarks: bool,
}

struct HistoryEvent {
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (namespace, name) → pod.
    pods: BTreeMap<(String, String), Value>,
    /// (group/version, plural, namespace, name) → object.
    objects: BTreeMap<(String, String, String, String), Value>,
    history: Vec<HistoryEvent>,
    /// Watches and continue tokens from a resourceVersion below this get 410 Gone.
    expired_below: u64,
    forbidden: bool,
    /// token → (username, node, audiences).
    tokens: BTreeMap<String, (String, Option<String>, Vec<String>)>,
    requests: Vec<RecordedRequest>,
    watchers: Vec<Watcher>,
}

struct Shared {
    state: Mutex<State>,
    /// true while new watch requests are held without an answer.
    paused: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The stand-in API server; stops when dropped.
pub struct KubeStandin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for KubeStandin {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.lock().watchers.clear();
    }
}

impl KubeStandin {
    /// Listens on 127.0.0.1 on a free port; serves on the current tokio runtime.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the stand-in API server on loopback");
        let addr = listener.local_addr().expect("stand-in address");
        let (paused, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared { state: Mutex::new(State { rv: 1, ..State::default() }), paused });
        let accept_shared = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, shared, accept }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    // ---- pods -------------------------------------------------------------------------------

    /// Creates a pod (an `ADDED` event); returns its resourceVersion.
    pub fn add_pod(&self, pod: Value) -> u64 {
        let mut s = self.shared.lock();
        let key = key_of(&pod);
        s.rv += 1;
        let rv = s.rv;
        let mut pod = pod;
        set_rv(&mut pod, rv);
        s.pods.insert(key, pod.clone());
        record_and_send(&mut s, "ADDED", pod);
        rv
    }

    /// Changes a pod (a `MODIFIED` event); returns its new resourceVersion.
    pub fn modify_pod(&self, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) -> u64 {
        let mut s = self.shared.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let mut pod = s.pods.get(&key).cloned().unwrap_or_else(|| panic!("stand-in has no pod {namespace}/{name}"));
        change(&mut pod);
        s.rv += 1;
        let rv = s.rv;
        set_rv(&mut pod, rv);
        s.pods.insert(key, pod.clone());
        record_and_send(&mut s, "MODIFIED", pod);
        rv
    }

    /// Replaces a pod's labels (a `MODIFIED` event).
    pub fn set_pod_labels(&self, namespace: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
        let labels: serde_json::Map<String, Value> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned()))).collect();
        self.modify_pod(namespace, name, |pod| pod["metadata"]["labels"] = Value::Object(labels))
    }

    /// Deletes a pod (a `DELETED` event carrying its last state); returns the resourceVersion.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> u64 {
        let mut s = self.shared.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let mut pod = s.pods.remove(&key).unwrap_or_else(|| panic!("stand-in has no pod {namespace}/{name}"));
        s.rv += 1;
        let rv = s.rv;
        set_rv(&mut pod, rv);
        record_and_send(&mut s, "DELETED", pod);
        rv
    }

    // ---- other objects (GET only) -------------------------------------------------------------

    /// Makes an object readable at `/apis/<apiVersion>/namespaces/<ns>/<plural>/<name>`
    /// (`plural` from the kind: ReplicaSet → replicasets, Job → jobs, ...).
    pub fn put_object(&self, object: Value) {
        let mut s = self.shared.lock();
        s.rv += 1;
        let rv = s.rv;
        let mut object = object;
        set_rv(&mut object, rv);
        let api_version = object["apiVersion"].as_str().unwrap_or_default().to_owned();
        let plural = format!("{}s", object["kind"].as_str().unwrap_or_default().to_ascii_lowercase());
        let (ns, name) = key_of(&object);
        s.objects.insert((api_version, plural, ns, name), object);
    }

    // ---- failures and protocol events ---------------------------------------------------------

    /// Sends a `BOOKMARK` at the current resourceVersion to every watch that asked for them;
    /// returns that resourceVersion.
    pub fn send_bookmark(&self) -> u64 {
        let mut s = self.shared.lock();
        let rv = s.rv;
        let line = event_line(
            "BOOKMARK",
            &json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}),
        );
        s.watchers.retain(|w| !w.bookmarks || w.tx.send(WatchFrame::Line(line.clone())).is_ok());
        rv
    }

    /// Compacts history: a watch or continue token from a resourceVersion older than the current
    /// one is answered 410 Gone from now on. Live watches are not touched.
    pub fn expire_resource_versions(&self) {
        let mut s = self.shared.lock();
        s.expired_below = s.rv;
        s.history.clear();
    }

    /// Sends an `ERROR` event with a 410 Status to every live watch and ends them (what the API
    /// server does to a watch that fell behind its history window).
    pub fn send_watch_gone(&self) {
        let mut s = self.shared.lock();
        let line = event_line("ERROR", &gone_status(0, s.rv));
        for w in s.watchers.drain(..) {
            let _ = w.tx.send(WatchFrame::Line(line.clone()));
        }
    }

    /// Ends every live watch cleanly (as at the watch's timeout).
    pub fn end_watches(&self) {
        self.shared.lock().watchers.clear();
    }

    /// Cuts every live watch connection mid-stream.
    pub fn break_watches(&self) {
        for w in self.shared.lock().watchers.drain(..) {
            let _ = w.tx.send(WatchFrame::Abort);
        }
    }

    /// Ends live watches and holds new watch requests unanswered until [`Self::resume_watches`]
    /// (an API server that hangs). Lists and GETs are still served.
    pub fn pause_watches(&self) {
        self.shared.paused.send_replace(true);
        self.end_watches();
    }

    pub fn resume_watches(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Answers every request 403 Forbidden while set (live watches are not touched).
    pub fn set_forbidden(&self, forbidden: bool) {
        self.shared.lock().forbidden = forbidden;
    }

    pub fn live_watches(&self) -> usize {
        let mut s = self.shared.lock();
        s.watchers.retain(|w| !w.tx.is_closed());
        s.watchers.len()
    }

    // ---- what it received ---------------------------------------------------------------------

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    pub fn pod_lists(&self) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(RecordedRequest::is_pod_list).collect()
    }

    pub fn pod_watches(&self) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(RecordedRequest::is_pod_watch).collect()
    }

    /// A service-account token the TokenReview endpoint knows: issued to `username`
    /// (`system:serviceaccount:<ns>:<name>`), bound to a pod on `node` (`None`: a token
    /// without the node's name, as before Kubernetes 1.30), for `audiences`.
    pub fn put_token(&self, token: &str, username: &str, node: Option<&str>, audiences: &[&str]) {
        let entry = (username.to_owned(), node.map(str::to_owned), audiences.iter().map(|a| (*a).to_owned()).collect());
        self.shared.lock().tokens.insert(token.to_owned(), entry);
    }

    /// The TokenReview requests received.
    pub fn token_reviews(&self) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.path == TOKEN_REVIEWS).collect()
    }

    pub fn requests_to(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }
}

// ---- JSON builders for what tests put in ------------------------------------------------------

/// A pod as the API server stores it (`spec.nodeName` set: it is scheduled).
pub struct PodBuilder {
    pod: Value,
}

pub fn pod(namespace: &str, name: &str, uid: &str, node: &str) -> PodBuilder {
    PodBuilder {
        pod: json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {},
                "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1"}]
            },
            "spec": {
                "nodeName": node,
                "serviceAccountName": "default",
                "serviceAccount": "default",
                "restartPolicy": "Always",
                "containers": []
            },
            "status": {"phase": "Running", "podIP": "10.244.0.7", "hostIP": "127.0.0.1"}
        }),
    }
}

impl PodBuilder {
    pub fn labels(mut self, labels: &[(&str, &str)]) -> Self {
        for (k, v) in labels {
            self.pod["metadata"]["labels"][*k] = json!(v);
        }
        self
    }

    pub fn service_account(mut self, sa: &str) -> Self {
        self.pod["spec"]["serviceAccountName"] = json!(sa);
        self.pod["spec"]["serviceAccount"] = json!(sa);
        self
    }

    /// The pod's controller (`controller: true` owner reference).
    pub fn owner(mut self, api_version: &str, kind: &str, name: &str) -> Self {
        self.pod["metadata"]["ownerReferences"] = json!([{
            "apiVersion": api_version, "kind": kind, "name": name,
            "uid": format!("uid-{}", name), "controller": true, "blockOwnerDeletion": true
        }]);
        self
    }

    pub fn container(mut self, name: &str, image: &str) -> Self {
        push_container(&mut self.pod["spec"]["containers"], name, image);
        self
    }

    pub fn init_container(mut self, name: &str, image: &str) -> Self {
        if self.pod["spec"]["initContainers"].is_null() {
            self.pod["spec"]["initContainers"] = json!([]);
        }
        push_container(&mut self.pod["spec"]["initContainers"], name, image);
        self
    }

    /// An exec probe on a container already added; `probe` is livenessProbe, readinessProbe or
    /// startupProbe.
    pub fn exec_probe(mut self, container: &str, probe: &str, command: &[&str]) -> Self {
        let c = find_container(&mut self.pod, container);
        c[probe] = json!({"exec": {"command": command}, "periodSeconds": 10, "timeoutSeconds": 1});
        self
    }

    /// A non-exec (HTTP) probe, which has no command.
    pub fn http_probe(mut self, container: &str, probe: &str, path: &str) -> Self {
        let c = find_container(&mut self.pod, container);
        c[probe] = json!({"httpGet": {"path": path, "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10});
        self
    }

    pub fn build(self) -> Value {
        self.pod
    }
}

fn push_container(list: &mut Value, name: &str, image: &str) {
    if let Value::Array(items) = list {
        items.push(json!({"name": name, "image": image, "imagePullPolicy": "IfNotPresent", "resources": {}}));
    }
}

fn find_container<'a>(pod: &'a mut Value, name: &str) -> &'a mut Value {
    let spec = &mut pod["spec"];
    for list in ["containers", "initContainers"] {
        if let Some(i) = spec[list].as_array().and_then(|items| items.iter().position(|c| c["name"] == name)) {
            return &mut spec[list][i];
        }
    }
    panic!("pod has no container {name}")
}

/// A workload object owned (controller reference) by `owner` (kind, name) when given.
pub fn workload(
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    owner: Option<(&str, &str, &str)>,
) -> Value {
    let mut object = json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{}", name), "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {}
    });
    if let Some((owner_api_version, owner_kind, owner_name)) = owner {
        object["metadata"]["ownerReferences"] = json!([{
            "apiVersion": owner_api_version, "kind": owner_kind, "name": owner_name,
            "uid": format!("uid-{}", owner_name), "controller": true, "blockOwnerDeletion": true
        }]);
    }
    object
}

/// A ReplicaSet, owned by a Deployment when `deployment` is given.
pub fn replicaset(namespace: &str, name: &str, deployment: Option<&str>) -> Value {
    workload("apps/v1", "ReplicaSet", namespace, name, deployment.map(|d| ("apps/v1", "Deployment", d)))
}

/// A Job, owned by a CronJob when `cronjob` is given.
pub fn job(namespace: &str, name: &str, cronjob: Option<&str>) -> Value {
    workload("batch/v1", "Job", namespace, name, cronjob.map(|c| ("batch/v1", "CronJob", c)))
}

// ---- serving ------------------------------------------------------------------------------------

fn key_of(object: &Value) -> (String, String) {
    (
        object["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
        object["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
    )
}

fn set_rv(object: &mut Value, rv: u64) {
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
}

fn node_of(pod: &Value) -> Option<&str> {
    pod["spec"]["nodeName"].as_str()
}

fn on_node(node: Option<&str>, pod: &Value) -> bool {
    node.is_none_or(|n| node_of(pod) == Some(n))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn record_and_send(s: &mut State, kind: &'static str, object: Value) {
    let line = event_line(kind, &object);
    s.watchers.retain(|w| !on_node(w.node.as_deref(), &object) || w.tx.send(WatchFrame::Line(line.clone())).is_ok());
    let rv = s.rv;
    s.history.push(HistoryEvent { rv, kind, object });
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn gone_status(requested: u64, oldest: u64) -> Value {
    status(410, "Expired", &format!("too old resource version: {requested} ({oldest})"))
}

fn forbidden(path: &str) -> Response<StandinBody> {
    let message = format!(
        "pods is forbidden: User \"system:serviceaccount:peregrine:peregrine-agent\" cannot list resource \"pods\" in API group \"\" at the cluster scope ({path})"
    );
    json_response(StatusCode::FORBIDDEN, &status(403, "Forbidden", &message))
}

fn json_response(code: StatusCode, body: &Value) -> Response<StandinBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut res = Response::new(StandinBody::Full(Some(Bytes::from(bytes))));
    *res.status_mut() = code;
    res.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    res
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// `spec.nodeName=<node>` (the only field selector the stand-in knows); Err for any other.
fn node_selector(req: &RecordedRequest) -> Result<Option<String>, String> {
    match req.param("fieldSelector") {
        None | Some("") => Ok(None),
        Some(sel) => sel
            .strip_prefix("spec.nodeName==")
            .or_else(|| sel.strip_prefix("spec.nodeName="))
            .filter(|n| !n.contains(','))
            .map(|n| Some(n.to_owned()))
            .ok_or_else(|| format!("stand-in supports only fieldSelector=spec.nodeName=<node>, got {sel}")),
    }
}

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The audience the API server's own tokens carry (the default service-account issuer's).
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<StandinBody> {
    let (parts, mut body) = req.into_parts();
    let mut bytes = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match frame.ok().and_then(|f| f.into_data().ok()) {
            Some(data) => bytes.extend_from_slice(&data),
            None => break,
        }
    }
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parse_query(parts.uri.query()),
        authorization: parts.headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned),
        body: serde_json::from_slice(&bytes).ok(),
    };
    shared.lock().requests.push(recorded.clone());
    if shared.lock().forbidden {
        return forbidden(&recorded.path);
    }
    if recorded.method == "POST" && recorded.path == TOKEN_REVIEWS {
        return token_review(shared, &recorded);
    }
    if recorded.method != "GET" {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(405, "MethodNotAllowed", "the stand-in only serves GET"),
        );
    }
    if recorded.path == "/api/v1/pods" {
        let node = match node_selector(&recorded) {
            Ok(node) => node,
            Err(msg) => return json_response(StatusCode::BAD_REQUEST, &status(400, "BadRequest", &msg)),
        };
        return if recorded.is_pod_watch() {
            watch(shared, &recorded, node).await
        } else {
            list(shared, &recorded, node.as_deref())
        };
    }
    get_object(shared, &recorded.path)
}

fn token_review(shared: &Shared, req: &RecordedRequest) -> Response<StandinBody> {
    if !req.authorization.as_deref().is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7) {
        return json_response(StatusCode::UNAUTHORIZED, &status(401, "Unauthorized", "Unauthorized"));
    }
    let Some(spec) = req.body.as_ref().filter(|b| b["kind"] == "TokenReview").map(|b| b["spec"].clone()) else {
        return json_response(StatusCode::BAD_REQUEST, &status(400, "BadRequest", "the body is not a TokenReview"));
    };
    let token = spec["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = match spec["audiences"].as_array() {
        Some(a) if !a.is_empty() => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => vec![API_AUDIENCE.to_owned()],
    };
    let known = shared.lock().tokens.get(token).cloned();
    let review_status = match known {
        None => json!({"user": {}, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}),
        Some((username, node, audiences)) => {
            let common: Vec<&String> = wanted.iter().filter(|w| audiences.contains(w)).collect();
            if common.is_empty() {
                json!({"user": {}, "error": format!("[invalid bearer token, token audiences {audiences:?} is invalid for the target audiences {wanted:?}]")})
            } else {
                let namespace = username.split(':').nth(2).unwrap_or_default().to_owned();
                let mut extra = json!({
                    "authentication.kubernetes.io/credential-id": ["JTI=standin"],
                    "authentication.kubernetes.io/pod-name": ["peregrine-agent-standin"],
                    "authentication.kubernetes.io/pod-uid": ["00000000-0000-4000-8000-000000000001"],
                });
                if let Some(node) = node {
                    extra["authentication.kubernetes.io/node-name"] = json!([node]);
                    extra["authentication.kubernetes.io/node-uid"] = json!(["00000000-0000-4000-8000-000000000002"]);
                }
                json!({
                    "authenticated": true,
                    "user": {
                        "username": username,
                        "uid": "00000000-0000-4000-8000-000000000003",
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
                        "extra": extra,
                    },
                    "audiences": common,
                })
            }
        }
    };
    json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": review_status,
        }),
    )
}

fn list(shared: &Shared, req: &RecordedRequest, node: Option<&str>) -> Response<StandinBody> {
    let s = shared.lock();
    let limit = req.param("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    // The continue token is "<resourceVersion>:<offset>"; opaque to clients, as the real one.
    let (list_rv, offset) = match req.param("continue") {
        Some(token) if !token.is_empty() => {
            let parsed =
                token.split_once(':').and_then(|(rv, off)| Some((rv.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
            match parsed {
                Some((rv, _)) if rv < s.expired_below => {
                    let msg = "The provided continue parameter is too old to display a consistent list result.";
                    return json_response(StatusCode::GONE, &status(410, "Expired", msg));
                }
                Some(p) => p,
                None => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &status(400, "BadRequest", "invalid continue token"),
                    );
                }
            }
        }
        _ => (s.rv, 0),
    };
    let matching: Vec<Value> = s
        .pods
        .values()
        .filter(|p| on_node(node, p))
        .map(|p| {
            // The real API server leaves kind and apiVersion out of a typed list's items.
            let mut item = p.clone();
            if let Value::Object(m) = &mut item {
                m.remove("kind");
                m.remove("apiVersion");
            }
            item
        })
        .collect();
    let total = matching.len();
    let page: Vec<Value> = matching.into_iter().skip(offset).take(limit.unwrap_or(usize::MAX)).collect();
    let next = offset + page.len();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if next < total {
        metadata["continue"] = json!(format!("{list_rv}:{next}"));
        metadata["remainingItemCount"] = json!(total - next);
    }
    json_response(StatusCode::OK, &json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": page}))
}

async fn watch(shared: &Shared, req: &RecordedRequest, node: Option<String>) -> Response<StandinBody> {
    let mut paused = shared.paused.subscribe();
    let _ = paused.wait_for(|p| !*p).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let bookmarks = req.param("allowWatchBookmarks") == Some("true");
    let mut s = shared.lock();
    if s.forbidden {
        return forbidden(&req.path);
    }
    match req.param("resourceVersion").unwrap_or_default() {
        // "Start at any point": the current state as synthetic ADDED events, then live.
        "" | "0" => {
            for pod in s.pods.values().filter(|p| on_node(node.as_deref(), p)) {
                let _ = tx.send(WatchFrame::Line(event_line("ADDED", pod)));
            }
        }
        rv => {
            let Ok(rv) = rv.parse::<u64>() else {
                return json_response(StatusCode::BAD_REQUEST, &status(400, "BadRequest", "invalid resourceVersion"));
            };
            if rv < s.expired_below {
                // As the API server: 200, then one ERROR event with a 410 Status, then the end.
                let _ = tx.send(WatchFrame::Line(event_line("ERROR", &gone_status(rv, s.expired_below))));
                drop(tx);
                return stream_response(rx);
            }
            for ev in s.history.iter().filter(|e| e.rv > rv && on_node(node.as_deref(), &e.object)) {
                let _ = tx.send(WatchFrame::Line(event_line(ev.kind, &ev.object)));
            }
        }
    }
    s.watchers.push(Watcher { tx, node, bookmarks });
    stream_response(rx)
}

fn stream_response(rx: mpsc::UnboundedReceiver<WatchFrame>) -> Response<StandinBody> {
    let mut res = Response::new(StandinBody::Stream(rx));
    res.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    res
}

fn get_object(shared: &Shared, path: &str) -> Response<StandinBody> {
    // /apis/<group>/<version>/namespaces/<ns>/<plural>/<name>
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["apis", group, version, "namespaces", ns, plural, name] = parts.as_slice() {
        let key = (format!("{group}/{version}"), (*plural).to_owned(), (*ns).to_owned(), (*name).to_owned());
        if let Some(object) = shared.lock().objects.get(&key) {
            return json_response(StatusCode::OK, object);
        }
        return json_response(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", &format!("{plural}.{group} \"{name}\" not found")),
        );
    }
    json_response(
        StatusCode::NOT_FOUND,
        &status(404, "NotFound", &format!("the server could not find the requested resource ({path})")),
    )
}

/// The stand-in's response body: a whole JSON document, or a watch stream fed by a channel.
enum StandinBody {
    Full(Option<Bytes>),
    Stream(mpsc::UnboundedReceiver<WatchFrame>),
}

impl Body for StandinBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            StandinBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            StandinBody::Stream(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(WatchFrame::Line(line))) => Poll::Ready(Some(Ok(Frame::data(line)))),
                Poll::Ready(Some(WatchFrame::Abort)) => Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "stand-in cut the watch",
                )))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, StandinBody::Full(None))
    }
}
