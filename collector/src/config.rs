//! The collector's configuration: file, `PEREGRINE_COLLECTOR__*` environment, `--set` flags.
//!
//! Outputs are a `[[outputs]]` list, one table per output (Vector's style: the table names its
//! `kind` and carries that kind's keys next to the routing and redaction keys every output has).
//! The older single `[output]` table (`output.kind`, `output.path`) still works: when it is set
//! it becomes an implicit first output; when neither is set, events go to stdout.

use std::{net::SocketAddr, path::PathBuf};

use peregrine_service::config::Validate;
use serde::{Deserialize, Deserializer, de::Error as _};

use crate::output::{
    OutputKind,
    ocsf::{OcsfFileSettings, OcsfWebhookSettings},
    sentinel::SentinelSettings,
    syslog::CefSyslogSettings,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// gRPC ingest address agents connect to.
    pub listen: SocketAddr,
    pub log_level: String,
    /// The single-output form kept for compatibility (`output.kind`, `output.path`).
    pub output: Option<LegacyOutputConfig>,
    /// Every output, each with its own routing, redaction and delivery settings.
    pub outputs: Vec<OutputSpec>,
    pub http: HttpConfig,
    /// Largest accepted gRPC message (a batch); larger ones are refused with a clear status.
    pub max_message_bytes: usize,
    /// Threads serving the agents' streams (TLS, HTTP/2, handing batches to the queue writer).
    /// 1 (default): one thread, where a batch costs no hand-over between threads; more for a
    /// collector that many agents keep busy (its CPU shows it). The queue writer and each
    /// output have threads of their own either way.
    pub ingest_threads: usize,
    /// The durable per-output queues between ingest and the outputs.
    pub queue: QueueConfig,
    /// Mutual TLS on the ingest port: agents must present a certificate from `client_ca_file`,
    /// valid for the node name every one of their events carries.
    pub tls: ServerTls,
    /// Node certificates for agents that prove their node with a service-account token
    /// (`crate::enroll`); off unless `enroll.ca_cert_file` is set.
    pub enroll: crate::enroll::EnrollConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTls {
    /// PEM certificate (chain) and key of the collector (its Service's DNS name).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle that signs the agents' node certificates.
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTls {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some() || self.client_ca_file.is_some()
    }
}

/// `[queue]`: every output has its own queue on disk, `<dir>/<output name>/` (a
/// `peregrine-journal`). A batch is acknowledged once it is in every output's queue; each
/// output delivers from its own queue at its own pace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub dir: PathBuf,
    /// Bound on each output's queue on disk.
    pub max_bytes: u64,
    /// Queue files are this size; must hold the largest event (`max_message_bytes`).
    pub segment_bytes: u64,
    /// What a full queue gives up: `drop_oldest` or `drop_newest`. Either way events are lost,
    /// and counted (`peregrine_collector_events_dropped_total{reason="queue_full"}`).
    pub full_policy: QueueFullPolicy,
    /// `on_flush` (default): a batch is fsynced before it is acknowledged, so an acknowledged
    /// event survives the collector's node losing power; the agent deletes what was
    /// acknowledged, so without this an acknowledgement could be a promise the disk does not
    /// keep. `never`: survives the collector being killed, not power loss; cheaper on slow
    /// disks.
    pub fsync: QueueFsync,
    /// Event ids each output remembers having delivered (also on disk, so across restarts):
    /// an event arriving again within this window (an agent replaying what it saw no
    /// acknowledgement for) is not delivered twice. About 40 bytes of memory per id.
    pub dedup_window: usize,
    /// Events per batch an output is handed from its queue.
    pub batch_max_events: usize,
    /// How long an output's commit point may lag on disk (0: written at every commit, with
    /// two fsyncs under `on_flush`). What it lags by is read again after a crash and left out
    /// by de-duplication, so it is written at once when `dedup_window` is 0.
    pub commit_interval_ms: u64,
    /// On SIGTERM, how long outputs may keep delivering what is queued before the collector
    /// exits; what is left stays queued for the next start.
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    DropOldest,
    DropNewest,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueFsync {
    Never,
    OnFlush,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            dir: "/var/lib/peregrine/queue".into(),
            max_bytes: 1 << 30,
            segment_bytes: 32 << 20,
            full_policy: QueueFullPolicy::DropOldest,
            fsync: QueueFsync::OnFlush,
            dedup_window: 1_000_000,
            batch_max_events: 1000,
            commit_interval_ms: 1000,
            drain_timeout_ms: 5000,
        }
    }
}

