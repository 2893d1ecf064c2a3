//! peregrine-journal: a bounded, segmented, append-only record log with a persisted commit
//! cursor. The agent's spool and the collector's per-output queues are journals.
//!
//! # On disk
//!
//! A journal is a directory:
//!
//! - `<first seq, 20 digits>.seg`: segment files, each a run of records with consecutive
//!   sequence numbers, the first one's in the file name. A segment is rolled when the next
//!   record would take it past `segment_bytes`. Each process starts a new segment when it
//!   opens the journal, so a file is only ever appended to by one run.
//! - `commit`: the highest committed sequence number, in decimal, replaced atomically (written
//!   to `commit.tmp`, then renamed).
//! - `lock`: held (`flock`) while the journal is open, so two processes never write one journal.
//!
//! A record is a 20-byte header, then the stored payload, all little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `0x9D5AC3E1` |
//! | 4 | stored payload length |
//! | 4 | CRC-32 (IEEE) of the sequence number's 8 bytes and the stored payload |
//! | 8 | sequence number, strictly increasing over the journal's life |
//! | n | stored payload: the write time (i64, Unix ms), then the caller's bytes |
//!
//! The write time is kept per record (not per segment) so that `depth().oldest_unix_ms` is
//! the age of the oldest uncommitted record itself, not of the segment it landed in, which
//! on a quiet node may have been opened hours earlier.
//!
//! # Guarantees
//!
//! - Records `flush()` has returned for survive the writer being killed (`kill -9`); with
//!   [`Fsync::OnFlush`] they also survive power loss.
//! - Every record read back has a valid checksum, an in-place sequence number and a length
//!   that fits its file. A damaged region is skipped: the reader looks for the next magic
//!   that starts a valid record, and reports the region ([`Damage`]: file, offset, why, how
//!   many bytes). A torn tail (a partial last record after `kill -9`) is truncated at open
//!   and reported by the first `read_after`.
//! - Nothing read from disk is trusted: lengths are checked against the file before anything
//!   is allocated, so garbage neither panics nor allocates more than the file holds.
//! - Segments plus the write buffer never exceed `max_bytes`; when the next record would,
//!   [`FullPolicy`] decides what is lost, and [`Journal::dropped`] counts it.
//!
//! # Reading what was just written
//!
//! The journal's readers (the agent's sender, the collector's output workers) mostly read what
//! was appended moments ago. Those records are kept in memory as well (the newest
//! `memory_bytes` of them, until read past or committed), and `read_after` hands them out from
//! there as shared buffers (`append_bytes` keeps the caller's own): no read back from the file,
//! no second checksum, no copy out. What memory no longer holds (older records, anything from before `open`) is read from disk.

use bytes::Bytes;
use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// The first four bytes of every record (little-endian `E1 C3 5A 9D`: not ASCII, so ordinary
/// text in payloads does not look like a record start when the reader resynchronises).
pub const MAGIC: u32 = 0x9D5A_C3E1;
/// Bytes before a record's stored payload.
pub const HEADER_BYTES: usize = 20;
/// The write time at the start of each stored payload.
const STAMP_BYTES: usize = 8;
/// The largest stored payload a reader considers, whatever the segment size: a length field
/// above this is damage, never an allocation.
const HARD_MAX_STORED: u64 = 64 << 20;
/// Smallest segment; `max_bytes` must hold two of them.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Buffered bytes that are written out even before `flush()`, to bound memory.
const WRITE_OUT_BYTES: usize = 1 << 20;
/// What a reader loads from a segment at a time.
const READ_CHUNK: usize = 256 << 10;
/// Read positions remembered, so that sequential `read_after` calls do not rescan segments.
const POSITIONS_KEPT: usize = 64;
/// Sequence numbers (and cursors, segment names) above this are damage: the journal never
/// gets there, and `+ 1` must never overflow on anything read from disk.
const MAX_SEQ: u64 = u64::MAX / 2;
const COMMIT_FILE: &str = "commit";
const COMMIT_TMP: &str = "commit.tmp";
const LOCK_FILE: &str = "lock";

#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Bound on the segment files plus the write buffer. At least two `MIN_SEGMENT_BYTES`.
    pub max_bytes: u64,
    /// A segment is rolled when the next record would take it past this. Lowered to
    /// `max_bytes / 2` when larger, so that dropping the oldest segment always makes room.
    pub segment_bytes: u64,
    pub full: FullPolicy,
    pub fsync: Fsync,
    /// How often `commit()` writes the commit point to disk; zero: at every commit. Between
    /// writes the point on disk lags: a restart reads again what was committed since (at
    /// least once; never a loss). Before a segment is deleted the point is always written.
    pub commit_interval: Duration,
    /// The newest flushed-or-buffered records up to this many bytes (payloads plus 64 each) are
    /// also kept in memory (until read past or committed), and `read_after` serves them from
    /// there. Zero: every read goes to disk.
    pub memory_bytes: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            segment_bytes: 8 << 20,
            full: FullPolicy::DropOldest,
            fsync: Fsync::OnFlush,
            commit_interval: Duration::ZERO,
            memory_bytes: 4 << 20,
        }
    }
}

