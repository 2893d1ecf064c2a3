//! Load generator for `cargo xtask bench ingest` (a benchmark tool, not deployed): streams
//! synthetic exec events to a collector the way an agent does (batches, a window of batches in
//! flight, acknowledgements), optionally at a steady rate while tailing the collector's file
//! output to measure event → output latency; or measures the journal's append and replay rates.
//! Prints one JSON object on stdout.

use std::{
    io::{BufRead, Seek},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use peregrine_journal::{Fsync, FullPolicy, Journal, JournalConfig};
use peregrine_proto::{
    Ancestor, Credentials, Event, EventBatch, EventBatchRaw, Kind, Namespaces, Process, ProcessExec, v1::ingest_client::IngestClient,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Parser)]
struct Args {
    /// The collector's ingest address.
    #[arg(long)]
    address: Option<String>,
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Batches in flight (as the agent: 8).
    #[arg(long, default_value_t = 8)]
    window: usize,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Events per second; 0: as fast as acknowledgements allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// The collector's JSON-lines output, tailed for latency.
    #[arg(long)]
    tail: Option<PathBuf>,
    /// Instead of streaming: append and replay this many records in a journal at this path.
    #[arg(long)]
    spool_bench: Option<PathBuf>,
    #[arg(long, default_value_t = 200_000)]
    records: u64,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(0))
}

