//! Connections: joins a connect's attempt record to its outcome record, attributes every
//! record to its process through the process cache, and classifies the remote address.
//!
//! The kernel sends an attempt at SYN_SENT and the outcome when the handshake ends. One event
//! leaves per attempt: with the outcome when it comes within `outcome_wait`, otherwise as
//! `in_progress` (a SYN timeout takes minutes; an alert must not wait), followed by an
//! `update` event once the outcome is known. A connect reported established that the peer
//! later resets is reported again, as an `update` with the outcome `reset`.
//!
//! With TCP dedup on, only a flow's first connect or accept per window comes from the kernel;
//! the others come later as one summary event per window (`dedup.rs`).

pub mod classify;
pub mod dedup;

use std::{collections::HashMap, net::IpAddr};

use classify::Cidr;
use peregrine_proto::{Connection, Kind};

use crate::{
    clock::BootClock,
    decode::{Conn, ConnKind, ConnOutcome, SockOp},
    process::Tracker,
};
use dedup::{Summary, WindowMap, Windows};

pub struct NetConfig {
    pub outcome_wait_ns: u64,
    /// The kernel's TCP dedup window (`network.tcp_dedup_ms`); 0: off.
    pub tcp_dedup_ns: u64,
    /// Size of the kernel's flow maps: the agent tracks no more dedup windows than they hold.
    pub flow_map_entries: usize,
    pub pod_cidrs: Vec<Cidr>,
    pub service_cidrs: Vec<Cidr>,
}

struct Pending {
    attempt: Conn,
    reported: bool,
}

pub struct ConnTracker {
    config: NetConfig,
    /// Connects awaiting their outcome, by socket address.
    pending: HashMap<u64, Pending>,
    windows: Windows,
}

/// Bound on connects awaiting an outcome; beyond it the oldest are reported at once.
const MAX_PENDING: usize = 65536;

pub fn outcome_name(o: ConnOutcome) -> &'static str {
    match o {
        ConnOutcome::Established => "established",
        ConnOutcome::Reset => "reset",
        ConnOutcome::Failed(111) => "refused",
        ConnOutcome::Failed(110) => "timed_out",
        ConnOutcome::Failed(104) => "reset",
        ConnOutcome::Failed(101 | 113) => "unreachable",
        ConnOutcome::Failed(0) => "aborted",
        ConnOutcome::Failed(_) => "error",
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "ipv4" } else { "ipv6" }
}

impl ConnTracker {
    pub fn new(config: NetConfig) -> Self {
        // The outcomes of a window's last connects are counted when they come: read a window
        // an outcome wait after it ends.
        let windows = Windows::new(config.tcp_dedup_ns, config.outcome_wait_ns).bounded(config.flow_map_entries);
        Self { config, pending: HashMap::new(), windows }
    }

    fn event(&self, c: &Conn, outcome: Option<ConnOutcome>, update: bool, processes: &Tracker) -> Kind {
        let (evt_type, direction) = match (c.kind, c.op) {
            (ConnKind::Accept, _) => ("accept", "inbound"),
            (ConnKind::Listen, _) => ("listen", "listen"),
            // Falco names a datagram send `sendto`.
            (ConnKind::Udp | ConnKind::Denied, Some(SockOp::Send)) => ("sendto", "outbound"),
            (ConnKind::Udp, Some(SockOp::Receive)) => ("recvfrom", "inbound"),
            _ => ("connect", "outbound"),
        };
        let process = c.owner.as_ref().map(|o| processes.process_of(o.tgid, o.start_ns, o.pid, &o.comm, o.cgroup_id));
        let outcome_text = match (c.kind, outcome) {
            (ConnKind::Connect, Some(o)) => outcome_name(o),
            (ConnKind::Connect, None) => "in_progress",
            (ConnKind::Denied, _) => "denied",
            _ => "",
        };
        Kind::Connection(Connection {
            evt_type: evt_type.into(),
            direction: direction.into(),
            protocol: if c.protocol == 17 { "udp" } else { "tcp" }.into(),
            family: family(c.remote.0).into(),
            local_ip: c.local.0.to_string(),
            local_port: u32::from(c.local.1),
            remote_ip: c.remote.0.to_string(),
            remote_port: u32::from(c.remote.1),
            outcome: outcome_text.into(),
            error: match (c.kind, outcome) {
                (_, Some(ConnOutcome::Failed(e))) => e,
                (_, Some(ConnOutcome::Reset)) => 104, // ECONNRESET
                // What the caller's connect()/sendmsg() returned.
                (ConnKind::Denied, _) => 1, // EPERM
                _ => 0,
            },
            remote_class: if c.kind == ConnKind::Listen {
                String::new()
            } else {
                classify::classify(c.remote.0, &self.config.pod_cidrs, &self.config.service_cidrs).into()
            },
            domain: String::new(),
            count: 1,
            owner_unknown: c.owner.is_none(),
            process,
            update,
            ..Default::default()
        })
    }

