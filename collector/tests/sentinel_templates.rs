//! The Sentinel templates in `deploy/sentinel/` against what the collector sends.
//!
//! * `peregrine-sentinel.json` (ARM): the DCR's stream declarations must list exactly the
//!   columns the `sentinel` output produces for each stream, with types that hold every value
//!   it produces (ASIM's catalogue types for ASIM columns); each stream flows to its table; the
//!   custom tables it creates have the columns their streams declare; the default stream names
//!   of the output are the template's. Azure drops undeclared columns without a word, so a
//!   drift here is silent data loss in production.
//! * `peregrine-analytics-rule.json` (ARM): the scheduled rule's query reads columns the alert
//!   table has and `AdditionalFields` paths our alert rows carry; its entity mappings, custom
//!   details and overrides name columns the query projects.
//!
//! No Azure runs here, and no ARM validator is installable (checkov 3.3.30 has no checks for
//! these resource types: it reports 0 resources), so the ARM structure is checked by hand below.

// Test scaffolding: a failed step stops the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};

use peregrine_collector::output::{
    asim, raw,
    sentinel::{SentinelMode, SentinelSettings},
};
use peregrine_proto::{
    Event, Kind,
    v1::{AgentStatus, ContainerStarted, Loss, ProcessFork},
};
use serde_json::{Value, json};
use support::*;

fn read_json(rel: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn template() -> Value {
    read_json("deploy/sentinel/peregrine-sentinel.json")
}

fn resources<'a>(t: &'a Value, ty: &str) -> Vec<&'a Value> {
    t["resources"].as_array().into_iter().flatten().filter(|r| r["type"] == ty).collect()
}

fn dcr(t: &Value) -> &Value {
    let d = resources(t, "Microsoft.Insights/dataCollectionRules");
    assert_eq!(d.len(), 1, "one data collection rule in the template");
    &d[0]["properties"]
}

fn settings() -> SentinelSettings {
    serde_json::from_value(json!({
        "endpoint": "https://dce.example.test",
        "dcr_immutable_id": "dcr-00000000000000000000000000000000",
        "auth": {"method": "managed_identity"},
    }))
    .unwrap()
}

/// Every shape of event the output encodes: each kind, with and without the optional parts.
fn samples() -> Vec<Event> {
    let mut bare_exec = exec_event("e-3", 3, &["/bin/true"]);
    if let Some(Kind::Exec(x)) = &mut bare_exec.kind {
        x.ancestors.clear();
        if let Some(p) = &mut x.process {
            p.cwd.clear();
            p.start_boot_ns = 0;
        }
    }
    let mut no_owner = connection_event("c-9", 9, "connect", "established");
    if let Some(Kind::Connection(c)) = &mut no_owner.kind {
        c.process = None;
        c.owner_unknown = true;
    }
    let mut no_process_alert = alert_event("a-9", 29, "Rule", "Notice");
    if let Some(Kind::Alert(a)) = &mut no_process_alert.kind {
        a.process = None;
    }
    let mut events = vec![exec_event("e-1", 1, &["sh", "-c", "id"]), exit_event("e-2", 2), bare_exec, no_owner, no_process_alert];
    for (i, (evt, outcome)) in CONNECTION_CASES.iter().enumerate() {
        events.push(connection_event(&format!("c-{i}"), 10 + i as u64, evt, outcome));
    }
    for (i, p) in ["Emergency", "Critical", "Warning", "Notice", "Informational", "Debug"].iter().enumerate() {
        events.push(alert_event(&format!("a-{i}"), 20 + i as u64, "Rule", p));
    }
    events.push(envelope("f-1", 40, Kind::Fork(ProcessFork::default())));
    events.push(envelope("l-1", 41, Kind::Loss(Loss { reason: "kernel_ring_full".into(), count: 3, total: 3, ..Default::default() })));
    events.push(envelope("s-1", 42, Kind::Status(AgentStatus { phase: 1, hooks: vec!["tracepoint/sched/sched_process_exec".into()], ..Default::default() })));
    events.push(envelope("k-1", 43, Kind::ContainerStarted(ContainerStarted::default())));
    let in_pods: Vec<Event> = events.iter().cloned().map(in_container).collect();
    events.extend(in_pods);
    events
}

