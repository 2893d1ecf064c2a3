//! `peregrine.v1.Ancestor`, written by hand rather than generated, and the shared form in which
//! events hold it.
//!
//! Every exec event carries its process's ancestry, so one parent's record goes out once per
//! child: under an exec storm, copying each ancestor's strings into every event and encoding
//! them again was a fifth of the agent's work. Events hold a [`SharedAncestor`] instead: the
//! agent's process cache makes one per process, the first time a child needs it, and each exec
//! event takes a reference to it; its encoding is made once and reused. The wire format is
//! the .proto's; build.rs maps the message to this type (`extern_path`).

use std::{
    ops::{Deref, DerefMut},
    sync::{Arc, OnceLock},
};

use prost::{
    Message,
    bytes::{Buf, BufMut},
    encoding::{DecodeContext, WireType},
};

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

/// An [`Ancestor`] behind a reference count, with its encoding kept once made. Reads go
/// through `Deref`; a write (`DerefMut`: the collector's redaction and truncation) copies the
/// record if others share it and forgets the kept encoding.
#[derive(Clone, Default)]
pub struct SharedAncestor(Arc<Shared>);

#[derive(Default)]
struct Shared {
    ancestor: Ancestor,
    encoded: OnceLock<Vec<u8>>,
}

/// `Arc::make_mut` clones only to write: the kept encoding would be thrown away at once.
impl Clone for Shared {
    fn clone(&self) -> Self {
        Self { ancestor: self.ancestor.clone(), encoded: OnceLock::new() }
    }
}

impl SharedAncestor {
    fn encoded(&self) -> &[u8] {
        self.0.encoded.get_or_init(|| self.0.ancestor.encode_to_vec())
    }
}

impl From<Ancestor> for SharedAncestor {
    fn from(ancestor: Ancestor) -> Self {
        Self(Arc::new(Shared { ancestor, encoded: OnceLock::new() }))
    }
}

impl Deref for SharedAncestor {
    type Target = Ancestor;

    fn deref(&self) -> &Ancestor {
        &self.0.ancestor
    }
}

impl DerefMut for SharedAncestor {
    fn deref_mut(&mut self) -> &mut Ancestor {
        let shared = Arc::make_mut(&mut self.0);
        shared.encoded = OnceLock::new();
        &mut shared.ancestor
    }
}

impl PartialEq for SharedAncestor {
    fn eq(&self, other: &Self) -> bool {
        self.0.ancestor == other.0.ancestor
    }
}

impl std::fmt::Debug for SharedAncestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.ancestor.fmt(f)
    }
}

impl serde::Serialize for SharedAncestor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.ancestor.serialize(serializer)
    }
}

impl Message for SharedAncestor {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(self.encoded());
    }

    fn merge_field(&mut self, tag: u32, wire_type: WireType, buf: &mut impl Buf, ctx: DecodeContext) -> Result<(), prost::DecodeError> {
        self.deref_mut().merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.encoded().len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample() -> Ancestor {
        Ancestor {
            pid: 41,
            exec_id: "node-1:41:900:950".into(),
            comm: "bash".into(),
            exe: "/usr/bin/bash".into(),
            argv: vec!["bash".into(), "-c".into(), "x\ny".into()],
        }
    }

    #[test]
    fn the_shared_form_encodes_and_decodes_as_the_plain_one() {
        let shared = SharedAncestor::from(sample());
        assert_eq!(shared.encode_to_vec(), sample().encode_to_vec());
        assert_eq!(shared.encoded_len(), sample().encoded_len());
        // Twice: the second encoding is the kept one.
        assert_eq!(shared.encode_to_vec(), sample().encode_to_vec());
        let back = SharedAncestor::decode(sample().encode_to_vec().as_slice()).unwrap();
        assert_eq!(*back, sample());
    }

    #[test]
    fn a_write_copies_a_shared_record_and_forgets_its_encoding() {
        let first = SharedAncestor::from(sample());
        let _ = first.encode_to_vec();
        let mut second = first.clone();
        second.argv[2] = "cut".into();
        assert_eq!(first.argv[2], "x\ny", "the other holder keeps its record");
        let mut expected = sample();
        expected.argv[2] = "cut".into();
        assert_eq!(second.encode_to_vec(), expected.encode_to_vec(), "a fresh encoding, not the kept one");
        assert_eq!(first.encode_to_vec(), sample().encode_to_vec());
    }
}
