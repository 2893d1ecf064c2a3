//! The process record on the real kernel: lineage, pre-existing processes, pid reuse, exit
//! status, login uid, loss accounting, and hostile paths and arguments.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A copy of a system program under a unique name in `dir`.
fn copy_of(dir: &Path, program: &str, tag: &str) -> PathBuf {
    let path = dir.join(unique(tag));
    std::fs::copy(tool(program), &path).unwrap();
    path
}

fn exec_of<'a>(events: &'a [Value], filename: &Path) -> Vec<&'a Value> {
    of_kind(events, "exec", |e| e["process"]["filename"] == filename.to_str().unwrap())
}

/// Waits until every record made so far has reached the collector.
fn settle(collector: &Collector) -> Vec<Value> {
    collector.wait_drained_past(boot_now_ns(), WAIT);
    collector.events()
}

#[test]
fn forked_chain_has_exact_ancestry_back_to_a_process_older_than_the_agent() {
    let dir = TempDir::new("chain");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &["process.ancestry_depth=6"]);
    let leaf = copy_of(dir.path(), "true", "leaf");
    let leaf_arg = unique("leafarg-");
    // lvl1.sh -> lvl2.sh -> ... -> lvl5.sh -> leaf: each level records its pid, then runs the
    // next as a child (the trailing `exit 0` keeps the shell from exec'ing it in place).
    let levels: Vec<PathBuf> = (1..=5).map(|i| dir.path().join(format!("lvl{i}.sh"))).collect();
    for (i, script) in levels.iter().enumerate() {
        let next = match levels.get(i + 1) {
            Some(next) => format!("{} arg{}-{leaf_arg}", next.display(), i + 2),
            None => format!("{} {leaf_arg}", leaf.display()),
        };
        let pidfile = dir.path().join(format!("pid{}", i + 1));
        write_script(script, &format!("echo $$ > {}\n{next}\nexit 0", pidfile.display()));
    }
    let status = Command::new(&levels[0]).arg(format!("arg1-{leaf_arg}")).status().unwrap();
    assert!(status.success());
    let events = collector.wait_event(WAIT, "the leaf's exec", |e| {
        e["kind"]["exec"]["process"]["argv"] == json!([leaf.to_str().unwrap(), leaf_arg])
    });
    let leaf_exec = &events["kind"]["exec"];
    let pids: Vec<u64> = (1..=5)
        .map(|i| std::fs::read_to_string(dir.path().join(format!("pid{i}"))).unwrap().trim().parse().unwrap())
        .collect();
    let ancestors = leaf_exec["ancestors"].as_array().unwrap();
    assert_eq!(ancestors.len(), 6, "ancestry bounded by process.ancestry_depth: {ancestors:#?}");
    for (n, level) in (0..5).rev().enumerate() {
        let a = &ancestors[n];
        assert_eq!(a["pid"], pids[level], "ancestor {n}");
        assert_eq!(a["exe"], "/usr/bin/dash", "ancestor {n}");
        assert_eq!(
            a["argv"],
            json!(["/bin/sh", levels[level].to_str().unwrap(), format!("arg{}-{leaf_arg}", level + 1)]),
            "ancestor {n}"
        );
    }
    // Above the chain: this test process, running since before the agent (seeded from /proc).
    assert_eq!(ancestors[5]["pid"], std::process::id());
    assert_eq!(ancestors[5]["exe"], std::env::current_exe().unwrap().to_str().unwrap());
    assert_eq!(leaf_exec["process"]["ppid"], pids[4]);
    assert_eq!(leaf_exec["process"]["parent_exec_id"], ancestors[0]["exec_id"]);
    // Each exec id names its process and exec time.
    let exec_id = leaf_exec["process"]["exec_id"].as_str().unwrap();
    let pid = leaf_exec["process"]["pid"].as_u64().unwrap();
    assert!(exec_id.starts_with(&format!("test-node:{pid}:")), "{exec_id}");
    assert!(exec_id.ends_with(&format!(":{}", leaf_exec["process"]["exec_boot_ns"])), "{exec_id}");
}

