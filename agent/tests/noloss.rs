//! Delivery that loses nothing: the whole path (kernel → agent spool → collector queue → file)
//! while the collector and the agent are killed and restarted, and the output's destination
//! refuses writes for a while, under a stream of real exec/fork/exit events. Alone in its
//! binary: the storm would swamp tests running beside it.
// Test code: a failed step should stop the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Agent, Collector, TempDir, free_port, http_get, tool, wait_for};

const WAIT: Duration = Duration::from_secs(60);
/// Forks as events too: three events per iteration of the storm.
const FORKS: &str = "process.fork_events=true";

fn seq_of(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap()
}

/// The output's destination: a small tmpfs of its own. Filled to the last byte it refuses
/// every write (ENOSPC, as a full volume does); freed, it takes writes again. Unmounted on drop.
struct Volume {
    at: PathBuf,
    filler: PathBuf,
}

impl Volume {
    fn new(at: &Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        nix::mount::mount(Some("tmpfs"), at, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1g")).unwrap();
        Self { at: at.to_owned(), filler: at.join("filler") }
    }

    /// Takes every free byte: the output's next write fails.
    fn fill(&self) {
        let file = std::fs::File::create(&self.filler).unwrap();
        // In chunks until none fits (the output keeps writing meanwhile): at most 1 GiB / 1 MiB
        // + 256 calls.
        let mut offset = 0;
        for chunk in [1 << 20, 4096] {
            loop {
                match nix::fcntl::fallocate(file.as_fd(), nix::fcntl::FallocateFlags::empty(), offset, chunk) {
                    Ok(()) => offset += chunk,
                    Err(nix::errno::Errno::ENOSPC) => break,
                    Err(e) => panic!("fallocate: {e}"),
                }
            }
        }
    }

    fn free(&self) {
        std::fs::remove_file(&self.filler).unwrap();
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.at, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Batches the running collector's output failed and queued again, from its metrics.
fn delivery_retries(collector: &Collector) -> f64 {
    let text = http_get(collector.http_port, "/metrics").map(|(_, b)| b).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("peregrine_collector_queue_delivery_retries_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The proof, on a real event stream: a shell loop of /bin/true (3 events each: fork,
/// exec, exit) while the collector is killed -9 and restarted 5 times and the agent twice, and
/// the output's volume is full (every write refused) across one of the collector kills.
/// At the end, for every agent run, the event sequence numbers at the output are 1..=N without
/// a gap (nothing lost), and no event id appears twice (duplicates removed, and no batch left
/// half-written by a refused write); every status event says the kernel lost nothing.
#[test]
fn nothing_is_lost_while_collector_and_agent_are_killed() {
    let dir = TempDir::new("noloss");
    let spool_set = format!("spool.dir={}", dir.path().join("spool").display());
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let volume = Volume::new(&dir.path().join("destination"));
    let out = volume.at.join("events.jsonl");
    let start_collector = || Collector::start_writing(dir.path(), port, out.clone(), &[]);
    let mut collector = start_collector();
    let mut agent = Agent::start(dir.path(), &address, &[&spool_set, FORKS]);

    // ~34,000 iterations = ~100,000 events; bounded by count and by a deadline in the loop.
    let iterations = 34_000;
    let script = format!("i=0; while [ $i -lt {iterations} ]; do '{}'; i=$((i+1)); done", tool("true").display());
    let mut storm = Command::new(tool("sh")).args(["-c", &script]).spawn().unwrap();
    let started = Instant::now();
    let mut collector_kills = 0;
    let mut agent_kills: usize = 0;
    let mut outages = 0;
    let mut step = 0;
    // One disruption every 2 s: collector, collector, agent, the destination full (across a
    // collector kill), collector, agent, collector.
    let plan = ["c", "c", "a", "full", "c", "free", "c", "a", "c"];
    while storm.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(600), "the event storm took over 10 minutes");
        std::thread::sleep(Duration::from_millis(200));
        if step < plan.len() && started.elapsed() >= Duration::from_secs(2 * (step as u64 + 1)) {
            if plan[step] == "c" {
                collector.proc.child.kill().unwrap();
                collector.proc.child.wait().unwrap();
                collector_kills += 1;
                // Down for a moment: the agent spools meanwhile.
                std::thread::sleep(Duration::from_millis(500));
                collector = start_collector();
            } else if plan[step] == "full" {
                volume.fill();
                // The output really is refused: its batches go back to the queue.
                wait_for(WAIT, "the collector's output to fail on the full volume", || (delivery_retries(&collector) > 0.0).then_some(()));
                outages += 1;
            } else if plan[step] == "free" {
                volume.free();
            } else {
                agent.proc.child.kill().unwrap();
                agent.proc.child.wait().unwrap();
                agent_kills += 1;
                agent = Agent::start(dir.path(), &address, &[&spool_set, FORKS]);
            }
            step += 1;
        }
    }
    assert!(storm.wait().unwrap().success());
    assert_eq!((collector_kills, agent_kills, outages), (5, 2, 1), "the storm ended before every disruption happened: make it longer");
    // A clean stop: the agent sends its stopping status after everything else.
    agent.proc.terminate();
    let deadline = Instant::now() + WAIT;
    let events = loop {
        let events = collector.events();
        let stopping = events.iter().filter(|e| e["kind"]["status"]["phase"] == 3).count();
        if stopping >= 1 {
            break events;
        }
        assert!(Instant::now() < deadline, "no stopping status from the last agent");
        std::thread::sleep(Duration::from_millis(100));
    };

    let mut by_run: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    let mut duplicates = 0u64;
    let mut examples = Vec::new();
    let mut gaps = Vec::new();
    for e in &events {
        if !ids.insert(e["id"].as_str().unwrap().to_owned()) {
            duplicates += 1;
            if examples.len() < 5 {
                examples.push(format!("{} seq {}", e["agent_run"], e["seq"]));
            }
        }
        by_run.entry(e["agent_run"].as_str().unwrap().to_owned()).or_default().insert(seq_of(e));
        if let Some(lost) = e["kind"]["status"]["kernel_records_lost"].as_u64() {
            assert_eq!(lost, 0, "the kernel lost records: {e}");
        }
        // While a killed agent was down nothing was observed: each restart says so, nothing else is lost.
        if e["kind"]["loss"]["reason"] == "observation_gap" {
            gaps.push(e["kind"]["loss"]["detail"].as_str().unwrap().to_owned());
            continue;
        }
        assert!(e["kind"]["loss"].is_null(), "a loss was reported: {e}");
    }
    assert_eq!(gaps.len(), agent_kills, "one observation gap per agent kill: {gaps:?}");
    assert!(gaps.iter().all(|d| d.ends_with("ended without stopping (crash, kill, OOM kill or node reboot)")), "{gaps:?}");
    assert_eq!(by_run.len(), 3, "three agent runs");
    for (run, seqs) in &by_run {
        let max = *seqs.iter().next_back().unwrap();
        let missing: Vec<u64> = (1..=max).filter(|s| !seqs.contains(s)).take(10).collect();
        assert!(missing.is_empty(), "run {run}: {} of 1..={max} missing, first {missing:?}", max - seqs.len() as u64);
    }
    assert_eq!(duplicates, 0, "duplicates at the output, e.g. {examples:?}");
    // Fewer than 3 × 34,000: events made while an agent was down were never observed.
    assert!(events.len() >= 80_000, "about 100,000 events expected, got {}", events.len());
    eprintln!(
        "no-loss: {} events, {} runs, {collector_kills} collector and {agent_kills} agent kills, {outages} destination outage",
        events.len(),
        by_run.len()
    );
}

