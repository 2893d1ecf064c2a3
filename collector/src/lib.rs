//! peregrine-collector: receives agents' event streams and delivers them to outputs.
//! The binary (`main.rs`) wires these together; tests drive the outputs directly.

pub mod config;
pub mod enroll;
pub mod ingest;
pub mod output;
pub mod queue;
pub mod timefmt;