impl QueueConfig {
    pub fn journal(&self) -> peregrine_journal::JournalConfig {
        peregrine_journal::JournalConfig {
            max_bytes: self.max_bytes,
            segment_bytes: self.segment_bytes,
            full: match self.full_policy {
                QueueFullPolicy::DropOldest => peregrine_journal::FullPolicy::DropOldest,
                QueueFullPolicy::DropNewest => peregrine_journal::FullPolicy::DropNewest,
            },
            fsync: self.journal_fsync(),
            // What the point lags by is delivered again after a crash, unless de-duplication
            // recognises it (its ids are logged before each commit).
            commit_interval: if self.dedup_window == 0 {
                std::time::Duration::ZERO
            } else {
                std::time::Duration::from_millis(self.commit_interval_ms)
            },
            ..peregrine_journal::JournalConfig::default()
        }
    }

    /// The delivered-id log's: under `on_flush`, fsynced at a flush at least a commit interval
    /// after its last fsync (and when sealed, and at a clean stop), not at every batch. After a
    /// power loss the ids logged since may be gone, and an event among them that arrives again
    /// (read again past the commit point, or replayed by an agent) is delivered twice:
    /// duplicates, never loss (docs/DELIVERY.md).
    pub fn id_log_fsync(&self) -> peregrine_journal::Fsync {
        match self.journal_fsync() {
            peregrine_journal::Fsync::OnFlush => peregrine_journal::Fsync::Interval(std::time::Duration::from_millis(self.commit_interval_ms)),
            other => other,
        }
    }

    pub fn journal_fsync(&self) -> peregrine_journal::Fsync {
        match self.fsync {
            QueueFsync::Never => peregrine_journal::Fsync::Never,
            QueueFsync::OnFlush => peregrine_journal::Fsync::OnFlush,
        }
    }
}

/// Where events go in the single-output form: JSON lines on stdout or appended to a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LegacyOutputConfig {
    /// `stdout` or `file`.
    pub kind: String,
    /// The file for `kind = "file"`.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7700)),
            log_level: "info".into(),
            output: None,
            outputs: Vec::new(),
            http: HttpConfig::default(),
            max_message_bytes: 16 << 20,
            ingest_threads: 1,
            queue: QueueConfig::default(),
            tls: ServerTls::default(),
            enroll: crate::enroll::EnrollConfig::default(),
        }
    }
}

impl Default for LegacyOutputConfig {
    fn default() -> Self {
        Self { kind: "stdout".into(), path: None }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([0, 0, 0, 0], 9465)) }
    }
}

/// The keys every output has, whatever its kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonSettings {
    pub kind: OutputKind,
    /// Shown in logs and metric labels; defaults to `<kind>-<position>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Event kinds this output receives (`exec`, `fork`, `exit`, `alert`, `loss`, `status`,
    /// `connection`, `container_started`); empty = the kind's default (everything, or what the encoding maps).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Alerts below this Falco priority are not sent to this output.
    #[serde(default)]
    pub min_priority: Option<String>,
    /// Regular expressions; every match inside argv, ancestors' argv and alert text is replaced
    /// by `[REDACTED]` before the event is encoded for this output.
    #[serde(default)]
    pub redact_argv_patterns: Vec<String>,
    /// Largest encoded event; larger ones are truncated (see docs/OUTPUTS.md), then set aside.
    #[serde(default)]
    pub max_event_bytes: Option<usize>,
    /// JSON lines file receiving events this output rejected, with the reason.
    #[serde(default)]
    pub dead_letter_path: Option<PathBuf>,
    #[serde(default)]
    pub retry: RetrySettings,
    /// A condition in the rules language; events it can be evaluated on are sent only when it
    /// holds (`crate::output::route::Filter`).
    #[serde(default)]
    pub filter: Option<String>,
}

const COMMON_KEYS: &[&str] =
    &["kind", "name", "kinds", "min_priority", "redact_argv_patterns", "max_event_bytes", "dead_letter_path", "retry", "filter"];

