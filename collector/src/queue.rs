//! Durable per-output queues: the stage between ingest and the outputs.
//!
//! Ingest hands each batch's events, encoded as the agent sent them, to the queue writer, a
//! thread that appends them to every output's queue (a `peregrine-journal` in
//! `queue.dir/<output>/`) and flushes it (fsynced with `queue.fsync = "on_flush"`); only
//! then is the batch acknowledged. Batches arriving together share one flush per queue.
//!
//! One worker per output, on a thread of its own, reads its queue after the commit cursor,
//! decodes, removes events it has delivered already (by event id), hands the rest to the
//! output's `send` (which has its own retries), and commits. A batch the output fails stays queued and is offered again with
//! jittered backoff, without limit: nothing leaves a queue undelivered except by the full
//! policy or damage, both counted. A restarted collector resumes from each cursor.
//!
//! De-duplication: an agent replays what it saw no acknowledgement for, with the same event
//! ids. Each output remembers the ids it delivered last (`queue.dedup_window`), in memory and
//! in a log beside its queue (`queue.dir/<output>/delivered/`, also a journal, bounded, its
//! oldest files dropped first), read back at start. The ids of a batch are logged before its
//! commit, so a batch delivered just before a crash and read again after it is recognised too.
//! Delivered events are gone from the queue (commit deletes them), so the id log, not the
//! queue, is what makes duplicates recognisable across restarts.

use std::{
    collections::{HashSet, VecDeque},
    hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use peregrine_journal::{Damage, FullPolicy, Fsync, Journal, JournalConfig, JournalError, Records};
use peregrine_proto::EventHeader;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::{
    config::{QueueConfig, RetrySettings},
    output::{Encoded, Output, Outputs, metrics::OutputLabel},
};

/// Batches the writer takes together (one flush per queue for all of them).
const GROUP_MAX: usize = 64;
/// Payload bytes a worker reads from its queue per batch (at least one event, whatever its size).
const READ_MAX_BYTES: usize = 4 << 20;
/// How much of a readable destination's tail is read back at start (a few batches' worth).
const READBACK_BYTES: u64 = 64 << 20;

/// Bytes per record of the delivered-id log.
const ID_RECORD_BYTES: usize = 2000;
/// Disk budget of the delivered-id log per remembered id.
const ID_LOG_BYTES_PER_ID: u64 = 64;
/// How often an idle worker refreshes its queue gauges (the oldest event's age grows).
const IDLE_REFRESH: Duration = Duration::from_secs(1);
/// After the drain timeout, how long a worker may take to reach its next await.
const ABORT_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    pub output: String,
    pub reason: &'static str,
}

pub mod reason {
    /// The queue was full; its `full_policy` gave up events.
    pub const QUEUE_FULL: &str = "queue_full";
    /// Queue records found damaged on disk (checksum or framing).
    pub const QUEUE_DAMAGED: &str = "queue_damaged";
    /// Events whose encoding did not decode (queued as the sender sent them; see `ingest`).
    pub const UNDECODABLE: &str = "undecodable";
}

#[derive(Clone, Debug, Default)]
pub struct QueueMetrics {
    pub records: Family<OutputLabel, Gauge>,
    pub bytes: Family<OutputLabel, Gauge>,
    pub oldest_age_ms: Family<OutputLabel, Gauge>,
    pub appended: Family<OutputLabel, Counter>,
    pub delivered: Family<OutputLabel, Counter>,
    pub duplicates_removed: Family<OutputLabel, Counter>,
    pub dropped: Family<DropLabel, Counter>,
    pub damage_detected: Family<OutputLabel, Counter>,
    pub delivery_retries: Family<OutputLabel, Counter>,
}

