//! The agent's configuration: file, `PEREGRINE_AGENT__*` environment, `--set` flags.

use std::{net::SocketAddr, path::PathBuf};

use peregrine_service::config::Validate;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// This node's name; in Kubernetes from the downward API (`spec.nodeName`) via `NODE_NAME`.
    pub node_name: String,
    /// The cluster's name as the SIEM should show it.
    pub cluster_name: String,
    pub log_level: String,
    pub collector: CollectorConfig,
    pub ebpf: EbpfConfig,
    pub pipeline: PipelineConfig,
    pub process: ProcessConfig,
    pub rules: RulesConfig,
    pub network: NetworkConfig,
    pub container: ContainerConfig,
    pub spool: SpoolConfig,
    /// This node's pods from the Kubernetes API (owner workload, service account, labels).
    pub kubernetes: crate::k8s::K8sConfig,
    pub http: HttpConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Where events wait for the collector's acknowledgement; a hostPath in Kubernetes, so they
    /// survive the agent's restarts.
    pub dir: PathBuf,
    /// Size bound; past it `full_policy` applies (every dropped event is counted and reported).
    pub max_bytes: u64,
    pub segment_bytes: u64,
    /// `drop_oldest` (keep the newest events) or `drop_newest` (keep the oldest).
    pub full_policy: FullPolicy,
    /// `never`: records survive the agent being killed (the OS has them), not a power loss —
    /// which takes the kernel's ring buffer with it anyway. `on_flush`: fsync every batch.
    pub fsync: FsyncPolicy,
    /// How often the acknowledged position is written to disk (0: at every acknowledgement).
    /// After a crash the agent resends what was acknowledged since; the collector recognises
    /// the duplicates by their event ids. Writing it at every acknowledgement cost more CPU
    /// than anything else the sender does (docs/PERFORMANCE.md, exec).
    pub commit_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    DropOldest,
    DropNewest,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    Never,
    OnFlush,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: "/var/lib/peregrine/spool".into(),
            max_bytes: 256 << 20,
            segment_bytes: 8 << 20,
            full_policy: FullPolicy::DropOldest,
            fsync: FsyncPolicy::Never,
            commit_interval_ms: 1000,
        }
    }
}

