//! Streams events to the collector through the on-disk spool; nothing leaves the spool before
//! the collector has acknowledged it.
//!
//! Every event from the drain is appended to the spool (a `peregrine-journal`: checksummed
//! records in segment files) and flushed to the OS once per batch, so it survives the agent
//! being killed. Batches are read back from the spool and sent as they are stored (the
//! `EventBatchRaw` message, wire-identical to `EventBatch`), with a window of batches in flight;
//! each acknowledgement commits the spool up to its batch. After a reconnect (or a restart) the
//! spool is replayed from its commit point: the collector recognises the replayed events by
//! their ids. While no collector answers, events accumulate in the spool, up to its size
//! bound; then the configured policy drops the oldest or the newest, each counted, and the drain
//! reports the count in a Loss event. The drain never waits on any of this.

use std::{collections::VecDeque, time::Duration};

use peregrine_journal::{Appended, Journal};
use peregrine_proto::{Ack, Event, Kind, v1::EventBatchRaw, v1::agent_status::Phase};
use prost::{
    Message,
    bytes::{Bytes, BytesMut},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::{
    config::{CollectorConfig, PipelineConfig},
    metrics::{Metrics, ReasonLabel, catch_up, reason},
    queue::PassReceiver,
    watermark::Watermark,
};

pub struct Sender {
    /// This node's name: what an enrolled certificate is issued for.
    pub node_name: String,
    pub collector: CollectorConfig,
    pub pipeline: PipelineConfig,
    pub metrics: Metrics,
    pub spool: Journal,
    /// Up to when the node was observed, recorded once the status saying so is in the spool.
    pub watermark: Option<Watermark>,
    /// The latest status's (drained-until instant, stopping), until the next flush.
    pub unflushed_mark: Option<(u64, bool)>,
}

enum Outcome {
    /// The queue closed: the agent is stopping.
    Finished,
    /// The connection failed or ended; reconnect.
    Disconnected(String),
}

/// Batches sent and not yet acknowledged, at most.
const WINDOW: usize = 8;
/// Bytes of events per batch, at most (the collector's message limit is larger).
const BATCH_MAX_BYTES: usize = 4 << 20;

/// An event as the drain queues it: encoded while the drain still has it in cache (an
/// `Event` is ~900 bytes, moved into the queue and out again otherwise), with the one thing
/// the sender needs to know of it.
pub struct Encoded {
    pub bytes: Bytes,
    /// For a status: up to when the node was observed (wall clock, ns) and whether the agent
    /// is stopping; recorded once the status is flushed to the spool.
    pub observed: Option<(u64, bool)>,
}

impl Encoded {
    /// `suffix`: fields encoded once for every event (the agent's identity). A protobuf
    /// message's fields may come in any order, and `event` leaves those fields empty.
    ///
    /// `chunk`: where the encoding is written. The event's bytes are split off it and share
    /// its allocation with the events encoded before and after. Before, each event took two
    /// allocations (a buffer, and the spool's shared handle to it), each touching memory freed
    /// long ago; now a chunk costs two for ~100 events, and none when it is used again in
    /// place (once the spool has let go of all its events when the next one is encoded). An
    /// event larger than the room left gets a new chunk of at least its size; if the old
    /// chunk was free, `bytes` grows it instead, and it stays that size (rare: a 16 KiB argv
    /// with five ancestors' is still under 64 KiB).
    pub fn new(event: &Event, suffix: &[u8], chunk: &mut BytesMut) -> Self {
        chunk.reserve(event.encoded_len() + suffix.len());
        event.encode_raw(chunk);
        chunk.extend_from_slice(suffix);
        let bytes = chunk.split().freeze();
        let observed = match &event.kind {
            Some(Kind::Status(s)) => {
                // Everything before the status's barrier is ahead of it in the spool.
                let behind = i64::try_from(event.boot_ns.saturating_sub(s.drained_until_boot_ns)).unwrap_or(i64::MAX);
                let until = u64::try_from(event.time_unix_nano.saturating_sub(behind)).unwrap_or(0);
                Some((until, s.phase == Phase::Stopping as i32))
            }
            _ => None,
        };
        Self { bytes, observed }
    }
}

/// A batch in flight: its number, the last spool record in it, its size.
struct InFlight {
    batch_seq: u64,
    last_record: u64,
    events: u64,
}

impl Sender {
    pub async fn run(mut self, mut rx: PassReceiver) {
        let mut backoff = Duration::from_millis(100);
        let max_backoff = Duration::from_millis(self.collector.max_backoff_ms.max(100));
        let mut connected_before = false;
        let mut last_error = String::new();
        self.report_spool();
        loop {
            match self.connect().await {
                Ok(channel) => {
                    if connected_before {
                        self.metrics.reconnects.inc();
                    }
                    connected_before = true;
                    tracing::info!(collector = %self.collector.address, spooled = self.spool.depth().records, "connected to collector");
                    backoff = Duration::from_millis(100);
                    last_error.clear();
                    match self.stream(channel, &mut rx).await {
                        Outcome::Finished => break,
                        Outcome::Disconnected(e) => {
                            tracing::warn!(collector = %self.collector.address, error = %e, "collector stream ended; spooling and reconnecting");
                            self.forget_refused_certificate(&e);
                        }
                    }
                }
                Err(e) => {
                    self.forget_refused_certificate(&e);
                    // Log a failure once until it changes, not on every retry.
                    if e != last_error {
                        tracing::warn!(collector = %self.collector.address, error = %e, "collector unreachable; events are spooled until it is back");
                        last_error = e;
                    }
                }
            }
            // Wait out the backoff while still taking (and spooling) what arrives.
            let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 4 + 10));
            let deadline = tokio::time::Instant::now() + backoff + jitter;
            let mut unflushed = 0usize;
            let open = loop {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(pass) => self.take(pass, &mut unflushed, rx.is_empty()),
                        None => break false,
                    },
                    _ = tokio::time::sleep_until(deadline) => break true,
                }
            };
            if !open {
                break;
            }
            backoff = (backoff * 2).min(max_backoff);
        }
        self.flush();
        if let Err(e) = self.spool.sync_commit() {
            tracing::warn!(error = %e, "writing the spool's commit point failed: acknowledged events may be sent again");
        }
        tracing::info!(spooled = self.spool.depth().records, "sender stopped; unacknowledged events stay in the spool");
    }

    /// Spools a drain pass's events, flushing whenever a batch is full and after the last
    /// pass waiting (`last`): a pass costs one write and one send, and no timer has to wake
    /// the agent for it.
    fn take(&mut self, pass: Vec<Encoded>, unflushed: &mut usize, last: bool) {
        for event in pass {
            self.accept(event);
            *unflushed += 1;
            if *unflushed >= self.pipeline.batch_max_events {
                self.flush();
                *unflushed = 0;
            }
        }
        if last && *unflushed > 0 {
            self.flush();
            *unflushed = 0;
        }
    }

    /// Appends one event to the spool (buffered; see [`Self::flush`]).
    fn accept(&mut self, event: Encoded) {
        // Handed over as it is: the spool keeps this buffer for the sender's read.
        match self.spool.append_bytes(event.bytes) {
            Ok(Appended::Stored(_)) => {
                if event.observed.is_some() {
                    self.unflushed_mark = event.observed;
                }
            }
            // A refused record is in the spool's dropped count, mirrored below.
            Ok(Appended::Dropped) => {}
            Err(e) => {
                self.metrics.drop_event(reason::SPOOL_ERROR, 1);
                tracing::warn!(error = %e, "spool write failed: event dropped");
            }
        }
    }

    fn flush(&mut self) {
        match self.spool.flush() {
            Ok(()) => {
                if let (Some(w), Some((until, stopping))) = (&mut self.watermark, self.unflushed_mark.take()) {
                    w.record(until, stopping);
                }
            }
            Err(e) => tracing::warn!(error = %e, "spool flush failed"),
        }
        self.report_spool();
    }

    /// Mirrors the spool's counters into the metrics after a flush (so the depth gauge counts
    /// what is on its way to disk): depth, and the records its full policy dropped (the drain
    /// turns those into Loss events).
    fn report_spool(&self) {
        let depth = self.spool.depth();
        self.metrics.spool_records.set(i64::try_from(depth.records).unwrap_or(i64::MAX));
        self.metrics.spool_bytes.set(i64::try_from(depth.bytes).unwrap_or(i64::MAX));
        let age_ms = depth.oldest_unix_ms.map_or(0, |t| crate::clock::unix_now_ms().saturating_sub(t));
        self.metrics.spool_oldest_age_ms.set(age_ms);
        // Only the spool's own counts feed these two reasons.
        catch_up(&self.metrics.dropped.get_or_create(&ReasonLabel { reason: reason::SPOOL_FULL }), self.spool.dropped());
        catch_up(&self.metrics.dropped.get_or_create(&ReasonLabel { reason: reason::SPOOL_DAMAGED }), self.spool.damage_total());
    }

    async fn connect(&self) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(self.collector.address.clone())
            .map_err(|e| format!("invalid collector.address: {e}"))?
            .connect_timeout(Duration::from_millis(self.collector.connect_timeout_ms))
            .tcp_nodelay(true);
        let endpoint = match self.client_tls(&endpoint).await? {
            Some(tls) => endpoint
                .tls_config(tls)
                .map_err(|e| format!("collector TLS settings: {}", crate::kernel::error_chain(&e)))?,
            None => endpoint,
        };
        endpoint.connect().await.map_err(|e| crate::kernel::error_chain(&e))
    }

    /// mTLS settings, read from the files at every connect (certificates get renewed); with
    /// `enroll_token_file`, the certificate is first obtained or renewed from the collector.
    async fn client_tls(&self, endpoint: &Endpoint) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let tls = &self.collector.tls;
        let (Some(ca), Some(cert), Some(key)) = (&tls.ca_file, &tls.cert_file, &tls.key_file) else {
            return Ok(None);
        };
        let read = |path: &std::path::PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| format!("reading {what} {} (collector.tls): {e}", path.display()))
        };
        let mut trust = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "the collector CA")?));
        if let Some(name) = &tls.server_name {
            trust = trust.domain_name(name.clone());
        }
        if let Some(enrollment) = self.enrollment() {
            enrollment.ensure(endpoint, &trust).await?;
        }
        Ok(Some(trust.identity(Identity::from_pem(read(cert, "this node's certificate")?, read(key, "this node's key")?))))
    }

    /// Where this node's enrolled certificate is kept, when it enrolls (`enroll_token_file`).
    fn enrollment(&self) -> Option<crate::enroll::Enrollment<'_>> {
        let tls = &self.collector.tls;
        match (&tls.enroll_token_file, &tls.cert_file, &tls.key_file) {
            (Some(token_file), Some(cert_file), Some(key_file)) => {
                Some(crate::enroll::Enrollment { token_file, cert_file, key_file, node: &self.node_name })
            }
            _ => None,
        }
    }

    /// An enrolled certificate the collector refuses (its enrollment CA was replaced, or the
    /// certificate expired on an open stream) is enrolled again at the next connect.
    fn forget_refused_certificate(&self, error: &str) {
        if let Some(enrollment) = self.enrollment()
            && crate::enroll::refuses_certificate(error)
        {
            enrollment.discard();
        }
    }

    /// Opens `peregrine.v1.Ingest/Stream` sending raw batches (the collector queues each
    /// event's bytes as they are).
    async fn open(
        &self,
        channel: Channel,
        batches: ReceiverStream<EventBatchRaw>,
    ) -> Result<tonic::Streaming<Ack>, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(channel);
        if self.collector.compression == crate::config::Compression::Gzip {
            grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("collector not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<EventBatchRaw, Ack>::default();
        let path = http::uri::PathAndQuery::from_static("/peregrine.v1.Ingest/Stream");
        Ok(grpc.streaming(tonic::Request::new(batches), path, codec).await?.into_inner())
    }

    async fn stream(&mut self, channel: Channel, rx: &mut PassReceiver) -> Outcome {
        let (out, out_rx) = mpsc::channel::<EventBatchRaw>(WINDOW);
        let connect_timeout = Duration::from_millis(self.collector.connect_timeout_ms);
        let mut acks = match tokio::time::timeout(connect_timeout, self.open(channel, ReceiverStream::new(out_rx))).await {
            Ok(Ok(acks)) => acks,
            // With the sources: a TLS alert about this node's certificate is in them.
            Ok(Err(status)) => {
                return Outcome::Disconnected(format!("collector refused the stream: {}", crate::kernel::error_chain(&status)));
            }
            Err(_) => return Outcome::Disconnected("collector did not answer the stream in time".into()),
        };
        self.metrics.collector_connected.set(1);
        // Replay from the commit point: what was sent before and not acknowledged goes again.
        let mut cursor = self.spool.committed();
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut batch_seq = 0u64;
        let mut unflushed = 0usize;
        let mut queue_open = true;
        // After the queue closes, wait this long at most for the last acknowledgements.
        let mut finish_by: Option<tokio::time::Instant> = None;

        let outcome = loop {
            if let Err(e) = self.fill_window(&out, &mut cursor, &mut in_flight, &mut batch_seq).await {
                break Outcome::Disconnected(e);
            }
            if !queue_open && in_flight.is_empty() && cursor >= self.spool.last_seq() {
                break Outcome::Finished;
            }
            tokio::select! {
                next = rx.recv(), if queue_open => match next {
                    Some(pass) => self.take(pass, &mut unflushed, rx.is_empty()),
                    None => {
                        queue_open = false;
                        self.flush();
                        finish_by = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                    }
                },
                _ = async { if let Some(t) = finish_by { tokio::time::sleep_until(t).await } }, if finish_by.is_some() => {
                    tracing::warn!(batches = in_flight.len(), "stopping without the collector's last acknowledgements: they stay spooled");
                    break Outcome::Finished;
                }
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => self.acknowledged(&ack, &mut in_flight),
                    Ok(None) => break Outcome::Disconnected("collector closed the stream".into()),
                    Err(status) => break Outcome::Disconnected(format!("collector stream failed: {}", crate::kernel::error_chain(&status))),
                },
            }
        };
        self.metrics.collector_connected.set(0);
        outcome
    }

    /// Sends spooled records past `cursor` until the window is full or the spool is exhausted.
    async fn fill_window(
        &mut self,
        out: &mpsc::Sender<EventBatchRaw>,
        cursor: &mut u64,
        in_flight: &mut VecDeque<InFlight>,
        batch_seq: &mut u64,
    ) -> Result<(), String> {
        while in_flight.len() < WINDOW {
            let (records, damage) = self
                .spool
                .read_after(*cursor, self.pipeline.batch_max_events, BATCH_MAX_BYTES)
                .map_err(|e| format!("reading the spool: {e}"))?;
            for d in &damage {
                tracing::warn!(segment = %d.segment.display(), offset = d.offset, reason = %d.reason, "damaged spool record skipped");
            }
            if !damage.is_empty() {
                self.report_spool();
            }
            let Some(&(last, _)) = records.last() else { return Ok(()) };
            *batch_seq += 1;
            in_flight.push_back(InFlight { batch_seq: *batch_seq, last_record: last, events: records.len() as u64 });
            *cursor = last;
            let events = records.into_iter().map(|(_, payload)| payload).collect();
            out.send(EventBatchRaw { batch_seq: *batch_seq, events }).await.map_err(|_| "collector stream closed".to_owned())?;
        }
        Ok(())
    }

    fn acknowledged(&mut self, ack: &Ack, in_flight: &mut VecDeque<InFlight>) {
        let mut last = None;
        while let Some(front) = in_flight.front() {
            if front.batch_seq > ack.batch_seq {
                break;
            }
            // Acks come in order; one covers every batch before it.
            self.metrics.sent.inc_by(front.events);
            self.metrics.batches_acked.inc();
            last = Some(front.last_record);
            in_flight.pop_front();
        }
        if let Some(seq) = last
            && let Err(e) = self.spool.commit(seq)
        {
            // The records were delivered; at worst they are sent again after a restart.
            tracing::warn!(error = %e, "spool commit failed");
        }
        self.report_spool();
    }
}

