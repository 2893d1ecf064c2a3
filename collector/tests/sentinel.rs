//! The Sentinel output against the local Entra + Logs Ingestion stand-in
//! (`support/azure_standin.rs`, HTTPS on 127.0.0.1): exact rows, gzip, splitting on 413,
//! Retry-After, one token refresh on 401, credential errors, dropped connections, a rejected
//! row set aside, an oversized event truncated.

#![recursion_limit = "256"]
// Test scaffolding: a failed step stops the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use peregrine_collector::output::sentinel::{Sentinel, SentinelSettings};
use serde_json::{Value, json};
use support::{azure_standin::*, *};

const V: &str = env!("CARGO_PKG_VERSION");
const DCR: &str = "dcr-00000000000000000000000000000001";
const PROCESS: &str = "Custom-PeregrineProcessEvent";
const ALERTS: &str = "Custom-PeregrineAlerts_CL";

struct Env {
    _dir: TempDir,
    dir: std::path::PathBuf,
    ca: TestCa,
    standin: StandIn,
}

async fn env() -> Env {
    let dir = TempDir::new("sentinel");
    let ca = TestCa::new(dir.path());
    let standin = StandIn::start(&ca).await;
    Env { dir: dir.path().to_owned(), _dir: dir, ca, standin }
}

fn client_secret(env: &Env, secret: &str) -> String {
    format!(
        "[auth]\nmethod = \"client_secret\"\ntenant_id = \"tenant-1\"\nclient_id = \"client-1\"\nclient_secret = \"{secret}\"\nauthority_host = \"{}\"\n",
        env.standin.url()
    )
}

fn build(env: &Env, extra: &str, auth: &str) -> Sentinel {
    let text = format!(
        "endpoint = \"{}\"\ndcr_immutable_id = \"{DCR}\"\nca_file = \"{}\"\nrequest_timeout_ms = 5000\n{extra}\n{auth}",
        env.standin.url(),
        env.ca.ca_pem.display()
    );
    let settings: SentinelSettings = toml::from_str(&text).unwrap();
    settings.validate().unwrap();
    settings.build("sentinel", &fast_retry()).unwrap()
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("the send finished within 30 s")
}

