//! OCSF (Open Cybersecurity Schema Framework) JSON lines, at a pinned released version
//! (`version`, default 1.3.0): exec -> Process Activity (class 1007) Launch, exit -> Process
//! Activity Terminate, connection -> Network Activity (class 4001: Open, Refuse, Reset, Fail,
//! Listen, Traffic by outcome), alert -> Detection Finding (class 2004) Create. What has no
//! OCSF attribute goes to `unmapped`. Written as JSON lines to a file (`ocsf_file`) or POSTed
//! as JSON arrays to an HTTPS endpoint (`ocsf_webhook`).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use peregrine_proto::{
    Event, Kind, Process,
    v1::{Alert, Connection},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use super::{
    Ctx, OutputError, cef,
    file::open_append,
    http::{Authorize, Poster, Row},
    route::priority_rank,
    truncate,
};
use crate::{config::RetrySettings, timefmt};

pub const DEFAULT_VERSION: &str = "1.3.0";
pub const SUPPORTED_KINDS: &[&str] = &["exec", "exit", "connection", "alert"];
/// OCSF releases this encoding was written against (the attributes used exist in each).
pub const KNOWN_VERSIONS: &[&str] = &["1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcsfFileSettings {
    pub path: PathBuf,
    #[serde(default = "default_version")]
    pub version: String,
}

fn default_version() -> String {
    DEFAULT_VERSION.into()
}

impl OcsfFileSettings {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !KNOWN_VERSIONS.contains(&self.version.as_str()) {
            return Err(("version".into(), format!("`{}` is not one of: {}", self.version, KNOWN_VERSIONS.join(", "))));
        }
        Ok(())
    }

    pub fn build(&self, output: &str) -> Result<OcsfFile, OutputError> {
        let file = open_append(output, &self.path)?;
        Ok(OcsfFile { path: self.path.clone(), version: self.version.clone(), file: Mutex::new(file) })
    }
}

/// An HTTPS endpoint taking JSON arrays of OCSF events (a SIEM's or data lake's HTTP
/// collector): `POST {url}` with `Content-Type: application/json`, optionally gzip'd, with
/// the `Authorization` header read from `authorization_file` at every request (so a rotated
/// secret is picked up without a restart). Answers as in [`super::http`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcsfWebhookSettings {
    pub url: String,
    #[serde(default = "default_version")]
    pub version: String,
    /// A file holding the whole header value, e.g. `Bearer <token>` or `Splunk <token>`.
    #[serde(default)]
    pub authorization_file: Option<PathBuf>,
    /// Extra CA (PEM) to trust for the endpoint.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub gzip: bool,
    #[serde(default = "default_webhook_max_batch_bytes")]
    pub max_batch_bytes: usize,
    #[serde(default = "default_webhook_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_webhook_max_batch_bytes() -> usize {
    1_000_000
}
fn default_webhook_timeout_ms() -> u64 {
    30_000
}

/// Whether `url` is plain HTTP to this machine, the one place a webhook may skip TLS.
fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, p)| if p.chars().all(|c| c.is_ascii_digit()) { h } else { host });
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl OcsfWebhookSettings {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(self.url.starts_with("https://") || is_loopback_http(&self.url)) {
            return Err(("url".into(), format!("`{}` is not an https:// URL (plain http is only allowed to 127.0.0.1, localhost or [::1])", self.url)));
        }
        if !KNOWN_VERSIONS.contains(&self.version.as_str()) {
            return Err(("version".into(), format!("`{}` is not one of: {}", self.version, KNOWN_VERSIONS.join(", "))));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_batch_bytes) {
            return Err(("max_batch_bytes".into(), "must be between 1024 and 67108864".into()));
        }
        Ok(())
    }

    pub fn build(&self, output: &str, retry: &RetrySettings) -> Result<OcsfWebhook, OutputError> {
        let err = |message: String| OutputError::Config { output: output.to_owned(), message };
        if let Some(path) = &self.authorization_file {
            read_authorization(path).map_err(err)?;
        }
        let http = super::http::client(self.ca_file.as_deref(), self.request_timeout_ms).map_err(err)?;
        Ok(OcsfWebhook { settings: self.clone(), http, retry: retry.clone() })
    }
}

