//! Exec events from the real kernel to the collector's output, as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{process::Command, time::Duration};

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// Every hook the agent attaches by default on a kernel without BPF trampolines (this host),
/// in the order it reports them; `default_hooks` has the other case.
const ALL_HOOKS: [&str; 15] = [
    "tracepoint/sched/sched_process_exec",
    "raw_tracepoint/sched_process_fork",
    "tracepoint/sched/sched_process_exit",
    "raw_tracepoint/inet_sock_set_state",
    "tracepoint/syscalls/sys_exit_accept4",
    "tracepoint/syscalls/sys_exit_accept",
    "cgroup/connect4",
    "cgroup/connect6",
    "cgroup/sendmsg4",
    "cgroup/sendmsg6",
    "cgroup/recvmsg4",
    "cgroup/recvmsg6",
    "tracepoint/cgroup/cgroup_mkdir",
    "tracepoint/cgroup/cgroup_rmdir",
    "raw_tracepoint/inet_sk_error_report",
];

/// The hooks a default agent reports, from its started status: with trampolines (the
/// `fentry` feature) accepts come from `fexit/inet_csk_accept` in place of the syscall
/// tracepoints (docs/KERNELS.md).
fn default_hooks(started: &Value) -> Vec<&'static str> {
    if started["kind"]["status"]["kernel_features"]["fentry"] != "available" {
        return ALL_HOOKS.to_vec();
    }
    let mut hooks: Vec<&str> = ALL_HOOKS.iter().copied().filter(|h| !h.starts_with("tracepoint/syscalls/")).collect();
    let at = hooks.iter().position(|h| *h == "raw_tracepoint/inet_sock_set_state").map_or(hooks.len(), |i| i + 1);
    hooks.insert(at, "fexit/inet_csk_accept");
    hooks
}

/// A copy of /bin/true under a unique name: it exits within a millisecond, so nothing could
/// have learned its details from /proc after the fact.
struct Probe {
    path: std::path::PathBuf,
    args: Vec<String>,
}

impl Probe {
    fn new(dir: &TempDir) -> Self {
        let name = unique("pgp");
        let path = dir.path().join(&name);
        std::fs::copy(tool("true"), &path).unwrap();
        let args = vec![format!("arg-{}", unique("")), "two words".to_owned(), String::new(), "--flag=é".to_owned()];
        Self { path, args }
    }

    fn name(&self) -> String {
        self.path.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// Runs it; returns its pid and the wall-clock window around the run.
    fn run(&self) -> (u32, i64, i64) {
        let before = wall_ns();
        let mut child = Command::new(&self.path).args(&self.args).spawn().unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success());
        (pid, before, wall_ns())
    }

    fn matches(&self, e: &Value) -> bool {
        e["kind"]["exec"]["process"]["filename"].as_str() == Some(self.path.to_str().unwrap())
    }
}

fn wall_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

