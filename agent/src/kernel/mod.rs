//! The kernel side: preflight checks, loading the object with CO-RE relocation, attaching the
//! programs, and handing the record maps (ring buffer or perf buffers) and counters to the drain.

mod btf_func;
pub mod core_check;
mod error;
pub mod features;
mod object;
mod preflight;
mod tracefs;
pub mod transport;

use aya::{
    Btf, Ebpf, EbpfLoader, Endianness,
    maps::{HashMap, MapData, PerCpuArray, PerfEventArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSockAddr, FExit, Lsm, ProgramError, RawTracePoint, TracePoint},
};
pub use error::KernelError;
use peregrine_common::{ConnWindow, FlowKey, counter};

use crate::config::{EbpfConfig, TransportChoice};

/// One attachable program and where it goes.
#[derive(Clone, Copy)]
struct Hook {
    program: &'static str,
    kind: HookKind,
    category: &'static str,
    name: &'static str,
}

#[derive(Clone, Copy)]
enum HookKind {
    /// `tracepoint/<category>/<name>`: stable record layout, in every kernel.
    TracePoint,
    /// `raw_tracepoint/<name>`: the tracepoint's C arguments (task pointers); kernels >= 4.17.
    RawTracePoint,
    /// `cgroup/<name>`: a cgroup sock_addr hook on the cgroup2 root, attached alongside others
    /// (Cilium uses the same hooks on AKS).
    CgroupSockAddr,
}

impl Hook {
    fn label(&self) -> String {
        match self.kind {
            HookKind::TracePoint => format!("tracepoint/{}/{}", self.category, self.name),
            HookKind::RawTracePoint => format!("raw_tracepoint/{}", self.name),
            HookKind::CgroupSockAddr => format!("cgroup/{}", self.name),
        }
    }
}

const EXEC_HOOK: Hook =
    Hook { program: "sched_process_exec", kind: HookKind::TracePoint, category: "sched", name: "sched_process_exec" };
const FORK_HOOK: Hook =
    Hook { program: "sched_process_fork", kind: HookKind::RawTracePoint, category: "sched", name: "sched_process_fork" };
const EXIT_HOOK: Hook =
    Hook { program: "sched_process_exit", kind: HookKind::TracePoint, category: "sched", name: "sched_process_exit" };
const NETWORK_HOOKS: [Hook; 3] = [
    Hook { program: "inet_sock_set_state", kind: HookKind::RawTracePoint, category: "sock", name: "inet_sock_set_state" },
    Hook { program: "sys_exit_accept4", kind: HookKind::TracePoint, category: "syscalls", name: "sys_exit_accept4" },
    Hook { program: "sys_exit_accept", kind: HookKind::TracePoint, category: "syscalls", name: "sys_exit_accept" },
];
/// Optional: the tracepoint exists since 5.14; without it resets go unreported.
const RESET_HOOK: Hook =
    Hook { program: "inet_sk_error_report", kind: HookKind::RawTracePoint, category: "sock", name: "inet_sk_error_report" };
const SOCK_ADDR_HOOKS: [Hook; 6] = [
    Hook { program: "sock_connect4", kind: HookKind::CgroupSockAddr, category: "", name: "connect4" },
    Hook { program: "sock_connect6", kind: HookKind::CgroupSockAddr, category: "", name: "connect6" },
    Hook { program: "sock_sendmsg4", kind: HookKind::CgroupSockAddr, category: "", name: "sendmsg4" },
    Hook { program: "sock_sendmsg6", kind: HookKind::CgroupSockAddr, category: "", name: "sendmsg6" },
    Hook { program: "sock_recvmsg4", kind: HookKind::CgroupSockAddr, category: "", name: "recvmsg4" },
    Hook { program: "sock_recvmsg6", kind: HookKind::CgroupSockAddr, category: "", name: "recvmsg6" },
];

/// Programs with a portable twin: the first walks kernel structs from the task's BTF pointer
/// (`bpf_get_current_task_btf`, kernels >= 5.11), a fraction of the twin's cost (the accept's
/// fd-table walk is four helper calls fewer); the twin, all probe reads, is loaded where the
/// verifier refuses the first, or where `ebpf.programs.task_btf` is off.
const PROBE_READ_TWINS: [(&str, &str); 2] =
    [("sys_exit_accept4", "sys_exit_accept4_probe_read"), ("sys_exit_accept", "sys_exit_accept_probe_read")];

