//! Bad input and failure: each a one-line error naming cause and fix, never a panic; or, when
//! the collector is away, an agent that keeps running and counts what it cannot send.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{io::Write, net::TcpStream, process::Command, time::Duration};

use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn assert_clean_failure(code: i32, stderr: &str, expected: &str) {
    assert_eq!(code, 1, "exit code; stderr: {stderr}");
    assert!(stderr.contains(expected), "expected `{expected}` in: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "backtrace hint: {stderr}");
}

#[test]
fn object_with_another_abi_is_refused() {
    let dir = TempDir::new("abi");
    let wrong = env_path("PEREGRINE_EBPF_OBJECT_WRONG_ABI");
    let found = std::env::var("PEREGRINE_EBPF_WRONG_ABI").unwrap();
    let cmd = agent_command("http://127.0.0.1:1", free_port(), &[&format!("ebpf.object={}", wrong.display())]);
    let (code, stderr) = agent_fails(cmd, dir.path());
    assert_clean_failure(
        code,
        &stderr,
        &format!(
            "eBPF object {} was built for record ABI version {found}, this agent reads version {}: install the object built with this agent",
            wrong.display(),
            peregrine_common::ABI_VERSION
        ),
    );
}

/// Exec enforcement needs the BPF LSM, which this machine's kernel refuses: the agent says so
/// and does not start (it must not seem to enforce what it cannot). The 6.1 VM enforces it.
#[test]
fn exec_enforcement_without_the_bpf_lsm_is_refused_with_the_reason() {
    let dir = TempDir::new("deny-exec");
    let cmd = agent_command("http://127.0.0.1:1", free_port(), &["process.deny_exec=[\"/bin/true\"]"]);
    let (code, stderr) = agent_fails(cmd, dir.path());
    assert_clean_failure(code, &stderr, "process.deny_exec needs the BPF LSM (unavailable: ");
    assert!(stderr.contains("lsm/bprm_check_security"), "{stderr}");
}

#[test]
fn unprivileged_agent_names_the_missing_capabilities() {
    let dir = TempDir::new("unpriv");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let inner = agent_command("http://127.0.0.1:1", free_port(), &[]);
    let mut cmd = Command::new(tool("setpriv"));
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(inner.get_program())
        .args(inner.get_args());
    let (code, stderr) = agent_fails(cmd, dir.path());
    assert_clean_failure(code, &stderr, "missing capabilities CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN: run the agent as root");
}

#[test]
fn missing_btf_is_reported_with_the_fix() {
    let dir = TempDir::new("btf");
    let cmd = agent_command("http://127.0.0.1:1", free_port(), &["ebpf.btf_path=/nonexistent/vmlinux"]);
    let (code, stderr) = agent_fails(cmd, dir.path());
    assert_clean_failure(code, &stderr, "kernel BTF not found at /nonexistent/vmlinux: the kernel needs CONFIG_DEBUG_INFO_BTF=y");
}

#[test]
fn a_cgroup2_path_that_is_not_the_hierarchys_root_is_refused() {
    let dir = TempDir::new("cgroup2path");
    let cmd = agent_command("http://127.0.0.1:1", free_port(), &[&format!("ebpf.cgroup2_path={}", dir.path().display())]);
    let (code, stderr) = agent_fails(cmd, dir.path());
    assert_clean_failure(code, &stderr, &format!("ebpf.cgroup2_path = {}: not a cgroup2 file system", dir.path().display()));
    // A cgroup below the root would attach the socket hooks to part of the node only.
    let below = TestCgroup::new();
    let cmd = agent_command("http://127.0.0.1:1", free_port(), &[&format!("ebpf.cgroup2_path={}", below.0.display())]);
    let (code, stderr) = agent_fails(cmd, dir.path());
    assert_clean_failure(code, &stderr, "a cgroup below the hierarchy's root, not the root");
}

#[test]
fn missing_object_and_bad_config_are_reported() {
    let dir = TempDir::new("cfg");
    let cmd = agent_command("http://127.0.0.1:1", free_port(), &["ebpf.object=/nonexistent/obj.o"]);
    let (code, stderr) = agent_fails(cmd, dir.path());
    assert_clean_failure(code, &stderr, "cannot read eBPF object /nonexistent/obj.o");
    let cmd = agent_command("http://127.0.0.1:1", free_port(), &["ebpf.drain_interval_ms=soon"]);
    let (code, stderr) = agent_fails(cmd, dir.path());
    assert_clean_failure(code, &stderr, "config key `ebpf.drain_interval_ms` (set by --set ebpf.drain_interval_ms=soon)");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

/// With no collector the agent keeps running and spools; when a collector appears on that
/// address, what happened meanwhile is delivered, nothing dropped.
#[test]
fn collector_unreachable_is_spooled_and_delivered_later() {
    let dir = TempDir::new("unreach");
    let port = free_port();
    let mut agent = Agent::start(dir.path(), &format!("http://127.0.0.1:{port}"), &[]);
    let true_bin = tool("true");
    let during = unique("during-");
    assert!(Command::new(&true_bin).arg(&during).status().unwrap().success());
    wait_for(WAIT, "events waiting in the spool", || {
        metric(&agent.metrics(), "peregrine_agent_spool_records").filter(|v| *v >= 1.0)
    });
    assert!(agent.proc.alive());
    let collector = Collector::start_on(dir.path(), port);
    let e = collector.wait_event(WAIT, "the exec made while no collector was there", |e| {
        e["kind"]["exec"]["process"]["argv"][1] == during.as_str()
    });
    assert!(e["id"].is_string());
    let marker = unique("after-");
    assert!(Command::new(&true_bin).arg(&marker).status().unwrap().success());
    collector.wait_event(WAIT, "an exec after the collector came up", |e| e["kind"]["exec"]["process"]["argv"][1] == marker.as_str());
    let m = agent.metrics();
    assert!(metric(&m, "peregrine_agent_collector_reconnects_total").is_some());
    assert_eq!(metric(&m, "peregrine_agent_events_dropped_total{reason=\"spool_full\"}").unwrap_or(0.0), 0.0);
}

/// Garbage on the gRPC port is refused without disturbing the collector or its agents.
#[test]
fn garbage_on_the_ingest_port_is_rejected() {
    let dir = TempDir::new("garbage");
    let collector = Collector::start(dir.path());
    let agent = Agent::start(dir.path(), &collector.address(), &[]);
    for junk in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0xffu8; 4096][..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\xff\xff\xff\xff\xff"] {
        let mut s = TcpStream::connect(("127.0.0.1", collector.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(junk);
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    }
    let mut collector = collector;
    assert!(collector.proc.alive(), "collector died: {}", collector.proc.stderr_text());
    let marker = unique("still-");
    let true_bin = tool("true");
    wait_for(WAIT, "events still delivered after the garbage", || {
        let _ = Command::new(&true_bin).arg(&marker).status();
        collector.events().into_iter().find(|e| e["kind"]["exec"]["process"]["argv"][1] == marker.as_str())
    });
    drop(agent);
}

/// The agent pointed at something that is not a collector keeps running and spools.
#[test]
fn agent_pointed_at_a_non_grpc_server_keeps_running() {
    let dir = TempDir::new("nongrpc");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        // Answer every connection with garbage, a bounded number of times.
        for stream in listener.incoming().take(20) {
            let Ok(mut s) = stream else { continue };
            let _ = s.write_all(b"this is not http/2\r\n\r\n");
        }
    });
    let mut agent = Agent::start(dir.path(), &format!("http://127.0.0.1:{port}"), &[]);
    let true_bin = tool("true");
    wait_for(WAIT, "events spooled while the peer is not a collector", || {
        let _ = Command::new(&true_bin).status();
        metric(&agent.metrics(), "peregrine_agent_spool_records").filter(|v| *v >= 1.0)
    });
    assert!(agent.proc.alive(), "agent died: {}", agent.proc.stderr_text());
    drop(agent);
    drop(server);
}