impl QueueMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("peregrine_collector");
        r.register("queue_records", "Events waiting in an output's queue (read or not, not yet delivered)", self.records.clone());
        r.register("queue_bytes", "Bytes of those events on disk", self.bytes.clone());
        r.register("queue_oldest_age_ms", "Age of the oldest event waiting in an output's queue", self.oldest_age_ms.clone());
        r.register("queue_appended", "Events written to an output's queue", self.appended.clone());
        r.register(
            "queue_delivered",
            "Events from an output's queue that the output accepted (after de-duplication)",
            self.delivered.clone(),
        );
        r.register(
            "duplicates_removed",
            "Events not delivered again: the output had delivered an event with the same id",
            self.duplicates_removed.clone(),
        );
        r.register(
            "events_dropped",
            "Events lost before delivery, by reason (queue_full: the full policy; queue_damaged: damaged on disk; undecodable: sent malformed)",
            self.dropped.clone(),
        );
        r.register(
            "queue_damage_detected",
            "Damaged regions found in queue files (each logged with its file and offset)",
            self.damage_detected.clone(),
        );
        r.register(
            "queue_delivery_retries",
            "Batches an output failed; they stay queued and are offered again",
            self.delivery_retries.clone(),
        );
    }

    fn label(output: &str) -> OutputLabel {
        OutputLabel { output: output.to_owned() }
    }

    fn drop(&self, output: &str, reason: &'static str, n: u64) {
        if n > 0 {
            self.dropped.get_or_create(&DropLabel { output: output.to_owned(), reason }).inc_by(n);
        }
    }

    /// Current values, for tests and logs.
    pub fn dropped_count(&self, output: &str, reason: &'static str) -> u64 {
        self.dropped.get_or_create(&DropLabel { output: output.to_owned(), reason }).get()
    }
    pub fn duplicates_count(&self, output: &str) -> u64 {
        self.duplicates_removed.get_or_create(&Self::label(output)).get()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("output `{output}`: queue: {source}")]
    Journal {
        output: String,
        #[source]
        source: JournalError,
    },
    #[error("writing the queues: {0}")]
    Write(String),
    #[error("the queue writer has stopped")]
    Stopped,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves a journal that is still consistent on
    // disk (every operation is a complete write or an error): carry on with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One output's queue, shared by the writer thread (appends) and the output's worker.
struct Queue {
    output: Arc<Output>,
    label: OutputLabel,
    dir: PathBuf,
    journal: Mutex<Journal>,
    delivered: Mutex<DeliveredIds>,
    new_data: Notify,
    metrics: QueueMetrics,
    /// The journal's loss counters as last added to the metrics.
    seen_dropped: AtomicU64,
    seen_damaged: AtomicU64,
}