#[test]
fn exit_codes_signals_and_threads() {
    let dir = TempDir::new("exit");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &["process.fork_events=true"]);
    let sh = copy_of(dir.path(), "sh", "exits");
    let status = Command::new(&sh).args(["-c", "exit 7"]).status().unwrap();
    assert_eq!(status.code(), Some(7));
    let exiting_pid = {
        let sleeper = copy_of(dir.path(), "sleep", "killed");
        let mut child = Command::new(&sleeper).arg("60").spawn().unwrap();
        let pid = child.id();
        child.kill().unwrap();
        child.wait().unwrap();
        (pid, sleeper)
    };
    // A thread is not a process: no fork or exit event may name it.
    let tid = std::thread::spawn(|| {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    })
    .join()
    .unwrap() as u64;
    let events = settle(&collector);

    let exec = exec_of(&events, &sh);
    assert_eq!(exec.len(), 1);
    let pid = &exec[0]["process"]["pid"];
    let exits = of_kind(&events, "exit", |x| &x["process"]["pid"] == pid);
    assert_eq!(exits.len(), 1, "one exit per process");
    let x = exits[0];
    assert_eq!((x["exit_code"].clone(), x["signal"].clone(), x["core_dumped"].clone()), (json!(7), json!(0), json!(false)));
    assert_eq!(x["process"]["exec_id"], exec[0]["process"]["exec_id"]);
    assert!(x["duration_ns"].as_u64().unwrap() > 0);

    let (kpid, sleeper) = exiting_pid;
    let exits = of_kind(&events, "exit", |x| x["process"]["pid"] == kpid);
    assert_eq!(exits.len(), 1);
    assert_eq!(exits[0]["signal"], 9);
    assert_eq!(exits[0]["process"]["filename"], sleeper.to_str().unwrap());

    assert!(of_kind(&events, "fork", |f| f["process"]["pid"] == tid).is_empty(), "thread {tid} reported as a process");
    assert!(of_kind(&events, "exit", |f| f["process"]["pid"] == tid).is_empty());
}

/// Fork and exit of a short-lived child arrive and describe the same process as its exec.
#[test]
fn fork_exec_exit_share_one_process() {
    let dir = TempDir::new("life");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &["process.fork_events=true"]);
    let leaf = copy_of(dir.path(), "true", "life");
    let mut child = Command::new(&leaf).spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let events = settle(&collector);
    let forks = of_kind(&events, "fork", |f| f["process"]["pid"] == pid);
    assert_eq!(forks.len(), 1);
    let f = &forks[0]["process"];
    assert_eq!(f["ppid"], std::process::id());
    assert_eq!(f["exe"], std::env::current_exe().unwrap().to_str().unwrap(), "the fork inherits the parent's image");
    let exec = exec_of(&events, &leaf);
    assert_eq!(exec.len(), 1);
    assert_eq!(exec[0]["process"]["start_boot_ns"], f["start_boot_ns"]);
    let exit = of_kind(&events, "exit", |x| x["process"]["pid"] == pid);
    assert_eq!(exit.len(), 1);
    assert_eq!(exit[0]["process"]["exec_id"], exec[0]["process"]["exec_id"]);
}

/// By default forks are not events, but they still make the child's record: a child that
/// never execs exits with its parent's image, its own pid and its parent's exec id.
#[test]
fn a_child_that_never_execs_is_known_without_fork_events() {
    let dir = TempDir::new("nofork");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &[]);
    let me = std::process::id();
    // SAFETY: the child only calls _exit (async-signal-safe) after fork; the parent reaps it.
    let pid = unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::_exit(3);
        }
        pid
    };
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waits for the child forked above, writing into a local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let pid = pid as u32;
    let events = settle(&collector);
    assert!(of_kind(&events, "fork", |_| true).is_empty(), "fork events are off by default");
    let exits = of_kind(&events, "exit", |x| x["process"]["pid"] == pid);
    assert_eq!(exits.len(), 1);
    let p = &exits[0]["process"];
    assert_eq!(exits[0]["exit_code"], 3);
    assert_eq!((p["ppid"].clone(), p["source"].clone()), (json!(me), json!("fork")));
    assert_eq!(p["exe"], std::env::current_exe().unwrap().to_str().unwrap(), "the child keeps its parent's image");
    assert!(p["partial"].as_array().is_none_or(|a| a.is_empty()), "a complete record: {p}");
}

