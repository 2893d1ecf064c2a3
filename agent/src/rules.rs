//! The rules stage: Falco-language rules (peregrine-rules) evaluated on each event in the
//! drain, so alerts are stamped in order right behind the event that triggered them.
//!
//! The engine reads fields through `peregrine_rules::proto_view::RuleEvent`, the view of a
//! proto event the collector's output filters use too.

use std::{collections::HashMap, sync::Arc, time::Duration};

use peregrine_proto::{Event, SharedProcess};
use peregrine_rules::{
    Alert, FoldConfig, Folder, PollOutcome, RulesHandle, RulesWatcher, WatcherThread, proto_view::RuleEvent,
};

use crate::config::RulesConfig;

#[derive(Debug, thiserror::Error)]
#[error("rules: {0} (fix the file, or the paths in rules.paths)")]
pub struct RulesError(String);

pub struct RulesStage {
    handle: Arc<RulesHandle>,
    folder: Folder,
    users: HashMap<u32, String>,
    _watcher: Option<WatcherThread>,
}

impl RulesStage {
    /// Loads the rules (an error here stops the agent: it would run without its detections)
    /// and starts the watcher that reloads them on change.
    pub fn start(config: &RulesConfig) -> Result<Option<Self>, RulesError> {
        if config.paths.is_empty() {
            return Ok(None);
        }
        let (handle, watcher) =
            RulesWatcher::start(config.paths.clone()).map_err(|e| RulesError(e.to_string()))?;
        let current = handle.current();
        let report = current.report();
        let compiled = current.rules().len();
        let skipped = report.skipped().count();
        tracing::info!(compiled, skipped, paths = ?config.paths, "rules loaded");
        for (name, reason) in report.skipped() {
            tracing::debug!(rule = name, reason = %reason, "rule skipped");
        }
        let watcher = watcher
            .spawn(Duration::from_millis(config.reload_interval_ms), |outcome| match outcome {
                PollOutcome::Reloaded { compiled, skipped } => tracing::info!(compiled, skipped, "rules reloaded"),
                PollOutcome::Failed(e) => tracing::error!(error = %e, "new rules do not load; the previous rules stay in force"),
                PollOutcome::Unchanged | PollOutcome::StillFailing => {}
            })
            .map_err(|e| RulesError(format!("starting the rules watcher: {e}")))?;
        Ok(Some(Self {
            handle,
            folder: Folder::new(FoldConfig { window: config.fold_window_ms.saturating_mul(1_000_000), max_keys: 10_000 }),
            users: read_passwd("/etc/passwd"),
            _watcher: Some(watcher),
        }))
    }

    /// Evaluates one event from node `node`; alerts to send now are appended to `out`.
    pub fn evaluate(&mut self, event: &Event, node: &str, out: &mut Vec<Alert>) {
        let Some(view) = RuleEvent::new(event, &self.users).map(|v| v.on_node(node)) else { return };
        let rules = self.handle.current();
        let time = event.boot_ns;
        let mut fired = Vec::new();
        rules.evaluate(&view, |rule| fired.push(rule.alert(&view, time)));
        for alert in fired {
            self.folder.offer(alert, time, out);
        }
    }

    /// Follow-ups of folding windows that ended by `now` (boot-time ns).
    pub fn flush(&mut self, now: u64, out: &mut Vec<Alert>) {
        self.folder.flush(now, out);
    }

    pub fn drain(&mut self, out: &mut Vec<Alert>) {
        self.folder.drain(out);
    }
}

fn read_passwd(path: &str) -> HashMap<u32, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(':');
            let name = parts.next()?;
            let uid = parts.nth(1)?.parse().ok()?;
            Some((uid, name.to_owned()))
        })
        .collect()
}

/// Alert to proto, linked to the event that triggered it.
pub fn to_proto(alert: Alert, event_id: &str, process: Option<SharedProcess>) -> peregrine_proto::v1::Alert {
    peregrine_proto::v1::Alert {
        rule: alert.rule.to_string(),
        priority: alert.priority.name().to_owned(),
        tags: alert.tags.to_vec(),
        output: alert.output,
        fields: alert.fields.into_iter().collect(),
        container_id: alert.container_id,
        count: alert.count,
        folded: alert.folded,
        event_id: event_id.to_owned(),
        process,
    }
}
