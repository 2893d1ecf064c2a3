//! The process cache: every live process (and recently exited one) by (tgid, start time).
//!
//! Keyed by start time as well as tgid so a reused pid can never be mistaken for the process
//! that had it before. Kernel records carry the start in boot-time nanoseconds; /proc gives it
//! in clock ticks. Seeded entries are stored at tick precision and marked coarse; a lookup that
//! misses exactly retries at tick precision, which is how a kernel record finds the seeded
//! entry of a process older than the agent.
//!
//! Records from one ring are not in causal order (a child can exec on another CPU before the
//! parent's fork tracepoint runs), so every operation tolerates its predecessors being absent
//! or arriving later: a late fork never overwrites what an exec already recorded.

use std::{
    cell::OnceCell,
    collections::{HashMap, VecDeque},
};

use peregrine_proto::{Ancestor, Credentials, Namespaces, Process, SharedAncestor, SharedProcess};

use crate::decode::{Exec, Exit, Fork};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub tgid: u32,
    pub start_ns: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Shared with the events that carry it (its exec, its exit, its connections): they take
    /// a reference and reuse its encoding. A pointer also keeps the map's free slots small
    /// (measured in agent RSS under an exec storm).
    process: SharedProcess,
    parent: Option<Key>,
    /// Start time known only to clock-tick precision (seeded from /proc).
    coarse: bool,
    exited_ns: Option<u64>,
    /// This process as its descendants' exec events name it, made the first time one needs
    /// it and shared by all of them (most processes never have a child that execs).
    ancestor: OnceCell<SharedAncestor>,
}

#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    pub capacity: usize,
    /// How long an exited process stays for late events, in boot-time ns.
    pub grace_ns: u64,
    pub ancestry_depth: usize,
    /// Nanoseconds per /proc clock tick (10 ms with USER_HZ = 100).
    pub tick_ns: u64,
}

/// SipHash, the standard maps' hasher, showed in the agent's profile under an exec storm
/// (several lookups per record); foldhash is several times cheaper on integer keys and is
/// seeded per process, so crafted pids and start times cannot aim at one bucket.
type Hasher = foldhash::fast::RandomState;

#[derive(Debug)]
pub struct ProcessCache {
    node: String,
    config: CacheConfig,
    entries: HashMap<Key, Entry, Hasher>,
    /// The newest process per tgid, for hooks that know the tgid but not the start time.
    by_tgid: HashMap<u32, Key, Hasher>,
    exited: VecDeque<(u64, Key)>,
    /// Forks not sent as events and not yet recorded (see [`Self::fork`]), by child.
    pending: HashMap<Key, PendingFork, Hasher>,
    /// How many pending children each parent has: an exec of the parent records them first.
    pending_parents: HashMap<Key, u32, Hasher>,
    pub evicted_early: u64,
}

/// What a fork that is not sent needs to become a record later.
#[derive(Debug)]
struct PendingFork {
    parent: Key,
    cgroup_id: u64,
    comm: String,
}

/// Pending forks at most before they are recorded without being asked: the drain settles
/// after every pass (at most 4096 records), so this is only reached without a drain.
const PENDING_MAX: usize = 4096;

/// Exit status decoded from a wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: i32,
    pub signal: i32,
    pub core_dumped: bool,
}

impl ExitStatus {
    pub fn from_wait_status(status: i32) -> Self {
        let signal = status & 0x7f;
        if signal == 0 {
            Self { code: (status >> 8) & 0xff, signal: 0, core_dumped: false }
        } else {
            Self { code: 0, signal, core_dumped: status & 0x80 != 0 }
        }
    }
}

/// `process` as the thread `tid` caused the event. Written only when it differs: a write
/// copies the shared record and makes its encoding again (most processes are one thread).
pub fn with_tid(mut process: SharedProcess, tid: u32) -> SharedProcess {
    if process.tid != tid {
        process.tid = tid;
    }
    process
}

/// `node:tgid:start:exec`. Built by hand: `format!` showed in the agent's profile (one per
/// exec, and one per parent lookup).
pub fn exec_id(node: &str, tgid: u32, start_ns: u64, exec_ns: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let mut id = String::with_capacity(node.len() + 3 + 10 + 2 * 20);
    id.push_str(node);
    id.push(':');
    id.push_str(digits.format(tgid));
    id.push(':');
    id.push_str(digits.format(start_ns));
    id.push(':');
    id.push_str(digits.format(exec_ns));
    id
}

