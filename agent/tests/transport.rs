//! The perf event array transport, forced with `ebpf.transport=perf_array` on this kernel
//! (which has a ring buffer): exec, exit and connection records arrive exactly as over the ring
//! buffer, the started status and a metric say which transport is in force and why, and a
//! perf buffer overflow is counted and reported as kernel losses that agree with the metric.
//! The 6.1 kernel's run is in `kernel_vm.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// The overflow test floods execs on purpose, and every agent on the node sees them: another
/// test's agent, counting on nothing lost, could have its perf buffers overflow too (seen in
/// CI: two records lost). The two take turns.
static FLOOD: Mutex<()> = Mutex::new(());

fn flood_turn() -> MutexGuard<'static, ()> {
    FLOOD.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn copy_of(dir: &Path, program: &str, tag: &str) -> PathBuf {
    let path = dir.join(unique(tag));
    std::fs::copy(tool(program), &path).unwrap();
    path
}

/// Runs `program` once pinned to each online CPU.
fn on_every_cpu(program: &Path) {
    let cpus = std::thread::available_parallelism().unwrap().get();
    for cpu in 0..cpus {
        let mut cmd = Command::new(program);
        // SAFETY: pre_exec runs in the forked child before exec; sched_setaffinity is
        // async-signal-safe and touches only the child.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        assert!(cmd.status().unwrap().success());
    }
}

#[test]
fn perf_array_carries_exec_exit_and_connections_exactly() {
    let _turn = flood_turn();
    let dir = TempDir::new("perf");
    let collector = Collector::start(dir.path());
    let agent = Agent::start(dir.path(), &collector.address(), &["ebpf.transport=perf_array", "network.exclude_loopback=false"]);
    let leaf = copy_of(dir.path(), "true", "perf");
    let mut child = Command::new(&leaf).args(["perf-arg", "two words"]).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let exec = collector.wait_event(WAIT, "the exec over the perf array", |e| e["kind"]["exec"]["process"]["pid"] == pid);
    let p = &exec["kind"]["exec"]["process"];
    assert_eq!(p["argv"], serde_json::json!([leaf.to_str().unwrap(), "perf-arg", "two words"]));
    assert_eq!(p["exe"], leaf.to_str().unwrap());
    assert_eq!(p["ppid"], std::process::id());
    let exit = collector.wait_event(WAIT, "its exit", |e| e["kind"]["exit"]["process"]["pid"] == pid);
    assert_eq!(exit["kind"]["exit"]["exit_code"], 0);

    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local = stream.local_addr().unwrap().port();
    let conn = collector.wait_event(WAIT, "the connect's outcome", |e| {
        let c = &e["kind"]["connection"];
        c["evt_type"] == "connect" && c["local_port"] == local && c["outcome"] == "established"
    });
    assert_eq!(conn["kind"]["connection"]["remote_port"], port);
    assert_eq!(conn["kind"]["connection"]["process"]["pid"], std::process::id());

    let events = collector.events();
    let started = events.iter().find(|e| e["kind"]["status"]["phase"] == 1).expect("a started status");
    assert_eq!(started["kind"]["status"]["transport"], "perf_event_array (configured)");
    assert_eq!(started["kind"]["status"]["kernel_features"]["ring_buffer"], "available", "forced, not missing");
    let m = agent.metrics();
    assert_eq!(metric(&m, "peregrine_agent_kernel_transport{transport=\"perf_event_array\"}"), Some(1.0));
    assert_eq!(metric(&m, "peregrine_agent_kernel_transport{transport=\"ring_buffer\"}"), None);
    assert_eq!(metric(&m, "peregrine_agent_kernel_records_lost_total"), Some(0.0));
}

#[test]
fn the_default_on_this_kernel_is_the_ring_buffer() {
    let dir = TempDir::new("ring");
    let collector = Collector::start(dir.path());
    let agent = Agent::start(dir.path(), &collector.address(), &[]);
    let started = collector.wait_event(WAIT, "the started status", |e| e["kind"]["status"]["phase"] == 1);
    assert_eq!(started["kind"]["status"]["transport"], "ring_buffer (the kernel has a BPF ring buffer)");
    assert_eq!(metric(&agent.metrics(), "peregrine_agent_kernel_transport{transport=\"ring_buffer\"}"), Some(1.0));
}

/// A real overflow of the perf buffers: the smallest buffers (8 pages per CPU), the drain
/// paused, an exec flood. Every exec is delivered or counted; the Loss events add up to the
/// metric. A CPU's losses reach the agent with that CPU's next record (perf's own accounting),
/// so after the flood one short process runs on each CPU.
#[test]
fn perf_buffer_overflow_is_counted_and_reported() {
    let _turn = flood_turn();
    let dir = TempDir::new("perf-loss");
    let collector = Collector::start(dir.path());
    let pause = dir.path().join("pause");
    std::fs::write(&pause, b"").unwrap();
    let agent = Agent::start(
        dir.path(),
        &collector.address(),
        &["ebpf.transport=perf_array", "ebpf.perf_buffer_pages=8", &format!("ebpf.drain_pause_file={}", pause.display())],
    );
    let cgroup = TestCgroup::new();
    let leaf = copy_of(dir.path(), "true", "pflood");
    const PRODUCED: u64 = 1000;
    cgroup.flood(&leaf, PRODUCED);
    std::fs::remove_file(&pause).unwrap();
    // Let the drain read the buffers empty, then give every CPU records to carry its losses,
    // until the accounting is complete: the Loss events equal the metric and cover the flood.
    let (delivered, lost) = wait_for(WAIT, "every exec delivered or counted, the Loss events equal to the metric", || {
        std::thread::sleep(Duration::from_millis(200));
        on_every_cpu(&tool("true"));
        collector.wait_drained_past(boot_now_ns(), WAIT);
        let events = collector.events();
        let delivered = of_kind(&events, "exec", |e| e["process"]["filename"] == leaf.to_str().unwrap() && e["process"]["cgroup_id"] == cgroup.id())
            .len() as u64;
        let metric_lost = metric(&agent.metrics(), "peregrine_agent_kernel_records_lost_total")? as u64;
        let reported: u64 = events
            .iter()
            .filter(|e| e["kind"]["loss"]["reason"] == "kernel_ring_full")
            .map(|e| e["kind"]["loss"]["count"].as_u64().unwrap())
            .sum::<u64>();
        (reported == metric_lost && delivered + metric_lost >= PRODUCED).then_some((delivered, metric_lost))
    });
    assert!(lost > 0, "the perf buffers never overflowed (delivered {delivered})");
    assert!(delivered < PRODUCED, "everything was delivered: no overflow to account for");
}
