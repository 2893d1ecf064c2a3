//! Container and pod context for events: cgroup id → cgroup path → container id (path.rs,
//! cgroups.rs), container id → the runtime's metadata over CRI (cri.rs, resolved off the
//! drain by [`Resolver`]), pod uid → the Kubernetes API's view (a [`PodLookup`]).
//!
//! The drain never waits on a lookup. A container is usually known before its first exec:
//! its cgroup's mkdir record arrives first and starts the lookup. Events of a container whose
//! lookup is still running are held (bounded in time and count) so that even a container that
//! lives for 200 ms leaves with full context; past the bound they leave marked partial, and
//! the container's `container_started` event follows when the lookup ends.

pub mod cgroups;
pub mod cri;
pub mod path;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use peregrine_proto::{Container, ContainerStarted, Kind, Pod, SecurityContext};
use tokio::sync::mpsc;

use crate::{
    config::ContainerConfig,
    decode::Cgroup,
    metrics::{Metrics, ResultLabel, StatusLabel},
};
use cgroups::CgroupMap;
use cri::{CriClient, CriError, RuntimeMeta};
use path::ContainerRef;

/// Enrichment status values (`Event.enrichment`).
pub mod status {
    pub const COMPLETE: &str = "complete";
    pub const PARTIAL: &str = "partial";
    pub const NONE: &str = "none";
}

/// What the Kubernetes API adds to the runtime's view of a pod.
#[derive(Debug, Clone, Default)]
pub struct ApiPod {
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub workload_kind: String,
    pub workload_name: String,
}

/// Pod uid → the API's view, when a Kubernetes watch runs. Must not block.
pub type PodLookup = Box<dyn Fn(&str) -> Option<ApiPod> + Send>;

/// An event ready to be stamped, with its context.
pub struct Enriched {
    pub boot_ns: u64,
    pub kind: Kind,
    pub container: Option<Container>,
    pub enrichment: &'static str,
    pub privilege: Vec<String>,
}

/// A lookup's answer, from the resolver to the stage.
pub struct Resolution {
    pub id: String,
    pub result: Result<RuntimeMeta, String>,
}

/// The node's own namespaces and capability bounding set, to tell which processes share them.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostView {
    pub pid_ns: u32,
    pub net_ns: u32,
    pub ipc_ns: u32,
    pub cap_bounding: u64,
}

impl HostView {
    /// The node's view is its init's (pid 1), when the agent shares its pid namespace (on the
    /// host, or in a hostPID pod, whose own network and IPC namespaces are not the node's);
    /// otherwise the agent's own.
    pub fn of_node() -> Self {
        use crate::process::procfs::ns_inode;
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let pid_ns = ns_inode(me, "pid");
        let init_pid_ns = ns_inode(1, "pid");
        let node = if init_pid_ns != 0 && init_pid_ns == pid_ns { 1 } else { me };
        let cap_bounding = ::procfs::process::Process::new(node)
            .and_then(|p| p.status())
            .ok()
            .and_then(|s| s.capbnd)
            .unwrap_or(0);
        let view = Self { pid_ns, net_ns: ns_inode(node, "net"), ipc_ns: ns_inode(node, "ipc"), cap_bounding };
        if view.net_ns == 0 {
            tracing::warn!(
                pid = node,
                "cannot read the node's namespaces (/proc/{node}/ns): the host-namespace privilege checks are off (the agent needs CAP_SYS_PTRACE)"
            );
        }
        view
    }
}

enum Known {
    /// A lookup is running; events wait here until `since` + the resolve wait.
    Pending { since: Instant, held: Vec<(u64, Kind)>, existing: bool },
    Resolved(Arc<Container>, Arc<RuntimeMeta>),
    /// The runtime could not say: events leave partial.
    Failed,
}

pub struct ContainerStage {
    config: ContainerConfig,
    cgroups: CgroupMap,
    known: HashMap<String, Known>,
    /// Containers in the order they became known, for bounded retention.
    order: VecDeque<String>,
    held: usize,
    requests: Option<mpsc::Sender<String>>,
    host: HostView,
    pods: Option<PodLookup>,
    metrics: Metrics,
    /// Containers announced with a container_started event.
    announced: HashSet<String>,
    last_warning: Option<Instant>,
    failed_since_warning: u64,
    /// The cgroup2 mount, for resolving a cgroup the map missed from the process's /proc.
    mount: Option<PathBuf>,
    /// cgroup ids already tried that way (bounded).
    misses: HashSet<u64>,
}

