//! The kernel side: preflight checks, loading the object with CO-RE relocation, attaching the
//! programs, and handing the ring buffer and counters to the drain.

mod error;
mod object;
mod preflight;
mod tracefs;

use aya::{
    Btf, Ebpf, EbpfLoader, Endianness,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, RawTracePoint, TracePoint},
};
pub use error::KernelError;
use peregrine_common::counter;

use crate::config::EbpfConfig;

/// One attachable program and where it goes.
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
}

impl Hook {
    fn label(&self) -> String {
        match self.kind {
            HookKind::TracePoint => format!("tracepoint/{}/{}", self.category, self.name),
            HookKind::RawTracePoint => format!("raw_tracepoint/{}", self.name),
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
    Hook { program: "inet_sock_set_state", kind: HookKind::TracePoint, category: "sock", name: "inet_sock_set_state" },
    Hook { program: "sys_exit_accept4", kind: HookKind::TracePoint, category: "syscalls", name: "sys_exit_accept4" },
    Hook { program: "sys_exit_accept", kind: HookKind::TracePoint, category: "syscalls", name: "sys_exit_accept" },
];

/// Programs loaded and attached; dropping it detaches them.
pub struct Sensor {
    // Owns the programs and their links: must outlive the maps taken from it.
    _ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    /// Attached hooks, as `tracepoint/<category>/<name>`.
    pub hooks: Vec<String>,
}

impl Sensor {
    /// Loads and attaches; returns the sensor and the ring buffer the programs write to.
    pub fn load(config: &EbpfConfig, exclude_loopback: bool) -> Result<(Self, RingBuf<MapData>), KernelError> {
        preflight::check_caps()?;
        preflight::check_btf(&config.btf_path)?;
        let btf = Btf::parse_file(&config.btf_path, Endianness::default())
            .map_err(|e| KernelError::BadBtf { path: config.btf_path.clone(), message: e.to_string() })?;
        preflight::ensure_tracefs(&config.tracefs_path)?;
        let bytes = object::read_checked(&config.object)?;
        let tracefs = &config.tracefs_path;
        let filename_loc = tracefs::read_field_offset(tracefs, "sched", "sched_process_exec", "filename")?;
        let sock = |field| tracefs::read_field_offset(tracefs, "sock", "inet_sock_set_state", field);
        let (skaddr, oldstate, newstate, protocol) =
            (sock("skaddr")?, sock("oldstate")?, sock("newstate")?, sock("protocol")?);
        let accept_ret = tracefs::read_field_offset(tracefs, "syscalls", "sys_exit_accept4", "ret")?;
        let exclude_loopback = u32::from(exclude_loopback);

        // Kernels >= 5.11 charge BPF memory to the cgroup; raising the limit is only needed on
        // older ones and is refused without CAP_SYS_RESOURCE, which is fine.
        if let Err(e) = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_MEMLOCK,
            nix::sys::resource::RLIM_INFINITY,
            nix::sys::resource::RLIM_INFINITY,
        ) {
            tracing::debug!(error = %e, "could not raise RLIMIT_MEMLOCK (not needed on kernels >= 5.11)");
        }

        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("EXEC_FILENAME_LOC_OFFSET", &filename_loc, true)
            .override_global("WAKEUP_WATERMARK_BYTES", &config.wakeup_watermark_bytes, true)
            .override_global("SOCK_SKADDR_OFFSET", &skaddr, true)
            .override_global("SOCK_OLDSTATE_OFFSET", &oldstate, true)
            .override_global("SOCK_NEWSTATE_OFFSET", &newstate, true)
            .override_global("SOCK_PROTOCOL_OFFSET", &protocol, true)
            .override_global("ACCEPT_RET_OFFSET", &accept_ret, true)
            .override_global("EXCLUDE_LOOPBACK", &exclude_loopback, true)
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .load(&bytes)
            .map_err(|e| KernelError::Load { path: config.object.clone(), message: error_chain(&e) })?;

        let mut hooks = Vec::new();
        let wanted = [
            (&EXEC_HOOK, config.programs.exec),
            (&FORK_HOOK, config.programs.fork),
            (&EXIT_HOOK, config.programs.exit),
            (&NETWORK_HOOKS[0], config.programs.network),
            (&NETWORK_HOOKS[1], config.programs.network),
            (&NETWORK_HOOKS[2], config.programs.network),
        ];
        for (hook, enabled) in wanted {
            // Every program is loaded (so the verifier checks it) even when not attached.
            load_program(&mut ebpf, hook)?;
            if enabled {
                attach(&mut ebpf, hook)?;
                hooks.push(hook.label());
            }
        }

        let ring = take_map(&mut ebpf, "EVENTS")?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        Ok((Self { _ebpf: ebpf, counters, hooks }, ring))
    }

    /// Records the kernel could not put in the ring (it was full), summed over CPUs.
    pub fn records_lost(&self) -> u64 {
        self.counter(counter::RING_FULL)
    }

    /// Records abandoned because a kernel read failed.
    pub fn records_failed(&self) -> u64 {
        self.counter(counter::READ_FAILED)
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
    };
    loaded.map_err(|e| rejected(hook.program, e))
}

fn attach(ebpf: &mut Ebpf, hook: &Hook) -> Result<(), KernelError> {
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
