//! Delivery with real processes: the agent's spool across `kill -9`, and mutual TLS with the
//! node as identity. The whole-path proof under kills is in `noloss.rs` (its own binary: its
//! event storm would swamp tests running beside it).
// Test code: a failed step should stop the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
#[path = "support/kube_standin.rs"]
mod kube_standin;

use std::{collections::BTreeSet, process::Command, time::Duration};

use serde_json::Value;
use support::{Agent, Collector, TempDir, free_port, metric, tool, unique, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn seq_of(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap()
}

/// Waits until every event the agent produced is in its spool, flushed: the spool gauge
/// (updated after each flush) has caught up with the events counter.
fn wait_all_spooled(agent: &Agent, at_least: f64) {
    wait_for(WAIT, "every produced event flushed to the spool", || {
        let m = agent.metrics();
        let produced: f64 = ["exec", "fork", "exit", "status", "loss", "connection", "alert", "container_started"]
            .iter()
            .filter_map(|k| metric(&m, &format!("peregrine_agent_events_total{{kind=\"{k}\"}}")))
            .sum();
        let spooled = metric(&m, "peregrine_agent_spool_records")?;
        (produced >= at_least && spooled >= produced).then_some(())
    });
}

#[test]
fn the_spool_survives_kill_9_and_is_replayed_in_order() {
    let dir = TempDir::new("spool-kill");
    let spool = dir.path().join("spool");
    let spool_set = format!("spool.dir={}", spool.display());
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    // No collector yet: everything stays in the spool.
    let mut agent = Agent::start(dir.path(), &address, &[&spool_set]);
    let true_bin = tool("true");
    let markers: Vec<String> = (0..40).map(|i| unique(&format!("spooled{i}-"))).collect();
    for m in &markers {
        assert!(Command::new(&true_bin).arg(m).status().unwrap().success());
    }
    wait_all_spooled(&agent, 120.0);
    let run = {
        let m = agent.metrics();
        assert_eq!(metric(&m, "peregrine_agent_events_sent_total"), Some(0.0));
        assert!(metric(&m, "peregrine_agent_spool_bytes").unwrap() > 0.0);
        m
    };
    drop(run);
    // kill -9: no chance to flush or say goodbye.
    agent.proc.child.kill().unwrap();
    agent.proc.child.wait().unwrap();

    let collector = Collector::start_on(dir.path(), port);
    // The replay goes gzip-compressed (not the default): the collector takes both.
    let _agent = Agent::start(dir.path(), &address, &[&spool_set, "collector.compression=gzip"]);
    let last = markers.last().unwrap().clone();
    collector.wait_event(WAIT, "the last spooled exec, replayed", |e| e["kind"]["exec"]["process"]["argv"][1] == last.as_str());
    let events = collector.events();
    let replayed: Vec<&Value> = markers
        .iter()
        .map(|m| {
            let found: Vec<&Value> = events.iter().filter(|e| e["kind"]["exec"]["process"]["argv"][1] == m.as_str()).collect();
            assert_eq!(found.len(), 1, "marker {m} delivered exactly once: {}", found.len());
            found[0]
        })
        .collect();
    // Same run, in production order, by sequence number.
    let run_id = replayed[0]["agent_run"].clone();
    assert!(replayed.iter().all(|e| e["agent_run"] == run_id));
    assert!(replayed.windows(2).all(|w| seq_of(w[0]) < seq_of(w[1])), "replayed in order");
    // Nothing of the killed run is missing between its first event and its last spooled one.
    let seqs: BTreeSet<u64> = events.iter().filter(|e| e["agent_run"] == run_id).map(seq_of).collect();
    let max = *seqs.iter().next_back().unwrap();
    assert_eq!(seqs.len() as u64, max, "seqs 1..={max} of the killed run, without gaps");
}

/// A CA, the collector's server certificate (localhost, 127.0.0.1), and node certificates.
struct Pki {
    dir: std::path::PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &std::path::Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "peregrine test node CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let cert = ca.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
        Self { dir: dir.to_path_buf(), issuer: Issuer::new(ca, key) }
    }

    /// (cert, key) PEM files for `names`, for server or client use.
    fn leaf(&self, file: &str, names: &[&str], server: bool) -> (String, String) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    fn ca_key(&self) -> String {
        self.dir.join("ca.key").display().to_string()
    }
}

