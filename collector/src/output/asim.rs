//! ASIM rows for Microsoft Sentinel (docs/OUTPUTS.md has the column table).
//!
//! * exec -> ProcessEvent `ProcessCreated`, exit -> ProcessEvent `ProcessTerminated`, for the
//!   native table `ASimProcessEventLogs` (through the DCR stream `Custom-PeregrineProcessEvent`). Columns
//!   the native table implies are not sent: `Type` (the table), `EventSchema` (the table's
//!   schema), `EventUid` (the workspace's `_ItemId`), and the aliases (`Dvc`, `User`, ...).
//! * connection -> NetworkSession `EndpointNetworkSession`, for the native table
//!   `ASimNetworkSessionLogs`: the process side is Src for an outbound connect or datagram
//!   and Dst for an accept, a received datagram or a listener, named as ASIM's endpoint
//!   sessions do (`SrcAppName` the executable, `SrcAppId` the pid, `SrcAppType` `Process`):
//!   that table has no process columns. `Dvc` is a column of this table and is sent.
//! * alert -> the ASIM AlertEvent schema (0.1) in our own custom table `PeregrineAlerts_CL`
//!   (there is no native ASIM alert table), where `EventSchema` and `Dvc` are sent.
//!
//! Each table's columns are declared once more in `deploy/sentinel/peregrine-sentinel.json`
//! (the DCR's stream declarations); `collector/tests/sentinel_templates.rs` keeps the two equal.
//!
//! Peregrine reports numeric ids, not user names: `ActorUsername`/`TargetUsername` carry the
//! uid/euid as text (`Simple`), with the same value in `ActorUserId`/`TargetUserId` (`UID`).

use peregrine_proto::{Event, Kind, Process, ProcessExec, ProcessExit, v1::{Alert, Connection}};
use serde_json::{Map, Value, json};

use super::{cef, route::priority_rank};
use crate::timefmt;

pub const PROCESS_SCHEMA_VERSION: &str = "0.1.4";
pub const ALERT_SCHEMA_VERSION: &str = "0.1";
pub const NETWORK_SCHEMA_VERSION: &str = "0.2.6";
pub const VENDOR: &str = "Peregrine";
pub const PRODUCT: &str = "Peregrine";

/// Which table a row is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Process,
    Network,
    Alert,
}

/// The ASIM row of an event, or `None` for kinds ASIM has no schema for here.
pub fn row(e: &Event) -> Option<(Table, Value)> {
    match &e.kind {
        Some(Kind::Exec(x)) => Some((Table::Process, exec_row(e, x))),
        Some(Kind::Exit(x)) => Some((Table::Process, exit_row(e, x))),
        Some(Kind::Connection(c)) => Some((Table::Network, network_row(e, c))),
        Some(Kind::Alert(a)) => Some((Table::Alert, alert_row(e, a))),
        _ => None,
    }
}

fn time(t: i64) -> String {
    timefmt::rfc3339(t, 6)
}

fn common(e: &Event, m: &mut Map<String, Value>) {
    let t = time(e.time_unix_nano);
    m.insert("TimeGenerated".into(), json!(t));
    m.insert("EventStartTime".into(), json!(t));
    m.insert("EventEndTime".into(), json!(t));
    m.insert("EventOriginalUid".into(), json!(e.id));
    m.insert("EventOriginalType".into(), json!(e.kind_name()));
    m.insert("EventProduct".into(), json!(PRODUCT));
    m.insert("EventVendor".into(), json!(VENDOR));
    m.insert("EventProductVersion".into(), json!(cef::VERSION));
    m.insert("DvcHostname".into(), json!(e.node));
    m.insert("DvcOs".into(), json!("Linux"));
}

/// Wall-clock time of a boot-time instant, by the event's own pair of clocks.
fn boot_to_wall(e: &Event, boot: u64) -> Option<i64> {
    if boot == 0 || e.boot_ns == 0 {
        return None;
    }
    let delta = i64::try_from(e.boot_ns).ok()? - i64::try_from(boot).ok()?;
    Some(e.time_unix_nano - delta)
}

