//! The durable per-output queues, with the real collector binary and a real gRPC client:
//! acknowledged means queued (delivered later, in order, when the output can take it), a
//! `kill -9` loses nothing acknowledged, replays are delivered once (across restarts too), and
//! a queue file damaged on disk costs exactly the damaged event, reported with file and offset;
//! and the same promise through the Sentinel output, against the Azure stand-in answering 429,
//! 503, 401 and dropping connections, across a `kill -9`.

// Test code: a failed step should stop the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use peregrine_proto::{Ack, Event, EventBatch, EventBatchRaw, v1::ingest_client::IngestClient};
use prost::Message;
use serde_json::Value;
use support::{TempDir, TestCa, alert_event, azure_standin, connection_event, exec_event, exit_event, free_port, in_container, wait_for};

const WAIT: Duration = Duration::from_secs(20);

/// A collector process we started; killed by its PID and reaped when dropped.
struct Collector {
    child: Child,
    port: u16,
    http_port: u16,
    stderr: PathBuf,
}

/// The one `file` output named `archive` writing `out` that most tests use.
fn archive_output(out: &Path) -> String {
    format!(
        r#"[[outputs]]
kind = "file"
name = "archive"
path = "{out}"
retry = {{ max_retries = 0, initial_backoff_ms = 20, max_backoff_ms = 200 }}
"#,
        out = out.display()
    )
}

impl Collector {
    /// Starts the collector with one `file` output named `archive` writing `out`, its queues
    /// in `dir/queue`. Ports are kept across restarts (an agent would reconnect to the same).
    fn start(dir: &Path, out: &Path, ports: Option<(u16, u16)>) -> Self {
        Self::start_lagging(dir, out, ports, None)
    }

    /// [`Collector::start`] with `queue.commit_interval_ms` set.
    fn start_lagging(dir: &Path, out: &Path, ports: Option<(u16, u16)>, commit_interval_ms: Option<u64>) -> Self {
        let lag = commit_interval_ms.map(|ms| format!("commit_interval_ms = {ms}")).unwrap_or_default();
        Self::start_with(dir, &format!("{lag}\n{}", archive_output(out)), ports)
    }

    /// Starts the collector with the given `[[outputs]]` entries.
    fn start_with(dir: &Path, outputs: &str, ports: Option<(u16, u16)>) -> Self {
        Self::start_keys(dir, "", outputs, ports)
    }