#[test]
fn exec_reaches_the_collector_with_exact_fields() {
    let dir = TempDir::new("exec");
    let collector = Collector::start(dir.path());
    let agent = Agent::start(dir.path(), &collector.address(), &[]);
    let probe = Probe::new(&dir);
    let (pid, before, after) = probe.run();

    let event = collector.wait_event(WAIT, "the probe's exec event", |e| probe.matches(e));
    let exec = &event["kind"]["exec"]["process"];
    // A host process: its cgroup is known and is no container.
    assert_eq!(event["enrichment"], "complete");
    assert!(event["container"].is_null() && event["privilege"] == serde_json::json!([]), "{event}");
    assert_eq!(exec["pid"], pid);
    assert_eq!(exec["tid"], pid);
    assert_eq!(exec["ppid"], std::process::id());
    assert_eq!(exec["creds"]["uid"], 0);
    assert_eq!(exec["creds"]["gid"], 0);
    // The executable as the kernel resolved it (mm->exe_file), here the same file.
    assert_eq!(exec["exe"], probe.path.to_str().unwrap());
    let mut argv = vec![probe.path.to_str().unwrap().to_owned()];
    argv.extend(probe.args.iter().cloned());
    assert_eq!(exec["argv"], serde_json::json!(argv));
    assert_eq!(exec["partial"], serde_json::json!([]));
    // The kernel's comm: the file name cut to 15 bytes.
    assert_eq!(exec["comm"].as_str().unwrap(), &probe.name()[..probe.name().len().min(15)]);
    assert_eq!(exec["cgroup_id"], own_cgroup_id());
    assert_eq!(event["node"], "test-node");
    assert_eq!(event["cluster"], "test-cluster");
    let t = event["time_unix_nano"].as_i64().unwrap();
    assert!(before - 5_000_000 <= t && t <= after + 5_000_000, "event time {t} outside [{before}, {after}]");
    assert_eq!(event["id"].as_str().unwrap().len(), 36, "a UUID");

    // Exactly one event for that exec, and ids and sequence numbers are unique and ordered.
    let events = collector.events();
    assert_eq!(events.iter().filter(|e| probe.matches(e)).count(), 1);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq not increasing: {seqs:?}");
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "duplicate event ids");

    // The started status lists the hook; the metrics count what was sent.
    let started = events.iter().find(|e| e["kind"]["status"]["phase"] == 1).expect("a started status");
    let all_hooks = default_hooks(started);
    assert_eq!(started["kind"]["status"]["hooks"], serde_json::json!(all_hooks));
    let metrics = wait_for(WAIT, "metrics to count sent events", || {
        let m = agent.metrics();
        (metric(&m, "peregrine_agent_events_sent_total").unwrap_or(0.0) >= 1.0).then_some(m)
    });
    assert_eq!(metric(&metrics, "peregrine_agent_kernel_records_lost_total"), Some(0.0));
    for hook in &all_hooks {
        assert_eq!(metric(&metrics, &format!("peregrine_agent_kernel_hook{{hook=\"{hook}\"}}")), Some(1.0), "{hook}");
    }
    assert_eq!(metric(&metrics, "peregrine_agent_kernel_hook{hook=\"lsm/bprm_check_security\"}"), None, "not asked for, not attached");
    assert!(metric(&metrics, "peregrine_agent_events_total{kind=\"exec\"}").unwrap() >= 1.0);
    // Read for the scrape (not on a timer): every attached program has its statistics, zero
    // unless kernel.bpf_stats_enabled is on.
    for program in ["sched_process_exec", "sched_process_fork", "sched_process_exit"] {
        assert!(metric(&metrics, &format!("peregrine_agent_kernel_program_runs_total{{program=\"{program}\"}}")).is_some(), "{program}");
        assert!(metric(&metrics, &format!("peregrine_agent_kernel_program_run_ns_total{{program=\"{program}\"}}")).is_some(), "{program}");
    }

    // The started status says what the kernel offers; the metric agrees, feature by feature.
    let features = started["kind"]["status"]["kernel_features"].as_object().expect("kernel_features in the started status");
    let names: Vec<&str> = features.keys().map(String::as_str).collect();
    assert_eq!(names, ["btf", "cgroup_sock_addr", "fentry", "kprobe", "lsm", "raw_tracepoint", "ring_buffer", "tracepoint"]);
    for needed in ["btf", "cgroup_sock_addr", "raw_tracepoint", "ring_buffer", "tracepoint"] {
        assert_eq!(features[needed], "available", "{needed}");
    }
    // This machine's kernel has no kprobe PMU (docs/KERNELS.md): named, with the reason.
    let kprobe_pmu = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    if !kprobe_pmu {
        assert_eq!(features["kprobe"], "unavailable: no kprobe PMU (CONFIG_KPROBES off)");
    }
    for (name, verdict) in features {
        let up = metric(&metrics, &format!("peregrine_agent_kernel_feature{{feature=\"{name}\"}}"));
        assert_eq!(up, Some(if verdict == "available" { 1.0 } else { 0.0 }), "{name}: {verdict}");
    }
    let heartbeat = events.iter().find(|e| e["kind"]["status"]["phase"] == 2);
    if let Some(h) = heartbeat {
        assert!(h["kind"]["status"]["kernel_features"].as_object().is_none_or(|m| m.is_empty()), "only the started status carries them");
    }
}

/// Negative control: the same program loaded but not attached must produce nothing.
#[test]
fn exec_not_attached_sees_nothing() {
    let dir = TempDir::new("noexec");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &["ebpf.programs.exec=false", "process.fork_events=true"]);
    let probe = Probe::new(&dir);
    let (pid, _, _) = probe.run();
    let after = boot_now_ns();
    collector.wait_drained_past(after, WAIT);
    let events = collector.events();
    assert!(!events.iter().any(|e| probe.matches(e)), "exec seen without the program attached");
    assert!(!events.iter().any(|e| e["kind"]["exec"].is_object()), "no exec events at all");
    // The rest of the pipeline was live: the probe's fork and exit arrived.
    assert!(events.iter().any(|e| e["kind"]["fork"]["process"]["pid"] == pid), "the probe's fork");
    assert!(events.iter().any(|e| e["kind"]["exit"]["process"]["pid"] == pid), "the probe's exit");
    let started = events.iter().find(|e| e["kind"]["status"]["phase"] == 1).expect("a started status");
    let without_exec: Vec<&str> = default_hooks(started).into_iter().filter(|h| !h.ends_with("sched_process_exec")).collect();
    assert_eq!(started["kind"]["status"]["hooks"], serde_json::json!(without_exec));
}

#[test]
fn agent_stops_cleanly_and_reports_it() {
    let dir = TempDir::new("stop");
    let collector = Collector::start(dir.path());
    let mut agent = Agent::start(dir.path(), &collector.address(), &[]);
    let status = agent.proc.terminate();
    assert!(status.success(), "agent exit {status}: {}", agent.proc.stderr_text());
    collector.wait_event(WAIT, "the stopping status", |e| e["kind"]["status"]["phase"] == 3);
}
