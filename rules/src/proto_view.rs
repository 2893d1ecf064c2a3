//! Peregrine's proto events as the engine sees them (feature `proto`): [`RuleEvent`] answers
//! [`EventView`] from an exec or connection event with values borrowed from it, plus the few
//! strings Falco defines as joins (`proc.cmdline`, `proc.args`, ancestors' command lines),
//! computed once per event. The agent evaluates its rules on it; the collector its outputs'
//! `filter` conditions.

use std::collections::HashMap;

use peregrine_proto::{Event, Kind, Process};

use crate::{EventType, EventView, FieldArg, FieldId, Value};

/// Falco's `proc.cmdline`: the comm, then argv[1..], space-separated.
fn cmdline(comm: &str, argv: &[String]) -> String {
    let mut s = comm.to_owned();
    for a in argv.iter().skip(1) {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// An exec or connection event as the rules engine sees it.
pub struct RuleEvent<'a> {
    event: &'a Event,
    /// `evt.hostname`: the event's node, unless the reader knows it apart (see [`Self::on_node`]).
    hostname: &'a str,
    evt_type: EventType,
    process: &'a Process,
    ancestors: &'a [peregrine_proto::SharedAncestor],
    conn: Option<Conn<'a>>,
    users: &'a HashMap<u32, String>,
    cmdline: String,
    args: String,
    cwd: String,
    ancestor_cmdlines: Vec<String>,
    /// `k8s.pod.labels` elements, `key:value`, made once (empty outside pods).
    pod_labels: Vec<String>,
}

/// A connection's endpoints, parsed once, as client and server (Falco's view).
struct Conn<'a> {
    c: &'a peregrine_proto::Connection,
    local: std::net::IpAddr,
    remote: std::net::IpAddr,
    name: String,
}

impl<'a> RuleEvent<'a> {
    pub fn new(event: &'a Event, users: &'a HashMap<u32, String>) -> Option<Self> {
        let (evt_type, process, ancestors, conn) = match &event.kind {
            Some(Kind::Exec(exec)) => (EventType::Execve, exec.process.as_ref()?, exec.ancestors.as_slice(), None),
            Some(Kind::Connection(c)) => {
                let evt_type = match c.evt_type.as_str() {
                    "connect" => EventType::Connect,
                    "accept" => EventType::Accept,
                    "listen" => EventType::Listen,
                    // sendto and others: no Falco rule type of ours.
                    _ => return None,
                };
                let local = c.local_ip.parse().ok()?;
                let remote = c.remote_ip.parse().ok()?;
                let ((cip, cport), (sip, sport)) = if c.direction == "inbound" {
                    ((&c.remote_ip, c.remote_port), (&c.local_ip, c.local_port))
                } else {
                    ((&c.local_ip, c.local_port), (&c.remote_ip, c.remote_port))
                };
                let name = format!("{cip}:{cport}->{sip}:{sport}");
                (evt_type, c.process.as_ref()?, &[][..], Some(Conn { c, local, remote, name }))
            }
            _ => return None,
        };
        Some(Self {
            event,
            hostname: &event.node,
            evt_type,
            process,
            ancestors,
            conn,
            users,
            cmdline: cmdline(&process.comm, &process.argv),
            args: process.argv.get(1..).map(|a| a.join(" ")).unwrap_or_default(),
            // Falco's directories end with a slash.
            cwd: if process.cwd.ends_with('/') { process.cwd.clone() } else { format!("{}/", process.cwd) },
            ancestor_cmdlines: ancestors.iter().map(|a| cmdline(&a.comm, &a.argv)).collect(),
            pod_labels: event
                .container
                .as_ref()
                .and_then(|c| c.pod.as_ref())
                .map(|p| p.labels.iter().map(|(k, v)| format!("{k}:{v}")).collect())
                .unwrap_or_default(),
        })
    }

    /// The node the event comes from, for an event that does not carry it yet: the agent
    /// adds its identity fields as it encodes an event, after the rules have seen it.
    pub fn on_node(mut self, hostname: &'a str) -> Self {
        self.hostname = hostname;
        self
    }

