//! Several outputs built from one `[[outputs]]` config: routing, redaction, fan-out, and the
//! OCSF encoding's required attributes.

// Test scaffolding: a failed step stops the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use peregrine_collector::{
    config::CollectorConfig,
    output::{OutputMetrics, Outputs},
};
use peregrine_service::config::Layers;
use serde_json::Value;
use support::*;

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn outputs_route_redact_and_encode_independently() {
    let dir = TempDir::new("outputs");
    let all = dir.path().join("all.jsonl");
    let alerts = dir.path().join("alerts.jsonl");
    let ocsf = dir.path().join("ocsf.jsonl");
    let conf = dir.path().join("collector.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[output]
kind = "file"
path = "{all}"

[[outputs]]
kind = "file"
name = "alerts"
path = "{alerts}"
kinds = ["alert"]
min_priority = "Warning"
redact_argv_patterns = ['--token=\S+']

[[outputs]]
kind = "ocsf_file"
name = "ocsf"
path = "{ocsf}"
redact_argv_patterns = ['--token=\S+']
"#,
            all = all.display(),
            alerts = alerts.display(),
            ocsf = ocsf.display()
        ),
    )
    .unwrap();
    let config: CollectorConfig = Layers::new().file(&conf).unwrap().build().unwrap();
    let metrics = OutputMetrics::default();
    let outputs = Outputs::build(&config.effective_outputs(), &metrics).unwrap();
    assert_eq!(outputs.names(), ["output", "alerts", "ocsf"]);

    let mut secret_alert = alert_event("a-1", 3, "Token on command line", "Critical");
    if let Some(peregrine_proto::Kind::Alert(a)) = &mut secret_alert.kind {
        a.output = "cmd=curl --token=abc123".into();
        a.process.as_mut().unwrap().argv = vec!["curl".into(), "--token=abc123".into()];
    }
    let batch = vec![
        exec_event("e-1", 1, &["curl", "--token=abc123", "https://x"]),
        exit_event("e-2", 2),
        secret_alert,
        alert_event("a-2", 4, "Chatty rule", "Notice"),
        connection_event("c-1", 5, "connect", "refused"),
    ];
    outputs.deliver(&batch).await.unwrap();

    // The legacy output: everything, unredacted (it has no patterns).
    let got = lines(&all);
    assert_eq!(got.iter().map(|e| e["id"].as_str().unwrap()).collect::<Vec<_>>(), ["e-1", "e-2", "a-1", "a-2", "c-1"]);
    assert_eq!(got[0]["kind"]["exec"]["process"]["argv"][1], "--token=abc123");

    // Alerts only, Warning and above, redacted.
    let got = lines(&alerts);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["kind"]["alert"]["output"], "cmd=curl [REDACTED]");
    assert_eq!(got[0]["kind"]["alert"]["process"]["argv"][1], "[REDACTED]");
    assert_eq!(metrics.filtered.get_or_create(&peregrine_collector::output::metrics::OutputLabel { output: "alerts".into() }).get(), 4);

    // OCSF: Process Activity for exec/exit, Detection Finding for alerts, Network Activity for
    // connections, redacted.
    let got = lines(&ocsf);
    let classes: Vec<(u64, u64)> =
        got.iter().map(|e| (e["class_uid"].as_u64().unwrap(), e["type_uid"].as_u64().unwrap())).collect();
    assert_eq!(classes, [(1007, 100701), (1007, 100702), (2004, 200401), (2004, 200401), (4001, 400105)]);
    assert_eq!(got[0]["process"]["cmd_line"], "curl [REDACTED] https://x");
    for e in &got {
        // Base-event attributes OCSF 1.3.0 requires, and those of each class (hand-checked
        // against the schema's class definitions; not a schema validator).
        for k in ["activity_id", "category_uid", "class_uid", "type_uid", "time", "severity_id", "metadata"] {
            assert!(!e[k].is_null(), "{k} missing in {e}");
        }
        assert_eq!(e["metadata"]["version"], "1.3.0");
        assert_eq!(e["metadata"]["product"]["name"], "Peregrine");
        assert_eq!(e["metadata"]["product"]["vendor_name"], "Peregrine");
        let required: &[&str] = match e["class_uid"].as_u64() {
            Some(1007) => &["actor", "process", "device"],
            Some(4001) => &["dst_endpoint", "connection_info", "device"],
            _ => &["finding_info"],
        };
        for k in required {
            assert!(!e[*k].is_null(), "{k} missing in {e}");
        }
    }
    assert_eq!(got[2]["finding_info"]["title"], "Token on command line");
    assert_eq!(got[2]["severity_id"], 5);
    assert_eq!(got[3]["severity_id"], 2);
    assert_eq!(got[1]["exit_code"], 0);
    let c = &got[4];
    assert_eq!((c["activity_name"].as_str(), c["status"].as_str(), c["status_detail"].as_str(), c["status_code"].as_str()), (Some("Refuse"), Some("Failure"), Some("refused"), Some("111")));
    assert_eq!((c["src_endpoint"]["ip"].as_str(), c["src_endpoint"]["port"].as_u64()), (Some("10.244.1.7"), Some(40112)));
    assert_eq!((c["dst_endpoint"]["ip"].as_str(), c["dst_endpoint"]["port"].as_u64(), c["dst_endpoint"]["domain"].as_str()), (Some("203.0.113.9"), Some(443), Some("example.test")));
    assert_eq!((c["connection_info"]["protocol_num"].as_u64(), c["connection_info"]["direction_id"].as_u64()), (Some(6), Some(2)));
    assert_eq!(c["actor"]["process"]["pid"], 4343);
}