fn users(p: &Process, m: &mut Map<String, Value>) {
    let (uid, euid) = p.creds.as_ref().map_or((0, 0), |c| (c.uid, c.euid));
    m.insert("ActorUsername".into(), json!(uid.to_string()));
    m.insert("ActorUsernameType".into(), json!("Simple"));
    m.insert("ActorUserId".into(), json!(uid.to_string()));
    m.insert("ActorUserIdType".into(), json!("UID"));
    m.insert("TargetUsername".into(), json!(euid.to_string()));
    m.insert("TargetUsernameType".into(), json!("Simple"));
    m.insert("TargetUserId".into(), json!(euid.to_string()));
    m.insert("TargetUserIdType".into(), json!("UID"));
}

fn image(p: &Process) -> &str {
    if p.exe.is_empty() { &p.filename } else { &p.exe }
}

fn target(e: &Event, p: &Process, m: &mut Map<String, Value>) {
    m.insert("TargetProcessId".into(), json!(p.pid.to_string()));
    m.insert("TargetProcessName".into(), json!(image(p)));
    m.insert("TargetProcessCommandLine".into(), json!(cef::cmdline(p)));
    if !p.cwd.is_empty() {
        m.insert("TargetProcessCurrentDirectory".into(), json!(p.cwd));
    }
    if let Some(t) = boot_to_wall(e, p.start_boot_ns) {
        m.insert("TargetProcessCreationTime".into(), json!(time(t)));
    }
    m.insert("ParentProcessId".into(), json!(p.ppid.to_string()));
}

/// Our context that has no ASIM column.
fn additional(e: &Event, p: Option<&Process>, extra: Map<String, Value>) -> Value {
    let mut a = Map::new();
    a.insert("cluster".into(), json!(e.cluster));
    a.insert("agent_run".into(), json!(e.agent_run));
    a.insert("seq".into(), json!(e.seq));
    if let Some(p) = p {
        a.insert("exec_id".into(), json!(p.exec_id));
        a.insert("parent_exec_id".into(), json!(p.parent_exec_id));
        a.insert("tid".into(), json!(p.tid));
        a.insert("vpid".into(), json!(p.vpid));
        a.insert("comm".into(), json!(p.comm));
        a.insert("filename".into(), json!(p.filename));
        a.insert("argv".into(), json!(p.argv));
        a.insert("cgroup_id".into(), json!(p.cgroup_id));
        if !p.tty.is_empty() {
            a.insert("tty".into(), json!(p.tty));
        }
        if let Some(c) = &p.creds {
            a.insert("creds".into(), serde_json::to_value(c).unwrap_or(Value::Null));
        }
        if let Some(n) = &p.ns {
            a.insert("namespaces".into(), serde_json::to_value(n).unwrap_or(Value::Null));
        }
        if !p.partial.is_empty() {
            a.insert("partial".into(), json!(p.partial));
        }
        a.insert("source".into(), json!(p.source));
    }
    context(e, &mut a);
    a.extend(extra);
    Value::Object(a)
}

/// Container, pod and privilege context: ASIM's process schema has no columns for them.
pub(crate) fn context(e: &Event, a: &mut Map<String, Value>) {
    if let Some(c) = &e.container {
        a.insert("container".into(), serde_json::to_value(c).unwrap_or(Value::Null));
    }
    if !e.enrichment.is_empty() {
        a.insert("enrichment".into(), json!(e.enrichment));
    }
    if !e.privilege.is_empty() {
        a.insert("privilege".into(), json!(e.privilege));
    }
}

/// The columns every ProcessEvent row has: common, event, actor and target.
fn process_row(e: &Event, p: &Process, event_type: &str, result: &str) -> Map<String, Value> {
    let mut m = Map::new();
    common(e, &mut m);
    m.insert("EventCount".into(), json!(1));
    m.insert("EventType".into(), json!(event_type));
    m.insert("EventResult".into(), json!(result));
    m.insert("EventSeverity".into(), json!("Informational"));
    m.insert("EventSchemaVersion".into(), json!(PROCESS_SCHEMA_VERSION));
    users(p, &mut m);
    target(e, p, &mut m);
    m
}