/// A pid reused at once (clone3 with set_tid) is a different process: its exec id, its
/// children's ancestry and the first process's exit stay apart.
#[test]
fn reused_pid_is_not_confused() {
    let dir = TempDir::new("reuse");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &[]);
    let first = copy_of(dir.path(), "true", "first");
    let leaf = copy_of(dir.path(), "true", "leafr");
    let second = dir.path().join(unique("second"));
    write_script(&second, &format!("{} reuse-leaf\nexit 0", leaf.display()));

    let mut attempt = 0;
    let pid = loop {
        attempt += 1;
        assert!(attempt <= 20, "could not reuse a pid in 20 attempts");
        let mut child = Command::new(&first).spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        match clone3_exec(pid, &second) {
            Ok(()) => break pid,
            Err(libc::EEXIST) => continue,
            Err(e) => panic!("clone3(set_tid={pid}) failed: errno {e}"),
        }
    };
    let events = settle(&collector);
    let first_exec = exec_of(&events, &first).into_iter().find(|e| e["process"]["pid"] == pid).unwrap().clone();
    let second_exec = of_kind(&events, "exec", |e| {
        e["process"]["pid"] == pid && e["process"]["argv"][1] == second.to_str().unwrap()
    });
    assert_eq!(second_exec.len(), 1);
    let second_exec = second_exec[0];
    assert_ne!(first_exec["process"]["exec_id"], second_exec["process"]["exec_id"]);
    assert_ne!(first_exec["process"]["start_boot_ns"], second_exec["process"]["start_boot_ns"]);
    let leaf_exec = exec_of(&events, &leaf);
    assert_eq!(leaf_exec.len(), 1);
    assert_eq!(leaf_exec[0]["ancestors"][0]["pid"], pid);
    assert_eq!(leaf_exec[0]["ancestors"][0]["exec_id"], second_exec["process"]["exec_id"]);
    let exits: Vec<&Value> = of_kind(&events, "exit", |x| x["process"]["pid"] == pid);
    assert_eq!(exits.len(), 2, "both processes with pid {pid} exited");
    assert_eq!(exits[0]["process"]["exec_id"], first_exec["process"]["exec_id"]);
    assert_eq!(exits[1]["process"]["exec_id"], second_exec["process"]["exec_id"]);
}

/// clone3 with `set_tid = [pid]`, the child exec'ing `script`; waits for it. Returns the errno.
fn clone3_exec(pid: u32, script: &Path) -> Result<(), i32> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let path = CString::new(script.as_os_str().as_bytes()).unwrap();
    let argv = [path.as_ptr(), std::ptr::null()];
    let tids = [pid as libc::pid_t];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM gives the child a copy of our memory; it only calls
    // execv with pointers prepared above, then _exit.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, size_of::<CloneArgs>()) };
    if ret == 0 {
        // SAFETY: in the child; execv replaces the image or we exit at once.
        unsafe {
            libc::execv(path.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
    }
    if ret < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    let mut status = 0;
    // SAFETY: waiting for the child we just created.
    let waited = unsafe { libc::waitpid(ret as libc::pid_t, &mut status, 0) };
    assert_eq!(waited as i64, ret);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    Ok(())
}

#[test]
fn login_uid_set_by_a_helper_is_seen() {
    let dir = TempDir::new("login");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &[]);
    let leaf = copy_of(dir.path(), "true", "login");
    let helper = dir.path().join("login.sh");
    // What pam_loginuid does at login: write the user's uid to /proc/self/loginuid.
    write_script(&helper, &format!("echo 4242 > /proc/self/loginuid || exit 3\nexec {} logged-in", leaf.display()));
    assert!(Command::new(&helper).status().unwrap().success());
    let e = collector.wait_event(WAIT, "the logged-in exec", |e| e["kind"]["exec"]["process"]["argv"][1] == "logged-in");
    let creds = &e["kind"]["exec"]["process"]["creds"];
    assert_eq!(creds["loginuid"], 4242);
    let session = creds["sessionid"].as_u64().expect("a session id once loginuid is set");
    assert!(session > 0 && session < u64::from(u32::MAX));
    // The agent's own exec (no login) has neither.
    let probe = copy_of(dir.path(), "true", "nologin");
    Command::new(&probe).status().unwrap();
    let e = collector.wait_event(WAIT, "an exec without login", |e| e["kind"]["exec"]["process"]["filename"] == probe.to_str().unwrap());
    assert_eq!(e["kind"]["exec"]["process"]["creds"]["loginuid"], Value::Null);
}

