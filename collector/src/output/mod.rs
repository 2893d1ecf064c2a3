//! Outputs, in Vector's shape: each output's configuration `build()`s it; each output is an
//! *encoding* (event -> bytes or rows: `jsonl`, `cef`, `asim`, `raw`, `ocsf`) and a *service*
//! (delivery with retries and jittered backoff: `file`, `syslog`, `sentinel`).
//!
//! Every output sees the same batch through its own routing (`kinds`, `min_priority`, a
//! `filter` in the rules language) and redaction, then its own size limit (`truncate`). What an output cannot take is set aside in
//! its dead-letter file and counted, never dropped silently. The collector acknowledges a batch
//! once it is in every output's durable queue (`crate::queue`); each output's worker then
//! hands it to [`Output::send`] and keeps it queued until `send` succeeds.
//! [`Outputs::deliver`] sends one batch to every output directly.

pub mod asim;
pub mod auth;
pub mod cef;
pub mod deadletter;
pub mod file;
pub mod http;
pub mod metrics;
pub mod ocsf;
pub mod raw;
pub mod retry;
pub mod route;
pub mod sentinel;
pub mod syslog;
pub mod truncate;

use std::{path::PathBuf, sync::Arc};

use bytes::Bytes;
use peregrine_proto::Event;
use prost::Message as _;
use serde::Deserialize;
use tokio::{sync::OnceCell, task::JoinSet};

use crate::config::{CommonSettings, KindSettings, OutputSpec, RetrySettings};

pub use metrics::OutputMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    File,
    Stdout,
    CefSyslog,
    Sentinel,
    OcsfFile,
    OcsfWebhook,
}

impl OutputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Stdout => "stdout",
            Self::CefSyslog => "cef_syslog",
            Self::Sentinel => "sentinel",
            Self::OcsfFile => "ocsf_file",
            Self::OcsfWebhook => "ocsf_webhook",
        }
    }
}

/// Every event kind the model has (`Event::kind_name`).
pub const EVENT_KINDS: &[&str] = &["exec", "fork", "exit", "alert", "loss", "status", "connection", "container_started"];

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output `{output}`: cannot open {path}: {source}")]
    Open {
        output: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("output `{output}`: writing {path}: {source}")]
    Write {
        output: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("output `{output}`: {message}")]
    Config { output: String, message: String },
    #[error("output `{output}`: syslog {address}: {message} (gave up after {attempts} attempts)")]
    Syslog { output: String, address: String, message: String, attempts: u32 },
    #[error("output `{output}`: no access token from {credential}: {message} (the batch is kept for retry)")]
    Credentials { output: String, credential: String, message: String },
    #[error("output `{output}`: Logs Ingestion API {url}: {message} (gave up after {attempts} attempts; the batch is kept for retry)")]
    Ingestion { output: String, url: String, message: String, attempts: u32 },
    #[error("output `{output}`: {url}: {message} (gave up after {attempts} attempts; the batch is kept for retry)")]
    Http { output: String, url: String, message: String, attempts: u32 },
}

/// One built output: routing and redaction in front of its sink.
pub struct Output {
    pub name: String,
    pub kind: OutputKind,
    /// Also paces the queue worker's retries of a batch `send` gave up on.
    pub retry: RetrySettings,
    route: route::Route,
    filter: Option<route::Filter>,
    redactor: route::Redactor,
    sink: Sink,
    ctx: Ctx,
    /// The JSON-lines file this output writes, which can be read back.
    readback: Option<PathBuf>,
}

impl Output {
    /// Event ids this output's destination already holds, when the destination can be read
    /// back (JSON-lines files): the queue treats them as delivered, which closes the window
    /// between a write and the delivered-id log after a crash. Other sinks return none.
    pub fn written_ids(&self, tail_bytes: u64) -> Vec<String> {
        self.readback.as_deref().map(|p| file::written_ids(p, tail_bytes)).unwrap_or_default()
    }
}

/// A queued event as its sender encoded it, and its kind (read without decoding it).
pub struct Encoded {
    /// Its position in the queue, for logs.
    pub seq: u64,
    pub bytes: Bytes,
    pub kind: &'static str,
}

/// A batch made ready for an output once; a retry sends it again as it is.
pub enum Prepared {
    /// JSON lines for a `file` or `stdout` output, `count` events.
    Lines { lines: Vec<u8>, count: usize },
    Events(Vec<Event>),
}