const CGROUP_HOOKS: [Hook; 2] = [
    Hook { program: "cgroup_mkdir", kind: HookKind::TracePoint, category: "cgroup", name: "cgroup_mkdir" },
    Hook { program: "cgroup_rmdir", kind: HookKind::TracePoint, category: "cgroup", name: "cgroup_rmdir" },
];

/// What the socket hooks need from the configuration.
pub struct SocketPolicy {
    pub exclude_loopback: bool,
    /// Report a UDP flow again after this long (0: every send).
    pub udp_dedup_ns: u64,
    /// Send a TCP flow's first connect or accept per window this long, count the others
    /// (0: send every one).
    pub tcp_dedup_ns: u64,
    /// Entries of each flow map (CONNECTING, TCP_SEEN, UDP_SEEN).
    pub flow_map_entries: u32,
    /// IPv4 destinations (address, prefix length) refused with EPERM; empty: no enforcement.
    pub deny4: Vec<([u8; 4], u32)>,
    /// Executables whose exec the LSM hook refuses; empty: the hook is not loaded.
    pub deny_exec: Vec<std::path::PathBuf>,
}

/// Programs loaded and attached; dropping it detaches them.
pub struct Sensor {
    // Owns the programs and their links: must outlive the maps taken from it.
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    /// TCP dedup windows (`TCP_SEEN`), by `FlowKey::to_bytes`.
    tcp_windows: HashMap<MapData, [u8; 32], [u8; 32]>,
    /// Attached hooks, as `tracepoint/<category>/<name>`, `fexit/<function>`, ...
    pub hooks: Vec<String>,
    /// Boot-time ns when the last hook was attached: observation starts here.
    pub attached_boot_ns: u64,
    /// What the kernel offers (`features.rs`), probed before loading.
    pub features: Vec<features::Feature>,
    /// How records reach the agent, and why that one (`transport.rs`).
    pub transport: transport::Kind,
    pub transport_reason: &'static str,
}

impl Sensor {
    /// Loads and attaches; returns the sensor and the maps the programs write their records to.
    pub fn load(config: &EbpfConfig, policy: &SocketPolicy) -> Result<(Self, transport::Maps), KernelError> {
        preflight::check_caps(config.programs.sock_addr)?;
        preflight::check_btf(&config.btf_path)?;
        let features = features::probe(&config.btf_path);
        tracing::info!(?features, "kernel features");
        let btf = Btf::parse_file(&config.btf_path, Endianness::default())
            .map_err(|e| KernelError::BadBtf { path: config.btf_path.clone(), message: e.to_string() })?;
        preflight::ensure_tracefs(&config.tracefs_path)?;
        let ring_available = features::is_available(features::verdict_of(&features, "ring_buffer"));
        let (kind, transport_reason) = match config.transport {
            TransportChoice::RingBuffer => (transport::Kind::RingBuffer, "configured"),
            TransportChoice::PerfArray => (transport::Kind::PerfEventArray, "configured"),
            TransportChoice::Auto if ring_available => (transport::Kind::RingBuffer, "the kernel has a BPF ring buffer"),
            TransportChoice::Auto => (transport::Kind::PerfEventArray, "the kernel has no BPF ring buffer"),
        };
        let use_perf = u32::from(kind == transport::Kind::PerfEventArray);
        tracing::info!(transport = kind.name(), why = transport_reason, "kernel record transport");
        let mut bytes = object::read_checked(&config.object)?;
        if use_perf == 1 {
            bytes = object::ring_buffer_as_array(&bytes)
                .map_err(|message| KernelError::ObjectInvalid { path: config.object.clone(), message })?;
        }
        let tracefs = &config.tracefs_path;
        let filename_loc = tracefs::read_field_offset(tracefs, "sched", "sched_process_exec", "filename")?;
        let accept_ret = tracefs::read_field_offset(tracefs, "syscalls", "sys_exit_accept4", "ret")?;
        let cg = |field| tracefs::read_field_offset(tracefs, "cgroup", "cgroup_mkdir", field);
        let (cg_root, cg_level, cg_id, cg_path) = (cg("root")?, cg("level")?, cg("id")?, cg("path")?);
        let exclude_loopback = u32::from(policy.exclude_loopback);
        let enforce = u32::from(!policy.deny4.is_empty());

        // Kernels >= 5.11 charge BPF memory to the cgroup; raising the limit is only needed on
        // older ones and is refused without CAP_SYS_RESOURCE, which is fine.
        if let Err(e) = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_MEMLOCK,
            nix::sys::resource::RLIM_INFINITY,
            nix::sys::resource::RLIM_INFINITY,
        ) {
            tracing::debug!(error = %e, "could not raise RLIMIT_MEMLOCK (not needed on kernels >= 5.11)");
        }

        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            .override_global("USE_PERF", &use_perf, true)
            .override_global("EXEC_FILENAME_LOC_OFFSET", &filename_loc, true)
            .override_global("WAKEUP_WATERMARK_BYTES", &config.wakeup_watermark_bytes, true)
            .override_global("ACCEPT_RET_OFFSET", &accept_ret, true)
            .override_global("CGROUP_ROOT_OFFSET", &cg_root, true)
            .override_global("CGROUP_LEVEL_OFFSET", &cg_level, true)
            .override_global("CGROUP_ID_OFFSET", &cg_id, true)
            .override_global("CGROUP_PATH_LOC_OFFSET", &cg_path, true)
            .override_global("EXCLUDE_LOOPBACK", &exclude_loopback, true)
            .override_global("ENFORCE", &enforce, true)
            .override_global("UDP_DEDUP_NS", &policy.udp_dedup_ns, true)
            .override_global("TCP_DEDUP_NS", &policy.tcp_dedup_ns, true);
        if use_perf == 0 {
            loader.map_max_entries("EVENTS", config.ring_buffer_bytes);
        }
        for map in ["CONNECTING", "TCP_SEEN", "UDP_SEEN"] {
            loader.map_max_entries(map, policy.flow_map_entries);
        }
        let mut ebpf =
            loader.load(&bytes).map_err(|e| KernelError::Load { path: config.object.clone(), message: error_chain(&e) })?;

