//! Drains the kernel ring buffer in batches and turns records into stamped events.
//!
//! The kernel wakes us only past a fill watermark; otherwise a short timer drains whatever has
//! accumulated. The drain never waits on anything downstream: when the queue to the sender is
//! full the event is dropped and counted, so backpressure can never reach the kernel ring.
//! Every loss, in the kernel or here, goes out as a `Loss` event too, once there is room.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use peregrine_proto::{AgentStatus, Event, Kind, Loss, v1::agent_status::Phase};
use prost::{Message, bytes::BytesMut};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::{
    clock::{BootClock, boot_now_ns},
    container::{ContainerStage, Enriched, Resolution},
    decode,
    kernel::{Sensor, transport},
    metrics::{KindCounters, Metrics, catch_up, reason},
    watermark::Previous,
    net::ConnTracker,
    process::Tracker,
    queue::{PassSender, Refused},
    rules::{self, RulesStage},
    sender::Encoded,
    ticker::Ticker,
};

/// Records per drain pass at most. The agent has one thread: a storm that fills the ring as
/// fast as it is read must not keep the sender, the HTTP endpoints and container lookups
/// waiting for the pass to end.
const MAX_PASS: usize = 4096;
/// Passes at shutdown at most: enough for a full ring of the smallest records.
const RING_PASSES_AT_STOP: usize = 64;
/// Scrapes closer together than this get the statistics of the kernel programs read for the
/// first of them.
const PROGRAM_STATS_MIN_AGE: Duration = Duration::from_secs(1);
/// Connects without an outcome are reported after about a second: checked 4 times a second.
/// The kernel's loss counters are read at least this often too.
const CONNECT_EXPIRY_EVERY: Duration = Duration::from_millis(250);

/// Identity every event carries, and the agent-wide sequence.
pub struct Stamper {
    node: String,
    cluster: String,
    agent_run: String,
    /// `node`, `cluster` and `agent_run` as encoded fields of an event, appended to every
    /// event as it is encoded ([`Encoded::new`]) instead of three strings cloned into each.
    /// Made once: the three are fixed for the run.
    identity: Vec<u8>,
    /// The run's random bits: event ids are these plus the sequence number, unique without a
    /// random-number syscall per event.
    run_bits: [u8; 8],
    seq: u64,
    clock: BootClock,
    /// Where events are encoded: see [`Encoded::new`].
    chunk: BytesMut,
}

/// Bytes of encoded events per allocation (an exec event is ~600 bytes). At most 64 KiB:
/// `bytes` remembers a buffer's first capacity only up to that when it allocates the next
/// chunk, so a larger value would size only the first one.
const ENCODING_CHUNK: usize = 64 << 10;

