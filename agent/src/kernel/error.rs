//! Why the kernel side could not start, each with the fix an operator can apply.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "missing capabilities {missing}: run the agent as root, or grant CAP_BPF and CAP_PERFMON \
         (CAP_SYS_ADMIN on kernels before 5.8), and CAP_NET_ADMIN for the socket hooks \
         (or set ebpf.programs.sock_addr = false)"
    )]
    MissingCapabilities { missing: String },
    #[error(
        "kernel BTF not found at {path}: the kernel needs CONFIG_DEBUG_INFO_BTF=y, or point \
         ebpf.btf_path at a BTF file for this kernel"
    )]
    NoBtf { path: PathBuf },
    #[error("cannot parse kernel BTF at {path}: {message}")]
    BadBtf { path: PathBuf, message: String },
    #[error(
        "tracefs is not mounted at {path} and mounting it failed ({errno}): mount it on the host \
         (mount -t tracefs tracefs {path}) or give the agent CAP_SYS_ADMIN"
    )]
    Tracefs { path: PathBuf, errno: nix::errno::Errno },
    #[error("cannot read tracepoint format {path}: {message}")]
    TracepointFormat { path: PathBuf, message: String },
    #[error("cannot read eBPF object {path}: {source} (build it with `cargo xtask build`, or set ebpf.object)")]
    ObjectRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("eBPF object {path} is not a Peregrine kernel object: {message}")]
    ObjectInvalid { path: PathBuf, message: String },
    #[error(
        "eBPF object {path} was built for record ABI version {found}, this agent reads version \
         {expected}: install the object built with this agent (`cargo xtask build`)"
    )]
    AbiMismatch { path: PathBuf, found: u32, expected: u32 },
    #[error("loading eBPF object {path} failed: {message}")]
    Load { path: PathBuf, message: String },
    #[error(
        "the kernel refused program {program} ({syscall}: {io_error}){hint}\nverifier log:\n{verifier_log}"
    )]
    ProgramRejected {
        program: String,
        syscall: &'static str,
        io_error: std::io::Error,
        hint: &'static str,
        verifier_log: String,
    },
    #[error("attaching {program} to {hook} failed: {message}")]
    Attach { program: String, hook: String, message: String },
    #[error("map {map} missing or of the wrong type in the object: {message}")]
    Map { map: &'static str, message: String },
}