fn expected_exec_row() -> Value {
    let t = "2026-11-23T18:00:00.123457Z";
    json!({
        "TimeGenerated": t, "EventStartTime": t, "EventEndTime": t,
        "EventOriginalUid": "e-1", "EventOriginalType": "exec",
        "EventProduct": "Peregrine", "EventVendor": "Peregrine", "EventProductVersion": V,
        "DvcHostname": "node-1", "DvcOs": "Linux",
        "EventCount": 1, "EventType": "ProcessCreated", "EventResult": "Success",
        "EventSeverity": "Informational", "EventSchemaVersion": "0.1.4",
        "ActorUsername": "1000", "ActorUsernameType": "Simple", "ActorUserId": "1000", "ActorUserIdType": "UID",
        "TargetUsername": "0", "TargetUsernameType": "Simple", "TargetUserId": "0", "TargetUserIdType": "UID",
        "TargetProcessId": "4242", "TargetProcessName": "/usr/bin/sh", "TargetProcessCommandLine": "sh -c id",
        "TargetProcessCurrentDirectory": "/root", "TargetProcessCreationTime": "2026-11-23T17:59:55.123457Z",
        "ParentProcessId": "1", "ActingProcessId": "1", "ActingProcessName": "/usr/bin/bash",
        "ActingProcessCommandLine": "bash", "ParentProcessName": "/usr/bin/bash",
        "AdditionalFields": {
            "cluster": "prod", "agent_run": "run-1", "seq": 1,
            "exec_id": "node-1:4242:100:200", "parent_exec_id": "node-1:1:1:2", "tid": 4242, "vpid": 4242,
            "comm": "sh", "filename": "/bin/sh", "argv": ["sh", "-c", "id"], "cgroup_id": 1,
            "creds": {"uid": 1000, "gid": 1000, "euid": 0, "egid": 0, "loginuid": 1000, "sessionid": 3, "cap_effective": 0, "cap_permitted": 0},
            "namespaces": {"pid": 4026531836u64, "mnt": 4026531832u64, "net": 4026531833u64, "uts": 4026531838u64, "ipc": 4026531839u64, "user": 4026531837u64, "cgroup": 4026531835u64},
            "source": "exec",
            "ancestors": [{"pid": 1, "exec_id": "node-1:1:1:2", "comm": "bash", "exe": "/usr/bin/bash", "argv": ["bash"]}]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asim_rows_are_stored_exactly_gzipped_with_a_client_secret_token() {
    let env = env().await;
    let sink = build(&env, "", &client_secret(&env, "right-secret"));
    let (ctx, metrics) = ctx("sentinel", None, None);
    let events = vec![exec_event("e-1", 1, &["sh", "-c", "id"]), exit_event("e-2", 2), alert_event("e-3", 3, "Shell in container", "Warning")];
    bounded(sink.send(&events, &ctx)).await.unwrap();

    let stored = env.standin.stored();
    assert_eq!(stored.len(), 2, "one request per stream");
    for s in &stored {
        assert_eq!(s.dcr, DCR);
        assert_eq!(s.api_version, "2023-01-01");
        assert!(s.gzip, "Content-Encoding: gzip");
        assert_eq!(s.content_type, "application/json");
    }
    let process_rows = env.standin.rows(PROCESS);
    assert_eq!(process_rows.len(), 2);
    assert_eq!(process_rows[0], expected_exec_row());
    assert_eq!(process_rows[1]["EventType"], "ProcessTerminated");
    assert_eq!(process_rows[1]["TargetProcessStatusCode"], "signal 9");
    assert_eq!(process_rows[1]["EventOriginalUid"], "e-2");
    let alerts = env.standin.rows(ALERTS);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["AlertName"], "Shell in container");
    assert_eq!(alerts[0]["EventSeverity"], "Medium");
    assert_eq!(alerts[0]["EventOriginalSeverity"], "Warning");
    assert_eq!(alerts[0]["EventSchema"], "AlertEvent");
    assert_eq!(metrics.sent_count("sentinel"), 3);

    // The token request, as Entra's v2.0 endpoint documents it.
    let forms = env.standin.with(|s| s.token_forms.clone());
    assert_eq!(forms.len(), 1, "the token is cached across requests");
    let f = &forms[0];
    assert_eq!(f["client_id"], "client-1");
    assert_eq!(f["client_secret"], "right-secret");
    assert_eq!(f["scope"], "https://monitor.azure.com/.default");
    assert_eq!(f["grant_type"], "client_credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_limit_is_split_on_413() {
    let env = env().await;
    // The stand-in takes at most 6 KiB per request; the collector's own limit is higher.
    env.standin.with(|s| s.max_body = 6 * 1024);
    let sink = build(&env, "", &client_secret(&env, "right-secret"));
    let (ctx, metrics) = ctx("sentinel", None, None);
    let big = "x".repeat(1500);
    let events: Vec<_> = (0..8).map(|i| exec_event(&format!("e-{i}"), i, &["sh", "-c", &big])).collect();
    bounded(sink.send(&events, &ctx)).await.unwrap();
    let rows = env.standin.rows(PROCESS);
    let ids: Vec<&str> = rows.iter().map(|r| r["EventOriginalUid"].as_str().unwrap()).collect();
    assert_eq!(ids, (0..8).map(|i| format!("e-{i}")).collect::<Vec<_>>(), "every row once, in order");
    assert!(env.standin.statuses("/streams/").contains(&413));
    assert!(env.standin.stored().iter().all(|s| s.uncompressed_len <= 6 * 1024));
    assert!(metrics.retry_count("sentinel", "split_413") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_on_429() {
    let env = env().await;
    env.standin.with(|s| s.behaviours.push_back(Behaviour::Throttle(1)));
    let sink = build(&env, "", &client_secret(&env, "right-secret"));
    let (ctx, metrics) = ctx("sentinel", None, None);
    bounded(sink.send(&[exec_event("e-1", 1, &["sh", "-c", "id"])], &ctx)).await.unwrap();
    let log = env.standin.with(|s| s.log.iter().filter(|l| l.path.contains("/streams/")).cloned().collect::<Vec<_>>());
    assert_eq!(log.iter().map(|l| l.status).collect::<Vec<_>>(), [429, 204]);
    let gap = log[1].at - log[0].at;
    assert!(gap >= Duration::from_secs(1), "waited {gap:?}, Retry-After said 1 s");
    assert_eq!(env.standin.rows(PROCESS).len(), 1);
    assert_eq!(metrics.retry_count("sentinel", "throttled"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_refreshed_once_on_401() {
    let env = env().await;
    env.standin.with(|s| s.behaviours.push_back(Behaviour::ExpireToken));
    let sink = build(&env, "", &client_secret(&env, "right-secret"));
    let (ctx, metrics) = ctx("sentinel", None, None);
    bounded(sink.send(&[exec_event("e-1", 1, &["sh", "-c", "id"])], &ctx)).await.unwrap();
    assert_eq!(env.standin.statuses("/streams/"), [401, 204]);
    assert_eq!(env.standin.with(|s| s.token_forms.len()), 2, "one refresh");
    assert_eq!(env.standin.rows(PROCESS).len(), 1);
    assert_eq!(metrics.retry_count("sentinel", "token_refresh"), 1);

    // A token refused again right after the refresh is a credentials error, not a loop.
    env.standin.with(|s| {
        s.behaviours.push_back(Behaviour::ExpireToken);
        s.behaviours.push_back(Behaviour::ExpireToken);
    });
    let err = bounded(sink.send(&[exec_event("e-2", 2, &["id"])], &ctx)).await.unwrap_err().to_string();
    assert!(err.contains("refused a fresh token") && err.contains("client secret of client client-1 in tenant tenant-1"), "{err}");
    assert_eq!(env.standin.with(|s| s.token_forms.len()), 3, "exactly one refresh for this batch, then the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_name_their_source_and_the_batch_is_kept() {
    let env = env().await;
    let sink = build(&env, "", &client_secret(&env, "wrong-secret"));
    let (ctx, _) = ctx("sentinel", None, None);
    let batch = [exec_event("e-1", 1, &["sh", "-c", "id"])];
    let err = bounded(sink.send(&batch, &ctx)).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "output `sentinel`: no access token from client secret of client client-1 in tenant tenant-1 at {}: \
HTTP 401: invalid_client: AADSTS7000215: Invalid client secret provided. (the batch is kept for retry)",
            env.standin.url()
        )
    );
    assert!(env.standin.stored().is_empty());
    // The same batch, once the secret is right (here: the stand-in accepts it), goes through.
    env.standin.with(|s| s.client_secret = "wrong-secret".into());
    bounded(sink.send(&batch, &ctx)).await.unwrap();
    assert_eq!(env.standin.rows(PROCESS), [expected_exec_row_for("e-1")]);
}

fn expected_exec_row_for(id: &str) -> Value {
    let mut v = expected_exec_row();
    v["EventOriginalUid"] = json!(id);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_reads_the_assertion_file_at_every_refresh() {
    let env = env().await;
    let token_file = env.dir.join("azure-identity-token");
    std::fs::write(&token_file, "federated.jwt.1").unwrap();
    let auth = format!(
        "[auth]\nmethod = \"workload_identity\"\ntenant_id = \"tenant-1\"\nclient_id = \"client-1\"\ntoken_file = \"{}\"\nauthority_host = \"{}\"\n",
        token_file.display(),
        env.standin.url()
    );
    let sink = build(&env, "", &auth);
    let (ctx, _) = ctx("sentinel", None, None);
    bounded(sink.send(&[exec_event("e-1", 1, &["id"])], &ctx)).await.unwrap();
    // The kubelet rotates the file; the next refresh must present the new assertion.
    std::fs::write(&token_file, "federated.jwt.2").unwrap();
    env.standin.with(|s| {
        s.assertion = "federated.jwt.2".into();
        s.behaviours.push_back(Behaviour::ExpireToken);
    });
    bounded(sink.send(&[exec_event("e-2", 2, &["id"])], &ctx)).await.unwrap();
    let assertions: Vec<String> = env.standin.with(|s| s.token_forms.iter().map(|f| f["client_assertion"].clone()).collect());
    assert_eq!(assertions, ["federated.jwt.1", "federated.jwt.2"]);
    let f = env.standin.with(|s| s.token_forms[0].clone());
    assert_eq!(f["client_assertion_type"], "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    assert!(!f.contains_key("client_secret"));
    assert_eq!(env.standin.rows(PROCESS).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_and_503_are_retried_with_backoff() {
    let env = env().await;
    env.standin.with(|s| {
        s.behaviours.push_back(Behaviour::Drop);
        s.behaviours.push_back(Behaviour::Unavailable);
    });
    let sink = build(&env, "", &client_secret(&env, "right-secret"));
    let (ctx, metrics) = ctx("sentinel", None, None);
    bounded(sink.send(&[exec_event("e-1", 1, &["id"])], &ctx)).await.unwrap();
    assert_eq!(env.standin.statuses("/streams/"), [0, 503, 204]);
    assert_eq!(metrics.retry_count("sentinel", "connection"), 1);
    assert_eq!(metrics.retry_count("sentinel", "server_error"), 1);
    assert_eq!(env.standin.rows(PROCESS).len(), 1);

    // Retries are bounded: a receiver that keeps failing gives a clear error.
    env.standin.with(|s| s.behaviours.extend(std::iter::repeat_n(Behaviour::Unavailable, 10)));
    let err = bounded(sink.send(&[exec_event("e-2", 2, &["id"])], &ctx)).await.unwrap_err().to_string();
    assert!(err.contains("HTTP 503") && err.contains("gave up after 5 attempts"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_row_is_set_aside_and_the_rest_delivered() {
    let env = env().await;
    let sink = build(&env, "", &client_secret(&env, "right-secret"));
    let dead = env.dir.join("dead.jsonl");
    let (ctx, metrics) = ctx("sentinel", Some(&dead), None);
    let events: Vec<_> =
        (0..5).map(|i| exec_event(&format!("e-{i}"), i, &["sh", "-c", if i == 3 { POISON } else { "id" }])).collect();
    bounded(sink.send(&events, &ctx)).await.unwrap();
    let ids: Vec<String> = env.standin.rows(PROCESS).iter().map(|r| r["EventOriginalUid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["e-0", "e-1", "e-2", "e-4"]);
    let lines: Vec<Value> =
        std::fs::read_to_string(&dead).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["output"], "sentinel");
    assert_eq!(lines[0]["reason"], "rejected_400");
    assert!(lines[0]["detail"].as_str().unwrap().starts_with("HTTP 400: {\"error\":{\"code\":\"InvalidContent\""), "{}", lines[0]);
    assert_eq!(lines[0]["event"]["id"], "e-3");
    assert_eq!(lines[0]["event"]["kind"]["exec"]["process"]["argv"][2], POISON);
    assert_eq!(metrics.dead_lettered_count("sentinel", "rejected_400"), 1);
    assert_eq!(metrics.sent_count("sentinel"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_1_5_mb_is_truncated_argv_first_flagged_and_delivered() {
    let env = env().await;
    let sink = build(&env, "", &client_secret(&env, "right-secret"));
    let (ctx, metrics) = ctx("sentinel", None, None);
    let huge = "A".repeat(1_500_000);
    let e = exec_event("e-big", 1, &["/usr/bin/python3", "-c", &huge, "last-arg"]);
    bounded(sink.send(&[e], &ctx)).await.unwrap();
    let rows = env.standin.rows(PROCESS);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    let argv: Vec<&str> = row["AdditionalFields"]["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(argv[0], "/usr/bin/python3");
    assert_eq!(argv[1], "-c");
    assert_eq!(argv.len(), 3, "the last argument went first");
    assert!(argv[2].len() < 500_000 && argv[2].chars().all(|c| c == 'A'));
    assert_eq!(row["AdditionalFields"]["partial"], json!(["collector_truncated"]));
    assert!(row["TargetProcessCommandLine"].as_str().unwrap().starts_with("/usr/bin/python3 -c AAAA"));
    let stored = env.standin.stored();
    assert!(stored[0].uncompressed_len < 1_000_000, "{}", stored[0].uncompressed_len);
    assert_eq!(metrics.truncated_count("sentinel"), 1);
}
