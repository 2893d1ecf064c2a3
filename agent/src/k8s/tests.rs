//! The pod watch against the stand-in API server (tests/support/kube_standin.rs): real HTTP,
//! real Kubernetes JSON, kube's own watcher. Every wait is bounded.

#[path = "../../tests/support/kube_standin.rs"]
mod kube_standin;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use kube_standin::{KubeStandin, job, pod, replicaset, workload};
use tokio::task::JoinHandle;

use super::{
    K8sConfig, K8sMetrics, PodMeta, PodStore,
    metrics::reason,
    start, start_tuned,
    watch::{ErrorLog, Tuning},
};

const NODE: &str = "node-a";
/// Bound on any one wait; kube's backoff after an error starts at 0.8 s and doubles.
const WAIT: Duration = Duration::from_secs(30);

struct Running {
    store: PodStore,
    metrics: K8sMetrics,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(url: &str, retention_ms: u64) -> K8sConfig {
    K8sConfig {
        enabled: true,
        api_url: Some(url.to_owned()),
        deleted_retention_ms: retention_ms,
        ..K8sConfig::default()
    }
}

fn run(standin: &KubeStandin, retention_ms: u64, page_size: u32) -> Running {
    let metrics = K8sMetrics::default();
    let mut tuning = Tuning::for_retention(Duration::from_millis(retention_ms));
    tuning.page_size = page_size;
    let (store, task) =
        start_tuned(&config(&standin.url(), retention_ms), NODE, metrics.clone(), tuning).expect("start");
    Running { store, metrics, task }
}

/// Polls `f` until it gives Some, for at most [`WAIT`].
async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn until_pod(store: &PodStore, uid: &str, what: &str, ok: impl Fn(&PodMeta) -> bool) -> Arc<PodMeta> {
    until(what, || store.get(uid).filter(|p| ok(p))).await
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[tokio::test]
async fn initial_list_fills_the_store_with_this_nodes_pods() {
    let standin = KubeStandin::start().await;
    standin.add_pod(
        pod("shop", "web-0", "uid-web-0", NODE)
            .labels(&[("app", "web"), ("tier", "frontend")])
            .service_account("web-sa")
            .container("nginx", "nginx:1.27")
            .build(),
    );
    standin.add_pod(pod("kube-system", "dns-0", "uid-dns-0", NODE).container("coredns", "coredns:1.11").build());
    standin.add_pod(pod("shop", "db-0", "uid-db-0", NODE).container("pg", "postgres:17").build());
    standin.add_pod(pod("shop", "elsewhere", "uid-elsewhere", "node-b").container("c", "busybox").build());
    // Page size 2: three pods on this node take two pages (limit/continue).
    let r = run(&standin, 300_000, 2);

    until("the store to sync", || r.store.synced().then_some(())).await;
    let web = r.store.get("uid-web-0").expect("web-0 listed");
    assert_eq!(web.name, "web-0");
    assert_eq!(web.namespace, "shop");
    assert_eq!(web.labels, labels(&[("app", "web"), ("tier", "frontend")]));
    assert_eq!(web.service_account, "web-sa");
    assert_eq!((web.workload_kind.as_str(), web.workload_name.as_str()), ("Pod", "web-0"));
    assert_eq!(web.containers.len(), 1);
    assert_eq!((web.containers[0].name.as_str(), web.containers[0].image.as_str()), ("nginx", "nginx:1.27"));
    assert!(!web.deleted);
    let dns = r.store.get("uid-dns-0").expect("dns-0 listed");
    assert_eq!((dns.namespace.as_str(), dns.service_account.as_str()), ("kube-system", "default"));
    assert!(r.store.get("uid-db-0").is_some(), "the second page was fetched");
    assert!(r.store.get("uid-elsewhere").is_none(), "another node's pod is not watched");
    assert_eq!(r.store.state().pods, 3);
    assert_eq!(r.metrics.pods.get(), 3);
    assert_eq!(r.metrics.synced.get(), 1);

    let lists = standin.pod_lists();
    assert_eq!(lists.len(), 2, "two pages: {lists:?}");
    assert!(lists.iter().all(|l| l.param("fieldSelector") == Some("spec.nodeName=node-a")), "{lists:?}");
    assert_eq!(lists[0].param("limit"), Some("2"));
    assert!(lists[1].param("continue").is_some(), "second page asked with the continue token: {lists:?}");
    let watch = until("the watch to start", || standin.pod_watches().into_iter().next()).await;
    assert_eq!(watch.param("fieldSelector"), Some("spec.nodeName=node-a"));
    assert_eq!(watch.param("allowWatchBookmarks"), Some("true"), "bookmarks requested");
    let list_rv = standin.resource_version().to_string();
    assert_eq!(watch.param("resourceVersion"), Some(list_rv.as_str()), "watch resumes from the list's resourceVersion");
}

#[tokio::test]
async fn watch_sees_added_modified_and_deleted_pods() {
    let standin = KubeStandin::start().await;
    standin.add_pod(pod("shop", "web-0", "uid-web-0", NODE).labels(&[("app", "web")]).build());
    let r = run(&standin, 300_000, 500);
    until("the store to sync", || r.store.synced().then_some(())).await;
    until("the watch to start", || (standin.live_watches() == 1).then_some(())).await;

    standin.set_pod_labels("shop", "web-0", &[("app", "web"), ("version", "v2")]);
    let web = until_pod(&r.store, "uid-web-0", "the label change", |p| p.labels.contains_key("version")).await;
    assert_eq!(web.labels, labels(&[("app", "web"), ("version", "v2")]));

    standin.add_pod(pod("shop", "web-1", "uid-web-1", NODE).labels(&[("app", "web")]).build());
    until_pod(&r.store, "uid-web-1", "the added pod", |_| true).await;
    standin.add_pod(pod("shop", "other-node", "uid-other", "node-b").build());
    standin.delete_pod("shop", "web-1");
    let gone = until_pod(&r.store, "uid-web-1", "the deletion", |p| p.deleted).await;
    assert_eq!(gone.name, "web-1", "a deleted pod keeps its context");
    assert!(r.store.get("uid-other").is_none());
    assert_eq!(standin.pod_lists().len(), 1, "no relist");
}

#[tokio::test]
async fn owners_resolve_to_the_top_workload() {
    let standin = KubeStandin::start().await;
    standin.put_object(replicaset("shop", "web-5d8f9c7b6", Some("web")));
    standin.put_object(job("ops", "backup-29001234", Some("backup")));
    standin.put_object(replicaset("shop", "orphan-rs", None));
    let owned = |name: &str, uid: &str, api: &str, kind: &str, owner: &str| {
        pod(if kind == "Job" { "ops" } else { "shop" }, name, uid, NODE)
            .owner(api, kind, owner)
            .container("c", "img")
            .build()
    };
    standin.add_pod(owned("web-5d8f9c7b6-abcde", "uid-deploy-1", "apps/v1", "ReplicaSet", "web-5d8f9c7b6"));
    standin.add_pod(owned("web-5d8f9c7b6-fghij", "uid-deploy-2", "apps/v1", "ReplicaSet", "web-5d8f9c7b6"));
    standin.add_pod(owned("backup-29001234-xyz", "uid-cron", "batch/v1", "Job", "backup-29001234"));
    standin.add_pod(owned("agent-x7k2p", "uid-ds", "apps/v1", "DaemonSet", "agent"));
    standin.add_pod(owned("db-0", "uid-sts", "apps/v1", "StatefulSet", "db"));
    standin.add_pod(owned("orphan-rs-aaaaa", "uid-orphan", "apps/v1", "ReplicaSet", "orphan-rs"));
    standin.add_pod(pod("shop", "debug", "uid-bare", NODE).container("c", "img").build());
    let r = run(&standin, 300_000, 500);
    until("the store to sync", || r.store.synced().then_some(())).await;

    let workload_of = |uid: &str| {
        let p = r.store.get(uid).unwrap_or_else(|| panic!("{uid} in the store"));
        (p.workload_kind.clone(), p.workload_name.clone())
    };
    let w = |k: &str, n: &str| (k.to_owned(), n.to_owned());
    assert_eq!(workload_of("uid-deploy-1"), w("Deployment", "web"));
    assert_eq!(workload_of("uid-deploy-2"), w("Deployment", "web"));
    assert_eq!(workload_of("uid-cron"), w("CronJob", "backup"));
    assert_eq!(workload_of("uid-ds"), w("DaemonSet", "agent"));
    assert_eq!(workload_of("uid-sts"), w("StatefulSet", "db"));
    assert_eq!(workload_of("uid-orphan"), w("ReplicaSet", "orphan-rs"));
    assert_eq!(workload_of("uid-bare"), w("Pod", "debug"));
    assert_eq!(
        standin.requests_to("/apis/apps/v1/namespaces/shop/replicasets/web-5d8f9c7b6"),
        1,
        "cached per ReplicaSet"
    );
    assert_eq!(standin.requests_to("/apis/batch/v1/namespaces/ops/jobs/backup-29001234"), 1);
    assert_eq!(r.metrics.owner_lookups_failed.get(), 0);

    // A pod whose ReplicaSet is gone still gets its immediate owner, and the failure counts.
    standin.add_pod(owned("lost-abc12", "uid-lost", "apps/v1", "ReplicaSet", "lost"));
    until_pod(&r.store, "uid-lost", "the pod with a missing ReplicaSet", |_| true).await;
    assert_eq!(workload_of("uid-lost"), w("ReplicaSet", "lost"));
    assert_eq!(r.metrics.owner_lookups_failed.get(), 1);
}

#[tokio::test]
async fn owner_lookup_failure_is_retried_later() {
    let standin = KubeStandin::start().await;
    let metrics = K8sMetrics::default();
    let mut tuning = Tuning::for_retention(Duration::from_secs(300));
    tuning.sweep_interval = Duration::from_millis(50);
    tuning.owner_retry = Duration::from_millis(200);
    let (store, task) = start_tuned(&config(&standin.url(), 300_000), NODE, metrics.clone(), tuning).expect("start");
    let r = Running { store, metrics, task };
    until("the store to sync", || r.store.synced().then_some(())).await;
    until("the watch to start", || (standin.live_watches() == 1).then_some(())).await;
    // The ReplicaSet exists, but its GET is refused (as with RBAC that lacks replicasets); the
    // pod arrives on the live watch, which a 403 does not touch.
    standin.put_object(replicaset("shop", "api-7c9d", Some("api")));
    standin.set_forbidden(true);
    standin.add_pod(pod("shop", "api-7c9d-q1w2e", "uid-api", NODE).owner("apps/v1", "ReplicaSet", "api-7c9d").build());
    let p = until_pod(&r.store, "uid-api", "the pod", |_| true).await;
    assert_eq!(
        (p.workload_kind.as_str(), p.workload_name.as_str()),
        ("ReplicaSet", "api-7c9d"),
        "immediate owner meanwhile"
    );
    assert!(r.metrics.owner_lookups_failed.get() >= 1);
    standin.set_forbidden(false);
    let p = until_pod(&r.store, "uid-api", "the owner resolved on a later sweep", |p| p.workload_kind == "Deployment")
        .await;
    assert_eq!(p.workload_name, "api");
}

#[tokio::test]
async fn probe_commands_are_captured_per_container() {
    let standin = KubeStandin::start().await;
    standin.add_pod(
        pod("shop", "api-0", "uid-api-0", NODE)
            .init_container("migrate", "api:1.0")
            .container("api", "api:1.0")
            .exec_probe("api", "livenessProbe", &["/bin/sh", "-c", "curl -fs localhost:8080/healthz"])
            .exec_probe("api", "readinessProbe", &["/ready"])
            .http_probe("api", "startupProbe", "/startup")
            .container("sidecar", "envoy:1.31")
            .exec_probe("sidecar", "startupProbe", &["pilot-agent", "wait"])
            .build(),
    );
    let r = run(&standin, 300_000, 500);
    let p = until_pod(&r.store, "uid-api-0", "the pod", |_| true).await;
    let by_name: BTreeMap<&str, &super::store::ContainerMeta> = p.containers.iter().map(|c| (c.name.as_str(), c)).collect();
    assert_eq!(by_name.len(), 3, "{:?}", p.containers);
    assert!(by_name["migrate"].probe_commands.is_empty());
    assert_eq!(
        by_name["api"].probe_commands,
        vec![
            vec!["/bin/sh".to_owned(), "-c".to_owned(), "curl -fs localhost:8080/healthz".to_owned()],
            vec!["/ready".to_owned()]
        ],
        "liveness and readiness exec commands; the HTTP startup probe has none"
    );
    assert_eq!(by_name["sidecar"].probe_commands, vec![vec!["pilot-agent".to_owned(), "wait".to_owned()]]);
    assert_eq!(by_name["sidecar"].image, "envoy:1.31");
}

#[tokio::test]
async fn watch_resumes_from_a_bookmark() {
    let standin = KubeStandin::start().await;
    standin.add_pod(pod("shop", "web-0", "uid-web-0", NODE).build());
    let r = run(&standin, 300_000, 500);
    until("the store to sync", || r.store.synced().then_some(())).await;
    until("the watch to start", || (standin.live_watches() == 1).then_some(())).await;
    let list_rv = standin.resource_version();
    // Changes on another node move the resourceVersion without an event on this watch; the
    // bookmark carries the new one.
    standin.add_pod(pod("shop", "far-0", "uid-far-0", "node-b").build());
    standin.add_pod(pod("shop", "far-1", "uid-far-1", "node-b").build());
    let bookmark_rv = standin.send_bookmark();
    assert!(bookmark_rv > list_rv);
    // The same connection then ends (the watch's timeout): the bookmark was read first.
    standin.end_watches();
    let resumed = until("the watch to be opened again", || standin.pod_watches().get(1).cloned()).await;
    assert_eq!(resumed.param("resourceVersion"), Some(bookmark_rv.to_string().as_str()), "resumed from the bookmark");
    assert_eq!(standin.pod_lists().len(), 1, "no relist");
    until("the restart to count", || (r.metrics.watch_restarts.get() == 1).then_some(())).await;
    assert!(r.store.synced());
}

#[tokio::test]
async fn gone_resource_version_relists_and_catches_up() {
    let standin = KubeStandin::start().await;
    standin.add_pod(pod("shop", "web-0", "uid-web-0", NODE).labels(&[("v", "1")]).build());
    standin.add_pod(pod("shop", "web-1", "uid-web-1", NODE).build());
    let r = run(&standin, 300_000, 500);
    until("the store to sync", || r.store.synced().then_some(())).await;
    until("the watch to start", || (standin.live_watches() == 1).then_some(())).await;

    // The API server stops answering watches; meanwhile pods change and history is compacted.
    standin.pause_watches();
    standin.delete_pod("shop", "web-1");
    standin.set_pod_labels("shop", "web-0", &[("v", "2")]);
    standin.add_pod(pod("shop", "web-2", "uid-web-2", NODE).build());
    standin.expire_resource_versions();
    until("the held watch request", || (standin.pod_watches().len() == 2).then_some(())).await;
    assert!(r.store.get("uid-web-1").is_some_and(|p| !p.deleted), "nothing known yet");
    standin.resume_watches();

    // 410 → kube's watcher lists again; the list says web-1 is gone and web-0 changed.
    let gone = until_pod(&r.store, "uid-web-1", "web-1 marked deleted", |p| p.deleted).await;
    assert_eq!(gone.name, "web-1");
    let web0 = r.store.get("uid-web-0").expect("web-0");
    assert_eq!(web0.labels, labels(&[("v", "2")]));
    assert!(r.store.get("uid-web-2").is_some_and(|p| !p.deleted));
    until("synced again", || r.store.synced().then_some(())).await;
    let lists = standin.pod_lists();
    assert_eq!(lists.len(), 2, "relisted once: {lists:?}");
    assert_eq!(r.metrics.relists.get(), 1);
    assert_eq!(r.metrics.watch_errors_for(reason::GONE), 1);
    assert_eq!(r.store.state().last_error, None, "410 is routine, not an error to report");

    // A 410 on the live watch (fell behind) relists too.
    until("the watch to start again", || (standin.live_watches() == 1).then_some(())).await;
    standin.send_watch_gone();
    until("a third list", || (standin.pod_lists().len() == 3).then_some(())).await;
    until("synced again", || r.store.synced().then_some(())).await;
    assert_eq!(r.metrics.relists.get(), 2);
}

#[tokio::test]
async fn broken_watch_resumes_without_relisting() {
    let standin = KubeStandin::start().await;
    standin.add_pod(pod("shop", "web-0", "uid-web-0", NODE).build());
    let r = run(&standin, 300_000, 500);
    until("the store to sync", || r.store.synced().then_some(())).await;
    until("the watch to start", || (standin.live_watches() == 1).then_some(())).await;
    let last_rv = standin.resource_version();

    standin.break_watches();
    standin.add_pod(pod("shop", "web-1", "uid-web-1", NODE).build());
    until_pod(&r.store, "uid-web-1", "the pod added across the break", |_| true).await;
    let watches = standin.pod_watches();
    assert!(watches.len() >= 2, "{watches:?}");
    assert_eq!(watches[1].param("resourceVersion"), Some(last_rv.to_string().as_str()), "resumed where it was");
    assert_eq!(standin.pod_lists().len(), 1, "no relist");
    assert!(r.store.get("uid-web-0").is_some());
    until("synced", || r.store.synced().then_some(())).await;
}

#[tokio::test]
async fn forbidden_keeps_the_store_reports_and_recovers() {
    let standin = KubeStandin::start().await;
    standin.add_pod(pod("shop", "web-0", "uid-web-0", NODE).labels(&[("app", "web")]).build());
    let r = run(&standin, 300_000, 500);
    until("the store to sync", || r.store.synced().then_some(())).await;
    until("the watch to start", || (standin.live_watches() == 1).then_some(())).await;

    standin.set_forbidden(true);
    standin.break_watches();
    until("a 403 to be counted", || (r.metrics.watch_errors_for(reason::FORBIDDEN) >= 1).then_some(())).await;
    let state = r.store.state();
    assert!(!state.synced && !r.store.synced());
    assert_eq!(r.metrics.synced.get(), 0);
    let err = state.last_error.expect("last error reported");
    assert!(err.contains("HTTP 403 Forbidden: pods is forbidden"), "{err}");
    let web = r.store.get("uid-web-0").expect("the store keeps what it had");
    assert_eq!(web.labels, labels(&[("app", "web")]));
    assert!(!web.deleted);

    standin.set_forbidden(false);
    until("synced again after the 403s", || r.store.synced().then_some(())).await;
    standin.add_pod(pod("shop", "web-1", "uid-web-1", NODE).build());
    until_pod(&r.store, "uid-web-1", "a pod added after recovery", |_| true).await;
    assert_eq!(r.store.state().errors_since_recovery, 0);
    assert!(r.store.state().last_error.is_some(), "the last error stays readable");
}

#[tokio::test]
async fn forbidden_from_the_start_then_granted() {
    let standin = KubeStandin::start().await;
    standin.add_pod(pod("shop", "web-0", "uid-web-0", NODE).build());
    standin.set_forbidden(true);
    let r = run(&standin, 300_000, 500);
    until("a 403 to be counted", || (r.metrics.watch_errors_for(reason::FORBIDDEN) >= 1).then_some(())).await;
    assert!(!r.store.synced());
    assert!(r.store.get("uid-web-0").is_none());
    standin.set_forbidden(false);
    until_pod(&r.store, "uid-web-0", "the pod once RBAC allows the list", |_| true).await;
    until("synced", || r.store.synced().then_some(())).await;
    assert_eq!(r.metrics.relists.get(), 0, "failed tries of the first list are not relists");
}

#[tokio::test]
async fn deleted_pod_is_kept_for_its_retention_then_evicted() {
    let standin = KubeStandin::start().await;
    standin.add_pod(pod("shop", "job-0", "uid-job-0", NODE).labels(&[("app", "batch")]).build());
    let r = run(&standin, 400, 500);
    until("the store to sync", || r.store.synced().then_some(())).await;
    until("the watch to start", || (standin.live_watches() == 1).then_some(())).await;

    standin.delete_pod("shop", "job-0");
    let deleted_seen = Instant::now();
    let gone = until_pod(&r.store, "uid-job-0", "the deletion", |p| p.deleted).await;
    assert_eq!(gone.labels, labels(&[("app", "batch")]), "late events still resolve, with context");
    until("eviction after retention", || r.store.get("uid-job-0").is_none().then_some(())).await;
    assert!(deleted_seen.elapsed() >= Duration::from_millis(300), "kept for (about) its retention");
    assert_eq!(r.metrics.pods.get(), 0);
}

#[tokio::test]
async fn unreachable_api_server_neither_fails_start_nor_blocks() {
    // A loopback port nobody listens on: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let metrics = K8sMetrics::default();
    let (store, task) = start(&config(&format!("http://127.0.0.1:{port}"), 300_000), NODE, metrics.clone())
        .expect("start does not need the API server");
    let started = Instant::now();
    assert!(store.get("uid-anything").is_none());
    assert!(!store.synced());
    assert!(started.elapsed() < Duration::from_millis(50), "get() does not wait on the API server");
    let err = until("the failure to be reported", || store.state().last_error).await;
    assert!(err.starts_with("listing pods: ") && err.to_lowercase().contains("refused"), "names the root cause: {err}");
    assert!(metrics.watch_errors_for(reason::UNREACHABLE) >= 1);
    assert!(store.get("uid-anything").is_none());
    task.abort();
}

#[tokio::test]
async fn start_refuses_an_empty_node_name_and_bad_config() {
    let metrics = K8sMetrics::default();
    assert!(matches!(
        start(&config("http://127.0.0.1:1", 1000), "", metrics.clone()),
        Err(super::K8sError::NoNodeName)
    ));
    let bad = K8sConfig { api_url: Some("127.0.0.1:6443".to_owned()), ..K8sConfig::default() };
    assert!(matches!(start(&bad, NODE, metrics.clone()), Err(super::K8sError::Invalid("api_url", _))));
    let no_ca = K8sConfig { ca_file: Some("/nonexistent/ca.crt".into()), ..config("https://127.0.0.1:6443", 1000) };
    assert!(matches!(start(&no_ca, NODE, metrics), Err(super::K8sError::ApiServer(peregrine_service::kube::ApiServerError::CaFile(..)))));
}

#[test]
fn config_section_parses_with_defaults() {
    let c: K8sConfig =
        serde_json::from_str(r#"{"enabled": true, "api_url": "http://127.0.0.1:8001"}"#).expect("parses");
    assert!(c.enabled);
    assert_eq!(c.deleted_retention_ms, 300_000);
    assert!(!c.insecure_skip_tls_verify);
    assert!(c.token_file.is_none() && c.ca_file.is_none());
    assert!(serde_json::from_str::<K8sConfig>(r#"{"enabeld": true}"#).is_err(), "unknown keys are refused");
    assert!(!K8sConfig::default().enabled);
}

#[test]
fn repeated_failures_are_logged_once_until_they_change_or_time_passes() {
    let mut log = ErrorLog::default();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let every = Duration::from_secs(300);
    assert!(!log.recovered(t0), "nothing logged, nothing to say on recovery");
    assert_eq!(log.should_log(reason::FORBIDDEN, at(1), every), Some(0));
    for i in 2..=6 {
        assert_eq!(log.should_log(reason::FORBIDDEN, at(i), every), None);
    }
    assert_eq!(log.should_log(reason::UNREACHABLE, at(7), every), Some(5), "a new cause is logged");
    assert_eq!(log.should_log(reason::UNREACHABLE, at(8), every), None);
    assert_eq!(log.should_log(reason::UNREACHABLE, at(400), every), Some(1), "and again later");

    // Flapping: answers, fails again at once: one recovery line, no new failure line.
    assert!(log.recovered(at(401)));
    assert_eq!(log.should_log(reason::UNREACHABLE, at(402), every), None);
    assert!(!log.recovered(at(403)), "no failure logged since the last recovery line");
    // A failure after a minute of working is news.
    assert_eq!(log.should_log(reason::UNREACHABLE, at(403 + 61), every), Some(1));
    assert!(log.recovered(at(500)));
}

#[tokio::test]
async fn workload_objects_of_other_kinds_are_not_looked_up() {
    let standin = KubeStandin::start().await;
    standin.put_object(workload("argoproj.io/v1alpha1", "Rollout", "shop", "canary", None));
    standin.add_pod(
        pod("shop", "canary-abc", "uid-canary", NODE).owner("argoproj.io/v1alpha1", "Rollout", "canary").build(),
    );
    let r = run(&standin, 300_000, 500);
    let p = until_pod(&r.store, "uid-canary", "the pod", |_| true).await;
    assert_eq!((p.workload_kind.as_str(), p.workload_name.as_str()), ("Rollout", "canary"));
    assert!(standin.requests().iter().all(|q| !q.path.starts_with("/apis/")), "no lookup for a kind that is the top");
}