/// An exec event of a typical size (~600 bytes encoded): argv, exe, credentials, namespaces,
/// two ancestors.
fn event(run: &str, seq: u64) -> Event {
    let process = Process {
        exec_id: format!("node-1:{seq}:1000:2000"),
        parent_exec_id: "node-1:41:900:950".into(),
        pid: 4242,
        tid: 4242,
        ppid: 41,
        comm: "curl".into(),
        exe: "/usr/bin/curl".into(),
        filename: "/usr/bin/curl".into(),
        argv: vec!["curl".into(), "-sS".into(), "https://example.invalid/install.sh".into(), "-o".into(), "/tmp/i.sh".into()],
        cwd: "/root".into(),
        creds: Some(Credentials { uid: 0, gid: 0, euid: 0, egid: 0, cap_effective: 0x1fffeffffff, ..Default::default() }),
        ns: Some(Namespaces { pid: 4026531836, mnt: 4026531841, net: 4026531840, uts: 4026531838, ipc: 4026531839, user: 4026531837, cgroup: 4026531835 }),
        cgroup_id: 1,
        source: "exec".into(),
        ..Default::default()
    };
    let ancestors = vec![
        Ancestor { pid: 41, exec_id: "node-1:41:900:950".into(), comm: "bash".into(), exe: "/usr/bin/bash".into(), argv: vec!["bash".into()] }.into(),
        Ancestor { pid: 1, exec_id: "node-1:1:1:2".into(), comm: "sshd".into(), exe: "/usr/sbin/sshd".into(), argv: vec!["/usr/sbin/sshd".into(), "-D".into()] }.into(),
    ];
    Event {
        id: format!("{run}-{seq}"),
        seq,
        time_unix_nano: now_ns(),
        boot_ns: 1,
        node: "node-1".into(),
        cluster: "bench".into(),
        agent_run: run.into(),
        kind: Some(Kind::Exec(ProcessExec { process: Some(process.into()), ancestors })),
        enrichment: "complete".into(),
        ..Default::default()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.spool_bench {
        return spool_bench(path, args.records);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(stream(&args))
}

async fn stream(args: &Args) -> anyhow::Result<()> {
    let address = args.address.clone().context("--address is required")?;
    let tailer = args.tail.clone().map(|path| std::thread::spawn(move || tail(&path)));
    let mut client = IngestClient::connect(address.clone()).await.with_context(|| format!("connecting to {address}"))?;
    let (tx, rx) = mpsc::channel::<EventBatchRaw>(args.window);
    let mut acks = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    let run = format!("lg{}", std::process::id());
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let (mut seq, mut batch_seq, mut in_flight, mut acked) = (0u64, 0u64, 0usize, 0u64);
    let mut sizes = std::collections::VecDeque::new();
    while Instant::now() < deadline || in_flight > 0 {
        if in_flight < args.window && Instant::now() < deadline {
            if args.rate > 0 {
                // Steady rate: the next batch is due when the previous ones' events are.
                let due = started + Duration::from_secs_f64(seq as f64 / args.rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            batch_seq += 1;
            let events: Vec<Event> = (0..args.batch)
                .map(|_| {
                    seq += 1;
                    event(&run, seq)
                })
                .collect();
            sizes.push_back(events.len() as u64);
            tx.send(EventBatch { batch_seq, events }.into()).await.context("stream closed")?;
            in_flight += 1;
            continue;
        }
        match acks.message().await? {
            Some(_) => {
                in_flight -= 1;
                acked += sizes.pop_front().unwrap_or(0);
            }
            None => anyhow::bail!("collector closed the stream"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(tx);
    let latency = match tailer {
        Some(t) => {
            // The tailer stops once every acknowledged event reached the file (or after 20 s).
            TAIL_TARGET.store(acked, std::sync::atomic::Ordering::Relaxed);
            t.join().map_err(|_| anyhow::anyhow!("tailer panicked"))??
        }
        None => Vec::new(),
    };
    let pct = |p: f64| -> f64 {
        if latency.is_empty() {
            return 0.0;
        }
        let i = ((latency.len() as f64 - 1.0) * p).round() as usize;
        latency[i.min(latency.len() - 1)] as f64 / 1e6
    };
    println!(
        "{}",
        serde_json::json!({
            "acked": acked, "seconds": elapsed, "batch": args.batch,
            "latency_samples": latency.len(), "latency_p50_ms": pct(0.5), "latency_p99_ms": pct(0.99),
            "event_bytes": event(&run, 1).encoded_len(),
        })
    );
    Ok(())
}

static TAIL_TARGET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// Reads lines appended to `path` from now on; each event's age when its line is read.
fn tail(path: &std::path::Path) -> anyhow::Result<Vec<u64>> {
    let start = Instant::now();
    let mut file = loop {
        if let Ok(f) = std::fs::File::open(path) {
            break f;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "output file {} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(5));
    };
    file.seek(std::io::SeekFrom::End(0))?;
    let mut reader = std::io::BufReader::new(file);
    let mut samples = Vec::new();
    let mut line = String::new();
    #[derive(serde::Deserialize)]
    struct Line {
        time_unix_nano: i64,
    }
    let mut finished_at: Option<Instant> = None;
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            let target = TAIL_TARGET.load(std::sync::atomic::Ordering::Relaxed);
            if samples.len() as u64 >= target {
                break;
            }
            if target != u64::MAX && finished_at.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(20) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        if let Ok(l) = serde_json::from_str::<Line>(&line) {
            samples.push(u64::try_from(now_ns() - l.time_unix_nano).unwrap_or(0));
        }
    }
    samples.sort_unstable();
    Ok(samples)
}

/// The journal alone: append `records` exec-sized records (flushed per 512, as the agent
/// does per batch), then replay them all.
fn spool_bench(dir: &std::path::Path, records: u64) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let config = JournalConfig { max_bytes: 4 << 30, segment_bytes: 64 << 20, full: FullPolicy::DropNewest, fsync: Fsync::Never, ..JournalConfig::default() };
    let mut journal = Journal::open(dir, config)?;
    let payload = event("spool", 1).encode_to_vec();
    let t = Instant::now();
    for i in 0..records {
        journal.append(&payload)?;
        if i % 512 == 511 {
            journal.flush()?;
        }
    }
    journal.flush()?;
    let append_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (mut cursor, mut read) = (0u64, 0u64);
    loop {
        let (batch, _) = journal.read_after(cursor, 512, 4 << 20)?;
        let Some(&(last, _)) = batch.last() else { break };
        read += batch.len() as u64;
        cursor = last;
    }
    let replay_s = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(dir);
    println!(
        "{}",
        serde_json::json!({
            "records": records, "record_bytes": payload.len(), "read": read,
            "append_per_s": records as f64 / append_s, "replay_per_s": read as f64 / replay_s,
        })
    );
    Ok(())
}
