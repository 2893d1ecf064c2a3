//! Falco-language rules engine (in progress).