/// A queued event that does not decode (its sender encoded it so).
pub struct Undecodable {
    pub seq: u64,
    pub bytes: usize,
    pub error: prost::DecodeError,
}

/// What every sink uses while sending: its name, metrics, dead-letter file and size limit.
pub struct Ctx {
    pub name: String,
    pub metrics: OutputMetrics,
    pub dead_letter: deadletter::DeadLetter,
    pub max_event_bytes: Option<usize>,
}

pub enum Sink {
    JsonLines(file::JsonLines),
    PendingFile(PendingFile),
    CefSyslog(syslog::CefSyslog),
    Sentinel(Box<sentinel::Sentinel>),
    OcsfFile(ocsf::OcsfFile),
    OcsfWebhook(ocsf::OcsfWebhook),
}

/// A `file` output whose file could not be opened at start (say, its directory is not
/// mounted yet): opened by the first `send` that can, its events waiting in the output's
/// queue until then rather than the collector refusing to start.
pub struct PendingFile {
    path: PathBuf,
    opened: OnceCell<file::JsonLines>,
}

impl PendingFile {
    /// The file, opened now if it was not yet.
    async fn get(&self, output: &str) -> Result<&file::JsonLines, OutputError> {
        self.opened.get_or_try_init(|| async { file::JsonLines::file(output, &self.path) }).await
    }
}

/// The output's name: its `name`, or `<kind>-<position>` among all outputs (the legacy
/// `[output]` first).
pub fn output_name(spec: &OutputSpec, index: usize) -> String {
    spec.common.name.clone().unwrap_or_else(|| format!("{}-{index}", spec.common.kind.as_str()))
}

/// Checks one `[[outputs]]` entry beyond its types; errors name the key inside the entry.
pub fn validate_spec(spec: &OutputSpec) -> Result<(), (String, String)> {
    let c = &spec.common;
    let allowed = supported_kinds(&spec.settings);
    for k in &c.kinds {
        if !allowed.contains(&k.as_str()) {
            return Err(("kinds".into(), format!("`{k}` is not one of: {}", allowed.join(", "))));
        }
    }
    if let Some(p) = &c.min_priority
        && route::priority_rank(p).is_none()
    {
        return Err(("min_priority".into(), format!("`{p}` is not a Falco priority ({})", route::PRIORITIES.join(", "))));
    }
    if let Some(f) = &c.filter
        && let Err(e) = route::Filter::new(f)
    {
        return Err(("filter".into(), e));
    }
    for p in &c.redact_argv_patterns {
        if let Err(e) = regex::Regex::new(p) {
            return Err(("redact_argv_patterns".into(), format!("`{p}` is not a valid regular expression: {e}")));
        }
    }
    match &spec.settings {
        KindSettings::CefSyslog(s) => s.validate(),
        KindSettings::Sentinel(s) => s.validate(),
        KindSettings::OcsfFile(s) => s.validate(),
        KindSettings::OcsfWebhook(s) => s.validate(),
        KindSettings::File(_) | KindSettings::Stdout(_) => Ok(()),
    }
}

/// The event kinds an output's encoding can represent.
pub fn supported_kinds(settings: &KindSettings) -> Vec<&'static str> {
    match settings {
        KindSettings::Sentinel(s) => s.supported_kinds(),
        KindSettings::OcsfFile(_) | KindSettings::OcsfWebhook(_) => ocsf::SUPPORTED_KINDS.to_vec(),
        _ => EVENT_KINDS.to_vec(),
    }
}