impl Queue {
    /// Appends and flushes; the caller acknowledges the batch only after this.
    fn append<'a>(&self, payloads: impl Iterator<Item = &'a Bytes>) -> Result<(), JournalError> {
        let mut journal = lock(&self.journal);
        let mut stored = 0u64;
        let mut result = Ok(());
        for p in payloads {
            // Copied, not shared: a received event is a slice of the buffer its whole message
            // arrived in, and the journal's in-memory record of it would keep that buffer alive.
            match journal.append(p) {
                // A refused event is in the journal's dropped count, mirrored below.
                Ok(peregrine_journal::Appended::Stored(_)) => stored += 1,
                Ok(peregrine_journal::Appended::Dropped) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let result = result.and_then(|()| journal.flush());
        self.metrics.appended.get_or_create(&self.label).inc_by(stored);
        self.mirror(&journal);
        drop(journal);
        self.new_data.notify_one();
        result
    }

    /// Copies the journal's depth and loss counters into the metrics.
    fn mirror(&self, journal: &Journal) {
        let depth = journal.depth();
        self.metrics.records.get_or_create(&self.label).set(i64::try_from(depth.records).unwrap_or(i64::MAX));
        self.metrics.bytes.get_or_create(&self.label).set(i64::try_from(depth.bytes).unwrap_or(i64::MAX));
        let age = depth.oldest_unix_ms.map_or(0, |t| unix_now_ms().saturating_sub(t).max(0));
        self.metrics.oldest_age_ms.get_or_create(&self.label).set(age);
        let dropped = journal.dropped();
        let before = self.seen_dropped.swap(dropped, Ordering::Relaxed);
        self.metrics.drop(&self.output.name, reason::QUEUE_FULL, dropped.saturating_sub(before));
        let damaged = journal.damage_total();
        let before = self.seen_damaged.swap(damaged, Ordering::Relaxed);
        self.metrics.drop(&self.output.name, reason::QUEUE_DAMAGED, damaged.saturating_sub(before));
    }

    fn read(&self, after: u64, max_events: usize) -> Result<(Records, Vec<Damage>), JournalError> {
        let mut journal = lock(&self.journal);
        let read = journal.read_after(after, max_events, READ_MAX_BYTES);
        self.mirror(&journal);
        read
    }

    /// After a delivery: log the ids first, then commit (see the module comment).
    fn finish(&self, delivered: &Delivered, last: u64) {
        let mut ids = lock(&self.delivered);
        if let Err(e) = ids.remember(delivered) {
            // Not committed either: a restart reads the batch again rather than trust a
            // lagging commit point the id log no longer covers.
            tracing::warn!(output = %self.output.name, error = %e, "cannot log delivered event ids; the batch stays uncommitted (after a restart it is read again, and may be delivered again)");
            return;
        }
        // What the commit point lags by is read again after a crash: it must stay within what
        // the id log remembers.
        let lag_bound = (ids.capacity / 2) as u64;
        drop(ids);
        let mut journal = lock(&self.journal);
        let committed = journal.commit(last).and_then(|()| {
            if journal.committed().saturating_sub(journal.persisted()) > lag_bound { journal.sync_commit() } else { Ok(()) }
        });
        if let Err(e) = committed {
            tracing::warn!(output = %self.output.name, error = %e, "queue commit failed; after a restart these events are read again (and recognised as duplicates)");
        }
        self.mirror(&journal);
    }

    fn refresh(&self) {
        self.mirror(&lock(&self.journal));
    }
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Hashes a key that is a keyed hash already by taking its low bits: a set of them spends no
/// second SipHash per lookup.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    #[allow(clippy::cast_possible_truncation)]
    fn write_u128(&mut self, k: u128) {
        self.0 = k as u64;
    }
}

type KeySet = HashSet<u128, BuildHasherDefault<KeyHasher>>;

/// The event ids an output delivered last: a bounded set (oldest forgotten first) and its log.
struct DeliveredIds {
    keys: KeySet,
    order: VecDeque<u128>,
    capacity: usize,
    /// Two independently keyed hashes make a 128-bit key: memory per id stays small, and
    /// with per-process random keys nobody can craft an id that collides with another's.
    hashers: (RandomState, RandomState),
    log: Option<Journal>,
}

impl DeliveredIds {
    fn open(dir: &Path, capacity: usize, fsync: Fsync) -> Result<Self, JournalError> {
        let mut ids = Self {
            // Grown as ids arrive, not made at the window's size: the ids land at random places
            // in the table, so a table made for a million ids (~32 MiB) was faulted in page by
            // page by the first tens of thousands of events (a tenth of the collector's CPU in
            // an exec storm after a start), and held that much memory however little came.
            keys: KeySet::default(),
            order: VecDeque::new(),
            capacity,
            hashers: (RandomState::new(), RandomState::new()),
            log: None,
        };
        if capacity == 0 {
            return Ok(ids);
        }
        let max_bytes = (capacity as u64).saturating_mul(ID_LOG_BYTES_PER_ID).max(64 << 10);
        // Read back only at open: nothing to keep in memory for readers.
        let config = JournalConfig { max_bytes, segment_bytes: max_bytes / 16, full: FullPolicy::DropOldest, fsync, memory_bytes: 0, ..JournalConfig::default() };
        let mut log = Journal::open(dir, config)?;
        let mut after = 0;
        loop {
            let (records, damage) = log.read_after(after, 4096, 4 << 20)?;
            for d in &damage {
                tracing::warn!(segment = %d.segment.display(), offset = d.offset, reason = %d.reason, "damaged delivered-id log skipped (some replays may be delivered again)");
            }
            let Some(&(last, _)) = records.last() else { break };
            after = last;
            for (_, payload) in &records {
                for id in decode_ids(payload) {
                    let k = ids.key(id);
                    ids.insert(k);
                }
            }
        }
        ids.log = Some(log);
        Ok(ids)
    }

    fn key(&self, id: &[u8]) -> u128 {
        (u128::from(self.hashers.0.hash_one(id)) << 64) | u128::from(self.hashers.1.hash_one(id))
    }

    fn contains(&self, k: u128) -> bool {
        self.keys.contains(&k)
    }

    fn insert(&mut self, k: u128) {
        if self.capacity == 0 || !self.keys.insert(k) {
            return;
        }
        self.order.push_back(k);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.keys.remove(&old);
        }
    }

    fn remember(&mut self, delivered: &Delivered) -> Result<(), JournalError> {
        for &(_, k) in &delivered.keys {
            self.insert(k);
        }
        let Some(log) = &mut self.log else { return Ok(()) };
        // Records of about ID_RECORD_BYTES, cut between entries.
        let mut rest = delivered.log.as_slice();
        while !rest.is_empty() {
            let mut cut = 0;
            while cut < rest.len() && cut < ID_RECORD_BYTES {
                let len = rest.get(cut..cut + 2).map_or(0, |l| usize::from(u16::from_le_bytes([l[0], l[1]])));
                cut = (cut + 2 + len).min(rest.len());
            }
            let (record, after) = rest.split_at(cut);
            log.append(record)?;
            rest = after;
        }
        log.flush()
    }
}

