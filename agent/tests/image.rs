//! The real agent image under the DaemonSet's real security context.
//!
//! The image `cargo xtask image` assembles (`PEREGRINE_AGENT_IMAGE`) is imported into a private
//! containerd and started through the CRI as kubelet would start the DaemonSet's pod: the
//! container's capabilities, user, read-only root, no-new-privileges, seccomp profile, host PID,
//! environment, arguments and volume mounts are read from the rendered manifests
//! (`kubectl kustomize deploy/kustomize/overlays/kind`), not written again here. It must capture
//! an exec in another pod, with that pod's context and its ancestry, and send it to a collector.
//!
//! Then every capability the manifest grants is removed in turn: each removal must break the
//! scenario, with the reason recorded (docs/DEPLOY.md quotes them). A capability whose removal
//! breaks nothing is one the manifest must not grant.
//!
//! Machine-specific translations, each forced by this machine and nothing else: the node's
//! cgroup2 hierarchy is `/sys/fs/cgroup/unified` here (hybrid cgroups; AKS nodes are cgroup v2
//! only, at `/sys/fs/cgroup`); the runtime socket is the private containerd's; there is no API
//! server, so the Kubernetes watch is off; the collector runs in the agent pod's network
//! namespace (there is no cluster network), reached on 127.0.0.1.

// Test scaffolding: a failed set-up step should stop the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Container};
use serde_json::{Value, json};
use support::{
    collector_bin,
    containerd::{Capabilities, Containerd, HostMount, PodSpec},
    free_port, tool, unique, Collector, Proc, TempDir,
};

/// The overlay whose objects the test runs (plain gRPC: the aks overlay's mTLS needs certificates
/// from cert-manager or Key Vault; the security context is the same in both, checked below).
const OVERLAY: &str = "deploy/kustomize/overlays/kind";
const AGENT_DAEMONSET: &str = "peregrine-agent";
const AGENT_CONTAINER: &str = "agent";
/// What the imported image is called (`cargo xtask image` tags its layout `test`).
const AGENT_IMAGE: &str = "localhost/peregrine-agent:test";
/// Upper bound for the agent to start and for one event to arrive.
const WAIT: Duration = Duration::from_secs(60);
/// Upper bound for an event the ablated agent may never send.
const ABLATED_WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The rendered manifests.

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// `kubectl kustomize <overlay>`, parsed into one JSON value per object.
fn render(overlay: &str) -> Vec<Value> {
    let kubectl = tool("/opt/peregrine/py/bin/kubectl");
    let out = Command::new(kubectl).arg("kustomize").arg(repo_root().join(overlay)).output().unwrap();
    assert!(out.status.success(), "kubectl kustomize {overlay}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("kubectl kustomize {overlay} printed invalid YAML: {e}"))
        .iter()
        .map(to_json)
        .filter(|v| !v.is_null())
        .collect()
}

fn to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) => s.parse::<f64>().map(Value::from).unwrap_or_else(|_| Value::String(s.clone())),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => panic!("unsupported YAML key {other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
    }
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the rendered manifests have no {kind} {name}"))
}

/// The agent's DaemonSet and its container, as the manifests give them.
struct Manifest {
    daemonset: DaemonSet,
    container: Container,
    /// ConfigMaps by name: key → content.
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

impl Manifest {
    fn load() -> Self {
        let objects = render(OVERLAY);
        let daemonset: DaemonSet = serde_json::from_value(object(&objects, "DaemonSet", AGENT_DAEMONSET).clone())
            .unwrap_or_else(|e| panic!("DaemonSet {AGENT_DAEMONSET} does not parse as one: {e}"));
        let container = pod_spec(&daemonset)
            .containers
            .iter()
            .find(|c| c.name == AGENT_CONTAINER)
            .unwrap_or_else(|| panic!("DaemonSet {AGENT_DAEMONSET} has no container {AGENT_CONTAINER}"))
            .clone();
        let config_maps = objects
            .iter()
            .filter(|o| o["kind"] == "ConfigMap")
            .map(|o| {
                let data = o["data"].as_object().map(|d| {
                    d.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                });
                (o["metadata"]["name"].as_str().unwrap_or_default().to_owned(), data.unwrap_or_default())
            })
            .collect();
        Self { daemonset, container, config_maps }
    }