/// What happens when a record does not fit within `max_bytes`. Both lose records; both are
/// counted in [`Journal::dropped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Delete whole oldest segments (committed or not) until the record fits.
    DropOldest,
    /// Refuse the record ([`Appended::Dropped`]).
    DropNewest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Data goes to the OS at `flush()`: survives the process being killed, not power loss.
    Never,
    /// `fsync` at `flush()`, `commit()` and when a segment is sealed: survives power loss.
    OnFlush,
    /// As `OnFlush`, except that `flush()` fsyncs only when the last fsync is at least this
    /// long ago: a power loss can take what the last interval flushed (a kill cannot). For
    /// data whose loss costs little, such as a log of what was done already.
    Interval(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored (buffered until `flush()`) with this sequence number.
    Stored(u64),
    /// `DropNewest` and full: this record was not stored (counted in `dropped()`).
    Dropped,
}

/// Uncommitted records: how many, their bytes on disk and in the buffer (headers included),
/// and the write time of the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    pub records: u64,
    pub bytes: u64,
    pub oldest_unix_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{op} {path}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("a record of {len} bytes is larger than this journal stores ({max} bytes at most)")]
    TooLarge { len: usize, max: u64 },
    #[error("{dir} is in use by another process (it holds {dir}/lock)")]
    Locked { dir: PathBuf },
    #[error("journal configuration: {message}")]
    Config { message: String },
}

/// A damaged region found while reading: which file, the byte offset, why; reading resumes
/// at the next valid record. `reason` also says how many records the region cost (from the
/// gap in sequence numbers, which are consecutive within a segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    pub offset: u64,
    pub reason: String,
    pub bytes_skipped: u64,
}

#[derive(Debug)]
struct Segment {
    /// Sequence number of its first record (from the file name).
    first: u64,
    path: PathBuf,
    /// Bytes in the file (for the active segment: written out, not counting the buffer).
    len: u64,
    /// Damage at offsets below this has been reported (and counted) already.
    reported_until: u64,
}

/// Just past record `seq`, in the segment whose first record is `segment`.
#[derive(Debug, Clone, Copy)]
struct Position {
    seq: u64,
    segment: u64,
    offset: u64,
}

pub struct Journal {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Largest caller payload `append` takes.
    max_payload: u64,
    full: FullPolicy,
    fsync: Fsync,
    /// Held for the journal's life: the flock is what keeps a second writer out.
    _lock: File,
    /// Oldest first; never empty; the last one is being appended to.
    segs: Vec<Segment>,
    active: File,
    buf: Vec<u8>,
    buf_first_stamp: Option<i64>,
    /// Written out since the last fsync.
    unsynced: bool,
    synced_at: Instant,
    fsyncs: u64,
    /// Sum of `segs[].len`.
    disk_bytes: u64,
    last_seq: u64,
    /// Highest sequence number written out to the file (readers see up to here).
    flushed_seq: u64,
    committed: u64,
    commit_interval: Duration,
    /// The commit point on disk (at most `committed`) and when it was written.
    persisted: u64,
    persisted_at: Instant,
    /// Bytes (of `disk_bytes` + buffer) before the first uncommitted record.
    committed_bytes: u64,
    oldest_stamp: Option<i64>,
    positions: VecDeque<Position>,
    window: Option<Window>,
    /// Found at open (torn tail, unreadable cursor); handed out by the next `read_after`.
    pending_damage: Vec<Damage>,
    dropped: u64,
    damage_total: u64,
    /// The newest records, consecutive sequence numbers, oldest first (see the module comment).
    recent: VecDeque<Recent>,
    /// Their payloads plus [`RECENT_OVERHEAD`] each.
    recent_bytes: usize,
    memory_bytes: usize,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("segments", &self.segs.len())
            .field("last_seq", &self.last_seq)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io { path: path.to_owned(), op, source }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&first| (1..=MAX_SEQ).contains(&first))
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir, "syncing directory"))
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The checksum of a record: its sequence number, then its stored bytes (given in pieces).
fn checksum(seq: u64, stored: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    for piece in stored {
        h.update(piece);
    }
    h.finalize()
}

/// A segment file being read, with the bytes last loaded from it.
struct Window {
    segment: u64,
    file: File,
    start: u64,
    data: Vec<u8>,
}

impl Window {
    fn open(seg: &Segment) -> io::Result<Self> {
        Ok(Self { segment: seg.first, file: File::open(&seg.path)?, start: 0, data: Vec::new() })
    }

    /// `n` bytes at `off`, or `None` when the file is shorter. Callers have checked `n`
    /// against the segment's length, so this never loads more than the file holds.
    fn get(&mut self, off: u64, n: usize) -> io::Result<Option<&[u8]>> {
        let loaded = off >= self.start && off + n as u64 <= self.start + self.data.len() as u64;
        if !loaded {
            let want = n.max(READ_CHUNK);
            self.data.clear();
            self.data.resize(want, 0);
            let mut filled = 0;
            while filled < want {
                match self.file.read_at(&mut self.data[filled..], off + filled as u64) {
                    Ok(0) => break,
                    Ok(k) => filled += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.data.clear();
                        return Err(e);
                    }
                }
            }
            self.data.truncate(filled);
            self.start = off;
        }
        let at = (off - self.start) as usize;
        Ok(self.data.get(at..at + n))
    }

    /// The bytes already loaded from `off` on, without reading.
    fn loaded_from(&self, off: u64) -> &[u8] {
        match off.checked_sub(self.start) {
            Some(at) if at < self.data.len() as u64 => &self.data[at as usize..],
            _ => &[],
        }
    }
}

struct Header {
    seq: u64,
    stored: u64,
    stamp: i64,
}