fn exec_row(e: &Event, x: &ProcessExec) -> Value {
    let default = Process::default();
    let p = x.process.as_deref().unwrap_or(&default);
    let mut m = process_row(e, p, "ProcessCreated", "Success");
    // The acting process made the new one: for an exec, the parent.
    m.insert("ActingProcessId".into(), json!(p.ppid.to_string()));
    if let Some(parent) = x.ancestors.first() {
        m.insert("ActingProcessName".into(), json!(parent.exe));
        m.insert("ActingProcessCommandLine".into(), json!(parent.argv.join(" ")));
        m.insert("ParentProcessName".into(), json!(parent.exe));
    }
    let ancestors: Vec<Value> = x
        .ancestors
        .iter()
        .map(|a| json!({"pid": a.pid, "exec_id": a.exec_id, "comm": a.comm, "exe": a.exe, "argv": a.argv}))
        .collect();
    let mut extra = Map::new();
    extra.insert("ancestors".into(), Value::Array(ancestors));
    m.insert("AdditionalFields".into(), additional(e, Some(p), extra));
    Value::Object(m)
}

fn exit_row(e: &Event, x: &ProcessExit) -> Value {
    let default = Process::default();
    let p = x.process.as_deref().unwrap_or(&default);
    let mut m = process_row(e, p, "ProcessTerminated", "NA");
    // A process that exits ends itself.
    m.insert("ActingProcessId".into(), json!(p.pid.to_string()));
    m.insert("ActingProcessName".into(), json!(image(p)));
    let status = if x.signal != 0 { format!("signal {}", x.signal) } else { x.exit_code.to_string() };
    m.insert("TargetProcessStatusCode".into(), json!(status));
    let mut extra = Map::new();
    extra.insert("exit_code".into(), json!(x.exit_code));
    extra.insert("signal".into(), json!(x.signal));
    extra.insert("core_dumped".into(), json!(x.core_dumped));
    extra.insert("duration_ns".into(), json!(x.duration_ns));
    m.insert("AdditionalFields".into(), additional(e, Some(p), extra));
    Value::Object(m)
}

/// ASIM `EventSeverity` of a Falco priority: Emergency..Error High, Warning Medium, Notice Low,
/// Informational and Debug Informational; unknown Medium.
pub fn alert_severity(priority: &str) -> &'static str {
    match priority_rank(priority) {
        Some(0..=3) => "High",
        Some(4) => "Medium",
        Some(5) => "Low",
        Some(_) => "Informational",
        None => "Medium",
    }
}

fn alert_row(e: &Event, a: &Alert) -> Value {
    let mut m = Map::new();
    common(e, &mut m);
    m.insert("EventCount".into(), json!(a.count.max(1)));
    m.insert("EventType".into(), json!("Alert"));
    m.insert("EventResult".into(), json!("NA"));
    m.insert("EventSchema".into(), json!("AlertEvent"));
    m.insert("EventSchemaVersion".into(), json!(ALERT_SCHEMA_VERSION));
    m.insert("EventSeverity".into(), json!(alert_severity(&a.priority)));
    m.insert("EventOriginalSeverity".into(), json!(a.priority));
    m.insert("EventMessage".into(), json!(a.output));
    m.insert("Dvc".into(), json!(e.node));
    m.insert("AlertId".into(), json!(e.id));
    m.insert("AlertName".into(), json!(a.rule));
    m.insert("AlertDescription".into(), json!(a.output));
    m.insert("AlertSeverity".into(), json!(alert_severity(&a.priority)));
    m.insert("RuleName".into(), json!(a.rule));
    if let Some(p) = &a.process {
        users(p, &mut m);
        target(e, p, &mut m);
    }
    let mut extra = Map::new();
    extra.insert("tags".into(), json!(a.tags));
    extra.insert("fields".into(), json!(a.fields));
    extra.insert("container_id".into(), json!(a.container_id));
    extra.insert("folded".into(), json!(a.folded));
    extra.insert("trigger_event_id".into(), json!(a.event_id));
    m.insert("AdditionalFields".into(), additional(e, a.process.as_deref(), extra));
    Value::Object(m)
}

