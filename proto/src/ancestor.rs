//! `peregrine.v1.Ancestor`, written by hand rather than generated so that events can hold it
//! shared (`crate::shared`): the agent's process cache makes one per process, the first time a
//! child's exec needs it, and every descendant's exec event takes a reference to it.

use prost::Message;

/// One ancestor; index 0 of `ancestors` is the parent. Field numbers are the wire contract
/// in proto/peregrine.proto (`json.rs`'s tests check the two agree).
#[derive(Clone, PartialEq, Eq, Message, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub struct Ancestor {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(string, tag = "3")]
    pub comm: String,
    #[prost(string, tag = "4")]
    pub exe: String,
    #[prost(string, repeated, tag = "5")]
    pub argv: Vec<String>,
}

/// An [`Ancestor`] shared by the exec events of one process's descendants.
pub type SharedAncestor = crate::shared::Shared<Ancestor>;
