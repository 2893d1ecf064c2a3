//! ASIM rows validated against Microsoft's own field catalogue, ASimTester.csv from the
//! Azure-Sentinel repository (../shared/corpus/asim/, see its SOURCE.md): columns, types,
//! classes (Mandatory, Recommended, Optional, Conditional, Alias) and allowed values.
//!
//! A ProcessEvent row is checked *as Sentinel shows it* in `ASimProcessEventLogs`: what we
//! send plus what the native table supplies (`Type` = the table, `EventSchema` =
//! `ProcessEvent`, `EventUid` = the record's `_ItemId`, and the `Dvc` alias of DvcHostname).
//! The catalogue has no AlertEvent rows, so alert rows are checked against the Common schema.
//!
//! One documented exemption: the catalogue's EventVendor/EventProduct value lists are the
//! registry of products Microsoft ships parsers for (`Microsoft|SentinelOne`, ...). Peregrine
//! is not registered there; its own name is accepted for those two columns only.

// Test scaffolding: a failed step stops the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;

use peregrine_collector::output::asim;
use serde_json::{Map, Value, json};
use support::*;

const VENDOR_REGISTRY: &[&str] = &["EventVendor", "EventProduct"];
/// Columns of the ProcessEvent schema that the native table fills in itself.
const TABLE_SUPPLIED: &[&str] = &["Type", "EventSchema", "EventUid", "Dvc"];

#[derive(Debug, Clone)]
struct Column {
    ty: String,
    class: String,
    logical: String,
    values: Vec<String>,
    aliased: String,
}

type Catalogue = BTreeMap<String, BTreeMap<String, Column>>;

fn catalogue() -> Catalogue {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/asim/ASimTester.csv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("Microsoft's ASIM catalogue is missing at {}: {e} (it comes with shared/corpus/asim; see SOURCE.md there)", path.display())
    });
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("ColumnName,ColumnType,Class,Schema,LogicalType,ListOfValues,Aliased"), "unexpected header");
    let mut cat = Catalogue::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 7, "row without 7 fields: {line}");
        let values = f[5].split('|').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect();
        cat.entry(f[3].to_owned()).or_default().insert(
            f[0].to_owned(),
            Column { ty: f[1].to_owned(), class: f[2].to_owned(), logical: f[4].to_owned(), values, aliased: f[6].to_owned() },
        );
    }
    cat
}

fn is_datetime(s: &str) -> bool {
    // yyyy-mm-ddThh:mm:ss[.f+](Z|+hh:mm)
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s[19..].contains('+') || s[19..].contains('-'))
        && s[..4].bytes().chain(s[5..7].bytes()).chain(s[8..10].bytes()).all(|c| c.is_ascii_digit())
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "int" | "long" => v.is_i64() || v.is_u64(),
        "real" => v.is_number(),
        "bool" | "boolean" => v.is_boolean(),
        "datetime" => v.as_str().is_some_and(is_datetime),
        "dynamic" => v.is_object() || v.is_array(),
        // "string", and the catalogue's own typos ("sting", a logical type in the type column).
        _ => v.is_string(),
    }
}

fn present(row: &Map<String, Value>, k: &str) -> bool {
    row.get(k).is_some_and(|v| !v.is_null() && v.as_str() != Some(""))
}

/// Every problem of `row` against `schema` (and, when `closed`, columns it does not define).
fn validate(cat: &Catalogue, schema: &str, row: &Map<String, Value>, closed: bool) -> Vec<String> {
    let cols = cat.get(schema).unwrap_or_else(|| panic!("no {schema} rows in ASimTester.csv"));
    let mut errors = Vec::new();
    for (name, c) in cols {
        let has = present(row, name);
        match c.class.as_str() {
            "Mandatory" if !has => errors.push(format!("{name}: Mandatory but missing")),
            "Conditional" if !has && !c.aliased.is_empty() && c.aliased.split('|').any(|a| present(row, a)) => {
                errors.push(format!("{name}: Conditional on {} (present) but missing", c.aliased))
            }
            _ => {}
        }
        let Some(v) = row.get(name) else { continue };
        if !type_ok(&c.ty, v) {
            errors.push(format!("{name}: {v} is not of type {}", c.ty));
        }
        if !c.values.is_empty()
            && !VENDOR_REGISTRY.contains(&name.as_str())
            && let Some(s) = v.as_str()
            && !c.values.iter().any(|a| a == s)
        {
            errors.push(format!("{name}: `{s}` is not an allowed value ({})", c.values.join("|")));
        }
        let _ = &c.logical;
    }
    if closed {
        for k in row.keys() {
            match cols.get(k) {
                None => errors.push(format!("{k}: not a column of the {schema} schema")),
                Some(c) if c.class == "Alias" => errors.push(format!("{k}: an alias, not a column to send")),
                _ => {}
            }
        }
    }
    errors
}