impl Stamper {
    pub fn new(node: String, cluster: String) -> Self {
        let run = Uuid::now_v7();
        let mut run_bits = [0u8; 8];
        run_bits.copy_from_slice(&run.as_bytes()[8..]);
        let agent_run = run.to_string();
        let identity =
            Event { node: node.clone(), cluster: cluster.clone(), agent_run: agent_run.clone(), ..Default::default() }
                .encode_to_vec();
        Self {
            node,
            cluster,
            agent_run,
            identity,
            run_bits,
            seq: 0,
            clock: BootClock::sample(),
            chunk: BytesMut::with_capacity(ENCODING_CHUNK),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn agent_run(&self) -> &str {
        &self.agent_run
    }

    /// A UUIDv8: the run's random bits, then the sequence number.
    fn event_id(&self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.run_bits);
        bytes[8..].copy_from_slice(&self.seq.to_be_bytes());
        // Encoded straight into its text: `to_string` goes through the formatting machinery.
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        Uuid::new_v8(bytes).hyphenated().encode_lower(&mut text).to_owned()
    }

    pub fn resample_clock(&mut self) {
        self.clock = BootClock::sample();
    }

    /// A new event of this agent, without its identity fields: [`Self::encode`] adds them.
    pub fn stamp(&mut self, boot_ns: u64, kind: Kind) -> Event {
        self.seq += 1;
        Event {
            id: self.event_id(),
            seq: self.seq,
            time_unix_nano: self.clock.to_unix_nanos(boot_ns),
            boot_ns,
            kind: Some(kind),
            ..Default::default()
        }
    }

    /// The event as the spool stores it, with this agent's identity fields.
    pub fn encode(&mut self, event: &Event) -> Encoded {
        Encoded::new(event, &self.identity, &mut self.chunk)
    }
}

/// The stages a record passes in the drain, in order after decoding.
pub struct Stages {
    pub tracker: Tracker,
    pub net: ConnTracker,
    pub containers: ContainerStage,
    /// Answers to the container stage's runtime lookups.
    pub resolutions: mpsc::Receiver<Resolution>,
    pub rules: Option<RulesStage>,
    /// A scrape of /metrics asking for the figures read on demand; answered once they are.
    pub scrapes: mpsc::Receiver<oneshot::Sender<()>>,
}

pub struct DrainConfig {
    pub drain_interval: Duration,
    pub heartbeat_interval: Duration,
    pub pause_file: Option<PathBuf>,
    /// What the previous run recorded of when it last observed (see `watermark.rs`).
    pub previous_run: Option<Previous>,
}

pub struct Drain {
    sensor: Sensor,
    maps: Option<transport::Maps>,
    tracker: Tracker,
    net: ConnTracker,
    containers: ContainerStage,
    resolutions: Option<mpsc::Receiver<Resolution>>,
    scrapes: Option<mpsc::Receiver<oneshot::Sender<()>>>,
    rules: Option<RulesStage>,
    alerts: Vec<peregrine_rules::Alert>,
    stamper: Stamper,
    queue: PassSender,
    metrics: Metrics,
    kind_counters: KindCounters,
    config: DrainConfig,
    drained_until: u64,
    /// Losses not yet reported in a Loss event, by reason.
    unreported: BTreeMap<&'static str, u64>,
    reported_total: BTreeMap<&'static str, u64>,
    /// The sender's loss counters as last turned into Loss reports.
    sender_losses_seen: BTreeMap<&'static str, u64>,
    /// The perf buffers' losses as last synced.
    perf_lost_seen: u64,
    /// When the programs' statistics were last read (for a scrape).
    program_stats_read: Option<std::time::Instant>,
}

impl Drain {
    pub fn new(
        sensor: Sensor,
        maps: transport::Maps,
        stages: Stages,
        stamper: Stamper,
        queue: PassSender,
        metrics: Metrics,
        config: DrainConfig,
    ) -> Self {
        Self {
            sensor,
            maps: Some(maps),
            tracker: stages.tracker,
            net: stages.net,
            containers: stages.containers,
            resolutions: Some(stages.resolutions),
            scrapes: Some(stages.scrapes),
            rules: stages.rules,
            alerts: Vec::new(),
            stamper,
            queue,
            metrics,
            kind_counters: KindCounters::default(),
            config,
            drained_until: 0,
            unreported: BTreeMap::new(),
            reported_total: BTreeMap::new(),
            sender_losses_seen: BTreeMap::new(),
            perf_lost_seen: 0,
            program_stats_read: None,
        }
    }