#[test]
fn mutual_tls_checks_the_node_identity() {
    let dir = TempDir::new("mtls");
    let pki = Pki::new(dir.path());
    let (server_cert, server_key) = pki.leaf("collector", &["localhost", "127.0.0.1"], true);
    let (node_cert, node_key) = pki.leaf("test-node", &["test-node"], false);
    let (other_cert, other_key) = pki.leaf("other-node", &["other-node"], false);
    let port = free_port();
    let collector = Collector::start_with(
        dir.path(),
        port,
        &[
            &format!("tls.cert_file={server_cert}"),
            &format!("tls.key_file={server_key}"),
            &format!("tls.client_ca_file={}", pki.ca()),
        ],
    );
    let https = format!("https://localhost:{port}");
    let tls_sets = |cert: &str, key: &str| {
        vec![
            format!("collector.tls.ca_file={}", pki.ca()),
            format!("collector.tls.cert_file={cert}"),
            format!("collector.tls.key_file={key}"),
        ]
    };
    // This node's certificate: delivered.
    let good_sets = tls_sets(&node_cert, &node_key);
    let good = Agent::start(dir.path(), &https, &good_sets.iter().map(String::as_str).collect::<Vec<_>>());
    let marker = unique("mtls-");
    assert!(Command::new(tool("true")).arg(&marker).status().unwrap().success());
    let e = collector.wait_event(WAIT, "an exec over mTLS", |e| e["kind"]["exec"]["process"]["argv"][1] == marker.as_str());
    assert_eq!(e["node"], "test-node");
    drop(good);

    // Another node's certificate claiming to be test-node: every batch refused, nothing
    // written, the events kept in that agent's spool.
    let mut sets = tls_sets(&other_cert, &other_key);
    sets.push("collector.max_backoff_ms=200".into());
    let impostor = Agent::start(dir.path(), &https, &sets.iter().map(String::as_str).collect::<Vec<_>>());
    let marker = unique("impostor-");
    assert!(Command::new(tool("true")).arg(&marker).status().unwrap().success());
    wait_for(WAIT, "the collector to refuse the impostor", || {
        collector.proc.stderr_text().contains("certificate is not valid for node `test-node`").then_some(())
    });
    wait_for(WAIT, "the impostor's events to stay spooled", || {
        metric(&impostor.metrics(), "peregrine_agent_spool_records").filter(|n| *n >= 1.0)
    });
    assert!(!collector.events().iter().any(|e| e["kind"]["exec"]["process"]["argv"][1] == marker.as_str()));
    drop(impostor);

    // A certificate for the right name from a CA the collector does not trust: the handshake
    // fails, nothing is sent, the collector carries on.
    let rogue_dir = dir.path().join("rogue");
    std::fs::create_dir_all(&rogue_dir).unwrap();
    let rogue = Pki::new(&rogue_dir);
    let (rogue_cert, rogue_key) = rogue.leaf("test-node", &["test-node"], false);
    let mut sets = tls_sets(&rogue_cert, &rogue_key);
    sets[0] = format!("collector.tls.ca_file={}", pki.ca());
    sets.push("collector.max_backoff_ms=200".into());
    let untrusted = Agent::start(dir.path(), &https, &sets.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for(WAIT, "events spooled by the agent with an untrusted certificate", || {
        metric(&untrusted.metrics(), "peregrine_agent_spool_records").filter(|n| *n >= 1.0)
    });
    assert_eq!(metric(&untrusted.metrics(), "peregrine_agent_events_sent_total"), Some(0.0));
    let mut collector = collector;
    assert!(collector.proc.alive(), "collector died: {}", collector.proc.stderr_text());
}

const AGENT_SA: &str = "system:serviceaccount:peregrine:peregrine-agent";

/// Enrollment end to end: the agent starts with no certificate, only its service-account
/// token; the collector has the (stand-in) Kubernetes API review the token through kube-rs,
/// signs a certificate for the node the token names, and the agent delivers with it. Tokens
/// for another node, another audience or another service account, and unknown tokens, get no
/// certificate and are refused with their reason; a client without a certificate cannot
/// stream events.
#[test]
fn a_node_enrolls_with_its_service_account_token_and_only_for_its_own_node() {
    let dir = TempDir::new("enroll");
    let pki = Pki::new(dir.path());
    let (server_cert, server_key) = pki.leaf("collector", &["localhost", "127.0.0.1"], true);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // A stand-in for the API server (none can run here); the collector asks it with kube-rs.
    let api = rt.block_on(kube_standin::KubeStandin::start());
    api.put_token("token-test-node", AGENT_SA, Some("test-node"), &["peregrine-collector"]);
    api.put_token("token-other-node", AGENT_SA, Some("other-node"), &["peregrine-collector"]);
    api.put_token("token-api-audience", AGENT_SA, Some("test-node"), &["https://kubernetes.default.svc.cluster.local"]);
    api.put_token("token-web", "system:serviceaccount:default:web", Some("test-node"), &["peregrine-collector"]);
    api.put_token("token-old-cluster", AGENT_SA, None, &["peregrine-collector"]);
    let collector_token = dir.path().join("collector-token");
    // As kubelet writes tokens: no newline (kube-rs sends the file's bytes as they are).
    std::fs::write(&collector_token, "collector-sa-token").unwrap();
    let port = free_port();
    let start_collector = |enroll_ca: &Pki| {
        Collector::start_with(
            dir.path(),
            port,
            &[
                &format!("tls.cert_file={server_cert}"),
                &format!("tls.key_file={server_key}"),
                &format!("enroll.ca_cert_file={}", enroll_ca.ca()),
                &format!("enroll.ca_key_file={}", enroll_ca.ca_key()),
                &format!("enroll.kubernetes.api_url={}", api.url()),
                &format!("enroll.kubernetes.token_file={}", collector_token.display()),
            ],
        )
    };
    let collector = start_collector(&pki);
    let https = format!("https://localhost:{port}");
    let sets_for = |name: &str, token: &str| {
        let token_file = dir.path().join(format!("{name}.token"));
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        vec![
            format!("collector.tls.ca_file={}", pki.ca()),
            format!("collector.tls.cert_file={}", dir.path().join(format!("{name}.pem")).display()),
            format!("collector.tls.key_file={}", dir.path().join(format!("{name}.key")).display()),
            format!("collector.tls.enroll_token_file={}", token_file.display()),
            "collector.max_backoff_ms=200".to_owned(),
        ]
    };
    let start = |sets: &[String]| Agent::start(dir.path(), &https, &sets.iter().map(String::as_str).collect::<Vec<_>>());

    // This node's token: a certificate for test-node, and events delivered with it.
    let good_sets = sets_for("enrolled", "token-test-node");
    let good = start(&good_sets);
    let marker = unique("enrolled-");
    assert!(Command::new(tool("true")).arg(&marker).status().unwrap().success());
    let e = collector.wait_event(WAIT, "an exec over an enrolled certificate", |e| {
        e["kind"]["exec"]["process"]["argv"][1] == marker.as_str()
    });
    assert_eq!(e["node"], "test-node");
    let reviews = api.token_reviews();
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    let review = reviews[0].body.as_ref().unwrap();
    assert_eq!(review["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(review["spec"]["token"], "token-test-node");
    assert_eq!(review["spec"]["audiences"], serde_json::json!(["peregrine-collector"]));
    assert_eq!(reviews[0].authorization.as_deref(), Some("Bearer collector-sa-token"), "the collector's own token");

    let pem = std::fs::read(dir.path().join("enrolled.pem")).unwrap();
    let (_, parsed) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = parsed.parse_x509().unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(sans, ["DNSName(test-node)"]);
    assert_eq!(cert.subject().to_string(), "CN=test-node");
    assert_eq!(cert.issuer().to_string(), "CN=peregrine test node CA");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth, "{eku:?}");
    let validity = cert.validity();
    assert_eq!(validity.not_after.timestamp() - validity.not_before.timestamp(), 86_400 + 300, "24 h, 5 min early");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("enrolled.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the node's key is readable by the agent only");
    assert!(collector.proc.stderr_text().contains("enrolled: node certificate issued"));
    drop(good);

    // A restart keeps the certificate it has: no second review.
    let again = start(&good_sets);
    let marker = unique("kept-");
    assert!(Command::new(tool("true")).arg(&marker).status().unwrap().success());
    collector.wait_event(WAIT, "an exec over the kept certificate", |e| e["kind"]["exec"]["process"]["argv"][1] == marker.as_str());
    assert_eq!(api.token_reviews().len(), 1);
    drop(again);

    // The enrollment CA is replaced by one of the same name with a new key (the collectors
    // restart with it): the kept certificate is refused in the handshake, dropped, and the
    // agent enrolls again at once.
    drop(collector);
    let rotated_dir = dir.path().join("rotated");
    std::fs::create_dir_all(&rotated_dir).unwrap();
    let rotated = Pki::new(&rotated_dir);
    let collector = start_collector(&rotated);
    let rotated_agent = start(&good_sets);
    let marker = unique("rotated-");
    assert!(Command::new(tool("true")).arg(&marker).status().unwrap().success());
    collector.wait_event(WAIT, "an exec after the CA rotation", |e| e["kind"]["exec"]["process"]["argv"][1] == marker.as_str());
    assert_eq!(api.token_reviews().len(), 2, "enrolled again");
    assert!(rotated_agent.proc.stderr_text().contains("the collector refused the enrolled certificate; enrolling again"));
    assert_ne!(std::fs::read(dir.path().join("enrolled.pem")).unwrap(), pem, "a new certificate, from the new CA");
    drop(rotated_agent);

    // A certificate due for renewal (two thirds of its life gone) whose renewal is refused
    // stays in use until it expires: the node is still heard.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut due = rcgen::CertificateParams::new(vec!["test-node".to_owned()]).unwrap();
    due.distinguished_name.push(rcgen::DnType::CommonName, "test-node");
    due.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    (due.not_before, due.not_after) = (now - time::Duration::minutes(50), now + time::Duration::minutes(10));
    std::fs::write(dir.path().join("due.pem"), due.signed_by(&key, &rotated.issuer).unwrap().pem()).unwrap();
    std::fs::write(dir.path().join("due.key"), key.serialize_pem()).unwrap();
    let due_agent = start(&sets_for("due", "token-nobody-issued"));
    let marker = unique("due-");
    assert!(Command::new(tool("true")).arg(&marker).status().unwrap().success());
    collector.wait_event(WAIT, "an exec over a certificate whose renewal failed", |e| {
        e["kind"]["exec"]["process"]["argv"][1] == marker.as_str()
    });
    assert!(due_agent.proc.stderr_text().contains("renewing the node certificate failed; using the current one until it expires"));
    drop(due_agent);

    // Every other token: refused with its reason, no certificate, nothing sent.
    let refused = [
        ("other-node", "token-other-node", "the token is from node `other-node`, not `test-node`"),
        // The API server itself refuses a token for another audience.
        (
            "api-audience",
            "token-api-audience",
            "did not authenticate the token: [invalid bearer token, token audiences [\"https://kubernetes.default.svc.cluster.local\"] is invalid for the target audiences [\"peregrine-collector\"]]",
        ),
        ("web", "token-web", "`system:serviceaccount:default:web` may not enroll (enroll.service_accounts)"),
        ("old-cluster", "token-old-cluster", "the token names no node (authentication.kubernetes.io/node-name)"),
        ("unknown", "token-nobody-issued", "the Kubernetes API did not authenticate the token: [invalid bearer token"),
    ];
    for (name, token, why) in refused {
        let agent = start(&sets_for(name, token));
        wait_for(WAIT, &format!("the collector to refuse {name}"), || collector.proc.stderr_text().contains(why).then_some(()));
        wait_for(WAIT, &format!("agent {name} to report the refusal"), || {
            agent.proc.stderr_text().contains("the collector refused to enroll node `test-node`").then_some(())
        });
        assert!(agent.proc.stderr_text().contains(why), "the agent names the reason: {}", agent.proc.stderr_text());
        assert!(!dir.path().join(format!("{name}.pem")).exists() && !dir.path().join(format!("{name}.key")).exists());
        assert_eq!(metric(&agent.metrics(), "peregrine_agent_events_sent_total"), Some(0.0));
    }
    let metrics = support::http_get(collector.http_port, "/metrics").unwrap().1;
    assert_eq!(metric(&metrics, r#"peregrine_collector_enrollments_total{result="issued"}"#), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, r#"peregrine_collector_enrollments_total{result="denied"}"#).map(|n| n >= 3.0), Some(true));
    assert_eq!(metric(&metrics, r#"peregrine_collector_enrollments_total{result="unauthenticated"}"#).map(|n| n >= 2.0), Some(true));

    // Enrollment lets clients without a certificate through the handshake; they still cannot
    // stream events.
    let status = rt.block_on(async {
        use peregrine_proto::v1::{EventBatchRaw, ingest_client::IngestClient};
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(pki.ca()).unwrap()));
        let channel = Endpoint::from_shared(https.clone()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
        let batch = EventBatchRaw { batch_seq: 1, events: vec![] };
        let outcome = tokio::time::timeout(WAIT, IngestClient::new(channel).stream(tokio_stream::iter([batch]))).await;
        outcome.expect("the collector answers").expect_err("no stream without a client certificate")
    });
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().starts_with("no client certificate"), "{status:?}");
    let mut collector = collector;
    assert!(collector.proc.alive(), "collector died: {}", collector.proc.stderr_text());
}

/// The unix instant up to which a status event says everything was observed (its barrier).
fn barrier_unix_ns(status: &Value) -> u64 {
    let behind = status["boot_ns"].as_u64().unwrap() - status["kind"]["status"]["drained_until_boot_ns"].as_u64().unwrap();
    status["time_unix_nano"].as_u64().unwrap() - behind
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn restarts_are_reported_as_observation_gaps_with_their_bounds() {
    let dir = TempDir::new("gap");
    let spool_set = format!("spool.dir={}", dir.path().join("spool").display());
    let collector = Collector::start(dir.path());
    // AgentStatus.Phase: 1 started, 2 heartbeat, 3 stopping.
    let status_of = |run: &Value, phase: u64| {
        let run = run.clone();
        move |e: &Value| e["agent_run"] == run && e["kind"]["status"]["phase"] == phase
    };
    let run_of = |after: &BTreeSet<String>| {
        collector
            .wait_event(WAIT, "a new agent run's first status", |e| {
                !e["kind"]["status"].is_null() && !after.contains(e["agent_run"].as_str().unwrap())
            })["agent_run"]
            .clone()
    };
    let mut runs = BTreeSet::new();

    // 1. A first start has nothing before it: no gap.
    let mut first = Agent::start(dir.path(), &collector.address(), &[&spool_set]);
    let run1 = run_of(&runs);
    runs.insert(run1.as_str().unwrap().to_owned());
    // 2. A clean stop, then a start: the gap runs from the stop's barrier to the new attach.
    first.proc.terminate();
    let mut second = Agent::start(dir.path(), &collector.address(), &[&spool_set]);
    // The stopping status may have stayed in the spool (the sender stops without waiting for
    // acknowledgements): the next run delivers it.
    let stopping = collector.wait_event(WAIT, "the first run's stopping status", status_of(&run1, 3));
    let run2 = run_of(&runs);
    runs.insert(run2.as_str().unwrap().to_owned());
    let gap = collector.wait_event(WAIT, "the second run's gap", |e| e["agent_run"] == run2 && e["kind"]["loss"]["reason"] == "observation_gap");
    let started = collector.wait_event(WAIT, "the second run's start", status_of(&run2, 1));
    let loss = &gap["kind"]["loss"];
    assert_eq!(loss["gap_start_unix_nano"].as_u64().unwrap(), barrier_unix_ns(&stopping), "{gap}");
    let end = loss["gap_end_unix_nano"].as_u64().unwrap();
    assert!(end > barrier_unix_ns(&stopping) && end <= started["time_unix_nano"].as_u64().unwrap(), "{gap}\n{started}");
    assert_eq!(loss["detail"], format!("previous agent {} stopped", env!("CARGO_PKG_VERSION")));
    assert!(gap["seq"].as_u64().unwrap() < started["seq"].as_u64().unwrap(), "the gap is the run's first word");
    assert_eq!(metric(&second.metrics(), "peregrine_agent_observation_gaps_total"), Some(1.0));
    assert!(collector.events().iter().all(|e| !(e["agent_run"] == run1 && e["kind"]["loss"]["reason"] == "observation_gap")));

    // 3. kill -9 after a heartbeat: the gap starts at the last status that reached the spool
    //    (the next run replays it), before the kill.
    collector.wait_event(WAIT, "a heartbeat of the second run", status_of(&run2, 2));
    let killed_at = now_unix_ns();
    second.proc.child.kill().unwrap();
    second.proc.child.wait().unwrap();
    let _third = Agent::start(dir.path(), &collector.address(), &[&spool_set]);
    let run3 = run_of(&runs);
    let gap = collector.wait_event(WAIT, "the third run's gap", |e| e["agent_run"] == run3 && e["kind"]["loss"]["reason"] == "observation_gap");
    let loss = &gap["kind"]["loss"];
    let start = loss["gap_start_unix_nano"].as_u64().unwrap();
    assert!(start <= killed_at, "the gap starts before the kill: {gap}");
    assert!(loss["gap_end_unix_nano"].as_u64().unwrap() > killed_at);
    assert_eq!(loss["detail"], format!("previous agent {} ended without stopping (crash, kill, OOM kill or node reboot)", env!("CARGO_PKG_VERSION")));
    collector.wait_event(WAIT, "the status of the killed run that the gap starts at", |e| {
        e["agent_run"] == run2 && !e["kind"]["status"].is_null() && barrier_unix_ns(e) == start
    });
}