        let mut hooks = Vec::new();
        if !policy.deny4.is_empty() {
            // Borrowed, not taken: the programs refer to this map's fd, which must stay open.
            let map = ebpf.map_mut("DENY4").ok_or(KernelError::Map { map: "DENY4", message: "not in the object".into() })?;
            let mut deny: aya::maps::LpmTrie<_, [u8; 4], u8> =
                aya::maps::LpmTrie::try_from(map).map_err(|e| KernelError::Map { map: "DENY4", message: e.to_string() })?;
            for (addr, prefix) in &policy.deny4 {
                deny.insert(&aya::maps::lpm_trie::Key::new(*prefix, *addr), 1, 0)
                    .map_err(|e| KernelError::Map { map: "DENY4", message: e.to_string() })?;
            }
        }
        // The perf buffers go in before any program is attached (see transport::Maps::Perf).
        let perf = match kind {
            transport::Kind::PerfEventArray => Some(transport::PerfReader::open(
                take_map::<PerfEventArray<MapData>>(&mut ebpf, "PERF_EVENTS")?,
                config.perf_buffer_pages,
            )?),
            transport::Kind::RingBuffer => None,
        };
        if !policy.deny_exec.is_empty() {
            attach_exec_enforcement(&mut ebpf, &btf, &features, &policy.deny_exec)?;
            hooks.push(LSM_EXEC_HOOK.to_owned());
        }
        let mut accept_fexit =
            if config.programs.network && config.programs.fexit { attach_accept_fexit(&mut ebpf, &features) } else { None };
        let accept_tracepoints = config.programs.network && accept_fexit.is_none();
        let wanted = [
            (&EXEC_HOOK, config.programs.exec),
            (&FORK_HOOK, config.programs.fork),
            (&EXIT_HOOK, config.programs.exit),
            (&NETWORK_HOOKS[0], config.programs.network),
            (&NETWORK_HOOKS[1], accept_tracepoints),
            (&NETWORK_HOOKS[2], accept_tracepoints),
            (&SOCK_ADDR_HOOKS[0], config.programs.sock_addr),
            (&SOCK_ADDR_HOOKS[1], config.programs.sock_addr),
            (&SOCK_ADDR_HOOKS[2], config.programs.sock_addr),
            (&SOCK_ADDR_HOOKS[3], config.programs.sock_addr),
            (&SOCK_ADDR_HOOKS[4], config.programs.sock_addr),
            (&SOCK_ADDR_HOOKS[5], config.programs.sock_addr),
            (&CGROUP_HOOKS[0], config.programs.cgroup),
            (&CGROUP_HOOKS[1], config.programs.cgroup),
        ];
        let cgroup_root = cgroup2_root(config.cgroup2_path.as_deref())?;
        let socket_programs = preflight::effective_caps().is_some_and(preflight::can_load_socket_programs);
        for (hook, enabled) in wanted {
            // Every program is loaded (so the verifier checks it) even when not attached;
            // socket programs only with CAP_NET_ADMIN (turned off, they need not have it).
            if !enabled && matches!(hook.kind, HookKind::CgroupSockAddr) && !socket_programs {
                continue;
            }
            let (hook, label) = load_or_twin(&mut ebpf, hook, config.programs.task_btf)?;
            if enabled {
                attach(&mut ebpf, &hook, &cgroup_root)?;
                hooks.push(label);
            }
            // Reported where the accept tracepoints would be.
            if hook.program == NETWORK_HOOKS[0].program {
                hooks.extend(accept_fexit.take());
            }
        }

