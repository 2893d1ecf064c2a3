//! The raw custom-table row (`Custom-PeregrineEvents_CL`): the event's own JSON with its
//! envelope flattened into columns and its kind's body kept as dynamic columns.
//!
//! Columns: `TimeGenerated` (datetime), `EventId`, `Seq`, `TimeUnixNano`, `BootNs`, `Node`,
//! `Cluster`, `AgentRun`, `Kind` (exec, fork, exit, alert, loss, status, connection),
//! `Process` (dynamic: the event's process, when its kind has one), `Detail` (dynamic: the
//! rest of the kind's body), `Container` (dynamic: container and pod, absent on the host),
//! `Enrichment` and `Privilege` (dynamic: the reasons, an array). `deploy/sentinel/` defines
//! the table with exactly these.

use peregrine_proto::Event;
use serde_json::{Map, Value, json};

use crate::timefmt;

pub fn row(e: &Event) -> Value {
    let mut detail = serde_json::to_value(e).ok().and_then(|v| v.get("kind").and_then(|k| k.get(e.kind_name())).cloned());
    let process = match detail.as_mut() {
        Some(Value::Object(d)) => d.remove("process"),
        _ => None,
    };
    let mut m = Map::new();
    m.insert("TimeGenerated".into(), json!(timefmt::rfc3339(e.time_unix_nano, 6)));
    m.insert("EventId".into(), json!(e.id));
    m.insert("Seq".into(), json!(e.seq));
    m.insert("TimeUnixNano".into(), json!(e.time_unix_nano));
    m.insert("BootNs".into(), json!(e.boot_ns));
    m.insert("Node".into(), json!(e.node));
    m.insert("Cluster".into(), json!(e.cluster));
    m.insert("AgentRun".into(), json!(e.agent_run));
    m.insert("Kind".into(), json!(e.kind_name()));
    m.insert("Process".into(), process.unwrap_or(Value::Null));
    m.insert("Detail".into(), detail.unwrap_or(Value::Null));
    m.insert("Container".into(), e.container.as_ref().and_then(|c| serde_json::to_value(c).ok()).unwrap_or(Value::Null));
    m.insert("Enrichment".into(), json!(e.enrichment));
    m.insert("Privilege".into(), json!(e.privilege));
    Value::Object(m)
}
