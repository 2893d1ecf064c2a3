//! CEF encoding (ArcSight Common Event Format, version 0) inside RFC 5424 syslog messages, as
//! Microsoft Sentinel's CommonSecurityLog reads it.
//!
//! `CEF:0|Peregrine|peregrine|<version>|<signature id>|<name>|<severity>|<extension>`
//!
//! Escaping: in the header `\` -> `\\` and `|` -> `\|` (CR/LF become spaces: a header is one
//! line); in extension values `\` -> `\\`, `=` -> `\=`, LF -> `\n`, CR -> `\r` (`|` needs no
//! escape there). Extension keys are fixed ASCII names from CommonSecurityLog's CEF mapping.

use std::fmt::Write as _;

use peregrine_proto::{Event, Kind, Process, v1::agent_status::Phase};

use super::route::priority_rank;
use crate::timefmt;

pub const VENDOR: &str = "Peregrine";
pub const PRODUCT: &str = "peregrine";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// CEF severity (0-10) of a Falco priority: Emergency 10, Alert 9, Critical 9, Error 8,
/// Warning 6, Notice 4, Informational 3, Debug 1; an unknown priority is 5 (medium).
pub fn falco_severity(priority: &str) -> u8 {
    match priority_rank(priority) {
        Some(0) => 10,
        Some(1 | 2) => 9,
        Some(3) => 8,
        Some(4) => 6,
        Some(5) => 4,
        Some(6) => 3,
        Some(7) => 1,
        _ => 5,
    }
}

/// CEF severity of any event: alerts by priority; exec 3, connection 3, container started 3
/// (5 when privileged), loss 5 (events were not seen), fork/exit/status 1.
pub fn severity(e: &Event) -> u8 {
    match &e.kind {
        Some(Kind::Alert(a)) => falco_severity(&a.priority),
        Some(Kind::Exec(_)) | Some(Kind::Connection(_)) => 3,
        Some(Kind::Loss(_)) => 5,
        Some(Kind::ContainerStarted(_)) if e.privilege.is_empty() => 3,
        Some(Kind::ContainerStarted(_)) => 5,
        _ => 1,
    }
}

/// Syslog severity (RFC 5424 PRI) for a CEF severity.
pub fn syslog_severity(cef: u8) -> u8 {
    match cef {
        10 => 1,    // alert
        9 => 2,     // critical
        8 => 3,     // error
        6 | 7 => 4, // warning
        4 | 5 => 5, // notice
        2 | 3 => 6, // informational
        _ => 7,     // debug
    }
}

