//! Several collector replicas behind one Service: when the replica an agent streams to dies,
//! the agent reconnects to the Service address and carries on with another replica.
//!
//! The Service is built the way kube-proxy's nftables mode builds a ClusterIP: a virtual
//! address DNATed to the replicas' addresses by `numgen random` (the real kernel, real `nft`);
//! when a replica dies the test removes it from the map, as kube-proxy does once its endpoint
//! is no longer ready. Everything lives in a network namespace the test creates (198.18.7.0/24).
// Test code: a failed step should stop the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::BTreeMap,
    io::Write,
    net::TcpStream,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::{Proc, TempDir, agent_command, collector_bin, http_get, ip, netns_thread, tool, unique, wait_for};

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "pg-svc";
const VIP: &str = "198.18.7.100";
const REPLICA_A: &str = "198.18.7.1";
const REPLICA_B: &str = "198.18.7.2";
const PORT: u16 = 7443;

/// The namespace, its addresses and the Service's nftables table; removed on drop.
struct Service;

impl Service {
    fn new() -> Self {
        let _ = Command::new(tool("ip")).args(["netns", "del", NS]).status();
        ip(&["netns", "add", NS]);
        ip(&["-n", NS, "link", "set", "lo", "up"]);
        for a in [REPLICA_A, REPLICA_B, VIP] {
            ip(&["-n", NS, "addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        let service = Self;
        service.endpoints(&[REPLICA_A, REPLICA_B]);
        service
    }

    /// Points the virtual address at these replicas (kube-proxy's endpoint update).
    fn endpoints(&self, replicas: &[&str]) {
        let target = match replicas {
            [one] => (*one).to_owned(),
            many => {
                let map: Vec<String> = many.iter().enumerate().map(|(i, a)| format!("{i} : {a}")).collect();
                format!("numgen random mod {} map {{ {} }}", many.len(), map.join(", "))
            }
        };
        let script = format!(
            "table ip pg_svc\ndelete table ip pg_svc\ntable ip pg_svc {{\n  chain out {{\n    type nat hook output priority -100; policy accept;\n    ip daddr {VIP} tcp dport {PORT} dnat to {target}\n  }}\n}}\n"
        );
        let mut nft = Command::new(tool("ip"))
            .args(["netns", "exec", NS])
            .arg(tool("nft"))
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        nft.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = nft.wait_with_output().unwrap();
        assert!(out.status.success(), "nft -f:\n{script}\n{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs `f` on a thread that has joined the namespace's network stack.
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        netns_thread(NS, f).join().unwrap()
    }

    /// `cmd`, run in the namespace's network stack only (`ip netns exec` would also remount
    /// /sys, hiding the cgroup2 mount the agent attaches to).
    fn command(&self, mut cmd: Command) -> Command {
        use std::os::unix::process::CommandExt;
        let ns = std::fs::File::open(format!("/run/netns/{NS}")).unwrap();
        // SAFETY: between fork and exec the closure makes one async-signal-safe call (setns)
        // on a descriptor opened before the fork and kept alive by the closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
            });
        }
        cmd
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new(tool("ip")).args(["netns", "del", NS]).status();
    }
}

/// One collector replica: its own queue volume and output file, listening on its pod address.
struct Replica {
    name: &'static str,
    address: &'static str,
    out: PathBuf,
    proc: Proc,
}

impl Replica {
    fn start(service: &Service, dir: &Path, name: &'static str, address: &'static str) -> Self {
        let out = dir.join(format!("{name}.jsonl"));
        let mut cmd = Command::new(collector_bin());
        cmd.args(["--set", &format!("listen={address}:{PORT}")])
            .args(["--set", &format!("http.listen={address}:{}", PORT + 1)])
            .args(["--set", &format!("queue.dir={}", dir.join(format!("{name}-queue")).display())])
            .args(["--set", "output.kind=file"])
            .args(["--set", &format!("output.path={}", out.display())]);
        let mut proc = Proc::spawn(name, service.command(cmd), dir);
        let target = format!("{address}:{PORT}");
        wait_for(Duration::from_secs(10), "the replica to listen", || {
            assert!(proc.alive(), "{name} exited: {}", proc.stderr_text());
            let target = target.clone();
            service.inside(move || TcpStream::connect(target.as_str()).is_ok()).then_some(())
        });
        Self { name, address, out, proc }
    }

    fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// How often each marker appears as an exec's first argument at this replica's output.
    fn markers(&self) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for e in self.events() {
            if let Some(m) = e["kind"]["exec"]["process"]["argv"][1].as_str() {
                *seen.entry(m.to_owned()).or_default() += 1;
            }
        }
        seen
    }
}

fn run_markers(tag: &str) -> Vec<String> {
    let markers: Vec<String> = (0..20).map(|i| unique(&format!("{tag}{i}-"))).collect();
    for m in &markers {
        assert!(Command::new(tool("true")).arg(m).status().unwrap().success());
    }
    markers
}

#[test]
fn an_agent_moves_to_another_replica_when_its_replica_dies() {
    let dir = TempDir::new("failover");
    let service = Service::new();
    let mut replicas = vec![
        Replica::start(&service, dir.path(), "replica-a", REPLICA_A),
        Replica::start(&service, dir.path(), "replica-b", REPLICA_B),
    ];
    let http_port = support::free_port();
    let mut cmd = agent_command(&format!("http://{VIP}:{PORT}"), http_port, &[]);
    cmd.args(["--set", &format!("spool.dir={}", dir.path().join("spool").display())]);
    let mut agent = Proc::spawn("agent", service.command(cmd), dir.path());
    wait_for(Duration::from_secs(30), "the agent to be ready", || {
        assert!(agent.alive(), "agent exited: {}", agent.stderr_text());
        service.inside(move || http_get(http_port, "/readyz")).filter(|(s, _)| *s == 200)
    });

    // Before the failure: one stream, so every event goes to one replica.
    let before = run_markers("before");
    let serving = wait_for(WAIT, "the first markers at one replica's output", || {
        replicas.iter().position(|r| {
            let seen = r.markers();
            before.iter().all(|m| seen.get(m) == Some(&1))
        })
    });
    let other = 1 - serving;
    let absent = replicas[other].markers();
    assert!(before.iter().all(|m| !absent.contains_key(m)), "one stream, one replica: {} has some too", replicas[other].name);

    // The serving replica dies; the Service now leads only to the other one.
    let dead = &mut replicas[serving];
    dead.proc.child.kill().unwrap();
    dead.proc.child.wait().unwrap();
    let (dead_name, dead_address) = (dead.name, dead.address);
    service.endpoints(&[replicas[other].address]);

    let after = run_markers("after");
    wait_for(WAIT, "the later markers at the surviving replica", || {
        let seen = replicas[other].markers();
        after.iter().all(|m| seen.get(m) == Some(&1)).then_some(())
    });
    let log = replicas[other].proc.stderr_text();
    assert!(log.contains("agent stream opened"), "the surviving replica never had the agent's stream:\n{log}");

    // The dead replica comes back with its volume: what it had queued is still delivered, and
    // nothing made while it was down is there (it went to the survivor).
    replicas[serving] = Replica::start(&service, dir.path(), dead_name, dead_address);
    let back = replicas[serving].markers();
    assert!(after.iter().all(|m| !back.contains_key(m)), "events made while {dead_name} was down reached it");
    // Every event at most once per replica (each removes replays it has delivered), and every
    // marker at one of them.
    for r in &replicas {
        let mut ids = std::collections::BTreeSet::new();
        for e in r.events() {
            assert!(ids.insert(e["id"].as_str().unwrap().to_owned()), "{} delivered {} twice", r.name, e["id"]);
        }
    }
    let union: Vec<BTreeMap<String, usize>> = replicas.iter().map(Replica::markers).collect();
    for m in before.iter().chain(&after) {
        assert!(union.iter().any(|seen| seen.contains_key(m)), "marker {m} lost");
    }
    agent.terminate();
}
