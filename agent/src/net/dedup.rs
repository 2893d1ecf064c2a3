//! TCP dedup windows, the agent's half. The kernel sends the first connect or accept of a flow
//! (process, cgroup, peer, port, direction) in each window of `network.tcp_dedup_ms` and only
//! counts the others, in its `TCP_SEEN` map. Here each window a record opened is remembered;
//! once it has expired (plus a grace for the outcomes of its last connects) the agent reads
//! the kernel's counts, removes the entry and reports them as one summary event.
//!
//! The kernel may close a window itself first: a connect after the window expired, before the
//! agent read it, opens the next window and carries the old counts in its record. Both paths
//! name the window by its start, so a window is summarised once whichever comes first.

use std::collections::{HashMap, VecDeque};

use peregrine_common::{ConnWindow, FlowKey};

use crate::decode::Conn;

/// The kernel's window map, as the agent reads it.
pub trait WindowMap {
    fn read(&self, key: &FlowKey) -> Result<Option<ConnWindow>, String>;
    fn remove(&mut self, key: &FlowKey);
}

/// A window whose counts are ready to be reported, with the record that opened it (which
/// names the process and the peer).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub opener: Conn,
    pub counts: ConnWindow,
}

/// What the kernel map holds of a window the agent is reading.
enum Read {
    /// The window, now removed from the map.
    Taken(ConnWindow),
    /// The kernel opened the flow's next window: that window's first record carries the counts.
    Replaced,
    /// Evicted from the map: its counts are lost.
    Gone,
}

/// Reads the window `start` of `key` and, if it is still in the map, removes it.
fn take(map: &mut dyn WindowMap, key: &FlowKey, start: u64) -> Result<Read, String> {
    Ok(match map.read(key)? {
        Some(k) if k.start_ns == start => {
            map.remove(key);
            Read::Taken(k)
        }
        Some(_) => Read::Replaced,
        None => Read::Gone,
    })
}

struct Open {
    start_ns: u64,
    opener: Conn,
    /// Read from the kernel (or carried) already: later news of this window is stale.
    done: bool,
}

/// Windows the agent knows of, one per flow (a flow's next window replaces its last).
pub struct Windows {
    window_ns: u64,
    grace_ns: u64,
    open: HashMap<FlowKey, Open>,
    /// Windows in the order they opened, to find the oldest without a scan; entries whose
    /// window was replaced or forgotten are skipped when they reach the front.
    order: VecDeque<(FlowKey, u64)>,
    /// Windows the kernel's LRU map evicted before the agent could read them (map pressure):
    /// whatever they absorbed is lost, and reported as such.
    lost: u64,
    read_failures: u64,
    /// Bound on windows tracked: the kernel map's size (`network.flow_map_entries`); beyond
    /// it the oldest is read early, before the kernel's LRU would evict it.
    max_open: usize,
}

/// The kernel map's default size.
const MAX_OPEN: usize = 65536;
/// How long a read window is kept to recognise the kernel carrying it anyway.
const KEEP_DONE_NS: u64 = 10_000_000_000;
/// An unread window whose entry the kernel replaced waits this long for the record carrying
/// its counts (which the ring may have lost) before it is given up as lost.
const WAIT_CARRIED_NS: u64 = 60_000_000_000;

impl Windows {
    pub fn new(window_ns: u64, grace_ns: u64) -> Self {
        Self { window_ns, grace_ns, open: HashMap::new(), order: VecDeque::new(), lost: 0, read_failures: 0, max_open: MAX_OPEN }
    }

