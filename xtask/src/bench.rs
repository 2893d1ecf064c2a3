//! `cargo xtask bench exec|connect`: what the agent costs a node that execs (or connects) as
//! fast as it can.
//!
//! Method: a compiled fork+exec+wait loop of /bin/true (`execstorm`), or a connect+close loop
//! to a peer across a veth pair (`connstorm`), run with no agent and
//! with the full agent (capture + cache + streaming to a local collector) under a CPU limit,
//! conditions interleaved and rotated every round, with an A/A pair (no agent twice) in every
//! round to show the noise floor. Reported as paired ratios (agent / none of the same round)
//! with a bootstrap confidence interval; never as absolute times, which mean nothing on a
//! shared machine. Optional peers (auditd) run after the main rounds and are cleaned up.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{Binaries, root, sh};

#[derive(Debug, Clone)]
pub struct Bench {
    pub workload: Workload,
    pub rounds: usize,
    pub seconds: f64,
    pub workers: Vec<usize>,
    /// The agent's CPU limit in millicores (the DaemonSet's limit).
    pub cpu_millis: u32,
    pub peers: Vec<String>,
    /// Instead of rounds: run this many execs through one agent and report its memory.
    pub soak: Option<u64>,
    /// An earlier agent build measured in the same rounds as this one, so a change is judged
    /// by paired ratios rather than by runs on different days.
    pub baseline_agent: Option<PathBuf>,
    /// An earlier kernel object whose in-kernel cost is measured interleaved with this build's.
    pub baseline_ebpf: Option<PathBuf>,
    /// An earlier collector build, measured like `baseline_agent` (with it, when both are given).
    pub baseline_collector: Option<PathBuf>,
}

/// Kills and reaps a child when dropped (by PID, never by name).
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the storm does; the agent's cost is measured against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// fork + exec + wait of /bin/true.
    Exec,
    /// connect + close to a peer across a veth pair.
    Connect,
    /// getppid in a loop: what every syscall on the node pays for the sensor being there.
    Syscall,
}

/// The peer namespace of the connect storm (198.18.0.0/30; routes checked), its server, and
/// cleanup by PID and by the names this run created.
struct ConnectPeer {
    server: Option<Owned>,
}

const PEER_NS: &str = "pgb-peer";
const PEER_ADDR: &str = "198.18.0.2:9000";

impl ConnectPeer {
    fn new() -> Result<Self> {
        let ip = |args: &[&str]| sh(Command::new("ip").args(args));
        let _ = Command::new("ip").args(["netns", "del", PEER_NS]).status();
        let _ = Command::new("ip").args(["link", "del", "pgb-veth-h"]).status();
        ip(&["netns", "add", PEER_NS])?;
        let peer = Self { server: None };
        ip(&["link", "add", "pgb-veth-h", "type", "veth", "peer", "name", "pgb-veth-p"])?;
        ip(&["link", "set", "pgb-veth-p", "netns", PEER_NS])?;
        ip(&["addr", "add", "198.18.0.1/30", "dev", "pgb-veth-h"])?;
        ip(&["link", "set", "pgb-veth-h", "up"])?;
        ip(&["-n", PEER_NS, "addr", "add", "198.18.0.2/30", "dev", "pgb-veth-p"])?;
        ip(&["-n", PEER_NS, "link", "set", "pgb-veth-p", "up"])?;
        ip(&["-n", PEER_NS, "link", "set", "lo", "up"])?;
        let route = Command::new("ip").args(["route", "get", "198.18.0.2"]).output()?;
        if !String::from_utf8_lossy(&route.stdout).contains("dev pgb-veth-h") {
            bail!("the route to 198.18.0.2 does not use the bench veth; refusing to send traffic");
        }
        let server = Command::new("ip")
            .args(["netns", "exec", PEER_NS])
            .arg(root().join("target/release/connstorm"))
            .args(["server", PEER_ADDR])
            .spawn()?;
        let mut peer = peer;
        peer.server = Some(Owned(server));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&"198.18.0.2:9000".parse()?, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("the bench peer's server did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(peer)
    }
}

impl Drop for ConnectPeer {
    fn drop(&mut self) {
        self.server = None;
        let _ = Command::new("ip").args(["link", "del", "pgb-veth-h"]).status();
        let _ = Command::new("ip").args(["netns", "del", PEER_NS]).status();
    }
}

impl Workload {
    fn run(self, workers: usize, seconds: f64) -> Result<u64> {
        let (bin, args): (&str, Vec<String>) = match self {
            Self::Exec => ("execstorm", vec![workers.to_string(), seconds.to_string(), "/bin/true".to_owned()]),
            Self::Connect => ("connstorm", vec!["client".into(), workers.to_string(), seconds.to_string(), PEER_ADDR.into()]),
            Self::Syscall => ("sysstorm", vec![workers.to_string(), seconds.to_string()]),
        };
        let out = Command::new(root().join("target/release").join(bin)).args(&args).output().with_context(|| format!("running {bin}"))?;
        if !out.status.success() {
            bail!("{bin} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().with_context(|| format!("{bin} output"))
    }

    fn event_series(self) -> &'static str {
        match self {
            // No event per syscall: the exec series, which the loop does not drive.
            Self::Exec | Self::Syscall => "peregrine_agent_events_total{kind=\"exec\"}",
            Self::Connect => "peregrine_agent_events_total{kind=\"connection\"}",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Connect => "connect",
            Self::Syscall => "syscall",
        }
    }
}

/// A CPU-limited cgroup for the agent: cgroup v2 `cpu.max` where the cpu controller is on
/// v2, else the v1 cpu controller's CFS quota (this machine's hybrid layout).
struct CpuCgroup {
    dir: PathBuf,
    procs: PathBuf,
}

impl CpuCgroup {
    fn new(millis: u32) -> Result<Self> {
        let name = format!("peregrine-bench-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(&name);
            fs::create_dir_all(&dir)?;
            fs::write(dir.join("cpu.cfs_period_us"), "100000")?;
            fs::write(dir.join("cpu.cfs_quota_us"), (u64::from(millis) * 100).to_string())?;
            return Ok(Self { procs: dir.join("cgroup.procs"), dir });
        }
        let v2 = Path::new("/sys/fs/cgroup");
        if fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default().contains("cpu") {
            let _ = fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            let dir = v2.join(&name);
            fs::create_dir_all(&dir)?;
            fs::write(dir.join("cpu.max"), format!("{} 100000", u64::from(millis) * 100))?;
            return Ok(Self { procs: dir.join("cgroup.procs"), dir });
        }
        bail!("no cpu cgroup controller found to limit the agent's CPU")
    }