#[cfg(test)]
mod tests {
    use peregrine_proto::{AgentStatus, ProcessExit};

    use super::*;
    use crate::drain::Stamper;

    /// The identity fields appended at encoding decode as if the event had carried them, and
    /// the collector's header peek finds the node there too.
    #[test]
    fn an_encoded_event_carries_the_agents_identity() {
        let mut stamper = Stamper::new("node-7".into(), "prod-west".into());
        let event = stamper.stamp(5, Kind::Exit(ProcessExit { exit_code: 3, ..Default::default() }));
        assert!(event.node.is_empty() && event.cluster.is_empty() && event.agent_run.is_empty());
        let encoded = stamper.encode(&event);
        assert_eq!(encoded.observed, None);
        let decoded = Event::decode(&encoded.bytes[..]).unwrap();
        assert_eq!(decoded, Event { node: "node-7".into(), cluster: "prod-west".into(), agent_run: stamper.agent_run().to_owned(), ..event.clone() });
        let header = peregrine_proto::EventHeader::peek(&encoded.bytes).unwrap();
        assert_eq!((header.id, header.node, header.kind), (event.id.as_bytes(), "node-7", "exit"));
        // The collector's JSON writer refuses a singular field sent twice: none is.
        let mut json = Vec::new();
        peregrine_proto::json::event_json(&encoded.bytes, &mut json).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!((json["node"].as_str(), json["cluster"].as_str()), (Some("node-7"), Some("prod-west")));
    }