    /// [`Collector::start_with`], with top-level keys (`top`) too.
    fn start_keys(dir: &Path, top: &str, outputs: &str, ports: Option<(u16, u16)>) -> Self {
        let (port, http_port) = ports.unwrap_or_else(|| (free_port(), free_port()));
        let conf = dir.join("collector.toml");
        std::fs::write(
            &conf,
            format!(
                r#"
listen = "127.0.0.1:{port}"
{top}

[http]
listen = "127.0.0.1:{http_port}"

[queue]
dir = "{queue}"
drain_timeout_ms = 300
dedup_window = 10000
{outputs}"#,
                queue = dir.join("queue").display(),
            ),
        )
        .unwrap();
        let n = std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".stderr")).count();
        let stderr = dir.join(format!("collector-{n}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_peregrine-collector"))
            .arg("--config")
            .arg(&conf)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut c = Self { child, port, http_port, stderr };
        wait_for(WAIT, "the collector to listen", || {
            assert!(matches!(c.child.try_wait(), Ok(None)), "collector exited: {}", c.stderr_text());
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        c
    }

    fn ports(&self) -> Option<(u16, u16)> {
        Some((self.port, self.http_port))
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush or say goodbye.
    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and a bounded wait for a clean exit.
    fn terminate(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = wait_for(WAIT, "the collector to exit after SIGTERM", || self.child.try_wait().unwrap());
        let text = self.stderr_text();
        assert!(status.success(), "collector exit {status}: {text}");
        text
    }

    fn metrics(&self) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    }

    /// One sample of `peregrine_collector_<series>` (0 when absent: counters start unset).
    fn metric(&self, series: &str) -> f64 {
        let name = format!("peregrine_collector_{series}");
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str())?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn wait_metric(&self, series: &str, want: f64) {
        wait_for(WAIT, &format!("{series} = {want}"), || (self.metric(series) == want).then_some(()));
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const OUT: &str = "{output=\"archive\"}";

fn series(name: &str) -> String {
    format!("{name}{OUT}")
}

/// Sends the batches on one stream and returns the acknowledgements.
fn send(port: u16, batches: Vec<Vec<Event>>) -> Vec<Ack> {
    let raw = batches.into_iter().enumerate().map(|(i, events)| EventBatch { batch_seq: i as u64 + 1, events }.into()).collect();
    send_raw(port, raw).unwrap_or_else(|status| panic!("stream refused: {status}"))
}

/// Sends encoded batches on one stream: every acknowledgement, or the status the stream ended with.
fn send_raw(port: u16, batches: Vec<EventBatchRaw>) -> Result<Vec<Ack>, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let mut client = IngestClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
        let n = batches.len();
        let (tx, rx) = tokio::sync::mpsc::channel(n.max(1));
        for batch in batches {
            tx.send(batch).await.unwrap();
        }
        let mut acks = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout(WAIT, acks.message()).await {
                Ok(Ok(Some(ack))) => got.push(ack),
                Ok(Err(status)) => return Err(status),
                other => panic!("ack {} of {n}: {other:?}", got.len() + 1),
            }
        }
        drop(tx);
        Ok(got)
    })
}

/// Ingest reads only each event's top-level fields. A batch malformed there is refused whole,
/// with the event named; an event whose nested content does not decode is acknowledged, then
/// set aside at the output and counted with its reason, and the events around it delivered.
#[test]
fn malformed_events_are_refused_or_counted_never_passed_on() {
    let dir = TempDir::new("queue-malformed");
    let out = dir.path().join("events.jsonl");
    let collector = Collector::start(dir.path(), &out, None);
    let good = events("fine", 2);
    // Field 1 (id) = "bad", then field 10 (the exec kind) holding 3 bytes that are no message.
    let nested_garbage = [&[0x0a, 3][..], b"bad", &[0x52, 3, 0xff, 0xff, 0xff]].concat();
    let batch = EventBatchRaw {
        batch_seq: 1,
        events: vec![good[0].encode_to_vec().into(), nested_garbage.into(), good[1].encode_to_vec().into()],
    };
    let acks = send_raw(collector.port, vec![batch]).unwrap();
    assert_eq!((acks[0].batch_seq, acks[0].accepted), (1, 3));
    assert_eq!(wait_delivered(&out, 2), ids(&good));
    collector.wait_metric("events_dropped_total{output=\"archive\",reason=\"undecodable\"}", 1.0);
    assert!(collector.stderr_text().contains("an event that does not decode was skipped"), "{}", collector.stderr_text());

    // A group (wire type 3) at the top level: the batch is refused, nothing of it queued.
    let refused = EventBatchRaw { batch_seq: 1, events: vec![events("never", 1)[0].encode_to_vec().into(), vec![0x0b].into()] };
    let status = send_raw(collector.port, vec![refused]).unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert_eq!(status.message(), "event 1 of batch 1 is malformed: groups are not part of the event model");
    send_all(collector.port, &events("after", 1), 1);
    assert_eq!(wait_delivered(&out, 3)[2], "after-0000");
    assert_eq!(delivered(&out).len(), 3, "nothing of the refused batch was delivered");
}

fn events(prefix: &str, n: usize) -> Vec<Event> {
    (0..n).map(|i| exec_event(&format!("{prefix}-{i:04}"), i as u64 + 1, &["sh", "-c", prefix])).collect()
}

