//! [`Shared`]: a message behind a reference count, with its encoding kept once made.
//!
//! Under an exec storm the agent's work was mostly copying: each exec event copied every
//! ancestor's strings and encoded them again, and each process record was copied into the
//! process cache at exec and out of it at exit, then encoded twice. Events hold these
//! messages shared instead ([`crate::SharedAncestor`], [`crate::SharedProcess`]): a holder
//! takes a reference, and the encoding is made once and reused by every event that carries
//! the same record. build.rs maps the .proto's messages to these types (`extern_path`); the
//! wire format is the .proto's.

use std::{
    ops::{Deref, DerefMut},
    sync::{Arc, OnceLock},
};

use prost::{
    Message,
    bytes::{Buf, BufMut},
    encoding::{DecodeContext, WireType},
};

/// A `T` behind a reference count. Reads go through `Deref`; a write (`DerefMut`) copies the
/// record if others share it and forgets the kept encoding: write only what changes.
pub struct Shared<T>(Arc<Inner<T>>);

struct Inner<T> {
    message: T,
    encoded: OnceLock<Vec<u8>>,
}

/// `Arc::make_mut` clones only to write: the kept encoding would be thrown away at once.
impl<T: Clone> Clone for Inner<T> {
    fn clone(&self) -> Self {
        Self { message: self.message.clone(), encoded: OnceLock::new() }
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Default> Default for Shared<T> {
    fn default() -> Self {
        Self::from(T::default())
    }
}

impl<T: Message> Shared<T> {
    fn encoded(&self) -> &[u8] {
        self.0.encoded.get_or_init(|| self.0.message.encode_to_vec())
    }
}

impl<T> From<T> for Shared<T> {
    fn from(message: T) -> Self {
        Self(Arc::new(Inner { message, encoded: OnceLock::new() }))
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0.message
    }
}

impl<T: Clone> DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        let inner = Arc::make_mut(&mut self.0);
        inner.encoded = OnceLock::new();
        &mut inner.message
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.message == other.0.message
    }
}

impl<T: Eq> Eq for Shared<T> {}

impl<T: std::hash::Hash> std::hash::Hash for Shared<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.message.hash(state);
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.message.fmt(f)
    }
}

impl<T: serde::Serialize> serde::Serialize for Shared<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.message.serialize(serializer)
    }
}

impl<T: Message + Clone + Default> Message for Shared<T> {
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
    use crate::{Ancestor, Credentials, Process, SharedAncestor, SharedProcess};

    fn ancestor() -> Ancestor {
        Ancestor {
            pid: 41,
            exec_id: "node-1:41:900:950".into(),
            comm: "bash".into(),
            exe: "/usr/bin/bash".into(),
            argv: vec!["bash".into(), "-c".into(), "x\ny".into()],
        }
    }

    fn process() -> Process {
        Process {
            exec_id: "node-1:42:900:960".into(),
            pid: 42,
            tid: 42,
            argv: vec!["sh".into(), "-c".into(), "id".into()],
            creds: Some(Credentials { uid: 1000, loginuid: Some(1000), ..Credentials::default() }),
            partial: vec!["argv_truncated".into()],
            source: "exec".into(),
            ..Process::default()
        }
    }

    #[test]
    fn the_shared_forms_encode_and_decode_as_the_plain_ones() {
        let shared = SharedAncestor::from(ancestor());
        assert_eq!(shared.encode_to_vec(), ancestor().encode_to_vec());
        assert_eq!(shared.encoded_len(), ancestor().encoded_len());
        // Twice: the second encoding is the kept one.
        assert_eq!(shared.encode_to_vec(), ancestor().encode_to_vec());
        assert_eq!(*SharedAncestor::decode(ancestor().encode_to_vec().as_slice()).unwrap(), ancestor());

        let shared = SharedProcess::from(process());
        assert_eq!(shared.encode_to_vec(), process().encode_to_vec());
        assert_eq!(shared.encode_to_vec(), process().encode_to_vec());
        assert_eq!(*SharedProcess::decode(process().encode_to_vec().as_slice()).unwrap(), process());
    }

    #[test]
    fn a_write_copies_a_shared_record_and_forgets_its_encoding() {
        let first = SharedAncestor::from(ancestor());
        let _ = first.encode_to_vec();
        let mut second = first.clone();
        second.argv[2] = "cut".into();
        assert_eq!(first.argv[2], "x\ny", "the other holder keeps its record");
        let mut expected = ancestor();
        expected.argv[2] = "cut".into();
        assert_eq!(second.encode_to_vec(), expected.encode_to_vec(), "a fresh encoding, not the kept one");
        assert_eq!(first.encode_to_vec(), ancestor().encode_to_vec());

        let first = SharedProcess::from(process());
        let _ = first.encode_to_vec();
        let mut second = first.clone();
        second.tid = 43;
        assert_eq!(first.tid, 42);
        let mut expected = process();
        expected.tid = 43;
        assert_eq!(second.encode_to_vec(), expected.encode_to_vec());
    }

    #[test]
    fn a_clone_shares_the_record() {
        let first = SharedProcess::from(process());
        let second = first.clone();
        assert!(std::ptr::eq(&*first, &*second), "a clone is a reference, not a copy");
    }
}