/// The row as `ASimProcessEventLogs` shows it: ours plus what the table supplies.
fn as_queried_process(sent: &Map<String, Value>) -> Map<String, Value> {
    let mut r = sent.clone();
    r.insert("Type".into(), json!("ASimProcessEventLogs"));
    r.insert("EventSchema".into(), json!("ProcessEvent"));
    r.insert("EventUid".into(), json!("stand-in-item-id"));
    r.insert("Dvc".into(), sent.get("DvcHostname").cloned().unwrap_or(Value::Null));
    r
}

fn process_rows() -> Vec<Map<String, Value>> {
    let mut no_ancestors = exec_event("e-4", 4, &["/bin/true"]);
    if let Some(peregrine_proto::Kind::Exec(x)) = &mut no_ancestors.kind {
        x.ancestors.clear();
        if let Some(p) = &mut x.process {
            p.cwd.clear();
            p.start_boot_ns = 0;
        }
    }
    [exec_event("e-1", 1, &["sh", "-c", "id"]), exit_event("e-2", 2), no_ancestors]
        .iter()
        .map(|e| {
            let (table, row) = asim::row(e).unwrap();
            assert_eq!(table, asim::Table::Process);
            row.as_object().unwrap().clone()
        })
        .collect()
}

#[test]
fn every_process_row_passes_the_process_event_schema() {
    let cat = catalogue();
    for sent in process_rows() {
        for k in TABLE_SUPPLIED {
            assert!(!sent.contains_key(*k), "{k} is supplied by the native table and must not be sent");
        }
        let errors = validate(&cat, "ProcessEvent", &as_queried_process(&sent), true);
        assert!(errors.is_empty(), "{} row fails: {errors:#?}", sent["EventType"]);
    }
}

#[test]
fn every_alert_row_passes_the_common_schema() {
    let cat = catalogue();
    for (i, p) in ["Emergency", "Critical", "Warning", "Notice", "Informational", "Debug"].iter().enumerate() {
        let e = alert_event(&format!("a-{i}"), i as u64, "Rule", p);
        let (table, row) = asim::row(&e).unwrap();
        assert_eq!(table, asim::Table::Alert);
        let mut row = row.as_object().unwrap().clone();
        row.insert("Type".into(), json!("PeregrineAlerts_CL"));
        let errors = validate(&cat, "Common", &row, false);
        assert!(errors.is_empty(), "{p}: {errors:#?}");
    }
}

#[test]
fn the_validator_catches_missing_mandatory_and_unlisted_values() {
    let cat = catalogue();
    let good = as_queried_process(&process_rows()[0]);
    assert!(validate(&cat, "ProcessEvent", &good, true).is_empty());

    let mut missing = good.clone();
    missing.remove("TargetProcessCommandLine");
    assert_eq!(validate(&cat, "ProcessEvent", &missing, true), ["TargetProcessCommandLine: Mandatory but missing"]);

    let mut bad_value = good.clone();
    bad_value.insert("EventResult".into(), json!("Maybe"));
    assert_eq!(
        validate(&cat, "ProcessEvent", &bad_value, true),
        ["EventResult: `Maybe` is not an allowed value (Success|Failure|Partial|NA)"]
    );

    let mut bad_type = good.clone();
    bad_type.insert("EventCount".into(), json!("1"));
    assert_eq!(validate(&cat, "ProcessEvent", &bad_type, true), ["EventCount: \"1\" is not of type int"]);

    let mut conditional = good.clone();
    conditional.remove("ActorUsernameType");
    assert_eq!(validate(&cat, "ProcessEvent", &conditional, true), ["ActorUsernameType: Conditional on ActorUsername (present) but missing"]);

    let mut unknown = good;
    unknown.insert("ProcessCmd".into(), json!("x"));
    unknown.insert("CommandLine".into(), json!("x"));
    assert_eq!(
        validate(&cat, "ProcessEvent", &unknown, true),
        ["CommandLine: an alias, not a column to send", "ProcessCmd: not a column of the ProcessEvent schema"]
    );
}

/// The row as `ASimNetworkSessionLogs` shows it: ours plus what the table supplies.
fn as_queried_network(sent: &Map<String, Value>) -> Map<String, Value> {
    let mut r = sent.clone();
    r.insert("Type".into(), json!("ASimNetworkSessionLogs"));
    r.insert("EventSchema".into(), json!("NetworkSession"));
    r.insert("EventUid".into(), json!("stand-in-item-id"));
    r
}

