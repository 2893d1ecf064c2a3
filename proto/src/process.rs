//! `peregrine.v1.Process`, written by hand rather than generated so that events can hold it
//! shared (`crate::shared`): the agent's process cache keeps the record its exec event
//! carried, and the process's later events (its exit, its connections) take a reference to it
//! and reuse its encoding instead of copying and encoding it again.

use prost::Message;

use crate::v1::{Credentials, Namespaces};

/// A process image. Field numbers and meanings are the wire contract in
/// proto/peregrine.proto (`json.rs`'s tests check the two agree).
#[derive(Clone, PartialEq, Eq, Hash, Message, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub struct Process {
    #[prost(string, tag = "1")]
    pub exec_id: String,
    #[prost(string, tag = "2")]
    pub parent_exec_id: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    #[prost(uint32, tag = "4")]
    pub tid: u32,
    #[prost(uint32, tag = "5")]
    pub ppid: u32,
    #[prost(uint32, tag = "6")]
    pub vpid: u32,
    #[prost(uint64, tag = "7")]
    pub start_boot_ns: u64,
    #[prost(uint64, tag = "8")]
    pub exec_boot_ns: u64,
    #[prost(string, tag = "9")]
    pub comm: String,
    #[prost(string, tag = "10")]
    pub exe: String,
    #[prost(string, tag = "11")]
    pub filename: String,
    #[prost(string, repeated, tag = "12")]
    pub argv: Vec<String>,
    #[prost(string, tag = "13")]
    pub cwd: String,
    #[prost(message, optional, tag = "14")]
    pub creds: Option<Credentials>,
    #[prost(message, optional, tag = "15")]
    pub ns: Option<Namespaces>,
    #[prost(uint64, tag = "16")]
    pub cgroup_id: u64,
    #[prost(string, tag = "17")]
    pub tty: String,
    #[prost(uint32, tag = "18")]
    pub tty_nr: u32,
    #[prost(string, repeated, tag = "19")]
    pub partial: Vec<String>,
    #[prost(string, tag = "20")]
    pub source: String,
}

/// A [`Process`] shared by the events of one process image and the agent's process cache.
pub type SharedProcess = crate::shared::Shared<Process>;
