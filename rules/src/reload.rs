//! Hot reload.
//!
//! A [`RulesHandle`] holds the ruleset in force; evaluation takes a cheap `Arc` clone of it, and
//! a reload swaps the `Arc` (the lock is held only for the pointer copy).
//!
//! A [`RulesWatcher`] polls: every interval it resolves the configured paths (directories to
//! their `*.yaml` files), canonicalises each file (following symlinks), and compares
//! (canonical path, inode, size, mtime) with the last load. That catches a ConfigMap update,
//! where kubelet writes a new timestamped directory and renames the `..data` symlink over the
//! old one: the file's own path (`rules.yaml -> ..data/rules.yaml`) never changes, so a watch on
//! it sees nothing, but its canonical path does. A new set that fails to load is reported once
//! and the previous ruleset stays in force.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::error::LoadError;
use crate::ruleset::{Ruleset, rules_files};

/// The ruleset in force, swappable while others evaluate.
#[derive(Debug)]
pub struct RulesHandle {
    current: RwLock<Arc<Ruleset>>,
}

impl RulesHandle {
    /// A handle holding `ruleset`.
    pub fn new(ruleset: Ruleset) -> RulesHandle {
        RulesHandle {
            current: RwLock::new(Arc::new(ruleset)),
        }
    }

    /// The ruleset in force. Hold it for a batch of events, not forever.
    pub fn current(&self) -> Arc<Ruleset> {
        match self.current.read() {
            Ok(g) => g.clone(),
            // A writer panicked mid-swap: the Arc inside is still a whole ruleset.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `ruleset` in force.
    pub fn swap(&self, ruleset: Ruleset) {
        let new = Arc::new(ruleset);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

/// One file's identity, as seen through its symlinks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    canonical: PathBuf,
    inode: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

/// What one poll found.
#[derive(Debug)]
pub enum PollOutcome {
    /// Nothing changed.
    Unchanged,
    /// Files changed and the new rules are in force.
    Reloaded {
        /// Rules compiled in the new set.
        compiled: usize,
        /// Rules skipped in the new set.
        skipped: usize,
    },
    /// Files changed but do not load: the previous rules stay in force. Reported once per
    /// distinct set of files.
    Failed(LoadError),
    /// The same broken files as last time (already reported).
    StillFailing,
}

/// Polls rules paths and reloads a [`RulesHandle`] when they change.
pub struct RulesWatcher {
    paths: Vec<PathBuf>,
    handle: Arc<RulesHandle>,
    loaded: Vec<FileStamp>,
    failed: Option<Vec<FileStamp>>,
}

impl RulesWatcher {
    /// Loads `paths` now (an error here means there is nothing to run) and returns the handle
    /// holding the result and the watcher that keeps it current.
    pub fn start(paths: Vec<PathBuf>) -> Result<(Arc<RulesHandle>, RulesWatcher), LoadError> {
        let stamps = stamp(&paths);
        let ruleset = Ruleset::load_paths(&paths)?;
        let handle = Arc::new(RulesHandle::new(ruleset));
        let w = RulesWatcher {
            paths,
            handle: handle.clone(),
            loaded: stamps,
            failed: None,
        };
        Ok((handle, w))
    }

    /// Checks the files once; reloads if they changed.
    pub fn poll(&mut self) -> PollOutcome {
        let before = stamp(&self.paths);
        if before == self.loaded {
            self.failed = None;
            return PollOutcome::Unchanged;
        }
        if self.failed.as_ref() == Some(&before) {
            return PollOutcome::StillFailing;
        }
        let result = Ruleset::load_paths(&self.paths);
        // A swap in the middle of reading mixes old and new files: try again next poll.
        let after = stamp(&self.paths);
        if after != before {
            return PollOutcome::Unchanged;
        }
        match result {
            Ok(rs) => {
                let compiled = rs.rules().len();
                let skipped = rs.report().rules.len() - compiled;
                self.handle.swap(rs);
                self.loaded = after;
                self.failed = None;
                PollOutcome::Reloaded { compiled, skipped }
            }
            Err(e) => {
                self.failed = Some(after);
                PollOutcome::Failed(e)
            }
        }
    }

    /// Polls every `interval` on a thread of its own, passing each outcome other than
    /// `Unchanged`/`StillFailing` to `report`, until the returned guard is stopped or dropped.
    pub fn spawn(
        mut self,
        interval: Duration,
        mut report: impl FnMut(PollOutcome) + Send + 'static,
    ) -> std::io::Result<WatcherThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rules-watch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match self.poll() {
                        PollOutcome::Unchanged | PollOutcome::StillFailing => {}
                        other => report(other),
                    }
                    std::thread::park_timeout(interval);
                }
            })?;
        Ok(WatcherThread {
            stop,
            thread: Some(thread),
        })
    }
}

/// The polling thread; stops when dropped.
pub struct WatcherThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WatcherThread {
    /// Stops polling and waits for the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for WatcherThread {
    fn drop(&mut self) {
        self.halt();
    }
}

fn stamp(paths: &[PathBuf]) -> Vec<FileStamp> {
    let mut out = Vec::new();
    for p in paths {
        match rules_files(p) {
            Ok(files) => out.extend(files.iter().map(|f| stamp_file(f))),
            // Unreadable now: record it so that it becoming readable counts as a change.
            Err(_) => out.push(missing(p)),
        }
    }
    out
}

fn missing(p: &Path) -> FileStamp {
    FileStamp {
        canonical: p.to_path_buf(),
        inode: 0,
        len: 0,
        mtime: None,
    }
}

fn stamp_file(p: &Path) -> FileStamp {
    let Ok(canonical) = std::fs::canonicalize(p) else {
        return missing(p);
    };
    let Ok(meta) = std::fs::metadata(&canonical) else {
        return missing(p);
    };
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    FileStamp {
        canonical,
        inode,
        len: meta.len(),
        mtime: meta.modified().ok(),
    }
}