/// `n` events in batches of `per`, with the acks checked (every event accepted).
fn send_all(port: u16, all: &[Event], per: usize) {
    let batches: Vec<Vec<Event>> = all.chunks(per).map(<[Event]>::to_vec).collect();
    let acks = send(port, batches.clone());
    for (i, (ack, batch)) in acks.iter().zip(&batches).enumerate() {
        assert_eq!((ack.batch_seq, ack.accepted as usize), (i as u64 + 1, batch.len()));
    }
}

fn ids(all: &[Event]) -> Vec<String> {
    all.iter().map(|e| e.id.clone()).collect()
}

/// Ids of the complete lines in the output file, in file order.
fn delivered(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn wait_delivered(out: &Path, n: usize) -> Vec<String> {
    wait_for(WAIT, &format!("{n} events in {}", out.display()), || {
        let got = delivered(out);
        (got.len() >= n).then_some(got)
    })
}

#[test]
fn acknowledged_events_wait_in_the_queue_until_the_output_can_take_them() {
    let dir = TempDir::new("queue-wait");
    // The output's directory does not exist yet: the file output cannot open its file.
    let out = dir.path().join("later").join("events.jsonl");
    let collector = Collector::start(dir.path(), &out, None);
    let sent = events("wait", 15);
    send_all(collector.port, &sent, 5);
    // Acknowledged = in the queue, not delivered.
    assert_eq!(collector.metric(&series("queue_records")), 15.0);
    assert_eq!(collector.metric(&series("queue_appended_total")), 15.0);
    wait_for(WAIT, "the output to fail at least twice", || (collector.metric(&series("queue_delivery_retries_total")) >= 2.0).then_some(()));
    assert!(!out.exists());
    assert_eq!(collector.metric(&series("queue_delivered_total")), 0.0);

    std::fs::create_dir(out.parent().unwrap()).unwrap();
    let got = wait_delivered(&out, 15);
    assert_eq!(got, ids(&sent), "every event, once, in order");
    collector.wait_metric(&series("queue_records"), 0.0);
    assert_eq!(collector.metric(&series("queue_delivered_total")), 15.0);
    assert_eq!(collector.metric(&series("duplicates_removed_total")), 0.0);
    let log = collector.terminate();
    assert!(log.contains("output file not writable yet"), "{log}");
    assert_eq!(delivered(&out), ids(&sent));
}

#[test]
fn kill_9_after_acks_loses_nothing_and_delivers_each_event_once() {
    let dir = TempDir::new("queue-kill");
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("events.jsonl");

    // Delivered and committed before the kill: must not come again.
    let collector = Collector::start(dir.path(), &out, None);
    let ports = collector.ports();
    let first = events("first", 100);
    send_all(collector.port, &first, 25);
    assert_eq!(wait_delivered(&out, 100), ids(&first));
    collector.wait_metric(&series("queue_records"), 0.0);
    collector.kill_9();
    let first_out = dir.path().join("out-first");
    std::fs::rename(&out_dir, &first_out).unwrap();

    // Acknowledged while the output cannot deliver, then kill -9.
    let collector = Collector::start(dir.path(), &out, ports);
    let second = events("second", 100);
    send_all(collector.port, &second, 25);
    assert_eq!(collector.metric(&series("queue_records")), 100.0);
    collector.kill_9();

    std::fs::create_dir(&out_dir).unwrap();
    let collector = Collector::start(dir.path(), &out, ports);
    wait_delivered(&out, 100);
    collector.wait_metric(&series("queue_records"), 0.0);
    collector.wait_metric(&series("queue_delivered_total"), 100.0);
    let mut got = delivered(&out);
    assert_eq!(got, ids(&second), "every acknowledged event, once, in order");
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 100);
    assert_eq!(collector.metric(&series("duplicates_removed_total")), 0.0);
    assert_eq!(delivered(&first_out.join("events.jsonl")), ids(&first), "the first run's events, once");
    collector.terminate();
}