/// ASIM's result, its detail and the device action of a connection's outcome.
fn network_result(c: &Connection) -> (&'static str, &'static str, Option<&'static str>) {
    match (c.evt_type.as_str(), c.outcome.as_str()) {
        (_, "denied") => ("Failure", "NA", Some("Deny")),
        (_, "established") | ("accept" | "listen", _) => ("Success", "NA", None),
        (_, "in_progress") | (_, "") => ("NA", "NA", None),
        // A refused connect is the peer's RST to the SYN.
        (_, "refused" | "reset") => ("Failure", "Reset", None),
        (_, "timed_out") => ("Failure", "Timeout", None),
        (_, "unreachable") => ("Failure", "Routing issue", None),
        (_, "aborted") => ("Failure", "Terminated", None),
        _ => ("Failure", "Unknown", None),
    }
}

fn network_row(e: &Event, c: &Connection) -> Value {
    let mut m = Map::new();
    common(e, &mut m);
    m.insert("Dvc".into(), json!(e.node));
    m.insert("EventCount".into(), json!(c.count.max(1)));
    if c.summary && c.window_start_unix_nano > 0 {
        // A dedup summary aggregates the flow's repeats since its window opened.
        m.insert("EventStartTime".into(), json!(time(i64::try_from(c.window_start_unix_nano).unwrap_or(i64::MAX))));
    }
    m.insert("EventType".into(), json!("EndpointNetworkSession"));
    let (result, details, action) = network_result(c);
    m.insert("EventResult".into(), json!(result));
    m.insert("EventResultDetails".into(), json!(details));
    if !c.outcome.is_empty() {
        m.insert("EventOriginalResultDetails".into(), json!(c.outcome));
    }
    if let Some(action) = action {
        m.insert("DvcAction".into(), json!(action));
    }
    m.insert("EventSeverity".into(), json!(if action.is_some() { "Low" } else { "Informational" }));
    m.insert("EventSchemaVersion".into(), json!(NETWORK_SCHEMA_VERSION));
    m.insert("NetworkProtocol".into(), json!(c.protocol.to_ascii_uppercase()));
    m.insert("NetworkProtocolVersion".into(), json!(if c.family == "ipv6" { "IPv6" } else { "IPv4" }));
    let (direction, local) = match c.direction.as_str() {
        "inbound" => ("Inbound", "Dst"),
        "listen" => ("Listen", "Dst"),
        _ => ("Outbound", "Src"),
    };
    m.insert("NetworkDirection".into(), json!(direction));
    let remote = if local == "Src" { "Dst" } else { "Src" };
    m.insert(format!("{local}IpAddr"), json!(c.local_ip));
    m.insert(format!("{local}PortNumber"), json!(c.local_port));
    m.insert(format!("{local}Hostname"), json!(e.node));
    if c.direction != "listen" {
        m.insert(format!("{remote}IpAddr"), json!(c.remote_ip));
        m.insert(format!("{remote}PortNumber"), json!(c.remote_port));
        if !c.domain.is_empty() {
            m.insert(format!("{remote}FQDN"), json!(c.domain));
        }
    }
    if let Some(p) = &c.process {
        m.insert(format!("{local}AppName"), json!(image(p)));
        m.insert(format!("{local}AppId"), json!(p.pid.to_string()));
        m.insert(format!("{local}AppType"), json!("Process"));
        let uid = p.creds.as_ref().map_or(0, |c| c.uid);
        m.insert(format!("{local}Username"), json!(uid.to_string()));
        m.insert(format!("{local}UsernameType"), json!("Simple"));
        m.insert(format!("{local}UserId"), json!(uid.to_string()));
        m.insert(format!("{local}UserIdType"), json!("UID"));
    }
    let mut extra = Map::new();
    extra.insert("evt_type".into(), json!(c.evt_type));
    extra.insert("remote_class".into(), json!(c.remote_class));
    extra.insert("error".into(), json!(c.error));
    extra.insert("update".into(), json!(c.update));
    extra.insert("owner_unknown".into(), json!(c.owner_unknown));
    if let Some(p) = &c.process {
        extra.insert("cmdline".into(), json!(cef::cmdline(p)));
    }
    m.insert("AdditionalFields".into(), additional(e, c.process.as_deref(), extra));
    Value::Object(m)
}
