//! Connections: joins a connect's attempt record to its outcome record, attributes every
//! record to its process through the process cache, and classifies the remote address.
//!
//! The kernel sends an attempt at SYN_SENT and the outcome when the handshake ends. One event
//! leaves per attempt: with the outcome when it comes within `outcome_wait`, otherwise as
//! `in_progress` (a SYN timeout takes minutes; an alert must not wait), followed by an
//! `update` event once the outcome is known.

pub mod classify;

use std::{collections::HashMap, net::IpAddr};

use classify::Cidr;
use peregrine_proto::{Connection, Kind};

use crate::{
    decode::{Conn, ConnKind, ConnOutcome, SockOp},
    process::Tracker,
};

pub struct NetConfig {
    pub outcome_wait_ns: u64,
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
}

/// Bound on connects awaiting an outcome; beyond it the oldest are reported at once.
const MAX_PENDING: usize = 65536;

pub fn outcome_name(o: ConnOutcome) -> &'static str {
    match o {
        ConnOutcome::Established => "established",
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
        Self { config, pending: HashMap::new() }
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
        })
    }

    /// Applies one record; returns the events to send now.
    pub fn apply(&mut self, c: Conn, processes: &Tracker) -> Vec<Kind> {
        match (c.kind, c.outcome) {
            (ConnKind::Connect, None) => {
                let mut out = Vec::new();
                if self.pending.len() >= MAX_PENDING {
                    out.extend(self.expire(u64::MAX, processes));
                }
                self.pending.insert(c.sock, Pending { attempt: c, reported: false });
                out
            }
            (ConnKind::Connect, Some(result)) => match self.pending.remove(&c.sock) {
                // The attempt's tuple lacks the source port (bound later); the outcome's
                // attribution comes from the kernel's map, the same owner as the attempt's.
                Some(p) if !p.reported => vec![self.event(&Conn { owner: c.owner.clone().or(p.attempt.owner), ..c }, Some(result), false, processes)],
                Some(p) => vec![self.event(&Conn { owner: c.owner.clone().or(p.attempt.owner), ..c }, Some(result), true, processes)],
                None => vec![self.event(&c, Some(result), false, processes)],
            },
            _ => vec![self.event(&c, None, false, processes)],
        }
    }

    /// Reports connects older than the wait as in_progress (once), and forgets reported ones
    /// that never got an outcome after a long time.
    pub fn expire(&mut self, now_ns: u64, processes: &Tracker) -> Vec<Kind> {
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
}