    fn pod(&self) -> Option<&'a peregrine_proto::Pod> {
        self.event.container.as_ref().and_then(|c| c.pod.as_ref())
    }

    /// A container field, `host` style: on the host (context complete, no container) Falco
    /// reports `host` for the id and name; with no context at all the value is absent.
    fn container_str(&self, f: impl Fn(&'a peregrine_proto::Container) -> &'a str) -> Value<'a> {
        match &self.event.container {
            Some(c) => Value::Str(f(c)),
            None => Value::Absent,
        }
    }

    fn on_host(&self) -> bool {
        self.event.container.is_none() && self.event.enrichment == "complete"
    }

    /// (client, server) endpoints: the remote is the server for outbound connections.
    fn client_server(&self) -> Option<((std::net::IpAddr, u32), (std::net::IpAddr, u32))> {
        let n = self.conn.as_ref()?;
        let local = (n.local, n.c.local_port);
        let remote = (n.remote, n.c.remote_port);
        Some(if n.c.direction == "inbound" { (remote, local) } else { (local, remote) })
    }

    fn ancestor(&self, arg: FieldArg<'_>) -> Option<(usize, &'a peregrine_proto::Ancestor)> {
        match arg {
            FieldArg::Index(n) if n >= 1 => {
                let i = usize::try_from(n - 1).ok()?;
                self.ancestors.get(i).map(|a| (i, &**a))
            }
            _ => None,
        }
    }
}

/// Falco's `evt.res` for a connect: `SUCCESS`, or the errno's name the call returned.
fn evt_res(outcome: &str) -> &'static str {
    match outcome {
        "" | "established" => "SUCCESS",
        "in_progress" => "EINPROGRESS",
        "refused" => "ECONNREFUSED",
        "timed_out" => "ETIMEDOUT",
        "reset" => "ECONNRESET",
        "unreachable" => "EHOSTUNREACH",
        "denied" => "EPERM",
        _ => "EIO",
    }
}

/// Falco's `evt.rawres`: 0 on success, minus the errno otherwise.
fn evt_rawres(c: &peregrine_proto::Connection) -> i64 {
    match c.outcome.as_str() {
        "" | "established" => 0,
        "in_progress" => -115,
        _ if c.error != 0 => -i64::from(c.error),
        _ => -5,
    }
}

fn i64_of(v: u32) -> Value<'static> {
    Value::I64(i64::from(v))
}