    /// Tracks at most `max_open` windows (at least 1).
    pub fn bounded(self, max_open: usize) -> Self {
        Self { max_open: max_open.max(1), ..self }
    }

    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// A connect attempt or accept arrived: if it opened a window, remember it, and report the
    /// previous window's counts when the kernel carried them.
    pub fn opened(&mut self, c: &Conn, map: &mut dyn WindowMap, out: &mut Vec<Summary>) {
        let Some(w) = c.window else { return };
        if let Some(counts) = c.carried {
            match self.open.get(&w.key) {
                Some(prev) if prev.start_ns == counts.start_ns => {
                    if !prev.done {
                        out.push(Summary { opener: prev.opener.clone(), counts });
                    }
                }
                // A window from before the agent started, or one it had to forget: the new
                // record names the same flow.
                _ => out.push(Summary { opener: c.clone(), counts }),
            }
        }
        if self.open.len() >= self.max_open && !self.open.contains_key(&w.key) {
            self.read_oldest(map, out);
        }
        self.open.insert(w.key, Open { start_ns: w.start_ns, opener: c.clone(), done: false });
        self.order.push_back((w.key, w.start_ns));
        if self.order.len() > 2 * self.max_open {
            // Replaced windows leave stale entries behind the front: compact, amortised over
            // max_open openings.
            let open = &self.open;
            self.order.retain(|(k, start)| open.get(k).is_some_and(|w| w.start_ns == *start));
        }
    }

    /// Reads the windows that have expired; returns their summaries (windows that absorbed
    /// nothing have none).
    pub fn expire(&mut self, now_ns: u64, map: &mut dyn WindowMap) -> Vec<Summary> {
        let due_after = self.window_ns.saturating_add(self.grace_ns);
        let mut out = Vec::new();
        let mut lost = 0;
        let mut failures = 0;
        self.open.retain(|key, w| {
            let age = now_ns.saturating_sub(w.start_ns);
            if w.done {
                return age < due_after.saturating_add(KEEP_DONE_NS);
            }
            if age < due_after {
                return true;
            }
            match take(map, key, w.start_ns) {
                Ok(Read::Taken(k)) => {
                    if k.absorbed > 0 {
                        out.push(Summary { opener: w.opener.clone(), counts: k });
                    }
                    w.done = true;
                    true
                }
                Ok(Read::Replaced) if age < due_after.saturating_add(WAIT_CARRIED_NS) => true,
                Ok(Read::Replaced | Read::Gone) => {
                    lost += 1;
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading a TCP dedup window failed");
                    failures += 1;
                    false
                }
            }
        });
        self.lost += lost;
        self.read_failures += failures;
        self.trim_order();
        out
    }

    /// Drops the front entries of `order` that no longer name a tracked window.
    fn trim_order(&mut self) {
        while let Some((key, start)) = self.order.front() {
            if self.open.get(key).is_some_and(|w| w.start_ns == *start) {
                break;
            }
            self.order.pop_front();
        }
    }

    /// Reads the oldest window now, its summary early rather than lost: the agent tracks no
    /// more windows than the kernel map holds.
    fn read_oldest(&mut self, map: &mut dyn WindowMap, out: &mut Vec<Summary>) {
        self.trim_order();
        let Some((key, start)) = self.order.pop_front() else { return };
        let Some(w) = self.open.remove(&key) else { return };
        if w.done {
            return;
        }
        match take(map, &key, start) {
            Ok(Read::Taken(k)) => {
                if k.absorbed > 0 {
                    out.push(Summary { opener: w.opener, counts: k });
                }
            }
            // Forgotten here, the window is summarised from its carrying record (with that
            // record's flow as opener, see `opened`).
            Ok(Read::Replaced) => {}
            Ok(Read::Gone) => self.lost += 1,
            Err(e) => {
                tracing::warn!(error = %e, "reading a TCP dedup window failed");
                self.read_failures += 1;
            }
        }
    }

    /// Windows lost before they could be read (see `lost`), since start.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    pub fn read_failures(&self) -> u64 {
        self.read_failures
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::decode::{ConnKind, OpenedWindow, Owner};

    #[derive(Default)]
    struct Kernel(HashMap<FlowKey, ConnWindow>);

    impl WindowMap for Kernel {
        fn read(&self, key: &FlowKey) -> Result<Option<ConnWindow>, String> {
            Ok(self.0.get(key).copied())
        }
        fn remove(&mut self, key: &FlowKey) {
            self.0.remove(key);
        }
    }