/// The ids of a delivered batch, and their keys in [`DeliveredIds`] (hashed once, when the
/// batch was de-duplicated).
struct Delivered {
    /// Each event's queue sequence number and key.
    keys: Vec<(u64, u128)>,
    /// The ids as the delivered-id log keeps them: (u16 length, bytes) repeated; and the
    /// sequence number of each.
    log: Vec<u8>,
    log_seqs: Vec<u64>,
}

impl Delivered {
    /// Leaves out the events that turned out not to decode: their ids must not pass for
    /// delivered (a valid event with the same id would then be left out).
    fn forget(&mut self, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        self.keys.retain(|(seq, _)| !seqs.contains(seq));
        let (mut log, mut log_seqs) = (Vec::with_capacity(self.log.len()), Vec::with_capacity(self.log_seqs.len()));
        for (id, &seq) in decode_ids(&self.log).zip(&self.log_seqs) {
            if !seqs.contains(&seq) && push_id(&mut log, id) {
                log_seqs.push(seq);
            }
        }
        (self.log, self.log_seqs) = (log, log_seqs);
    }
}

/// Appends `id` as the delivered-id log keeps it (u16 length, bytes); false for an id too long
/// for that.
fn push_id(log: &mut Vec<u8>, id: &[u8]) -> bool {
    let Ok(len) = u16::try_from(id.len()) else { return false };
    log.extend_from_slice(&len.to_le_bytes());
    log.extend_from_slice(id);
    true
}

/// Ids in one record of the delivered-id log: (u16 length, bytes) repeated. Stops at the
/// first malformed entry.
fn decode_ids(mut payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = payload.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len));
        if rest.len() < len {
            return None;
        }
        let (id, rest) = rest.split_at(len);
        payload = rest;
        Some(id)
    })
}

/// A batch for the writer thread, and where to say it is on disk.
struct Append {
    payloads: Vec<Bytes>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Where ingest puts batches: every output's queue.
#[derive(Clone)]
pub struct Queues {
    writer: mpsc::Sender<Append>,
}

/// The per-output workers, stopped by [`Workers::stop`].
pub struct Workers {
    queues: Vec<Arc<Queue>>,
    handles: Vec<WorkerThread>,
    stop: watch::Sender<bool>,
}

/// A worker's own thread, running a single-threaded runtime. Its reads and commits are plain
/// calls there: handed to tokio's blocking pool, as they were, each cost two thread wake-ups
/// per batch, and the multi-threaded runtime's workers woke each other around them (371
/// sleeps a second in the collector under an exec storm; a wake-up costs 35–60 µs of CPU on the
/// machines measured, docs/PERFORMANCE.md).
struct WorkerThread {
    output: String,
    /// Sent (or dropped) when the worker has returned.
    done: oneshot::Receiver<()>,
    /// Dropping the worker mid-batch, at the drain timeout.
    abort: oneshot::Sender<()>,
}

/// Opens every output's queue (recovering what an earlier run left: workers resume after
/// each commit cursor), starts the writer thread and one worker per output, each on a thread
/// of its own.
pub fn start(config: &QueueConfig, outputs: &Outputs, metrics: &QueueMetrics) -> Result<(Queues, Workers), QueueError> {
    let mut queues = Vec::new();
    for output in outputs.list() {
        let dir = config.dir.join(&output.name);
        let err = |source| QueueError::Journal { output: output.name.clone(), source };
        let journal = Journal::open(&dir, config.journal()).map_err(err)?;
        let mut delivered = DeliveredIds::open(&dir.join("delivered"), config.dedup_window, config.id_log_fsync()).map_err(err)?;
        // What the destination already holds counts as delivered, logged or not.
        for id in output.written_ids(READBACK_BYTES) {
            let k = delivered.key(id.as_bytes());
            delivered.insert(k);
        }
        let depth = journal.depth();
        tracing::info!(output = %output.name, dir = %dir.display(), queued = depth.records, remembered_ids = delivered.order.len(), "output queue opened");
        let queue = Queue {
            output: output.clone(),
            label: QueueMetrics::label(&output.name),
            dir: dir.clone(),
            journal: Mutex::new(journal),
            delivered: Mutex::new(delivered),
            new_data: Notify::new(),
            metrics: metrics.clone(),
            seen_dropped: AtomicU64::new(0),
            seen_damaged: AtomicU64::new(0),
        };
        queue.refresh();
        queues.push(Arc::new(queue));
    }
    let (tx, rx) = mpsc::channel(GROUP_MAX);
    let for_writer = queues.clone();
    std::thread::Builder::new()
        .name("queue-writer".into())
        .spawn(move || write_loop(rx, &for_writer))
        .map_err(|e| QueueError::Write(format!("starting the queue writer: {e}")))?;
    let (stop, stopping) = watch::channel(false);
    let mut handles = Vec::with_capacity(queues.len());
    for q in &queues {
        let (done_tx, done) = oneshot::channel();
        let (abort, aborted) = oneshot::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel();
        let (q, stopping, batch_max) = (q.clone(), stopping.clone(), config.batch_max_events);
        let output = q.output.name.clone();
        std::thread::Builder::new()
            .name(format!("output-{output}"))
            .spawn(move || {
                // Built here, and dropped here: a runtime may not be dropped inside another's
                // tasks, which is where `start` runs.
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = started_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                runtime.block_on(async move {
                    tokio::select! {
                        () = work(q, batch_max, stopping) => {}
                        _ = aborted => {}
                    }
                });
                let _ = done_tx.send(());
            })
            .map_err(|e| QueueError::Write(format!("starting the worker of output `{output}`: {e}")))?;
        // A moment: the thread only builds its runtime before answering.
        match started.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(QueueError::Write(format!("starting the worker of output `{output}`: {e}"))),
            Err(_) => return Err(QueueError::Write(format!("the worker of output `{output}` ended as it started"))),
        }
        handles.push(WorkerThread { output, done, abort });
    }
    Ok((Queues { writer: tx }, Workers { queues, handles, stop }))
}

