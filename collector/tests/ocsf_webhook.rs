//! The `ocsf_webhook` output against a real HTTPS receiver started here (hyper + rustls on
//! 127.0.0.1, the test CA): exact OCSF events in JSON arrays, gzip, the Authorization header
//! read from its file at every request (rotation without restart), 503 and 429 retried, a
//! rejected row set aside while the rest is delivered, a refused credential named.

// Test scaffolding: a failed step stops the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::VecDeque,
    io::Read,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use peregrine_collector::{
    config::CollectorConfig,
    output::{OutputMetrics, Outputs},
};
use peregrine_service::config::Layers;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use support::*;

#[derive(Debug, Clone)]
struct Received {
    authorization: String,
    gzip: bool,
    content_type: String,
    events: Vec<Value>,
}

#[derive(Default)]
struct Receiver {
    /// Statuses to answer with before accepting (204); `(429, n)` adds `Retry-After: n`.
    script: VecDeque<(u16, u64)>,
    accepted: Vec<Received>,
    statuses: Vec<u16>,
}

async fn receiver(ca: &TestCa) -> (u16, Arc<Mutex<Receiver>>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(ca.cert_der.clone())], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca.key_der.clone())))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = Arc::new(Mutex::new(Receiver::default()));
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, st) = (acceptor.clone(), st.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = service_fn(move |req| handle(st.clone(), req));
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    (port, state)
}

async fn handle(st: Arc<Mutex<Receiver>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let header = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (authorization, encoding, content_type) = (header("authorization"), header("content-encoding"), header("content-type"));
    let body = req.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    let gzip = encoding == "gzip";
    let raw = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out)?;
        out
    } else {
        body.to_vec()
    };
    let mut st = st.lock().map_err(|_| std::io::Error::other("poisoned"))?;
    let events: Vec<Value> = serde_json::from_slice(&raw).map_err(std::io::Error::other)?;
    let (status, retry_after) = if events.iter().any(|e| e.to_string().contains("POISON")) {
        (400, 0)
    } else {
        st.script.pop_front().unwrap_or((204, 0))
    };
    st.statuses.push(status);
    if status == 204 {
        st.accepted.push(Received { authorization, gzip, content_type, events });
    }
    let mut r = Response::new(Full::new(Bytes::from_static(b"{\"error\":\"scripted\"}")));
    *r.status_mut() = hyper::StatusCode::from_u16(status).map_err(std::io::Error::other)?;
    if retry_after > 0 {
        r.headers_mut().insert("retry-after", retry_after.into());
    }
    Ok(r)
}