    /// Runs until `shutdown` turns true, then drains once more and emits the stopping status.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
        for (feature, verdict) in &self.sensor.features {
            let up = i64::from(crate::kernel::features::is_available(verdict));
            self.metrics.kernel_features.get_or_create(&crate::metrics::FeatureLabel { feature }).set(up);
        }
        self.metrics.transport.get_or_create(&crate::metrics::TransportLabel { transport: self.sensor.transport.name() }).set(1);
        for hook in &self.sensor.hooks {
            self.metrics.hooks.get_or_create(&crate::metrics::HookLabel { hook: hook.clone() }).set(1);
        }
        self.report_gap();
        self.status(Phase::Started);
        self.hand_over();
        let maps = self.maps.take().ok_or_else(|| std::io::Error::other("drain started twice"))?;
        let mut resolutions = self.resolutions.take().ok_or_else(|| std::io::Error::other("drain started twice"))?;
        let mut scrapes = self.scrapes.take().ok_or_else(|| std::io::Error::other("drain started twice"))?;
        let mut records = maps.open().map_err(std::io::Error::other)?;
        // One timer for every periodic duty: each timer of its own woke the thread apart from
        // the others (see `ticker` for what a wake-up costs).
        let period = self.config.drain_interval.min(CONNECT_EXPIRY_EVERY).min(self.config.heartbeat_interval);
        // Read before the timer starts: its k-th tick comes at or after start + k periods, so a
        // duty due every n periods is due on its n-th tick, however late each tick wakes.
        let start = tokio::time::Instant::now();
        let mut tick = Ticker::new(period)?;
        let mut expiry = Schedule::new(start, CONNECT_EXPIRY_EVERY);
        let mut heartbeat = Schedule::new(start, self.config.heartbeat_interval);
        // Set when a pass stopped at its bound: the next pass comes after the other tasks
        // (sender, HTTP, container lookups) had a turn on the agent's one thread.
        let mut backlog = false;
        loop {
            self.hand_over();
            tokio::select! {
                () = tokio::task::yield_now(), if backlog => backlog = self.drain_once(&mut records, false),
                () = records.readable() => backlog = self.drain_once(&mut records, false),
                () = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    let (expiry_due, heartbeat_due) = (expiry.due(now), heartbeat.due(now));
                    // The kernel's counters are read at least this often, records or not, and
                    // before a status reports them.
                    backlog = self.drain_once(&mut records, expiry_due || heartbeat_due);
                    for e in self.containers.expire(std::time::Instant::now()) {
                        self.finish(e);
                    }
                    if expiry_due {
                        self.expire_connects();
                    }
                    if heartbeat_due {
                        self.heartbeat();
                    }
                }
                Some(answer) = resolutions.recv() => {
                    // Records already in the ring may belong to this container: take them
                    // first, so its held events and these leave in kernel order.
                    backlog = self.drain_once(&mut records, false);
                    for e in self.containers.resolved(answer) {
                        self.finish(e);
                    }
                }
                Some(done) = scrapes.recv() => {
                    self.refresh_program_stats();
                    let _ = done.send(());
                }
                _ = shutdown.changed() => break,
            }
        }
        self.config.pause_file = None;
        // Bounded: what the ring holds (at most its size) when the stop came.
        for _ in 0..RING_PASSES_AT_STOP {
            if !self.drain_once(&mut records, true) {
                break;
            }
        }
        // Whatever still waits for metadata leaves now, partial.
        for e in self.containers.expire(std::time::Instant::now() + std::time::Duration::from_secs(3600)) {
            self.finish(e);
        }
        if let Some(rules) = &mut self.rules {
            rules.drain(&mut self.alerts);
        }
        self.send_alerts(None);
        self.status(Phase::Stopping);
        self.hand_over();
        Ok(())
    }

    /// Connects without an outcome within their window go out unanswered; the kernel's TCP
    /// dedup windows are read and their losses counted.
    fn expire_connects(&mut self) {
        let now = boot_now_ns();
        let lost_before = self.net.windows_lost();
        for kind in self.net.expire(now, &self.tracker, self.stamper.clock, &mut self.sensor) {
            self.emit(now, kind);
        }
        let lost = self.net.windows_lost() - lost_before;
        if lost > 0 {
            tracing::warn!(windows = lost, "TCP dedup windows lost before they were read (kernel map pressure)");
            self.lose(reason::TCP_WINDOW_LOST, lost);
        }
        self.metrics.connects_pending.set(i64::try_from(self.net.pending()).unwrap_or(i64::MAX));
        self.metrics.tcp_dedup_windows.set(i64::try_from(self.net.windows()).unwrap_or(i64::MAX));
    }

    fn heartbeat(&mut self) {
        self.stamper.resample_clock();
        self.tracker.sweep(boot_now_ns());
        self.containers.sweep(boot_now_ns());
        self.metrics.process_cache_entries.set(i64::try_from(self.tracker.len()).unwrap_or(i64::MAX));
        catch_up(&self.metrics.process_cache_evicted, self.tracker.evicted_early());
        if let Some(rules) = &mut self.rules {
            rules.flush(boot_now_ns(), &mut self.alerts);
        }
        self.send_alerts(None);
        self.status(Phase::Heartbeat);
        crate::alloc::release_free_memory();
    }

    /// What each kernel program cost so far, read for a scrape of /metrics (a syscall per
    /// program: read on every expiry tick they were a fifth of the agent's syscalls under a
    /// storm), at most once a second however often /metrics is asked for.
    fn refresh_program_stats(&mut self) {
        if self.program_stats_read.is_some_and(|t| t.elapsed() < PROGRAM_STATS_MIN_AGE) {
            return;
        }
        self.program_stats_read = Some(std::time::Instant::now());
        for (program, runs, ns) in self.sensor.program_stats() {
            let label = crate::metrics::ProgramLabel { program: program.to_owned() };
            catch_up(&self.metrics.program_runs.get_or_create(&label), runs);
            catch_up(&self.metrics.program_run_ns.get_or_create(&label), ns);
        }
    }

    /// The window between the previous run's last observed instant and this run's attach, as
    /// a Loss event: never lost (queued before anything else) and counted.
    fn report_gap(&mut self) {
        let Some(previous) = self.config.previous_run.take() else { return };
        let start = previous.until_unix_ns;
        let end = u64::try_from(self.stamper.clock.to_unix_nanos(self.sensor.attached_boot_ns)).unwrap_or(0);
        let detail = previous.detail();
        let seconds = end.saturating_sub(start) as f64 / 1e9;
        tracing::warn!(gap_seconds = seconds, %detail, "no agent observed this node for {seconds:.3} s before this start");
        self.metrics.observation_gaps.inc();
        self.metrics.observation_gap_seconds.inc_by(seconds);
        let gap = Loss {
            reason: reason::OBSERVATION_GAP.to_owned(),
            count: 0,
            total: 0,
            gap_start_unix_nano: start,
            gap_end_unix_nano: end,
            detail,
        };
        let event = self.stamper.stamp(boot_now_ns(), Kind::Loss(gap));
        self.push(event);
    }

    fn paused(&self) -> bool {
        self.config.pause_file.as_ref().is_some_and(|p| p.exists())
    }

    /// One pass over the ring, of at most `MAX_PASS` records; true when more are waiting.
    /// The kernel's loss counters (a syscall each) are read after a pass that read records, or
    /// when `read_counters`: a ring that lost records was full, so the pass after the loss reads
    /// some; the losses with no record behind them wait for the next forced read.
    fn drain_once(&mut self, records: &mut transport::Records, read_counters: bool) -> bool {
        if self.paused() {
            return false;
        }
        let started = boot_now_ns();
        let mut read = 0usize;
        let more = records.drain(MAX_PASS, |bytes| {
            read += 1;
            self.apply(bytes);
        });
        self.tracker.settle();
        if !more {
            self.drained_until = started;
        }
        // The perf buffers' losses are counted here, without a syscall.
        let perf_lost = records.lost();
        if read > 0 || read_counters || perf_lost != self.perf_lost_seen {
            self.perf_lost_seen = perf_lost;
            self.sync_kernel_counters(perf_lost);
        }
        self.report_losses();
        more
    }

    /// One kernel record through the stages.
    fn apply(&mut self, bytes: &[u8]) {
        match decode::decode(bytes) {
            Ok(decode::Record::Cgroup(cgroup)) => self.containers.apply_cgroup(&cgroup),
            Ok(decode::Record::ExecDenied(d)) => {
                self.tracker.settle();
                let alert = denied_exec_alert(&d, self.tracker.process_of(d.tgid, d.start_ns, d.pid, &d.comm, d.cgroup_id));
                self.emit(d.boot_ns, Kind::Alert(alert));
            }
            Ok(decode::Record::Conn(conn)) => {
                self.tracker.settle();
                let boot_ns = conn.boot_ns;
                for kind in self.net.apply(conn, &self.tracker, self.stamper.clock, &mut self.sensor) {
                    self.emit(boot_ns, kind);
                }
            }
            Ok(record) => {
                let boot_ns = record.boot_ns();
                if let Some(kind) = self.tracker.apply(record) {
                    self.emit(boot_ns, kind);
                }
            }
            Err(e) => {
                self.lose(reason::DECODE, 1);
                tracing::warn!(error = %e, reason = e.reason(), "undecodable kernel record dropped");
            }
        }
    }

    /// The stages after the process cache: container context (which may hold the event for
    /// a new container's metadata), then [`Self::finish`].
    fn emit(&mut self, boot_ns: u64, kind: Kind) {
        if let Some(enriched) = self.containers.enrich(boot_ns, kind) {
            self.finish(enriched);
        }
    }

    /// Stamping, rules, the queue; alerts right behind their event, with its context.
    fn finish(&mut self, e: Enriched) {
        let mut event = self.stamper.stamp(e.boot_ns, e.kind);
        event.container = e.container;
        event.enrichment = e.enrichment.to_owned();
        event.privilege = e.privilege;
        if let Some(rules) = &mut self.rules {
            rules.evaluate(&event, &self.stamper.node, &mut self.alerts);
        }
        let trigger = (!self.alerts.is_empty()).then(|| Trigger {
            event_id: event.id.clone(),
            process: event.shared_process().cloned(),
            container: event.container.clone(),
            enrichment: event.enrichment.clone(),
            privilege: event.privilege.clone(),
        });
        self.push(event);
        self.send_alerts(trigger);
    }

    /// Brings the metrics up to the kernel's cumulative counters; new kernel losses are queued
    /// for Loss events as well.
    /// `perf_lost`: what the perf buffers lost since the start (the ring's losses are counted
    /// by the programs, in the sensor's counters).
    fn sync_kernel_counters(&mut self, perf_lost: u64) {
        let lost = catch_up(&self.metrics.kernel_lost, self.sensor.records_lost() + perf_lost);
        if lost > 0 {
            *self.unreported.entry(reason::KERNEL_RING_FULL).or_default() += lost;
            tracing::warn!(lost, total = self.metrics.kernel_lost.get(), "kernel ring or perf buffers full: records lost");
        }
        let failed = catch_up(&self.metrics.kernel_read_failed, self.sensor.records_failed());
        if failed > 0 {
            *self.unreported.entry(reason::KERNEL_READ_FAILED).or_default() += failed;
        }
        catch_up(&self.metrics.connects_unattributed, self.sensor.connects_unattributed());
        // The sender counts what its spool lost; the Loss events for them go out from here.
        for why in [reason::SPOOL_FULL, reason::SPOOL_DAMAGED, reason::SPOOL_ERROR] {
            let total = self.metrics.dropped.get_or_create(&crate::metrics::ReasonLabel { reason: why }).get();
            let seen = self.sender_losses_seen.entry(why).or_default();
            if total > *seen {
                *self.unreported.entry(why).or_default() += total - *seen;
                *seen = total;
            }
        }
    }

    /// Counts a user-space drop and queues its Loss report.
    fn lose(&mut self, why: &'static str, n: u64) {
        self.metrics.drop_event(why, n);
        *self.unreported.entry(why).or_default() += n;
    }

    /// Sends a Loss event per reason with unreported losses, while the queue has room; what
    /// does not fit stays unreported for the next pass (a Loss event is never itself lost).
    fn report_losses(&mut self) {
        let pending: Vec<(&'static str, u64)> = self.unreported.iter().map(|(r, n)| (*r, *n)).collect();
        for (why, count) in pending {
            if count == 0 {
                continue;
            }
            let total = self.reported_total.get(why).copied().unwrap_or(0) + count;
            let event =
                self.stamper.stamp(boot_now_ns(), Kind::Loss(Loss { reason: why.to_owned(), count, total, ..Default::default() }));
            match self.queue.push(self.stamper.encode(&event)) {
                Ok(()) => {
                    self.kind_counters.inc(&self.metrics.events, "loss");
                    self.unreported.insert(why, 0);
                    self.reported_total.insert(why, total);
                }
                Err(_) => break,
            }
        }
    }

    fn push(&mut self, event: Event) {
        let kind = event.kind_name();
        self.kind_counters.inc(&self.metrics.events, kind);
        match self.queue.push(self.stamper.encode(&event)) {
            Ok(()) => {}
            Err(Refused::Full) => self.lose(reason::QUEUE_FULL, 1),
            // The sender is gone only during shutdown; what remains cannot be delivered.
            Err(Refused::Closed) => self.metrics.drop_event(reason::SHUTDOWN, 1),
        }
    }

    /// Sends what this turn queued to the sender in one message. Called before every wait:
    /// the sender runs on the same thread, so nothing it could take is held back.
    fn hand_over(&mut self) {
        let lost = self.queue.hand_over();
        if lost > 0 {
            self.metrics.drop_event(reason::SHUTDOWN, lost as u64);
        }
    }

    /// Stamps and queues pending alerts, right behind the event that triggered them. Folded
    /// follow-ups (no trigger at hand) carry the rule's context fields only.
    fn send_alerts(&mut self, trigger: Option<Trigger>) {
        if self.alerts.is_empty() {
            return;
        }
        let trigger = trigger.unwrap_or_default();
        for alert in std::mem::take(&mut self.alerts) {
            let folded = alert.folded;
            let process = if folded { None } else { trigger.process.clone() };
            let proto = rules::to_proto(alert, &trigger.event_id, process);
            let mut event = self.stamper.stamp(boot_now_ns(), Kind::Alert(proto));
            if !folded {
                event.container = trigger.container.clone();
                event.enrichment = trigger.enrichment.clone();
                event.privilege = trigger.privilege.clone();
            }
            self.push(event);
        }
    }

    fn status(&mut self, phase: Phase) {
        let status = AgentStatus {
            phase: phase as i32,
            hooks: self.sensor.hooks.clone(),
            // Held events were made before they leave: the barrier stops short of them.
            drained_until_boot_ns: self
                .containers
                .oldest_held()
                .map_or(self.drained_until, |held| self.drained_until.min(held.saturating_sub(1))),
            kernel_records_lost: self.metrics.kernel_lost.get(),
            events_dropped: self.metrics.dropped_total(),
            events_sent: self.metrics.sent.get(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_features: if phase == Phase::Started {
                self.sensor.features.iter().map(|(name, verdict)| ((*name).to_owned(), verdict.clone())).collect()
            } else {
                Default::default()
            },
            transport: if phase == Phase::Started {
                format!("{} ({})", self.sensor.transport.name(), self.sensor.transport_reason)
            } else {
                String::new()
            },
        };
        let event = self.stamper.stamp(boot_now_ns(), Kind::Status(status));
        self.push(event);
    }
}

/// A duty on the drain's timer, due every `every`.
struct Schedule {
    next: tokio::time::Instant,
    every: Duration,
}

impl Schedule {
    fn new(start: tokio::time::Instant, every: Duration) -> Self {
        Self { next: start + every, every }
    }

    /// True when due at `now`; the next time is one interval on from this one (from `now` if
    /// the thread was held up past a whole interval), so late ticks do not shift it.
    fn due(&mut self, now: tokio::time::Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next += self.every;
        if self.next <= now {
            self.next = now + self.every;
        }
        true
    }
}

/// The event an alert fired on: the alert carries its identity and context.
#[derive(Default)]
struct Trigger {
    event_id: String,
    process: Option<peregrine_proto::SharedProcess>,
    container: Option<peregrine_proto::Container>,
    enrichment: String,
    privilege: Vec<String>,
}

/// An exec the LSM hook refused, as an alert: the enforcement decision, with the process that
/// tried (its image is still the caller's: the exec never happened).
fn denied_exec_alert(d: &decode::ExecDenied, process: peregrine_proto::SharedProcess) -> peregrine_proto::v1::Alert {
    let fields = [
        ("evt.arg.filename", d.filename.clone()),
        ("proc.pid", d.pid.to_string()),
        ("proc.name", d.comm.clone()),
        ("peregrine.file.dev", d.dev.to_string()),
        ("peregrine.file.ino", d.ino.to_string()),
    ];
    peregrine_proto::v1::Alert {
        rule: "Exec denied by policy".into(),
        priority: "Critical".into(),
        tags: vec!["peregrine".into(), "enforcement".into(), "process".into()],
        output: format!("Exec of {} denied by process.deny_exec (pid={} comm={})", d.filename, d.pid, d.comm),
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        container_id: String::new(),
        count: 1,
        folded: false,
        event_id: String::new(),
        process: Some(process),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A duty every 250 ms on a 50 ms timer whose ticks wake late (by up to 40 ms, as a busy
    /// thread does) is due on every fifth tick exactly: lateness does not push it a tick on.
    #[test]
    fn a_schedule_on_late_ticks_keeps_its_rhythm() {
        let start = tokio::time::Instant::now();
        let mut expiry = Schedule::new(start, Duration::from_millis(250));
        let late = [0u64, 39, 3, 40, 17, 1, 33, 40, 0, 25, 8, 40, 12, 36, 2, 29, 40, 5, 19, 31];
        let due: Vec<usize> = (1..=late.len())
            .filter(|&k| expiry.due(start + Duration::from_millis(50 * k as u64 + late[k - 1])))
            .collect();
        assert_eq!(due, [5, 10, 15, 20]);
        // Held up past a whole interval: due once, then one interval on from then.
        assert!(expiry.due(start + Duration::from_millis(2000)));
        assert!(!expiry.due(start + Duration::from_millis(2200)));
        assert!(expiry.due(start + Duration::from_millis(2250)));
    }
}