impl SpoolConfig {
    pub fn journal(&self) -> peregrine_journal::JournalConfig {
        peregrine_journal::JournalConfig {
            max_bytes: self.max_bytes,
            segment_bytes: self.segment_bytes,
            full: match self.full_policy {
                FullPolicy::DropOldest => peregrine_journal::FullPolicy::DropOldest,
                FullPolicy::DropNewest => peregrine_journal::FullPolicy::DropNewest,
            },
            fsync: match self.fsync {
                FsyncPolicy::Never => peregrine_journal::Fsync::Never,
                FsyncPolicy::OnFlush => peregrine_journal::Fsync::OnFlush,
            },
            commit_interval: std::time::Duration::from_millis(self.commit_interval_ms),
            ..peregrine_journal::JournalConfig::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerConfig {
    /// Attach container and pod context to events.
    pub enabled: bool,
    /// CRI runtime sockets, tried in order; the first that exists is used (containerd, then
    /// CRI-O). Re-checked while none exists.
    pub cri_sockets: Vec<std::path::PathBuf>,
    /// Bound on one CRI call.
    pub cri_timeout_ms: u64,
    /// How long a new container's events wait for its metadata before leaving marked partial.
    pub resolve_wait_ms: u64,
    /// How long a container the runtime does not know (yet) keeps being asked for.
    pub resolve_give_up_ms: u64,
    /// Bound on events waiting for metadata across all containers; beyond it they leave partial.
    pub max_held_events: usize,
    /// How long a removed container's cgroup and metadata are kept for late events.
    pub retention_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Leave connections to and from loopback addresses out (in the kernel).
    pub exclude_loopback: bool,
    /// A connect with no outcome after this long is reported as in_progress.
    pub outcome_wait_ms: u64,
    /// The cluster's pod and service ranges, so their destinations are classed as such.
    pub pod_cidrs: Vec<String>,
    pub service_cidrs: Vec<String>,
    /// A UDP flow (process, cgroup, destination, port) is reported again after this long;
    /// 0 reports every send.
    pub udp_dedup_ms: u64,
    /// A TCP flow (process, cgroup, peer, port, direction) is sent once per window this long;
    /// the kernel counts its other connects or accepts in the window, which leave as one
    /// summary event (`summary`, `count`) after it. 0 sends every connect and accept.
    pub tcp_dedup_ms: u64,
    /// Entries of each kernel flow map: connects awaiting their outcome (`CONNECTING`), TCP
    /// dedup windows (`TCP_SEEN`), UDP flows (`UDP_SEEN`). LRU maps: under pressure the
    /// oldest go; an outcome whose connect was evicted is reported without an owner (unless
    /// the agent holds the attempt), counted in `connects_unattributed`, and a dedup window
    /// evicted before it was read is a counted loss (`tcp_window_lost`).
    pub flow_map_entries: u32,
    /// Egress enforcement (off when empty): IPv4 CIDRs that connects and sends are refused
    /// for, in the kernel, each refusal reported. E.g. ["169.254.169.254/32"] keeps pods away
    /// from the metadata service.
    pub deny_destinations: Vec<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            exclude_loopback: true,
            outcome_wait_ms: 1000,
            pod_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            udp_dedup_ms: 10_000,
            tcp_dedup_ms: 10_000,
            flow_map_entries: 65_536,
            deny_destinations: Vec::new(),
        }
    }
}

/// An IPv4 address and prefix length, as the kernel's LPM trie takes them.
pub type Ipv4Prefix = ([u8; 4], u32);

fn cidrs(key: &str, list: &[String]) -> Result<Vec<crate::net::classify::Cidr>, (String, String)> {
    list.iter().map(|s| s.parse().map_err(|message| (key.to_owned(), message))).collect()
}

impl NetworkConfig {
    /// The pod ranges (validated when the configuration was built).
    pub fn pod_cidrs(&self) -> Result<Vec<crate::net::classify::Cidr>, (String, String)> {
        cidrs("network.pod_cidrs", &self.pod_cidrs)
    }
    pub fn service_cidrs(&self) -> Result<Vec<crate::net::classify::Cidr>, (String, String)> {
        cidrs("network.service_cidrs", &self.service_cidrs)
    }

