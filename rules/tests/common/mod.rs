//! Shared test helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns
#![allow(dead_code)]

use std::path::PathBuf;

use peregrine_rules::{RecordedEvent, RulesSource, Ruleset};

/// The upstream Falco rules corpus, beside the repository (`../shared/corpus/falco-rules`).
pub fn corpus_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/falco-rules");
    assert!(
        dir.join("falco_rules.yaml").is_file(),
        "the Falco rules corpus is missing: expected {} (shared/corpus/falco-rules beside the repository)",
        dir.display()
    );
    dir
}

pub fn corpus_file(name: &str) -> RulesSource {
    let path = corpus_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    RulesSource {
        name: name.to_string(),
        text,
    }
}

pub fn stable() -> Ruleset {
    Ruleset::from_sources(&[corpus_file("falco_rules.yaml")]).unwrap_or_else(|e| panic!("{e}"))
}

pub fn load(text: &str) -> Ruleset {
    Ruleset::from_sources(&[RulesSource {
        name: "test.yaml".into(),
        text: text.into(),
    }])
    .unwrap_or_else(|e| panic!("{e}"))
}

pub fn event(json: &str) -> RecordedEvent {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("bad event {json}: {e}"))
}

pub fn matches(rs: &Ruleset, ev: &RecordedEvent) -> Vec<String> {
    let mut out = Vec::new();
    rs.evaluate(ev, |r| out.push(r.name().to_string()));
    out
}

/// An event from a base object with some fields replaced (`null` removes one).
pub fn event_with(base: &str, changes: &str) -> RecordedEvent {
    let mut b: serde_json::Map<String, serde_json::Value> = serde_json::from_str(base).unwrap();
    let c: serde_json::Map<String, serde_json::Value> = serde_json::from_str(changes).unwrap();
    for (k, v) in c {
        if v.is_null() {
            b.remove(&k);
        } else {
            b.insert(k, v);
        }
    }
    serde_json::from_value(serde_json::Value::Object(b))
        .unwrap_or_else(|e| panic!("bad event: {e}"))
}

/// A shell-ish exec in a container, firing nothing by itself.
pub const EXEC_IN_CONTAINER: &str = r#"{
    "evt.type": "execve", "evt.num": 42, "evt.time": 1700000000000000000, "evt.res": "SUCCESS", "evt.rawres": 0,
    "proc.pid": 4242, "proc.name": "ls", "proc.exe": "ls", "proc.exepath": "/usr/bin/ls",
    "proc.cmdline": "ls -la", "proc.args": "-la", "proc.cwd": "/app", "proc.tty": 0, "proc.sid": 1,
    "proc.aname": ["bash", "containerd-shim", "systemd"], "proc.apid": [4000, 300, 1],
    "proc.aexe": ["/bin/bash", "/usr/bin/containerd-shim-runc-v2", "/sbin/init"],
    "proc.aexepath": ["/bin/bash", "/usr/bin/containerd-shim-runc-v2", "/sbin/init"],
    "proc.acmdline": ["bash", "containerd-shim -namespace k8s.io", "systemd"],
    "proc.is_exe_upper_layer": false, "proc.is_exe_from_memfd": false,
    "user.uid": 0, "user.name": "root", "user.loginuid": -1, "user.loginname": "",
    "group.gid": 0, "group.name": "root",
    "container.id": "0123456789ab", "container.name": "web", "container.image": "docker.io/library/nginx:1.27",
    "container.image.repository": "docker.io/library/nginx", "container.image.tag": "1.27",
    "container.privileged": false, "k8s.ns.name": "shop", "k8s.pod.name": "web-7d4b9c",
    "k8s.pod.labels": {"app": "web", "tier": "front"}
}"#;

/// An outbound TCP connection from a host process.
pub const CONNECT_ON_HOST: &str = r#"{
    "evt.type": "connect", "evt.num": 43, "evt.res": "SUCCESS", "evt.rawres": 0,
    "proc.pid": 5000, "proc.name": "curl", "proc.exe": "curl", "proc.exepath": "/usr/bin/curl",
    "proc.cmdline": "curl https://example.com", "proc.args": "https://example.com",
    "proc.aname": ["bash", "sshd", "systemd"], "user.uid": 1000, "user.name": "alice", "user.loginuid": 1000,
    "container.id": "host",
    "fd.cip": "10.0.0.5", "fd.cport": 40000, "fd.sip": "203.0.113.7", "fd.sport": 443,
    "fd.lip": "10.0.0.5", "fd.lport": 40000, "fd.rip": "203.0.113.7", "fd.rport": 443,
    "fd.l4proto": "tcp", "fd.typechar": "4", "fd.type": "ipv4", "fd.sockfamily": "ip",
    "fd.name": "10.0.0.5:40000->203.0.113.7:443"
}"#;