pub fn escape_header(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

pub fn escape_ext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// The command line as one string: argv joined by spaces (elements are not quoted).
pub fn cmdline(p: &Process) -> String {
    p.argv.join(" ")
}

struct Ext(String);

impl Ext {
    fn add(&mut self, key: &str, value: impl std::fmt::Display) {
        let value = value.to_string();
        if value.is_empty() {
            return;
        }
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{key}={}", escape_ext(&value));
    }
    fn labelled(&mut self, key: &str, label: &str, value: impl std::fmt::Display) {
        let value = value.to_string();
        if value.is_empty() {
            return;
        }
        self.add(&format!("{key}Label"), label);
        self.add(key, value);
    }
}

/// The signature id and name of an event (header fields 5 and 6).
fn signature(e: &Event) -> (String, String) {
    let (id, name) = match &e.kind {
        Some(Kind::Exec(_)) => ("exec", "Process executed"),
        Some(Kind::Fork(_)) => ("fork", "Process forked"),
        Some(Kind::Exit(_)) => ("exit", "Process exited"),
        Some(Kind::Connection(_)) => ("connection", "Network connection"),
        Some(Kind::ContainerStarted(_)) => ("container_started", "Container started"),
        Some(Kind::Loss(_)) => ("loss", "Events lost"),
        Some(Kind::Status(_)) => ("status", "Agent status"),
        Some(Kind::Alert(a)) => return (a.rule.clone(), a.rule.clone()),
        None => ("unknown", "Unknown event"),
    };
    (id.into(), name.into())
}

fn process_ext(x: &mut Ext, p: &Process) {
    x.add("spid", p.pid);
    x.add("sproc", &p.comm);
    x.add("suid", p.creds.as_ref().map(|c| c.uid).map(|u| u.to_string()).unwrap_or_default());
    x.add("filePath", &p.exe);
    x.labelled("cs2", "execId", &p.exec_id);
    x.labelled("cs3", "cmdline", cmdline(p));
    x.labelled("cs4", "parentExecId", &p.parent_exec_id);
    x.labelled("cs5", "cwd", &p.cwd);
    x.labelled("cn1", "ppid", p.ppid);
}

/// Container and pod context, in vendor extension keys (CEF's custom dictionary: Sentinel
/// keeps them in CommonSecurityLog.AdditionalExtensions).
fn container_ext(x: &mut Ext, e: &Event) {
    if let Some(c) = &e.container {
        x.add("PeregrineContainerId", &c.id);
        x.add("PeregrineContainerName", &c.name);
        x.add("PeregrineImage", &c.image);
        if let Some(p) = &c.pod {
            x.add("PeregrinePod", &p.name);
            x.add("PeregrineNamespace", &p.namespace);
            x.add("PeregrinePodUid", &p.uid);
        }
    }
    x.add("PeregrineEnrichment", &e.enrichment);
    x.add("PeregrinePrivilege", e.privilege.join(","));
}

/// The CEF message of one event.
pub fn encode(e: &Event) -> String {
    let (sig, name) = signature(e);
    let mut x = Ext(String::new());
    x.add("rt", timefmt::unix_millis(e.time_unix_nano));
    x.add("externalId", &e.id);
    x.add("dvchost", &e.node);
    x.add("cat", e.kind_name());
    x.labelled("cs1", "cluster", &e.cluster);
    container_ext(&mut x, e);
    match &e.kind {
        Some(Kind::Exec(v)) => {
            if let Some(p) = &v.process {
                process_ext(&mut x, p);
            }
        }
        Some(Kind::Fork(v)) => {
            if let Some(p) = &v.process {
                process_ext(&mut x, p);
            }
        }
        Some(Kind::Exit(v)) => {
            if let Some(p) = &v.process {
                process_ext(&mut x, p);
            }
            x.labelled("cn2", "exitCode", v.exit_code);
            x.labelled("cn3", "signal", v.signal);
        }
        Some(Kind::Connection(c)) => {
            if let Some(p) = &c.process {
                process_ext(&mut x, p);
            }
            x.add("src", &c.local_ip);
            x.add("spt", c.local_port);
            x.add("dst", &c.remote_ip);
            x.add("dpt", c.remote_port);
            x.add("proto", c.protocol.to_ascii_uppercase());
            x.add("act", &c.evt_type);
            x.add("outcome", &c.outcome);
        }
        Some(Kind::Alert(a)) => {
            if let Some(p) = &a.process {
                process_ext(&mut x, p);
            }
            x.add("suser", a.fields.get("user.name").cloned().unwrap_or_default());
            x.add("msg", &a.output);
            x.add("cnt", a.count);
            x.labelled("cs6", "tags", a.tags.join(","));
            x.labelled("flexString1", "priority", &a.priority);
            x.labelled("flexString2", "triggerEventId", &a.event_id);
        }
        Some(Kind::Loss(l)) if l.gap_end_unix_nano > 0 => {
            // An observation gap: its bounds in CEF's own start/end (epoch milliseconds).
            x.add("msg", format!("no agent observed this node: {}", l.detail));
            x.add("reason", &l.reason);
            x.add("start", l.gap_start_unix_nano / 1_000_000);
            x.add("end", l.gap_end_unix_nano / 1_000_000);
        }
        Some(Kind::Loss(l)) => {
            x.add("msg", format!("{} events lost: {}", l.count, l.reason));
            x.add("reason", &l.reason);
            x.add("cnt", l.count);
            x.labelled("cn2", "totalLost", l.total);
        }
        Some(Kind::Status(s)) => {
            let phase = Phase::try_from(s.phase).map(|p| p.as_str_name()).unwrap_or("PHASE_UNSPECIFIED");
            x.add("msg", format!("agent {} {phase}", s.version));
            x.labelled("cn2", "kernelRecordsLost", s.kernel_records_lost);
            x.labelled("cn3", "eventsDropped", s.events_dropped);
        }
        Some(Kind::ContainerStarted(s)) => {
            let name = e.container.as_ref().map(|c| c.name.as_str()).unwrap_or_default();
            x.add("msg", format!("container {name} started"));
            x.labelled("cn1", "pid", s.pid);
        }
        None => {}
    }
    format!(
        "CEF:0|{VENDOR}|{PRODUCT}|{}|{}|{}|{}|{}",
        escape_header(VERSION),
        escape_header(&sig),
        escape_header(&name),
        severity(e),
        x.0
    )
}

/// An RFC 5424 header field: printable US-ASCII without spaces, at most `max` bytes, `-` if empty.
fn header_field(s: &str, max: usize) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).take(max).collect();
    if out.is_empty() {
        out.push('-');
    }
    out
}

/// The RFC 5424 message (no framing): `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID - CEF...`,
/// with the event's own time and node, and MSGID = the event kind.
pub fn rfc5424(e: &Event, facility: u8, app_name: &str) -> String {
    let cef = encode(e);
    let pri = u16::from(facility) * 8 + u16::from(syslog_severity(severity(e)));
    format!(
        "<{pri}>1 {} {} {} - {} - {cef}",
        timefmt::rfc3339(e.time_unix_nano, 6),
        header_field(&e.node, 255),
        header_field(app_name, 48),
        header_field(e.kind_name(), 32),
    )
}