impl Queues {
    /// Puts encoded events into every output's queue; `Ok` once they are flushed there (the
    /// full policy may have dropped some, counted).
    pub async fn append(&self, payloads: Vec<Bytes>) -> Result<(), QueueError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let (done, written) = oneshot::channel();
        self.writer.send(Append { payloads, done }).await.map_err(|_| QueueError::Stopped)?;
        written.await.map_err(|_| QueueError::Stopped)?.map_err(QueueError::Write)
    }
}

fn write_loop(mut rx: mpsc::Receiver<Append>, queues: &[Arc<Queue>]) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let mut result = Ok(());
        for q in queues {
            if let Err(e) = q.append(group.iter().flat_map(|a| a.payloads.iter())) {
                tracing::error!(output = %q.output.name, error = %e, "cannot write the output's queue; batches not acknowledged");
                result = Err(format!("output `{}`: {e}", q.output.name));
                break;
            }
        }
        for a in group {
            let _ = a.done.send(result.clone());
        }
    }
}

impl Workers {
    /// Lets every worker deliver what is queued for at most `drain`, then stops them; what
    /// is left stays queued for the next start.
    pub async fn stop(self, drain: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + drain;
        let mut stuck = Vec::new();
        for WorkerThread { output, mut done, abort } in self.handles {
            if tokio::time::timeout_at(deadline, &mut done).await.is_ok() || done.try_recv().is_ok() {
                continue;
            }
            // Taken at the worker's next await: a read, commit or write under way ends first.
            let _ = abort.send(());
            tracing::warn!(%output, "output did not deliver its whole queue before the drain timeout; the rest stays queued");
            if tokio::time::timeout(ABORT_WAIT, done).await.is_err() {
                tracing::error!(%output, "the output's worker is stuck in a call (a hung disk or destination?): its queue is left as it is on disk");
                stuck.push(output);
            }
        }
        for q in self.queues.iter().filter(|q| !stuck.contains(&q.output.name)) {
            let mut journal = lock(&q.journal);
            if let Err(e) = journal.flush().and_then(|()| journal.sync_commit()) {
                tracing::error!(output = %q.output.name, error = %e, "flushing the queue at shutdown");
            }
            // Its policy fsyncs it only now and then while running.
            if let Some(log) = &mut lock(&q.delivered).log
                && let Err(e) = log.sync()
            {
                tracing::error!(output = %q.output.name, error = %e, "syncing the delivered-id log at shutdown");
            }
            q.mirror(&journal);
            let depth = journal.depth();
            tracing::info!(output = %q.output.name, queued = depth.records, "output queue closed");
        }
    }
}