    fn capabilities(&self) -> Capabilities {
        let caps = self.container.security_context.as_ref().and_then(|s| s.capabilities.clone()).unwrap_or_default();
        Capabilities { add: caps.add.unwrap_or_default(), drop: caps.drop.unwrap_or_default() }
    }
}

fn pod_spec(ds: &DaemonSet) -> &k8s_openapi::api::core::v1::PodSpec {
    ds.spec.template.spec.as_ref().expect("the DaemonSet has a pod template spec")
}

#[test]
fn every_overlay_gives_the_agent_the_same_security_context() {
    let objects = render("deploy/kustomize/overlays/aks");
    let aks: DaemonSet = serde_json::from_value(object(&objects, "DaemonSet", AGENT_DAEMONSET).clone()).unwrap();
    let kind = Manifest::load();
    let aks_container = pod_spec(&aks).containers.iter().find(|c| c.name == AGENT_CONTAINER).unwrap();
    assert_eq!(aks_container.security_context, kind.container.security_context);
    assert_eq!(pod_spec(&aks).host_pid, pod_spec(&kind.daemonset).host_pid);
    assert_eq!(pod_spec(&aks).host_network, pod_spec(&kind.daemonset).host_network);
    let sc = kind.container.security_context.clone().unwrap_or_default();
    assert_eq!(sc.privileged, Some(false), "the agent is never privileged");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(kind.capabilities().drop, ["ALL"], "everything not listed is dropped");
}

// ---------------------------------------------------------------------------------------------
// The pod, as kubelet would start it on this machine.

/// Where a hostPath of the manifest is on this machine (see the module docs).
fn host_path_here(path: &str, containerd: &Containerd, dir: &Path) -> PathBuf {
    match path {
        "/sys/fs/cgroup" => support::cgroup2_mount(),
        "/run/containerd/containerd.sock" => containerd.socket(),
        "/var/lib/peregrine/spool" => {
            let spool = dir.join("host-spool");
            fs::create_dir_all(&spool).unwrap();
            spool
        }
        p if p.starts_with("/sys/kernel/") => PathBuf::from(p),
        other => panic!("the DaemonSet mounts hostPath {other}: say in this test where that is on this machine"),
    }
}

/// The agent container's mounts: hostPath volumes translated, ConfigMaps written out, emptyDirs
/// and missing optional Secrets as empty directories (as kubelet makes them).
fn mounts(m: &Manifest, containerd: &Containerd, dir: &Path) -> Vec<HostMount> {
    let volumes = pod_spec(&m.daemonset).volumes.clone().unwrap_or_default();
    let mut out = Vec::new();
    for vm in m.container.volume_mounts.clone().unwrap_or_default() {
        let volume = volumes.iter().find(|v| v.name == vm.name).unwrap_or_else(|| panic!("no volume {}", vm.name));
        let source = if let Some(hp) = &volume.host_path {
            host_path_here(&hp.path, containerd, dir)
        } else if let Some(cm) = &volume.config_map {
            let data = m.config_maps.get(&cm.name).unwrap_or_else(|| panic!("no ConfigMap {} in the manifests", cm.name));
            let d = dir.join("volumes").join(&vm.name);
            fs::create_dir_all(&d).unwrap();
            for (key, content) in data {
                fs::write(d.join(key), content).unwrap();
            }
            d
        } else if volume.empty_dir.is_some() || volume.secret.as_ref().is_some_and(|s| s.optional == Some(true)) {
            let d = dir.join("volumes").join(&vm.name);
            fs::create_dir_all(&d).unwrap();
            d
        } else {
            panic!("volume {} is of a kind this test cannot provide: {volume:?}", vm.name)
        };
        let source = match &vm.sub_path {
            Some(sub) if !sub.is_empty() => source.join(sub),
            _ => source,
        };
        out.push(HostMount { host_path: source, container_path: vm.mount_path.clone(), readonly: vm.read_only == Some(true) });
    }
    out
}

/// The agent pod's CRI description, from the manifest, with `capabilities` granted.
fn agent_pod(m: &Manifest, caps: Capabilities, containerd: &Containerd, dir: &Path, collector_port: u16) -> PodSpec {
    let pod = pod_spec(&m.daemonset);
    let c = &m.container;
    let sc = c.security_context.clone().unwrap_or_default();
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    let seccomp = sc.seccomp_profile.clone().or(pod_sc.seccomp_profile.clone()).map(|p| p.type_);
    assert!(
        matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Unconfined") | None),
        "seccomp profile {seccomp:?}: this test starts RuntimeDefault and Unconfined only"
    );
    let mut envs = Vec::new();
    for e in c.env.clone().unwrap_or_default() {
        let value = match (&e.value, e.value_from.as_ref().and_then(|v| v.field_ref.as_ref())) {
            (Some(v), _) => v.clone(),
            (None, Some(f)) if f.field_path == "spec.nodeName" => "test-node".to_owned(),
            (None, Some(f)) if f.field_path == "metadata.namespace" => "peregrine".to_owned(),
            _ => panic!("env {} has a source this test cannot provide: {e:?}", e.name),
        };
        envs.push((e.name.clone(), value));
    }
    // The test's own settings (module docs): where the collector is, no API server.
    envs.push(("PEREGRINE_AGENT__COLLECTOR__ADDRESS".into(), format!("http://127.0.0.1:{collector_port}")));
    envs.push(("PEREGRINE_AGENT__COLLECTOR__MAX_BACKOFF_MS".into(), "300".into()));
    envs.push(("PEREGRINE_AGENT__KUBERNETES__ENABLED".into(), "false".into()));
    let mut spec = PodSpec::new(&unique("peregrine-agent-"));
    spec.namespace = "peregrine".into();
    spec.container_name = AGENT_CONTAINER.into();
    spec.image = AGENT_IMAGE.into();
    spec.command = c.command.clone().unwrap_or_default();
    spec.args = c.args.clone().unwrap_or_default();
    spec.envs = envs;
    spec.mounts = mounts(m, containerd, dir);
    spec.host_pid = pod.host_pid == Some(true);
    spec.host_network = pod.host_network == Some(true);
    spec.host_ipc = pod.host_ipc == Some(true);
    spec.privileged = sc.privileged == Some(true);
    spec.run_as_user = sc.run_as_user.or(pod_sc.run_as_user);
    spec.readonly_rootfs = sc.read_only_root_filesystem == Some(true);
    spec.no_new_privs = sc.allow_privilege_escalation == Some(false);
    spec.seccomp_runtime_default = seccomp.as_deref() == Some("RuntimeDefault");
    spec.capabilities = Some(caps);
    spec
}

/// A collector in the agent pod's network namespace (the pod has no route out), file output.
fn collector_in(netns: &Path, dir: &Path, port: u16) -> Collector {
    let out = dir.join(format!("events-{port}.jsonl"));
    let http_port = free_port();
    let mut cmd = Command::new(tool("busybox"));
    cmd.arg("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(collector_bin())
        .args(["--set", &format!("listen=127.0.0.1:{port}")])
        .args(["--set", &format!("http.listen=127.0.0.1:{http_port}")])
        .args(["--set", &format!("queue.dir={}", dir.join(format!("queue-{port}")).display())])
        .args(["--set", "output.kind=file"])
        .args(["--set", &format!("output.path={}", out.display())]);
    let proc = Proc::spawn("collector", cmd, dir);
    Collector { proc, port, http_port, out }
}

/// The containerd shim that runs a container (its init's parent), and that shim's executable.
fn shim_of(pid: u32) -> (u32, String) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: u32 = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap();
    let exe = fs::read_link(format!("/proc/{ppid}/exe")).unwrap();
    (ppid, exe.to_string_lossy().into_owned())
}

/// Capability numbers (linux/capability.h) of the names a manifest may grant.
fn cap_bit(name: &str) -> u32 {
    match name {
        "DAC_READ_SEARCH" => 2,
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other}: add its number to cap_bit"),
    }
}

