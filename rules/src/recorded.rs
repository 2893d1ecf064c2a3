//! An owned event, for tests, benchmarks and replaying recordings.
//!
//! Its JSON form is an object keyed by Falco field names:
//!
//! ```json
//! {"evt.type": "execve", "proc.name": "bash", "proc.cmdline": "bash -i",
//!  "proc.aname": ["sshd", "systemd"], "container.id": "host", "user.uid": 0,
//!  "k8s.pod.labels": {"app": "web"}}
//! ```
//!
//! Ancestor fields (`proc.aname`, `proc.apid`, ...) take a list from the parent up; the parent
//! aliases (`proc.pname`, `proc.ppid`...) set its first element. `k8s.pod.labels` takes an
//! object and provides both `k8s.pod.labels` and `k8s.pod.label[key]`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use crate::event::{EventType, EventView, FieldArg, Value};
use crate::fields::{self, Access, FieldId, FieldType};

/// An owned field value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedValue {
    /// Text.
    Str(String),
    /// Unsigned number.
    U64(u64),
    /// Signed number.
    I64(i64),
    /// Flag.
    Bool(bool),
    /// Address.
    Ip(IpAddr),
}

impl OwnedValue {
    fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Str(s) => Value::Str(s),
            OwnedValue::U64(n) => Value::U64(*n),
            OwnedValue::I64(n) => Value::I64(*n),
            OwnedValue::Bool(b) => Value::Bool(*b),
            OwnedValue::Ip(ip) => Value::Ip(*ip),
        }
    }
}

/// A recorded event: owns every value, implements [`EventView`].
#[derive(Clone, Debug)]
pub struct RecordedEvent {
    evt_type: EventType,
    values: Vec<Option<OwnedValue>>,
    /// Ancestor fields: element 0 is the parent. List fields: element 0 is the first.
    lists: Vec<Vec<OwnedValue>>,
    labels: Vec<(String, String)>,
}

/// Why a recorded event could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recorded event: field '{field}': {message}")]
pub struct RecordError {
    /// The field name.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A JSON value as found in a recording.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum RawValue {
    /// `true`/`false`.
    Bool(bool),
    /// A non-negative integer.
    U64(u64),
    /// A negative integer.
    I64(i64),
    /// A string.
    Str(String),
    /// A list (ancestors).
    List(Vec<RawValue>),
    /// An object (labels).
    Map(BTreeMap<String, String>),
}

impl RecordedEvent {
    /// An event of this type with no fields.
    pub fn new(evt_type: EventType) -> RecordedEvent {
        let n = FieldId::ALL.len();
        RecordedEvent {
            evt_type,
            values: vec![None; n],
            lists: vec![Vec::new(); n],
            labels: Vec::new(),
        }
    }

    /// Builds an event from field name → value pairs (`evt.type` among them).
    pub fn from_map(map: &BTreeMap<String, RawValue>) -> Result<RecordedEvent, RecordError> {
        let t = match map.get("evt.type") {
            Some(RawValue::Str(s)) => EventType::from_name(s).ok_or_else(|| {
                err(
                    "evt.type",
                    format!("'{s}' is not an event type Peregrine produces"),
                )
            })?,
            _ => {
                return Err(err(
                    "evt.type",
                    "missing (a string: execve, connect, accept, listen)",
                ));
            }
        };
        let mut ev = RecordedEvent::new(t);
        for (k, v) in map {
            if k != "evt.type" {
                ev.set(k, v)?;
            }
        }
        Ok(ev)
    }