/// RFC 6587 octet counting: `LEN SP MSG`.
pub fn frame(msg: &str) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_proto::{Credentials, ProcessExec, v1::Alert};

    pub(crate) fn sample_exec() -> Event {
        Event {
            id: "0190a1b2-c3d4-8e5f-8a6b-7c8d9e0f1a2b".into(),
            seq: 7,
            time_unix_nano: 1_795_456_800_123_456_789,
            node: "node-1".into(),
            cluster: "prod|eu=1".into(),
            kind: Some(Kind::Exec(ProcessExec {
                process: Some(Process {
                    exec_id: "node-1:42:100:200".into(),
                    pid: 42,
                    ppid: 1,
                    comm: "sh".into(),
                    exe: "/bin/sh".into(),
                    argv: vec!["sh".into(), "-c".into(), "a|b k=v back\\slash\nline2\r".into()],
                    creds: Some(Credentials { uid: 1000, ..Default::default() }),
                    ..Default::default()
                }.into()),
                ancestors: vec![],
            })),
            ..Default::default()
        }
    }

    #[test]
    fn escapes_header_and_extension() {
        assert_eq!(escape_header("a|b\\c\nd"), "a\\|b\\\\c d");
        assert_eq!(escape_ext("a=b\\c\nd\re|f"), "a\\=b\\\\c\\nd\\re|f");
    }

    #[test]
    fn severity_mapping() {
        let got: Vec<u8> = super::super::route::PRIORITIES.iter().map(|p| falco_severity(p)).collect();
        assert_eq!(got, [10, 9, 9, 8, 6, 4, 3, 1]);
        assert_eq!(falco_severity("info"), 3);
        assert_eq!(falco_severity("bogus"), 5);
    }

    #[test]
    fn exec_message_is_exact() {
        let e = sample_exec();
        assert_eq!(
            rfc5424(&e, 16, "peregrine"),
            format!(
                "<134>1 2026-11-23T18:00:00.123456Z node-1 peregrine - exec - CEF:0|Peregrine|peregrine|{VERSION}|exec|Process executed|3|\
rt=1795456800123 externalId=0190a1b2-c3d4-8e5f-8a6b-7c8d9e0f1a2b dvchost=node-1 cat=exec cs1Label=cluster cs1=prod|eu\\=1 \
spid=42 sproc=sh suid=1000 filePath=/bin/sh cs2Label=execId cs2=node-1:42:100:200 cs3Label=cmdline cs3=sh -c a|b k\\=v back\\\\slash\\nline2\\r \
cn1Label=ppid cn1=1"
            )
        );
        let framed = frame("<1>1 x");
        assert_eq!(framed, b"6 <1>1 x");
    }

    #[test]
    fn container_context_in_vendor_keys() {
        let mut e = sample_exec();
        e.container = Some(peregrine_proto::Container {
            id: "6be1d2d1".into(),
            name: "web".into(),
            image: "localhost/busybox:latest".into(),
            pod: Some(peregrine_proto::Pod { name: "web-1".into(), namespace: "shop".into(), uid: "u-1".into(), ..Default::default() }),
            ..Default::default()
        });
        e.enrichment = "complete".into();
        e.privilege = vec!["privileged".into(), "host_pid".into()];
        let line = encode(&e);
        let want = "PeregrineContainerId=6be1d2d1 PeregrineContainerName=web PeregrineImage=localhost/busybox:latest \
PeregrinePod=web-1 PeregrineNamespace=shop PeregrinePodUid=u-1 PeregrineEnrichment=complete PeregrinePrivilege=privileged,host_pid";
        assert!(line.contains(want), "{line}");
    }

    #[test]
    fn alert_header_is_escaped() {
        let e = Event {
            id: "a1".into(),
            kind: Some(Kind::Alert(Alert {
                rule: "Shell | in \\ container".into(),
                priority: "Critical".into(),
                output: "x=1".into(),
                count: 1,
                ..Default::default()
            })),
            ..Default::default()
        };
        let m = encode(&e);
        assert!(m.starts_with(&format!("CEF:0|Peregrine|peregrine|{VERSION}|Shell \\| in \\\\ container|Shell \\| in \\\\ container|9|")), "{m}");
        assert!(m.contains(" msg=x\\=1 cnt=1 "), "{m}");
    }

    #[test]
    fn observation_gap_carries_its_bounds_in_start_and_end() {
        let e = Event {
            id: "g1".into(),
            kind: Some(Kind::Loss(peregrine_proto::Loss {
                reason: "observation_gap".into(),
                gap_start_unix_nano: 1_795_456_800_123_456_789,
                gap_end_unix_nano: 1_795_456_805_999_000_000,
                detail: "previous agent 0.1.0 stopped".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let m = encode(&e);
        assert!(m.contains("|loss|Events lost|5|"), "{m}");
        assert!(
            m.contains(" msg=no agent observed this node: previous agent 0.1.0 stopped reason=observation_gap start=1795456800123 end=1795456805999"),
            "{m}"
        );
        assert!(!m.contains("cnt="), "a gap has no count: {m}");
    }
}
