//! Per-output counters: every event an output does not deliver is counted with its reason.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabel {
    pub output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub output: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default)]
pub struct OutputMetrics {
    pub sent: Family<OutputLabel, Counter>,
    pub filtered: Family<OutputLabel, Counter>,
    pub truncated: Family<OutputLabel, Counter>,
    pub dead_lettered: Family<ReasonLabel, Counter>,
    pub retries: Family<ReasonLabel, Counter>,
    pub batches_failed: Family<OutputLabel, Counter>,
}

impl OutputMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("peregrine_collector_output");
        r.register("events_sent", "Events an output delivered", self.sent.clone());
        r.register("events_filtered", "Events an output's routing (kinds, min_priority) did not select", self.filtered.clone());
        r.register("events_truncated", "Events shortened to fit an output's size limit (flagged in the event)", self.truncated.clone());
        r.register(
            "events_dead_lettered",
            "Events an output could not deliver and set aside (dead-letter file), by reason",
            self.dead_lettered.clone(),
        );
        r.register("retries", "Delivery attempts repeated, by reason", self.retries.clone());
        r.register("batches_failed", "Batches an output gave up on (not acknowledged; the agent resends)", self.batches_failed.clone());
    }

    fn label(output: &str) -> OutputLabel {
        OutputLabel { output: output.to_owned() }
    }

    pub fn sent(&self, output: &str, n: usize) {
        self.sent.get_or_create(&Self::label(output)).inc_by(n as u64);
    }
    pub fn filtered(&self, output: &str) {
        self.filtered.get_or_create(&Self::label(output)).inc();
    }
    pub fn truncated(&self, output: &str) {
        self.truncated.get_or_create(&Self::label(output)).inc();
    }
    pub fn batch_failed(&self, output: &str) {
        self.batches_failed.get_or_create(&Self::label(output)).inc();
    }
    pub fn dead_lettered(&self, output: &str, reason: &str) {
        self.dead_lettered.get_or_create(&ReasonLabel { output: output.to_owned(), reason: reason.to_owned() }).inc();
    }
    pub fn retry(&self, output: &str, reason: &str) {
        self.retries.get_or_create(&ReasonLabel { output: output.to_owned(), reason: reason.to_owned() }).inc();
    }

    /// Current value, for tests and logs.
    pub fn dead_lettered_count(&self, output: &str, reason: &str) -> u64 {
        self.dead_lettered.get_or_create(&ReasonLabel { output: output.to_owned(), reason: reason.to_owned() }).get()
    }
    pub fn sent_count(&self, output: &str) -> u64 {
        self.sent.get_or_create(&Self::label(output)).get()
    }
    pub fn truncated_count(&self, output: &str) -> u64 {
        self.truncated.get_or_create(&Self::label(output)).get()
    }
    pub fn retry_count(&self, output: &str, reason: &str) -> u64 {
        self.retries.get_or_create(&ReasonLabel { output: output.to_owned(), reason: reason.to_owned() }).get()
    }
}