/// Bound on containers remembered (a node runs at most a few hundred at once).
const MAX_CONTAINERS: usize = 8192;

impl ContainerStage {
    pub fn new(config: ContainerConfig, requests: Option<mpsc::Sender<String>>, host: HostView, metrics: Metrics) -> Self {
        let grace = config.retention_ms.saturating_mul(1_000_000);
        Self {
            config,
            cgroups: CgroupMap::new(grace),
            known: HashMap::new(),
            order: VecDeque::new(),
            held: 0,
            requests,
            host,
            pods: None,
            metrics,
            announced: HashSet::new(),
            last_warning: None,
            failed_since_warning: 0,
            mount: None,
            misses: HashSet::new(),
        }
    }

    pub fn with_pods(mut self, pods: PodLookup) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Walks the cgroup2 hierarchy and asks the runtime about every container found, so
    /// containers older than the agent have context too.
    pub fn seed(&mut self, mount: &std::path::Path) -> usize {
        self.mount = Some(mount.to_path_buf());
        let n = self.cgroups.seed(mount);
        let found: Vec<Arc<ContainerRef>> = self.cgroups.containers().map(|(_, c)| c.clone()).collect();
        for c in found {
            self.request(&c, true);
        }
        n
    }

    /// A cgroup record from the kernel.
    pub fn apply_cgroup(&mut self, record: &Cgroup) {
        if record.created {
            if let Some(c) = self.cgroups.insert(record.id, &record.path) {
                self.request(&c, false);
            }
        } else {
            self.cgroups.remove(record.id, record.boot_ns);
        }
    }

    fn request(&mut self, c: &ContainerRef, existing: bool) {
        if self.known.contains_key(&c.id) || !c.runtime.speaks_cri() {
            return;
        }
        let Some(requests) = &self.requests else { return };
        if requests.try_send(c.id.clone()).is_err() {
            // The resolver is saturated: this container's events leave partial.
            self.remember(c.id.clone(), Known::Failed);
            return;
        }
        self.remember(c.id.clone(), Known::Pending { since: Instant::now(), held: Vec::new(), existing });
    }

    fn remember(&mut self, id: String, known: Known) {
        if self.known.insert(id.clone(), known).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_CONTAINERS {
            if let Some(old) = self.order.pop_front() {
                if let Some(Known::Pending { held, .. }) = self.known.get(&old) {
                    // Still waiting: keep it (its held events are bounded by time).
                    if !held.is_empty() {
                        self.order.push_back(old);
                        break;
                    }
                }
                self.known.remove(&old);
                self.announced.remove(&old);
            }
        }
    }

    /// Context for one event; None when the event is held for its container's metadata (it
    /// comes back from [`Self::resolved`] or [`Self::expire`]).
    pub fn enrich(&mut self, boot_ns: u64, kind: Kind) -> Option<Enriched> {
        let Some(cgroup_id) = cgroup_of(&kind) else {
            return Some(Enriched { boot_ns, kind, container: None, enrichment: status::NONE, privilege: Vec::new() });
        };
        let entry = match self.cgroups.get(cgroup_id) {
            Some(entry) => Some(entry),
            None => {
                self.find_cgroup(cgroup_id, kind.process().map_or(0, |p| p.pid));
                self.cgroups.get(cgroup_id)
            }
        };
        let Some(entry) = entry else {
            self.metrics.enrichment_incomplete.get_or_create(&StatusLabel { status: status::NONE }).inc();
            return Some(Enriched { boot_ns, kind, container: None, enrichment: status::NONE, privilege: Vec::new() });
        };
        let Some(cref) = entry.container.clone() else {
            return Some(Enriched { boot_ns, kind, container: None, enrichment: status::COMPLETE, privilege: Vec::new() });
        };
        let cgroup_path = entry.path.clone();
        // Not asked about yet (seen before the resolver existed, or evicted): ask now.
        self.request(&cref, false);
        let held_max = self.config.max_held_events;
        match self.known.get_mut(&cref.id) {
            Some(Known::Pending { held, .. }) if self.held < held_max => {
                held.push((boot_ns, kind));
                self.held += 1;
                self.metrics.events_held.set(i64::try_from(self.held).unwrap_or(i64::MAX));
                None
            }
            Some(Known::Resolved(container, meta)) => {
                let (container, meta) = (container.clone(), meta.clone());
                Some(self.finish(boot_ns, kind, Some((&container, &meta)), &cref, &cgroup_path))
            }
            Some(Known::Failed | Known::Pending { .. }) | None => Some(self.finish(boot_ns, kind, None, &cref, &cgroup_path)),
        }
    }

