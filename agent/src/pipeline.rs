//! The stages an event passes between the process cache (in the drain, `process/`) and send,
//! in order. Each is a pass-through until its issue lands; they are named here so the order is
//! fixed and visible (docs/ARCHITECTURE.md draws the same path).

use peregrine_proto::Event;

/// Enrichment: will attach container and Kubernetes context (context issue).
fn enrich(event: Event) -> Event {
    event
}

/// Rules: will evaluate Falco-language rules and emit alerts (rules engine issue).
fn rules(event: Event) -> Event {
    event
}

/// Runs every stage on one event.
pub fn process(event: Event) -> Event {
    rules(enrich(event))
}
