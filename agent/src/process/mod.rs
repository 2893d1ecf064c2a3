//! Process lifecycle: turns exec, fork and exit records into events that carry the complete
//! process record and its ancestry, through the process cache.

pub mod cache;
pub mod procfs;

pub use cache::CacheConfig;
use cache::ProcessCache;
use peregrine_proto::{Kind, ProcessExec, ProcessExit, ProcessFork, SharedProcess};

use crate::decode::Record;

pub struct Tracker {
    cache: ProcessCache,
    node: String,
    /// Forks become events too (`process.fork_events`); they always update the cache.
    fork_events: bool,
}

impl Tracker {
    pub fn new(node: String, config: CacheConfig) -> Self {
        Self { cache: ProcessCache::new(node.clone(), config), node, fork_events: false }
    }

    pub fn with_fork_events(mut self, on: bool) -> Self {
        self.fork_events = on;
        self
    }

    /// Seeds from /proc; returns the number of processes found.
    pub fn seed(&mut self) -> usize {
        procfs::seed(&mut self.cache, &self.node)
    }

    /// The event for a process record; None for records that are not about processes.
    pub fn apply(&mut self, record: Record) -> Option<Kind> {
        Some(match record {
            Record::Exec(e) => {
                let (process, ancestors) = self.cache.exec(*e);
                Kind::Exec(ProcessExec { process: Some(process), ancestors })
            }
            // Ancestry travels on exec events only: a fork's lineage is its parent's exec's,
            // and copying it onto every fork would double the agent's work per process.
            Record::Fork(f) => {
                let process = self.cache.fork(&f, self.fork_events)?;
                Kind::Fork(ProcessFork { process: Some(process), ancestors: Vec::new() })
            }
            Record::Conn(_) | Record::Cgroup(_) | Record::ExecDenied(_) => return None,
            Record::Exit(x) => {
                let (process, status, duration_ns) = self.cache.exit(&x);
                Kind::Exit(ProcessExit {
                    process: Some(process),
                    exit_code: status.code,
                    signal: status.signal,
                    core_dumped: status.core_dumped,
                    duration_ns,
                })
            }
        })
    }

    /// The process record of (tgid, start), or a minimal one marked partial when the cache
    /// does not know it. Call [`Self::settle`] first: a child whose fork is pending is not
    /// found.
    /// A start time of 0 means the hook could not read it (cgroup socket hooks): the live
    /// process with that tgid is taken.
    pub fn process_of(&self, tgid: u32, start_ns: u64, tid: u32, comm: &str, cgroup_id: u64) -> SharedProcess {
        let found = if start_ns == 0 { self.cache.live_by_tgid(tgid) } else { self.cache.get(cache::Key { tgid, start_ns }) };
        match found {
            Some(p) => cache::with_tid(p.clone(), tid),
            None => SharedProcess::from(peregrine_proto::Process {
                pid: tgid,
                tid,
                start_boot_ns: start_ns,
                comm: comm.to_owned(),
                cgroup_id,
                partial: vec!["unknown_process".into()],
                source: "socket".into(),
                ..peregrine_proto::Process::default()
            }),
        }
    }

    /// Records the forks still pending in the cache: before the cache is read for anything
    /// but the process lifecycle, and at the end of every drain pass.
    pub fn settle(&mut self) {
        self.cache.settle_all();
    }

    pub fn sweep(&mut self, now_ns: u64) {
        self.cache.sweep(now_ns);
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Live processes evicted before their exit because the cache was full.
    pub fn evicted_early(&self) -> u64 {
        self.cache.evicted_early
    }
}