    /// A window's summary: the opener's flow, how many more connects or accepts it had.
    fn summary(&self, s: &Summary, clock: BootClock, processes: &Tracker) -> Kind {
        let mut kind = self.event(&s.opener, None, false, processes);
        if let Kind::Connection(c) = &mut kind {
            c.summary = true;
            c.count = s.counts.absorbed;
            c.established_count = s.counts.established;
            c.failed_count = s.counts.failed;
            c.local_port = 0;
            c.outcome = String::new();
            c.window_start_unix_nano = u64::try_from(clock.to_unix_nanos(s.counts.start_ns)).unwrap_or(0);
            c.window_ms = self.windows.window_ns() / 1_000_000;
        }
        kind
    }

    /// Applies one record; returns the events to send now.
    pub fn apply(&mut self, c: Conn, processes: &Tracker, clock: BootClock, map: &mut dyn WindowMap) -> Vec<Kind> {
        let mut summaries = Vec::new();
        self.windows.opened(&c, map, &mut summaries);
        let mut out: Vec<Kind> = summaries.iter().map(|s| self.summary(s, clock, processes)).collect();
        match (c.kind, c.outcome) {
            (ConnKind::Connect, None) => {
                if self.pending.len() >= MAX_PENDING {
                    out.extend(self.expire_pending(u64::MAX, processes));
                }
                self.pending.insert(c.sock, Pending { attempt: c, reported: false });
            }
            // The end of a connect reported established: an update of that event.
            (ConnKind::Connect, Some(ConnOutcome::Reset)) => out.push(self.event(&c, Some(ConnOutcome::Reset), true, processes)),
            (ConnKind::Connect, Some(result)) => {
                let attempt = match self.pending.remove(&c.sock) {
                    // A freed socket's address is reused: a pending attempt is this outcome's
                    // only if it went to the same peer, before. Another one lost its outcome
                    // (a full ring); it is reported unconcluded, never given this one's owner.
                    Some(p) if p.attempt.remote != c.remote || p.attempt.boot_ns > c.boot_ns => {
                        if !p.reported {
                            out.push(self.event(&p.attempt, None, false, processes));
                        }
                        None
                    }
                    attempt => attempt,
                };
                out.push(match attempt {
                    // The attempt's tuple lacks the source port (bound later); the outcome's
                    // attribution comes from the kernel's map, the same owner as the attempt's.
                    Some(p) => {
                        self.event(&Conn { owner: c.owner.clone().or(p.attempt.owner), ..c }, Some(result), p.reported, processes)
                    }
                    None => self.event(&c, Some(result), false, processes),
                });
            }
            _ => out.push(self.event(&c, None, false, processes)),
        }
        out
    }

    /// Reports connects older than the outcome wait as in_progress (once), and the summaries
    /// of dedup windows that have ended.
    pub fn expire(&mut self, now_ns: u64, processes: &Tracker, clock: BootClock, map: &mut dyn WindowMap) -> Vec<Kind> {
        let mut out = self.expire_pending(now_ns, processes);
        for s in self.windows.expire(now_ns, map) {
            out.push(self.summary(&s, clock, processes));
        }
        out
    }

