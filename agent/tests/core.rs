//! The CO-RE check (`peregrine-agent --check-core`) on this machine's kernel: every relocation
//! of the kernel object resolves against /sys/kernel/btf/vmlinux, listed with its program and
//! field path; against a BTF without those types every one fails and the check says so. The 6.1
//! kernel's run is in `kernel_vm.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

fn check(btf: Option<&std::path::Path>) -> (i32, Vec<Value>, String) {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("--check-core").arg(ebpf_object());
    if let Some(b) = btf {
        cmd.arg("--btf").arg(b);
    }
    let out = cmd.output().unwrap();
    let lines = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (out.status.code().unwrap_or(-1), lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn has(list: &[Value], program: &str, kind: &str, spec: &str) -> Option<String> {
    list.iter()
        .find(|r| r["program"] == program && r["kind"] == kind && r["spec"] == spec)
        .map(|r| r["outcome"].as_str().unwrap().to_owned())
}

#[test]
fn every_relocation_resolves_against_this_kernel() {
    let (code, list, stderr) = check(None);
    assert_eq!(code, 0, "{stderr}");
    assert!(list.len() > 50, "{} relocations: {list:?}", list.len());
    let bad: Vec<&Value> = list.iter().filter(|r| r["outcome"] != "resolved" && r["outcome"] != "missing").collect();
    assert!(bad.is_empty(), "{bad:?}");
    for (program, kind, spec) in [
        ("sched_process_exec", "field_byte_offset", "struct task_struct.real_parent"),
        ("sched_process_exec", "field_byte_offset", "struct dentry.d_name.name"),
        ("sched_process_exec", "field_byte_offset", "struct pid.numbers[0]"),
        ("sched_process_exec", "type_size", "struct upid"),
        ("sched_process_exec", "field_exists", "struct task_struct.loginuid"),
        ("sched_process_exit", "field_byte_offset", "struct signal_struct.live.counter"),
        ("sched_process_fork", "field_byte_offset", "struct task_struct.start_boottime"),
    ] {
        assert_eq!(has(&list, program, kind, spec).as_deref(), Some("resolved"), "{program} {kind} {spec}");
    }
    assert!(stderr.contains(&format!("{{\"resolved\": {}}}", list.len())), "{stderr}");
}

/// The running kernel's BTF with member names changed (same length, so the BTF stays valid):
/// as a kernel without those fields.
fn btf_without(dir: &std::path::Path, renames: &[(&str, &str)]) -> std::path::PathBuf {
    let mut btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
    for (from, to) in renames {
        assert_eq!(from.len(), to.len());
        let needle = format!("\0{from}\0").into_bytes();
        let at = btf.windows(needle.len()).position(|w| w == needle.as_slice()).unwrap_or_else(|| panic!("no `{from}` in the kernel's BTF"));
        btf[at + 1..at + 1 + to.len()].copy_from_slice(to.as_bytes());
    }
    let path = dir.join("vmlinux.btf");
    std::fs::write(&path, &btf).unwrap();
    path
}

#[test]
fn a_kernel_without_a_field_fails_the_check_naming_each_access() {
    let dir = TempDir::new("core");
    let (code, list, stderr) = check(Some(&btf_without(dir.path(), &[("start_boottime", "start_boottimX")])));
    assert_eq!(code, 3, "the check fails: {stderr}");
    let unresolved: Vec<&Value> = list.iter().filter(|r| r["outcome"] == "unresolved").collect();
    assert!(!unresolved.is_empty());
    assert!(unresolved.iter().all(|r| r["spec"] == "struct task_struct.start_boottime"), "{unresolved:?}");
    assert_eq!(has(&list, "sched_process_fork", "field_byte_offset", "struct task_struct.start_boottime").as_deref(), Some("unresolved"));
    assert_eq!(has(&list, "sched_process_exec", "field_byte_offset", "struct task_struct.real_parent").as_deref(), Some("resolved"));
    assert!(stderr.contains("\"unresolved\""), "{stderr}");
}

#[test]
fn an_optional_field_the_kernel_lacks_takes_its_fallback() {
    let dir = TempDir::new("core-optional");
    // loginuid exists only with CONFIG_AUDIT; the getter checks for it first.
    let (code, list, stderr) = check(Some(&btf_without(dir.path(), &[("loginuid", "loginuiX")])));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(has(&list, "sched_process_exec", "field_exists", "struct task_struct.loginuid").as_deref(), Some("missing"));
    assert_eq!(has(&list, "sched_process_exec", "field_byte_offset", "struct task_struct.loginuid.val").as_deref(), Some("guarded"));
}