        load_program(&mut ebpf, &RESET_HOOK)?;
        if config.programs.network {
            match attach(&mut ebpf, &RESET_HOOK, &cgroup_root) {
                Ok(()) => hooks.push(RESET_HOOK.label()),
                Err(e) => tracing::warn!(
                    error = %e,
                    "no sock:inet_sk_error_report tracepoint (kernels before 5.14): resets of established connects are not reported"
                ),
            }
        }

        let maps = match perf {
            Some(reader) => transport::Maps::Perf(reader),
            None => transport::Maps::Ring(take_map::<RingBuf<MapData>>(&mut ebpf, "EVENTS")?),
        };
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let tcp_windows = take_map(&mut ebpf, "TCP_SEEN")?;
        let attached_boot_ns = crate::clock::boot_now_ns();
        Ok((Self { ebpf, counters, tcp_windows, hooks, attached_boot_ns, features, transport: kind, transport_reason }, maps))
    }

    /// Records the kernel could not put in the ring (it was full), summed over CPUs.
    pub fn records_lost(&self) -> u64 {
        self.counter(counter::RING_FULL)
    }

    /// Records abandoned because a kernel read failed.
    pub fn records_failed(&self) -> u64 {
        self.counter(counter::READ_FAILED)
    }

    /// Connect outcomes whose owner was gone from the map (evicted under pressure, or the
    /// connect began before the agent): reported unattributed rather than misattributed.
    pub fn connects_unattributed(&self) -> u64 {
        self.counter(counter::CONN_OWNER_MISSING)
    }

    /// (program, runs, ns in it) as the kernel counts them while `kernel.bpf_stats_enabled`
    /// is 1 (zeros otherwise): what each hook costs on this node.
    pub fn program_stats(&self) -> Vec<(&str, u64, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                let ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
                Some((name, info.run_count(), ns))
            })
            .collect()
    }

    fn counter(&self, index: u32) -> u64 {
        match self.counters.get(&index, 0) {
            Ok(values) => values.iter().sum(),
            Err(e) => {
                tracing::warn!(error = %e, index, "reading kernel counters failed");
                0
            }
        }
    }
}

impl crate::net::dedup::WindowMap for Sensor {
    fn read(&self, key: &FlowKey) -> Result<Option<ConnWindow>, String> {
        match self.tcp_windows.get(&key.to_bytes(), 0) {
            Ok(value) => Ok(Some(ConnWindow::from_bytes(&value))),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn remove(&mut self, key: &FlowKey) {
        // Gone already (evicted, or the kernel replaced and the agent removed it) is fine.
        let _ = self.tcp_windows.remove(&key.to_bytes());
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::Map { map: name, message: "not in the object".into() })?;
    T::try_from(map).map_err(|e| KernelError::Map { map: name, message: e.to_string() })
}

fn program<'a>(ebpf: &'a mut Ebpf, hook: &Hook) -> Result<&'a mut aya::programs::Program, KernelError> {
    ebpf.program_mut(hook.program).ok_or_else(|| KernelError::Attach {
        program: hook.program.into(),
        hook: hook.label(),
        message: "program not found in the object".into(),
    })
}