/// Delivery retries: jittered exponential backoff between attempts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Attempts after the first before the batch is refused (the agent then resends it).
    pub max_retries: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Longest `Retry-After` honoured; a longer one is cut to this.
    pub max_retry_after_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self { max_retries: 5, initial_backoff_ms: 200, max_backoff_ms: 10_000, max_retry_after_ms: 60_000 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StdoutSettings {}

/// The kind-specific keys of one output.
#[derive(Debug, Clone)]
pub enum KindSettings {
    File(FileSettings),
    Stdout(StdoutSettings),
    CefSyslog(CefSyslogSettings),
    Sentinel(Box<SentinelSettings>),
    OcsfFile(OcsfFileSettings),
    OcsfWebhook(OcsfWebhookSettings),
}

/// One `[[outputs]]` table.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub common: CommonSettings,
    pub settings: KindSettings,
}

impl<'de> Deserialize<'de> for OutputSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        let mut common = toml::Table::new();
        for key in COMMON_KEYS {
            if let Some(v) = table.remove(*key) {
                common.insert((*key).to_owned(), v);
            }
        }
        let common: CommonSettings = toml::Value::Table(common).try_into().map_err(|e| D::Error::custom(clean(&e)))?;
        let rest = toml::Value::Table(table);
        let settings = match common.kind {
            OutputKind::File => KindSettings::File(rest.try_into().map_err(|e| D::Error::custom(clean(&e)))?),
            OutputKind::Stdout => KindSettings::Stdout(rest.try_into().map_err(|e| D::Error::custom(clean(&e)))?),
            OutputKind::CefSyslog => KindSettings::CefSyslog(rest.try_into().map_err(|e| D::Error::custom(clean(&e)))?),
            OutputKind::Sentinel => {
                KindSettings::Sentinel(Box::new(rest.try_into().map_err(|e| D::Error::custom(clean(&e)))?))
            }
            OutputKind::OcsfFile => KindSettings::OcsfFile(rest.try_into().map_err(|e| D::Error::custom(clean(&e)))?),
            OutputKind::OcsfWebhook => KindSettings::OcsfWebhook(rest.try_into().map_err(|e| D::Error::custom(clean(&e)))?),
        };
        Ok(Self { common, settings })
    }
}

fn clean(e: &toml::de::Error) -> String {
    e.message().replace('\n', " ")
}

impl CollectorConfig {
    /// The outputs to build, the legacy single output first.
    pub fn effective_outputs(&self) -> Vec<OutputSpec> {
        let mut all = Vec::new();
        let legacy = match &self.output {
            Some(o) => Some(o.clone()),
            None if self.outputs.is_empty() => Some(LegacyOutputConfig::default()),
            None => None,
        };
        if let Some(o) = legacy {
            let (kind, settings) = match (o.kind.as_str(), o.path) {
                ("file", Some(path)) => (OutputKind::File, KindSettings::File(FileSettings { path })),
                _ => (OutputKind::Stdout, KindSettings::Stdout(StdoutSettings {})),
            };
            all.push(OutputSpec {
                common: CommonSettings {
                    kind,
                    name: Some("output".into()),
                    kinds: Vec::new(),
                    min_priority: None,
                    redact_argv_patterns: Vec::new(),
                    max_event_bytes: None,
                    dead_letter_path: None,
                    retry: RetrySettings::default(),
                    filter: None,
                },
                settings,
            });
        }
        all.extend(self.outputs.iter().cloned());
        all
    }
}

