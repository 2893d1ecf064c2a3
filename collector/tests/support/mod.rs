//! Shared pieces of the collector's tests: tool lookup through xtask/tools.toml, per-test
//! directories, bounded waits, a throwaway CA, daemons stopped by PID, sample events.
// Test scaffolding: a failed set-up step should stop the test with its reason.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use peregrine_collector::{
    config::RetrySettings,
    output::{Ctx, OutputMetrics, deadletter::DeadLetter},
};
use peregrine_proto::{
    Ancestor, Credentials, Event, Kind, Namespaces, Process, ProcessExec, ProcessExit,
    v1::{Alert, Connection, Container, Pod, SecurityContext},
};

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
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // Daemons live in sbin, which a non-login PATH may lack.
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: run `cargo xtask setup` (or `cargo xtask test`)"))
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let p = std::env::temp_dir().join(format!("peregrine-{tag}-{}-{n}-{t}", std::process::id()));
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("an ephemeral port")
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

/// A CA and a server certificate for `localhost` and 127.0.0.1, as PEM files in `dir`.
pub struct TestCa {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl TestCa {
    pub fn new(dir: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "peregrine test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "localhost");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issuer = Issuer::new(ca, ca_key);
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let ca_pem = dir.join("ca.pem");
        let cert_pem = dir.join("server.pem");
        let key_pem = dir.join("server.key");
        std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
        std::fs::write(&cert_pem, cert.pem()).unwrap();
        std::fs::write(&key_pem, key.serialize_pem()).unwrap();
        Self { ca_pem, cert_pem, key_pem, cert_der: cert.der().to_vec(), key_der: key.serialize_der() }
    }
}

/// A daemon that forks into the background and writes its PID file; killed by that PID.
pub struct Daemon {
    pub name: &'static str,
    pub pid_file: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    pub fn stop(&mut self) {
        let Some(pid) = self.pid() else { return };
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        // Bounded: the daemon is not our child (it forked away); poll until it is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if nix::sys::signal::kill(pid, None).is_ok() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private rsyslogd on 127.0.0.1:`port`, writing what it receives to `raw.log` (the message
/// exactly as received, `%rawmsg%`) and `parsed.log` (its own parse of the RFC 5424 fields).
pub struct Rsyslog {
    pub daemon: Daemon,
    pub port: u16,
    pub raw_log: PathBuf,
    pub parsed_log: PathBuf,
}

impl Rsyslog {
    pub fn start(dir: &Path, tls: Option<&TestCa>) -> Self {
        Self::start_on(dir, tls, free_port(), "")
    }

    /// Starts one on a given port; `tag` keeps its files apart from an earlier instance's.
    pub fn start_on(dir: &Path, tls: Option<&TestCa>, port: u16, tag: &str) -> Self {
        let bin = tool("rsyslogd");
        if tls.is_some() {
            tool("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so");
        }
        let work = dir.join(format!("rsyslog-work{tag}"));
        std::fs::create_dir_all(&work).unwrap();
        let raw_log = dir.join(format!("raw{tag}.log"));
        let parsed_log = dir.join(format!("parsed{tag}.log"));
        let pid_file = dir.join(format!("rsyslogd{tag}.pid"));
        let (global_tls, module) = match tls {
            Some(ca) => (
                format!(
                    " DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\"",
                    ca.ca_pem.display(),
                    ca.cert_pem.display(),
                    ca.key_pem.display()
                ),
                "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")".to_owned(),
            ),
            None => (String::new(), "module(load=\"imtcp\")".to_owned()),
        };
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k"{global_tls})
{module}
template(name="raw" type="string" string="%rawmsg%\n")
template(name="parsed" type="string" string="%pri%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%msg%\n")
ruleset(name="fromnet") {{
  action(type="omfile" file="{raw}" template="raw")
  action(type="omfile" file="{parsed}" template="parsed")
}}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="fromnet")
"#,
            work = work.display(),
            raw = raw_log.display(),
            parsed = parsed_log.display(),
        );
        let conf_path = dir.join(format!("rsyslog{tag}.conf"));
        std::fs::write(&conf_path, conf).unwrap();
        let check = Command::new(&bin).arg("-N1").arg("-f").arg(&conf_path).output().unwrap();
        assert!(check.status.success(), "rsyslogd -N1 refused the config: {}", String::from_utf8_lossy(&check.stderr));
        let started = Command::new(&bin).arg("-f").arg(&conf_path).arg("-i").arg(&pid_file).output().unwrap();
        let daemon = Daemon { name: "rsyslogd", pid_file: pid_file.clone() };
        assert!(started.status.success(), "rsyslogd did not start: {}", String::from_utf8_lossy(&started.stderr));
        wait_for(Duration::from_secs(10), "rsyslogd to write its pid file", || daemon.pid());
        wait_for(Duration::from_secs(10), "rsyslogd to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        Self { daemon, port, raw_log, parsed_log }
    }

