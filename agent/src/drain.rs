//! Drains the kernel ring buffer in batches and turns records into stamped events.
//!
//! The kernel wakes us only past a fill watermark; otherwise a short timer drains whatever has
//! accumulated. The drain never waits on anything downstream: when the queue to the sender is
//! full the event is dropped and counted, so backpressure can never reach the kernel ring.

use std::time::Duration;

use peregrine_proto::{AgentStatus, Event, Kind, v1::agent_status::Phase};
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc, sync::watch};
use uuid::Uuid;

use crate::{
    clock::{BootClock, boot_now_ns},
    decode,
    kernel::Sensor,
    metrics::{Metrics, reason},
};

/// Identity every event carries, and the agent-wide sequence.
pub struct Stamper {
    pub node: String,
    pub cluster: String,
    pub agent_run: String,
    seq: u64,
    clock: BootClock,
}

impl Stamper {
    pub fn new(node: String, cluster: String) -> Self {
        Self { node, cluster, agent_run: Uuid::now_v7().to_string(), seq: 0, clock: BootClock::sample() }
    }

    pub fn resample_clock(&mut self) {
        self.clock = BootClock::sample();
    }

    pub fn stamp(&mut self, boot_ns: u64, kind: Kind) -> Event {
        self.seq += 1;
        Event {
            id: Uuid::now_v7().to_string(),
            seq: self.seq,
            time_unix_nano: self.clock.to_unix_nanos(boot_ns),
            boot_ns,
            node: self.node.clone(),
            cluster: self.cluster.clone(),
            agent_run: self.agent_run.clone(),
            kind: Some(kind),
        }
    }
}

pub struct Drain {
    pub sensor: Sensor,
    ring: Option<RingBuf<MapData>>,
    pub stamper: Stamper,
    pub tx: mpsc::Sender<Event>,
    pub metrics: Metrics,
    pub drain_interval: Duration,
    pub heartbeat_interval: Duration,
    lost_seen: u64,
    failed_seen: u64,
    drained_until: u64,
}

impl Drain {
    pub fn new(
        sensor: Sensor,
        ring: RingBuf<MapData>,
        stamper: Stamper,
        tx: mpsc::Sender<Event>,
        metrics: Metrics,
        drain_interval: Duration,
        heartbeat_interval: Duration,
    ) -> Self {
        Self { sensor, ring: Some(ring), stamper, tx, metrics, drain_interval, heartbeat_interval, lost_seen: 0, failed_seen: 0, drained_until: 0 }
    }

    /// Runs until `shutdown` turns true, then drains once more and emits the stopping status.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
        self.status(Phase::Started);
        let mut tick = tokio::time::interval(self.drain_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        heartbeat.tick().await;
        let ring = self.ring.take().ok_or_else(|| std::io::Error::other("drain started twice"))?;
        // SAFETY: the RingBuf owns its map fd and keeps it open for as long as the AsyncFd
        // (which owns the RingBuf) is registered; nothing else closes or replaces it.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)? };
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    if let Ok(mut g) = guard {
                        g.clear_ready();
                        self.drain_once(g.get_inner_mut());
                    }
                }
                _ = tick.tick() => self.drain_once(ring.get_mut()),
                _ = heartbeat.tick() => {
                    self.drain_once(ring.get_mut());
                    self.stamper.resample_clock();
                    self.status(Phase::Heartbeat);
                }
                _ = shutdown.changed() => break,
            }
        }
        self.drain_once(ring.get_mut());
        self.status(Phase::Stopping);
        Ok(())
    }

    fn drain_once(&mut self, ring: &mut RingBuf<MapData>) {
        let started = boot_now_ns();
        loop {
            let decoded = match ring.next() {
                Some(item) => decode::decode(&item),
                None => break,
            };
            match decoded {
                Ok(d) => {
                    let event = self.stamper.stamp(d.boot_ns, Kind::Exec(d.exec));
                    self.push(event);
                }
                Err(e) => {
                    self.metrics.drop_event(reason::DECODE, 1);
                    tracing::warn!(error = %e, reason = e.reason(), "undecodable kernel record dropped");
                }
            }
        }
        self.drained_until = started;
        self.sync_kernel_counters();
    }

    fn sync_kernel_counters(&mut self) {
        let lost = self.sensor.records_lost();
        if lost > self.lost_seen {
            self.metrics.kernel_lost.inc_by(lost - self.lost_seen);
            tracing::warn!(lost = lost - self.lost_seen, total = lost, "kernel ring buffer full: records lost");
            self.lost_seen = lost;
        }
        let failed = self.sensor.records_failed();
        if failed > self.failed_seen {
            self.metrics.kernel_read_failed.inc_by(failed - self.failed_seen);
            self.failed_seen = failed;
        }
    }

    fn push(&mut self, event: Event) {
        let kind = event.kind_name();
        self.metrics.events.get_or_create(&crate::metrics::KindLabel { kind }).inc();
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.drop_event(reason::QUEUE_FULL, 1),
            // The sender is gone only during shutdown; what remains cannot be delivered.
            Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.drop_event(reason::COLLECTOR_UNAVAILABLE, 1),
        }
    }

    fn status(&mut self, phase: Phase) {
        let status = AgentStatus {
            phase: phase as i32,
            hooks: self.sensor.hooks.clone(),
            drained_until_boot_ns: self.drained_until,
            kernel_records_lost: self.lost_seen,
            events_dropped: self.metrics.dropped_total(),
            events_sent: self.metrics.sent.get(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let event = self.stamper.stamp(boot_now_ns(), Kind::Status(status));
        self.push(event);
    }
}