fn read_authorization(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("authorization_file {}: {e}", path.display()))?;
    let value = text.trim();
    if value.is_empty() || value.contains(['\r', '\n']) {
        return Err(format!("authorization_file {}: must hold one header value, e.g. `Bearer <token>`", path.display()));
    }
    Ok(value.to_owned())
}

pub struct OcsfWebhook {
    settings: OcsfWebhookSettings,
    http: reqwest::Client,
    retry: RetrySettings,
}

/// The webhook's static header, read from its file at every request.
struct FileAuth<'a> {
    path: Option<&'a Path>,
    output: &'a str,
    url: &'a str,
}

impl Authorize for FileAuth<'_> {
    async fn header(&self) -> Result<Option<String>, OutputError> {
        let Some(path) = self.path else { return Ok(None) };
        read_authorization(path)
            .map(Some)
            .map_err(|message| OutputError::Http { output: self.output.to_owned(), url: self.url.to_owned(), message, attempts: 0 })
    }

    async fn refresh(&self) -> bool {
        false
    }

    fn refused(&self, status: u16, detail: &str) -> OutputError {
        let source = self.path.map_or("no authorization_file".to_owned(), |p| format!("the Authorization header from {}", p.display()));
        OutputError::Http {
            output: self.output.to_owned(),
            url: self.url.to_owned(),
            message: format!("the endpoint refused {source} ({status}): {detail}"),
            attempts: 1,
        }
    }
}

impl OcsfWebhook {
    pub async fn send(&self, events: &[Event], ctx: &Ctx) -> Result<(), OutputError> {
        let limit = ctx.max_event_bytes.unwrap_or(self.settings.max_batch_bytes - 2).min(self.settings.max_batch_bytes - 2);
        let rows = encoded_rows(events, &self.settings.version, Some(limit), ctx).await;
        let url = self.settings.url.as_str();
        let exhausted = |message: String, attempts: u32| OutputError::Http { output: ctx.name.clone(), url: url.to_owned(), message, attempts };
        let auth = FileAuth { path: self.settings.authorization_file.as_deref(), output: &ctx.name, url };
        let poster = Poster {
            http: &self.http,
            url,
            gzip: self.settings.gzip,
            max_bytes: self.settings.max_batch_bytes,
            retry: &self.retry,
            auth: &auth,
            exhausted: &exhausted,
        };
        poster.deliver(rows, events, ctx).await
    }
}

pub struct OcsfFile {
    path: PathBuf,
    version: String,
    file: Mutex<std::fs::File>,
}

impl OcsfFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn send(&self, events: &[Event], ctx: &Ctx) -> Result<(), OutputError> {
        let rows = encoded_rows(events, &self.version, ctx.max_event_bytes, ctx).await;
        let mut out = Vec::with_capacity(rows.iter().map(|r| r.json.len() + 1).sum());
        for r in &rows {
            out.extend_from_slice(&r.json);
            out.push(b'\n');
        }
        let mut f = self.file.lock().await;
        f.write_all(&out).and_then(|()| f.flush()).map_err(|source| OutputError::Write {
            output: ctx.name.clone(),
            path: self.path.display().to_string(),
            source,
        })?;
        ctx.metrics.sent(&ctx.name, rows.len());
        Ok(())
    }
}

/// Each event's OCSF JSON within `limit` bytes (truncated by the documented rules, counted),
/// with the index of its event; what has no OCSF class, cannot be encoded or cannot be made to
/// fit goes to the dead-letter file with the reason.
async fn encoded_rows(events: &[Event], version: &str, limit: Option<usize>, ctx: &Ctx) -> Vec<Row> {
    let mut rows = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        if !SUPPORTED_KINDS.contains(&e.kind_name()) {
            ctx.dead_letter(e, "no_mapping", &format!("no OCSF class for a `{}` event", e.kind_name())).await;
            continue;
        }
        let enc = |e: &Event| serde_json::to_vec(&encode(e, version).unwrap_or(Value::Null));
        match truncate::fit(e, limit, enc, Vec::len) {
            Ok(truncate::Fitted::Fits(json, truncated)) => {
                if truncated {
                    ctx.metrics.truncated(&ctx.name);
                }
                rows.push(Row { event: i, json });
            }
            Ok(truncate::Fitted::TooLarge(why)) => ctx.dead_letter(e, "too_large", &why).await,
            Err(err) => ctx.dead_letter(e, "encode_error", &err.to_string()).await,
        }
    }
    rows
}