impl EventView for RuleEvent<'_> {
    fn evt_type(&self) -> EventType {
        self.evt_type
    }

    fn field(&self, field: FieldId, arg: FieldArg<'_>) -> Value<'_> {
        let p = self.process;
        let creds = p.creds.as_ref();
        match field {
            FieldId::EvtTime => Value::U64(u64::try_from(self.event.time_unix_nano).unwrap_or(0)),
            FieldId::EvtNum => Value::U64(self.event.seq),
            FieldId::EvtRes => Value::Str(self.conn.as_ref().map_or("SUCCESS", |n| evt_res(&n.c.outcome))),
            FieldId::EvtRawres => Value::I64(self.conn.as_ref().map_or(0, |n| evt_rawres(n.c))),
            FieldId::EvtHostname => Value::Str(self.hostname),
            FieldId::ProcPid => i64_of(p.pid),
            FieldId::ProcName => Value::Str(&p.comm),
            FieldId::ProcExe => p.argv.first().map_or(Value::Absent, |a| Value::Str(a)),
            FieldId::ProcExepath => Value::Str(&p.exe),
            FieldId::ProcCmdline => Value::Str(&self.cmdline),
            FieldId::ProcArgs => Value::Str(&self.args),
            FieldId::ProcCwd => Value::Str(&self.cwd),
            FieldId::ProcTty => Value::U64(u64::from(p.tty_nr)),
            FieldId::ProcIsExeFromMemfd => Value::Bool(p.exe.starts_with("/memfd:")),
            FieldId::ProcAname => self.ancestor(arg).map_or(Value::Absent, |(_, a)| Value::Str(&a.comm)),
            FieldId::ProcApid => self.ancestor(arg).map_or(Value::Absent, |(_, a)| i64_of(a.pid)),
            FieldId::ProcAexe => {
                self.ancestor(arg).and_then(|(_, a)| a.argv.first()).map_or(Value::Absent, |s| Value::Str(s))
            }
            FieldId::ProcAexepath => self.ancestor(arg).map_or(Value::Absent, |(_, a)| Value::Str(&a.exe)),
            FieldId::ProcAcmdline => self
                .ancestor(arg)
                .and_then(|(i, _)| self.ancestor_cmdlines.get(i))
                .map_or(Value::Absent, |s| Value::Str(s)),
            FieldId::UserUid => creds.map_or(Value::Absent, |c| Value::U64(u64::from(c.uid))),
            FieldId::UserName => {
                creds.and_then(|c| self.users.get(&c.uid)).map_or(Value::Absent, |n| Value::Str(n))
            }
            FieldId::UserLoginuid => creds.map_or(Value::Absent, |c| Value::I64(c.loginuid.map_or(-1, i64::from))),
            FieldId::UserLoginname => creds
                .and_then(|c| c.loginuid)
                .and_then(|uid| self.users.get(&uid))
                .map_or(Value::Absent, |n| Value::Str(n)),
            FieldId::GroupGid => creds.map_or(Value::Absent, |c| Value::U64(u64::from(c.gid))),
            // Falco's container.id and container.name are `host` for host processes.
            FieldId::ContainerId | FieldId::ContainerName if self.on_host() => Value::Str("host"),
            FieldId::ContainerId => self.container_str(|c| short_id(&c.id)),
            FieldId::ContainerName => self.container_str(|c| &c.name),
            FieldId::ContainerImage => self.container_str(|c| &c.image),
            FieldId::ContainerImageRepository => self.container_str(|c| image_parts(&c.image).0),
            FieldId::ContainerImageTag => self.container_str(|c| image_parts(&c.image).1),
            FieldId::ContainerImageDigest => self.container_str(|c| &c.image_digest),
            FieldId::ContainerPrivileged => match &self.event.container {
                Some(c) => Value::Bool(c.security.as_ref().is_some_and(|s| s.privileged)),
                None if self.on_host() => Value::Bool(false),
                None => Value::Absent,
            },
            FieldId::PeregrineContainerHostPid => match &self.event.container {
                Some(_) => Value::Bool(self.event.privilege.iter().any(|r| r == "host_pid")),
                None => Value::Absent,
            },
            FieldId::K8sNsName => self.pod().map_or(Value::Absent, |p| Value::Str(&p.namespace)),
            FieldId::K8sPodName => self.pod().map_or(Value::Absent, |p| Value::Str(&p.name)),
            FieldId::K8sPodUid => self.pod().map_or(Value::Absent, |p| Value::Str(&p.uid)),
            FieldId::K8sPodLabels => match arg {
                FieldArg::Index(i) => {
                    usize::try_from(i).ok().and_then(|i| self.pod_labels.get(i)).map_or(Value::Absent, |s| Value::Str(s))
                }
                _ => Value::Absent,
            },
            FieldId::K8sPodLabel => match arg {
                FieldArg::Key(k) => self.pod().and_then(|p| p.labels.get(k)).map_or(Value::Absent, |v| Value::Str(v)),
                _ => Value::Absent,
            },
            FieldId::PeregrineK8sSaName => self.pod().map_or(Value::Absent, |p| Value::Str(&p.service_account)),
            FieldId::PeregrineK8sWorkloadKind => self.pod().map_or(Value::Absent, |p| Value::Str(&p.workload_kind)),
            FieldId::PeregrineK8sWorkloadName => self.pod().map_or(Value::Absent, |p| Value::Str(&p.workload_name)),
            FieldId::PeregrineEnrichment if self.event.enrichment.is_empty() => Value::Str("none"),
            FieldId::PeregrineEnrichment => Value::Str(&self.event.enrichment),
            FieldId::FdCip => self.client_server().map_or(Value::Absent, |(c, _)| Value::Ip(c.0)),
            FieldId::FdSip => self.client_server().map_or(Value::Absent, |(_, s)| Value::Ip(s.0)),
            FieldId::FdCport => self.client_server().map_or(Value::Absent, |(c, _)| Value::U64(u64::from(c.1))),
            FieldId::FdSport => self.client_server().map_or(Value::Absent, |(_, s)| Value::U64(u64::from(s.1))),
            FieldId::FdLip => self.conn.as_ref().map_or(Value::Absent, |n| Value::Ip(n.local)),
            FieldId::FdRip => self.conn.as_ref().map_or(Value::Absent, |n| Value::Ip(n.remote)),
            FieldId::FdLport => self.conn.as_ref().map_or(Value::Absent, |n| Value::U64(u64::from(n.c.local_port))),
            FieldId::FdRport => self.conn.as_ref().map_or(Value::Absent, |n| Value::U64(u64::from(n.c.remote_port))),
            FieldId::FdL4proto => self.conn.as_ref().map_or(Value::Absent, |n| Value::Str(&n.c.protocol)),
            FieldId::FdTypechar => {
                self.conn.as_ref().map_or(Value::Absent, |n| Value::Str(if n.remote.is_ipv4() { "4" } else { "6" }))
            }
            FieldId::FdType => self.conn.as_ref().map_or(Value::Absent, |n| Value::Str(&n.c.family)),
            FieldId::FdName => self.conn.as_ref().map_or(Value::Absent, |n| Value::Str(&n.name)),
            FieldId::FdSockfamily => self.conn.as_ref().map_or(Value::Absent, |_| Value::Str("ip")),
            FieldId::PeregrineNetDestClass => self.conn.as_ref().map_or(Value::Absent, |n| Value::Str(&n.c.remote_class)),
            FieldId::PeregrineNetOutcome => self.conn.as_ref().map_or(Value::Absent, |n| Value::Str(&n.c.outcome)),
            FieldId::PeregrineNetCount => self.conn.as_ref().map_or(Value::Absent, |n| Value::U64(n.c.count.max(1))),
            FieldId::PeregrineNetSummary => self.conn.as_ref().map_or(Value::Absent, |n| Value::Bool(n.c.summary)),
            _ => Value::Absent,
        }
    }
}