impl ProcessCache {
    pub fn new(node: String, config: CacheConfig) -> Self {
        Self {
            node,
            config,
            entries: HashMap::default(),
            by_tgid: HashMap::default(),
            exited: VecDeque::new(),
            pending: HashMap::default(),
            pending_parents: HashMap::default(),
            evicted_early: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn coarse_key(&self, key: Key) -> Key {
        let tick = self.config.tick_ns.max(1);
        Key { tgid: key.tgid, start_ns: key.start_ns / tick * tick }
    }

    /// The stored key for `key`: exact, or the coarse (seeded) entry of the same process.
    fn resolve(&self, key: Key) -> Option<Key> {
        if self.entries.contains_key(&key) {
            return Some(key);
        }
        let coarse = self.coarse_key(key);
        self.entries.get(&coarse).filter(|e| e.coarse).map(|_| coarse)
    }

    pub fn get(&self, key: Key) -> Option<&SharedProcess> {
        self.resolve(key).and_then(|k| self.entries.get(&k)).map(|e| &e.process)
    }

    /// The newest live process with this tgid.
    pub fn live_by_tgid(&self, tgid: u32) -> Option<&SharedProcess> {
        let key = self.by_tgid.get(&tgid)?;
        self.entries.get(key).filter(|e| e.exited_ns.is_none()).map(|e| &e.process)
    }

    fn index(&mut self, key: Key) {
        let newer = self.by_tgid.get(&key.tgid).is_none_or(|k| k.start_ns <= key.start_ns);
        if newer {
            self.by_tgid.insert(key.tgid, key);
        }
    }

    fn forget(&mut self, key: Key) {
        self.entries.remove(&key);
        if self.by_tgid.get(&key.tgid) == Some(&key) {
            self.by_tgid.remove(&key.tgid);
        }
    }

    /// A process seen in /proc at start-up. Its key's start must be at tick precision.
    pub fn seed(&mut self, key: Key, parent: Option<Key>, process: Process) {
        self.entries.insert(key, Entry { ancestor: OnceCell::new(), process: process.into(), parent, coarse: true, exited_ns: None });
        self.index(key);
    }

    /// Ancestors from the parent upwards, bounded by the configured depth.
    pub fn ancestors(&self, parent: Option<Key>) -> Vec<SharedAncestor> {
        let mut out = Vec::new();
        let mut next = parent.and_then(|k| self.resolve(k));
        if next.is_some() {
            // Sized once: grown one by one it was two allocations per exec at the default depth.
            out.reserve_exact(self.config.ancestry_depth.min(16));
        }
        while let Some(key) = next {
            if out.len() >= self.config.ancestry_depth {
                break;
            }
            let Some(entry) = self.entries.get(&key) else { break };
            let shared = entry.ancestor.get_or_init(|| {
                let p = &entry.process;
                SharedAncestor::from(Ancestor {
                    pid: p.pid,
                    exec_id: p.exec_id.clone(),
                    comm: p.comm.clone(),
                    exe: p.exe.clone(),
                    argv: p.argv.clone(),
                })
            });
            out.push(shared.clone());
            next = entry.parent.and_then(|k| self.resolve(k));
        }
        out
    }

    fn parent_exec_id(&self, parent: Key) -> String {
        self.get(parent).map(|p| p.exec_id.clone()).unwrap_or_default()
    }

    /// Takes the decoded record by value: its strings move into the process record.
    pub fn exec(&mut self, e: Exec) -> (SharedProcess, Vec<SharedAncestor>) {
        let key = Key { tgid: e.tgid, start_ns: e.start_ns };
        let parent = Key { tgid: e.parent_tgid, start_ns: e.parent_start_ns };
        // The fork's copy of the parent's image is superseded: it never needs making.
        self.unpend(key);
        // Children forked before this exec inherited the image it replaces.
        if self.pending_parents.contains_key(&key) {
            self.settle_children_of(key);
        }
        self.settle(parent);
        let process = SharedProcess::from(Process {
            exec_id: exec_id(&self.node, e.tgid, e.start_ns, e.boot_ns),
            parent_exec_id: self.parent_exec_id(parent),
            pid: e.tgid,
            tid: e.pid,
            ppid: e.parent_tgid,
            vpid: e.vpid,
            start_boot_ns: e.start_ns,
            exec_boot_ns: e.boot_ns,
            comm: e.comm,
            exe: e.exe,
            filename: e.filename,
            argv: e.argv,
            cwd: e.cwd,
            creds: Some(Credentials {
                uid: e.uid,
                gid: e.gid,
                euid: e.euid,
                egid: e.egid,
                loginuid: e.loginuid,
                sessionid: e.sessionid,
                cap_effective: e.cap_effective,
                cap_permitted: e.cap_permitted,
            }),
            ns: Some(Namespaces {
                pid: e.ns[0],
                mnt: e.ns[1],
                net: e.ns[2],
                uts: e.ns[3],
                ipc: e.ns[4],
                user: e.ns[5],
                cgroup: e.ns[6],
            }),
            cgroup_id: e.cgroup_id,
            tty: e.tty,
            tty_nr: e.tty_nr,
            partial: e.partial.iter().map(|s| (*s).to_owned()).collect(),
            source: "exec".into(),
        });
        let ancestors = self.ancestors(Some(parent));
        // A process that exits right after exec may already have its exit recorded.
        let existing = self.resolve(key);
        let exited_ns = existing.and_then(|k| self.entries.get(&k)).and_then(|e| e.exited_ns);
        if let Some(old) = existing.filter(|k| *k != key) {
            self.forget(old);
        }
        self.entries.insert(key, Entry { ancestor: OnceCell::new(), process: process.clone(), parent: Some(parent), coarse: false, exited_ns });
        self.index(key);
        self.enforce_capacity();
        (process, ancestors)
    }

    /// Records a new process; returns its record when the caller sends it as an event
    /// (`event`). A fork that is not sent is only noted: the child usually execs within the
    /// same drain pass, and copying the parent's record for it (a third of the cache's work
    /// under an exec storm) would be thrown away. [`Self::settle`] records what is left.
    pub fn fork(&mut self, f: &Fork, event: bool) -> Option<SharedProcess> {
        let key = Key { tgid: f.child_tgid, start_ns: f.child_start_ns };
        let parent = Key { tgid: f.parent_tgid, start_ns: f.parent_start_ns };
        // The child may have exec'd (or exited) before this record arrived: keep what it has.
        let known = self.resolve(key).is_some() || self.pending.contains_key(&key);
        if known && !event {
            return None;
        }
        if !event {
            if self.pending.len() >= PENDING_MAX {
                self.settle_all();
            }
            self.pending.insert(key, PendingFork { parent, cgroup_id: f.cgroup_id, comm: f.comm.clone() });
            *self.pending_parents.entry(parent).or_default() += 1;
            return None;
        }
        self.settle(key);
        self.settle(parent);
        let process = SharedProcess::from(self.child_record(key, parent, f.cgroup_id, &f.comm));
        if self.resolve(key).is_some() {
            return Some(process);
        }
        let sent = process.clone();
        self.insert_child(key, parent, process);
        Some(sent)
    }

    /// A forked child's record: its parent's image with the child's identity.
    fn child_record(&self, key: Key, parent: Key, cgroup_id: u64, comm: &str) -> Process {
        let mut process = match self.get(parent) {
            Some(p) => {
                let mut child = Process::clone(p);
                child.partial.retain(|s| s != "parent_unknown");
                child
            }
            None => Process { comm: comm.to_owned(), partial: vec!["parent_unknown".into()], ..Process::default() },
        };
        process.exec_id = exec_id(&self.node, key.tgid, key.start_ns, process.exec_boot_ns);
        process.parent_exec_id = self.parent_exec_id(parent);
        process.pid = key.tgid;
        process.tid = key.tgid;
        process.ppid = parent.tgid;
        process.start_boot_ns = key.start_ns;
        process.cgroup_id = cgroup_id;
        process.source = "fork".into();
        process
    }

    fn insert_child(&mut self, key: Key, parent: Key, process: SharedProcess) {
        self.entries.insert(key, Entry { ancestor: OnceCell::new(), process, parent: Some(parent), coarse: false, exited_ns: None });
        self.index(key);
        self.enforce_capacity();
    }

    /// Drops the pending fork of `key`, if any.
    fn unpend(&mut self, key: Key) -> Option<PendingFork> {
        let pending = self.pending.remove(&key)?;
        if let Some(n) = self.pending_parents.get_mut(&pending.parent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pending_parents.remove(&pending.parent);
            }
        }
        Some(pending)
    }

    /// Records `key` if its fork is pending, its pending ancestors first (their records are
    /// what it copies).
    fn settle(&mut self, key: Key) {
        if self.pending.is_empty() {
            return;
        }
        // The pending chain upwards, bounded by the number pending.
        let mut chain = Vec::new();
        let mut next = Some(key);
        while let Some(k) = next {
            if chain.len() > self.pending.len() {
                break;
            }
            match self.pending.get(&k) {
                Some(p) => {
                    chain.push(k);
                    next = Some(p.parent);
                }
                None => next = None,
            }
        }
        for k in chain.into_iter().rev() {
            if let Some(p) = self.unpend(k) {
                let process = self.child_record(k, p.parent, p.cgroup_id, &p.comm);
                self.insert_child(k, p.parent, process.into());
            }
        }
    }

    fn settle_children_of(&mut self, parent: Key) {
        let children: Vec<Key> = self.pending.iter().filter(|(_, p)| p.parent == parent).map(|(k, _)| *k).collect();
        for child in children {
            self.settle(child);
        }
    }

    /// Records every pending fork: before anything reads the cache from outside a record of
    /// the process lifecycle (sockets, the end of a drain pass).
    pub fn settle_all(&mut self) {
        let keys: Vec<Key> = self.pending.keys().copied().collect();
        for key in keys {
            self.settle(key);
        }
    }

    /// Marks the process exited (kept for the grace period); returns its record and status.
    pub fn exit(&mut self, x: &Exit) -> (SharedProcess, ExitStatus, u64) {
        let key = Key { tgid: x.tgid, start_ns: x.start_ns };
        self.settle(key);
        let status = ExitStatus::from_wait_status(x.exit_code);
        let duration = x.boot_ns.saturating_sub(x.start_ns);
        let process = match self.resolve(key) {
            Some(k) => {
                let entry = self.entries.get_mut(&k);
                match entry {
                    Some(entry) => {
                        entry.exited_ns = Some(x.boot_ns);
                        self.exited.push_back((x.boot_ns, k));
                        entry.process.clone()
                    }
                    None => SharedProcess::default(),
                }
            }
            None => {
                // Exit before any other record of this process (or the cache evicted it):
                // remember the exit so a late exec or fork does not resurrect it.
                let process = SharedProcess::from(Process {
                    exec_id: exec_id(&self.node, x.tgid, x.start_ns, 0),
                    pid: x.tgid,
                    tid: x.tid,
                    start_boot_ns: x.start_ns,
                    comm: x.comm.clone(),
                    cgroup_id: x.cgroup_id,
                    partial: vec!["unknown_process".into()],
                    source: "exit".into(),
                    ..Process::default()
                });
                self.entries.insert(key, Entry { ancestor: OnceCell::new(), process: process.clone(), parent: None, coarse: false, exited_ns: Some(x.boot_ns) });
                self.exited.push_back((x.boot_ns, key));
                process
            }
        };
        (with_tid(process, x.tid), status, duration)
    }

    /// Forgets processes that exited more than the grace period before `now_ns`.
    pub fn sweep(&mut self, now_ns: u64) {
        while let Some(&(at, key)) = self.exited.front() {
            if now_ns.saturating_sub(at) < self.config.grace_ns {
                break;
            }
            self.exited.pop_front();
            if self.entries.get(&key).is_some_and(|e| e.exited_ns == Some(at)) {
                self.forget(key);
            }
        }
    }

    /// Keeps the cache bounded: exited entries go first (oldest exit first), then, if the node
    /// really runs more processes than the capacity, the oldest-started live ones.
    fn enforce_capacity(&mut self) {
        while self.entries.len() > self.config.capacity {
            if let Some((at, key)) = self.exited.pop_front() {
                if self.entries.get(&key).is_some_and(|e| e.exited_ns == Some(at)) {
                    self.forget(key);
                    self.evicted_early += 1;
                }
                continue;
            }
            let oldest = self.entries.iter().min_by_key(|(k, _)| k.start_ns).map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    self.forget(k);
                    self.evicted_early += 1;
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: u64 = 10_000_000;

    fn cache() -> ProcessCache {
        ProcessCache::new("n1".into(), CacheConfig { capacity: 100, grace_ns: 1_000, ancestry_depth: 5, tick_ns: TICK })
    }

    fn exec(tgid: u32, start: u64, ptgid: u32, pstart: u64, at: u64, argv: &[&str]) -> Exec {
        Exec {
            boot_ns: at,
            pid: tgid,
            tgid,
            start_ns: start,
            parent_tgid: ptgid,
            parent_start_ns: pstart,
            exe: format!("/bin/{}", argv[0]),
            comm: argv[0].into(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            ..Exec::default()
        }
    }

    #[test]
    fn chain_has_exact_ancestry() {
        let mut c = cache();
        c.exec(exec(10, 100, 1, 5, 110, &["a", "1"]));
        c.exec(exec(11, 200, 10, 100, 210, &["b", "2"]));
        c.exec(exec(12, 300, 11, 200, 310, &["c", "3"]));
        let (p, anc) = c.exec(exec(13, 400, 12, 300, 410, &["d", "4"]));
        assert_eq!(p.exec_id, "n1:13:400:410");
        assert_eq!(p.parent_exec_id, "n1:12:300:310");
        let got: Vec<(u32, &str, Vec<String>)> = anc.iter().map(|a| (a.pid, a.exe.as_str(), a.argv.clone())).collect();
        assert_eq!(
            got,
            vec![
                (12, "/bin/c", vec!["c".to_owned(), "3".to_owned()]),
                (11, "/bin/b", vec!["b".to_owned(), "2".to_owned()]),
                (10, "/bin/a", vec!["a".to_owned(), "1".to_owned()]),
            ]
        );
    }

    #[test]
    fn depth_is_bounded() {
        let mut c = cache();
        for i in 1..20u32 {
            c.exec(exec(i + 1, u64::from(i + 1) * 10, i, u64::from(i) * 10, 1000 + u64::from(i), &["x"]));
        }
        let (_, anc) = c.exec(exec(100, 5000, 20, 200, 6000, &["y"]));
        assert_eq!(anc.len(), 5);
        assert_eq!(anc.iter().map(|a| a.pid).collect::<Vec<_>>(), vec![20, 19, 18, 17, 16]);
    }

    #[test]
    fn pid_reuse_keeps_processes_apart() {
        let mut c = cache();
        c.exec(exec(50, 1_000, 1, 5, 1_001, &["old"]));
        c.exit(&Exit { boot_ns: 1_500, tgid: 50, tid: 50, start_ns: 1_000, exit_code: 0, cgroup_id: 0, comm: "old".into() });
        // Same pid, started later within the same clock tick.
        c.exec(exec(50, 1_600, 1, 5, 1_601, &["new"]));
        let (child, anc) = c.exec(exec(60, 2_000, 50, 1_600, 2_001, &["child"]));
        assert_eq!(anc[0].argv, vec!["new"]);
        assert_eq!(child.parent_exec_id, "n1:50:1600:1601");
        let (_, anc) = c.exec(exec(61, 2_100, 50, 1_000, 2_101, &["late-child-of-old"]));
        assert_eq!(anc[0].argv, vec!["old"]);
    }

    #[test]
    fn exec_before_fork_is_not_overwritten() {
        let mut c = cache();
        c.exec(exec(10, 100, 1, 5, 110, &["parent"]));
        c.exec(exec(11, 200, 10, 100, 210, &["child-image"]));
        let fork = Fork { boot_ns: 205, child_tgid: 11, child_start_ns: 200, parent_tgid: 10, parent_start_ns: 100, cgroup_id: 0, comm: "parent".into() };
        assert!(c.fork(&fork, false).is_none(), "no record is made for a fork that is not sent");
        let forked = c.fork(&fork, true).unwrap();
        assert_eq!(forked.argv, vec!["parent"], "the fork event describes the inherited image");
        assert_eq!(forked.ppid, 10);
        assert_eq!(c.get(Key { tgid: 11, start_ns: 200 }).unwrap().argv, vec!["child-image"]);
    }

    #[test]
    fn a_fork_not_sent_still_records_the_child() {
        let mut c = cache();
        c.exec(exec(10, 100, 1, 5, 110, &["parent", "x"]));
        let fork = Fork { boot_ns: 150, child_tgid: 11, child_start_ns: 140, parent_tgid: 10, parent_start_ns: 100, cgroup_id: 3, comm: "parent".into() };
        assert!(c.fork(&fork, false).is_none());
        let (p, _, _) = c.exit(&Exit { boot_ns: 200, tgid: 11, tid: 11, start_ns: 140, exit_code: 0, cgroup_id: 3, comm: "parent".into() });
        assert_eq!(
            (p.pid, p.ppid, p.argv.clone(), p.source.as_str(), p.parent_exec_id.as_str(), p.cgroup_id),
            (11, 10, vec!["parent".to_owned(), "x".to_owned()], "fork", "n1:10:100:110", 3)
        );
    }

    #[test]
    fn exec_and_exit_events_share_one_record() {
        let mut c = cache();
        let (at_exec, _) = c.exec(exec(10, 100, 1, 5, 110, &["true"]));
        let (at_exit, _, _) = c.exit(&Exit { boot_ns: 200, tgid: 10, tid: 10, start_ns: 100, exit_code: 0, cgroup_id: 3, comm: "true".into() });
        assert!(std::ptr::eq(&*at_exec, &*at_exit), "the exit event refers to the exec's record, not a copy");

        // Another thread's exit gets its own copy with its tid; the exec's record is untouched.
        let (_, _) = c.exec(exec(20, 300, 1, 5, 310, &["worker"]));
        let (at_exit, _, _) = c.exit(&Exit { boot_ns: 400, tgid: 20, tid: 21, start_ns: 300, exit_code: 0, cgroup_id: 3, comm: "worker".into() });
        assert_eq!((at_exit.pid, at_exit.tid), (20, 21));
        assert_eq!(c.get(Key { tgid: 20, start_ns: 300 }).map(|p| p.tid), Some(20));
    }

    fn fork_of(child: u32, child_start: u64, parent: u32, parent_start: u64) -> Fork {
        Fork {
            boot_ns: child_start + 1,
            child_tgid: child,
            child_start_ns: child_start,
            parent_tgid: parent,
            parent_start_ns: parent_start,
            cgroup_id: 0,
            comm: "sh".into(),
        }
    }

    #[test]
    fn pending_forks_are_recorded_when_asked() {
        let mut c = cache();
        c.exec(exec(10, 100, 1, 5, 110, &["sh", "-c", "x"]));
        // A subshell that never execs forks a child that does: the exec's ancestry goes
        // through the pending subshell.
        assert!(c.fork(&fork_of(11, 200, 10, 100), false).is_none());
        assert!(c.fork(&fork_of(12, 300, 11, 200), false).is_none());
        assert!(c.get(Key { tgid: 11, start_ns: 200 }).is_none(), "a pending fork is not a record yet");
        let (p, anc) = c.exec(exec(12, 300, 11, 200, 310, &["true"]));
        assert_eq!(p.parent_exec_id, "n1:11:200:110", "the subshell keeps its parent's exec time");
        assert_eq!(
            anc.iter().map(|a| (a.pid, a.argv.join(" "))).collect::<Vec<_>>(),
            vec![(11, "sh -c x".to_owned()), (10, "sh -c x".to_owned())]
        );
        // A fork still pending at the end of a pass is recorded by settle.
        assert!(c.fork(&fork_of(13, 400, 10, 100), false).is_none());
        c.settle_all();
        let child = c.get(Key { tgid: 13, start_ns: 400 }).expect("recorded by settle");
        assert_eq!((child.ppid, child.argv.join(" "), child.source.as_str()), (10, "sh -c x".to_owned(), "fork"));
        assert!(c.pending.is_empty() && c.pending_parents.is_empty());
    }

    #[test]
    fn a_child_pending_when_its_parent_execs_keeps_the_old_image() {
        let mut c = cache();
        c.exec(exec(10, 100, 1, 5, 110, &["bash"]));
        assert!(c.fork(&fork_of(11, 200, 10, 100), false).is_none());
        // The parent replaces its image (`exec foo`) before the pass ends.
        c.exec(exec(10, 100, 1, 5, 250, &["foo"]));
        c.settle_all();
        let child = c.get(Key { tgid: 11, start_ns: 200 }).unwrap();
        assert_eq!((child.argv.join(" "), child.parent_exec_id.as_str()), ("bash".to_owned(), "n1:10:100:110"));
    }

    #[test]
    fn a_pending_fork_superseded_by_its_exec_is_never_built() {
        let mut c = cache();
        c.exec(exec(10, 100, 1, 5, 110, &["sh"]));
        assert!(c.fork(&fork_of(11, 200, 10, 100), false).is_none());
        let (p, _) = c.exec(exec(11, 200, 10, 100, 210, &["true"]));
        assert_eq!((p.argv.join(" "), p.source.as_str()), ("true".to_owned(), "exec"));
        assert!(c.pending.is_empty() && c.pending_parents.is_empty());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn seeded_entries_match_kernel_start_times() {
        let mut c = cache();
        // /proc says start 123 ticks; the kernel says 1_234_567_891 ns.
        c.seed(Key { tgid: 7, start_ns: 123 * TICK }, None, Process { pid: 7, exec_id: "n1:7:seeded".into(), ..Process::default() });
        let (p, anc) = c.exec(exec(8, 2_000_000_000, 7, 1_234_567_891, 2_000_000_001, &["x"]));
        assert_eq!(p.parent_exec_id, "n1:7:seeded");
        assert_eq!(anc[0].pid, 7);
    }

    #[test]
    fn live_process_by_tgid() {
        let mut c = cache();
        c.exec(exec(10, 100, 1, 5, 110, &["old"]));
        c.exit(&Exit { boot_ns: 150, tgid: 10, tid: 10, start_ns: 100, exit_code: 0, cgroup_id: 0, comm: "old".into() });
        assert!(c.live_by_tgid(10).is_none(), "an exited process is not live");
        c.exec(exec(10, 200, 1, 5, 210, &["new"]));
        assert_eq!(c.live_by_tgid(10).unwrap().argv, vec!["new"]);
    }

    #[test]
    fn exit_status_and_grace() {
        let mut c = cache();
        c.exec(exec(10, 100, 1, 5, 110, &["a"]));
        let (p, st, dur) =
            c.exit(&Exit { boot_ns: 600, tgid: 10, tid: 12, start_ns: 100, exit_code: 3 << 8, cgroup_id: 0, comm: "a".into() });
        assert_eq!((p.pid, p.tid, st, dur), (10, 12, ExitStatus { code: 3, signal: 0, core_dumped: false }, 500));
        assert_eq!(ExitStatus::from_wait_status(9), ExitStatus { code: 0, signal: 9, core_dumped: false });
        assert_eq!(ExitStatus::from_wait_status(0x80 | 11), ExitStatus { code: 0, signal: 11, core_dumped: true });
        c.sweep(1_000);
        assert!(c.get(Key { tgid: 10, start_ns: 100 }).is_some(), "kept during grace");
        c.sweep(1_601);
        assert!(c.get(Key { tgid: 10, start_ns: 100 }).is_none(), "evicted after grace");
    }

    #[test]
    fn capacity_is_enforced() {
        let mut c = ProcessCache::new("n".into(), CacheConfig { capacity: 10, grace_ns: u64::MAX, ancestry_depth: 5, tick_ns: TICK });
        for i in 0..50u32 {
            c.exec(exec(i + 2, u64::from(i) + 1, 1, 0, u64::from(i) + 1, &["p"]));
        }
        assert_eq!(c.len(), 10);
        assert_eq!(c.evicted_early, 40);
        assert!(c.by_tgid.len() <= 10, "the tgid index follows evictions");
    }
}