    /// Events are split off shared chunks: each keeps its own bytes however many come after
    /// it, across chunk boundaries, and one larger than a chunk gets room of its own.
    #[test]
    fn events_encoded_one_after_another_keep_their_own_bytes() {
        use peregrine_proto::{Process, SharedProcess};
        let mut stamper = Stamper::new("node-7".into(), "prod-west".into());
        let exit = |code: i32, argv: Vec<String>| {
            let process = (!argv.is_empty()).then(|| SharedProcess::from(Process { argv, ..Process::default() }));
            Kind::Exit(ProcessExit { exit_code: code, process, ..Default::default() })
        };
        let check = |pairs: &[(Event, Encoded)]| {
            for (event, encoded) in pairs {
                let decoded = Event::decode(&encoded.bytes[..]).unwrap();
                assert_eq!(Event { node: String::new(), cluster: String::new(), agent_run: String::new(), ..decoded }, *event);
            }
        };
        // ~100 bytes each: 2,000 of them fill several chunks; one of 100 kB fills none.
        let mut pairs: Vec<(Event, Encoded)> = Vec::new();
        for i in 0..2000 {
            let event = stamper.stamp(i, exit(i as i32, Vec::new()));
            let encoded = stamper.encode(&event);
            pairs.push((event, encoded));
        }
        assert!(pairs.iter().map(|(_, e)| e.bytes.len()).sum::<usize>() > 3 * (64 << 10));
        let large = stamper.stamp(2000, exit(-1, vec!["a".repeat(100_000)]));
        let encoded = stamper.encode(&large);
        assert!(encoded.bytes.len() > 100_000);
        pairs.push((large, encoded));
        check(&pairs);
        // Every other one sent (its handle dropped): what is still held keeps its bytes while
        // later events are written.
        let mut kept: Vec<(Event, Encoded)> = pairs.into_iter().step_by(2).collect();
        for i in 3000..5000 {
            let event = stamper.stamp(i, exit(i as i32, Vec::new()));
            let encoded = stamper.encode(&event);
            kept.push((event, encoded));
        }
        check(&kept);
        // All sent: the drain's chunk is written again from its start; what goes there is right.
        drop(kept);
        let again: Vec<(Event, Encoded)> = (6000..6100)
            .map(|i| {
                let event = stamper.stamp(i, exit(i as i32, Vec::new()));
                let encoded = stamper.encode(&event);
                (event, encoded)
            })
            .collect();
        check(&again);
    }

