//! Checks run before touching bpf(): each failure becomes one clear line instead of an EPERM
//! deep inside the loader.

use std::path::Path;

use super::error::KernelError;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process, from `/proc/self/status`.
pub fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Names the capabilities that are missing to load and attach tracing programs, and the
/// socket (cgroup sock_addr) programs when `socket_hooks`: the kernel loads those only for
/// CAP_NET_ADMIN.
pub fn missing_caps(cap_eff: u64, socket_hooks: bool) -> Vec<&'static str> {
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    if socket_hooks && !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// Whether socket programs can be loaded at all (loaded for verification even when off).
pub fn can_load_socket_programs(cap_eff: u64) -> bool {
    cap_eff & ((1u64 << CAP_NET_ADMIN) | (1u64 << CAP_SYS_ADMIN)) != 0
}

pub fn check_caps(socket_hooks: bool) -> Result<(), KernelError> {
    let caps = effective_caps().unwrap_or(0);
    let missing = missing_caps(caps, socket_hooks);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(KernelError::MissingCapabilities { missing: missing.join(", ") })
    }
}

pub fn check_btf(path: &Path) -> Result<(), KernelError> {
    if path.is_file() { Ok(()) } else { Err(KernelError::NoBtf { path: path.to_owned() }) }
}

/// Makes sure tracefs is available at `path`, mounting it when it is not.
pub fn ensure_tracefs(path: &Path) -> Result<(), KernelError> {
    if path.join("events").is_dir() {
        return Ok(());
    }
    nix::mount::mount(Some("tracefs"), path, Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|errno| KernelError::Tracefs { path: path.to_owned(), errno })?;
    if path.join("events").is_dir() {
        tracing::info!(path = %path.display(), "mounted tracefs");
        Ok(())
    } else {
        Err(KernelError::Tracefs { path: path.to_owned(), errno: nix::errno::Errno::ENOENT })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_parsed_and_checked() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        let caps = parse_cap_eff(status).unwrap();
        assert_eq!(caps, 0x1fffeffffff);
        assert!(missing_caps(caps, true).is_empty());
        assert_eq!(missing_caps(0, false), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_caps(0, true), vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON), false).is_empty());
        assert_eq!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON), true), vec!["CAP_NET_ADMIN"]);
        assert!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN), true).is_empty());
        assert_eq!(missing_caps(1 << CAP_BPF, false), vec!["CAP_PERFMON"]);
        assert!(can_load_socket_programs(1 << CAP_NET_ADMIN));
        assert!(!can_load_socket_programs((1 << CAP_BPF) | (1 << CAP_PERFMON)));
    }
}
