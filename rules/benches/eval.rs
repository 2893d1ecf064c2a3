//! Evaluation throughput: the upstream stable rules that compile (12) over a realistic mix of
//! recorded exec events (shells, package managers, curl, sshd, kubelet probes...), one thread.
//!
//! `cargo bench -p peregrine-rules --bench eval` — criterion reports elements/s, i.e. events/s
//! per core. Target: at least 1,000,000.

// A benchmark harness, like a test, should stop loudly when its inputs are missing.
#![allow(clippy::panic)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use peregrine_rules::{RecordedEvent, RulesSource, Ruleset};

fn stable_rules() -> Ruleset {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/falco-rules/falco_rules.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the Falco rules corpus is missing at {}: {e}",
            path.display()
        )
    });
    Ruleset::from_sources(&[RulesSource {
        name: "falco_rules.yaml".into(),
        text,
    }])
    .unwrap_or_else(|e| panic!("{e}"))
}

/// (comm, exe, exepath, args, ancestors, container id, user, tty)
type Spec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static str,
    u64,
);

const MIX: &[Spec] = &[
    (
        "bash",
        "-bash",
        "/usr/bin/bash",
        "",
        &["sshd", "sshd", "systemd"],
        "host",
        "alice",
        34816,
    ),
    (
        "ls",
        "ls",
        "/usr/bin/ls",
        "--color=auto -la",
        &["bash", "sshd", "sshd", "systemd"],
        "host",
        "alice",
        34816,
    ),
    (
        "sudo",
        "sudo",
        "/usr/bin/sudo",
        "apt-get install -y jq",
        &["bash", "sshd", "sshd", "systemd"],
        "host",
        "alice",
        34816,
    ),
    (
        "apt-get",
        "apt-get",
        "/usr/bin/apt-get",
        "install -y jq",
        &["sudo", "bash", "sshd", "systemd"],
        "host",
        "root",
        34816,
    ),
    (
        "dpkg",
        "/usr/bin/dpkg",
        "/usr/bin/dpkg",
        "--status-fd 35 --configure jq",
        &["apt-get", "sudo", "bash", "sshd", "systemd"],
        "host",
        "root",
        34816,
    ),
    (
        "sh",
        "/bin/sh",
        "/usr/bin/dash",
        "-c /usr/share/debconf/frontend",
        &["dpkg", "apt-get", "sudo", "bash", "systemd"],
        "host",
        "root",
        0,
    ),
    (
        "curl",
        "curl",
        "/usr/bin/curl",
        "-fsS http://api.internal:8080/healthz",
        &["sh", "containerd-shim", "systemd"],
        "4f9a1c2b3d4e",
        "app",
        0,
    ),
    (
        "sh",
        "/bin/sh",
        "/bin/busybox",
        "-c cat /tmp/healthy",
        &["runc", "containerd-shim", "systemd"],
        "4f9a1c2b3d4e",
        "root",
        0,
    ),
    (
        "cat",
        "cat",
        "/bin/busybox",
        "/tmp/healthy",
        &["sh", "runc", "containerd-shim", "systemd"],
        "4f9a1c2b3d4e",
        "root",
        0,
    ),
    (
        "sshd",
        "sshd:",
        "/usr/sbin/sshd",
        "alice [priv]",
        &["sshd", "systemd"],
        "host",
        "root",
        0,
    ),
    (
        "python3",
        "python3",
        "/usr/bin/python3.11",
        "/app/manage.py runserver 0.0.0.0:8000",
        &["containerd-shim", "systemd"],
        "8b7c6d5e4f3a",
        "app",
        0,
    ),
    (
        "java",
        "/opt/java/openjdk/bin/java",
        "/opt/java/openjdk/bin/java",
        "-Xmx512m -jar /app/service.jar",
        &["containerd-shim", "systemd"],
        "1a2b3c4d5e6f",
        "app",
        0,
    ),
    (
        "node",
        "node",
        "/usr/local/bin/node",
        "/app/server.js",
        &["npm", "sh", "containerd-shim", "systemd"],
        "9f8e7d6c5b4a",
        "node",
        0,
    ),
    (
        "git",
        "git",
        "/usr/bin/git",
        "fetch --prune origin",
        &["bash", "sshd", "sshd", "systemd"],
        "host",
        "alice",
        34817,
    ),
    (
        "grep",
        "grep",
        "/usr/bin/grep",
        "-r ERROR /var/log/app",
        &["bash", "sshd", "sshd", "systemd"],
        "host",
        "alice",
        34817,
    ),
    (
        "ps",
        "ps",
        "/usr/bin/ps",
        "aux",
        &["bash", "sshd", "sshd", "systemd"],
        "host",
        "alice",
        34817,
    ),
    (
        "iptables",
        "/usr/sbin/iptables",
        "/usr/sbin/xtables-nft-multi",
        "-w 5 -t nat -L KUBE-SERVICES",
        &["kubelet", "systemd"],
        "host",
        "root",
        0,
    ),
    (
        "runc",
        "runc",
        "/usr/bin/runc",
        "--root /run/containerd/runc/k8s.io init",
        &["containerd-shim", "systemd"],
        "host",
        "root",
        0,
    ),
    // Two that fire: a shell under nginx, a debugger in a privileged container.
    (
        "sh",
        "sh",
        "/bin/sh",
        "-c id",
        &["nginx", "nginx", "containerd-shim", "systemd"],
        "7e6d5c4b3a29",
        "www-data",
        0,
    ),
    (
        "debugfs",
        "debugfs",
        "/usr/sbin/debugfs",
        "/dev/sda1",
        &["bash", "runc", "containerd-shim", "systemd"],
        "0a1b2c3d4e5f",
        "root",
        34818,
    ),
];

fn events() -> Vec<RecordedEvent> {
    MIX.iter()
        .enumerate()
        .map(|(i, (comm, exe, exepath, args, anc, cid, user, tty))| {
            let cmdline = if args.is_empty() { comm.to_string() } else { format!("{comm} {args}") };
            let in_container = *cid != "host";
            let json = serde_json::json!({
                "evt.type": "execve", "evt.num": 1000 + i as u64, "evt.res": "SUCCESS", "evt.rawres": 0,
                "proc.pid": 20000 + i as i64, "proc.name": comm, "proc.exe": exe, "proc.exepath": exepath,
                "proc.cmdline": cmdline, "proc.args": args, "proc.cwd": "/", "proc.tty": tty,
                "proc.aname": anc, "proc.aexe": anc, "proc.aexepath": anc, "proc.acmdline": anc,
                "proc.is_exe_upper_layer": false, "proc.is_exe_from_memfd": false,
                "user.uid": if *user == "root" { 0 } else { 1000 }, "user.name": user, "user.loginuid": -1,
                "container.id": cid,
                "container.image.repository": if in_container { "docker.io/library/app" } else { "" },
                "container.privileged": *comm == "debugfs",
            });
            serde_json::from_value(json).unwrap_or_else(|e| panic!("bad event {i}: {e}"))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rules = stable_rules();
    let events = events();
    let fired: usize = events.iter().map(|e| rules.count_matches(e)).sum();
    assert_eq!(
        fired, 2,
        "the mix should fire exactly the two planted rules"
    );

    let mut g = c.benchmark_group("stable_rules");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("exec_mix", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for e in &events {
                rules.evaluate(black_box(e), |_| n += 1);
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