/// One output's worker: read, de-duplicate, deliver (until it succeeds), log ids, commit.
async fn work(q: Arc<Queue>, batch_max: usize, mut stop: watch::Receiver<bool>) {
    let name = q.output.name.clone();
    let mut cursor = lock(&q.journal).committed();
    loop {
        // On the worker's own thread: a read from the newest records is from memory.
        let (records, damage) = match q.read(cursor, batch_max) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(output = %name, error = %e, "cannot read the output's queue; retrying");
                tokio::time::sleep(IDLE_REFRESH).await;
                continue;
            }
        };
        for d in &damage {
            tracing::warn!(output = %name, segment = %d.segment.display(), offset = d.offset, bytes_skipped = d.bytes_skipped, reason = %d.reason,
                "damaged queue records skipped");
        }
        if !damage.is_empty() {
            q.metrics.damage_detected.get_or_create(&q.label).inc_by(damage.len() as u64);
        }
        let Some(&(last, _)) = records.last() else {
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = q.new_data.notified() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(IDLE_REFRESH) => q.refresh(),
            }
            continue;
        };

        let (events, mut ids) = unique_events(&q, records);
        let unique = events.len();
        let (prepared, undecodable) = q.output.prepare(events).await;
        ids.forget(&undecodable.iter().map(|u| u.seq).collect::<Vec<_>>());
        for u in &undecodable {
            tracing::warn!(output = %name, queue = %q.dir.display(), seq = u.seq, bytes = u.bytes, error = %u.error, "an event that does not decode was skipped (its sender encoded it so)");
        }
        q.metrics.drop(&name, reason::UNDECODABLE, undecodable.len() as u64);
        let mut attempt = 0u32;
        loop {
            match q.output.send_prepared(&prepared).await {
                Ok(()) => break,
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    q.metrics.delivery_retries.get_or_create(&q.label).inc();
                    // Logged at the first failure and then ever more rarely (1, 2, 4, 8...).
                    if attempt.is_power_of_two() {
                        tracing::warn!(output = %name, error = %e, attempt, events = unique, "output failed; the batch stays queued and is retried");
                    }
                    tokio::time::sleep(backoff(&q.output.retry, attempt)).await;
                }
            }
        }
        if attempt > 0 {
            tracing::info!(output = %name, attempts = attempt + 1, "output accepted the batch it had failed");
        }
        q.metrics.delivered.get_or_create(&q.label).inc_by((unique - undecodable.len()) as u64);
        q.finish(&ids, last);
        cursor = last;
    }
}

/// Leaves out of a batch read from the queue what was delivered already (or is in the batch
/// twice), by the ids read from each event's top-level fields; returns the events, still
/// encoded, and their ids. Decoding is the output's (`Output::prepare`).
fn unique_events(q: &Queue, records: Records) -> (Vec<Encoded>, Delivered) {
    let delivered = lock(&q.delivered);
    let mut in_batch = KeySet::with_capacity_and_hasher(records.len(), BuildHasherDefault::default());
    let mut events = Vec::with_capacity(records.len());
    let mut kept = Delivered { keys: Vec::with_capacity(records.len()), log: Vec::with_capacity(records.len() * 40), log_seqs: Vec::with_capacity(records.len()) };
    let mut duplicates = 0u64;
    for (seq, bytes) in records {
        let (kind, key) = match EventHeader::peek(&bytes) {
            // An event without an id cannot be told apart from another: always delivered.
            Ok(h) if h.id.is_empty() => (h.kind, None),
            Ok(h) => (h.kind, Some((delivered.key(h.id), h.id))),
            Err(e) => {
                tracing::warn!(output = %q.output.name, queue = %q.dir.display(), seq, bytes = bytes.len(), error = %e, "an event that does not decode was skipped (its sender encoded it so)");
                q.metrics.drop(&q.output.name, reason::UNDECODABLE, 1);
                continue;
            }
        };
        if let Some((k, id)) = key {
            if delivered.contains(k) || !in_batch.insert(k) {
                duplicates += 1;
                continue;
            }
            // An id too long for the log is still de-duplicated while remembered in memory.
            if push_id(&mut kept.log, id) {
                kept.log_seqs.push(seq);
            }
            kept.keys.push((seq, k));
        }
        events.push(Encoded { seq, bytes, kind });
    }
    if duplicates > 0 {
        q.metrics.duplicates_removed.get_or_create(&q.label).inc_by(duplicates);
        tracing::debug!(output = %q.output.name, duplicates, "replayed events removed");
    }
    (events, kept)
}