    pub fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Waits (bounded) until `n` lines are in both logs, and returns (raw, parsed).
    pub fn wait_lines(&self, n: usize) -> (Vec<String>, Vec<String>) {
        wait_for(Duration::from_secs(10), &format!("{n} messages at rsyslog"), || {
            let raw = Self::lines(&self.raw_log);
            let parsed = Self::lines(&self.parsed_log);
            (raw.len() >= n && parsed.len() >= n).then_some((raw, parsed))
        })
    }
}

/// An output context for driving a sink directly.
pub fn ctx(name: &str, dead_letter: Option<&Path>, max_event_bytes: Option<usize>) -> (Ctx, OutputMetrics) {
    let metrics = OutputMetrics::default();
    let ctx = Ctx {
        name: name.into(),
        metrics: metrics.clone(),
        dead_letter: DeadLetter::open(name, dead_letter).unwrap(),
        max_event_bytes,
    };
    (ctx, metrics)
}

pub fn fast_retry() -> RetrySettings {
    RetrySettings { max_retries: 4, initial_backoff_ms: 20, max_backoff_ms: 100, max_retry_after_ms: 5_000 }
}

pub const T0: i64 = 1_795_456_800_123_456_789; // 2026-11-23T18:00:00.123456789Z

pub fn process(pid: u32, argv: &[&str]) -> Process {
    Process {
        exec_id: format!("node-1:{pid}:100:200"),
        parent_exec_id: "node-1:1:1:2".into(),
        pid,
        tid: pid,
        ppid: 1,
        vpid: pid,
        start_boot_ns: 5_000_000_000,
        exec_boot_ns: 5_000_000_100,
        comm: argv.first().map(|a| a.rsplit('/').next().unwrap_or(a)).unwrap_or("x").chars().take(15).collect(),
        exe: "/usr/bin/sh".into(),
        filename: "/bin/sh".into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: "/root".into(),
        creds: Some(Credentials { uid: 1000, gid: 1000, euid: 0, egid: 0, loginuid: Some(1000), sessionid: Some(3), cap_effective: 0, cap_permitted: 0 }),
        ns: Some(Namespaces { pid: 4026531836, mnt: 4026531832, net: 4026531833, uts: 4026531838, ipc: 4026531839, user: 4026531837, cgroup: 4026531835 }),
        cgroup_id: 1,
        tty: String::new(),
        tty_nr: 0,
        partial: vec![],
        source: "exec".into(),
    }
}

pub fn envelope(id: &str, seq: u64, kind: Kind) -> Event {
    Event {
        id: id.into(),
        seq,
        time_unix_nano: T0 + seq as i64 * 1_000,
        boot_ns: 10_000_000_000,
        node: "node-1".into(),
        cluster: "prod".into(),
        agent_run: "run-1".into(),
        kind: Some(kind),
        ..Default::default()
    }
}

pub fn exec_event(id: &str, seq: u64, argv: &[&str]) -> Event {
    envelope(
        id,
        seq,
        Kind::Exec(ProcessExec {
            process: Some(process(4242, argv).into()),
            ancestors: vec![Ancestor { pid: 1, exec_id: "node-1:1:1:2".into(), comm: "bash".into(), exe: "/usr/bin/bash".into(), argv: vec!["bash".into()] }.into()],
        }),
    )
}

pub fn exit_event(id: &str, seq: u64) -> Event {
    envelope(
        id,
        seq,
        Kind::Exit(ProcessExit { process: Some(process(4242, &["sleep", "1"]).into()), exit_code: 0, signal: 9, core_dumped: false, duration_ns: 1_000_000 }),
    )
}

pub fn alert_event(id: &str, seq: u64, rule: &str, priority: &str) -> Event {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("proc.cmdline".to_owned(), "sh -c id".to_owned());
    fields.insert("user.name".to_owned(), "root".to_owned());
    envelope(
        id,
        seq,
        Kind::Alert(Alert {
            rule: rule.into(),
            priority: priority.into(),
            tags: vec!["container".into(), "mitre_execution".into()],
            output: "Shell spawned (user=root cmd=sh -c id)".into(),
            fields,
            container_id: "host".into(),
            count: 1,
            folded: false,
            event_id: "trigger-1".into(),
            process: Some(process(4242, &["sh", "-c", "id"]).into()),
        }),
    )
}
/// Every (evt_type, outcome) a connection event can have, for tests that cover them all.
pub const CONNECTION_CASES: &[(&str, &str)] = &[
    ("connect", "established"),
    ("connect", "refused"),
    ("connect", "reset"),
    ("connect", "timed_out"),
    ("connect", "unreachable"),
    ("connect", "aborted"),
    ("connect", "error"),
    ("connect", "in_progress"),
    ("connect", "denied"),
    ("accept", ""),
    ("listen", ""),
    ("sendto", ""),
    ("recvfrom", ""),
];

/// A connection event: `evt_type` connect/accept/listen/sendto, with Falco's direction.
pub fn connection_event(id: &str, seq: u64, evt_type: &str, outcome: &str) -> Event {
    let direction = match evt_type {
        "accept" | "recvfrom" => "inbound",
        "listen" => "listen",
        _ => "outbound",
    };
    envelope(
        id,
        seq,
        Kind::Connection(Connection {
            evt_type: evt_type.into(),
            direction: direction.into(),
            protocol: if evt_type == "sendto" { "udp" } else { "tcp" }.into(),
            family: "ipv4".into(),
            local_ip: "10.244.1.7".into(),
            local_port: if direction == "outbound" { 40112 } else { 8080 },
            remote_ip: if direction == "listen" { "0.0.0.0" } else { "203.0.113.9" }.into(),
            remote_port: if direction == "outbound" { 443 } else if direction == "listen" { 0 } else { 51000 },
            outcome: outcome.into(),
            error: match outcome {
                "refused" => 111,
                "denied" => 1,
                _ => 0,
            },
            remote_class: if direction == "listen" { "" } else { "public" }.into(),
            domain: if direction == "outbound" { "example.test".into() } else { String::new() },
            count: 1,
            process: Some(process(4343, &["curl", "https://example.test/"]).into()),
            owner_unknown: false,
            update: false,
            ..Default::default()
        }),
    )
}

/// `e` as it comes from a pod's container, privileged.
pub fn in_container(mut e: Event) -> Event {
    e.container = Some(Container {
        id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        name: "web".into(),
        runtime: "containerd".into(),
        image: "docker.io/library/nginx:1.27".into(),
        image_digest: "sha256:00aa".into(),
        pod: Some(Pod {
            name: "web-7d4b9c-x2x4z".into(),
            namespace: "shop".into(),
            uid: "6c1f1d3e-0000-4000-8000-000000000001".into(),
            labels: [("app".to_owned(), "web".to_owned())].into_iter().collect(),
            service_account: "web".into(),
            workload_kind: "Deployment".into(),
            workload_name: "web".into(),
        }),
        security: Some(SecurityContext { privileged: true, ..Default::default() }),
        sandbox: false,
        ..Default::default()
    });
    e.enrichment = "complete".into();
    e.privilege = vec!["privileged".into()];
    e
}

pub mod azure_standin;
