//! OCSF Detection Findings (alerts) validated by an independent implementation of the schema:
//! py-ocsf-models 0.10.0 (PyPI), which models OCSF 1.5.0, run from the project venv, over our
//! encoding at `version = "1.5.0"` (a version the output supports). The library's release for
//! 1.3.0, our default, is 0.2.0, which pins pydantic 1 and so cannot share the venv with
//! checkov (pydantic 2); the attributes we use are the same in both versions.
//!
//! The library models the Findings category only (no Process or Network Activity), so those
//! classes keep the hand-checked required attributes of `collector/tests/outputs.rs`.
//!
//! Where the library is narrower than OCSF 1.5.0 itself, pinned so anything else fails: it
//! lacks attributes OCSF 1.5.0 defines for this class that we send, `device` (the Host
//! profile), `container` (the Container profile) and `evidences[].process` (Evidence
//! Artifacts), so it cannot check them.

// Test scaffolding: a failed step stops the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{collections::BTreeSet, io::Write, process::Command};

use peregrine_collector::output::ocsf;
use peregrine_proto::Kind;
use serde_json::Value;
use support::*;

const VERSION: &str = "1.5.0";
const LIBRARY_LACKS: &[&str] = &["container", "device", "evidences[].process"];

/// Runs the validator over `events`; one result per event.
fn validate(events: &[Value]) -> Vec<Value> {
    let python = tool("/opt/peregrine/py/bin/python3");
    tool("/opt/peregrine/py/lib/python3.11/site-packages/py_ocsf_models/__init__.py");
    let dir = TempDir::new("ocsf-models");
    let input = dir.path().join("events.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for e in events {
        writeln!(f, "{e}").unwrap();
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ocsf_validate.py");
    let out = Command::new(python).arg(script).arg(&input).output().unwrap();
    assert!(out.status.success(), "the validator failed: {}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(results.len(), events.len(), "one result per event");
    results
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

fn findings() -> Vec<Value> {
    let mut out = Vec::new();
    for (i, p) in ["Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug"].iter().enumerate() {
        let e = alert_event(&format!("a-{i}"), i as u64, "Shell in container", p);
        out.push(ocsf::encode(&e, VERSION).unwrap());
        out.push(ocsf::encode(&in_container(e), VERSION).unwrap());
    }
    let mut folded = alert_event("a-f", 30, "Folded", "Warning");
    if let Some(Kind::Alert(a)) = &mut folded.kind {
        a.process = None;
        a.folded = true;
        a.count = 12;
        a.event_id.clear();
    }
    out.push(ocsf::encode(&folded, VERSION).unwrap());
    out
}

/// The model accepts every finding and keeps every attribute we send but those it lacks.
#[test]
fn every_detection_finding_passes_py_ocsf_models() {
    let events = findings();
    for (e, r) in events.iter().zip(validate(&events)) {
        assert_eq!(r["uid"], e["metadata"]["uid"]);
        assert_eq!(e["metadata"]["version"], VERSION);
        assert!(strings(&r["errors"]).is_empty(), "{}: {}\n{e}", r["uid"], r["errors"]);
        let unknown = strings(&r["unknown"]);
        let lacks: BTreeSet<String> = LIBRARY_LACKS.iter().map(|s| s.to_string()).collect();
        assert!(unknown.is_subset(&lacks), "{}: attributes the model does not define: {:?}\n{e}", r["uid"], unknown.difference(&lacks).collect::<Vec<_>>());
    }
}

#[test]
fn the_validator_reports_a_missing_title_a_wrong_class_and_an_unknown_attribute() {
    let good = findings().remove(0);
    let mut no_title = good.clone();
    no_title["finding_info"].as_object_mut().unwrap().remove("title");
    let mut bad_type = good.clone();
    bad_type["type_uid"] = Value::from(100701);
    let mut extra = good.clone();
    extra["finding_info"]["titel"] = Value::from("typo");
    let r = validate(&[good, no_title, bad_type, extra]);
    assert!(strings(&r[0]["errors"]).is_empty(), "{}", r[0]);
    assert_eq!(strings(&r[1]["errors"]), ["finding_info.title: Field required".to_owned()].into());
    assert!(strings(&r[2]["errors"]).iter().any(|e| e.starts_with("type_uid:")), "{}", r[2]);
    assert!(strings(&r[3]["unknown"]).contains("finding_info.titel"), "{}", r[3]);
}