impl Validate for CollectorConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let t = &self.tls;
        // With enrollment, the enrollment CA is a client CA: tls.client_ca_file may be left out.
        let client_ca = t.client_ca_file.is_some() || self.enroll.enabled();
        if (t.enabled() || self.enroll.enabled()) && (t.cert_file.is_none() || t.key_file.is_none() || !client_ca) {
            return Err((
                "tls".into(),
                "mutual TLS needs tls.cert_file, tls.key_file and tls.client_ca_file (the CA of the agents' node certificates) or enroll.ca_cert_file".into(),
            ));
        }
        self.enroll.validate().map_err(|(key, problem)| (format!("enroll.{key}"), problem))?;
        if let Some(output) = &self.output {
            match (output.kind.as_str(), &output.path) {
                ("stdout", _) | ("file", Some(_)) => {}
                ("file", None) => return Err(("output.path".into(), "required when output.kind = \"file\"".into())),
                (other, _) => return Err(("output.kind".into(), format!("`{other}` is not one of: stdout, file"))),
            }
        }
        for (i, spec) in self.outputs.iter().enumerate() {
            crate::output::validate_spec(spec).map_err(|(key, message)| (format!("outputs[{i}].{key}"), message))?;
        }
        if self.max_message_bytes < 1024 {
            return Err(("max_message_bytes".into(), "must be at least 1024".into()));
        }
        if !(1..=256).contains(&self.ingest_threads) {
            return Err(("ingest_threads".into(), "must be between 1 and 256".into()));
        }
        self.validate_queue()?;
        self.validate_names()
    }
}

impl CollectorConfig {
    fn validate_queue(&self) -> Result<(), (String, String)> {
        let q = &self.queue;
        // A record is the event plus a 28-byte header; an event can be as large as a message.
        let need = self.max_message_bytes as u64 + 1024;
        if q.segment_bytes < need {
            return Err((
                "queue.segment_bytes".into(),
                format!("must be at least max_message_bytes + 1 KiB ({need}): every event must fit in one queue file"),
            ));
        }
        if q.max_bytes < 2 * q.segment_bytes {
            return Err(("queue.max_bytes".into(), format!("must be at least twice queue.segment_bytes ({})", 2 * q.segment_bytes)));
        }
        if q.batch_max_events == 0 {
            return Err(("queue.batch_max_events".into(), "must be at least 1".into()));
        }
        if q.dedup_window > 100_000_000 {
            return Err(("queue.dedup_window".into(), "must be at most 100000000".into()));
        }
        if q.commit_interval_ms > 60_000 {
            return Err((
                "queue.commit_interval_ms".into(),
                "must be at most 60000: after a crash the outputs' queues are read again from the last commit written".into(),
            ));
        }
        Ok(())
    }

