//! Shared pieces of the agent's integration tests: real processes (collector, agent) started
//! and stopped by PID, bounded waits, and tool lookup through xtask/tools.toml.
// Test scaffolding: a failed set-up step should stop the test with its reason.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub mod containerd;
use serde_json::Value;

/// An external program the tests run, resolved only if xtask's setup installs it.
pub fn tool(name: &str) -> PathBuf {
    #[derive(serde::Deserialize)]
    struct Manifest {
        tool: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        bin: String,
    }
    let manifest: Manifest = toml::from_str(include_str!("../../../xtask/tools.toml")).expect("xtask/tools.toml parses");
    assert!(
        manifest.tool.iter().any(|t| t.bin == name),
        "tests use `{name}`, but xtask/tools.toml does not list it: add it so `cargo xtask setup` installs it"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: run `cargo xtask setup` (or `cargo xtask test`)"))
}

/// Runs `ip` with these arguments; fails the test with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new(tool("ip")).args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `f` on a new thread that has joined the network stack of the namespace `name`
/// (`/run/netns/<name>`, as `ip netns add` makes it).
pub fn netns_thread<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we hold open.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// The kernel object `cargo xtask test` built.
pub fn ebpf_object() -> PathBuf {
    env_path("PEREGRINE_EBPF_OBJECT")
}

pub fn env_path(var: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run the tests with `cargo xtask test`, which builds the kernel objects"));
    assert!(p.is_file(), "{var}={} does not exist: run `cargo xtask test`", p.display());
    p
}

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_peregrine-agent"))
}

pub fn collector_bin() -> PathBuf {
    let p = agent_bin().with_file_name("peregrine-collector");
    assert!(p.is_file(), "{} is missing: build the workspace first (`cargo xtask test` does)", p.display());
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("an ephemeral port")
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this test run: `<prefix><pid><counter><time>` in base 36.
pub fn unique(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}{}", radix36(u64::from(std::process::id()) * 1_000_003 + u64::from(n) * 7919 + u64::from(t % 1_000_000)))
}