/// Checks the record at `off`: magic, a length that fits before `end`, a sequence number in
/// `(prev, max_seq]`, the checksum. `Ok(Err(why))` is damage.
fn parse_at(w: &mut Window, off: u64, end: u64, prev: u64, max_seq: u64) -> io::Result<Result<Header, &'static str>> {
    if end < off || end - off < HEADER_BYTES as u64 {
        return Ok(Err("incomplete record header"));
    }
    let Some(h) = w.get(off, HEADER_BYTES)? else { return Ok(Err("file shorter than expected")) };
    let (magic, stored, crc, seq) = (le_u32(h, 0), u64::from(le_u32(h, 4)), le_u32(h, 8), le_u64(h, 12));
    if magic != MAGIC {
        return Ok(Err("bad magic"));
    }
    if stored < STAMP_BYTES as u64 || stored > HARD_MAX_STORED {
        return Ok(Err("implausible length"));
    }
    if stored > end - off - HEADER_BYTES as u64 {
        return Ok(Err("record runs past the end of the segment"));
    }
    if seq <= prev || seq > max_seq {
        return Ok(Err("sequence number out of place"));
    }
    let Some(body) = w.get(off + HEADER_BYTES as u64, stored as usize)? else {
        return Ok(Err("file shorter than expected"));
    };
    if checksum(seq, &[body]) != crc {
        return Ok(Err("checksum mismatch"));
    }
    let stamp = le_u64(body, 0) as i64;
    Ok(Ok(Header { seq, stored, stamp }))
}

enum Item {
    Record { seq: u64, stamp: i64, offset: u64, next: u64, payload: Vec<u8> },
    /// `resumes`: the sequence number of the valid record the reader resynchronised on, or
    /// `None` when the damage runs to the end of the segment.
    Damage { offset: u64, skipped: u64, reason: &'static str, resumes: Option<u64> },
}

/// Walks one segment from `off`: valid records, and damaged regions between them.
struct Scan<'w> {
    w: &'w mut Window,
    off: u64,
    end: u64,
    /// Sequence number of the last valid record (or the segment's first - 1).
    prev: u64,
    max_seq: u64,
}

impl Scan<'_> {
    fn next(&mut self, want_payload: bool) -> io::Result<Option<Item>> {
        if self.off >= self.end {
            return Ok(None);
        }
        let at = self.off;
        match parse_at(self.w, at, self.end, self.prev, self.max_seq)? {
            Ok(h) => {
                let next = at + HEADER_BYTES as u64 + h.stored;
                let payload = if want_payload {
                    let data_at = at + (HEADER_BYTES + STAMP_BYTES) as u64;
                    match self.w.get(data_at, h.stored as usize - STAMP_BYTES)? {
                        Some(p) => p.to_vec(),
                        None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "segment shrank while read")),
                    }
                } else {
                    Vec::new()
                };
                self.prev = h.seq;
                self.off = next;
                Ok(Some(Item::Record { seq: h.seq, stamp: h.stamp, offset: at, next, payload }))
            }
            Err(reason) => {
                let (resume_at, resumes) = self.resync(at + 1)?;
                self.off = resume_at;
                Ok(Some(Item::Damage { offset: at, skipped: resume_at - at, reason, resumes }))
            }
        }
    }

    /// The next offset from `p` holding a valid record (and its sequence number), or the end.
    fn resync(&mut self, mut p: u64) -> io::Result<(u64, Option<u64>)> {
        let magic = MAGIC.to_le_bytes();
        while self.end > p && self.end - p >= HEADER_BYTES as u64 {
            let left = self.end - p;
            // Search what is loaded before reading more: payloads full of magic-looking bytes
            // must not cost a reload per candidate.
            let loaded = self.w.loaded_from(p);
            let chunk = if loaded.len() >= HEADER_BYTES {
                &loaded[..loaded.len().min(left as usize)]
            } else {
                let n = left.min(READ_CHUNK as u64) as usize;
                let Some(chunk) = self.w.get(p, n)? else { break };
                chunk
            };
            let n = chunk.len();
            match chunk.windows(4).position(|x| x == magic) {
                Some(i) => {
                    let candidate = p + i as u64;
                    if let Ok(h) = parse_at(self.w, candidate, self.end, self.prev, self.max_seq)? {
                        return Ok((candidate, Some(h.seq)));
                    }
                    p = candidate + 1;
                }
                // Keep the last three bytes: a magic may straddle two chunks.
                None => p += (n as u64).saturating_sub(3).max(1),
            }
        }
        Ok((self.end, None))
    }
}

/// A record kept in memory: its payload, and where it is on disk (for the read positions and
/// the commit point's bookkeeping, which would otherwise scan the file for it).
struct Recent {
    seq: u64,
    payload: Bytes,
    /// The first sequence number of its segment, and its offset there.
    segment: u64,
    offset: u64,
    stamp: i64,
}

impl Recent {
    /// Just past the record in its segment.
    fn next(&self) -> u64 {
        self.offset + (HEADER_BYTES + STAMP_BYTES + self.payload.len()) as u64
    }
}

/// What a kept record costs beside its payload, as counted against `memory_bytes` (so that
/// empty records are bounded too).
const RECENT_OVERHEAD: usize = 64;

/// What `read_after` returns: (sequence number, payload), oldest first.
pub type Records = Vec<(u64, Bytes)>;