impl OutputSpec {
    /// Builds the output: opens files, loads certificates, compiles patterns.
    pub fn build(&self, index: usize, metrics: &OutputMetrics) -> Result<Output, OutputError> {
        let c: &CommonSettings = &self.common;
        let name = output_name(self, index);
        let config_err = |message: String| OutputError::Config { output: name.clone(), message };
        let kinds = if c.kinds.is_empty() { default_kinds(&self.settings) } else { c.kinds.clone() };
        let route = route::Route::new(&kinds, c.min_priority.as_deref()).map_err(config_err)?;
        let redactor = route::Redactor::new(&c.redact_argv_patterns).map_err(config_err)?;
        let filter = c.filter.as_deref().map(route::Filter::new).transpose().map_err(|e| OutputError::Config { output: name.clone(), message: format!("filter: {e}") })?;
        let dead_letter = deadletter::DeadLetter::open(&name, c.dead_letter_path.as_deref())?;
        let default_limit = match self.settings {
            KindSettings::Sentinel(_) => Some(sentinel::DEFAULT_MAX_EVENT_BYTES),
            KindSettings::CefSyslog(_) => Some(syslog::DEFAULT_MAX_EVENT_BYTES),
            _ => None,
        };
        let ctx = Ctx {
            name: name.clone(),
            metrics: metrics.clone(),
            dead_letter,
            max_event_bytes: c.max_event_bytes.or(default_limit),
        };
        let sink = match &self.settings {
            KindSettings::File(f) => match file::JsonLines::file(&name, &f.path) {
                Ok(sink) => Sink::JsonLines(sink),
                Err(e) => {
                    tracing::warn!(output = %name, error = %e, "output file not writable yet; its events wait in its queue");
                    Sink::PendingFile(PendingFile { path: f.path.clone(), opened: OnceCell::new() })
                }
            },
            KindSettings::Stdout(_) => Sink::JsonLines(file::JsonLines::stdout()),
            KindSettings::CefSyslog(s) => Sink::CefSyslog(s.build(&name, &c.retry)?),
            KindSettings::Sentinel(s) => Sink::Sentinel(Box::new(s.build(&name, &c.retry)?)),
            KindSettings::OcsfFile(s) => Sink::OcsfFile(s.build(&name)?),
            KindSettings::OcsfWebhook(s) => Sink::OcsfWebhook(s.build(&name, &c.retry)?),
        };
        let readback = match &self.settings {
            KindSettings::File(f) => Some(f.path.clone()),
            _ => None,
        };
        Ok(Output { name, kind: c.kind, retry: c.retry.clone(), route, filter, redactor, sink, ctx, readback })
    }
}

fn default_kinds(settings: &KindSettings) -> Vec<String> {
    supported_kinds(settings).into_iter().map(str::to_owned).collect()
}

impl Output {
    /// Whether this output writes every event it routes as it is: JSON lines without
    /// redaction, filter or size limit. Its lines are then written straight from the encoded
    /// events (`peregrine_proto::json`), without decoding them into the event model, which
    /// was most of the collector's cost per event.
    fn writes_as_is(&self) -> bool {
        matches!(self.sink, Sink::JsonLines(_) | Sink::PendingFile(_))
            && self.redactor.is_empty()
            && self.filter.is_none()
            && self.ctx.max_event_bytes.is_none()
    }

    /// Readies queued events for [`Output::send_prepared`]: decoded into the event model, or
    /// for an output that [writes events as they are](Self::writes_as_is), routed and
    /// encoded as JSON lines. Events that do not decode are returned, not sent.
    pub async fn prepare(&self, events: Vec<Encoded>) -> (Prepared, Vec<Undecodable>) {
        let mut undecodable = Vec::new();
        let mut decode = |e: &Encoded| match Event::decode(&e.bytes[..]) {
            Ok(event) => Some(event),
            Err(error) => {
                undecodable.push(Undecodable { seq: e.seq, bytes: e.bytes.len(), error });
                None
            }
        };
        if !self.writes_as_is() {
            let decoded = events.iter().filter_map(&mut decode).collect();
            return (Prepared::Events(decoded), undecodable);
        }
        let mut lines = Vec::with_capacity(events.iter().map(|e| e.bytes.len() * 4).sum());
        let mut count = 0;
        for e in &events {
            if !self.route.accepts_kind(e.kind) {
                self.ctx.metrics.filtered(&self.name);
                continue;
            }
            // The usual way; an event this writer leaves to prost (see `json`) is decoded.
            let written = self.route.kind_decides(e.kind) && peregrine_proto::json::event_json(&e.bytes, &mut lines).is_ok();
            if !written {
                let Some(event) = decode(e) else { continue };
                if !self.route.accepts(&event) {
                    self.ctx.metrics.filtered(&self.name);
                    continue;
                }
                let start = lines.len();
                if let Err(err) = serde_json::to_writer(&mut lines, &event) {
                    lines.truncate(start);
                    self.ctx.dead_letter(&event, "encode_error", &err.to_string()).await;
                    continue;
                }
            }
            lines.push(b'\n');
            count += 1;
        }
        (Prepared::Lines { lines, count }, undecodable)
    }