    /// Output names become queue directories: unique, and plain file names.
    fn validate_names(&self) -> Result<(), (String, String)> {
        let legacy = usize::from(self.output.is_some() || self.outputs.is_empty());
        let mut seen = std::collections::HashSet::new();
        for (i, spec) in self.effective_outputs().iter().enumerate() {
            let key = if i < legacy { "output".to_owned() } else { format!("outputs[{}].name", i - legacy) };
            let name = crate::output::output_name(spec, i);
            let plain = !name.is_empty()
                && name.len() <= 100
                && !name.starts_with('.')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !plain {
                return Err((key, format!("`{name}`: an output name may use letters, digits, `.`, `_` and `-` (it names the output's queue directory)")));
            }
            if !seen.insert(name.clone()) {
                return Err((key, format!("`{name}` names two outputs (each output needs its own queue)")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_service::config::Layers;

    #[test]
    fn file_output_needs_a_path() {
        let e = Layers::new().overrides(["output.kind=file"]).unwrap().build::<CollectorConfig>().unwrap_err();
        assert_eq!(e.to_string(), "config key `output.path`: required when output.kind = \"file\"");
        let e = Layers::new().overrides(["output.kind=kafka"]).unwrap().build::<CollectorConfig>().unwrap_err();
        assert_eq!(e.to_string(), "config key `output.kind` (set by --set output.kind=kafka): `kafka` is not one of: stdout, file");
    }

    #[test]
    fn legacy_output_is_the_implicit_first_output() {
        let c = Layers::new()
            .overrides(["output.kind=file", "output.path=/tmp/x.jsonl"])
            .unwrap()
            .build::<CollectorConfig>()
            .unwrap();
        let outs = c.effective_outputs();
        assert_eq!(outs.len(), 1);
        assert!(matches!(&outs[0].settings, KindSettings::File(f) if f.path == std::path::Path::new("/tmp/x.jsonl")));
        let none = Layers::new().build::<CollectorConfig>().unwrap().effective_outputs();
        assert!(matches!(none[..], [OutputSpec { settings: KindSettings::Stdout(_), .. }]));
    }

    fn from_toml(text: &str) -> Result<CollectorConfig, String> {
        // Tests run in parallel: one directory each (a shared one could be removed by one
        // test between another's creating it and writing into it).
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("peregrine-collector-config-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        let r = Layers::new().file(&path).unwrap().build::<CollectorConfig>().map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        r
    }

    #[test]
    fn queue_keys_have_defaults_and_are_checked() {
        let c = Layers::new().build::<CollectorConfig>().unwrap();
        assert_eq!(c.queue.dir, std::path::Path::new("/var/lib/peregrine/queue"));
        assert_eq!((c.queue.full_policy, c.queue.fsync), (QueueFullPolicy::DropOldest, QueueFsync::OnFlush));
        assert_eq!(c.queue.journal().fsync, peregrine_journal::Fsync::OnFlush);
        assert_eq!(c.queue.id_log_fsync(), peregrine_journal::Fsync::Interval(std::time::Duration::from_secs(1)), "once per commit interval");
        let c = Layers::new()
            .overrides(["queue.dir=/q", "queue.full_policy=drop_newest", "queue.fsync=never", "queue.dedup_window=10"])
            .unwrap()
            .build::<CollectorConfig>()
            .unwrap();
        assert_eq!(c.queue.journal().full, peregrine_journal::FullPolicy::DropNewest);
        assert_eq!(c.queue.journal().fsync, peregrine_journal::Fsync::Never);
        assert_eq!(c.queue.id_log_fsync(), peregrine_journal::Fsync::Never);
        let e = Layers::new().overrides(["queue.segment_bytes=1000"]).unwrap().build::<CollectorConfig>().unwrap_err();
        assert!(e.to_string().contains("queue.segment_bytes"), "{e}");
        let e = Layers::new().overrides(["queue.max_bytes=40000000"]).unwrap().build::<CollectorConfig>().unwrap_err();
        assert!(e.to_string().contains("queue.max_bytes"), "{e}");
        let e = Layers::new().overrides(["queue.full_policy=drop_all"]).unwrap().build::<CollectorConfig>().unwrap_err();
        assert!(e.to_string().contains("queue.full_policy"), "{e}");
        // The commit point lags only where de-duplication covers what a crash reads again.
        let lag = |sets: &[&str]| Layers::new().overrides(sets.iter().copied()).unwrap().build::<CollectorConfig>().map(|c| c.queue.journal().commit_interval);
        assert_eq!(lag(&[]).unwrap(), std::time::Duration::from_secs(1));
        assert_eq!(lag(&["queue.commit_interval_ms=0"]).unwrap(), std::time::Duration::ZERO);
        assert_eq!(lag(&["queue.dedup_window=0"]).unwrap(), std::time::Duration::ZERO);
        let e = lag(&["queue.commit_interval_ms=60001"]).unwrap_err();
        assert!(e.to_string().contains("queue.commit_interval_ms"), "{e}");
    }

    #[test]
    fn ingest_threads_default_to_one_and_are_bounded() {
        assert_eq!(Layers::new().build::<CollectorConfig>().unwrap().ingest_threads, 1);
        assert_eq!(Layers::new().overrides(["ingest_threads=4"]).unwrap().build::<CollectorConfig>().unwrap().ingest_threads, 4);
        let e = Layers::new().overrides(["ingest_threads=0"]).unwrap().build::<CollectorConfig>().unwrap_err();
        assert_eq!(e.to_string(), "config key `ingest_threads` (set by --set ingest_threads=0): must be between 1 and 256");
    }

    #[test]
    fn enrollment_settings_are_checked_by_name() {
        let build = |sets: &[&str]| Layers::new().overrides(sets.iter().copied()).unwrap().build::<CollectorConfig>();
        let tls = ["tls.cert_file=/c.pem", "tls.key_file=/c.key"];
        let e = build(&["enroll.ca_cert_file=/ca.pem", "enroll.ca_key_file=/ca.key"]).unwrap_err();
        assert!(e.to_string().contains("mutual TLS needs tls.cert_file"), "{e}");
        let e = build(&[tls[0], tls[1], "enroll.ca_cert_file=/ca.pem"]).unwrap_err();
        assert!(e.to_string().contains("enroll.ca_cert_file") && e.to_string().contains("ca_key_file"), "{e}");
        let ok = [tls[0], tls[1], "enroll.ca_cert_file=/ca.pem", "enroll.ca_key_file=/ca.key"];
        let c = build(&ok).unwrap();
        // The enrollment CA stands in for tls.client_ca_file.
        assert!(c.tls.client_ca_file.is_none() && c.enroll.enabled());
        assert_eq!(c.enroll.service_accounts, ["system:serviceaccount:peregrine:peregrine-agent"]);
        let e = build(&[ok.as_slice(), &["enroll.cert_lifetime_s=60"]].concat()).unwrap_err();
        assert!(e.to_string().contains("enroll.cert_lifetime_s") && e.to_string().contains("between 600"), "{e}");
        let e = build(&[ok.as_slice(), &["enroll.kubernetes.api_url=ftp://x"]].concat()).unwrap_err();
        assert!(e.to_string().contains("enroll.kubernetes.api_url") && e.to_string().contains("not an http"), "{e}");
        let e = from_toml("[enroll]\nca_cert_file = \"/ca.pem\"\nca_key_file = \"/k\"\nservice_accounts = [\"agent\"]\n[tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\n").unwrap_err();
        assert!(e.contains("enroll.service_accounts") && e.contains("system:serviceaccount:<namespace>:<name>"), "{e}");
    }

    #[test]
    fn output_names_must_be_unique_plain_file_names() {
        let e = from_toml("[[outputs]]\nkind = \"stdout\"\nname = \"a/b\"\n").unwrap_err();
        assert!(e.contains("outputs[0].name") && e.contains("a/b"), "{e}");
        let e = from_toml("[[outputs]]\nkind = \"stdout\"\nname = \"x\"\n[[outputs]]\nkind = \"stdout\"\nname = \"x\"\n").unwrap_err();
        assert!(e.contains("outputs[1].name") && e.contains("two outputs"), "{e}");
        let e = from_toml("[output]\nkind = \"stdout\"\n[[outputs]]\nkind = \"stdout\"\nname = \"output\"\n").unwrap_err();
        assert!(e.contains("outputs[0].name"), "{e}");
        from_toml("[[outputs]]\nkind = \"stdout\"\n[[outputs]]\nkind = \"stdout\"\n").unwrap();
    }

    #[test]
    fn outputs_list_parses_each_kind_and_refuses_unknown_keys() {
        let c = from_toml(
            r#"
[[outputs]]
kind = "file"
path = "/tmp/all.jsonl"

[[outputs]]
kind = "cef_syslog"
kinds = ["exec", "alert"]
min_priority = "Warning"
redact_argv_patterns = ["--password=\\S+"]
address = "127.0.0.1:6514"
tls = true
ca_file = "/etc/ca.pem"

[[outputs]]
kind = "sentinel"
endpoint = "https://dce.example.ingest.monitor.azure.com"
dcr_immutable_id = "dcr-0123"
auth = { method = "client_secret", tenant_id = "t", client_id = "c", client_secret = "s" }

[[outputs]]
kind = "ocsf_file"
path = "/tmp/ocsf.jsonl"
"#,
        )
        .unwrap();
        let outs = c.effective_outputs();
        assert_eq!(outs.len(), 4, "no implicit stdout when [[outputs]] is set");
        assert!(matches!(outs[1].settings, KindSettings::CefSyslog(_)));
        assert_eq!(outs[1].common.kinds, ["exec", "alert"]);

        let e = from_toml("[[outputs]]\nkind = \"file\"\npath = \"/x\"\nbogus = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = from_toml("[[outputs]]\nkind = \"kafka\"\n").unwrap_err();
        assert!(e.contains("outputs[0]") && e.contains("kafka"), "{e}");
        let e = from_toml("[[outputs]]\nkind = \"stdout\"\nkinds = [\"exek\"]\n").unwrap_err();
        assert!(e.contains("outputs[0].kinds") && e.contains("exek"), "{e}");
        let e = from_toml("[[outputs]]\nkind = \"stdout\"\nredact_argv_patterns = [\"(\"]\n").unwrap_err();
        assert!(e.contains("outputs[0].redact_argv_patterns"), "{e}");
        let e = from_toml("[[outputs]]\nkind = \"stdout\"\nmin_priority = \"Loud\"\n").unwrap_err();
        assert!(e.contains("outputs[0].min_priority"), "{e}");
    }
}