/// A real overflow: the drain paused, a tiny ring, an exec flood in a cgroup of the test's
/// own. Every exec is delivered or counted, and the loss events add up to the metric.
#[test]
fn ring_overflow_is_counted_and_reported() {
    let dir = TempDir::new("loss");
    let collector = Collector::start(dir.path());
    let pause = dir.path().join("pause");
    std::fs::write(&pause, b"").unwrap();
    let agent = Agent::start(
        dir.path(),
        &collector.address(),
        &[
            "ebpf.ring_buffer_bytes=65536",
            "ebpf.wakeup_watermark_bytes=16384",
            &format!("ebpf.drain_pause_file={}", pause.display()),
        ],
    );
    let cgroup = TestCgroup::new();
    let leaf = copy_of(dir.path(), "true", "flood");
    const PRODUCED: u64 = 1500;
    cgroup.flood(&leaf, PRODUCED);
    std::fs::remove_file(&pause).unwrap();
    let events = settle(&collector);

    let delivered = exec_of(&events, &leaf).len() as u64;
    assert!(exec_of(&events, &leaf).iter().all(|e| e["process"]["cgroup_id"] == cgroup.id()));
    // The Loss events in the stream add up to the metric (read together until they agree).
    let lost = wait_for(WAIT, "loss events to account for every lost record", || {
        let metric_lost = metric(&agent.metrics(), "peregrine_agent_kernel_records_lost_total")? as u64;
        let reported: u64 = collector
            .events()
            .iter()
            .filter(|e| e["kind"]["loss"]["reason"] == "kernel_ring_full")
            .map(|e| e["kind"]["loss"]["count"].as_u64().unwrap())
            .sum();
        (reported == metric_lost).then_some(metric_lost)
    });
    assert!(lost > 0, "the ring never overflowed (delivered {delivered})");
    assert!(delivered + lost >= PRODUCED, "delivered {delivered} + lost {lost} < produced {PRODUCED}");
}

/// Newlines and invalid UTF-8 in paths and arguments, and a 100 kB argument: exact where
/// possible, clearly marked where not, never a stalled pipeline.
#[test]
fn hostile_paths_and_arguments() {
    let dir = TempDir::new("hostile");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &[]);
    let odd_dir = dir.path().join(std::ffi::OsStr::from_bytes(b"new\nline \xff dir"));
    std::fs::create_dir(&odd_dir).unwrap();
    let leaf = odd_dir.join("leaf");
    std::fs::copy(tool("true"), &leaf).unwrap();
    let big = "x".repeat(100 * 1024);
    let status = Command::new(&leaf)
        .arg("line1\nline2")
        .arg(std::ffi::OsStr::from_bytes(b"bad\xfeutf8"))
        .arg(&big)
        .current_dir(&odd_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let events = settle(&collector);
    let leaf_lossy = leaf.to_string_lossy().into_owned();
    let exec = of_kind(&events, "exec", |e| e["process"]["filename"] == leaf_lossy.as_str());
    assert_eq!(exec.len(), 1);
    let p = &exec[0]["process"];
    assert_eq!(p["exe"], leaf_lossy.as_str());
    assert_eq!(p["cwd"], odd_dir.to_string_lossy().as_ref());
    assert_eq!(p["argv"][1], "line1\nline2");
    assert_eq!(p["argv"][2], "bad\u{fffd}utf8");
    let third = p["argv"][3].as_str().unwrap();
    assert!(third.len() < big.len() && big.starts_with(third), "truncated prefix of the big argument");
    assert_eq!(p["partial"], json!(["argv_truncated", "lossy_utf8"]));
    // The pipeline is not stalled: a later exec arrives.
    let after = copy_of(dir.path(), "true", "after");
    Command::new(&after).status().unwrap();
    collector.wait_event(WAIT, "an exec after the hostile one", |e| e["kind"]["exec"]["process"]["filename"] == after.to_str().unwrap());
}

/// The agent and the collector keep their memory in small pages
/// (`peregrine_service::disable_huge_pages`): the kernel shows the flag per process.
#[test]
fn the_agent_and_the_collector_run_without_huge_pages() {
    let dir = TempDir::new("thp");
    let collector = Collector::start(dir.path());
    let agent = Agent::start(dir.path(), &collector.address(), &[]);
    for (name, pid) in [("agent", agent.proc.pid()), ("collector", collector.proc.pid())] {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("THP_enabled:"))
            .unwrap_or_else(|| panic!("no THP_enabled line in /proc/{pid}/status (kernel older than 5.0?)"));
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{name} (pid {pid}) may use transparent huge pages: {line}");
    }
}
