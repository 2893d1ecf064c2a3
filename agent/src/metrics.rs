//! The agent's Prometheus metrics. Every drop has a reason label; the same totals travel in
//! the status events, so the stream and the metrics agree.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// The `events` counter of each kind met so far, taken from the family once per kind: the
/// family's lock and label hash cost more than the increment, for every event.
#[derive(Default)]
pub struct KindCounters(Vec<(&'static str, Counter)>);

impl KindCounters {
    pub fn inc(&mut self, family: &Family<KindLabel, Counter>, kind: &'static str) {
        if let Some((_, counter)) = self.0.iter().find(|(k, _)| *k == kind) {
            counter.inc();
            return;
        }
        let counter = family.get_or_create(&KindLabel { kind }).clone();
        counter.inc();
        self.0.push((kind, counter));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Why an event left the pipeline without reaching the collector.
pub mod reason {
    /// The queue between drain and sender was full.
    pub const QUEUE_FULL: &str = "queue_full";
    /// The agent was stopping and its sender was already gone.
    pub const SHUTDOWN: &str = "shutdown";
    /// The spool was full: its policy dropped the oldest records or refused new ones.
    pub const SPOOL_FULL: &str = "spool_full";
    /// Spool records found damaged (checksum) on reading back.
    pub const SPOOL_DAMAGED: &str = "spool_damaged";
    /// The spool could not be written (disk full, I/O error).
    pub const SPOOL_ERROR: &str = "spool_error";
    /// A ring-buffer record that could not be decoded.
    pub const DECODE: &str = "decode_error";
    /// Loss event reasons for what the kernel counted (their metrics are the kernel_* ones).
    pub const KERNEL_RING_FULL: &str = "kernel_ring_full";
    /// No agent ran: the window between two runs (a Loss event with its bounds).
    pub const OBSERVATION_GAP: &str = "observation_gap";
    pub const KERNEL_READ_FAILED: &str = "kernel_read_failed";
    /// A TCP dedup window's summary (the count of connects the kernel absorbed in it) could
    /// not be read: the kernel's window map evicted it under pressure, or the read failed.
    pub const TCP_WINDOW_LOST: &str = "tcp_window_lost";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeatureLabel {
    pub feature: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabel {
    pub hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub events: Family<KindLabel, Counter>,
    pub dropped: Family<ReasonLabel, Counter>,
    pub sent: Counter,
    pub kernel_lost: Counter,
    pub kernel_read_failed: Counter,
    pub batches_acked: Counter,
    pub reconnects: Counter,
    pub collector_connected: Gauge,
    pub process_cache_entries: Gauge,
    pub process_cache_evicted: Counter,
    pub connects_pending: Gauge,
    pub tcp_dedup_windows: Gauge,
    pub connects_unattributed: Counter,
    pub container_lookups: Family<ResultLabel, Counter>,
    pub enrichment_incomplete: Family<StatusLabel, Counter>,
    pub containers_known: Gauge,
    pub events_held: Gauge,
    pub spool_records: Gauge,
    pub spool_bytes: Gauge,
    pub spool_oldest_age_ms: Gauge,
    pub observation_gaps: Counter,
    pub kernel_features: Family<FeatureLabel, Gauge>,
    pub transport: Family<TransportLabel, Gauge>,
    pub hooks: Family<HookLabel, Gauge>,
    pub program_runs: Family<ProgramLabel, Counter>,
    pub program_run_ns: Family<ProgramLabel, Counter>,
    pub observation_gap_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("peregrine_agent");
        r.register("events", "Events produced, by kind", self.events.clone());
        r.register("events_dropped", "Events dropped in user space, by reason", self.dropped.clone());
        r.register("events_sent", "Events acknowledged by the collector", self.sent.clone());
        r.register("kernel_records_lost", "Records the kernel could not write (ring buffer full)", self.kernel_lost.clone());
        r.register("kernel_read_failures", "Records abandoned because a kernel read failed", self.kernel_read_failed.clone());
        r.register("batches_acked", "Batches acknowledged by the collector", self.batches_acked.clone());
        r.register("collector_reconnects", "Connections opened to the collector after the first", self.reconnects.clone());
        r.register("collector_connected", "1 while a collector stream is open", self.collector_connected.clone());
        r.register("process_cache_entries", "Processes in the process cache", self.process_cache_entries.clone());
        r.register("connects_pending", "TCP connects awaiting their outcome", self.connects_pending.clone());
        r.register("tcp_dedup_windows", "TCP dedup windows the agent will read when they end", self.tcp_dedup_windows.clone());
        r.register(
            "connects_unattributed",
            "Connect outcomes reported without a process (owner evicted or older than the agent)",
            self.connects_unattributed.clone(),
        );
        r.register(
            "process_cache_evicted",
            "Processes evicted from the cache before their exit grace ended (cache full)",
            self.process_cache_evicted.clone(),
        );
        r.register(
            "kernel_feature",
            "1 if the kernel offers the feature (probed at start; see the started status for why not)",
            self.kernel_features.clone(),
        );
        r.register(
            "kernel_program_runs",
            "Runs of each kernel program, counted by the kernel while kernel.bpf_stats_enabled = 1",
            self.program_runs.clone(),
        );
        r.register(
            "kernel_program_run_ns",
            "Time spent in each kernel program (ns), counted while kernel.bpf_stats_enabled = 1 (which adds its own clock reads)",
            self.program_run_ns.clone(),
        );
        r.register(
            "kernel_hook",
            "1 for each kernel hook attached (the started status lists them; optional ones such as the BPF LSM exec hook only where the kernel has them and the configuration asks)",
            self.hooks.clone(),
        );
        r.register(
            "kernel_transport",
            "1 for the transport kernel records travel by (ring_buffer, or perf_event_array where the kernel has no ring buffer or it is configured)",
            self.transport.clone(),
        );
        r.register(
            "observation_gaps",
            "Windows in which no agent observed this node (restarts, upgrades, crashes), reported at start",
            self.observation_gaps.clone(),
        );
        r.register(
            "observation_gap_seconds",
            "Total length of the observation gaps reported by this run",
            self.observation_gap_seconds.clone(),
        );
        self.register_context(registry);
        r_spool(registry, self);
    }

    pub fn register_context(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("peregrine_agent");
        r.register(
            "container_lookups",
            "Container runtime (CRI) lookups, by result: ok, not_found (gave up), error",
            self.container_lookups.clone(),
        );
        r.register(
            "events_enrichment_incomplete",
            "Events that left without full container context, by enrichment status (partial, none)",
            self.enrichment_incomplete.clone(),
        );
        r.register("containers_known", "Containers with runtime metadata in the agent's cache", self.containers_known.clone());
        r.register(
            "container_events_held",
            "Events waiting for their new container's metadata (bounded by container.resolve_wait_ms)",
            self.events_held.clone(),
        );
    }

    pub fn drop_event(&self, reason: &'static str, n: u64) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc_by(n);
    }

    /// Sum over all drop reasons.
    pub fn dropped_total(&self) -> u64 {
        [reason::QUEUE_FULL, reason::SHUTDOWN, reason::SPOOL_FULL, reason::SPOOL_DAMAGED, reason::SPOOL_ERROR, reason::DECODE]
            .into_iter()
            .map(|reason| self.dropped.get_or_create(&ReasonLabel { reason }).get())
            .sum()
    }
}

fn r_spool(registry: &mut Registry, m: &Metrics) {
    let r = registry.sub_registry_with_prefix("peregrine_agent");
    r.register("spool_records", "Events in the spool not yet acknowledged by the collector", m.spool_records.clone());
    r.register("spool_bytes", "Bytes of those events", m.spool_bytes.clone());
    r.register("spool_oldest_age_ms", "Age of the oldest unacknowledged spooled event (0 when empty)", m.spool_oldest_age_ms.clone());
}

/// Advances a counter that mirrors a cumulative total kept elsewhere (kernel maps, the
/// process cache, the spool); returns by how much.
pub fn catch_up(counter: &Counter, total: u64) -> u64 {
    let delta = total.saturating_sub(counter.get());
    if delta > 0 {
        counter.inc_by(delta);
    }
    delta
}