    /// A cgroup the map does not have (made while the mkdir hook was not attached): the
    /// process's /proc cgroup line names it; the directory's inode must be the id.
    fn find_cgroup(&mut self, id: u64, pid: u32) {
        const MAX_MISSES: usize = 4096;
        let Some(mount) = &self.mount else { return };
        if pid == 0 || self.misses.contains(&id) {
            return;
        }
        if self.misses.len() >= MAX_MISSES {
            self.misses.clear();
        }
        self.misses.insert(id);
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return };
        let Some(rel) = path::from_proc_cgroup(&text) else { return };
        let dir = mount.join(rel.trim_start_matches('/'));
        let ino = std::fs::metadata(&dir).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
        if ino == id
            && let Some(c) = self.cgroups.insert(id, &rel)
        {
            self.request(&c, false);
        }
    }

    /// Builds the event's context from what is known of its container.
    fn finish(
        &self,
        boot_ns: u64,
        kind: Kind,
        resolved: Option<(&Arc<Container>, &Arc<RuntimeMeta>)>,
        cref: &ContainerRef,
        cgroup_path: &str,
    ) -> Enriched {
        let mut container = match resolved {
            Some((c, _)) => Container::clone(c),
            None => Container {
                id: cref.id.clone(),
                runtime: cref.runtime.as_str().to_owned(),
                cgroup: cgroup_path.to_owned(),
                pod: cref.pod_uid.as_ref().map(|uid| Pod { uid: uid.clone(), ..Default::default() }),
                missing: vec!["runtime".into()],
                ..Default::default()
            },
        };
        self.add_api_view(&mut container);
        let enrichment = if container.missing.is_empty() { status::COMPLETE } else { status::PARTIAL };
        if enrichment != status::COMPLETE {
            self.metrics.enrichment_incomplete.get_or_create(&StatusLabel { status: enrichment }).inc();
        }
        let privilege = privilege(&container, kind.process(), &self.host);
        Enriched { boot_ns, kind, container: Some(container), enrichment, privilege }
    }

    /// Merges the Kubernetes API's view (labels as they are now, owner workload, service
    /// account) when a watch runs; a pod it does not know makes the context partial.
    fn add_api_view(&self, container: &mut Container) {
        let Some(lookup) = &self.pods else { return };
        let Some(pod) = container.pod.as_mut() else { return };
        match lookup(&pod.uid) {
            Some(api) => {
                pod.labels = api.labels.into_iter().collect();
                pod.service_account = api.service_account;
                pod.workload_kind = api.workload_kind;
                pod.workload_name = api.workload_name;
            }
            None => container.missing.push("kubernetes".into()),
        }
    }

    /// A lookup ended: its held events, led by the container's `container_started` event.
    pub fn resolved(&mut self, resolution: Resolution) -> Vec<Enriched> {
        let Resolution { id, result } = resolution;
        let (held, existing) = match self.known.remove(&id) {
            Some(Known::Pending { held, existing, .. }) => (held, existing),
            Some(other) => {
                self.known.insert(id, other);
                return Vec::new();
            }
            None => (Vec::new(), false),
        };
        self.held = self.held.saturating_sub(held.len());
        self.metrics.events_held.set(i64::try_from(self.held).unwrap_or(i64::MAX));
        let Some((cgroup_path, cref)) = self.cgroups.container(&id) else {
            // The cgroup went away and was swept; nothing left to attach events to.
            self.remember(id, Known::Failed);
            return held.into_iter().map(|(b, k)| self.unattached(b, k)).collect();
        };
        let mut out = Vec::with_capacity(held.len() + 1);
        match result {
            Ok(meta) => {
                self.metrics.container_lookups.get_or_create(&ResultLabel { result: "ok" }).inc();
                let container = Arc::new(to_proto(&meta, &cref, &cgroup_path));
                let meta = Arc::new(meta);
                self.remember(id.clone(), Known::Resolved(container.clone(), meta.clone()));
                self.metrics.containers_known.set(i64::try_from(self.resolved_count()).unwrap_or(i64::MAX));
                if !meta.sandbox && self.announced.insert(id) {
                    let started = Kind::ContainerStarted(ContainerStarted { existing, pid: meta.pid });
                    out.push(self.finish(crate::clock::boot_now_ns(), started, Some((&container, &meta)), &cref, &cgroup_path));
                }
                for (boot_ns, kind) in held {
                    out.push(self.finish(boot_ns, kind, Some((&container, &meta)), &cref, &cgroup_path));
                }
            }
            Err(why) => {
                let label = if why.starts_with("not found") { "not_found" } else { "error" };
                self.metrics.container_lookups.get_or_create(&ResultLabel { result: label }).inc();
                self.warn_lookup_failed(&id, &why);
                for (boot_ns, kind) in held {
                    out.push(self.finish(boot_ns, kind, None, &cref, &cgroup_path));
                }
                self.remember(id, Known::Failed);
            }
        }
        out
    }

    /// One warning a minute at most: a runtime that is down fails every lookup.
    fn warn_lookup_failed(&mut self, id: &str, why: &str) {
        self.failed_since_warning += 1;
        if self.last_warning.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return;
        }
        tracing::warn!(
            container = id,
            error = why,
            failures = self.failed_since_warning,
            "container runtime lookup failed: its events go out partial (repeats are counted in peregrine_agent_container_lookups)"
        );
        self.last_warning = Some(Instant::now());
        self.failed_since_warning = 0;
    }

    fn unattached(&self, boot_ns: u64, kind: Kind) -> Enriched {
        self.metrics.enrichment_incomplete.get_or_create(&StatusLabel { status: status::NONE }).inc();
        Enriched { boot_ns, kind, container: None, enrichment: status::NONE, privilege: Vec::new() }
    }

    fn resolved_count(&self) -> usize {
        self.known.values().filter(|k| matches!(k, Known::Resolved(..))).count()
    }

    /// Releases, marked partial, the events that waited longer than the resolve wait; the
    /// lookups go on and their `container_started` events follow.
    pub fn expire(&mut self, now: Instant) -> Vec<Enriched> {
        if self.held == 0 {
            return Vec::new();
        }
        let wait = Duration::from_millis(self.config.resolve_wait_ms);
        let mut due: Vec<(String, Vec<(u64, Kind)>)> = Vec::new();
        for (id, known) in &mut self.known {
            if let Known::Pending { since, held, .. } = known
                && !held.is_empty()
                && now.duration_since(*since) >= wait
            {
                due.push((id.clone(), std::mem::take(held)));
            }
        }
        let mut out = Vec::new();
        for (id, held) in due {
            self.held = self.held.saturating_sub(held.len());
            let found = self.cgroups.container(&id);
            for (boot_ns, kind) in held {
                out.push(match &found {
                    Some((path, cref)) => self.finish(boot_ns, kind, None, cref, path),
                    None => self.unattached(boot_ns, kind),
                });
            }
        }
        self.metrics.events_held.set(i64::try_from(self.held).unwrap_or(i64::MAX));
        out
    }

    /// The oldest held event's time: the drain's "drained until" may not pass it.
    pub fn oldest_held(&self) -> Option<u64> {
        self.known
            .values()
            .filter_map(|k| match k {
                Known::Pending { held, .. } => held.iter().map(|(b, _)| *b).min(),
                _ => None,
            })
            .min()
    }

    pub fn sweep(&mut self, now_ns: u64) {
        self.cgroups.sweep(now_ns);
    }
}

