//! CEF over syslog to a real rsyslog (Debian's), over TCP and over TLS: the exact messages
//! received, with CEF escaping of `|`, `=`, `\` and a newline inside argv.

// Test scaffolding: a failed step stops the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use peregrine_collector::output::syslog::CefSyslogSettings;
use peregrine_proto::Event;
use support::*;

const V: &str = env!("CARGO_PKG_VERSION");

fn events() -> Vec<Event> {
    vec![
        exec_event("e-1", 1, &["sh", "-c", "echo a|b k=v C:\\dir\nnext"]),
        alert_event("e-2", 2, "Shell in container | sh=bash \\ test", "Critical"),
    ]
}

fn expected_cef() -> [String; 2] {
    [
        format!(
            "CEF:0|Peregrine|peregrine|{V}|exec|Process executed|3|rt=1795456800123 externalId=e-1 dvchost=node-1 cat=exec \
cs1Label=cluster cs1=prod spid=4242 sproc=sh suid=1000 filePath=/usr/bin/sh cs2Label=execId cs2=node-1:4242:100:200 \
cs3Label=cmdline cs3=sh -c echo a|b k\\=v C:\\\\dir\\nnext cs4Label=parentExecId cs4=node-1:1:1:2 cs5Label=cwd cs5=/root \
cn1Label=ppid cn1=1"
        ),
        format!(
            "CEF:0|Peregrine|peregrine|{V}|Shell in container \\| sh=bash \\\\ test|Shell in container \\| sh=bash \\\\ test|9|\
rt=1795456800123 externalId=e-2 dvchost=node-1 cat=alert cs1Label=cluster cs1=prod spid=4242 sproc=sh suid=1000 \
filePath=/usr/bin/sh cs2Label=execId cs2=node-1:4242:100:200 cs3Label=cmdline cs3=sh -c id cs4Label=parentExecId \
cs4=node-1:1:1:2 cs5Label=cwd cs5=/root cn1Label=ppid cn1=1 suser=root msg=Shell spawned (user\\=root cmd\\=sh -c id) cnt=1 \
cs6Label=tags cs6=container,mitre_execution flexString1Label=priority flexString1=Critical flexString2Label=triggerEventId \
flexString2=trigger-1"
        ),
    ]
}

fn expected_raw() -> Vec<String> {
    let [exec, alert] = expected_cef();
    vec![
        format!("<134>1 2026-11-23T18:00:00.123457Z node-1 peregrine - exec - {exec}"),
        format!("<130>1 2026-11-23T18:00:00.123458Z node-1 peregrine - alert - {alert}"),
    ]
}

fn expected_parsed() -> Vec<String> {
    let [exec, alert] = expected_cef();
    vec![
        format!("134|2026-11-23T18:00:00.123457Z|node-1|peregrine|-|exec|-|{exec}"),
        format!("130|2026-11-23T18:00:00.123458Z|node-1|peregrine|-|alert|-|{alert}"),
    ]
}

fn settings(toml_text: &str) -> CefSyslogSettings {
    toml::from_str(toml_text).unwrap()
}

async fn deliver(s: &CefSyslogSettings, rsyslog: &Rsyslog) {
    let sink = s.build("cef", &fast_retry()).unwrap();
    let (ctx, metrics) = ctx("cef", None, None);
    tokio::time::timeout(std::time::Duration::from_secs(20), sink.send(&events(), &ctx)).await.unwrap().unwrap();
    assert_eq!(metrics.sent_count("cef"), 2);
    let (raw, parsed) = rsyslog.wait_lines(2);
    assert_eq!(raw, expected_raw(), "the messages as rsyslog received them");
    assert_eq!(parsed, expected_parsed(), "rsyslog's own parse of the RFC 5424 fields");
    assert!(!raw.iter().any(|l| l.contains("#012")), "no raw control character reached rsyslog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cef_over_tcp_reaches_rsyslog_exactly() {
    let dir = TempDir::new("cef-tcp");
    let rsyslog = Rsyslog::start(dir.path(), None);
    let s = settings(&format!("address = \"127.0.0.1:{}\"\n", rsyslog.port));
    deliver(&s, &rsyslog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cef_over_tls_reaches_rsyslog_exactly() {
    let dir = TempDir::new("cef-tls");
    let ca = TestCa::new(dir.path());
    let rsyslog = Rsyslog::start(dir.path(), Some(&ca));
    let s = settings(&format!("address = \"127.0.0.1:{}\"\ntls = true\nca_file = \"{}\"\n", rsyslog.port, ca.ca_pem.display()));
    deliver(&s, &rsyslog).await;

    // A client that does not trust the receiver's CA fails clearly, naming the address.
    let other = TestCa::new(&dir.path().join("other").tap_mkdir());
    let s = settings(&format!("address = \"127.0.0.1:{}\"\ntls = true\nca_file = \"{}\"\n", rsyslog.port, other.ca_pem.display()));
    let sink = s.build("cef", &peregrine_collector::config::RetrySettings { max_retries: 1, ..fast_retry() }).unwrap();
    let (ctx, _) = ctx("cef", None, None);
    let err = sink.send(&events(), &ctx).await.unwrap_err().to_string();
    assert!(err.contains(&format!("127.0.0.1:{}", rsyslog.port)) && err.contains("TLS handshake"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_when_the_receiver_restarts() {
    let dir = TempDir::new("cef-restart");
    let mut rsyslog = Rsyslog::start(dir.path(), None);
    let port = rsyslog.port;
    let s = settings(&format!("address = \"127.0.0.1:{port}\"\n"));
    let sink = s.build("cef", &fast_retry()).unwrap();
    let (ctx, metrics) = ctx("cef", None, None);
    sink.send(&events()[..1], &ctx).await.unwrap();
    rsyslog.wait_lines(1);
    rsyslog.daemon.stop();
    // The same port, a new daemon: the kept connection is dead and must be noticed.
    let restarted = Rsyslog::start_on(dir.path(), None, port, "2");
    tokio::time::timeout(std::time::Duration::from_secs(20), sink.send(&events()[1..], &ctx)).await.unwrap().unwrap();
    let (raw, _) = restarted.wait_lines(1);
    assert_eq!(raw, expected_raw()[1..]);
    assert_eq!(metrics.sent_count("cef"), 2);
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
