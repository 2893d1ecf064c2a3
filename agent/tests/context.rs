//! Container and pod context on events, from real pods: a private containerd driven through
//! CRI as kubelet drives it, the real kernel programs, the agent with no Kubernetes API server
//! at all (CRI alone must give the pod's identity). Needs root and xtask/tools.toml's tools.
// Test code: a failed step should stop the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
#[path = "support/kube_standin.rs"]
mod kube_standin;

use std::time::Duration;

use serde_json::Value;
use support::{
    Agent, Collector, TempDir, TestCgroup, boot_now_ns, metric,
    containerd::{BUSYBOX_IMAGE, Containerd, PodSpec},
    tool, unique,
};

const WAIT: Duration = Duration::from_secs(30);

fn argv(e: &Value, kind: &str) -> Vec<String> {
    e["kind"][kind]["process"]["argv"].as_array().map(|a| a.iter().map(|s| s.as_str().unwrap_or("").to_owned()).collect()).unwrap_or_default()
}

fn exec_with(collector: &Collector, args: &[&str]) -> Value {
    let want: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    collector.wait_event(WAIT, &format!("the exec of {args:?}"), |e| argv(e, "exec") == want)
}

fn privilege(e: &Value) -> Vec<&str> {
    e["privilege"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

fn started_events<'a>(events: &'a [Value], container_id: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"]["container_started"].is_object() && e["container"]["id"] == container_id).collect()
}

fn cri_socket_set(ctrd: &Containerd) -> String {
    format!("container.cri_sockets=[\"{}\"]", ctrd.socket().display())
}

#[test]
fn pods_get_their_identity_image_and_privilege_from_cri_alone() {
    let _turn = containers_turn();
    let ctrd = Containerd::start();
    let dir = TempDir::new("context");
    let collector = Collector::start(dir.path());
    // A rule on the context: Falco's container.* and k8s.* fields come from CRI here.
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "- rule: Echo in privileged container\n  desc: test\n  condition: evt.type = execve and container.privileged = true and proc.name = echo\n  \
output: echo in privileged container (id=%container.id pod=%k8s.pod.name ns=%k8s.ns.name image=%container.image)\n  priority: WARNING\n",
    )
    .unwrap();
    let _agent = Agent::start(
        dir.path(),
        &collector.address(),
        &[&cri_socket_set(&ctrd), &format!("rules.paths=[\"{}\"]", rules.display())],
    );

    let mut web = PodSpec::new("web");
    web.namespace = "shop".into();
    web.labels.insert("tier".into(), "frontend".into());
    let web_pod = ctrd.run_pod(&web);

    let mut admin = PodSpec::new("node-admin");
    admin.namespace = "kube-system".into();
    admin.privileged = true;
    admin.host_pid = true;
    let admin_pod = ctrd.run_pod(&admin);

    // A container that lives 200 ms: its first exec must still leave with full context.
    let marker = unique("short-");
    let short_script = format!("sleep 0.2; : {marker}");
    let short = PodSpec::new("short").command(&["/bin/sh", "-c", &short_script]);
    let short_pod = ctrd.run_pod(&short);
    assert_eq!(ctrd.wait_exited(&short_pod.container_id, WAIT), 0);

    let web_marker = unique("web-");
    let admin_marker = unique("admin-");
    ctrd.exec_sync(&web_pod.container_id, &["/bin/echo", &web_marker], WAIT);
    ctrd.exec_sync(&admin_pod.container_id, &["/bin/echo", &admin_marker], WAIT);

    let e = exec_with(&collector, &["/bin/echo", &web_marker]);
    let c = &e["container"];
    assert_eq!(e["enrichment"], "complete", "{e}");
    assert_eq!(c["id"], web_pod.container_id.as_str());
    assert_eq!(c["name"], "main");
    assert_eq!(c["runtime"], "containerd");
    assert_eq!(c["image"], BUSYBOX_IMAGE);
    assert!(c["image_digest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{c}");
    assert_eq!(c["cgroup"], web_pod.cgroup_path.as_str());
    assert_eq!(c["pod"]["name"], "web");
    assert_eq!(c["pod"]["namespace"], "shop");
    assert_eq!(c["pod"]["uid"], web.uid.as_str());
    assert_eq!(c["pod"]["labels"]["tier"], "frontend");
    assert_eq!(c["security"]["privileged"], false);
    assert_eq!(c["security"]["host_pid"], false);
    assert_eq!(c["sandbox"], false);
    assert_eq!(privilege(&e), Vec::<&str>::new(), "an unprivileged pod is not flagged: {e}");
    let web_exec_id = e["id"].clone();

    let e = exec_with(&collector, &["/bin/echo", &admin_marker]);
    let c = &e["container"];
    assert_eq!(e["enrichment"], "complete", "{e}");
    assert_eq!(c["id"], admin_pod.container_id.as_str());
    assert_eq!(c["pod"]["name"], "node-admin");
    assert_eq!(c["pod"]["namespace"], "kube-system");
    assert_eq!(c["pod"]["uid"], admin.uid.as_str());
    assert_eq!(c["security"]["privileged"], true);
    assert_eq!(c["security"]["host_pid"], true);
    // The spec says privileged and host PID; the kernel agrees: the process is in our pid
    // namespace and holds every capability we hold (0x1fffeffffff here: no CAP_SYS_RESOURCE).
    assert_eq!(privilege(&e), vec!["privileged", "host_pid", "all_capabilities"], "{e}");
    assert_eq!(e["kind"]["exec"]["process"]["creds"]["cap_effective"], 0x1fffeffffffu64);
    let alert = collector.wait_event(WAIT, "the rule's alert", |a| a["kind"]["alert"]["event_id"] == e["id"]);
    assert_eq!(
        alert["kind"]["alert"]["output"],
        format!("echo in privileged container (id={} pod=node-admin ns=kube-system image={BUSYBOX_IMAGE})", &admin_pod.container_id[..12])
    );
    assert_eq!(alert["container"]["id"], admin_pod.container_id.as_str(), "the alert carries its event's context");
    assert_eq!(privilege(&alert), vec!["privileged", "host_pid", "all_capabilities"]);
    // The web exec came earlier in the stream: had it fired, its alert would be there by now.
    let web_alerts = collector.events().into_iter().filter(|a| a["kind"]["alert"]["event_id"] == web_exec_id).count();
    assert_eq!(web_alerts, 0, "the rule does not fire outside a privileged container");

    let e = exec_with(&collector, &["/bin/sh", "-c", &short_script]);
    assert_eq!(e["enrichment"], "complete", "the short-lived container's first exec: {e}");
    assert_eq!(e["container"]["id"], short_pod.container_id.as_str());
    assert_eq!(e["container"]["pod"]["name"], "short");
    assert_eq!(e["container"]["image"], BUSYBOX_IMAGE);
    let exit = collector.wait_event(WAIT, "the short-lived container's exit", |x| {
        argv(x, "exit") == ["/bin/sh", "-c", &short_script] && x["kind"]["exit"]["process"]["pid"] == e["kind"]["exec"]["process"]["pid"]
    });
    assert_eq!(exit["enrichment"], "complete");
    assert_eq!(exit["container"]["pod"]["name"], "short");

    // One container_started per container, with its security context, ahead of the events
    // that waited for it.
    let events = collector.events();
    for (pod, privileged) in [(&web_pod, false), (&admin_pod, true), (&short_pod, false)] {
        let started = started_events(&events, &pod.container_id);
        assert_eq!(started.len(), 1, "container_started of {}: {started:?}", pod.container_id);
        assert_eq!(started[0]["container"]["security"]["privileged"], privileged);
        assert_eq!(started[0]["kind"]["container_started"]["existing"], false);
        assert_eq!(started[0]["enrichment"], "complete");
    }
    let short_started = started_events(&events, &short_pod.container_id)[0];
    assert!(short_started["seq"].as_u64() < e["seq"].as_u64(), "container_started leads the container's events");
    assert_eq!(privilege(started_events(&events, &admin_pod.container_id)[0]), vec!["privileged", "host_pid"]);
}

#[test]
fn containers_running_before_the_agent_are_resolved_at_start() {
    let _turn = containers_turn();
    let ctrd = Containerd::start();
    let spec = PodSpec::new("early");
    let pod = ctrd.run_pod(&spec);
    let dir = TempDir::new("context-seed");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &[&cri_socket_set(&ctrd)]);

    let started = collector.wait_event(WAIT, "the existing container's container_started", |e| {
        e["kind"]["container_started"].is_object() && e["container"]["id"] == pod.container_id.as_str()
    });
    assert_eq!(started["kind"]["container_started"]["existing"], true);
    assert_eq!(started["kind"]["container_started"]["pid"], pod.pid);
    assert_eq!(started["container"]["pod"]["name"], "early");

    let marker = unique("early-");
    ctrd.exec_sync(&pod.container_id, &["/bin/echo", &marker], WAIT);
    let e = exec_with(&collector, &["/bin/echo", &marker]);
    assert_eq!((e["enrichment"].as_str(), e["container"]["pod"]["uid"].as_str()), (Some("complete"), Some(spec.uid.as_str())));
}