fn cgroup_of(kind: &Kind) -> Option<u64> {
    kind.process().map(|p| p.cgroup_id).filter(|id| *id != 0)
}

/// Why an event in `container` is privileged activity: the runtime's spec, cross-checked
/// with what the kernel says of the process itself.
fn privilege(container: &Container, process: Option<&peregrine_proto::Process>, host: &HostView) -> Vec<String> {
    let spec = container.security.clone().unwrap_or_default();
    let ns = process.and_then(|p| p.ns);
    let caps = process.and_then(|p| p.creds).map(|c| c.cap_effective).unwrap_or(0);
    let shares = |mine: Option<u32>, host: u32| host != 0 && mine == Some(host);
    let mut out = Vec::new();
    if spec.privileged {
        out.push("privileged".to_owned());
    }
    if spec.host_pid || shares(ns.map(|n| n.pid), host.pid_ns) {
        out.push("host_pid".to_owned());
    }
    if spec.host_network || shares(ns.map(|n| n.net), host.net_ns) {
        out.push("host_network".to_owned());
    }
    if spec.host_ipc || shares(ns.map(|n| n.ipc), host.ipc_ns) {
        out.push("host_ipc".to_owned());
    }
    // The host's own "all capabilities" (here without CAP_SYS_RESOURCE, which even root lacks).
    if host.cap_bounding != 0 && caps & host.cap_bounding == host.cap_bounding {
        out.push("all_capabilities".to_owned());
    }
    out
}