    /// A pass is spooled whole, flushed at every full batch inside it and after the last
    /// pass waiting; the status's observation mark is recorded only once it is flushed.
    #[test]
    fn a_pass_is_flushed_at_full_batches_and_after_the_last_pass() {
        let dir = std::env::temp_dir().join(format!("peregrine-sender-take-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Journal::open(&dir.join("spool"), peregrine_journal::JournalConfig::default()).unwrap();
        let mut sender = Sender {
            node_name: "node-7".into(),
            collector: CollectorConfig::default(),
            pipeline: PipelineConfig { batch_max_events: 2, ..PipelineConfig::default() },
            metrics: Metrics::default(),
            spool,
            watermark: Some(Watermark::in_dir(&dir)),
            unflushed_mark: None,
        };
        let flushed = |sender: &mut Sender| sender.spool.read_after(0, 100, 1 << 20).unwrap().0.len();
        let mut stamper = Stamper::new("node-7".into(), "prod-west".into());
        let mut pass = |n: u64, status: bool| -> Vec<Encoded> {
            (0..n)
                .map(|i| {
                    let kind = if status && i == n - 1 {
                        Kind::Status(AgentStatus { phase: Phase::Heartbeat as i32, ..Default::default() })
                    } else {
                        Kind::Exit(ProcessExit::default())
                    };
                    let event = stamper.stamp(1 + i, kind);
                    stamper.encode(&event)
                })
                .collect()
        };
        let mut unflushed = 0;
        // Five events with more passes waiting: two full batches flushed, one event held.
        sender.take(pass(5, true), &mut unflushed, false);
        assert_eq!((flushed(&mut sender), unflushed), (4, 1));
        assert!(sender.unflushed_mark.is_some(), "the status is the held event: its mark waits for the flush");
        assert_eq!(Watermark::in_dir(&dir).previous(), None);
        // The last pass waiting: everything is flushed, the mark recorded.
        sender.take(pass(1, false), &mut unflushed, true);
        assert_eq!((flushed(&mut sender), unflushed), (6, 0));
        assert!(sender.unflushed_mark.is_none());
        assert!(Watermark::in_dir(&dir).previous().is_some(), "recorded once flushed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A status says up to when the node was observed: its time less how far its barrier is
    /// behind it.
    #[test]
    fn an_encoded_status_says_until_when_the_node_was_observed() {
        let status = |phase: Phase| Event {
            boot_ns: 10_000,
            time_unix_nano: 1_000_000,
            kind: Some(Kind::Status(AgentStatus { phase: phase as i32, drained_until_boot_ns: 9_000, ..Default::default() })),
            ..Default::default()
        };
        let mut chunk = BytesMut::new();
        assert_eq!(Encoded::new(&status(Phase::Heartbeat), &[], &mut chunk).observed, Some((999_000, false)));
        assert_eq!(Encoded::new(&status(Phase::Stopping), &[], &mut chunk).observed, Some((999_000, true)));
    }
}