fn wrong_type(hook: &Hook, e: ProgramError) -> KernelError {
    KernelError::Attach { program: hook.program.into(), hook: hook.label(), message: e.to_string() }
}

fn load_program(ebpf: &mut Ebpf, hook: &Hook) -> Result<(), KernelError> {
    let program = program(ebpf, hook)?;
    let loaded = match hook.kind {
        HookKind::TracePoint => {
            let p: &mut TracePoint = program.try_into().map_err(|e| wrong_type(hook, e))?;
            p.load()
        }
        HookKind::RawTracePoint => {
            let p: &mut RawTracePoint = program.try_into().map_err(|e| wrong_type(hook, e))?;
            p.load()
        }
        HookKind::CgroupSockAddr => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(|e| wrong_type(hook, e))?;
            p.load()
        }
    };
    loaded.map_err(|e| rejected(hook.program, e))
}

/// Loads the hook's program, or its probe-read twin (`PROBE_READ_TWINS`) where the verifier
/// refuses it or `task_btf` is off. Returns the hook to attach and its label for the status
/// event and the hooks metric, which names a twin ("(probe reads)") so an operator sees which
/// node pays more. A twin not needed is loaded too, so the verifier checks it on every node
/// (as every program is checked); a twin refused there is only logged: it is not attached.
fn load_or_twin(ebpf: &mut Ebpf, hook: &Hook, task_btf: bool) -> Result<(Hook, String), KernelError> {
    let Some((_, twin)) = PROBE_READ_TWINS.iter().find(|(first, _)| *first == hook.program) else {
        load_program(ebpf, hook)?;
        return Ok((*hook, hook.label()));
    };
    let twin = Hook { program: twin, ..*hook };
    if task_btf {
        match load_program(ebpf, hook) {
            Ok(()) => {
                if let Err(e) = load_program(ebpf, &twin) {
                    tracing::warn!(program = twin.program, error = %e, "the probe-read twin does not verify here (not needed: not attached)");
                }
                return Ok((*hook, hook.label()));
            }
            // Only the verifier's refusal: anything else (no permission, no memory) would
            // refuse the twin as well, and the first error is the one to show.
            Err(e) if !is_verifier_refusal(&e) => return Err(e),
            Err(e) => tracing::warn!(
                program = hook.program,
                twin = twin.program,
                error = %e,
                "the verifier refused the task-BTF program; loading its probe-read twin (same records, higher cost)"
            ),
        }
    }
    load_program(ebpf, &twin)?;
    Ok((twin, format!("{} (probe reads)", twin.label())))
}

/// A load refused by the verifier (it wrote a log), not for want of permission.
fn is_verifier_refusal(e: &KernelError) -> bool {
    matches!(e, KernelError::ProgramRejected { io_error, verifier_log, .. }
        if !verifier_log.trim().is_empty() && io_error.raw_os_error() != Some(nix::libc::EPERM))
}

const ACCEPT_FEXIT_HOOK: &str = "fexit/inet_csk_accept";

