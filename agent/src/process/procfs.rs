//! Seeds the process cache from /proc at start-up, so processes older than the agent have
//! parents, ancestry and exec ids. Entries that vanish mid-read are skipped or kept partial;
//! nothing read here can fail the agent.
//!
//! /proc gives the start time in clock ticks since boot (the kernel's `start_boottime` divided
//! down); entries are keyed at that precision and matched to kernel records by the cache.

use std::collections::HashMap;

use peregrine_proto::{Credentials, Namespaces, Process};

use super::cache::{Key, ProcessCache, exec_id};

/// Nanoseconds per clock tick of /proc/<pid>/stat's starttime.
pub fn tick_ns() -> u64 {
    let hz = procfs::ticks_per_second();
    1_000_000_000u64.checked_div(hz).unwrap_or(10_000_000)
}

/// The inode of `/proc/<pid>/ns/<name>` (0 when unreadable).
pub fn ns_inode(pid: i32, name: &str) -> u32 {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}"))
        .ok()
        .and_then(|l| {
            let s = l.to_string_lossy().into_owned();
            s.split_once(":[").and_then(|(_, rest)| rest.trim_end_matches(']').parse().ok())
        })
        .unwrap_or(0)
}

fn read_u32(pid: i32, file: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?.trim().parse().ok()
}

/// Reads every process in /proc into the cache; returns how many were seeded.
pub fn seed(cache: &mut ProcessCache, node: &str) -> usize {
    let tick = tick_ns();
    let Ok(all) = procfs::process::all_processes() else {
        tracing::warn!("cannot list /proc: processes older than the agent will lack ancestry");
        return 0;
    };
    struct Seen {
        key: Key,
        ppid: u32,
        process: Process,
    }
    let mut seen = Vec::new();
    for proc in all.flatten() {
        // A process may exit between listing and reading: skip what is gone.
        let Ok(stat) = proc.stat() else { continue };
        let pid = stat.pid;
        let Ok(tgid) = u32::try_from(pid) else { continue };
        let start_ns = stat.starttime.saturating_mul(tick);
        let mut partial = Vec::new();
        let argv = proc.cmdline().unwrap_or_else(|_| {
            partial.push("argv_unreadable".to_owned());
            Vec::new()
        });
        let exe = proc.exe().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let cwd = proc.cwd().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let status = proc.status().ok();
        let creds = status.as_ref().map(|s| Credentials {
            uid: s.ruid,
            gid: s.rgid,
            euid: s.euid,
            egid: s.egid,
            loginuid: read_u32(pid, "loginuid").filter(|v| *v != u32::MAX),
            sessionid: read_u32(pid, "sessionid").filter(|v| *v != u32::MAX),
            cap_effective: s.capeff,
            cap_permitted: s.capprm,
        });
        let ns = Namespaces {
            pid: ns_inode(pid, "pid"),
            mnt: ns_inode(pid, "mnt"),
            net: ns_inode(pid, "net"),
            uts: ns_inode(pid, "uts"),
            ipc: ns_inode(pid, "ipc"),
            user: ns_inode(pid, "user"),
            cgroup: ns_inode(pid, "cgroup"),
        };
        let process = Process {
            exec_id: exec_id(node, tgid, start_ns, 0),
            pid: tgid,
            tid: tgid,
            ppid: u32::try_from(stat.ppid).unwrap_or(0),
            start_boot_ns: start_ns,
            comm: stat.comm.clone(),
            exe,
            argv,
            cwd,
            creds,
            ns: Some(ns),
            tty_nr: u32::try_from(stat.tty_nr).unwrap_or(0),
            partial,
            source: "procfs".into(),
            ..Process::default()
        };
        seen.push(Seen { key: Key { tgid, start_ns }, ppid: process.ppid, process });
    }
    let starts: HashMap<u32, u64> = seen.iter().map(|s| (s.key.tgid, s.key.start_ns)).collect();
    let count = seen.len();
    for mut s in seen {
        let parent = starts.get(&s.ppid).map(|&start_ns| Key { tgid: s.ppid, start_ns });
        if let Some(p) = parent {
            s.process.parent_exec_id = exec_id(node, p.tgid, p.start_ns, 0);
        }
        cache.seed(s.key, parent, s.process);
    }
    count
}
