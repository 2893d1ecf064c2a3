//! Stages between the process cache and the rules, in order. Each is a pass-through until its
//! issue lands; it is named here so the order is fixed and visible (docs/ARCHITECTURE.md draws
//! the same path).

use peregrine_proto::Kind;

/// Enrichment: will attach container and Kubernetes context (context issue).
pub fn enrich(kind: Kind) -> Kind {
    kind
}