fn network_row(e: &peregrine_proto::Event) -> Map<String, Value> {
    let (table, row) = asim::row(e).unwrap();
    assert_eq!(table, asim::Table::Network);
    row.as_object().unwrap().clone()
}

#[test]
fn every_connection_row_passes_the_network_session_schema() {
    let cat = catalogue();
    for (i, (evt, outcome)) in CONNECTION_CASES.iter().enumerate() {
        for e in [connection_event(&format!("c-{i}"), i as u64, evt, outcome), in_container(connection_event(&format!("p-{i}"), i as u64, evt, outcome))] {
            let sent = network_row(&e);
            for k in ["Type", "EventSchema", "EventUid"] {
                assert!(!sent.contains_key(k), "{k} is supplied by the native table and must not be sent");
            }
            let errors = validate(&cat, "NetworkSession", &as_queried_network(&sent), true);
            assert!(errors.is_empty(), "{evt}/{outcome}: {errors:#?}");
        }
    }
}

#[test]
fn connection_rows_put_the_process_on_its_side_with_the_exact_values() {
    let out = network_row(&connection_event("c-1", 1, "connect", "refused"));
    for (k, v) in [
        ("EventType", json!("EndpointNetworkSession")),
        ("EventSchemaVersion", json!("0.2.6")),
        ("EventOriginalUid", json!("c-1")),
        ("Dvc", json!("node-1")),
        ("NetworkDirection", json!("Outbound")),
        ("NetworkProtocol", json!("TCP")),
        ("NetworkProtocolVersion", json!("IPv4")),
        ("SrcIpAddr", json!("10.244.1.7")),
        ("SrcPortNumber", json!(40112)),
        ("SrcHostname", json!("node-1")),
        ("SrcAppName", json!("/usr/bin/sh")),
        ("SrcAppId", json!("4343")),
        ("SrcAppType", json!("Process")),
        ("SrcUsername", json!("1000")),
        ("DstIpAddr", json!("203.0.113.9")),
        ("DstPortNumber", json!(443)),
        ("DstFQDN", json!("example.test")),
        ("EventResult", json!("Failure")),
        ("EventResultDetails", json!("Reset")),
        ("EventOriginalResultDetails", json!("refused")),
    ] {
        assert_eq!(out.get(k), Some(&v), "{k}");
    }
    assert_eq!(out["AdditionalFields"]["error"], 111);
    assert_eq!(out["AdditionalFields"]["cmdline"], "curl https://example.test/");

    let inbound = network_row(&in_container(connection_event("c-2", 2, "accept", "")));
    assert_eq!((inbound["NetworkDirection"].as_str(), inbound["DstAppId"].as_str(), inbound["SrcIpAddr"].as_str()), (Some("Inbound"), Some("4343"), Some("203.0.113.9")));
    assert_eq!((inbound["DstIpAddr"].as_str(), inbound["DstPortNumber"].as_u64(), inbound["EventResult"].as_str()), (Some("10.244.1.7"), Some(8080), Some("Success")));
    assert!(!inbound.contains_key("SrcAppName"));
    assert_eq!(inbound["AdditionalFields"]["container"]["pod"]["name"], "web-7d4b9c-x2x4z");

    let listen = network_row(&connection_event("c-3", 3, "listen", ""));
    assert_eq!(listen["NetworkDirection"], "Listen");
    assert!(!listen.contains_key("SrcIpAddr") && !listen.contains_key("DstFQDN"), "a listener has no peer: {listen:?}");

    // A dedup summary: EventCount is the repeats it stands for, EventStartTime its window's start.
    let mut summary = connection_event("c-5", 5, "connect", "");
    if let Some(peregrine_proto::Kind::Connection(c)) = &mut summary.kind {
        (c.summary, c.count, c.local_port, c.window_start_unix_nano) = (true, 41, 0, 1_700_000_000_000_000_000);
    }
    let row = network_row(&summary);
    assert_eq!((row["EventCount"].as_u64(), row["EventStartTime"].as_str()), (Some(41), Some("2023-11-14T22:13:20.000000Z")));
    assert_eq!(validate(&catalogue(), "NetworkSession", &as_queried_network(&row), true), Vec::<String>::new());

    let denied = network_row(&connection_event("c-4", 4, "connect", "denied"));
    assert_eq!((denied["DvcAction"].as_str(), denied["EventResult"].as_str(), denied["EventSeverity"].as_str()), (Some("Deny"), Some("Failure"), Some("Low")));
}