    /// Sends a batch [`Output::prepare`] readied; `Ok` means this output accepted all of it.
    pub async fn send_prepared(&self, prepared: &Prepared) -> Result<(), OutputError> {
        let (lines, count) = match prepared {
            Prepared::Events(events) => return self.send(events).await,
            Prepared::Lines { count: 0, .. } => return Ok(()),
            Prepared::Lines { lines, count } => (lines, *count),
        };
        let r = match &self.sink {
            Sink::JsonLines(s) => s.write(lines, count, &self.ctx).await,
            Sink::PendingFile(p) => match p.get(&self.name).await {
                Ok(s) => s.write(lines, count, &self.ctx).await,
                Err(e) => Err(e),
            },
            _ => Err(OutputError::Config { output: self.name.clone(), message: "JSON lines prepared for an output that does not write them".into() }),
        };
        if r.is_err() {
            self.ctx.metrics.batch_failed(&self.name);
        }
        r
    }

    /// Routes, redacts and sends one batch; `Ok` means this output accepted all of it (sent,
    /// or set aside in its dead-letter file and counted).
    pub async fn send(&self, events: &[Event]) -> Result<(), OutputError> {
        // The batch as it is when every event goes out unchanged (the common case: copying
        // each event was a tenth of the collector's CPU), else a routed, redacted copy. Only the
        // route (kinds, priority) is tried twice; a `filter`, costlier, always takes the copy.
        let unchanged = self.redactor.is_empty() && self.filter.is_none() && events.iter().all(|e| self.route.accepts(e));
        let selected: std::borrow::Cow<'_, [Event]> = if unchanged {
            std::borrow::Cow::Borrowed(events)
        } else {
            let mut selected = Vec::with_capacity(events.len());
            for e in events {
                if self.route.accepts(e) && self.filter.as_ref().is_none_or(|f| f.keeps(e)) {
                    let mut e = e.clone();
                    self.redactor.apply(&mut e);
                    selected.push(e);
                } else {
                    self.ctx.metrics.filtered(&self.name);
                }
            }
            std::borrow::Cow::Owned(selected)
        };
        if selected.is_empty() {
            return Ok(());
        }
        let r = match &self.sink {
            Sink::JsonLines(s) => s.send(&selected, &self.ctx).await,
            Sink::PendingFile(p) => match p.get(&self.name).await {
                Ok(s) => s.send(&selected, &self.ctx).await,
                Err(e) => Err(e),
            },
            Sink::CefSyslog(s) => s.send(&selected, &self.ctx).await,
            Sink::Sentinel(s) => s.send(&selected, &self.ctx).await,
            Sink::OcsfFile(s) => s.send(&selected, &self.ctx).await,
            Sink::OcsfWebhook(s) => s.send(&selected, &self.ctx).await,
        };
        if r.is_err() {
            self.ctx.metrics.batch_failed(&self.name);
        }
        r
    }
}

/// Every output; a batch is delivered when all of them accepted it.
#[derive(Clone)]
pub struct Outputs {
    outputs: Arc<Vec<Arc<Output>>>,
}