fn radix36(mut v: u64) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(unique(&format!("peregrine-{tag}-")));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process we started; killed by PID and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, mut cmd: Command, dir: &Path) -> Self {
        let stderr = dir.join(format!("{name}.stderr"));
        let file = std::fs::File::create(&stderr).unwrap();
        cmd.stdout(Stdio::null()).stderr(file).env("RUST_LOG", "info").env("NO_COLOR", "1");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { child, name, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not stop within 15 s of SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 20 ms until it returns Some, failing after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// The value of one Prometheus sample line, e.g. `peregrine_agent_events_sent_total`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn boot_now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

pub struct Collector {
    pub proc: Proc,
    pub port: u16,
    pub http_port: u16,
    pub out: PathBuf,
}

impl Collector {
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, free_port())
    }

    pub fn start_on(dir: &Path, port: u16) -> Self {
        Self::start_with(dir, port, &[])
    }

    /// A collector with extra `--set` settings (TLS, queues).
    pub fn start_with(dir: &Path, port: u16, sets: &[&str]) -> Self {
        Self::start_writing(dir, port, dir.join(format!("events-{port}.jsonl")), sets)
    }

    /// A collector whose file output is `out`.
    pub fn start_writing(dir: &Path, port: u16, out: PathBuf, sets: &[&str]) -> Self {
        let http_port = free_port();
        let mut cmd = Command::new(collector_bin());
        cmd.args(["--set", &format!("listen=127.0.0.1:{port}")])
            .args(["--set", &format!("http.listen=127.0.0.1:{http_port}")])
            .args(["--set", &format!("queue.dir={}", dir.join(format!("queue-{port}")).display())])
            .args(["--set", "output.kind=file"])
            .args(["--set", &format!("output.path={}", out.display())]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let mut proc = Proc::spawn("collector", cmd, dir);
        wait_for(Duration::from_secs(10), "the collector to listen", || {
            assert!(proc.alive(), "collector exited: {}", proc.stderr_text());
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Self { proc, port, http_port, out }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every complete JSON line written so far.
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    pub fn wait_event(&self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(timeout, what, || self.events().into_iter().find(|e| pred(e)))
    }

    /// Waits for an agent status event proving every kernel record made before `boot_ns`
    /// has been drained and delivered ahead of it: the barrier for "nothing arrived".
    pub fn wait_drained_past(&self, boot_ns: u64, timeout: Duration) -> Value {
        self.wait_event(timeout, "an agent status drained past the probe", |e| {
            e["kind"]["status"]["drained_until_boot_ns"].as_u64().is_some_and(|d| d >= boot_ns)
        })
    }
}

pub struct Agent {
    pub proc: Proc,
    pub http_port: u16,
}

/// The agent's command line for a test, pointed at `collector`.
pub fn agent_command(collector: &str, http_port: u16, sets: &[&str]) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--set", "cluster_name=test-cluster", "--set", "node_name=test-node"])
        .args(["--set", &format!("collector.address={collector}")])
        .args(["--set", &format!("ebpf.object={}", ebpf_object().display())])
        .args(["--set", &format!("http.listen=127.0.0.1:{http_port}")])
        .args(["--set", "pipeline.heartbeat_interval_ms=100"])
        .args(["--set", "collector.max_backoff_ms=300"])
        // Each agent its own spool: a shared one would replay another test's events.
        .args(["--set", &format!("spool.dir={}", std::env::temp_dir().join(unique("peregrine-spool-")).display())]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd
}

impl Agent {
    pub fn start(dir: &Path, collector: &str, sets: &[&str]) -> Self {
        let http_port = free_port();
        let mut cmd = agent_command(collector, http_port, &[]);
        // The spool inside the test's directory (removed with it), unless the test names one.
        cmd.args(["--set", &format!("spool.dir={}", dir.join(unique("spool-")).display())]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let mut proc = Proc::spawn("agent", cmd, dir);
        wait_for(Duration::from_secs(30), "the agent to be ready", || {
            assert!(proc.alive(), "agent exited: {}", proc.stderr_text());
            http_get(http_port, "/readyz").filter(|(s, _)| *s == 200)
        });
        Self { proc, http_port }
    }

    pub fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics").map(|(_, b)| b).unwrap_or_default()
    }
}

/// Runs the agent to completion (bounded) and returns its exit code and stderr.
pub fn agent_fails(cmd: Command, dir: &Path) -> (i32, String) {
    let mut proc = Proc::spawn("agent", cmd, dir);
    let status = wait_for(Duration::from_secs(30), "the agent to exit", || proc.child.try_wait().ok().flatten());
    (status.code().unwrap_or(-1), proc.stderr_text())
}

/// Where cgroup2 is mounted (`/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on v2-only).
pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2").then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .expect("a cgroup2 mount in /proc/self/mountinfo")
}

/// Inode of this process's cgroup2 directory: what `bpf_get_current_cgroup_id()` returns.
pub fn own_cgroup_id() -> u64 {
    use std::os::unix::fs::MetadataExt;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup2 line in /proc/self/cgroup");
    std::fs::metadata(format!("{}{rel}", cgroup2_mount().display())).unwrap().ino()
}

/// A cgroup2 directory made for one test, removed (after its processes are gone) on drop,
/// with any parents it had to create.
pub struct TestCgroup(pub PathBuf, Vec<PathBuf>);

impl TestCgroup {
    pub fn new() -> Self {
        let p = cgroup2_mount().join(unique("peregrine-test-"));
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", p.display()));
        Self(p, Vec::new())
    }

    /// A cgroup at `rel` below the cgroup2 root (e.g. a kubelet-style pod/container path).
    pub fn at(rel: &str) -> Self {
        let mut dir = cgroup2_mount();
        let mut created = Vec::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            dir = dir.join(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
                created.push(dir.clone());
            }
        }
        let leaf = created.pop().unwrap_or_else(|| panic!("cgroup {rel} already exists"));
        Self(leaf, created)
    }

    /// Runs `argv` inside this cgroup (moved there before it execs) and waits for it.
    pub fn run(&self, argv: &[&str]) -> std::process::ExitStatus {
        let script = format!("echo $$ > '{}/cgroup.procs' && exec \"$@\"", self.0.display());
        Command::new(tool("sh")).args(["-c", &script, "sh"]).args(argv).status().unwrap()
    }

    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.0).unwrap().ino()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Bounded: the test waited for its processes; give stragglers a moment to be reaped.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for parent in self.1.iter().rev() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The `kind` objects (e.g. the `exec` of `{"kind":{"exec":{...}}}`) matching `pred`, in order.
impl TestCgroup {
    /// Runs `leaf` `n` times from a shell that moved itself into this cgroup.
    pub fn flood(&self, leaf: &Path, n: u64) {
        let script = format!(
            "echo $$ > {}/cgroup.procs || exit 9\ni=0\nwhile [ $i -lt {n} ]; do {} flood; i=$((i+1)); done",
            self.0.display(),
            leaf.display()
        );
        let status = Command::new(tool("sh")).args(["-c", &script]).status().unwrap();
        assert!(status.success(), "flood failed: {status}");
    }
}

pub fn of_kind<'a>(events: &'a [Value], kind: &str, pred: impl Fn(&Value) -> bool) -> Vec<&'a Value> {
    events.iter().map(|e| &e["kind"][kind]).filter(|k| k.is_object() && pred(k)).collect()
}