impl Journal {
    /// Opens (creating) the journal in `dir` and recovers it: a torn or damaged tail of the
    /// last segment is truncated and reported (as [`Damage`], by the first `read_after`);
    /// damage elsewhere is reported when read. Appends go to a new segment.
    pub fn open(dir: &Path, config: JournalConfig) -> Result<Journal, JournalError> {
        if config.max_bytes < 2 * MIN_SEGMENT_BYTES {
            return Err(JournalError::Config {
                message: format!("max_bytes is {}; it must be at least {}", config.max_bytes, 2 * MIN_SEGMENT_BYTES),
            });
        }
        let segment_bytes = config.segment_bytes.clamp(MIN_SEGMENT_BYTES, config.max_bytes / 2);
        let max_payload = (segment_bytes.min(HARD_MAX_STORED) - (HEADER_BYTES + STAMP_BYTES) as u64).min(u64::from(u32::MAX));
        fs::create_dir_all(dir).map_err(io_err(dir, "creating directory"))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "opening"))?;
        // A flock follows the open file into a child forked by this process until the child
        // execs (the descriptor is close-on-exec): a journal closed while some thread forks
        // stays locked for that moment. Wait it out, briefly, before calling it a second writer.
        let mut attempts = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(JournalError::Locked { dir: dir.to_owned() }),
                Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path, "locking")(e)),
            }
        }
        let tmp = dir.join(COMMIT_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&tmp, "removing")(e)),
        }
        let mut pending_damage = Vec::new();
        let committed = read_cursor(dir, &mut pending_damage)?;

        let mut segs = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir, "listing"))? {
            let entry = entry.map_err(io_err(dir, "listing"))?;
            let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) else { continue };
            let path = entry.path();
            let len = entry.metadata().map_err(io_err(&path, "reading metadata of"))?.len();
            segs.push(Segment { first, path, len, reported_until: 0 });
        }
        segs.sort_by_key(|s| s.first);

        let mut damage_total = 0;
        let mut last_seq = committed;
        if let Some(tail) = segs.last_mut() {
            last_seq = last_seq.max(tail.first.saturating_sub(1));
            let (valid_end, last_valid, reason) = scan_tail(tail).map_err(io_err(&tail.path, "reading"))?;
            last_seq = last_seq.max(last_valid);
            if valid_end < tail.len {
                let file = OpenOptions::new().write(true).open(&tail.path).map_err(io_err(&tail.path, "opening"))?;
                file.set_len(valid_end).map_err(io_err(&tail.path, "truncating"))?;
                if config.fsync != Fsync::Never {
                    file.sync_all().map_err(io_err(&tail.path, "syncing"))?;
                }
                pending_damage.push(Damage {
                    segment: tail.path.clone(),
                    offset: valid_end,
                    reason: format!("torn or damaged tail truncated at open ({reason}); at least 1 record lost"),
                    bytes_skipped: tail.len - valid_end,
                });
                damage_total += 1;
                tail.len = valid_end;
            }
        }
        if segs.last().is_some_and(|s| s.len == 0)
            && let Some(empty) = segs.pop()
        {
            fs::remove_file(&empty.path).map_err(io_err(&empty.path, "removing"))?;
        }

        let first = last_seq + 1;
        let path = dir.join(segment_name(first));
        let active = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_err(&path, "creating"))?;
        if config.fsync != Fsync::Never {
            sync_dir(dir)?;
        }
        segs.push(Segment { first, path, len: 0, reported_until: 0 });
        let disk_bytes = segs.iter().map(|s| s.len).sum();

        let mut journal = Journal {
            dir: dir.to_owned(),
            max_bytes: config.max_bytes,
            segment_bytes,
            max_payload,
            full: config.full,
            fsync: config.fsync,
            _lock: lock,
            segs,
            active,
            buf: Vec::new(),
            buf_first_stamp: None,
            unsynced: false,
            synced_at: Instant::now(),
            fsyncs: 0,
            disk_bytes,
            last_seq,
            flushed_seq: last_seq,
            committed,
            commit_interval: config.commit_interval,
            persisted: committed,
            persisted_at: Instant::now(),
            committed_bytes: 0,
            oldest_stamp: None,
            positions: VecDeque::new(),
            window: None,
            pending_damage,
            dropped: 0,
            damage_total,
            recent: VecDeque::new(),
            recent_bytes: 0,
            memory_bytes: config.memory_bytes,
        };
        journal.collect_committed()?;
        journal.recompute_commit_point();
        Ok(journal)
    }

    /// Appends one record (buffered: readers and the disk see it after `flush()`). When the
    /// journal is full, `DropOldest` deletes whole oldest segments (their uncommitted records
    /// are counted in `dropped()`) and `DropNewest` refuses this record.
    pub fn append(&mut self, payload: &[u8]) -> Result<Appended, JournalError> {
        self.append_with(payload, || Bytes::copy_from_slice(payload))
    }

    /// [`Journal::append`] for a payload the caller has as `Bytes`: the copy kept in memory
    /// for readers is this buffer itself.
    pub fn append_bytes(&mut self, payload: Bytes) -> Result<Appended, JournalError> {
        let keep = payload.clone();
        self.append_with(&payload, move || keep)
    }

    fn append_with(&mut self, payload: &[u8], keep: impl FnOnce() -> Bytes) -> Result<Appended, JournalError> {
        if payload.len() as u64 > self.max_payload {
            return Err(JournalError::TooLarge { len: payload.len(), max: self.max_payload });
        }
        let stored = STAMP_BYTES + payload.len();
        let record = (HEADER_BYTES + stored) as u64;
        let active_len = self.active_len();
        if active_len > 0 && active_len + record > self.segment_bytes {
            self.roll()?;
        }
        if self.total_bytes() + record > self.max_bytes && !self.make_room(record)? {
            self.dropped += 1;
            return Ok(Appended::Dropped);
        }
        let seq = self.last_seq + 1;
        let stamp = now_ms();
        let (segment, offset) = (self.segs[self.segs.len() - 1].first, self.active_len());
        let stamp_bytes = stamp.to_le_bytes();
        let sum = checksum(seq, &[&stamp_bytes, payload]);
        // Straight into the write buffer: no copy of the body per record.
        self.buf.reserve(HEADER_BYTES + stored);
        self.buf.extend_from_slice(&MAGIC.to_le_bytes());
        self.buf.extend_from_slice(&(stored as u32).to_le_bytes());
        self.buf.extend_from_slice(&sum.to_le_bytes());
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.extend_from_slice(&stamp_bytes);
        self.buf.extend_from_slice(payload);
        if self.buf_first_stamp.is_none() {
            self.buf_first_stamp = Some(stamp);
        }
        if self.last_seq <= self.effective_committed() {
            self.oldest_stamp = Some(stamp);
        }
        self.last_seq = seq;
        if self.memory_bytes > 0 {
            self.remember(Recent { seq, payload: keep(), segment, offset, stamp });
        }
        if self.buf.len() >= WRITE_OUT_BYTES {
            self.write_out()?;
        }
        Ok(Appended::Stored(seq))
    }

    /// Writes buffered records to the OS (and fsyncs with `Fsync::OnFlush`, or `Interval` when
    /// due). After this returns, they survive the process being killed and readers see them.
    pub fn flush(&mut self) -> Result<(), JournalError> {
        self.write_out()?;
        let due = match self.fsync {
            Fsync::Never => false,
            Fsync::OnFlush => true,
            Fsync::Interval(every) => self.synced_at.elapsed() >= every,
        };
        if due {
            self.sync_active()?;
        }
        Ok(())
    }

    /// Fsyncs what was written out to the active segment since the last fsync.
    fn sync_active(&mut self) -> Result<(), JournalError> {
        if self.unsynced {
            let path = &self.segs[self.segs.len() - 1].path;
            self.active.sync_data().map_err(io_err(path, "syncing"))?;
            self.unsynced = false;
            self.synced_at = Instant::now();
            self.fsyncs += 1;
        }
        Ok(())
    }

    /// Writes buffered records out and fsyncs them whatever the policy (for a clean stop of a
    /// journal whose policy is `Interval`).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.write_out()?;
        self.sync_active()
    }

    /// Fsyncs of segment data since open (the commit point's and directories' not counted).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs
    }

    /// Up to `max_records` records with sequence numbers above `after`, oldest first, at most
    /// `max_bytes` of payload (but always at least one record when there is one); only what
    /// was flushed. Damaged regions are skipped and reported, each once per open (the first
    /// call also hands out what `open` found). Sequence numbers may jump: over damage, and
    /// over records the full policy dropped.
    pub fn read_after(
        &mut self,
        after: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(Records, Vec<Damage>), JournalError> {
        let mut damage = std::mem::take(&mut self.pending_damage);
        let mut out: Records = Vec::new();
        // The reader is past what comes before `after` (the journal's readers go forward, and
        // go back only to replay after a reconnect or a restart, which the files serve): kept
        // records live from their append until read past, not until committed, so that buffers
        // sent long ago do not pile up while their acknowledgement is on its way.
        self.forget_recent_through(after);
        if max_records == 0 || after >= self.flushed_seq {
            return Ok((out, damage));
        }
        if let Some(at) = self.recent_index(after) {
            let mut bytes = 0usize;
            let mut last = None;
            for r in self.recent.range(at..) {
                if r.seq > self.flushed_seq || (!out.is_empty() && bytes + r.payload.len() > max_bytes) {
                    break;
                }
                bytes += r.payload.len();
                out.push((r.seq, r.payload.clone()));
                last = Some(Position { seq: r.seq, segment: r.segment, offset: r.next() });
                if out.len() >= max_records || bytes >= max_bytes {
                    break;
                }
            }
            if let Some(p) = last {
                self.remember_position(p);
            }
            return Ok((out, damage));
        }
        let (mut idx, mut off, mut scan_prev) = self.start_point(after);
        // Highest sequence number accounted for: returned, skipped as <= after, or lost.
        let mut acct = scan_prev;
        let mut bytes = 0usize;
        let mut last_pos = None;
        while idx < self.segs.len() {
            let end = self.segs[idx].len;
            let max_seq = self.nominal_last(idx);
            let mut w = self.take_window(idx)?;
            let mut scan = Scan { w: &mut w, off, end, prev: scan_prev, max_seq };
            let mut full = false;
            let mut failed = None;
            loop {
                let item = match scan.next(true) {
                    Ok(Some(item)) => item,
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                match item {
                    Item::Record { seq, offset, next, payload, .. } => {
                        if seq > acct + 1 && seq - 1 > after {
                            // Records missing with no damaged bytes between: count them.
                            let lost = seq - 1 - acct.max(after);
                            self.report(idx, offset, 0, "records missing", lost, &mut damage);
                        }
                        if seq <= after {
                            acct = acct.max(seq);
                            continue;
                        }
                        if !out.is_empty() && bytes + payload.len() > max_bytes {
                            full = true;
                            break;
                        }
                        acct = seq;
                        bytes += payload.len();
                        last_pos = Some(Position { seq, segment: self.segs[idx].first, offset: next });
                        out.push((seq, Bytes::from(payload)));
                        if out.len() >= max_records || bytes >= max_bytes {
                            full = true;
                            break;
                        }
                    }
                    Item::Damage { offset, skipped, reason, resumes } => {
                        let next_seq = resumes.unwrap_or(max_seq.saturating_add(1));
                        if next_seq > after + 1 {
                            let lost = next_seq.saturating_sub(acct.max(after) + 1);
                            self.report(idx, offset, skipped, reason, lost, &mut damage);
                        }
                        acct = acct.max(next_seq.saturating_sub(1));
                    }
                }
            }
            self.window = Some(w);
            if let Some(e) = failed {
                return Err(io_err(&self.segs[idx].path, "reading")(e));
            }
            if full {
                break;
            }
            if idx + 1 < self.segs.len() && acct < max_seq && max_seq > after {
                // A sealed segment that ends early (cut short without garbage).
                let lost = max_seq - acct.max(after);
                self.report(idx, end, 0, "segment ends before its last record", lost, &mut damage);
                acct = max_seq;
            }
            idx += 1;
            off = 0;
            scan_prev = self.segs.get(idx).map_or(0, |s| s.first - 1);
        }
        if let Some(p) = last_pos {
            self.remember_position(p);
        }
        Ok((out, damage))
    }

    fn remember_position(&mut self, p: Position) {
        self.positions.retain(|q| q.seq != p.seq);
        self.positions.push_back(p);
        if self.positions.len() > POSITIONS_KEPT {
            self.positions.pop_front();
        }
    }

    /// Marks everything up to `seq` done: persists the cursor, then deletes the segments
    /// wholly at or below it. Lower values than the current cursor are ignored.
    pub fn commit(&mut self, seq: u64) -> Result<(), JournalError> {
        let seq = seq.min(self.last_seq);
        if seq <= self.committed {
            return Ok(());
        }
        if self.commit_interval.is_zero() || self.persisted_at.elapsed() >= self.commit_interval {
            self.persist(seq)?;
        }
        self.committed = seq;
        self.forget_recent_through(seq);
        let collected = self.collect_committed();
        self.recompute_commit_point();
        collected
    }

    /// Writes the commit point to disk if it lags (see `JournalConfig::commit_interval`): for
    /// a clean stop.
    pub fn sync_commit(&mut self) -> Result<(), JournalError> {
        if self.persisted < self.committed { self.persist(self.committed) } else { Ok(()) }
    }

    fn persist(&mut self, seq: u64) -> Result<(), JournalError> {
        let tmp = self.dir.join(COMMIT_TMP);
        let dst = self.dir.join(COMMIT_FILE);
        let mut f = File::create(&tmp).map_err(io_err(&tmp, "creating"))?;
        f.write_all(format!("{seq}\n").as_bytes()).map_err(io_err(&tmp, "writing"))?;
        if self.fsync != Fsync::Never {
            f.sync_data().map_err(io_err(&tmp, "syncing"))?;
        }
        drop(f);
        fs::rename(&tmp, &dst).map_err(io_err(&dst, "replacing"))?;
        if self.fsync != Fsync::Never {
            sync_dir(&self.dir)?;
        }
        self.persisted = seq;
        self.persisted_at = Instant::now();
        Ok(())
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// The commit point as last written to disk (behind [`Journal::committed`] by up to the
    /// `commit_interval`).
    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// The sequence number of the last record appended (buffered or not).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Uncommitted records, buffered ones included. `oldest_unix_ms` is the write time of the
    /// oldest one (each record carries its own).
    pub fn depth(&self) -> Depth {
        let records = self.last_seq.saturating_sub(self.effective_committed());
        let bytes = self.total_bytes().saturating_sub(self.committed_bytes);
        Depth { records, bytes, oldest_unix_ms: if records > 0 { self.oldest_stamp } else { None } }
    }

    /// Records lost to the full policy since open, never committed: refused (`DropNewest`) or
    /// deleted with their segment (`DropOldest`).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Records lost to damage since open (a torn tail counts one; elsewhere the gap in
    /// sequence numbers says how many).
    pub fn damage_total(&self) -> u64 {
        self.damage_total
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn active_len(&self) -> u64 {
        self.segs[self.segs.len() - 1].len + self.buf.len() as u64
    }

    fn total_bytes(&self) -> u64 {
        self.disk_bytes + self.buf.len() as u64
    }

    /// The cursor, or just before the oldest record still present when the full policy
    /// deleted past it.
    fn effective_committed(&self) -> u64 {
        self.committed.max(self.segs[0].first - 1)
    }

    /// The last sequence number segment `idx` should hold.
    fn nominal_last(&self, idx: usize) -> u64 {
        match self.segs.get(idx + 1) {
            Some(next) => next.first - 1,
            None => self.flushed_seq,
        }
    }

    fn report(&mut self, idx: usize, offset: u64, skipped: u64, reason: &str, lost: u64, out: &mut Vec<Damage>) {
        let seg = &mut self.segs[idx];
        if offset < seg.reported_until {
            return;
        }
        seg.reported_until = offset + skipped.max(1);
        self.damage_total += lost;
        let lost = match lost {
            1 => "1 record lost".to_owned(),
            n => format!("{n} records lost"),
        };
        out.push(Damage { segment: seg.path.clone(), offset, reason: format!("{reason}; {lost}"), bytes_skipped: skipped });
    }

    /// Where to start reading for records after `after`: (segment index, offset, the
    /// sequence number just before that offset).
    fn start_point(&self, after: u64) -> (usize, u64, u64) {
        if after < self.segs[0].first {
            return (0, 0, self.segs[0].first - 1);
        }
        let idx = self.segs.partition_point(|s| s.first <= after + 1).saturating_sub(1);
        let seg = &self.segs[idx];
        if seg.first == after + 1 {
            return (idx, 0, after);
        }
        match self.positions.iter().rev().find(|p| p.seq == after && p.segment == seg.first) {
            Some(p) => (idx, p.offset, after),
            None => (idx, 0, seg.first - 1),
        }
    }

    fn take_window(&mut self, idx: usize) -> Result<Window, JournalError> {
        let seg = &self.segs[idx];
        match self.window.take() {
            Some(w) if w.segment == seg.first => Ok(w),
            _ => Window::open(seg).map_err(io_err(&seg.path, "opening")),
        }
    }

    /// The first valid record after `after`: (segment index, offset, write time).
    fn locate(&mut self, after: u64) -> io::Result<Option<(usize, u64, i64)>> {
        if let Some(r) = self.recent_index(after).and_then(|at| self.recent.get(at))
            && r.seq <= self.flushed_seq
            && let Some(idx) = self.segs.iter().position(|s| s.first == r.segment)
        {
            return Ok(Some((idx, r.offset, r.stamp)));
        }
        let (mut idx, mut off, mut prev) = self.start_point(after);
        while idx < self.segs.len() {
            let end = self.segs[idx].len;
            let max_seq = self.nominal_last(idx);
            let mut w = match self.window.take() {
                Some(w) if w.segment == self.segs[idx].first => w,
                _ => Window::open(&self.segs[idx])?,
            };
            let mut scan = Scan { w: &mut w, off, end, prev, max_seq };
            let mut found = None;
            let mut failed = None;
            loop {
                match scan.next(false) {
                    Ok(Some(Item::Record { seq, stamp, offset, .. })) if seq > after => {
                        found = Some((idx, offset, stamp));
                        break;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            self.window = Some(w);
            if let Some(e) = failed {
                return Err(e);
            }
            if found.is_some() {
                return Ok(found);
            }
            idx += 1;
            off = 0;
            prev = self.segs.get(idx).map_or(0, |s| s.first - 1);
        }
        Ok(None)
    }

    /// Recomputes where the uncommitted records start (for `depth`): bytes before them and
    /// the oldest one's write time.
    fn recompute_commit_point(&mut self) {
        let eff = self.effective_committed();
        if eff >= self.last_seq {
            self.committed_bytes = self.total_bytes();
            self.oldest_stamp = None;
            return;
        }
        if eff >= self.flushed_seq {
            self.committed_bytes = self.disk_bytes;
            self.oldest_stamp = self.buf_first_stamp;
            return;
        }
        let before = |segs: &[Segment], idx: usize| segs[..idx].iter().map(|s| s.len).sum::<u64>();
        match self.locate(eff) {
            Ok(Some((idx, off, stamp))) => {
                self.committed_bytes = before(&self.segs, idx) + off;
                self.oldest_stamp = Some(stamp);
            }
            // Nothing valid left on disk (damage) or unreadable: depth stays approximate.
            _ => {
                let (idx, _, _) = self.start_point(eff);
                self.committed_bytes = before(&self.segs, idx);
                self.oldest_stamp = self.buf_first_stamp;
            }
        }
    }

    /// Deletes sealed segments whose records are all committed.
    fn collect_committed(&mut self) -> Result<(), JournalError> {
        let mut removed = false;
        if self.segs.len() > 1 && self.segs[1].first - 1 <= self.committed {
            // Keeps the point on disk past what is deleted (a restart then reads nothing
            // twice). A failure (say, a full disk) must not stop the deletion that frees
            // space: a point left inside a deleted segment only means reading from the oldest
            // segment left, and the next commit tries (and reports) the write again.
            let _ = self.sync_commit();
        }
        while self.segs.len() > 1 && self.segs[1].first - 1 <= self.committed {
            self.remove_oldest()?;
            removed = true;
        }
        if removed {
            self.recompute_commit_point();
        }
        Ok(())
    }

    fn remove_oldest(&mut self) -> Result<(), JournalError> {
        let seg = &self.segs[0];
        match fs::remove_file(&seg.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&seg.path, "removing")(e)),
        }
        if self.window.as_ref().is_some_and(|w| w.segment == seg.first) {
            self.window = None;
        }
        self.disk_bytes -= seg.len;
        self.segs.remove(0);
        // What the full policy deleted is gone for readers of memory too.
        self.forget_recent_through(self.segs[0].first - 1);
        Ok(())
    }

    /// Keeps a just-appended record in memory for readers, forgetting the oldest kept ones
    /// beyond `memory_bytes`.
    fn remember(&mut self, record: Recent) {
        // Consecutive or nothing: `recent_index` relies on it (a gap cannot happen, as every
        // stored record takes the next number; this keeps it true if that ever changes).
        if self.recent.back().is_some_and(|r| r.seq + 1 != record.seq) {
            self.recent.clear();
            self.recent_bytes = 0;
        }
        self.recent_bytes += record.payload.len() + RECENT_OVERHEAD;
        self.recent.push_back(record);
        while self.recent_bytes > self.memory_bytes {
            self.forget_oldest_recent();
        }
    }

    fn forget_oldest_recent(&mut self) {
        if let Some(r) = self.recent.pop_front() {
            self.recent_bytes -= r.payload.len() + RECENT_OVERHEAD;
        }
    }

    /// Forgets the kept records up to `last`.
    fn forget_recent_through(&mut self, last: u64) {
        while self.recent.front().is_some_and(|r| r.seq <= last) {
            self.forget_oldest_recent();
        }
    }

    /// Where in `recent` the record after `after` is, when memory holds every record from
    /// there on (and there is one).
    fn recent_index(&self, after: u64) -> Option<usize> {
        let first = self.recent.front()?.seq;
        if first > after.checked_add(1)? {
            return None;
        }
        let at = usize::try_from(after + 1 - first).ok()?;
        (at < self.recent.len()).then_some(at)
    }

    /// What the records kept in memory for readers count against `memory_bytes`: their
    /// payloads and 64 bytes each.
    pub fn bytes_in_memory(&self) -> usize {
        self.recent_bytes
    }

    /// Frees space for a record of `need` bytes under the full policy; false when the record
    /// must be refused.
    fn make_room(&mut self, need: u64) -> Result<bool, JournalError> {
        self.collect_committed()?;
        if self.total_bytes() + need <= self.max_bytes {
            return Ok(true);
        }
        if self.full == FullPolicy::DropNewest {
            return Ok(false);
        }
        while self.total_bytes() + need > self.max_bytes {
            if self.segs.len() == 1 {
                if self.active_len() == 0 {
                    // Cannot happen: a record is at most half of max_bytes.
                    return Ok(false);
                }
                self.roll()?;
            }
            let nominal_last = self.segs[1].first - 1;
            let lost = nominal_last.saturating_sub(self.committed.max(self.segs[0].first - 1));
            self.remove_oldest()?;
            self.dropped += lost;
        }
        self.recompute_commit_point();
        Ok(true)
    }

    /// Seals the active segment (fsynced with `OnFlush`) and starts the next one.
    fn roll(&mut self) -> Result<(), JournalError> {
        self.write_out()?;
        if self.fsync != Fsync::Never {
            self.sync_active()?;
        }
        let first = self.last_seq + 1;
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_err(&path, "creating"))?;
        if self.fsync != Fsync::Never {
            sync_dir(&self.dir)?;
        }
        self.active = file;
        self.segs.push(Segment { first, path, len: 0, reported_until: 0 });
        Ok(())
    }

    /// Moves the buffer to the OS. A failed write is cut back off the file, so the segment
    /// never ends in a half record while the process lives; the buffer is kept for a retry.
    fn write_out(&mut self) -> Result<(), JournalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let idx = self.segs.len() - 1;
        if let Err(e) = self.active.write_all(&self.buf) {
            let _ = self.active.set_len(self.segs[idx].len);
            if self.window.as_ref().is_some_and(|w| w.segment == self.segs[idx].first) {
                self.window = None;
            }
            return Err(io_err(&self.segs[idx].path, "writing")(e));
        }
        let n = self.buf.len() as u64;
        self.segs[idx].len += n;
        self.disk_bytes += n;
        self.flushed_seq = self.last_seq;
        self.buf.clear();
        self.buf_first_stamp = None;
        self.unsynced = true;
        Ok(())
    }
}

impl Drop for Journal {
    /// Like a `BufWriter`, hands what is buffered to the OS (no fsync), and writes a lagging
    /// commit point; errors have nowhere to go. A crash (`kill -9`) loses what was not
    /// flushed.
    fn drop(&mut self) {
        let _ = self.write_out();
        let _ = self.sync_commit();
    }
}

/// The committed cursor; an unreadable one counts as nothing committed (everything is read
/// again: duplicates, never loss) and is reported.
fn read_cursor(dir: &Path, damage: &mut Vec<Damage>) -> Result<u64, JournalError> {
    let path = dir.join(COMMIT_FILE);
    match fs::read(&path) {
        Ok(bytes) => match std::str::from_utf8(&bytes).ok().and_then(|t| t.trim().parse().ok()).filter(|&s| s <= MAX_SEQ) {
            Some(seq) => Ok(seq),
            None => {
                damage.push(Damage {
                    segment: path,
                    offset: 0,
                    reason: "commit cursor unreadable; reading again from the oldest record".into(),
                    bytes_skipped: bytes.len() as u64,
                });
                Ok(0)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(&path, "reading")(e)),
    }
}

/// Scans the last segment whole: (end of the last valid record, its sequence number, why the
/// bytes after it are not a record).
fn scan_tail(seg: &Segment) -> io::Result<(u64, u64, &'static str)> {
    let mut w = Window::open(seg)?;
    let mut scan = Scan { w: &mut w, off: 0, end: seg.len, prev: seg.first.saturating_sub(1), max_seq: MAX_SEQ };
    let (mut valid_end, mut last_valid, mut why) = (0, 0, "");
    while let Some(item) = scan.next(false)? {
        match item {
            Item::Record { seq, next, .. } => {
                valid_end = next;
                last_valid = seq;
            }
            Item::Damage { reason, .. } => why = reason,
        }
    }
    Ok((valid_end, last_valid, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_refuse_others() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name("00000000000000000042.seg"), Some(42));
        assert_eq!(parse_segment_name("0000000000000000042.seg"), None);
        assert_eq!(parse_segment_name("99999999999999999999.seg"), None, "above u64::MAX");
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.tmp"), None);
    }
}