/// The JSON kinds seen per column, per stream, over every sample, in both modes.
fn produced() -> BTreeMap<String, BTreeMap<String, BTreeSet<&'static str>>> {
    let s = settings();
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<&'static str>>> = BTreeMap::new();
    let mut add = |stream: &str, row: &Value| {
        let cols = out.entry(stream.to_owned()).or_default();
        for (k, v) in row.as_object().unwrap() {
            cols.entry(k.clone()).or_default().insert(json_kind(v));
        }
    };
    for e in samples() {
        if let Some((table, row)) = asim::row(&e) {
            let stream = match table {
                asim::Table::Process => &s.process_stream,
                asim::Table::Network => &s.network_stream,
                asim::Table::Alert => &s.alert_stream,
            };
            add(stream, &row);
        }
        add(&s.raw_stream, &raw::row(&e));
    }
    out
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "real",
        Value::Number(_) => "integer",
        Value::String(s) if is_datetime(s) => "datetime-string",
        Value::String(_) => "string",
        Value::Array(_) | Value::Object(_) => "dynamic",
    }
}

fn is_datetime(s: &str) -> bool {
    s.len() >= 20 && s.as_bytes().get(10) == Some(&b'T') && s.ends_with('Z') && s[..4].bytes().all(|c| c.is_ascii_digit())
}

/// Whether a DCR column type holds every value kind seen.
fn holds(ty: &str, seen: &BTreeSet<&str>) -> bool {
    seen.iter().all(|k| {
        matches!(
            (ty, *k),
            (_, "null")
                | ("string", "string" | "datetime-string")
                | ("datetime", "datetime-string")
                | ("int" | "long", "integer")
                | ("real", "real" | "integer")
                | ("boolean", "bool")
                | ("dynamic", "dynamic")
        )
    })
}

/// The ASIM catalogue's type of a column in any schema (bool spelled as DCRs spell it).
fn asim_types() -> BTreeMap<String, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/asim/ASimTester.csv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("Microsoft's ASIM catalogue is missing at {}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() == 7 && ["ProcessEvent", "NetworkSession", "Common"].contains(&f[3]) && f[2] != "Alias" {
            let ty = match f[1] {
                "bool" => "boolean",
                "int" | "long" | "real" | "datetime" | "dynamic" => f[1],
                _ => "string",
            };
            out.insert(f[0].to_owned(), ty.to_owned());
        }
    }
    out
}

/// The type a stream declaration should give a column: ASIM's where ASIM defines the column,
/// else the narrowest that holds what we send.
fn expected_type(column: &str, seen: &BTreeSet<&str>, asim: &BTreeMap<String, String>) -> &'static str {
    if let Some(t) = asim.get(column) {
        return ["string", "int", "long", "real", "boolean", "datetime", "dynamic"].into_iter().find(|x| x == t).unwrap_or("string");
    }
    ["datetime", "long", "real", "boolean", "string", "dynamic"].into_iter().find(|t| holds(t, seen)).unwrap_or("dynamic")
}