/// A kubelet-style container cgroup that no runtime knows, with a process run in it.
/// Its own top-level `kubepods-*` directory: the containerd fixture owns `/kubepods`.
/// Every agent sees every cgroup on the node: a test counting lookups must not see another
/// test's containers (a real pod's cgroup exists before containerd can answer for it, and an
/// agent with a short give-up time counts it as not found). The tests here take turns.
static CONTAINERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn containers_turn() -> std::sync::MutexGuard<'static, ()> {
    CONTAINERS.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_in_unknown_container(args: &[&str]) -> (String, String) {
    let pod_uid = unique("uid-");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let id = format!("{:064x}", nanos ^ (u128::from(std::process::id()) << 64));
    let cg = TestCgroup::at(&format!("/{}/besteffort/pod{pod_uid}/{id}", unique("kubepods-test-")));
    assert!(cg.run(args).success());
    (pod_uid, id)
}

#[test]
fn without_a_runtime_events_keep_flowing_marked_partial() {
    let _turn = containers_turn();
    let dir = TempDir::new("context-nort");
    let collector = Collector::start(dir.path());
    let missing = dir.path().join("no-such-runtime.sock");
    let agent = Agent::start(
        dir.path(),
        &collector.address(),
        &[&format!("container.cri_sockets=[\"{}\"]", missing.display())],
    );
    let truebin = tool("true");
    let truebin = truebin.to_str().unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let marker = unique("nort-");
        let (pod_uid, id) = run_in_unknown_container(&[truebin, &marker]);
        let e = exec_with(&collector, &[truebin, &marker]);
        assert_eq!(e["enrichment"], "partial", "{e}");
        assert_eq!(e["container"]["id"], id.as_str());
        assert_eq!(e["container"]["pod"]["uid"], pod_uid.as_str());
        assert_eq!(e["container"]["missing"], serde_json::json!(["runtime"]));
        seen.push(e);
    }
    let metrics = agent.metrics();
    let partial = metric(&metrics, "peregrine_agent_events_enrichment_incomplete_total{status=\"partial\"}").unwrap_or(0.0);
    assert!(partial >= 3.0, "partial events counted: {partial}\n{metrics}");
    // The cause is logged once, not per container.
    let log = agent.proc.stderr_text();
    assert_eq!(log.matches("no container runtime socket answers").count(), 1, "{log}");
    assert_eq!(log.matches("container runtime lookup failed").count(), 1, "{log}");
}