impl Outputs {
    pub fn build(specs: &[OutputSpec], metrics: &OutputMetrics) -> Result<Self, OutputError> {
        let mut outputs = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            outputs.push(Arc::new(spec.build(i, metrics)?));
        }
        Ok(Self { outputs: Arc::new(outputs) })
    }

    pub fn names(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.name.clone()).collect()
    }

    pub fn list(&self) -> &[Arc<Output>] {
        &self.outputs
    }

    /// Sends the batch to every output at once and waits for all; the first error is returned.
    pub async fn deliver(&self, events: &[Event]) -> Result<(), OutputError> {
        if self.outputs.len() == 1 {
            return match self.outputs.first() {
                Some(o) => o.send(events).await,
                None => Ok(()),
            };
        }
        let batch: Arc<[Event]> = events.into();
        let mut set = JoinSet::new();
        for o in self.outputs.iter() {
            let o = o.clone();
            let batch = batch.clone();
            set.spawn(async move { o.send(&batch).await });
        }
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            let r = match joined {
                Ok(r) => r,
                Err(e) => Err(OutputError::Config { output: "(task)".into(), message: format!("output task failed: {e}") }),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use peregrine_proto::{EventHeader, Kind, v1};

    use super::*;

    fn encoded(seq: u64, bytes: Vec<u8>) -> Encoded {
        let kind = EventHeader::peek(&bytes).map_or("unknown", |h| h.kind);
        Encoded { seq, bytes: bytes.into(), kind }
    }

    fn alert(id: &str, priority: &str) -> Event {
        Event {
            id: id.into(),
            node: "node-1".into(),
            kind: Some(Kind::Alert(v1::Alert { rule: "r".into(), priority: priority.into(), fields: [("b".into(), "2".into()), ("a".into(), "1".into())].into(), ..Default::default() })),
            ..Default::default()
        }
    }

    /// A plain file output writes its lines straight from the encoded events, routed as the
    /// decoded ones are; an alert under `min_priority` and an event the writer leaves to prost
    /// are decoded; a malformed one is returned, not written. The file holds exactly serde's
    /// lines of the events routed.
    #[test]
    fn a_plain_file_output_writes_encoded_events_as_serde_writes_decoded_ones() {
        let dir = std::env::temp_dir().join(format!("peregrine-prepare-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let spec: OutputSpec =
            toml::from_str(&format!("kind = \"file\"\npath = \"{}\"\nkinds = [\"exec\", \"alert\"]\nmin_priority = \"Warning\"", path.display())).unwrap();
        let metrics = OutputMetrics::default();
        let output = spec.build(0, &metrics).unwrap();
        assert!(output.writes_as_is());

        let exec = Event {
            id: "e1".into(),
            node: "node-1".into(),
            kind: Some(Kind::Exec(v1::ProcessExec {
                process: Some(peregrine_proto::Process { pid: 7, argv: vec!["sh".into(), "-c".into(), "echo \"hi\"\n".into()], ..Default::default() }.into()),
                ..Default::default()
            })),
            ..Default::default()
        };
        let fork = Event { id: "f1".into(), kind: Some(Kind::Fork(v1::ProcessFork::default())), ..Default::default() };
        let (notice, critical) = (alert("a1", "Notice"), alert("a2", "Critical"));
        // Its node sent twice: protobuf keeps the last; the writer leaves it to prost.
        let twice = Event { id: "e2".into(), node: "node-2".into(), kind: exec.kind.clone(), ..Default::default() };
        let twice_bytes = [Event { node: "old".into(), ..Default::default() }.encode_to_vec(), twice.encode_to_vec()].concat();
        // Malformed inside (an argument not UTF-8), its top level well-formed.
        let mut broken = exec.encode_to_vec();
        let at = broken.windows(2).position(|w| w == b"sh").unwrap();
        broken[at] = 0xff;
        let batch = vec![
            encoded(1, exec.encode_to_vec()),
            encoded(2, fork.encode_to_vec()),
            encoded(3, notice.encode_to_vec()),
            encoded(4, critical.encode_to_vec()),
            encoded(5, twice_bytes),
            encoded(6, broken),
        ];

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (prepared, undecodable) = rt.block_on(output.prepare(batch));
        assert_eq!(undecodable.iter().map(|u| u.seq).collect::<Vec<_>>(), [6]);
        let Prepared::Lines { count, .. } = &prepared else { panic!("a plain file output gets lines") };
        assert_eq!(*count, 3);
        rt.block_on(output.send_prepared(&prepared)).unwrap();
        let want: String = [&exec, &critical, &twice].iter().map(|e| serde_json::to_string(e).unwrap() + "\n").collect();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
        assert_eq!(metrics.filtered.get_or_create(&metrics::OutputLabel { output: output.name.clone() }).get(), 2);
        assert_eq!(metrics.sent_count(&output.name), 3);

        // With redaction the output takes decoded events, routed and redacted by `send`.
        let spec: OutputSpec = toml::from_str(&format!("kind = \"file\"\npath = \"{}\"\nredact_argv_patterns = [\"hi\"]", path.display())).unwrap();
        let redacting = spec.build(1, &metrics).unwrap();
        assert!(!redacting.writes_as_is());
        let (prepared, undecodable) = rt.block_on(redacting.prepare(vec![encoded(1, exec.encode_to_vec())]));
        assert!(undecodable.is_empty());
        assert!(matches!(&prepared, Prepared::Events(e) if e[..] == [exec.clone()]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