    /// Sets a field by its Falco name.
    pub fn set(&mut self, name: &str, raw: &RawValue) -> Result<(), RecordError> {
        let def = fields::lookup(name).ok_or_else(|| err(name, "unknown field"))?;
        match def.access {
            Access::Direct(id) => {
                self.values[id as usize] = Some(convert(name, def.ty, raw)?);
            }
            Access::Alias(id, 0) => {
                self.values[id as usize] = Some(convert(name, def.ty, raw)?);
            }
            Access::Alias(id, level) => {
                let v = convert(name, def.ty, raw)?;
                let list = &mut self.lists[id as usize];
                let at = level as usize - 1;
                if list.len() <= at {
                    list.resize(at + 1, OwnedValue::Str(String::new()));
                }
                list[at] = v;
            }
            Access::Ancestor { id, .. } => {
                let RawValue::List(items) = raw else {
                    return Err(err(name, "expected a list, parent first"));
                };
                self.lists[id as usize] = items
                    .iter()
                    .map(|i| convert(name, def.ty, i))
                    .collect::<Result<_, _>>()?;
            }
            Access::List(id) => {
                let RawValue::Map(m) = raw else {
                    return Err(err(name, "expected an object of labels"));
                };
                self.lists[id as usize] = m
                    .iter()
                    .map(|(k, v)| OwnedValue::Str(format!("{k}:{v}")))
                    .collect();
                self.labels = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            }
            Access::Keyed(_) => return Err(err(name, "set k8s.pod.labels instead")),
            Access::EvtType => return Err(err(name, "set once, at the top")),
            _ => {
                return Err(err(
                    name,
                    "not a field an event carries (derived, constant or not captured)",
                ));
            }
        }
        Ok(())
    }
}

fn err(field: &str, message: impl Into<String>) -> RecordError {
    RecordError {
        field: field.to_string(),
        message: message.into(),
    }
}

fn convert(name: &str, ty: FieldType, raw: &RawValue) -> Result<OwnedValue, RecordError> {
    Ok(match (ty, raw) {
        (FieldType::Str, RawValue::Str(s)) => OwnedValue::Str(s.clone()),
        (FieldType::U64 | FieldType::Port, RawValue::U64(n)) => OwnedValue::U64(*n),
        (FieldType::I64, RawValue::I64(n)) => OwnedValue::I64(*n),
        (FieldType::I64, RawValue::U64(n)) => {
            OwnedValue::I64(i64::try_from(*n).map_err(|_| err(name, "number out of range"))?)
        }
        (FieldType::Bool, RawValue::Bool(b)) => OwnedValue::Bool(*b),
        (FieldType::Ip | FieldType::IpNet, RawValue::Str(s)) => OwnedValue::Ip(
            s.parse()
                .map_err(|_| err(name, format!("'{s}' is not an IP address")))?,
        ),
        _ => {
            return Err(err(
                name,
                format!("expected a {} value, found {raw:?}", ty.name()),
            ));
        }
    })
}

impl<'de> Deserialize<'de> for RecordedEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, RawValue>::deserialize(d)?;
        RecordedEvent::from_map(&map).map_err(serde::de::Error::custom)
    }
}

impl EventView for RecordedEvent {
    fn evt_type(&self) -> EventType {
        self.evt_type
    }

    fn field(&self, field: FieldId, arg: FieldArg<'_>) -> Value<'_> {
        let i = field as usize;
        match arg {
            FieldArg::None => self
                .values
                .get(i)
                .and_then(Option::as_ref)
                .map_or(Value::Absent, OwnedValue::as_value),
            FieldArg::Index(n) => {
                let list = match self.lists.get(i) {
                    Some(l) => l,
                    None => return Value::Absent,
                };
                // Ancestors count from 1 (the parent), lists from 0.
                let at = if field == FieldId::K8sPodLabels {
                    n as usize
                } else {
                    (n as usize).wrapping_sub(1)
                };
                list.get(at).map_or(Value::Absent, OwnedValue::as_value)
            }
            FieldArg::Key(k) => {
                if field != FieldId::K8sPodLabel {
                    return Value::Absent;
                }
                self.labels
                    .iter()
                    .find(|(lk, _)| lk == k)
                    .map_or(Value::Absent, |(_, v)| Value::Str(v))
            }
        }
    }
}