    fn add(&self, pid: u32) -> Result<()> {
        fs::write(&self.procs, pid.to_string()).with_context(|| format!("moving {pid} into {}", self.dir.display()))
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Events dropped in user space, all reasons.
fn dropped_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("peregrine_agent_events_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The process's CPU time once it has gone idle (under 1% of a CPU over 200 ms), or after 60 s.
fn settled_cpu_ns(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = cpu_ns(pid);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = cpu_ns(pid);
        if now.saturating_sub(last) < 2_000_000 || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// utime + stime of a process, in nanoseconds.
fn cpu_ns(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    ticks * 1_000_000_000 / hz
}

fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Each kernel program's (runs, ns) as the agent exports them (counted by the kernel while
/// kernel.bpf_stats_enabled = 1).
fn program_stats(metrics: &str) -> BTreeMap<String, (f64, f64)> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in metrics.lines() {
        let (slot, rest) = if let Some(r) = line.strip_prefix("peregrine_agent_kernel_program_runs_total{program=\"") {
            (0, r)
        } else if let Some(r) = line.strip_prefix("peregrine_agent_kernel_program_run_ns_total{program=\"") {
            (1, r)
        } else {
            continue;
        };
        let Some((name, value)) = rest.split_once("\"} ") else { continue };
        let Ok(v) = value.trim().parse::<f64>() else { continue };
        let e = out.entry(name.to_owned()).or_default();
        if slot == 0 { e.0 = v } else { e.1 = v }
    }
    out
}

struct Stack {
    collector: Owned,
    agent: Owned,
    port: u16,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A quiet collector (binary `collector`) on `port` writing JSON lines to `out` through a
/// queue in `queue`.
fn collector_command(collector: &Path, port: u16, out: &Path, queue: &Path) -> Result<Command> {
    let mut cmd = Command::new(collector);
    cmd.args(["--set", &format!("listen=127.0.0.1:{port}"), "--set", &format!("http.listen=127.0.0.1:{}", free_port()?)])
        .args(["--set", "output.kind=file", "--set", &format!("output.path={}", out.display())])
        .args(["--set", &format!("queue.dir={}", queue.display())])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(cmd)
}

/// The variant's agent, kernel object and collector (each the one just built unless the
/// variant names an earlier build's).
fn start_stack(bins: &Binaries, variant: &Variant, cgroup: &CpuCgroup) -> Result<Stack> {
    let dir = TempDir(std::env::temp_dir().join(format!("peregrine-bench-{}", std::process::id())));
    fs::create_dir_all(&dir.0)?;
    let ingest = free_port()?;
    // The agent is what is measured: the collector acknowledges and writes every event, but to
    // /dev/null, so a long soak (gigabytes of JSON) cannot fill the disk and back the agent up.
    let collector = variant.collector.as_deref().unwrap_or(&bins.collector);
    let collector = Owned(collector_command(collector, ingest, Path::new("/dev/null"), &dir.0.join("queue"))?.spawn()?);
    let port = free_port()?;
    let agent = Owned(
        Command::new(variant.agent.as_deref().unwrap_or(&bins.agent))
            .args(["--set", "cluster_name=bench", "--set", &format!("collector.address=http://127.0.0.1:{ingest}")])
            .args(["--set", &format!("ebpf.object={}", variant.ebpf.as_deref().unwrap_or(&bins.ebpf).display())])
            .args(["--set", &format!("http.listen=127.0.0.1:{port}")])
            .args(["--set", &format!("spool.dir={}", dir.0.join("spool").display())])
            .args(variant.sets.iter().flat_map(|s| ["--set", s]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    cgroup.add(agent.0.id())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(port, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200")) {
        if Instant::now() > deadline {
            bail!("the agent did not become ready");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Stack { collector, agent, port, _dir: dir })
}

struct AgentSample {
    rate: f64,
    execs: u64,
    events: f64,
    cpu_ns: u64,
    /// The collector's CPU over the same window, until it has settled: on this one machine it
    /// competes with the workload as much as the agent does.
    collector_cpu_ns: u64,
    /// Per kernel program over the window: (runs, ns); empty unless bpf_stats was on.
    programs: BTreeMap<String, (f64, f64)>,
    dropped: f64,
    lost: f64,
}

/// An agent configuration measured against the workload.
#[derive(Clone)]
struct Variant {
    label: String,
    sets: &'static [&'static str],
    /// Every unit of work becomes an event (no dedup): the window ends when all are sent.
    /// Otherwise it ends when the agent's CPU has settled.
    every_unit_an_event: bool,
    /// Another agent binary than the one just built (`--baseline-agent`).
    agent: Option<PathBuf>,
    /// Another collector binary than the one just built (`--baseline-collector`).
    collector: Option<PathBuf>,
    /// Another kernel object than the one just built (`--baseline-ebpf`).
    ebpf: Option<PathBuf>,
    /// For a variant of this build with a baseline twin: the twin's index.
    baseline: Option<usize>,
}

impl Variant {
    /// A configuration of the binaries and kernel object just built.
    fn this_build(label: &str, sets: &'static [&'static str], every_unit_an_event: bool) -> Self {
        Self { label: label.to_owned(), sets, every_unit_an_event, agent: None, collector: None, ebpf: None, baseline: None }
    }

    fn is_this_build(&self) -> bool {
        self.agent.is_none() && self.collector.is_none() && self.ebpf.is_none()
    }
}

fn variants(workload: Workload, baseline_agent: Option<&Path>, baseline_collector: Option<&Path>) -> Vec<Variant> {
    let v = Variant::this_build;
    let mut out = match workload {
        Workload::Exec => vec![v("agent/none", &[], true)],
        Workload::Connect => vec![
            v("agent (default dedup 10 s)/none", &[], false),
            v("agent (dedup off)/none", &["network.tcp_dedup_ms=0"], true),
        ],
        // The default agent, and one without the TCP hooks: where the kernel runs no BPF
        // trampolines the default takes accepts from syscall tracepoints (with them, from
        // fexit, and the default looks like the second line).
        Workload::Syscall => vec![
            v("agent (default)/none", &[], false),
            v("agent (ebpf.programs.network = false: no syscall tracepoint)/none", &["ebpf.programs.network=false"], false),
        ],
    };
    if baseline_agent.is_some() || baseline_collector.is_some() {
        for i in 0..out.len() {
            let twin = Variant {
                label: format!("baseline {}", out[i].label),
                agent: baseline_agent.map(Path::to_owned),
                collector: baseline_collector.map(Path::to_owned),
                ..out[i].clone()
            };
            out[i].baseline = Some(out.len());
            out.push(twin);
        }
    }
    out
}

fn run_with_agent(bins: &Binaries, cgroup: &CpuCgroup, workload: Workload, variant: &Variant, workers: usize, seconds: f64) -> Result<AgentSample> {
    let stack = start_stack(bins, variant, cgroup)?;
    let pid = stack.agent.0.id();
    let before = http_get(stack.port, "/metrics").unwrap_or_default();
    let cpu0 = cpu_ns(pid);
    let collector = stack.collector.0.id();
    let collector0 = cpu_ns(collector);
    let execs = workload.run(workers, seconds)?;
    let exec_series = workload.event_series();
    let mut after = String::new();
    let cpu1 = if variant.every_unit_an_event {
        // The window ends when the agent has sent every event it saw (bounded).
        let target = metric(&before, exec_series) + execs as f64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            after = http_get(stack.port, "/metrics").unwrap_or_default();
            let lost = metric(&after, "peregrine_agent_kernel_records_lost_total");
            if metric(&after, exec_series) + lost >= target {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        cpu_ns(pid)
    } else {
        let settled = settled_cpu_ns(pid);
        after = http_get(stack.port, "/metrics").unwrap_or_default();
        settled
    };
    let collector1 = settled_cpu_ns(collector);
    // The agent reads its programs' statistics for a scrape, at most once a second: the
    // polls above may have had the last read.
    std::thread::sleep(Duration::from_millis(1100));
    let last = http_get(stack.port, "/metrics").unwrap_or_default();
    let (p0, p1) = (program_stats(&before), program_stats(&last));
    let programs = p1
        .iter()
        .map(|(name, (runs, ns))| {
            let (r0, n0) = p0.get(name).copied().unwrap_or_default();
            (name.clone(), (runs - r0, ns - n0))
        })
        .filter(|(_, (runs, _))| *runs > 0.0)
        .collect();
    Ok(AgentSample {
        rate: execs as f64 / seconds,
        execs,
        events: metric(&after, exec_series) - metric(&before, exec_series),
        cpu_ns: cpu1 - cpu0,
        collector_cpu_ns: collector1.saturating_sub(collector0),
        programs,
        dropped: dropped_total(&after) - dropped_total(&before),
        lost: metric(&after, "peregrine_agent_kernel_records_lost_total") - metric(&before, "peregrine_agent_kernel_records_lost_total"),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Median and a 95% bootstrap interval of the median (seeded, so reruns of the same samples agree).
fn median_ci(values: &[f64]) -> (f64, f64, f64) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut medians: Vec<f64> = (0..2000)
        .map(|_| {
            let mut sample: Vec<f64> = (0..values.len()).map(|_| values[(next() % values.len() as u64) as usize]).collect();
            median(&mut sample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    let lo = medians[(medians.len() as f64 * 0.025) as usize];
    let hi = medians[(medians.len() as f64 * 0.975) as usize - 1];
    (median(&mut values.to_vec()), lo, hi)
}

fn set_bpf_stats(on: bool) -> Option<String> {
    let path = "/proc/sys/kernel/bpf_stats_enabled";
    let old = fs::read_to_string(path).ok();
    let _ = fs::write(path, if on { "1" } else { "0" });
    old
}

/// The earlier builds named on the command line exist.
fn check_baselines(args: &Bench) -> Result<()> {
    for (flag, path, built) in [
        ("--baseline-ebpf", &args.baseline_ebpf, "target/ebpf/bpfel-unknown-none/release/peregrine-ebpf"),
        ("--baseline-agent", &args.baseline_agent, "target/release/peregrine-agent"),
        ("--baseline-collector", &args.baseline_collector, "target/release/peregrine-collector"),
    ] {
        if let Some(path) = path
            && !path.is_file()
        {
            bail!("{flag} {}: no such file (give a copy of an earlier build's {built})", path.display());
        }
    }
    Ok(())
}

pub fn run(bins: &Binaries, args: &Bench) -> Result<()> {
    check_baselines(args)?;
    sh(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args(["build", "--release", "-p", "xtask", "--bin", "execstorm", "--bin", "connstorm", "--bin", "sysstorm"]))?;
    let cgroup = CpuCgroup::new(args.cpu_millis)?;
    let _peer = if args.workload == Workload::Connect { Some(ConnectPeer::new()?) } else { None };
    // Statistics cost two clock reads per program run: off while ratios (and the soak) are
    // measured, on only for the separate in-kernel runs.
    let old_stats = set_bpf_stats(false);
    let result = if let Some(n) = args.soak { soak(bins, &cgroup, args.workload, n, args.baseline_agent.as_deref()) } else { rounds(bins, &cgroup, args) };
    if let Some(old) = old_stats {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", old.trim());
    }
    let report = result?;
    println!("{report}");
    let out = root().join("target/bench");
    fs::create_dir_all(&out)?;
    let name = format!("{}{}.md", args.workload.unit(), if args.soak.is_some() { "-soak" } else { "" });
    fs::write(out.join(name), &report)?;
    Ok(())
}

fn rounds(bins: &Binaries, cgroup: &CpuCgroup, args: &Bench) -> Result<String> {
    let mut report = String::new();
    let cmd = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let _ = writeln!(report, "### `cargo xtask {cmd}`\n");
    let _ = writeln!(
        report,
        "{} rounds × {} s per condition, agent CPU limit {} m, conditions rotated each round.\n",
        args.rounds, args.seconds, args.cpu_millis
    );
    let u = args.workload.unit();
    let _ = writeln!(
        report,
        "| workers | pair | median ratio | 95% CI | agent CPU µs/{u} | collector CPU µs/{u} | events/{u} | drops | lost in kernel | {u}s/s (none, median) |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|---|---|---|");
    let variants = variants(args.workload, args.baseline_agent.as_deref(), args.baseline_collector.as_deref());
    let mut paired = String::new();
    for &workers in &args.workers {
        #[derive(Default)]
        struct Acc {
            ratio: Vec<f64>,
            cpu_per: Vec<f64>,
            collector_cpu_per: Vec<f64>,
            events_per: Vec<f64>,
            rate: Vec<f64>,
            drops: f64,
            lost: f64,
        }
        let mut acc: Vec<Acc> = variants.iter().map(|_| Acc::default()).collect();
        let mut aa = Vec::new();
        let mut none_rates = Vec::new();
        for round in 0..args.rounds {
            // "none-a", each variant, "none-b", rotated by one each round.
            let mut conds: Vec<Option<usize>> = vec![None];
            conds.extend((0..variants.len()).map(Some));
            conds.push(None);
            let n = conds.len();
            conds.rotate_left(round % n);
            let mut none = Vec::new();
            let mut agent = vec![0.0; variants.len()];
            for cond in conds {
                match cond {
                    Some(i) => {
                        let s = run_with_agent(bins, cgroup, args.workload, &variants[i], workers, args.seconds)?;
                        let a = &mut acc[i];
                        a.cpu_per.push(s.cpu_ns as f64 / s.execs.max(1) as f64 / 1000.0);
                        a.collector_cpu_per.push(s.collector_cpu_ns as f64 / s.execs.max(1) as f64 / 1000.0);
                        a.events_per.push(s.events / s.execs.max(1) as f64);
                        a.drops += s.dropped;
                        a.lost += s.lost;
                        agent[i] = s.rate;
                        a.rate.push(s.rate);
                    }
                    None => none.push(args.workload.run(workers, args.seconds)? as f64 / args.seconds),
                }
            }
            let (a, b) = (none[0], none[1]);
            eprintln!("    workers={workers} round={round}: none {a:.0}/s, {b:.0}/s; agent {agent:.0?}/s");
            aa.push(b / a);
            for (i, g) in agent.iter().enumerate() {
                acc[i].ratio.push(g / ((a + b) / 2.0));
            }
            none_rates.push((a + b) / 2.0);
        }
        let (am, alo, ahi) = median_ci(&aa);
        let (nm, _, _) = median_ci(&none_rates);
        let _ = writeln!(report, "| {workers} | A/A (none/none) | {am:.3} | [{alo:.3}, {ahi:.3}] | | | | | | {nm:.0} |");
        for (v, a) in variants.iter().zip(&acc) {
            let (rm, rlo, rhi) = median_ci(&a.ratio);
            let (cm, _, _) = median_ci(&a.cpu_per);
            let (ccm, _, _) = median_ci(&a.collector_cpu_per);
            let (em, _, _) = median_ci(&a.events_per);
            let _ = writeln!(
                report,
                "| {workers} | {} | {rm:.3} | [{rlo:.3}, {rhi:.3}] | {cm:.2} | {ccm:.2} | {em:.3} | {:.0} | {:.0} | |",
                v.label, a.drops, a.lost
            );
        }
        // This build against the baseline build, round by round.
        for (v, a) in variants.iter().zip(&acc) {
            let Some(b) = v.baseline.map(|j| &acc[j]) else { continue };
            let pairs = |x: &[f64], y: &[f64]| median_ci(&x.iter().zip(y).map(|(x, y)| x / y).collect::<Vec<_>>());
            let (cm, clo, chi) = pairs(&a.cpu_per, &b.cpu_per);
            let (km, klo, khi) = pairs(&a.collector_cpu_per, &b.collector_cpu_per);
            let (rm, rlo, rhi) = pairs(&a.rate, &b.rate);
            let _ = writeln!(
                paired,
                "| {workers} | {} | {cm:.3} | [{clo:.3}, {chi:.3}] | {km:.3} | [{klo:.3}, {khi:.3}] | {rm:.3} | [{rlo:.3}, {rhi:.3}] |",
                v.label
            );
        }
    }
    if !paired.is_empty() {
        let _ = writeln!(report, "\nThis build against the baseline build in the same rounds (paired per round; below 1 is less CPU):\n");
        let _ = writeln!(
            report,
            "| workers | variant | agent CPU per {u}, this/baseline | 95% CI | collector CPU per {u}, this/baseline | 95% CI | {u}s/s, this/baseline | 95% CI |"
        );
        let _ = writeln!(report, "|---|---|---|---|---|---|---|---|");
        report.push_str(&paired);
    }
    // No program runs per getppid: nothing to count in the kernel.
    if args.workload != Workload::Syscall {
        in_kernel(bins, cgroup, args, &variants, &mut report)?;
    }
    for peer in &args.peers {
        match peer.as_str() {
            "auditd" => auditd_rounds(args, &mut report)?,
            other => bail!("unknown peer `{other}` (known: auditd)"),
        }
    }
    Ok(report)
}

/// In-kernel time per unit of work, per program, in runs of their own (`kernel.bpf_stats_enabled`
/// costs two clock reads per program run, so it stays off while ratios are measured).
fn in_kernel(bins: &Binaries, cgroup: &CpuCgroup, args: &Bench, variants: &[Variant], report: &mut String) -> Result<()> {
    let u = args.workload.unit();
    let workers = args.workers.first().copied().unwrap_or(1);
    let _ = writeln!(
        report,
        "\nIn the kernel, {workers} worker(s), {} s with `kernel.bpf_stats_enabled = 1` (a separate run: the statistics add two clock reads per program run, which these figures include):\n",
        args.seconds
    );
    let _ = writeln!(report, "| agent | program | runs/{u} | ns/run | ns/{u} |");
    let _ = writeln!(report, "|---|---|---|---|---|");
    let old = set_bpf_stats(true);
    let mut result = Ok(());
    for v in variants {
        let s = match run_with_agent(bins, cgroup, args.workload, v, workers, args.seconds) {
            Ok(s) => s,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let units = s.execs.max(1) as f64;
        let mut total = 0.0;
        for (name, (runs, ns)) in &s.programs {
            total += ns / units;
            // Programs the workload does not drive (an exec elsewhere on the node).
            if runs / units < 0.01 {
                continue;
            }
            let _ = writeln!(report, "| {} | `{name}` | {:.2} | {:.0} | {:.0} |", v.label, runs / units, ns / runs.max(1.0), ns / units);
        }
        let _ = writeln!(report, "| {} | **all** | | | **{total:.0}** |", v.label);
    }
    if result.is_ok()
        && let Some(baseline) = &args.baseline_ebpf
    {
        result = in_kernel_paired(bins, cgroup, args, variants, baseline, report);
    }
    if let Some(old) = old {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", old.trim());
    }
    result
}

/// `--rounds` rounds (at least 2) of the baseline kernel object and this build's, interleaved
/// (order alternating per round), with the statistics on: per program, the medians of ns per
/// unit and the median and range of the per-round ratios this/baseline (the machine's drift
/// between runs cancels in a pair). A round in which either side lacks a program (it ran in
/// under 1 % of the units, or has another name in one build) does not count for it.
fn in_kernel_paired(bins: &Binaries, cgroup: &CpuCgroup, args: &Bench, variants: &[Variant], baseline: &Path, report: &mut String) -> Result<()> {
    let rounds = args.rounds.max(2);
    let u = args.workload.unit();
    let workers = args.workers.first().copied().unwrap_or(1);
    let _ = writeln!(
        report,
        "\nIn the kernel against the baseline object {} ({rounds} rounds × {} s each, interleaved, order alternating; statistics on):\n",
        baseline.display(),
        args.seconds
    );
    let _ = writeln!(report, "| agent | program | baseline ns/{u} (median) | this ns/{u} (median) | this/baseline (median of pairs) | range (min–max) | pairs |");
    let _ = writeln!(report, "|---|---|---|---|---|---|---|");
    let per_unit = |s: &AgentSample| -> BTreeMap<String, f64> {
        let units = s.execs.max(1) as f64;
        let mut m: BTreeMap<String, f64> = s.programs.iter().filter(|(_, (runs, _))| runs / units >= 0.01).map(|(n, (_, ns))| (n.clone(), ns / units)).collect();
        m.insert("**all**".into(), s.programs.values().map(|(_, ns)| ns / units).sum());
        m
    };
    for v in variants.iter().filter(|v| v.is_this_build()) {
        let on_baseline = Variant { ebpf: Some(baseline.to_owned()), ..v.clone() };
        let mut pairs: Vec<(BTreeMap<String, f64>, BTreeMap<String, f64>)> = Vec::new();
        for round in 0..rounds {
            let (mut base, mut this) = (None, None);
            for first_baseline in [round % 2 == 0, round % 2 != 0] {
                let variant = if first_baseline { &on_baseline } else { v };
                let sample = per_unit(&run_with_agent(bins, cgroup, args.workload, variant, workers, args.seconds)?);
                if first_baseline { base = Some(sample) } else { this = Some(sample) }
            }
            if let (Some(b), Some(t)) = (base, this) {
                pairs.push((b, t));
            }
        }
        let names: std::collections::BTreeSet<String> = pairs.iter().flat_map(|(b, t)| b.keys().chain(t.keys()).cloned()).collect();
        for name in names {
            let both: Vec<(f64, f64)> =
                pairs.iter().filter_map(|(b, t)| Some((*b.get(&name)?, *t.get(&name)?))).filter(|(b, _)| *b > 0.0).collect();
            let shown = if name.starts_with("**") { name.clone() } else { format!("`{name}`") };
            if both.is_empty() {
                let _ = writeln!(report, "| {} | {shown} | n/a | n/a | n/a (not in both builds' rounds) | | 0 |", v.label);
                continue;
            }
            let mut b: Vec<f64> = both.iter().map(|(b, _)| *b).collect();
            let mut t: Vec<f64> = both.iter().map(|(_, t)| *t).collect();
            let mut r: Vec<f64> = both.iter().map(|(b, t)| t / b).collect();
            let (lo, hi) = (r.iter().copied().fold(f64::INFINITY, f64::min), r.iter().copied().fold(0.0, f64::max));
            let _ = writeln!(
                report,
                "| {} | {shown} | {:.0} | {:.0} | {:.3} | [{lo:.3}, {hi:.3}] | {} |",
                v.label,
                median(&mut b),
                median(&mut t),
                median(&mut r),
                both.len()
            );
        }
    }
    Ok(())
}

fn soak(bins: &Binaries, cgroup: &CpuCgroup, workload: Workload, target: u64, baseline_agent: Option<&Path>) -> Result<String> {
    let cmd = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let mut report = format!(
        "### `cargo xtask {cmd}`\n\n| agent | execs | seconds | agent RSS (anonymous, file, shared) | agent peak RSS | exec events | lost in kernel | dropped | process cache entries |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut drops = String::new();
    // With a baseline, the same soak of the earlier build first: RSS moves with the exec rate
    // (exited processes are kept for the grace period) and the machine, so compare in one run.
    let agents: Vec<(&str, Option<&Path>)> = match baseline_agent {
        Some(path) => vec![("baseline", Some(path)), ("this build", None)],
        None => vec![("this build", None)],
    };
    for (label, agent) in agents {
        let variant = Variant { agent: agent.map(Path::to_owned), ..Variant::this_build(label, &[], true) };
        let stack = start_stack(bins, &variant, cgroup)?;
        let pid = stack.agent.0.id();
        let started = Instant::now();
        let mut total = 0;
        while total < target {
            total += workload.run(2, 10.0)?;
            eprintln!(
                "    soak ({label}): {total} execs, agent RSS {} KiB (anonymous {}, file {}, shared {})",
                status_kib(pid, "VmRSS:"),
                status_kib(pid, "RssAnon:"),
                status_kib(pid, "RssFile:"),
                status_kib(pid, "RssShmem:")
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        let m = http_get(stack.port, "/metrics").unwrap_or_default();
        let _ = writeln!(
            report,
            "| {label} | {total} | {:.0} | {:.1} MiB ({:.1}, {:.1}, {:.1}) | {:.1} MiB | {} | {} | {} | {} |",
            started.elapsed().as_secs_f64(),
            status_kib(pid, "VmRSS:") as f64 / 1024.0,
            status_kib(pid, "RssAnon:") as f64 / 1024.0,
            status_kib(pid, "RssFile:") as f64 / 1024.0,
            status_kib(pid, "RssShmem:") as f64 / 1024.0,
            status_kib(pid, "VmHWM:") as f64 / 1024.0,
            metric(&m, "peregrine_agent_events_total{kind=\"exec\"}"),
            metric(&m, "peregrine_agent_kernel_records_lost_total"),
            dropped_total(&m),
            metric(&m, "peregrine_agent_process_cache_entries"),
        );
        drops.push_str(&drop_reasons(&m));
    }
    Ok(report + &drops)
}

/// The agent's non-zero drop counters, by reason, for the report.
fn drop_reasons(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("peregrine_agent_events_dropped_total{") && !l.ends_with(" 0"))
        .map(|l| format!("\n`{l}`\n"))
        .collect()
}

/// auditd with an execve rule, the peer users know; installed here if missing, cleaned up
/// (`auditctl -D`, `-e 0`, auditd stopped by PID) whatever happens.
fn auditd_rounds(args: &Bench, report: &mut String) -> Result<()> {
    if !Path::new("/sbin/auditctl").exists() {
        sh(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "auditd"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let dir = TempDir(std::env::temp_dir().join(format!("peregrine-auditd-{}", std::process::id())));
    fs::create_dir_all(&dir.0)?;
    let conf = dir.0.join("auditd.conf");
    fs::write(&conf, format!("log_file = {}\nlog_format = RAW\nflush = NONE\nmax_log_file = 100\nmax_log_file_action = ROTATE\nspace_left = 100\nadmin_space_left = 50\ndisk_full_action = IGNORE\ndisk_error_action = IGNORE\n", dir.0.join("audit.log").display()))?;
    let daemon = Owned(Command::new("/sbin/auditd").args(["-n", "-c"]).arg(&dir.0).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    std::thread::sleep(Duration::from_millis(500));
    let result = (|| -> Result<()> {
        sh(Command::new("/sbin/auditctl").args(["-e", "1"]).stdout(Stdio::null()))?;
        let syscall = if args.workload == Workload::Exec { "execve" } else { "connect" };
        sh(Command::new("/sbin/auditctl").args(["-a", "always,exit", "-F", "arch=b64", "-S", syscall, "-k", "peregrine-bench"]).stdout(Stdio::null()))?;
        for &workers in &args.workers {
            let mut ratio = Vec::new();
            let mut cpu_per = Vec::new();
            for round in 0..args.rounds {
                let none = args.workload.run(workers, args.seconds)? as f64 / args.seconds;
                let cpu0 = cpu_ns(daemon.0.id());
                let n = args.workload.run(workers, args.seconds)?;
                cpu_per.push((cpu_ns(daemon.0.id()) - cpu0) as f64 / n.max(1) as f64 / 1000.0);
                let with = n as f64 / args.seconds;
                eprintln!("    auditd workers={workers} round={round}: none {none:.0}/s auditd {with:.0}/s");
                ratio.push(with / none);
            }
            let (rm, rlo, rhi) = median_ci(&ratio);
            let (cm, _, _) = median_ci(&cpu_per);
            let _ = writeln!(report, "| {workers} | auditd/none (peer) | {rm:.3} | [{rlo:.3}, {rhi:.3}] | {cm:.2} (auditd) | | | | |");
        }
        Ok(())
    })();
    let _ = Command::new("/sbin/auditctl").arg("-D").stdout(Stdio::null()).status();
    let _ = Command::new("/sbin/auditctl").args(["-e", "0"]).stdout(Stdio::null()).status();
    drop(daemon);
    result
}

/// Runs the command on one CPU only: the ingest bench keeps the load generator off the
/// collector's CPU, so the collector's cost per event is not its neighbour's cache and
/// scheduling noise (on 2 cores, unpinned runs moved by ±20%).
fn pin(cmd: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure makes one async-signal-safe system call on a
    // cpu set it built on its own stack.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// `cargo xtask bench ingest`: the collector alone, fed by `peregrine-loadgen` the way agents
/// feed it, into a file output through its durable queue. Rounds alternate the two fsync
/// policies (on_flush, the default, and never). Then one steady-rate run measures event →
/// output latency, and the journal's own append and replay rates are measured.
pub fn ingest(bins: &Binaries, rounds: usize, seconds: f64) -> Result<()> {
    let loadgen = bins.collector.with_file_name("peregrine-loadgen");
    let dir = TempDir(std::env::temp_dir().join(format!("peregrine-bench-ingest-{}", std::process::id())));
    fs::create_dir_all(&dir.0)?;
    let start = |fsync: &str, tag: &str| -> Result<(Owned, u16, PathBuf)> {
        let port = free_port()?;
        let out = dir.0.join(format!("events-{tag}.jsonl"));
        let mut cmd = collector_command(&bins.collector, port, &out, &dir.0.join(format!("queue-{tag}")))?;
        pin(&mut cmd, 1);
        let collector = Owned(cmd.args(["--set", &format!("queue.fsync={fsync}")]).spawn()?);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the collector did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((collector, port, out))
    };
    let load = |port: u16, extra: &[String]| -> Result<serde_json::Value> {
        let mut cmd = Command::new(&loadgen);
        pin(&mut cmd, 0);
        let out = cmd
            .args(["--address", &format!("http://127.0.0.1:{port}"), "--seconds", &seconds.to_string()])
            .args(extra)
            .output()?;
        anyhow::ensure!(out.status.success(), "loadgen failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let mut report = String::new();
    let cmd = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let _ = writeln!(report, "### `cargo xtask {cmd}`\n");
    let _ = writeln!(
        report,
        "{rounds} rounds × {seconds} s per fsync policy, alternating; batches of 512 exec events, 8 in flight, one stream; the collector on CPU 1, the load generator on CPU 0; collector CPU counted until it is idle after the last acknowledgement (the output's backlog included).\n"
    );
    // Per fsync policy: events/s acked, collector CPU µs per event, events/s per core.
    type Samples = (Vec<f64>, Vec<f64>, Vec<f64>);
    let mut per: BTreeMap<&str, Samples> = BTreeMap::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 { ["on_flush", "never"] } else { ["never", "on_flush"] };
        for fsync in order {
            let tag = format!("{fsync}-{round}");
            let (collector, port, out) = start(fsync, &tag)?;
            let pid = collector.0.id();
            let cpu0 = cpu_ns(pid);
            let r = load(port, &[])?;
            // The output may still be writing what was acknowledged: its CPU counts too.
            let cpu = settled_cpu_ns(pid).saturating_sub(cpu0) as f64 / 1e9;
            drop(collector);
            // Gigabytes per round: left behind, their writeback slows the rounds after.
            let _ = fs::remove_file(&out);
            let _ = fs::remove_dir_all(dir.0.join(format!("queue-{tag}")));
            let acked = r["acked"].as_f64().unwrap_or(0.0);
            let secs = r["seconds"].as_f64().unwrap_or(1.0);
            eprintln!("    round={round} fsync={fsync}: {acked} events acked in {secs:.2} s, collector CPU {cpu:.2} s");
            let e = per.entry(fsync).or_default();
            e.0.push(acked / secs);
            e.1.push(if acked > 0.0 { cpu * 1e6 / acked } else { 0.0 });
            e.2.push(if cpu > 0.0 { acked / cpu } else { 0.0 });
        }
    }
    let _ = writeln!(report, "| fsync | events/s acked (median, 95% CI) | collector CPU µs/event | events/s per collector core |");
    let _ = writeln!(report, "|---|---|---|---|");
    for (fsync, (rate, us, per_core)) in &per {
        let (m, lo, hi) = median_ci(rate);
        let (u, ulo, uhi) = median_ci(us);
        let (c, clo, chi) = median_ci(per_core);
        let _ = writeln!(report, "| {fsync} | {m:.0} [{lo:.0}, {hi:.0}] | {u:.1} [{ulo:.1}, {uhi:.1}] | {c:.0} [{clo:.0}, {chi:.0}] |");
    }
    // Latency at a steady 10,000 events/s, default fsync: send time to the line in the file.
    let (collector, port, out) = start("on_flush", "latency")?;
    let r = load(port, &["--rate".into(), "10000".into(), "--tail".into(), out.display().to_string()])?;
    drop(collector);
    let _ = writeln!(
        report,
        "\nLatency at 10,000 events/s (fsync on_flush), event stamped at send → its line read from the output file: p50 {:.1} ms, p99 {:.1} ms ({} samples).",
        r["latency_p50_ms"].as_f64().unwrap_or(0.0),
        r["latency_p99_ms"].as_f64().unwrap_or(0.0),
        r["latency_samples"]
    );
    let s = {
        let out = Command::new(&loadgen).args(["--spool-bench", &dir.0.join("journal").display().to_string()]).output()?;
        anyhow::ensure!(out.status.success(), "spool bench failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout)?
    };
    let _ = writeln!(
        report,
        "Journal (the agent's spool) alone, {} records of {} bytes, flushed every 512, no fsync: append {:.0}/s, replay {:.0}/s.",
        s["records"], s["record_bytes"], s["append_per_s"].as_f64().unwrap_or(0.0), s["replay_per_s"].as_f64().unwrap_or(0.0)
    );
    println!("{report}");
    let out = root().join("target/bench");
    fs::create_dir_all(&out)?;
    fs::write(out.join("ingest.md"), &report)?;
    Ok(())
}

/// Exact CPU time (ns) and voluntary context switches (each a sleep and a wake-up) of all a
/// process's threads, from /proc/PID/task/*/schedstat and status.
fn cpu_and_sleeps(pid: u32) -> (u64, u64) {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return (0, 0) };
    let mut total = (0, 0);
    for task in tasks.flatten() {
        let path = task.path();
        let ns: u64 = fs::read_to_string(path.join("schedstat")).ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0);
        let sleeps: u64 = fs::read_to_string(path.join("status"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")?.trim().parse().ok()))
            .unwrap_or(0);
        total.0 += ns;
        total.1 += sleeps;
    }
    total
}

/// `cargo xtask bench idle`: what the agent and the collector cost on a node with nothing to
/// report — CPU per second and wake-ups per second over `seconds`, after a 2 s settle, this
/// build and (with `--baseline-agent`/`--baseline-collector`) an earlier one in the same rounds,
/// order alternating.
pub fn idle(bins: &Binaries, args: &Bench) -> Result<()> {
    check_baselines(args)?;
    let cgroup = CpuCgroup::new(args.cpu_millis)?;
    let mut variants = vec![Variant::this_build("this build", &[], false)];
    if args.baseline_agent.is_some() || args.baseline_collector.is_some() {
        variants.push(Variant {
            label: "baseline".into(),
            agent: args.baseline_agent.clone(),
            collector: args.baseline_collector.clone(),
            ..variants[0].clone()
        });
    }
    // Per variant: agent ms/s, agent wake-ups/s, collector ms/s, collector wake-ups/s.
    let mut samples: Vec<[Vec<f64>; 4]> = variants.iter().map(|_| Default::default()).collect();
    for round in 0..args.rounds {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        order.rotate_left(round % variants.len());
        for i in order {
            let stack = start_stack(bins, &variants[i], &cgroup)?;
            std::thread::sleep(Duration::from_secs(2));
            let (agent, collector) = (stack.agent.0.id(), stack.collector.0.id());
            let (a0, c0) = (cpu_and_sleeps(agent), cpu_and_sleeps(collector));
            std::thread::sleep(Duration::from_secs_f64(args.seconds));
            let (a1, c1) = (cpu_and_sleeps(agent), cpu_and_sleeps(collector));
            let per_s = |d: u64| d as f64 / args.seconds;
            let s = &mut samples[i];
            s[0].push(per_s(a1.0.saturating_sub(a0.0)) / 1e6);
            s[1].push(per_s(a1.1.saturating_sub(a0.1)));
            s[2].push(per_s(c1.0.saturating_sub(c0.0)) / 1e6);
            s[3].push(per_s(c1.1.saturating_sub(c0.1)));
        }
    }
    let mut report = String::new();
    let cmd = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let _ = writeln!(report, "### `cargo xtask {cmd}`\n");
    let _ = writeln!(report, "{} rounds × {} s per build, idle (2 s settle first), agent CPU limit {} m.\n", args.rounds, args.seconds, args.cpu_millis);
    let _ = writeln!(report, "| build | agent CPU ms/s | 95% CI | agent wake-ups/s | collector CPU ms/s | 95% CI | collector wake-ups/s |");
    let _ = writeln!(report, "|---|---|---|---|---|---|---|");
    for (v, s) in variants.iter().zip(&samples) {
        let (a, alo, ahi) = median_ci(&s[0]);
        let (c, clo, chi) = median_ci(&s[2]);
        let _ = writeln!(
            report,
            "| {} | {a:.2} | [{alo:.2}, {ahi:.2}] | {:.1} | {c:.2} | [{clo:.2}, {chi:.2}] | {:.1} |",
            v.label,
            median(&mut s[1].clone()),
            median(&mut s[3].clone())
        );
    }
    if let [this, base] = &samples[..] {
        let ratio = |k: usize| -> Vec<f64> { this[k].iter().zip(&base[k]).map(|(t, b)| if *b > 0.0 { t / b } else { f64::NAN }).collect() };
        let _ = writeln!(report, "\n| this/baseline, paired per round | median | 95% CI |\n|---|---|---|");
        for (k, name) in [(0, "agent CPU"), (1, "agent wake-ups"), (2, "collector CPU"), (3, "collector wake-ups")] {
            let (m, lo, hi) = median_ci(&ratio(k));
            let _ = writeln!(report, "| {name} | {m:.3} | [{lo:.3}, {hi:.3}] |");
        }
    }
    println!("{report}");
    let out = root().join("target/bench");
    fs::create_dir_all(&out)?;
    fs::write(out.join("idle.md"), &report)?;
    Ok(())
}