#[test]
fn a_replayed_batch_is_delivered_once_also_across_a_restart() {
    // With the commit point written at every commit, and lagging (never written during the
    // test): then a restart reads the whole queue again, and de-duplication leaves it out.
    for (lag_ms, read_again) in [(0, 0.0), (60_000, 40.0)] {
        let dir = TempDir::new("queue-replay");
        let out = dir.path().join("events.jsonl");
        let collector = Collector::start_lagging(dir.path(), &out, None, Some(lag_ms));
        let batch = events("replay", 20);
        send_all(collector.port, &batch, 20);
        // The agent saw no acknowledgement (say, the connection dropped): it sends the batch
        // again on a new stream, with the same event ids.
        send_all(collector.port, &batch, 20);
        collector.wait_metric(&series("duplicates_removed_total"), 20.0);
        collector.wait_metric(&series("queue_records"), 0.0);
        assert_eq!(delivered(&out), ids(&batch));
        assert_eq!(collector.metric(&series("queue_delivered_total")), 20.0);

        // The ids outlive the process: a replay after a restart is recognised too.
        let ports = collector.ports();
        collector.kill_9();
        let collector = Collector::start_lagging(dir.path(), &out, ports, Some(lag_ms));
        send_all(collector.port, &batch, 20);
        let fresh = events("fresh", 5);
        send_all(collector.port, &fresh, 5);
        wait_delivered(&out, 25);
        collector.wait_metric(&series("queue_records"), 0.0);
        collector.wait_metric(&series("duplicates_removed_total"), 20.0 + read_again);
        let mut want = ids(&batch);
        want.extend(ids(&fresh));
        assert_eq!(delivered(&out), want, "commit_interval_ms = {lag_ms}");
        collector.terminate();
    }
}

/// (offset, length) of every record in a queue file, walking the record headers.
fn record_offsets(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut off = 0;
    while off + 20 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        v.push((off, 20 + len));
        off += 20 + len;
    }
    v
}

#[test]
fn a_queue_file_damaged_while_stopped_costs_only_the_damaged_event() {
    let dir = TempDir::new("queue-damage");
    let out = dir.path().join("later").join("events.jsonl");
    let collector = Collector::start(dir.path(), &out, None);
    let ports = collector.ports();
    let sent = events("damage", 30);
    send_all(collector.port, &sent, 10);
    assert_eq!(collector.metric(&series("queue_records")), 30.0);
    // SIGTERM: the output still cannot deliver; the drain gives up, the events stay queued.
    let log = collector.terminate();
    assert!(log.contains("stays queued"), "{log}");

    let queue = dir.path().join("queue").join("archive");
    let segment = std::fs::read_dir(&queue)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg") && std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let records = record_offsets(&bytes);
    assert_eq!(records.len(), 30);
    // One bit in the middle of the 12th event.
    let (offset, len) = records[11];
    bytes[offset + len / 2] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();

    std::fs::create_dir(out.parent().unwrap()).unwrap();
    let collector = Collector::start(dir.path(), &out, ports);
    wait_delivered(&out, 29);
    collector.wait_metric(&series("queue_records"), 0.0);
    let mut want = ids(&sent);
    want.remove(11);
    assert_eq!(delivered(&out), want, "every intact event, in order");
    let lost = "peregrine_collector_events_dropped_total{output=\"archive\",reason=\"queue_damaged\"}";
    assert_eq!(collector.metric(lost.strip_prefix("peregrine_collector_").unwrap()), 1.0);
    assert_eq!(collector.metric(&series("queue_damage_detected_total")), 1.0);
    let log = collector.terminate();
    let line = log.lines().find(|l| l.contains("damaged queue records skipped")).unwrap_or_else(|| panic!("no damage line: {log}"));
    assert!(line.contains(&segment.display().to_string()), "{line}");
    assert!(line.contains(&format!("offset={offset}")), "{line}");
    assert!(line.contains("checksum mismatch; 1 record lost"), "{line}");
}