/// Attaches the fexit accept program matching the kernel's `inet_csk_accept` (4 or 2
/// parameters) where the kernel runs BPF trampolines; returns its label, or None (logged
/// why) when the syscall tracepoints have to do: they cost every syscall on the node the
/// tracing slow path (docs/PERFORMANCE.md), which is why this is tried first. The kernel's own
/// BTF, not `ebpf.btf_path`: the kernel resolves the attach point in its vmlinux BTF, and a
/// kernel that runs trampolines has one.
fn attach_accept_fexit(ebpf: &mut Ebpf, features: &[features::Feature]) -> Option<String> {
    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
    let fallback = "accepts from the syscall tracepoints";
    let fentry = features::verdict_of(features, "fentry");
    if !features::is_available(fentry) {
        tracing::info!(fentry, "{fallback}: the kernel runs no BPF trampolines");
        return None;
    }
    // Read once: counted here, parsed for the load below.
    let data = match std::fs::read(VMLINUX) {
        Ok(data) => data,
        Err(e) => {
            tracing::warn!("{fallback}: cannot read inet_csk_accept's prototype from {VMLINUX}: {e}");
            return None;
        }
    };
    let program = match btf_func::param_count(&data, "inet_csk_accept") {
        Ok(Some(4)) => "inet_csk_accept_fexit4",
        Ok(Some(2)) => "inet_csk_accept_fexit2",
        Ok(Some(n)) => {
            tracing::warn!("{fallback}: inet_csk_accept has {n} parameters, not the 4 of kernels up to 6.9 or the 2 of later ones");
            return None;
        }
        Ok(None) => {
            tracing::warn!("{fallback}: {VMLINUX} describes no inet_csk_accept");
            return None;
        }
        Err(e) => {
            tracing::warn!("{fallback}: cannot read inet_csk_accept's prototype from {VMLINUX}: {e}");
            return None;
        }
    };
    let attached = (|| -> Result<(), KernelError> {
        let attach_err = |message: String| KernelError::Attach { program: program.into(), hook: ACCEPT_FEXIT_HOOK.into(), message };
        let btf = Btf::parse(&data, Endianness::default()).map_err(|e| attach_err(format!("{VMLINUX}: {e}")))?;
        let p = ebpf.program_mut(program).ok_or_else(|| attach_err("program not found in the object".into()))?;
        let p: &mut FExit = p.try_into().map_err(|e: ProgramError| attach_err(e.to_string()))?;
        p.load("inet_csk_accept", &btf).map_err(|e| rejected(program, e))?;
        p.attach().map_err(|e| attach_err(e.to_string()))?;
        Ok(())
    })();
    match attached {
        Ok(()) => Some(ACCEPT_FEXIT_HOOK.to_owned()),
        Err(e) => {
            tracing::warn!(error = %e, "{fallback}: the fexit program did not load or attach");
            None
        }
    }
}

const LSM_EXEC_HOOK: &str = "lsm/bprm_check_security";

/// Fills EXEC_DENY with `deny_exec` and attaches the LSM exec hook; refuses where the kernel
/// does not run BPF LSM (the agent must not seem to enforce what it cannot).
fn attach_exec_enforcement(
    ebpf: &mut Ebpf,
    btf: &Btf,
    features: &[features::Feature],
    deny_exec: &[std::path::PathBuf],
) -> Result<(), KernelError> {
    let attach_err = |message: String| KernelError::Attach { program: "lsm_bprm_check".into(), hook: LSM_EXEC_HOOK.into(), message };
    let lsm = features::verdict_of(features, "lsm");
    if !features::is_available(lsm) {
        return Err(attach_err(format!(
            "process.deny_exec needs the BPF LSM ({lsm}): boot the node with `lsm=...,bpf`, or empty process.deny_exec"
        )));
    }
    let map_err = |message: String| KernelError::Map { map: "EXEC_DENY", message };
    let map = ebpf.map_mut("EXEC_DENY").ok_or_else(|| map_err("not in the object".into()))?;
    // Keyed by FileKey's bytes (dev, then ino, native-endian as the program reads them).
    let mut deny: aya::maps::HashMap<_, [u8; 16], u8> = aya::maps::HashMap::try_from(map).map_err(|e| map_err(e.to_string()))?;
    for path in deny_exec {
        deny.insert(file_key(path).map_err(map_err)?, 1, 0).map_err(|e| map_err(e.to_string()))?;
    }
    let program = ebpf.program_mut("lsm_bprm_check").ok_or_else(|| attach_err("program not found in the object".into()))?;
    let lsm: &mut Lsm = program.try_into().map_err(|e: ProgramError| attach_err(e.to_string()))?;
    lsm.load("bprm_check_security", btf).map_err(|e| rejected("lsm_bprm_check", e))?;
    lsm.attach().map_err(|e| attach_err(e.to_string()))?;
    Ok(())
}

/// The deny-map key of a file: its device in the kernel's encoding (`major << 20 | minor`, as
/// `inode->i_sb->s_dev` holds it) and its inode.
fn file_key(path: &std::path::Path) -> Result<[u8; 16], String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("process.deny_exec: {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("process.deny_exec: {} is not a regular file", path.display()));
    }
    let dev = meta.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let mut key = [0; 16];
    key[..8].copy_from_slice(&((major << 20) | minor).to_ne_bytes());
    key[8..].copy_from_slice(&meta.ino().to_ne_bytes());
    Ok(key)
}