/// `filter`, in the rules language: exec and connection events are sent only when it holds;
/// kinds it cannot see (exit) pass; a broken condition is refused at load with the reason.
#[tokio::test]
async fn a_filter_in_the_rules_language_selects_what_an_output_sends() {
    let dir = TempDir::new("outputs-filter");
    let out = dir.path().join("curl.jsonl");
    let conf = dir.path().join("collector.toml");
    std::fs::write(
        &conf,
        format!(
            "[[outputs]]\nkind = \"file\"\nname = \"curl\"\npath = \"{}\"\nfilter = \"proc.name = curl and not fd.sip in (198.18.0.1)\"\n",
            out.display()
        ),
    )
    .unwrap();
    let config: CollectorConfig = Layers::new().file(&conf).unwrap().build().unwrap();
    let metrics = OutputMetrics::default();
    let outputs = Outputs::build(&config.effective_outputs(), &metrics).unwrap();
    let mut internal = connection_event("c-2", 5, "connect", "established");
    if let Some(peregrine_proto::Kind::Connection(c)) = &mut internal.kind {
        c.remote_ip = "198.18.0.1".into();
    }
    let batch = vec![
        exec_event("e-1", 1, &["sh", "-c", "id"]),
        exec_event("e-2", 2, &["curl", "https://x"]),
        exit_event("x-1", 3),
        connection_event("c-1", 4, "connect", "established"),
        internal,
    ];
    outputs.deliver(&batch).await.unwrap();
    let got: Vec<String> = lines(&out).iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, ["e-2", "x-1", "c-1"]);
    assert_eq!(metrics.filtered.get_or_create(&peregrine_collector::output::metrics::OutputLabel { output: "curl".into() }).get(), 2);

    for (condition, expected) in [("proc.nme = curl", "proc.nme"), ("proc.name = ", "filter")] {
        std::fs::write(&conf, format!("[[outputs]]\nkind = \"stdout\"\nfilter = \"{condition}\"\n")).unwrap();
        let err = Layers::new().file(&conf).and_then(|l| l.build::<CollectorConfig>()).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("outputs[0].filter") && err.contains(expected), "{condition}: {err}");
    }
}