#[test]
fn sigterm_delivers_what_is_queued_and_exits() {
    let dir = TempDir::new("queue-drain");
    let out = dir.path().join("events.jsonl");
    let collector = Collector::start(dir.path(), &out, None);
    let sent = events("drain", 200);
    send_all(collector.port, &sent, 50);
    let started = Instant::now();
    collector.terminate();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(delivered(&out), ids(&sent));
}

/// An output that cannot take its batch is stopped at the drain timeout (its worker, on a thread
/// of its own, is dropped at its retry's wait) and its queue waits for the next start. With
/// `ingest_threads = 2`: the multi-threaded ingest runtime is exercised here.
#[test]
fn an_output_stuck_at_sigterm_is_stopped_at_the_drain_timeout_and_keeps_its_queue() {
    let dir = TempDir::new("queue-stuck");
    let out = dir.path().join("later").join("events.jsonl");
    let outputs = archive_output(&out);
    let collector = Collector::start_keys(dir.path(), "ingest_threads = 2", &outputs, None);
    let sent = events("stuck", 30);
    send_all(collector.port, &sent, 10);
    wait_for(WAIT, "the output to fail at least twice", || (collector.metric(&series("queue_delivery_retries_total")) >= 2.0).then_some(()));
    let ports = collector.ports();
    let started = Instant::now();
    let log = collector.terminate();
    // drain_timeout_ms = 300, after the streams' 2 s grace at most.
    assert!(started.elapsed() < Duration::from_secs(8), "stopped after {:?}", started.elapsed());
    assert!(log.contains("output did not deliver its whole queue before the drain timeout; the rest stays queued"), "{log}");
    assert!(log.contains("output=archive"), "{log}");
    assert!(!out.exists());

    std::fs::create_dir(out.parent().unwrap()).unwrap();
    let collector = Collector::start_keys(dir.path(), "ingest_threads = 2", &outputs, ports);
    assert_eq!(wait_delivered(&out, 30), ids(&sent), "every event, once, in order, after the restart");
    collector.terminate();
}