/// OCSF `severity_id` of a Falco priority: Emergency 6 (Fatal), Alert and Critical 5
/// (Critical), Error 4 (High), Warning 3 (Medium), Notice 2 (Low), Informational and Debug 1.
pub fn severity_id(priority: &str) -> u8 {
    match priority_rank(priority) {
        Some(0) => 6,
        Some(1 | 2) => 5,
        Some(3) => 4,
        Some(4) => 3,
        Some(5) => 2,
        Some(_) => 1,
        None => 0,
    }
}

fn severity_name(id: u8) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        6 => "Fatal",
        _ => "Unknown",
    }
}

fn metadata(e: &Event, version: &str) -> Value {
    json!({
        "version": version,
        "uid": e.id,
        "product": {"name": "Peregrine", "vendor_name": "Peregrine", "version": cef::VERSION},
        "logged_time": timefmt::unix_millis(e.time_unix_nano),
    })
}

fn device(e: &Event) -> Value {
    // type_id 0 = Unknown (a Kubernetes node may be a server, a VM, ...); os type_id 200 = Linux.
    json!({"hostname": e.node, "type_id": 0, "type": "Unknown", "os": {"name": "Linux", "type_id": 200, "type": "Linux"}})
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn process(p: &Process) -> Value {
    let image = if p.exe.is_empty() { &p.filename } else { &p.exe };
    let mut m = Map::new();
    m.insert("pid".into(), json!(p.pid));
    m.insert("uid".into(), json!(p.exec_id));
    m.insert("name".into(), json!(p.comm));
    m.insert("cmd_line".into(), json!(cef::cmdline(p)));
    // file type_id 1 = Regular File.
    m.insert("file".into(), json!({"path": image, "name": basename(image), "type_id": 1, "type": "Regular File"}));
    if let Some(c) = &p.creds {
        m.insert("user".into(), json!({"uid": c.uid.to_string()}));
    }
    m.insert("parent_process".into(), json!({"pid": p.ppid, "uid": p.parent_exec_id}));
    Value::Object(m)
}

fn unmapped(e: &Event, p: Option<&Process>) -> Value {
    let mut m = Map::new();
    m.insert("cluster".into(), json!(e.cluster));
    m.insert("agent_run".into(), json!(e.agent_run));
    m.insert("seq".into(), json!(e.seq));
    if let Some(p) = p {
        m.insert("argv".into(), json!(p.argv));
        m.insert("cwd".into(), json!(p.cwd));
        m.insert("cgroup_id".into(), json!(p.cgroup_id));
        if let Some(c) = &p.creds {
            m.insert("creds".into(), serde_json::to_value(c).unwrap_or(Value::Null));
        }
        if !p.partial.is_empty() {
            m.insert("partial".into(), json!(p.partial));
        }
    }
    Value::Object(m)
}

/// The OCSF event of `e`, or `None` for kinds without a class here.
pub fn encode(e: &Event, version: &str) -> Option<Value> {
    let mut v = encode_class(e, version)?;
    if let (Some(c), Some(obj)) = (&e.container, v.as_object_mut()) {
        // OCSF's container profile: `container` (image, runtime, pod uid) and the
        // orchestrator's view in `unmapped`.
        obj.insert(
            "container".into(),
            json!({"uid": c.id, "name": c.name, "runtime": c.runtime,
                   "image": {"name": c.image, "uid": c.image_digest},
                   "pod_uuid": c.pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default(),
                   "orchestrator": if c.pod.is_some() { "Kubernetes" } else { "" }}),
        );
        if let Some(Value::Object(u)) = obj.get_mut("unmapped") {
            crate::output::asim::context(e, u);
        }
    }
    Some(v)
}

fn encode_class(e: &Event, version: &str) -> Option<Value> {
    match &e.kind {
        Some(Kind::Exec(x)) => {
            let p = x.process.clone().unwrap_or_default();
            let mut v = process_activity(e, version, &p, 1, "Launch");
            if let (Some(parent), Some(obj)) = (x.ancestors.first(), v.as_object_mut()) {
                obj.insert(
                    "actor".into(),
                    json!({"process": {"pid": parent.pid, "uid": parent.exec_id, "name": parent.comm,
                        "cmd_line": parent.argv.join(" "),
                        "file": {"path": parent.exe, "name": basename(&parent.exe), "type_id": 1, "type": "Regular File"}}}),
                );
            }
            Some(v)
        }
        Some(Kind::Exit(x)) => {
            let p = x.process.clone().unwrap_or_default();
            let mut v = process_activity(e, version, &p, 2, "Terminate");
            if let Some(obj) = v.as_object_mut() {
                obj.insert("exit_code".into(), json!(x.exit_code));
            }
            Some(v)
        }
        Some(Kind::Connection(c)) => Some(network_activity(e, version, c)),
        Some(Kind::Alert(a)) => Some(detection_finding(e, version, a)),
        _ => None,
    }
}

/// Network Activity's activity (id, name) and status (id, name) of a connection.
fn network_activity_of(c: &Connection) -> ((u32, &'static str), (u32, &'static str)) {
    const SUCCESS: (u32, &str) = (1, "Success");
    const FAILURE: (u32, &str) = (2, "Failure");
    const UNKNOWN: (u32, &str) = (0, "Unknown");
    match (c.evt_type.as_str(), c.outcome.as_str()) {
        ("listen", _) => ((7, "Listen"), SUCCESS),
        ("accept", _) | (_, "established") => ((1, "Open"), SUCCESS),
        (_, "refused") => ((5, "Refuse"), FAILURE),
        (_, "reset") => ((3, "Reset"), FAILURE),
        (_, "in_progress") => ((1, "Open"), UNKNOWN),
        // A datagram sent or received.
        (_, "") => ((6, "Traffic"), SUCCESS),
        _ => ((4, "Fail"), FAILURE),
    }
}

fn network_activity(e: &Event, version: &str, c: &Connection) -> Value {
    let ((activity_id, activity), (status_id, status)) = network_activity_of(c);
    let local = json!({"ip": c.local_ip, "port": c.local_port, "hostname": e.node});
    let remote = if c.domain.is_empty() {
        json!({"ip": c.remote_ip, "port": c.remote_port})
    } else {
        json!({"ip": c.remote_ip, "port": c.remote_port, "domain": c.domain})
    };
    // direction_id 1 Inbound, 2 Outbound, 0 Unknown (a listener has no peer).
    let (direction_id, direction, src, dst) = match c.direction.as_str() {
        "inbound" => (1, "Inbound", remote, local),
        "outbound" => (2, "Outbound", local, remote),
        _ => (0, "Unknown", Value::Null, local),
    };
    let (protocol_num, protocol_ver_id) = (if c.protocol == "udp" { 17 } else { 6 }, if c.family == "ipv6" { 6 } else { 4 });
    let mut v = json!({
        "class_uid": 4001,
        "class_name": "Network Activity",
        "category_uid": 4,
        "category_name": "Network Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 4001 * 100 + activity_id,
        "type_name": format!("Network Activity: {activity}"),
        "time": timefmt::unix_millis(e.time_unix_nano),
        "count": c.count.max(1),
        "severity_id": 1,
        "severity": "Informational",
        "status_id": status_id,
        "status": status,
        "metadata": metadata(e, version),
        "device": device(e),
        "connection_info": {"protocol_name": c.protocol, "protocol_num": protocol_num, "protocol_ver_id": protocol_ver_id,
                            "direction_id": direction_id, "direction": direction},
        "dst_endpoint": dst,
        "unmapped": unmapped(e, c.process.as_deref()),
    });
    if let Some(obj) = v.as_object_mut() {
        if !src.is_null() {
            obj.insert("src_endpoint".into(), src);
        }
        if !c.outcome.is_empty() {
            obj.insert("status_detail".into(), json!(c.outcome));
        }
        if c.error != 0 {
            obj.insert("status_code".into(), json!(c.error.to_string()));
        }
        if c.outcome == "denied" {
            // disposition_id 2 Blocked; action_id 2 Denied.
            obj.insert("action_id".into(), json!(2));
            obj.insert("action".into(), json!("Denied"));
            obj.insert("disposition_id".into(), json!(2));
            obj.insert("disposition".into(), json!("Blocked"));
        }
        // A connection's actor is the process that made or accepted it.
        if let Some(p) = &c.process {
            obj.insert("actor".into(), json!({"process": process(p)}));
        }
        if let Some(Value::Object(u)) = obj.get_mut("unmapped") {
            u.insert("evt_type".into(), json!(c.evt_type));
            u.insert("remote_class".into(), json!(c.remote_class));
            u.insert("update".into(), json!(c.update));
            u.insert("owner_unknown".into(), json!(c.owner_unknown));
        }
    }
    v
}

fn process_activity(e: &Event, version: &str, p: &Process, activity_id: u32, activity: &str) -> Value {
    json!({
        "class_uid": 1007,
        "class_name": "Process Activity",
        "category_uid": 1,
        "category_name": "System Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 1007 * 100 + activity_id,
        "type_name": format!("Process Activity: {activity}"),
        "time": timefmt::unix_millis(e.time_unix_nano),
        "severity_id": 1,
        "severity": "Informational",
        "status_id": 1,
        "status": "Success",
        "metadata": metadata(e, version),
        "device": device(e),
        // The actor of a launch is its parent (replaced by the ancestor's details when known).
        "actor": {"process": {"pid": p.ppid, "uid": p.parent_exec_id}},
        "process": process(p),
        "unmapped": unmapped(e, Some(p)),
    })
}

fn detection_finding(e: &Event, version: &str, a: &Alert) -> Value {
    let sev = severity_id(&a.priority);
    let mut v = json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": 200401,
        "type_name": "Detection Finding: Create",
        "time": timefmt::unix_millis(e.time_unix_nano),
        "severity_id": sev,
        "severity": severity_name(sev),
        "status_id": 1,
        "status": "New",
        "message": a.output,
        "count": a.count.max(1),
        "metadata": metadata(e, version),
        "device": device(e),
        "finding_info": {
            "uid": e.id,
            "title": a.rule,
            "desc": a.output,
            "types": a.tags,
            "created_time": timefmt::unix_millis(e.time_unix_nano),
            // analytic type_id 1 = Rule; a rule's name is its identity (rule files key on it).
            "analytic": {"uid": a.rule, "name": a.rule, "type_id": 1, "type": "Rule"},
        },
        "unmapped": unmapped(e, a.process.as_deref()),
    });
    if let (Some(p), Some(obj)) = (&a.process, v.as_object_mut()) {
        obj.insert("evidences".into(), json!([{"process": process(p)}]));
        if let Some(Value::Object(u)) = obj.get_mut("unmapped") {
            u.insert("priority".into(), json!(a.priority));
            u.insert("fields".into(), json!(a.fields));
            u.insert("trigger_event_id".into(), json!(a.event_id));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_proto::v1::{AgentStatus, ContainerStarted, Loss, ProcessExec, ProcessExit, ProcessFork};

    /// `encoded_rows` decides "no OCSF class" by `SUPPORTED_KINDS`: it must be exactly the
    /// kinds `encode` maps.
    #[test]
    fn supported_kinds_are_exactly_the_encoded_ones() {
        let kinds = [
            Kind::Exec(ProcessExec::default()),
            Kind::Fork(ProcessFork::default()),
            Kind::Exit(ProcessExit::default()),
            Kind::Alert(Alert::default()),
            Kind::Loss(Loss::default()),
            Kind::Status(AgentStatus::default()),
            Kind::Connection(Connection::default()),
            Kind::ContainerStarted(ContainerStarted::default()),
        ];
        for kind in kinds {
            let e = Event { kind: Some(kind), ..Event::default() };
            assert_eq!(encode(&e, DEFAULT_VERSION).is_some(), SUPPORTED_KINDS.contains(&e.kind_name()), "{}", e.kind_name());
        }
    }
}