fn declared_columns(decl: &Value) -> BTreeMap<String, String> {
    decl["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["type"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn every_stream_the_collector_sends_is_declared_with_exactly_its_columns() {
    let t = template();
    let decls = dcr(&t)["streamDeclarations"].as_object().expect("streamDeclarations").clone();
    let asim = asim_types();
    let produced = produced();
    let mut problems = Vec::new();
    for (stream, cols) in &produced {
        let Some(decl) = decls.get(stream) else {
            problems.push(format!("stream {stream} is sent but not declared"));
            continue;
        };
        let declared = declared_columns(decl);
        for (col, seen) in cols {
            match declared.get(col) {
                None => problems.push(format!("{stream}: column {col} is sent but not declared (Azure would drop it)")),
                Some(ty) if !holds(ty, seen) => problems.push(format!("{stream}: column {col} is declared {ty} but we send {seen:?}")),
                Some(ty) if ty != expected_type(col, seen, &asim) => {
                    problems.push(format!("{stream}: column {col} is declared {ty}; ASIM or our values make it {}", expected_type(col, seen, &asim)))
                }
                Some(_) => {}
            }
        }
        for col in declared.keys().filter(|c| !cols.contains_key(*c)) {
            problems.push(format!("{stream}: column {col} is declared but never sent"));
        }
        if problems.iter().any(|p| p.starts_with(stream.as_str())) {
            let want: Vec<Value> = cols.iter().map(|(c, seen)| json!({"name": c, "type": expected_type(c, seen, &asim)})).collect();
            problems.push(format!("{stream}: the declaration that matches what is sent:\n{}", serde_json::to_string(&want).unwrap()));
        }
    }
    for stream in decls.keys().filter(|s| !produced.contains_key(*s)) {
        problems.push(format!("stream {stream} is declared but the collector never sends it"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_output_defaults_are_the_templates_streams_and_each_flows_to_its_table() {
    let t = template();
    let d = dcr(&t);
    let s = settings();
    assert_eq!(s.mode, SentinelMode::Asim);
    let expected = [
        (s.process_stream.as_str(), "Microsoft-ASimProcessEventLogs"),
        (s.network_stream.as_str(), "Microsoft-ASimNetworkSessionLogs"),
        (s.alert_stream.as_str(), "Custom-PeregrineAlerts_CL"),
        (s.raw_stream.as_str(), "Custom-PeregrineEvents_CL"),
    ];
    let destinations: BTreeSet<&str> =
        d["destinations"]["logAnalytics"].as_array().expect("a Log Analytics destination").iter().filter_map(|x| x["name"].as_str()).collect();
    let flows = d["dataFlows"].as_array().expect("dataFlows");
    for (stream, table) in expected {
        assert!(stream.starts_with("Custom-"), "{stream}: DCR input streams begin with Custom-");
        let mine: Vec<&Value> = flows.iter().filter(|f| f["streams"].as_array().is_some_and(|s| s.iter().any(|x| x == stream))).collect();
        assert_eq!(mine.len(), 1, "{stream}: exactly one data flow");
        let f = mine[0];
        assert_eq!(f["outputStream"], table, "{stream}");
        assert_eq!(f["transformKql"], "source", "{stream}: rows are already in the table's shape");
        for dest in f["destinations"].as_array().expect("flow destinations") {
            assert!(destinations.contains(dest.as_str().unwrap_or_default()), "{stream}: unknown destination {dest}");
        }
    }
    // The custom tables the template creates have the columns their streams declare (a
    // table's `dateTime` is a declaration's `datetime`).
    let decls = d["streamDeclarations"].as_object().unwrap();
    let tables = resources(&t, "Microsoft.OperationalInsights/workspaces/tables");
    for (stream, table) in [(s.alert_stream.as_str(), "PeregrineAlerts_CL"), (s.raw_stream.as_str(), "PeregrineEvents_CL")] {
        let res = tables
            .iter()
            .find(|r| r["properties"]["schema"]["name"] == table)
            .unwrap_or_else(|| panic!("the template creates no table {table}"));
        let cols: BTreeMap<String, String> = declared_columns(&res["properties"]["schema"])
            .into_iter()
            .map(|(c, ty)| (c, if ty == "dateTime" { "datetime".to_owned() } else { ty }))
            .collect();
        assert_eq!(cols, declared_columns(&decls[stream]), "table {table} vs stream {stream}");
        assert_eq!(cols.get("TimeGenerated").map(String::as_str), Some("datetime"), "{table} needs TimeGenerated");
    }
}

/// Columns of Microsoft's native tables that ASimTester lists but the tables do not have
/// (aliases and query-time columns; the network table has no process columns): sent, they
/// would be dropped. From the Azure Monitor table reference of ASimProcessEventLogs and
/// ASimNetworkSessionLogs.
const NOT_IN_NATIVE_TABLES: &[&str] = &[
    "Dvc@ASimProcessEventLogs",
    "Src",
    "Dst",
    "ASimMatchingHostname",
    "ASimMatchingIpAddr",
    "SrcProcessId",
    "SrcProcessName",
    "SrcProcessGuid",
    "DstProcessId",
    "DstProcessName",
    "DstProcessGuid",
    "EventSchema",
    "EventUid",
    "Type",
];

#[test]
fn asim_streams_carry_only_columns_their_native_tables_have() {
    let t = template();
    let decls = dcr(&t)["streamDeclarations"].as_object().unwrap().clone();
    let s = settings();
    for (stream, table) in [(s.process_stream, "ASimProcessEventLogs"), (s.network_stream, "ASimNetworkSessionLogs")] {
        for col in declared_columns(&decls[&stream]).keys() {
            let scoped = format!("{col}@{table}");
            assert!(
                !NOT_IN_NATIVE_TABLES.contains(&col.as_str()) && !NOT_IN_NATIVE_TABLES.contains(&scoped.as_str()),
                "{stream}: {col} is not a column of {table}"
            );
        }
    }
}

/// `name` in every `parameters('name')` / `variables('name')` of an ARM template's strings.
fn references(v: &Value, kind: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            let pat = format!("{kind}('");
            let mut rest = s.as_str();
            while let Some(i) = rest.find(&pat) {
                rest = &rest[i + pat.len()..];
                if let Some(end) = rest.find('\'') {
                    out.insert(rest[..end].to_owned());
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| references(x, kind, out)),
        Value::Object(o) => o.values().for_each(|x| references(x, kind, out)),
        _ => {}
    }
}

#[test]
fn both_templates_are_well_formed_arm() {
    for (file, t) in [("peregrine-sentinel.json", template()), ("peregrine-analytics-rule.json", read_json("deploy/sentinel/peregrine-analytics-rule.json"))] {
        assert_eq!(t["$schema"], "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#", "{file}");
        assert_eq!(t["contentVersion"], "1.0.0.0", "{file}");
        for (kind, section) in [("parameters", "parameters"), ("variables", "variables")] {
            let mut used = BTreeSet::new();
            references(&t["resources"], kind, &mut used);
            references(&t["outputs"], kind, &mut used);
            references(&t["variables"], kind, &mut used);
            let defined: BTreeSet<String> = t[section].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
            let undefined: Vec<_> = used.difference(&defined).collect();
            assert!(undefined.is_empty(), "{file}: {kind} used but not defined: {undefined:?}");
            let unused: Vec<_> = defined.difference(&used).collect();
            assert!(unused.is_empty(), "{file}: {kind} defined but never used: {unused:?}");
        }
        for r in t["resources"].as_array().expect("resources") {
            for key in ["type", "apiVersion", "name"] {
                assert!(r[key].as_str().is_some_and(|s| !s.is_empty()), "{file}: a resource without {key}: {r}");
            }
        }
    }
}

/// The identifiers a KQL query's `extend`s define.
fn extended(query: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in query.split("| extend").skip(1) {
        let stmt = part.split('|').next().unwrap_or_default();
        for assign in stmt.split(',') {
            if let Some((name, _)) = assign.split_once('=') {
                out.insert(name.trim().to_owned());
            }
        }
    }
    out
}

/// The columns of a query's final `project`.
fn projected(query: &str) -> Vec<String> {
    let last = query.rsplit("| project ").next().unwrap_or_default();
    last.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()
}

/// Every `AdditionalFields.a.b` path the query reads.
fn additional_paths(query: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = query;
    while let Some(i) = rest.find("AdditionalFields.") {
        rest = &rest[i + "AdditionalFields.".len()..];
        let path: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.').collect();
        out.push(path.split('.').map(str::to_owned).collect());
    }
    out
}

#[test]
fn the_analytics_rule_reads_what_alert_rows_carry() {
    let rule_t = read_json("deploy/sentinel/peregrine-analytics-rule.json");
    let rules = resources(&rule_t, "Microsoft.SecurityInsights/alertRules");
    assert_eq!(rules.len(), 1, "one scheduled rule");
    let rule = rules[0];
    assert_eq!(rule["kind"], "Scheduled");
    let p = &rule["properties"];
    let query = p["query"].as_str().expect("query");
    assert!(query.trim_start().starts_with("PeregrineAlerts_CL"), "the rule reads the alert table");

    let t = template();
    let table = resources(&t, "Microsoft.OperationalInsights/workspaces/tables")
        .into_iter()
        .find(|r| r["properties"]["schema"]["name"] == "PeregrineAlerts_CL")
        .expect("alert table");
    let table_cols: BTreeSet<String> = declared_columns(&table["properties"]["schema"]).into_keys().collect();
    let ext = extended(query);
    let proj = projected(query);
    assert!(!proj.is_empty(), "the query ends with a project");
    for c in &proj {
        assert!(table_cols.contains(c) || ext.contains(c), "the query projects {c}, which is neither a column of PeregrineAlerts_CL nor extended");
    }
    // The AdditionalFields paths exist in a real alert row from a pod.
    let (_, row) = asim::row(&in_container(alert_event("a-1", 1, "Rule", "Critical"))).unwrap();
    for path in additional_paths(query) {
        let mut v = &row["AdditionalFields"];
        for seg in &path {
            v = &v[seg.as_str()];
        }
        assert!(!v.is_null(), "AdditionalFields.{} is not in our alert rows", path.join("."));
    }
    // What Sentinel reads from the results is projected.
    let mut named = BTreeSet::new();
    for m in p["entityMappings"].as_array().expect("entityMappings") {
        for f in m["fieldMappings"].as_array().expect("fieldMappings") {
            named.insert(f["columnName"].as_str().unwrap().to_owned());
        }
    }
    for v in p["customDetails"].as_object().expect("customDetails").values() {
        named.insert(v.as_str().unwrap().to_owned());
    }
    let o = &p["alertDetailsOverride"];
    named.insert(o["alertSeverityColumnName"].as_str().expect("alertSeverityColumnName").to_owned());
    for key in ["alertDisplayNameFormat", "alertDescriptionFormat"] {
        let mut rest = o[key].as_str().unwrap_or_default();
        while let Some(i) = rest.find("{{") {
            rest = &rest[i + 2..];
            let end = rest.find("}}").expect("closed placeholder");
            named.insert(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    for c in &named {
        assert!(proj.contains(c), "the rule names {c}, which the query does not project");
    }
    // Severities the override reads are ones Sentinel accepts.
    for priority in ["Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug", "whatever"] {
        assert!(["Informational", "Low", "Medium", "High"].contains(&asim::alert_severity(priority)), "{priority}");
    }
}
