//! Delivery that loses nothing: the whole path (kernel → agent spool → collector queue → file)
//! while the collector and the agent are killed and restarted under a stream of real
//! exec/fork/exit events. Alone in its binary: the storm would swamp tests running beside it.
// Test code: a failed step should stop the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Agent, Collector, TempDir, free_port, tool};

const WAIT: Duration = Duration::from_secs(60);

fn seq_of(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap()
}

/// The proof, on a real event stream: a shell loop of /bin/true (3 events each: fork,
/// exec, exit) while the collector is killed -9 and restarted 5 times and the agent twice.
/// At the end, for every agent run, the event sequence numbers at the output are 1..=N without
/// a gap (nothing lost), and no event id appears twice (duplicates removed); every status
/// event says the kernel lost nothing.
#[test]
fn nothing_is_lost_while_collector_and_agent_are_killed() {
    let dir = TempDir::new("noloss");
    let spool_set = format!("spool.dir={}", dir.path().join("spool").display());
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let mut collector = Collector::start_on(dir.path(), port);
    let mut agent = Agent::start(dir.path(), &address, &[&spool_set]);

    // ~34,000 iterations = ~100,000 events; bounded by count and by a deadline in the loop.
    let iterations = 34_000;
    let script = format!("i=0; while [ $i -lt {iterations} ]; do '{}'; i=$((i+1)); done", tool("true").display());
    let mut storm = Command::new(tool("sh")).args(["-c", &script]).spawn().unwrap();
    let started = Instant::now();
    let mut collector_kills = 0;
    let mut agent_kills: usize = 0;
    let mut step = 0;
    // One disruption every 2 s: collector, collector, agent, collector, collector, agent, collector.
    let plan = ["c", "c", "a", "c", "c", "a", "c"];
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
                collector = Collector::start_on(dir.path(), port);
            } else {
                agent.proc.child.kill().unwrap();
                agent.proc.child.wait().unwrap();
                agent_kills += 1;
                agent = Agent::start(dir.path(), &address, &[&spool_set]);
            }
            step += 1;
        }
    }
    assert!(storm.wait().unwrap().success());
    assert_eq!((collector_kills, agent_kills), (5, 2), "the storm ended before every disruption happened: make it longer");
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
    eprintln!("no-loss: {} events, {} runs, {collector_kills} collector and {agent_kills} agent kills", events.len(), by_run.len());
}