/// The transport issue's no-loss proof with Microsoft Sentinel as the output: every acknowledged
/// event's id is stored by the (stand-in) Logs Ingestion API, through throttling, 503s, an
/// expired token, dropped connections and a `kill -9` of the collector mid-delivery.
#[test]
fn sentinel_output_loses_nothing_through_throttling_drops_and_a_kill_9() {
    use azure_standin::{Behaviour, StandIn};
    let dir = TempDir::new("queue-sentinel");
    let ca = TestCa::new(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let standin = rt.block_on(StandIn::start(&ca));
    let output = format!(
        r#"
[[outputs]]
kind = "sentinel"
name = "sentinel"
endpoint = "{url}"
dcr_immutable_id = "dcr-00000000000000000000000000000001"
ca_file = "{ca}"
request_timeout_ms = 5000
max_batch_bytes = 65536
auth = {{ method = "client_secret", tenant_id = "tenant-1", client_id = "client-1", client_secret = "right-secret", authority_host = "{url}" }}
retry = {{ max_retries = 20, initial_backoff_ms = 20, max_backoff_ms = 200, max_retry_after_ms = 2000 }}
"#,
        url = standin.url(),
        ca = ca.ca_pem.display(),
    );
    let faults = || {
        standin.with(|s| {
            s.behaviours.extend([
                Behaviour::Throttle(1),
                Behaviour::Drop,
                Behaviour::Unavailable,
                Behaviour::ExpireToken,
                Behaviour::Drop,
                Behaviour::Throttle(1),
                Behaviour::Unavailable,
            ])
        })
    };
    // Every kind the ASIM mode sends, from the host and from a pod.
    let mixed = |prefix: &str, n: usize| -> Vec<Event> {
        (0..n)
            .map(|i| {
                let id = format!("{prefix}-{i:04}");
                let seq = i as u64 + 1;
                let e = match i % 4 {
                    0 => exec_event(&id, seq, &["sh", "-c", prefix]),
                    1 => exit_event(&id, seq),
                    2 => connection_event(&id, seq, "connect", if i % 8 == 2 { "refused" } else { "established" }),
                    _ => alert_event(&id, seq, "Shell in container", "Warning"),
                };
                if i % 3 == 0 { in_container(e) } else { e }
            })
            .collect()
    };
    let stored_ids = || -> Vec<String> {
        standin.stored().iter().flat_map(|s| s.rows.iter().filter_map(|r| r["EventOriginalUid"].as_str().map(str::to_owned))).collect()
    };

    faults();
    let collector = Collector::start_with(dir.path(), &output, None);
    let ports = collector.ports();
    let first = mixed("first", 1200);
    send_all(collector.port, &first, 100);
    // Killed once some rows are in, while the faults slow the rest.
    wait_for(WAIT, "the first rows at the stand-in", || (!stored_ids().is_empty()).then_some(()));
    collector.kill_9();

    faults();
    let collector = Collector::start_with(dir.path(), &output, ports);
    let second = mixed("second", 1200);
    send_all(collector.port, &second, 100);
    let mut want: Vec<String> = ids(&first);
    want.extend(ids(&second));
    want.sort();
    let got = wait_for(Duration::from_secs(90), "every acknowledged event at the stand-in", || {
        let mut got = stored_ids();
        got.sort();
        let mut unique = got.clone();
        unique.dedup();
        (unique.len() >= want.len()).then_some(got)
    });
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique, want, "the set of ids stored is the set of ids acknowledged");
    collector.wait_metric("queue_records{output=\"sentinel\"}", 0.0);
    let statuses: Vec<u16> = standin.with(|s| s.log.iter().filter(|l| l.path.contains("/streams/")).map(|l| l.status).collect());
    for want in [0, 204, 401, 429, 503] {
        assert!(statuses.contains(&want), "the stand-in answered {want} at least once: {statuses:?}");
    }
    assert!(standin.undeclared().is_empty(), "columns the deployed DCR does not declare: {:?}", standin.undeclared());
    // At-least-once: a request accepted just before the kill may be sent again; Sentinel
    // de-duplicates by EventOriginalUid at query time. Report how many.
    eprintln!("{} rows stored for {} events ({} repeats after the kill)", got.len(), want.len(), got.len() - want.len());
    collector.terminate();
    drop(rt);
}

/// With the commit point lagging, a crash makes the worker read again what it had delivered;
/// for an output whose destination cannot be read back (here OCSF lines), the delivered-id
/// log alone must leave all of it out.
#[test]
fn what_a_lagging_commit_point_reads_again_is_left_out_by_the_id_log() {
    let dir = TempDir::new("queue-lag");
    let out = dir.path().join("events.ocsf.jsonl");
    let output = format!("commit_interval_ms = 60000\n[[outputs]]\nkind = \"ocsf_file\"\nname = \"ocsf\"\npath = \"{}\"\n", out.display());
    let uids = |path: &Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|e| e["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let collector = Collector::start_with(dir.path(), &output, None);
    let ocsf = |name: &str| format!("{name}{{output=\"ocsf\"}}");
    let first = events("lag", 30);
    send_all(collector.port, &first, 10);
    wait_for(WAIT, "30 OCSF lines", || (uids(&out).len() >= 30).then_some(()));
    collector.wait_metric(&ocsf("queue_delivered_total"), 30.0);
    let ports = collector.ports();
    collector.kill_9();

    let collector = Collector::start_with(dir.path(), &output, ports);
    // The 30 events are past the commit point on disk: read again, recognised by the id log.
    collector.wait_metric(&ocsf("duplicates_removed_total"), 30.0);
    let fresh = events("after", 5);
    send_all(collector.port, &fresh, 5);
    wait_for(WAIT, "35 OCSF lines", || (uids(&out).len() >= 35).then_some(()));
    collector.wait_metric(&ocsf("queue_records"), 0.0);
    let mut want = ids(&first);
    want.extend(ids(&fresh));
    assert_eq!(uids(&out), want, "each event once, in order");
    collector.terminate();
}
