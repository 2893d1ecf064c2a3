//! Shared test helpers.
#![allow(dead_code)]

use std::path::PathBuf;

use peregrine_rules::{RecordedEvent, Ruleset, RulesSource};

/// The upstream Falco rules corpus, beside the repository (`../shared/corpus/falco-rules`).
pub fn corpus_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/falco-rules");
    assert!(
        dir.join("falco_rules.yaml").is_file(),
        "the Falco rules corpus is missing: expected {} (shared/corpus/falco-rules beside the repository)",
        dir.display()
    );
    dir
}

pub fn corpus_file(name: &str) -> RulesSource {
    let path = corpus_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    RulesSource { name: name.to_string(), text }
}

pub fn stable() -> Ruleset {
    Ruleset::from_sources(&[corpus_file("falco_rules.yaml")]).unwrap_or_else(|e| panic!("{e}"))
}

pub fn load(text: &str) -> Ruleset {
    Ruleset::from_sources(&[RulesSource { name: "test.yaml".into(), text: text.into() }])
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn event(json: &str) -> RecordedEvent {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("bad event {json}: {e}"))
}

pub fn matches(rs: &Ruleset, ev: &RecordedEvent) -> Vec<String> {
    let mut out = Vec::new();
    rs.evaluate(ev, |r| out.push(r.name().to_string()));
    out
}