    /// The enforcement list as (IPv4 address, prefix length) pairs.
    pub fn deny4(&self) -> Result<Vec<Ipv4Prefix>, (String, String)> {
        let key = "network.deny_destinations";
        self.deny_destinations
            .iter()
            .map(|s| {
                let (a, p) = s.split_once('/').unwrap_or((s.as_str(), "32"));
                let addr: std::net::Ipv4Addr =
                    a.parse().map_err(|_| (key.to_owned(), format!("`{s}` is not an IPv4 address or CIDR")))?;
                let prefix: u32 = p
                    .parse()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| (key.to_owned(), format!("`{s}`: the prefix must be 0..=32")))?;
                Ok((addr.octets(), prefix))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Falco rules files or directories of them (a ConfigMap mount works: the `..data` swap
    /// kubelet does is seen). Empty: no rules, no alerts.
    pub paths: Vec<PathBuf>,
    /// How often the files are checked for changes.
    pub reload_interval_ms: u64,
    /// Repeats of one rule in one container within this window fold into one follow-up.
    pub fold_window_ms: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self { paths: Vec::new(), reload_interval_ms: 2000, fold_window_ms: 60_000 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// Processes kept in the cache (live ones plus exited ones in their grace period).
    pub cache_capacity: usize,
    /// How long an exited process stays for late events that refer to it. Records reach the
    /// agent within a drain interval (50 ms) of each other, and an event is built with its
    /// process before it may wait for container context, so 5 s is ample; every second of it
    /// costs memory at the exec rate (about 1.8 KiB per exited process).
    pub exit_grace_ms: u64,
    /// Ancestors attached to each exec event (Falco's `proc.aname[N]`).
    pub ancestry_depth: usize,
    /// Send an event for every new process (fork), not only for each exec and exit. Forks
    /// always feed the process cache (a child that never execs still has its record, its
    /// connections and its exit event); as events they say little more than the child's exec
    /// and exit do, and cost a third of the stream on an exec-heavy node. Off by default, as
    /// in Falco's and Tetragon's default outputs.
    pub fork_events: bool,
    /// Executables (host paths) whose exec is refused with EPERM and reported as an alert:
    /// enforced by a BPF LSM hook, so only where the kernel runs BPF LSM (the agent refuses to
    /// start otherwise, rather than seem to enforce). Matched by device and inode at start.
    pub deny_exec: Vec<PathBuf>,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self { cache_capacity: 65536, exit_grace_ms: 5_000, ancestry_depth: 5, fork_events: false, deny_exec: Vec::new() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// `http://host:port`, or `https://host:port` for mutual TLS (then `tls.*` are required).
    pub address: String,
    pub connect_timeout_ms: u64,
    /// Upper bound of the reconnect backoff.
    pub max_backoff_ms: u64,
    /// `none` (default) or `gzip`: batches compressed on the wire (the spool keeps them
    /// uncompressed). gzip cost about a fifth of the agent's CPU per event on the exec bench
    /// (docs/PERFORMANCE.md): worth it only where the agent→collector link is metered.
    pub compression: Compression,
    pub tls: ClientTls,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
}

/// This node's identity towards the collector: a certificate whose DNS name is the node's
/// name, signed by a CA the collector trusts: provisioned as files, or obtained from the
/// collector with the pod's service-account token (`enroll_token_file`). Files are read at
/// every connect, so a renewed certificate is picked up without a restart.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTls {
    /// PEM CA bundle the collector's server certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate (chain) and PKCS#8/RSA/EC key of this node.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name the collector's certificate must carry; default: the address's host.
    pub server_name: Option<String>,
    /// The projected service-account token (audience `peregrine-collector`) with which the
    /// agent gets its node certificate from the collector (docs/DELIVERY.md, enrollment). Set,
    /// `cert_file` and `key_file` are where the agent keeps what it was issued (they need not
    /// exist); it renews when a third of the certificate's lifetime is left.
    pub enroll_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// The kernel programs' object file (built by `cargo xtask build`).
    pub object: PathBuf,
    /// Kernel BTF used for CO-RE relocation.
    pub btf_path: PathBuf,
    pub tracefs_path: PathBuf,
    /// The node's cgroup2 hierarchy, where socket hooks attach and the cgroup walk starts.
    /// Default: the cgroup2 mount in /proc/self/mountinfo. In a pod, /sys/fs/cgroup is the
    /// pod's own cgroup namespace, so the DaemonSet mounts the node's hierarchy elsewhere
    /// and names it here.
    pub cgroup2_path: Option<PathBuf>,
    /// How records reach the agent: `auto` (the ring buffer where the kernel has one, else
    /// the perf event array), `ring_buffer` or `perf_array`.
    pub transport: TransportChoice,
    /// Ring buffer size; a power of two multiple of the page size.
    pub ring_buffer_bytes: u32,
    /// Perf transport: pages per CPU buffer, a power of two, at least 8.
    pub perf_buffer_pages: usize,
    /// Fill level at which the kernel wakes the agent instead of waiting for the drain timer.
    pub wakeup_watermark_bytes: u64,
    /// How often the ring buffer is drained when the watermark is not reached.
    pub drain_interval_ms: u64,
    /// Diagnostics and tests: while this file exists the drain stops reading the ring, so
    /// overflow (and its accounting) can be produced on purpose. Unset in production.
    pub drain_pause_file: Option<PathBuf>,
    pub programs: ProgramsConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportChoice {
    #[default]
    Auto,
    RingBuffer,
    PerfArray,
}

/// Which kernel programs to attach (all on by default; turning one off is for diagnosis).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProgramsConfig {
    pub exec: bool,
    pub fork: bool,
    pub exit: bool,
    /// TCP connects, accepts and listeners.
    pub network: bool,
    /// cgroup connect4/6 and sendmsg4/6 hooks: UDP flows and egress enforcement.
    pub sock_addr: bool,
    /// cgroup2 directories created and removed: containers known before their first exec.
    pub cgroup: bool,
    /// Programs that walk kernel structs from the task's BTF pointer (plain loads) where the
    /// verifier allows it, kernels >= 5.11; their probe-read twins elsewhere. `false` loads
    /// the twins everywhere (diagnosis: the same records, at a higher cost).
    pub task_btf: bool,
    /// BPF trampoline programs (fexit) where the kernel runs them: accepts from
    /// `inet_csk_accept`'s return, so no syscall tracepoint slows every syscall on the node.
    /// `false`: the `sys_exit_accept*` tracepoints everywhere.
    pub fexit: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Events held between the kernel drain and the sender; beyond it events are dropped and
    /// counted, so the drain (and the kernel ring behind it) never waits on the network.
    pub queue_capacity: usize,
    /// Events per batch at most; a batch otherwise holds what one drain pass handed over.
    pub batch_max_events: usize,
    /// Interval of the agent status event (counters and drain progress).
    pub heartbeat_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address for /healthz, /readyz and /metrics.
    pub listen: SocketAddr,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node_name: std::env::var("NODE_NAME").unwrap_or_else(|_| hostname()),
            cluster_name: String::new(),
            log_level: "info".into(),
            collector: CollectorConfig::default(),
            ebpf: EbpfConfig::default(),
            pipeline: PipelineConfig::default(),
            process: ProcessConfig::default(),
            rules: RulesConfig::default(),
            network: NetworkConfig::default(),
            container: ContainerConfig::default(),
            spool: SpoolConfig::default(),
            kubernetes: crate::k8s::K8sConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:7700".into(),
            connect_timeout_ms: 2000,
            max_backoff_ms: 5000,
            compression: Compression::None,
            tls: ClientTls::default(),
        }
    }
}

impl Default for EbpfConfig {
    fn default() -> Self {
        Self {
            object: PathBuf::from("/usr/lib/peregrine/peregrine-ebpf.o"),
            btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
            tracefs_path: PathBuf::from("/sys/kernel/tracing"),
            cgroup2_path: None,
            transport: TransportChoice::Auto,
            // Resident twice over once it has wrapped (the kernel maps the data pages twice):
            // 4 MiB holds ~1,300 exec records, some 25 drain passes at this machine's top exec rate.
            ring_buffer_bytes: 4 << 20,
            perf_buffer_pages: 64,
            wakeup_watermark_bytes: 1 << 20,
            drain_interval_ms: 50,
            drain_pause_file: None,
            programs: ProgramsConfig::default(),
        }
    }
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cri_sockets: vec!["/run/containerd/containerd.sock".into(), "/run/crio/crio.sock".into()],
            cri_timeout_ms: 2000,
            resolve_wait_ms: 500,
            resolve_give_up_ms: 10_000,
            max_held_events: 10_000,
            retention_ms: 60_000,
        }
    }
}

impl Default for ProgramsConfig {
    fn default() -> Self {
        Self { exec: true, fork: true, exit: true, network: true, sock_addr: true, cgroup: true, task_btf: true, fexit: true }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self { queue_capacity: 65536, batch_max_events: 512, heartbeat_interval_ms: 10_000 }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([0, 0, 0, 0], 9464)) }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn err(key: &str, message: impl Into<String>) -> Result<(), (String, String)> {
    Err((key.to_owned(), message.into()))
}

impl Validate for AgentConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        if self.node_name.is_empty() {
            return err("node_name", "empty: set it, or NODE_NAME from the downward API");
        }
        if self.cluster_name.is_empty() {
            return err("cluster_name", "empty: name the cluster as your SIEM should show it");
        }
        if !(self.collector.address.starts_with("http://") || self.collector.address.starts_with("https://")) {
            return err("collector.address", format!("`{}` is not an http:// or https:// URL", self.collector.address));
        }
        let tls = &self.collector.tls;
        let tls_files = [&tls.ca_file, &tls.cert_file, &tls.key_file];
        if self.collector.address.starts_with("https://") && tls_files.iter().any(|f| f.is_none()) {
            return err(
                "collector.tls",
                "an https:// collector needs collector.tls.ca_file, cert_file and key_file (this node's certificate, or where an enrolled one is kept with enroll_token_file)",
            );
        }
        if self.collector.address.starts_with("http://") && (tls_files.iter().any(|f| f.is_some()) || tls.enroll_token_file.is_some()) {
            return err("collector.address", "collector.tls.* is set but the address is http://: use https://");
        }
        let ring = self.ebpf.ring_buffer_bytes;
        if !ring.is_power_of_two() || ring < 4096 {
            return err("ebpf.ring_buffer_bytes", format!("{ring} is not a power of two of at least 4096"));
        }
        if self.ebpf.wakeup_watermark_bytes >= u64::from(ring) {
            return err("ebpf.wakeup_watermark_bytes", "must be smaller than ebpf.ring_buffer_bytes");
        }
        let pages = self.ebpf.perf_buffer_pages;
        // A CPU's buffer must hold the largest exec record (~19.5 KiB with a full argv).
        if !pages.is_power_of_two() || !(8..=4096).contains(&pages) {
            return err("ebpf.perf_buffer_pages", format!("{pages} is not a power of two between 8 and 4096 (a CPU's buffer must hold the largest exec record, ~20 KiB)"));
        }
        if !(1..=1000).contains(&self.ebpf.drain_interval_ms) {
            return err("ebpf.drain_interval_ms", "must be between 1 and 1000");
        }
        if self.pipeline.queue_capacity == 0 {
            return err("pipeline.queue_capacity", "must be at least 1");
        }
        if self.pipeline.batch_max_events == 0 {
            return err("pipeline.batch_max_events", "must be at least 1");
        }
        if self.process.cache_capacity < 64 {
            return err("process.cache_capacity", "must be at least 64");
        }
        if !(1..=64).contains(&self.process.ancestry_depth) {
            return err("process.ancestry_depth", "must be between 1 and 64");
        }
        if !(16..=1 << 22).contains(&self.network.flow_map_entries) {
            return err("network.flow_map_entries", "must be between 16 and 4194304");
        }
        self.network.pod_cidrs()?;
        self.network.service_cidrs()?;
        self.network.deny4()?;
        if self.spool.segment_bytes < 4096 || self.spool.max_bytes < self.spool.segment_bytes.saturating_mul(2) {
            return err("spool.max_bytes", "must hold at least two segments (spool.segment_bytes, at least 4096)");
        }
        if self.spool.commit_interval_ms > 60_000 {
            return err("spool.commit_interval_ms", "must be at most 60000: after a crash the agent resends what was acknowledged in that time");
        }
        if self.container.resolve_wait_ms > 10_000 {
            return err("container.resolve_wait_ms", "must be at most 10000: events wait this long for a new container's metadata");
        }
        if self.container.cri_timeout_ms == 0 {
            return err("container.cri_timeout_ms", "must be at least 1");
        }
        if self.kubernetes.enabled {
            self.kubernetes.validate().map_err(|(key, problem)| (format!("kubernetes.{key}"), problem))?;
        }
        if self.rules.reload_interval_ms < 100 {
            return err("rules.reload_interval_ms", "must be at least 100");
        }
        if self.pipeline.heartbeat_interval_ms < 10 {
            return err("pipeline.heartbeat_interval_ms", "must be at least 10");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_service::config::Layers;

    #[test]
    fn defaults_need_a_cluster_name() {
        let e = Layers::new().build::<AgentConfig>().unwrap_err().to_string();
        assert!(e.starts_with("config key `cluster_name`: empty"), "{e}");
    }

    #[test]
    fn ring_size_is_checked() {
        let e = Layers::new()
            .overrides(["cluster_name=c", "node_name=n", "ebpf.ring_buffer_bytes=5000"])
            .unwrap()
            .build::<AgentConfig>()
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config key `ebpf.ring_buffer_bytes` (set by --set ebpf.ring_buffer_bytes=5000): 5000 is not a power of two of at least 4096"
        );
    }

    #[test]
    fn overrides_reach_nested_keys() {
        let c: AgentConfig = Layers::new()
            .env("PEREGRINE_AGENT", [("PEREGRINE_AGENT__EBPF__PROGRAMS__EXEC".to_owned(), "false".to_owned())])
            .overrides(["cluster_name=prod-weu", "node_name=aks-1", "collector.address=http://10.0.0.1:7700"])
            .unwrap()
            .build()
            .unwrap();
        assert!(!c.ebpf.programs.exec);
        assert_eq!(c.cluster_name, "prod-weu");
        assert_eq!(c.collector.address, "http://10.0.0.1:7700");
    }
}
