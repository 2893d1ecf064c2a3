//! Keeps the Azure stand-in (`support/azure_standin.rs`) honest: Microsoft's own Python client
//! (`azure-monitor-ingestion`'s `LogsIngestionClient.upload`, with `azure-identity`'s
//! `ClientSecretCredential` whose authority is the stand-in) must succeed against it, and the
//! stand-in must store exactly the rows uploaded; a wrong secret must fail in that client the
//! way Entra's answer makes it fail. Only 127.0.0.1 traffic; the client runs with a bounded wait.
//! The interpreter is the project venv's (`cargo xtask setup`, `kind = "pip"` in tools.toml).

// Test scaffolding: a failed step stops the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{azure_standin::*, *};

const DCR: &str = "dcr-00000000000000000000000000000002";
const STREAM: &str = "Custom-PeregrineAlerts_CL";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/logs_ingestion_upload.py");

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs the upload script with the venv's python, trusting only the test CA, with every proxy
/// variable removed; killed (by its PID) after 60 s.
fn upload(dir: &Path, ca_pem: &Path, url: &str, secret: &str, rows: &Value) -> Run {
    let python = tool("/opt/peregrine/py/bin/python3");
    let rows_file = dir.join("rows.json");
    std::fs::write(&rows_file, serde_json::to_vec(rows).unwrap()).unwrap();
    let (out, err) = (dir.join("python.out"), dir.join("python.err"));
    let mut cmd = Command::new(python);
    cmd.arg("-I")
        .arg(SCRIPT)
        .args([url, "tenant-1", "client-1", secret, DCR, STREAM])
        .arg(&rows_file)
        .env("REQUESTS_CA_BUNDLE", ca_pem)
        .env("SSL_CERT_FILE", ca_pem)
        .env_remove("SSL_CERT_DIR")
        .env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    for v in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "AZURE_AUTHORITY_HOST"] {
        cmd.env_remove(v);
    }
    let mut child = cmd.spawn().expect("the venv's python starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the Python client did not finish within 60 s; stderr: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        success: status.success(),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

fn rows() -> Value {
    json!([
        {"TimeGenerated": "2026-11-23T18:00:00.123457Z", "AlertName": "Shell in container", "EventSeverity": "Medium",
         "AdditionalFields": {"tags": ["container", "mitre_execution"], "count": 1, "folded": false}},
        {"TimeGenerated": "2026-11-23T18:00:01Z", "AlertName": "Übersetzung — ünïcödé ✓", "EventSeverity": "High",
         "AdditionalFields": {"argv": ["sh", "-c", "echo \"quoted\" \\ back"], "big": 18446744073709551615u64}},
        {"TimeGenerated": "2026-11-23T18:00:02Z", "AlertName": "empty fields", "EventSeverity": "Informational", "AdditionalFields": {}}
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsofts_python_client_uploads_and_the_standin_stores_exactly_its_rows() {
    let dir = TempDir::new("azure-python");
    let ca = TestCa::new(dir.path());
    let standin = StandIn::start(&ca).await;
    let (path, url) = (dir.path().to_owned(), standin.url());
    let ca_pem = ca.ca_pem.clone();
    let run = tokio::task::spawn_blocking(move || upload(&path, &ca_pem, &url, "right-secret", &rows())).await.unwrap();
    assert!(run.success, "the Python client failed:\nstdout: {}\nstderr: {}\nstand-in log: {:?}", run.stdout, run.stderr, standin.with(|s| s.log.clone()));
    assert_eq!(run.stdout.trim(), "uploaded 3");

    let stored = standin.stored();
    assert_eq!(stored.len(), 1, "one request for three small rows");
    let s = &stored[0];
    assert_eq!((s.dcr.as_str(), s.stream.as_str(), s.api_version.as_str()), (DCR, STREAM, "2023-01-01"));
    assert!(s.gzip, "the Python client gzips its body");
    assert!(s.content_type.starts_with("application/json"), "{}", s.content_type);
    assert_eq!(Value::Array(s.rows.clone()), rows(), "exactly the uploaded rows");

    // What the client asked of Entra, as the stand-in saw it.
    let forms = standin.with(|s| s.token_forms.clone());
    assert_eq!(forms.len(), 1, "{forms:?}");
    assert_eq!(forms[0]["client_id"], "client-1");
    assert_eq!(forms[0]["client_secret"], "right-secret");
    assert_eq!(forms[0]["grant_type"], "client_credentials");
    assert_eq!(forms[0]["scope"], "https://monitor.azure.com/.default");
    let log: Vec<(String, u16)> = standin.with(|s| s.log.iter().map(|l| (l.path.clone(), l.status)).collect());
    assert!(log.iter().all(|(_, status)| *status < 400), "{log:?}");
    assert_eq!(log.last().map(|(p, st)| (p.as_str(), *st)), Some((format!("/dataCollectionRules/{DCR}/streams/{STREAM}").as_str(), 204)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_fails_in_microsofts_client_with_entras_error() {
    let dir = TempDir::new("azure-python-wrong");
    let ca = TestCa::new(dir.path());
    let standin = StandIn::start(&ca).await;
    let (path, url) = (dir.path().to_owned(), standin.url());
    let ca_pem = ca.ca_pem.clone();
    let run = tokio::task::spawn_blocking(move || upload(&path, &ca_pem, &url, "wrong-secret", &rows())).await.unwrap();
    assert!(!run.success, "a wrong secret was accepted: {}", run.stdout);
    assert!(
        run.stdout.starts_with("error ClientAuthenticationError") && run.stdout.contains("AADSTS7000215"),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    assert!(standin.stored().is_empty());
    assert!(standin.statuses("/streams/").is_empty(), "no upload without a token");
}