fn to_proto(meta: &RuntimeMeta, cref: &ContainerRef, cgroup_path: &str) -> Container {
    let s = &meta.security;
    Container {
        id: cref.id.clone(),
        name: meta.name.clone(),
        runtime: if meta.runtime.is_empty() { cref.runtime.as_str().to_owned() } else { meta.runtime.clone() },
        image: meta.image.clone(),
        image_digest: meta.image_digest.clone(),
        pod: meta.pod.as_ref().map(|p| Pod {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            uid: p.uid.clone(),
            labels: p.labels.clone().into_iter().collect(),
            ..Default::default()
        }),
        security: Some(SecurityContext {
            privileged: s.privileged,
            host_pid: s.host_pid,
            host_network: s.host_network,
            host_ipc: s.host_ipc,
            capabilities_added: s.capabilities_added.clone(),
            host_path_mounts: s.host_path_mounts.clone(),
            run_as_user: s.run_as_user,
            read_only_root: s.read_only_root,
            allow_privilege_escalation: s.allow_privilege_escalation,
            capabilities_effective: s.capabilities_effective,
        }),
        sandbox: meta.sandbox,
        cgroup: cgroup_path.to_owned(),
        missing: Vec::new(),
        labels: meta.labels.clone().into_iter().collect(),
    }
}

/// Runs the CRI lookups the stage asks for, off the drain; a container the runtime does not
/// know yet (a sandbox still being set up) is asked again with backoff until the give-up time.
pub struct Resolver {
    pub config: ContainerConfig,
    pub requests: mpsc::Receiver<String>,
    pub answers: mpsc::Sender<Resolution>,
}

/// Lookups running at once.
const MAX_CONCURRENT_LOOKUPS: usize = 16;

impl Resolver {
    pub async fn run(mut self) {
        let timeout = Duration::from_millis(self.config.cri_timeout_ms);
        let give_up = Duration::from_millis(self.config.resolve_give_up_ms);
        let mut client: Option<CriClient> = None;
        let mut tasks = tokio::task::JoinSet::new();
        let mut warned_no_socket = false;
        while let Some(id) = self.requests.recv().await {
            if client.is_none() {
                client = connect(&self.config.cri_sockets, timeout).await;
                if client.is_none() && !warned_no_socket {
                    warned_no_socket = true;
                    tracing::warn!(
                        sockets = ?self.config.cri_sockets,
                        "no container runtime socket answers: container events go out partial (set container.cri_sockets)"
                    );
                }
            }
            let Some(c) = client.clone() else {
                let _ = self.answers.send(Resolution { id, result: Err("no container runtime socket".into()) }).await;
                continue;
            };
            while tasks.len() >= MAX_CONCURRENT_LOOKUPS {
                let _ = tasks.join_next().await;
            }
            let answers = self.answers.clone();
            tasks.spawn(async move {
                let result = lookup_with_retry(&c, &id, give_up).await;
                let _ = answers.send(Resolution { id, result }).await;
            });
            // Reap finished lookups without waiting.
            while tasks.try_join_next().is_some() {}
        }
    }
}