/// Jittered exponential backoff without a limit on attempts: random in [base/2, base], the
/// base doubling from the output's `retry.initial_backoff_ms` up to `retry.max_backoff_ms`.
fn backoff(retry: &RetrySettings, attempt: u32) -> Duration {
    let exp = retry.initial_backoff_ms.max(1).saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    let base = exp.min(retry.max_backoff_ms.max(1));
    Duration::from_millis(base / 2 + fastrand::u64(0..=base - base / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_records_round_trip_and_garbage_stops_cleanly() {
        let mut record = Vec::new();
        for id in ["a", "", "0190-abc"] {
            record.extend_from_slice(&(id.len() as u16).to_le_bytes());
            record.extend_from_slice(id.as_bytes());
        }
        let got: Vec<&[u8]> = decode_ids(&record).collect();
        assert_eq!(got, [b"a".as_slice(), b"", b"0190-abc"]);
        record.extend_from_slice(&[200, 0, 1, 2]);
        assert_eq!(decode_ids(&record).count(), 3);
        assert_eq!(decode_ids(&[7]).count(), 0);
    }

    fn delivered_batch(d: &DeliveredIds, ids: &[String]) -> Delivered {
        let seqs = 1..=ids.len() as u64;
        Delivered {
            keys: seqs.clone().zip(ids).map(|(s, i)| (s, d.key(i.as_bytes()))).collect(),
            log: ids.iter().fold(Vec::new(), |mut log, i| {
                push_id(&mut log, i.as_bytes());
                log
            }),
            log_seqs: seqs.collect(),
        }
    }

    /// An event that did not decode is not remembered as delivered: a valid event with its id
    /// still goes out.
    #[test]
    fn ids_of_undecodable_events_are_forgotten() {
        let d = DeliveredIds::open(Path::new("/nonexistent"), 0, Fsync::Never).unwrap();
        let ids: Vec<String> = ["a", "bb", "ccc", "dddd"].map(String::from).to_vec();
        let mut batch = delivered_batch(&d, &ids);
        batch.forget(&[2, 4]);
        assert_eq!(batch.keys, [(1, d.key(b"a")), (3, d.key(b"ccc"))]);
        assert_eq!(decode_ids(&batch.log).collect::<Vec<_>>(), [b"a".as_slice(), b"ccc"]);
        assert_eq!(batch.log_seqs, [1, 3]);
    }

    #[test]
    fn the_window_forgets_the_oldest_ids_and_the_log_brings_them_back() {
        let dir = std::env::temp_dir().join(format!("peregrine-dedup-{}-{}", std::process::id(), fastrand::u64(..)));
        let ids: Vec<String> = (0..30).map(|i| format!("id-{i}")).collect();
        {
            let mut d = DeliveredIds::open(&dir, 10, Fsync::Never).unwrap();
            let batch = |ids: &[String]| delivered_batch(&d, ids);
            let (first, rest) = (batch(&ids[..20]), batch(&ids[20..]));
            d.remember(&first).unwrap();
            d.remember(&rest).unwrap();
            assert_eq!(d.order.len(), 10);
            assert!(!d.contains(d.key(b"id-19")));
            assert!(d.contains(d.key(b"id-20")) && d.contains(d.key(b"id-29")));
        }
        let d = DeliveredIds::open(&dir, 10, Fsync::Never).unwrap();
        assert!(d.contains(d.key(b"id-29")) && d.contains(d.key(b"id-20")));
        assert!(!d.contains(d.key(b"id-5")));
        let off = DeliveredIds::open(&dir.join("off"), 0, Fsync::Never).unwrap();
        assert!(off.log.is_none() && !off.contains(off.key(b"id-29")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let r = RetrySettings { max_retries: 0, initial_backoff_ms: 100, max_backoff_ms: 1000, max_retry_after_ms: 0 };
        assert!((50..=100).contains(&backoff(&r, 1).as_millis()));
        assert!((100..=200).contains(&backoff(&r, 2).as_millis()));
        assert!((500..=1000).contains(&backoff(&r, 40).as_millis()));
    }
}