/// The runtime really applied the security context: the agent's effective capabilities are
/// exactly those granted, no-new-privileges is set, and a seccomp filter is on when asked.
fn check_applied(pid: u32, spec: &PodSpec) -> Result<(), String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("agent pid {pid}: {e}"))?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default().to_owned();
    let caps = spec.capabilities.clone().unwrap_or_default();
    let want: u64 = caps.add.iter().map(|c| 1u64 << cap_bit(c)).sum();
    let got = u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(u64::MAX);
    assert_eq!(got, want, "the agent's effective capabilities are exactly {:?} (CapEff)", caps.add);
    assert_eq!(field("NoNewPrivs:"), if spec.no_new_privs { "1" } else { "0" }, "NoNewPrivs");
    assert_eq!(field("Seccomp:"), if spec.seccomp_runtime_default { "2" } else { "0" }, "Seccomp (2: filter)");
    Ok(())
}

/// One run: a workload pod older than the agent, the agent pod with `caps`, an exec in the
/// workload pod. Ok: the exec arrived with its pod's context and an ancestry that reaches the
/// workload's shim (seeded from /proc: the agent started after it) with that shim's executable.
/// Err: what was missing, with the agent's own words.
fn scenario(m: &Manifest, containerd: &Containerd, caps: Capabilities, wait: Duration) -> Result<(), String> {
    let dir = TempDir::new("image");
    let workload = PodSpec::new(&unique("workload-"));
    let running = containerd.run_pod(&workload);
    let (shim_pid, shim_exe) = shim_of(running.pid);

    let port = free_port();
    let agent_spec = agent_pod(m, caps, containerd, dir.path(), port);
    let agent = containerd.run_pod(&agent_spec);
    let collector = collector_in(&containerd.netns_path(&agent.container_id), dir.path(), port);
    let result = (|| {
        let agent_log = || containerd.container_log(&agent_spec);
        let deadline = Instant::now() + wait;
        let status = loop {
            if let Some(s) = collector.events().into_iter().find(|e| !e["kind"]["status"].is_null()) {
                break s;
            }
            if let support::containerd::ContainerState::Exited { exit_code } = containerd.container_state(&agent.container_id) {
                return Err(format!("the agent exited ({exit_code}): {}", agent_log()));
            }
            if Instant::now() >= deadline {
                return Err(format!("no status event from the agent within {wait:?}; its log: {}", agent_log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        check_applied(agent.pid, &agent_spec)?;
        let token = unique("image-exec-");
        let (code, out) = containerd.exec_sync(&running.container_id, &["/bin/echo", &token], Duration::from_secs(20));
        assert_eq!((code, out.trim()), (0, token.as_str()), "the exec in the workload pod ran");
        let deadline = Instant::now() + wait;
        let exec = loop {
            let found = collector.events().into_iter().find(|e| e["kind"]["exec"]["process"]["argv"] == json!(["/bin/echo", token]));
            if let Some(e) = found {
                break e;
            }
            if Instant::now() >= deadline {
                return Err(format!("the exec never arrived within {wait:?} (agent status: {status}); the agent's log: {}", agent_log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let container = &exec["container"];
        let want = (workload.name.as_str(), "default", workload.container_name.as_str(), running.container_id.as_str());
        let got = (
            container["pod"]["name"].as_str().unwrap_or_default(),
            container["pod"]["namespace"].as_str().unwrap_or_default(),
            container["name"].as_str().unwrap_or_default(),
            container["id"].as_str().unwrap_or_default(),
        );
        if got != want {
            return Err(format!("the exec's container context is {got:?}, not {want:?}: {exec}"));
        }
        let ancestors = exec["kind"]["exec"]["ancestors"].as_array().cloned().unwrap_or_default();
        let shim = ancestors
            .iter()
            .find(|a| a["pid"] == shim_pid)
            .ok_or_else(|| format!("the exec's ancestry does not reach the workload's shim {shim_pid}: {ancestors:?}"))?;
        if shim["exe"] != shim_exe {
            return Err(format!(
                "the shim (older than the agent, seeded from /proc) has exe {} in the ancestry, not {shim_exe}; the agent's log: {}",
                shim["exe"],
                agent_log()
            ));
        }
        // The rules the manifests ship (ConfigMap peregrine-rules) are live: a read of the
        // shadow file in the workload pod is an alert carrying that pod.
        let (code, _) = containerd.exec_sync(&running.container_id, &["/bin/cat", "/etc/shadow"], Duration::from_secs(20));
        assert_ne!(code, 0, "the busybox image has no /etc/shadow; only the attempt matters");
        let deadline = Instant::now() + wait;
        let alert = loop {
            let found = collector.events().into_iter().find(|e| {
                e["kind"]["alert"]["rule"] == "Read of a shadow password file" && e["container"]["id"] == running.container_id.as_str()
            });
            if let Some(a) = found {
                break a;
            }
            if Instant::now() >= deadline {
                return Err(format!("no alert from the shipped rules within {wait:?}; the agent's log: {}", agent_log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = alert["kind"]["alert"]["output"].as_str().unwrap_or_default();
        let want = format!("pod=default/{} container={}", workload.name, &running.container_id[..12]);
        if !output.contains("cmd=cat /etc/shadow") || !output.contains(&want) {
            return Err(format!("the shipped rule's alert says {output:?}, expected cmd=cat /etc/shadow and {want}"));
        }
        Ok(())
    })();
    containerd.remove_pod(&agent.pod_id);
    containerd.remove_pod(&running.pod_id);
    drop(collector);
    result
}

#[test]
fn the_agent_image_under_the_daemonsets_security_context_reports_an_exec_in_another_pod() {
    let image = support::env_path("PEREGRINE_AGENT_IMAGE");
    let manifest = Manifest::load();
    let containerd = Containerd::start();
    containerd.import_image(&image, "localhost/peregrine-agent");
    let granted = manifest.capabilities();
    scenario(&manifest, &containerd, granted.clone(), WAIT).unwrap_or_else(|e| panic!("with the manifest's capabilities: {e}"));

    // Each capability the manifest grants is needed: without it, the scenario breaks, for the
    // reason docs/DEPLOY.md gives (a capability added later must at least break something).
    let mut report = Vec::new();
    for cap in &granted.add {
        let fewer = Capabilities { add: granted.add.iter().filter(|c| *c != cap).cloned().collect(), drop: granted.drop.clone() };
        match scenario(&manifest, &containerd, fewer, ABLATED_WAIT) {
            Ok(()) => panic!("the manifest grants {cap}, but the agent did everything without it: remove it"),
            Err(why) => {
                if let Some((_, expected)) = EXPECTED_BREAKAGE.iter().find(|(c, _)| c == cap) {
                    assert!(why.contains(expected), "without {cap}, expected `{expected}` but: {why}");
                }
                report.push(format!("without {cap}: {}", first_line(&why)));
            }
        }
    }
    eprintln!("capability ablation:\n  {}", report.join("\n  "));
}

/// What breaks without each capability (docs/DEPLOY.md).
const EXPECTED_BREAKAGE: &[(&str, &str)] = &[
    ("BPF", "missing capabilities CAP_BPF:"),
    ("PERFMON", "missing capabilities CAP_PERFMON:"),
    ("NET_ADMIN", "missing capabilities CAP_NET_ADMIN:"),
    // /proc/<pid>/exe of a process with more capabilities than the agent (the node's root
    // processes) needs CAP_SYS_PTRACE: processes older than the agent would lose their image.
    ("SYS_PTRACE", "has exe \"\" in the ancestry"),
];

fn first_line(s: &str) -> String {
    s.chars().take(400).collect::<String>().replace('\n', " | ")
}

/// The configuration every overlay ships is accepted by the real binaries: the agent gets past
/// its configuration to the kernel object, the collector builds its outputs and its enrollment
/// CA (the aks one then stops at the TLS files that cert-manager or Key Vault would have
/// mounted).
#[test]
fn every_overlays_configuration_loads() {
    let dir = TempDir::new("overlay-config");
    for overlay in ["kind", "aks"] {
        let objects = render(&format!("deploy/kustomize/overlays/{overlay}"));
        let data = |cm: &str, key: &str| object(&objects, "ConfigMap", cm)["data"][key].as_str().unwrap().to_owned();
        let agent_toml = dir.path().join(format!("{overlay}-agent.toml"));
        fs::write(&agent_toml, data("peregrine-agent-config", "agent.toml")).unwrap();
        let mut cmd = Command::new(support::agent_bin());
        cmd.arg("--config").arg(&agent_toml).args(["--set", "ebpf.object=/nonexistent/peregrine-ebpf.o", "--set", "rules.paths=[]"]);
        let (code, stderr) = support::agent_fails(cmd, dir.path());
        assert_eq!(code, 1, "{overlay}: {stderr}");
        assert!(stderr.contains("cannot read eBPF object /nonexistent/peregrine-ebpf.o"), "{overlay}: the agent's config did not load: {stderr}");

        let collector_toml = dir.path().join(format!("{overlay}-collector.toml"));
        fs::write(&collector_toml, data("peregrine-collector-config", "collector.toml")).unwrap();
        let http_port = free_port();
        let mut cmd = Command::new(collector_bin());
        cmd.arg("--config")
            .arg(&collector_toml)
            .args(["--set", &format!("queue.dir={}", dir.path().join(format!("{overlay}-queue")).display())])
            .args(["--set", "listen=127.0.0.1:0", "--set", &format!("http.listen=127.0.0.1:{http_port}")])
            // What the workload identity webhook injects.
            .env("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000001")
            .env("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000002")
            .env("AZURE_FEDERATED_TOKEN_FILE", dir.path().join("token"));
        if overlay == "aks" {
            // The enrollment CA the Secret peregrine-enroll-ca would hold, and an API server
            // address in place of the in-cluster one (the client is built, not used, here).
            let key = rcgen::KeyPair::generate().unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let (ca_pem, key_pem) = (dir.path().join("enroll-ca.pem"), dir.path().join("enroll-ca.key"));
            fs::write(&ca_pem, ca.self_signed(&key).unwrap().pem()).unwrap();
            fs::write(&key_pem, key.serialize_pem()).unwrap();
            cmd.args(["--set", &format!("enroll.ca_cert_file={}", ca_pem.display())])
                .args(["--set", &format!("enroll.ca_key_file={}", key_pem.display())])
                .args(["--set", "enroll.kubernetes.api_url=https://127.0.0.1:6443"]);
        }
        let mut proc = Proc::spawn("collector", cmd, dir.path());
        if overlay == "aks" {
            let status = support::wait_for(WAIT, "the aks collector to stop at its TLS files", || proc.child.try_wait().ok().flatten());
            let stderr = proc.stderr_text();
            assert!(!status.success());
            assert!(stderr.contains("reading tls.cert_file /etc/peregrine/tls/tls.crt"), "{stderr}");
            assert!(stderr.contains("outputs=[\"sentinel\"]"), "the Sentinel output was built: {stderr}");
            assert!(stderr.contains("enrollment: agents with a service-account token get a node certificate"), "{stderr}");
        } else {
            support::wait_for(WAIT, "the kind collector to be ready", || {
                assert!(proc.alive(), "collector exited: {}", proc.stderr_text());
                support::http_get(http_port, "/readyz").filter(|(s, _)| *s == 200)
            });
            proc.terminate();
        }
    }
}