/// The cgroup2 hierarchy's root (configured, or found in /proc/self/mountinfo: `/sys/fs/cgroup`
/// on cgroup-v2 hosts, `/sys/fs/cgroup/unified` on hybrid ones), opened for attaching socket hooks.
fn cgroup2_root(configured: Option<&std::path::Path>) -> Result<std::fs::File, KernelError> {
    let path = cgroup2_mount(configured)?;
    std::fs::File::open(&path)
        .map_err(|e| KernelError::Map { map: "cgroup2", message: format!("opening {}: {e}", path.display()) })
}

/// Where the cgroup2 hierarchy is: `configured` (checked to be cgroup2), or the first cgroup2
/// mount in /proc/self/mountinfo.
pub fn cgroup2_mount(configured: Option<&std::path::Path>) -> Result<std::path::PathBuf, KernelError> {
    if let Some(path) = configured {
        return check_cgroup2(path).map(|()| path.to_owned());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| KernelError::Map { map: "cgroup2", message: format!("reading /proc/self/mountinfo: {e}") })?;
    let path = mountinfo
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2").then(|| pre.split_whitespace().nth(4).map(str::to_owned))?
        })
        .ok_or_else(|| KernelError::Map {
            map: "cgroup2",
            message: "no cgroup2 mount: mount one (mount -t cgroup2 none /sys/fs/cgroup) or set ebpf.programs.sock_addr = false".into(),
        })?;
    Ok(std::path::PathBuf::from(path))
}

/// A configured cgroup2 path must be a cgroup2 mount's root, or socket hooks would cover only
/// part of the node (and container lookups would miss the rest).
fn check_cgroup2(path: &std::path::Path) -> Result<(), KernelError> {
    let bad = |why: String| KernelError::Map {
        map: "cgroup2",
        message: format!("ebpf.cgroup2_path = {}: {why}; point it at the node's cgroup2 root (in a pod, a hostPath mount of /sys/fs/cgroup)", path.display()),
    };
    let stat = nix::sys::statfs::statfs(path).map_err(|e| bad(e.to_string()))?;
    if stat.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err(bad("not a cgroup2 file system".into()));
    }
    // The root of a cgroup2 mount is the only directory without cgroup.procs' sibling cgroup.type.
    if path.join("cgroup.type").exists() {
        return Err(bad("a cgroup below the hierarchy's root, not the root".into()));
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, hook: &Hook, cgroup_root: &std::fs::File) -> Result<(), KernelError> {
    let program = program(ebpf, hook)?;
    let attached = match hook.kind {
        HookKind::TracePoint => {
            let p: &mut TracePoint = program.try_into().map_err(|e| wrong_type(hook, e))?;
            p.attach(hook.category, hook.name).map(|_| ())
        }
        HookKind::RawTracePoint => {
            let p: &mut RawTracePoint = program.try_into().map_err(|e| wrong_type(hook, e))?;
            p.attach(hook.name).map(|_| ())
        }
        HookKind::CgroupSockAddr => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(|e| wrong_type(hook, e))?;
            // From 5.7 aya attaches through a bpf_link, which always coexists with other
            // programs on the cgroup (and refuses the ALLOW_MULTI flag); before, the legacy
            // attach needs ALLOW_MULTI to leave Cilium's (or anyone's) programs in place.
            let links = aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 7, 0));
            let mode = if links { CgroupAttachMode::Single } else { CgroupAttachMode::AllowMultiple };
            p.attach(cgroup_root, mode).map(|_| ())
        }
    };
    attached.map_err(|e| KernelError::Attach { program: hook.program.into(), hook: hook.label(), message: error_chain(&e) })
}

fn rejected(program: &str, e: ProgramError) -> KernelError {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let hint = if io_error.raw_os_error() == Some(nix::libc::EPERM) {
                ": not permitted, run as root or grant CAP_BPF and CAP_PERFMON"
            } else {
                ""
            };
            KernelError::ProgramRejected {
                program: program.into(),
                syscall: "bpf(BPF_PROG_LOAD)",
                io_error,
                hint,
                verifier_log: verifier_log.to_string(),
            }
        }
        ProgramError::SyscallError(aya::sys::SyscallError { call, io_error }) => KernelError::ProgramRejected {
            program: program.into(),
            syscall: call,
            io_error,
            hint: "",
            verifier_log: String::new(),
        },
        other => KernelError::Attach { program: program.into(), hook: String::new(), message: error_chain(&other) },
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