/// Falco's container.id: the first 12 characters of a runtime id.
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// (repository, tag) of an image reference: `registry:5000/app:1.2@sha256:..` gives
/// (`registry:5000/app`, `1.2`); no tag gives an empty tag.
fn image_parts(image: &str) -> (&str, &str) {
    let name = image.split('@').next().unwrap_or(image);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
        None => (name, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_proto::{Ancestor, Credentials, ProcessExec};

    fn exec_event() -> Event {
        Event {
            id: "e1".into(),
            seq: 7,
            node: "n1".into(),
            kind: Some(Kind::Exec(ProcessExec {
                process: Some(Process {
                    pid: 42,
                    comm: "nc".into(),
                    exe: "/usr/bin/nc.openbsd".into(),
                    argv: vec!["nc".into(), "-l".into(), "4444".into()],
                    cwd: "/tmp".into(),
                    cgroup_id: 1,
                    creds: Some(Credentials { uid: 0, loginuid: None, ..Credentials::default() }),
                    ..Process::default()
                }.into()),
                ancestors: vec![
                    Ancestor { pid: 41, comm: "bash".into(), argv: vec!["bash".into(), "-i".into()], ..Ancestor::default() }.into(),
                    Ancestor { pid: 1, comm: "sshd".into(), argv: vec!["/usr/sbin/sshd".into()], ..Ancestor::default() }.into(),
                ],
            })),
            enrichment: "complete".into(),
            ..Event::default()
        }
    }

    #[test]
    fn the_hostname_is_the_events_node_unless_given_apart() {
        let mut e = exec_event();
        let users = HashMap::new();
        assert_eq!(RuleEvent::new(&e, &users).unwrap().field(FieldId::EvtHostname, FieldArg::None), Value::Str("n1"));
        // The agent's events get their node as they are encoded, after the rules saw them.
        e.node.clear();
        let v = RuleEvent::new(&e, &users).unwrap().on_node("node-7");
        assert_eq!(v.field(FieldId::EvtHostname, FieldArg::None), Value::Str("node-7"));
    }

    #[test]
    fn container_and_pod_fields() {
        let mut e = exec_event();
        e.container = Some(peregrine_proto::Container {
            id: "6be1d2d140c936c34ac9c67f27e133a9fc1432da9ad205b0ac2f4a22d9d68a77".into(),
            name: "web".into(),
            image: "registry:5000/shop/web:1.2@sha256:abcd".into(),
            image_digest: "sha256:abcd".into(),
            pod: Some(peregrine_proto::Pod {
                name: "web-1".into(),
                namespace: "shop".into(),
                uid: "u-1".into(),
                labels: [("app".to_owned(), "web".to_owned())].into_iter().collect(),
                service_account: "web-sa".into(),
                workload_kind: "Deployment".into(),
                workload_name: "web".into(),
            }),
            security: Some(peregrine_proto::SecurityContext { privileged: true, ..Default::default() }),
            ..Default::default()
        });
        e.privilege = vec!["privileged".into(), "host_pid".into()];
        let users = HashMap::new();
        let v = RuleEvent::new(&e, &users).unwrap();
        let f = |id| v.field(id, FieldArg::None);
        assert_eq!(f(FieldId::ContainerId), Value::Str("6be1d2d140c9"));
        assert_eq!(f(FieldId::ContainerName), Value::Str("web"));
        assert_eq!(f(FieldId::ContainerImageRepository), Value::Str("registry:5000/shop/web"));
        assert_eq!(f(FieldId::ContainerImageTag), Value::Str("1.2"));
        assert_eq!(f(FieldId::ContainerImageDigest), Value::Str("sha256:abcd"));
        assert_eq!(f(FieldId::ContainerPrivileged), Value::Bool(true));
        assert_eq!(f(FieldId::PeregrineContainerHostPid), Value::Bool(true));
        assert_eq!(f(FieldId::K8sNsName), Value::Str("shop"));
        assert_eq!(f(FieldId::K8sPodName), Value::Str("web-1"));
        assert_eq!(f(FieldId::PeregrineK8sWorkloadKind), Value::Str("Deployment"));
        assert_eq!(f(FieldId::PeregrineK8sSaName), Value::Str("web-sa"));
        assert_eq!(v.field(FieldId::K8sPodLabels, FieldArg::Index(0)), Value::Str("app:web"));
        assert_eq!(v.field(FieldId::K8sPodLabel, FieldArg::Key("app")), Value::Str("web"));
        assert_eq!(v.field(FieldId::K8sPodLabel, FieldArg::Key("nope")), Value::Absent);
        assert_eq!(image_parts("busybox"), ("busybox", ""));
        assert_eq!(image_parts("localhost:5000/busybox"), ("localhost:5000/busybox", ""));
        // No context at all: nothing is claimed, not even `host`.
        let mut unknown = exec_event();
        unknown.enrichment = "none".into();
        let v = RuleEvent::new(&unknown, &users).unwrap();
        assert_eq!(v.field(FieldId::ContainerId, FieldArg::None), Value::Absent);
        assert_eq!(v.field(FieldId::ContainerPrivileged, FieldArg::None), Value::Absent);
    }

    #[test]
    fn falco_semantics_of_process_fields() {
        let e = exec_event();
        let users = HashMap::from([(0, "root".to_owned())]);
        let v = RuleEvent::new(&e, &users).unwrap();
        assert_eq!(v.field(FieldId::ProcCmdline, FieldArg::None), Value::Str("nc -l 4444"));
        assert_eq!(v.field(FieldId::ProcArgs, FieldArg::None), Value::Str("-l 4444"));
        assert_eq!(v.field(FieldId::ProcExe, FieldArg::None), Value::Str("nc"));
        assert_eq!(v.field(FieldId::ProcExepath, FieldArg::None), Value::Str("/usr/bin/nc.openbsd"));
        assert_eq!(v.field(FieldId::ProcCwd, FieldArg::None), Value::Str("/tmp/"));
        assert_eq!(v.field(FieldId::ProcAname, FieldArg::Index(1)), Value::Str("bash"));
        assert_eq!(v.field(FieldId::ProcAname, FieldArg::Index(2)), Value::Str("sshd"));
        assert_eq!(v.field(FieldId::ProcAname, FieldArg::Index(3)), Value::Absent);
        assert_eq!(v.field(FieldId::ProcAcmdline, FieldArg::Index(1)), Value::Str("bash -i"));
        assert_eq!(v.field(FieldId::ProcApid, FieldArg::Index(1)), Value::I64(41));
        assert_eq!(v.field(FieldId::UserName, FieldArg::None), Value::Str("root"));
        assert_eq!(v.field(FieldId::UserLoginuid, FieldArg::None), Value::I64(-1));
        assert_eq!(v.field(FieldId::ContainerId, FieldArg::None), Value::Str("host"));
        assert_eq!(v.field(FieldId::K8sPodName, FieldArg::None), Value::Absent);
    }

    #[test]
    fn connection_fields_follow_falco() {
        let e = Event {
            kind: Some(Kind::Connection(peregrine_proto::Connection {
                evt_type: "connect".into(),
                direction: "outbound".into(),
                protocol: "tcp".into(),
                family: "ipv4".into(),
                local_ip: "198.18.0.1".into(),
                local_port: 40000,
                remote_ip: "169.254.169.254".into(),
                remote_port: 80,
                outcome: "established".into(),
                remote_class: "imds".into(),
                process: Some(Process { pid: 9, comm: "curl".into(), ..Process::default() }.into()),
                ..Default::default()
            })),
            ..Event::default()
        };
        let users = HashMap::new();
        let v = RuleEvent::new(&e, &users).unwrap();
        assert_eq!(v.evt_type(), EventType::Connect);
        assert_eq!(v.field(FieldId::FdSip, FieldArg::None), Value::Ip("169.254.169.254".parse().unwrap()));
        assert_eq!(v.field(FieldId::FdCip, FieldArg::None), Value::Ip("198.18.0.1".parse().unwrap()));
        assert_eq!(v.field(FieldId::FdSport, FieldArg::None), Value::U64(80));
        assert_eq!(v.field(FieldId::FdName, FieldArg::None), Value::Str("198.18.0.1:40000->169.254.169.254:80"));
        assert_eq!(v.field(FieldId::FdTypechar, FieldArg::None), Value::Str("4"));
        assert_eq!(v.field(FieldId::PeregrineNetDestClass, FieldArg::None), Value::Str("imds"));
        assert_eq!(v.field(FieldId::ProcName, FieldArg::None), Value::Str("curl"));
        assert_eq!(v.field(FieldId::EvtRes, FieldArg::None), Value::Str("SUCCESS"));
        assert_eq!(evt_res("refused"), "ECONNREFUSED");
        let refused = peregrine_proto::Connection { outcome: "refused".into(), error: 111, ..Default::default() };
        assert_eq!(evt_rawres(&refused), -111);
        // An event stands for one connection even when the count was left unset.
        assert_eq!(v.field(FieldId::PeregrineNetCount, FieldArg::None), Value::U64(1));
        assert_eq!(v.field(FieldId::PeregrineNetSummary, FieldArg::None), Value::Bool(false));
        let mut summary = e.clone();
        if let Some(Kind::Connection(c)) = &mut summary.kind {
            (c.summary, c.count) = (true, 250);
        }
        let v = RuleEvent::new(&summary, &users).unwrap();
        assert_eq!(v.field(FieldId::PeregrineNetCount, FieldArg::None), Value::U64(250));
        assert_eq!(v.field(FieldId::PeregrineNetSummary, FieldArg::None), Value::Bool(true));
    }

    #[test]
    fn status_events_are_not_viewed() {
        let e = Event { kind: Some(Kind::Status(Default::default())), ..Event::default() };
        assert!(RuleEvent::new(&e, &HashMap::new()).is_none());
    }
}