async fn connect(sockets: &[PathBuf], timeout: Duration) -> Option<CriClient> {
    for socket in sockets.iter().filter(|s| s.exists()) {
        let Ok(mut client) = CriClient::new(socket.clone(), timeout) else { continue };
        match client.version().await {
            Ok(version) => {
                tracing::info!(socket = %socket.display(), %version, "container runtime (CRI) connected");
                return Some(client);
            }
            Err(e) => tracing::warn!(error = %e, "container runtime socket does not answer CRI"),
        }
    }
    None
}

async fn lookup_with_retry(client: &CriClient, id: &str, give_up: Duration) -> Result<RuntimeMeta, String> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        match client.lookup(id).await {
            Ok(meta) => return Ok(meta),
            Err(e @ (CriError::NotFound(_) | CriError::Timeout { .. } | CriError::Call { .. } | CriError::Connect(..))) => {
                if started.elapsed() + delay > give_up {
                    return Err(match e {
                        CriError::NotFound(_) => format!("not found by the runtime after {give_up:?}"),
                        other => other.to_string(),
                    });
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_proto::{Credentials, Namespaces, Process, ProcessExec};

    const ID: &str = "6be1d2d140c936c34ac9c67f27e133a9fc1432da9ad205b0ac2f4a22d9d68a77";

    fn exec(cgroup_id: u64, pid_ns: u32, caps: u64) -> Kind {
        Kind::Exec(ProcessExec {
            process: Some(Process {
                cgroup_id,
                ns: Some(Namespaces { pid: pid_ns, ..Default::default() }),
                creds: Some(Credentials { cap_effective: caps, ..Default::default() }),
                ..Default::default()
            }.into()),
            ancestors: vec![],
        })
    }

    fn stage(wait_ms: u64) -> (ContainerStage, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(16);
        let config = ContainerConfig { resolve_wait_ms: wait_ms, ..Default::default() };
        let host = HostView { pid_ns: 100, net_ns: 200, ipc_ns: 300, cap_bounding: 0x1fffeffffff };
        (ContainerStage::new(config, Some(tx), host, Metrics::default()), rx)
    }

    fn mkdir(stage: &mut ContainerStage, id: u64, path: &str) {
        stage.apply_cgroup(&Cgroup { boot_ns: 1, created: true, id, level: 3, path: path.into(), truncated: false });
    }

    fn meta(privileged: bool) -> RuntimeMeta {
        RuntimeMeta {
            id: ID.into(),
            name: "web".into(),
            runtime: "containerd".into(),
            image: "localhost/busybox:latest".into(),
            pod: Some(cri::PodMeta { name: "web-1".into(), namespace: "shop".into(), uid: "u1".into(), ..Default::default() }),
            security: cri::Security { privileged, ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn host_events_are_complete_and_unknown_cgroups_are_none() {
        let (mut s, _rx) = stage(500);
        mkdir(&mut s, 5, "/system.slice/sshd.service");
        let e = s.enrich(1, exec(5, 100, 0)).unwrap_or_else(|| panic!("held"));
        assert_eq!((e.enrichment, e.container.is_none()), (status::COMPLETE, true));
        let e = s.enrich(1, exec(999, 100, 0)).unwrap_or_else(|| panic!("held"));
        assert_eq!(e.enrichment, status::NONE);
    }

    #[test]
    fn a_new_containers_events_wait_for_its_metadata() {
        let (mut s, mut rx) = stage(500);
        mkdir(&mut s, 7, &format!("/kubepods/besteffort/podu1/{ID}"));
        assert_eq!(rx.try_recv().ok().as_deref(), Some(ID));
        assert!(s.enrich(10, exec(7, 4026532000, 0x20000420)).is_none());
        assert_eq!(s.oldest_held(), Some(10));
        let out = s.resolved(Resolution { id: ID.into(), result: Ok(meta(true)) });
        assert_eq!(out.len(), 2);
        assert!(matches!(out[0].kind, Kind::ContainerStarted(_)));
        let e = &out[1];
        assert_eq!(e.enrichment, status::COMPLETE);
        let c = e.container.as_ref().unwrap_or_else(|| panic!("no container"));
        assert_eq!(c.pod.as_ref().map(|p| p.name.as_str()), Some("web-1"));
        assert_eq!(e.privilege, vec!["privileged".to_owned()]);
        assert_eq!(s.oldest_held(), None);
        // Later events go straight through; kernel view: host pid ns and all capabilities.
        let e = s.enrich(11, exec(7, 100, 0x1fffeffffff)).unwrap_or_else(|| panic!("held"));
        assert_eq!(e.privilege, vec!["privileged", "host_pid", "all_capabilities"]);
    }

    #[test]
    fn past_the_wait_events_leave_partial_and_the_start_follows() {
        let (mut s, _rx) = stage(0);
        mkdir(&mut s, 7, &format!("/kubepods/podu1/{ID}"));
        assert!(s.enrich(10, exec(7, 1, 0)).is_none());
        let out = s.expire(Instant::now());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].enrichment, status::PARTIAL);
        let c = out[0].container.as_ref().unwrap_or_else(|| panic!("no container"));
        assert_eq!((c.id.as_str(), c.missing.clone()), (ID, vec!["runtime".to_owned()]));
        assert_eq!(c.pod.as_ref().map(|p| p.uid.as_str()), Some("u1"));
        let out = s.resolved(Resolution { id: ID.into(), result: Ok(meta(false)) });
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0].kind, Kind::ContainerStarted(_)));
        assert_eq!(out[0].enrichment, status::COMPLETE);
    }

    #[test]
    fn a_failed_lookup_releases_partial_and_stays_failed() {
        let (mut s, _rx) = stage(500);
        mkdir(&mut s, 7, &format!("/kubepods/podu1/{ID}"));
        assert!(s.enrich(10, exec(7, 1, 0)).is_none());
        let out = s.resolved(Resolution { id: ID.into(), result: Err("not found by the runtime".into()) });
        assert_eq!(out.iter().map(|e| e.enrichment).collect::<Vec<_>>(), vec![status::PARTIAL]);
        let e = s.enrich(11, exec(7, 1, 0)).unwrap_or_else(|| panic!("held"));
        assert_eq!(e.enrichment, status::PARTIAL);
    }

    #[test]
    fn held_events_are_bounded() {
        let (tx, _rx) = mpsc::channel(16);
        let config = ContainerConfig { max_held_events: 2, ..Default::default() };
        let mut s = ContainerStage::new(config, Some(tx), HostView::default(), Metrics::default());
        mkdir(&mut s, 7, &format!("/kubepods/podu1/{ID}"));
        assert!(s.enrich(1, exec(7, 1, 0)).is_none());
        assert!(s.enrich(2, exec(7, 1, 0)).is_none());
        let third = s.enrich(3, exec(7, 1, 0)).unwrap_or_else(|| panic!("held past the bound"));
        assert_eq!(third.enrichment, status::PARTIAL);
    }

    #[test]
    fn kubernetes_view_is_merged_and_its_absence_is_partial() {
        let (mut s, _rx) = stage(500);
        s = s.with_pods(Box::new(|uid| {
            (uid == "u1").then(|| ApiPod {
                labels: [("app".to_owned(), "web".to_owned())].into_iter().collect(),
                service_account: "web-sa".into(),
                workload_kind: "Deployment".into(),
                workload_name: "web".into(),
            })
        }));
        mkdir(&mut s, 7, &format!("/kubepods/podu1/{ID}"));
        let _ = s.resolved(Resolution { id: ID.into(), result: Ok(meta(false)) });
        let e = s.enrich(1, exec(7, 1, 0)).unwrap_or_else(|| panic!("held"));
        let pod = e.container.and_then(|c| c.pod).unwrap_or_default();
        assert_eq!((pod.workload_kind.as_str(), pod.service_account.as_str()), ("Deployment", "web-sa"));
        assert_eq!(pod.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(e.enrichment, status::COMPLETE);

        let other = "f".repeat(64);
        mkdir(&mut s, 8, &format!("/kubepods/podu2/{other}"));
        let mut m = meta(false);
        m.pod = Some(cri::PodMeta { uid: "u2".into(), ..Default::default() });
        let _ = s.resolved(Resolution { id: other, result: Ok(m) });
        let e = s.enrich(1, exec(8, 1, 0)).unwrap_or_else(|| panic!("held"));
        assert_eq!(e.enrichment, status::PARTIAL);
        assert_eq!(e.container.map(|c| c.missing), Some(vec!["kubernetes".to_owned()]));
    }
}