#[test]
fn a_container_the_runtime_does_not_know_leaves_partial_after_the_wait() {
    let _turn = containers_turn();
    let ctrd = Containerd::start();
    let dir = TempDir::new("context-unknown");
    let collector = Collector::start(dir.path());
    let agent = Agent::start(
        dir.path(),
        &collector.address(),
        &[&cri_socket_set(&ctrd), "container.resolve_wait_ms=200", "container.resolve_give_up_ms=400"],
    );
    let truebin = tool("true");
    let truebin = truebin.to_str().unwrap();
    let marker = unique("unknown-");
    let before = boot_now_ns();
    let (_, id) = run_in_unknown_container(&[truebin, &marker]);
    let e = exec_with(&collector, &[truebin, &marker]);
    assert_eq!(e["enrichment"], "partial");
    assert_eq!(e["container"]["id"], id.as_str());
    // The held event did not hold up the drain barrier for longer than the wait.
    collector.wait_drained_past(before, WAIT);
    let lookups = support::wait_for(WAIT, "the lookup to give up", || {
        metric(&agent.metrics(), "peregrine_agent_container_lookups_total{result=\"not_found\"}").filter(|n| *n >= 1.0)
    });
    assert_eq!(lookups, 1.0);
    let started = started_events(&collector.events(), &id).len();
    assert_eq!(started, 0, "no container_started for a container nobody knows");
}