    const SEC: u64 = 1_000_000_000;

    fn opened(w: &mut Windows, c: &Conn, kernel: &mut Kernel) -> Vec<Summary> {
        let mut out = Vec::new();
        w.opened(c, kernel, &mut out);
        out
    }

    fn key(port: u16) -> FlowKey {
        FlowKey { cgroup_id: 7, tgid: 42, family: 2 | peregrine_common::flow_dir::TCP_OUT, dport: port, daddr: [203, 0, 113, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] }
    }

    fn opener(port: u16, start_ns: u64, carried: Option<ConnWindow>) -> Conn {
        Conn {
            boot_ns: start_ns,
            kind: ConnKind::Connect,
            outcome: None,
            owner: Some(Owner { tgid: 42, pid: 42, start_ns: 1, cgroup_id: 7, comm: "curl".into() }),
            sock: start_ns,
            protocol: 6,
            op: None,
            local: (IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 0),
            remote: (IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)), port),
            window: Some(OpenedWindow { start_ns, key: key(port) }),
            carried,
        }
    }

    /// MAX_OPEN windows of distinct flows, opened one ns apart from 100 s; the first is port 0's.
    fn fill_to_bound(w: &mut Windows, kernel: &mut Kernel, out: &mut Vec<Summary>) {
        for i in 0..MAX_OPEN as u64 {
            let port = (i % 60000) as u16;
            let mut k = key(port);
            k.tgid = (i / 60000) as u32 + 42;
            let c = Conn { window: Some(OpenedWindow { start_ns: 100 * SEC + i, key: k }), ..opener(port, 100 * SEC + i, None) };
            w.opened(&c, kernel, out);
        }
    }

    fn counts(start_ns: u64, absorbed: u64) -> ConnWindow {
        ConnWindow { start_ns, absorbed, established: absorbed, failed: 0 }
    }

    #[test]
    fn an_expired_window_is_read_once_and_removed_from_the_kernel() {
        let mut kernel = Kernel::default();
        let mut w = Windows::new(10 * SEC, SEC);
        kernel.0.insert(key(80), counts(100 * SEC, 0));
        opened(&mut w, &opener(80, 100 * SEC, None), &mut kernel);
        kernel.0.insert(key(80), counts(100 * SEC, 4));
        assert!(w.expire(110 * SEC, &mut kernel).is_empty(), "not due before window + grace");
        let s = w.expire(111 * SEC, &mut kernel);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].counts.absorbed, s[0].opener.remote.1), (4, 80));
        assert!(kernel.0.is_empty(), "the window is removed from the kernel map");
        assert!(w.expire(112 * SEC, &mut kernel).is_empty(), "reported once");
        assert_eq!(w.lost(), 0);
    }

    #[test]
    fn a_window_the_kernel_closed_itself_is_reported_from_the_carrying_record_once() {
        let mut kernel = Kernel::default();
        let mut w = Windows::new(10 * SEC, SEC);
        assert!(opened(&mut w, &opener(80, 100 * SEC, None), &mut kernel).is_empty());
        // The kernel reopened at 110.5 s, before the agent read the window.
        kernel.0.insert(key(80), counts(110 * SEC + SEC / 2, 0));
        assert!(w.expire(111 * SEC, &mut kernel).is_empty(), "the replaced window waits for its carrier");
        let s = opened(&mut w, &opener(80, 110 * SEC + SEC / 2, Some(counts(100 * SEC, 3))), &mut kernel);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].counts.absorbed, s[0].opener.boot_ns), (3, 100 * SEC), "summary names the window's own opener");
        assert_eq!(w.lost(), 0);
    }

    #[test]
    fn a_window_read_by_the_agent_and_also_carried_is_reported_once() {
        let mut kernel = Kernel::default();
        let mut w = Windows::new(10 * SEC, SEC);
        opened(&mut w, &opener(80, 100 * SEC, None), &mut kernel);
        kernel.0.insert(key(80), counts(100 * SEC, 2));
        assert_eq!(w.expire(111 * SEC, &mut kernel).len(), 1);
        // The kernel replaced the entry between the agent's read and removal, carrying it.
        let carried = opened(&mut w, &opener(80, 111 * SEC, Some(counts(100 * SEC, 2))), &mut kernel);
        assert!(carried.is_empty(), "already reported");
    }

    #[test]
    fn a_window_from_before_the_agent_is_reported_with_the_new_record_as_opener() {
        let mut kernel = Kernel::default();
        let mut w = Windows::new(10 * SEC, SEC);
        let s = opened(&mut w, &opener(443, 50 * SEC, Some(counts(30 * SEC, 9))), &mut kernel);
        assert_eq!((s[0].counts.absorbed, s[0].opener.remote.1), (9, 443));
    }

    #[test]
    fn an_evicted_window_is_counted_lost() {
        let mut kernel = Kernel::default();
        let mut w = Windows::new(10 * SEC, SEC);
        opened(&mut w, &opener(80, 100 * SEC, None), &mut kernel);
        assert!(w.expire(120 * SEC, &mut kernel).is_empty());
        assert_eq!((w.lost(), w.len()), (1, 0));
    }

    #[test]
    fn beyond_the_bound_the_oldest_window_is_read_early_not_lost() {
        let mut kernel = Kernel::default();
        let mut w = Windows::new(10 * SEC, SEC);
        let mut out = Vec::new();
        fill_to_bound(&mut w, &mut kernel, &mut out);
        // The first window absorbed 3 connects; the bound is reached with one more flow.
        kernel.0.insert(key(0), counts(100 * SEC, 3));
        w.opened(&opener(61000, 200 * SEC, None), &mut kernel, &mut out);
        assert_eq!(out.len(), 1, "the oldest window read early");
        assert_eq!((out[0].counts.absorbed, out[0].opener.remote.1), (3, 0));
        assert_eq!((w.len(), w.lost()), (MAX_OPEN, 0));
    }

    #[test]
    fn the_bound_follows_the_kernel_map_size() {
        let mut kernel = Kernel::default();
        let mut w = Windows::new(10 * SEC, SEC).bounded(4);
        let mut out = Vec::new();
        for port in 0..4u16 {
            w.opened(&opener(port, 100 * SEC + u64::from(port), None), &mut kernel, &mut out);
        }
        kernel.0.insert(key(0), counts(100 * SEC, 2));
        assert!(out.is_empty());
        w.opened(&opener(4, 101 * SEC, None), &mut kernel, &mut out);
        assert_eq!(out.len(), 1, "the fifth flow reads the oldest window early");
        assert_eq!((out[0].counts.absorbed, out[0].opener.remote.1, w.len(), w.lost()), (2, 0, 4, 0));
    }

    #[test]
    fn an_oldest_window_the_kernel_replaced_is_left_to_its_carrier_not_counted_lost() {
        let mut kernel = Kernel::default();
        let mut w = Windows::new(10 * SEC, SEC);
        let mut out = Vec::new();
        fill_to_bound(&mut w, &mut kernel, &mut out);
        // The kernel already opened the oldest flow's next window.
        kernel.0.insert(key(0), counts(111 * SEC, 0));
        w.opened(&opener(61000, 200 * SEC, None), &mut kernel, &mut out);
        assert!(out.is_empty());
        assert_eq!(w.lost(), 0, "the next window's record carries the counts");
        assert!(kernel.0.contains_key(&key(0)), "the kernel's newer window is left alone");
    }

    #[test]
    fn records_without_a_window_change_nothing() {
        let mut kernel = Kernel::default();
        let mut w = Windows::new(10 * SEC, SEC);
        let c = Conn { window: None, ..opener(80, SEC, None) };
        assert!(opened(&mut w, &c, &mut kernel).is_empty());
        assert_eq!(w.len(), 0);
    }
}