    /// Reports connects older than the wait as in_progress (once), and forgets reported ones
    /// that never got an outcome after a long time.
    fn expire_pending(&mut self, now_ns: u64, processes: &Tracker) -> Vec<Kind> {
        let wait = self.config.outcome_wait_ns;
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| !p.reported && now_ns.saturating_sub(p.attempt.boot_ns) >= wait)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for sock in due {
            if let Some(p) = self.pending.get_mut(&sock) {
                p.reported = true;
            }
            if let Some(p) = self.pending.get(&sock) {
                out.push(self.event(&p.attempt, None, false, processes));
            }
        }
        // A SYN timeout ends within ~2 minutes by default; keep reported ones 10 minutes.
        self.pending.retain(|_, p| !p.reported || now_ns.saturating_sub(p.attempt.boot_ns) < 600_000_000_000);
        out
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Dedup windows open or recently read.
    pub fn windows(&self) -> usize {
        self.windows.len()
    }

    /// Dedup windows lost before they were read (kernel map pressure), and failed reads.
    pub fn windows_lost(&self) -> u64 {
        self.windows.lost() + self.windows.read_failures()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use peregrine_proto::Kind;

    use peregrine_common::{ConnWindow, FlowKey};

    use super::*;
    use crate::{decode::Owner, process::CacheConfig};

    struct NoWindows;

    impl WindowMap for NoWindows {
        fn read(&self, _: &FlowKey) -> Result<Option<ConnWindow>, String> {
            Ok(None)
        }
        fn remove(&mut self, _: &FlowKey) {}
    }

    fn conn(boot_ns: u64, outcome: Option<ConnOutcome>, owner: Option<u32>, remote: [u8; 4]) -> Conn {
        Conn {
            boot_ns,
            kind: ConnKind::Connect,
            outcome,
            owner: owner.map(|tgid| Owner { tgid, pid: tgid, start_ns: 1, cgroup_id: 1, comm: format!("p{tgid}") }),
            sock: 0xffff_8880_1234_5600,
            protocol: 6,
            op: None,
            local: (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), if outcome.is_some() { 40000 } else { 0 }),
            remote: (IpAddr::V4(Ipv4Addr::from(remote)), 443),
            window: None,
            carried: None,
        }
    }

    fn pid_of(k: &Kind) -> Option<u32> {
        match k {
            Kind::Connection(c) => c.process.as_ref().map(|p| p.pid),
            _ => None,
        }
    }

    /// An outcome the kernel could not attribute joins the pending attempt of its socket only
    /// when that attempt went to the same peer: a reused socket address with a stale attempt
    /// (its own outcome lost) must not lend that attempt's process to another connection.
    #[test]
    fn an_ownerless_outcome_takes_the_owner_only_of_its_own_attempt() {
        let config = NetConfig {
            outcome_wait_ns: 1_000_000_000,
            tcp_dedup_ns: 0,
            flow_map_entries: 1024,
            pod_cidrs: vec![],
            service_cidrs: vec![],
        };
        let mut net = ConnTracker::new(config);
        let processes =
            Tracker::new("n".into(), CacheConfig { capacity: 64, grace_ns: 1, ancestry_depth: 1, tick_ns: 10_000_000 });
        let clock = BootClock::sample();
        // Process 100's attempt to 198.18.0.2; its outcome was lost.
        assert!(net.apply(conn(10, None, Some(100), [198, 18, 0, 2]), &processes, clock, &mut NoWindows).is_empty());
        // The same socket address, now another connection to 198.18.0.3, ownerless outcome.
        let out = net.apply(conn(20, Some(ConnOutcome::Established), None, [198, 18, 0, 3]), &processes, clock, &mut NoWindows);
        assert_eq!(out.len(), 2, "{out:?}");
        let (stale, this) = (&out[0], &out[1]);
        assert_eq!(pid_of(stale), Some(100), "the stale attempt is reported as its own");
        assert!(matches!(stale, Kind::Connection(c) if c.outcome == "in_progress" && c.remote_ip == "198.18.0.2"));
        assert_eq!(pid_of(this), None, "never process 100's");
        assert!(matches!(this, Kind::Connection(c) if c.owner_unknown && c.remote_ip == "198.18.0.3"));
        // Its own attempt: the owner is joined.
        assert!(net.apply(conn(30, None, Some(200), [198, 18, 0, 4]), &processes, clock, &mut NoWindows).is_empty());
        let out = net.apply(conn(40, Some(ConnOutcome::Established), None, [198, 18, 0, 4]), &processes, clock, &mut NoWindows);
        assert_eq!(out.iter().map(pid_of).collect::<Vec<_>>(), [Some(200)]);
        assert_eq!(net.pending(), 0);
    }
}