#[test]
fn a_runtime_that_never_answers_does_not_block_events() {
    let _turn = containers_turn();
    // A socket that accepts and then says nothing: every CRI call must time out.
    let dir = TempDir::new("context-slow");
    let sock = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64).flatten() {
            keep.lock().unwrap().push(conn);
        }
    });
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(
        dir.path(),
        &collector.address(),
        &[&format!("container.cri_sockets=[\"{}\"]", sock.display()), "container.cri_timeout_ms=300"],
    );
    let truebin = tool("true");
    let truebin = truebin.to_str().unwrap();
    let marker = unique("silent-");
    let (_, id) = run_in_unknown_container(&[truebin, &marker]);
    let e = exec_with(&collector, &[truebin, &marker]);
    assert_eq!(e["enrichment"], "partial");
    assert_eq!(e["container"]["id"], id.as_str());
    // Host events were never held behind it.
    let host_marker = unique("host-");
    assert!(std::process::Command::new(truebin).arg(&host_marker).status().unwrap().success());
    let h = exec_with(&collector, &[truebin, &host_marker]);
    assert_eq!(h["enrichment"], "complete");
    assert!(h["container"].is_null());
}

#[test]
fn the_kubernetes_api_adds_the_workload_service_account_and_current_labels() {
    let _turn = containers_turn();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // A stand-in for the API server (none can run here), driven by kube-rs's own watcher.
    let api = rt.block_on(kube_standin::KubeStandin::start());
    let ctrd = Containerd::start();
    let mut spec = PodSpec::new("api-web");
    spec.namespace = "shop".into();
    api.put_object(kube_standin::replicaset("shop", "api-web-7d4b9", Some("api-web")));
    api.add_pod(
        kube_standin::pod("shop", "api-web", &spec.uid, "test-node")
            .labels(&[("app", "api-web"), ("track", "stable")])
            .service_account("web-sa")
            .owner("apps/v1", "ReplicaSet", "api-web-7d4b9")
            .container("main", BUSYBOX_IMAGE)
            .build(),
    );
    let dir = TempDir::new("context-k8s");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(
        dir.path(),
        &collector.address(),
        &[&cri_socket_set(&ctrd), "kubernetes.enabled=true", &format!("kubernetes.api_url=\"{}\"", api.url())],
    );
    let pod = ctrd.run_pod(&spec);

    // The watch may still be listing when the first exec happens: ask again (bounded) until
    // the API's view is there, then check it exactly.
    let exec_in = |container: &str| {
        let marker = unique("k8s-");
        ctrd.exec_sync(container, &["/bin/echo", &marker], WAIT);
        exec_with(&collector, &["/bin/echo", &marker])
    };
    let e = support::wait_for(WAIT, "an exec with the API's view of the pod", || {
        Some(exec_in(&pod.container_id)).filter(|e| e["enrichment"] == "complete")
    });
    let p = &e["container"]["pod"];
    assert_eq!(p["name"], "api-web");
    assert_eq!(p["uid"], spec.uid.as_str());
    assert_eq!((p["workload_kind"].as_str(), p["workload_name"].as_str()), (Some("Deployment"), Some("api-web")));
    assert_eq!(p["service_account"], "web-sa");
    assert_eq!(p["labels"], serde_json::json!({"app": "api-web", "track": "stable"}));

    // A label changed in the API is on a later event.
    api.set_pod_labels("shop", "api-web", &[("app", "api-web"), ("track", "canary")]);
    let e = support::wait_for(WAIT, "an exec with the changed label", || {
        Some(exec_in(&pod.container_id)).filter(|e| e["container"]["pod"]["labels"]["track"] == "canary")
    });
    assert_eq!(e["container"]["pod"]["workload_kind"], "Deployment");

    // A pod the API does not know keeps its CRI identity and is marked partial.
    let unlisted = ctrd.run_pod(&PodSpec::new("unlisted"));
    let e = exec_in(&unlisted.container_id);
    assert_eq!(e["enrichment"], "partial");
    assert_eq!(e["container"]["missing"], serde_json::json!(["kubernetes"]));
    assert_eq!(e["container"]["pod"]["name"], "unlisted");

    // Only this node's pods were asked for.
    let lists = api.pod_lists();
    assert!(!lists.is_empty());
    assert!(lists.iter().all(|r| r.param("fieldSelector") == Some("spec.nodeName=test-node")), "{:?}", lists.iter().map(|r| r.param("fieldSelector")).collect::<Vec<_>>());
    drop(api);
    drop(rt);
}
