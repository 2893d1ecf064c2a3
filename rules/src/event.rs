//! The boundary between the engine and whoever owns the events (the agent, or a recording).
//!
//! Evaluation asks the event for one field at a time and gets a borrowed [`Value`] back, so a
//! rule check never copies or allocates. Multi-valued fields (ancestors, pod labels) are read an
//! element at a time through [`FieldArg::Index`] until the event answers [`Value::Absent`].

use std::fmt;
use std::net::IpAddr;

use crate::fields::FieldId;

/// The event types Peregrine produces, named as Falco names the system call (`evt.type`).
///
/// Every exec is `execve` (the kernel hook, `sched_process_exec`, does not tell `execve` from
/// `execveat`), and every event is the exit side of its call (`evt.dir` is always `<`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A successful exec (`evt.type = execve`).
    Execve,
    /// An outbound connection attempt (`evt.type = connect`).
    Connect,
    /// An accepted inbound connection (`evt.type = accept`).
    Accept,
    /// A socket starting to listen (`evt.type = listen`; not produced yet).
    Listen,
}

impl EventType {
    /// Every type, in index order.
    pub const ALL: [EventType; 4] = [
        EventType::Execve,
        EventType::Connect,
        EventType::Accept,
        EventType::Listen,
    ];

    /// The `evt.type` value Falco rules compare against.
    pub fn name(self) -> &'static str {
        match self {
            EventType::Execve => "execve",
            EventType::Connect => "connect",
            EventType::Accept => "accept",
            EventType::Listen => "listen",
        }
    }

    /// The type whose `evt.type` value is `name`, if Peregrine produces it.
    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Dense index, for per-type tables.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One field value, borrowed from the event.
///
/// `Absent` is Falco's "no value": every comparison against it is false (including `!=`), and
/// `exists` is false. A value of the wrong type for the field (say `Str` for `proc.pid`) is
/// treated as absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// The event has no value for this field.
    Absent,
    /// A string (`proc.name`, `container.id`, ...).
    Str(&'a str),
    /// An unsigned number (`user.uid`, `proc.tty`, ports, ...).
    U64(u64),
    /// A signed number (`proc.pid`, `user.loginuid` where -1 means unset, `evt.rawres`, ...).
    I64(i64),
    /// A flag (`container.privileged`, `proc.is_exe_upper_layer`, ...).
    Bool(bool),
    /// An address (`fd.sip`, `fd.cip`, ...).
    Ip(IpAddr),
}

impl Value<'_> {
    /// True unless `Absent`.
    pub fn is_present(&self) -> bool {
        !matches!(self, Value::Absent)
    }
}

/// Which element of a field the engine wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldArg<'a> {
    /// The field itself.
    None,
    /// Ancestor fields (`proc.aname` and kin): the ancestor at this level, 1 being the parent
    /// (level 0, the process itself, is asked for through the plain field: `proc.name`...).
    /// List fields (`k8s.pod.labels`): the element at this position, from 0.
    Index(u32),
    /// Keyed fields (`k8s.pod.label[app]`): the value under this key.
    Key(&'a str),
}

/// What the engine needs from an event. The agent implements this for its events;
/// [`crate::RecordedEvent`] implements it for tests and benchmarks.
///
/// `field` is only ever called with the identifiers listed in [`FieldId`], and with an argument
/// only for the fields whose catalogue entry says so; anything unexpected may return `Absent`.
/// `evt.type` is read through `evt_type`, never through `field`.
pub trait EventView {
    /// The event's type.
    fn evt_type(&self) -> EventType;
    /// One field's value, borrowed from the event. Must not allocate on the hot path.
    fn field(&self, field: FieldId, arg: FieldArg<'_>) -> Value<'_>;
}

impl<T: EventView + ?Sized> EventView for &T {
    fn evt_type(&self) -> EventType {
        (**self).evt_type()
    }
    fn field(&self, field: FieldId, arg: FieldArg<'_>) -> Value<'_> {
        (**self).field(field, arg)
    }
}

/// Bit set of event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct TypeMask(u8);

impl TypeMask {
    pub(crate) const ALL: TypeMask = TypeMask(0b1111);
    pub(crate) const NETWORK: TypeMask = TypeMask(0b1110);

    pub(crate) fn contains(self, t: EventType) -> bool {
        self.0 & (1 << t.index()) != 0
    }
    pub(crate) fn insert(&mut self, t: EventType) {
        self.0 |= 1 << t.index();
    }
}