fn outputs(dir: &std::path::Path, port: u16, ca: &TestCa, extra: &str) -> Outputs {
    let conf = dir.join("collector.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[[outputs]]
kind = "ocsf_webhook"
name = "lake"
url = "https://127.0.0.1:{port}/ocsf"
ca_file = "{ca}"
authorization_file = "{auth}"
dead_letter_path = "{dead}"
request_timeout_ms = 5000
retry = {{ max_retries = 4, initial_backoff_ms = 20, max_backoff_ms = 100, max_retry_after_ms = 2000 }}
{extra}
"#,
            ca = ca.ca_pem.display(),
            auth = dir.join("authorization").display(),
            dead = dir.join("dead.jsonl").display(),
        ),
    )
    .unwrap();
    let config: CollectorConfig = Layers::new().file(&conf).unwrap().build().unwrap();
    Outputs::build(&config.effective_outputs(), &OutputMetrics::default()).unwrap()
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("the send finished within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsf_events_arrive_exactly_through_retries_with_the_current_authorization() {
    let dir = TempDir::new("webhook");
    let ca = TestCa::new(dir.path());
    let (port, rx) = receiver(&ca).await;
    std::fs::write(dir.path().join("authorization"), "Bearer first-token\n").unwrap();
    let out = outputs(dir.path(), port, &ca, "gzip = true");
    rx.lock().unwrap().script.extend([(503, 0), (429, 1)]);

    let batch = vec![exec_event("e-1", 1, &["sh", "-c", "id"]), connection_event("c-1", 2, "connect", "refused"), alert_event("a-1", 3, "Rule", "Critical")];
    bounded(out.deliver(&batch)).await.unwrap();
    {
        let r = rx.lock().unwrap();
        assert_eq!(r.statuses, [503, 429, 204]);
        assert_eq!(r.accepted.len(), 1);
        let got = &r.accepted[0];
        assert_eq!((got.authorization.as_str(), got.gzip, got.content_type.as_str()), ("Bearer first-token", true, "application/json"));
        let classes: Vec<(u64, &str)> = got.events.iter().map(|e| (e["class_uid"].as_u64().unwrap(), e["metadata"]["uid"].as_str().unwrap())).collect();
        assert_eq!(classes, [(1007, "e-1"), (4001, "c-1"), (2004, "a-1")]);
        // Exactly what the file output writes for the same event.
        assert_eq!(got.events[1], peregrine_collector::output::ocsf::encode(&batch[1], "1.3.0").unwrap());
    }

    // A rotated secret is used by the next request, without rebuilding the output.
    std::fs::write(dir.path().join("authorization"), "Bearer second-token").unwrap();
    bounded(out.deliver(&[exit_event("e-2", 4)])).await.unwrap();
    assert_eq!(rx.lock().unwrap().accepted[1].authorization, "Bearer second-token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_row_is_set_aside_and_the_rest_delivered() {
    let dir = TempDir::new("webhook-reject");
    let ca = TestCa::new(dir.path());
    let (port, rx) = receiver(&ca).await;
    std::fs::write(dir.path().join("authorization"), "Splunk abc").unwrap();
    let out = outputs(dir.path(), port, &ca, "");
    let mut poison = exec_event("e-3", 3, &["echo", "POISON"]);
    poison.node = "node-1".into();
    let batch = vec![exec_event("e-1", 1, &["true"]), exec_event("e-2", 2, &["true"]), poison, exec_event("e-4", 4, &["true"])];
    bounded(out.deliver(&batch)).await.unwrap();
    let delivered: Vec<String> =
        rx.lock().unwrap().accepted.iter().flat_map(|r| r.events.iter().map(|e| e["metadata"]["uid"].as_str().unwrap().to_owned())).collect();
    assert_eq!(delivered, ["e-1", "e-2", "e-4"]);
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    let lines: Vec<Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{dead}");
    assert!(dead.contains("e-3") && dead.contains("rejected_400"), "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_fails_the_batch_naming_its_file() {
    let dir = TempDir::new("webhook-401");
    let ca = TestCa::new(dir.path());
    let (port, rx) = receiver(&ca).await;
    std::fs::write(dir.path().join("authorization"), "Bearer expired").unwrap();
    let out = outputs(dir.path(), port, &ca, "");
    rx.lock().unwrap().script.extend([(401, 0)]);
    let err = bounded(out.deliver(&[exec_event("e-1", 1, &["true"])])).await.unwrap_err().to_string();
    assert!(err.contains("refused the Authorization header from") && err.contains("authorization") && err.contains("batch is kept for retry"), "{err}");
    assert_eq!(rx.lock().unwrap().statuses, [401], "no retry with the same refused credential");
}

#[test]
fn plain_http_is_refused_except_to_this_machine() {
    let dir = TempDir::new("webhook-config");
    for (url, ok) in [("http://203.0.113.5/ocsf", false), ("http://127.0.0.1:9/ocsf", true), ("http://localhost/x", true), ("https://lake.example.test/ocsf", true)] {
        let conf = dir.path().join("c.toml");
        std::fs::write(&conf, format!("[[outputs]]\nkind = \"ocsf_webhook\"\nurl = \"{url}\"\n")).unwrap();
        let r = Layers::new().file(&conf).and_then(|l| l.build::<CollectorConfig>());
        match (r, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => {
                let e = e.to_string();
                assert!(e.contains("url") && e.contains("is not an https:// URL"), "{e}");
            }
            (r, _) => panic!("{url}: {:?}", r.map(|_| ())),
        }
    }
}
