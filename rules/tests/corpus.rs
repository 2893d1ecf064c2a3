//! Compatibility with the upstream Falco rules, measured: every file parses, every rule whose
//! fields and operators Peregrine supports compiles, and the counts are pinned so that a change
//! in either direction shows here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod common;

use std::collections::BTreeMap;

use common::corpus_file;
use peregrine_rules::{FileCounts, RuleStatus, Ruleset};

fn counts(parsed: usize, compiled: usize, skipped: &[(&str, usize)]) -> FileCounts {
    FileCounts {
        parsed,
        compiled,
        skipped: skipped
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn load_alone(file: &str) -> Ruleset {
    Ruleset::from_sources(&[corpus_file(file)])
        .unwrap_or_else(|e| panic!("{file} does not load: {e}"))
}

#[test]
fn stable_rules_counts() {
    let rs = load_alone("falco_rules.yaml");
    assert_eq!(
        rs.report().counts("falco_rules.yaml"),
        counts(
            25,
            12,
            &[("event types not captured", 12), ("field not captured", 1)]
        )
    );
}

#[test]
fn incubating_rules_counts() {
    let f = "falco-incubating_rules.yaml";
    assert_eq!(
        load_alone(f).report().counts(f),
        counts(
            31,
            14,
            &[("event types not captured", 13), ("field not captured", 4)]
        )
    );
}

#[test]
fn sandbox_rules_counts() {
    let f = "falco-sandbox_rules.yaml";
    assert_eq!(
        load_alone(f).report().counts(f),
        counts(
            37,
            14,
            &[("event types not captured", 17), ("field not captured", 6)]
        )
    );
}

#[test]
fn all_three_files_together() {
    let rs = Ruleset::from_sources(&[
        corpus_file("falco_rules.yaml"),
        corpus_file("falco-incubating_rules.yaml"),
        corpus_file("falco-sandbox_rules.yaml"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let r = rs.report();
    assert_eq!(r.rules.len(), 93);
    assert_eq!(rs.rules().len(), 40);
    assert_eq!(r.counts("falco_rules.yaml").compiled, 12);
}

/// The 13 stable rules that need only exec, connect and container data: 12 compile, the one
/// needing DNS names (`fd.sip.name`) is reported. The other 12 need event types not captured.
#[test]
fn stable_rules_compiled_and_skipped_by_name() {
    let rs = load_alone("falco_rules.yaml");
    let compiled: Vec<&str> = rs.rules().iter().map(|r| r.name()).collect();
    assert_eq!(
        compiled,
        vec![
            "Run shell untrusted",
            "System user interactive",
            "Terminal shell in container",
            "Netcat Remote Code Execution in Container",
            "Search Private Keys or Passwords",
            "Remove Bulk Data from Disk",
            "Debugfs Launched in Privileged Container",
            "Find AWS Credentials",
            "Execution from /dev/shm",
            "Drop and execute new binary in container",
            "Disallowed SSH Connection Non Standard Port",
            "Fileless execution via memfd_create",
        ]
    );
    let skipped: Vec<String> = rs
        .report()
        .skipped()
        .map(|(n, r)| format!("{n}: {r}"))
        .collect();
    assert_eq!(
        skipped,
        vec![
            "Directory traversal monitored file read: needs event types Peregrine does not capture: open, openat, openat2",
            "Read sensitive file trusted after startup: needs event types Peregrine does not capture: open, openat, openat2",
            "Read sensitive file untrusted: needs event types Peregrine does not capture: open, openat, openat2",
            "Contact K8S API Server From Container: fields not captured: fd.sip.name",
            "Clear Log Activities: needs event types Peregrine does not capture: open, openat, openat2",
            "Create Symlink Over Sensitive Files: needs event types Peregrine does not capture: symlink, symlinkat",
            "Create Hardlink Over Sensitive Files: needs event types Peregrine does not capture: link, linkat",
            "Packet socket created in container: needs event types Peregrine does not capture: socket",
            "Redirect STDOUT/STDIN to Network Connection in Container: needs event types Peregrine does not capture: dup, dup2, dup3",
            "Linux Kernel Module Injection Detected: needs event types Peregrine does not capture: finit_module, init_module",
            "Detect release_agent File Container Escapes: needs event types Peregrine does not capture: open, openat, openat2",
            "PTRACE attached to process: needs event types Peregrine does not capture: ptrace",
            "PTRACE anti-debug attempt: needs event types Peregrine does not capture: ptrace",
        ]
    );
    // Event types of the compiled ones: exec rules on execve, the SSH rule on connect only.
    let ssh = rs
        .rule("Disallowed SSH Connection Non Standard Port")
        .unwrap();
    assert_eq!(ssh.event_types(), &[peregrine_rules::EventType::Connect]);
    for r in rs.rules().iter().filter(|r| r.name() != ssh.name()) {
        assert_eq!(
            r.event_types(),
            &[peregrine_rules::EventType::Execve],
            "{}",
            r.name()
        );
    }
}

#[test]
fn skipped_rules_in_the_other_files_name_their_reason() {
    for f in ["falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"] {
        let rs = load_alone(f);
        for r in &rs.report().rules {
            if let RuleStatus::Skipped(reason) = &r.status {
                let text = reason.to_string();
                assert!(
                    !text.is_empty() && (text.contains(": ") || text.contains("never")),
                    "{}: {text}",
                    r.name
                );
            }
        }
    }
    let rs = load_alone("falco-incubating_rules.yaml");
    let reasons: Vec<String> = rs
        .report()
        .skipped()
        .filter(|(_, r)| r.category() == "field not captured")
        .map(|(n, r)| format!("{n}: {r}"))
        .collect();
    assert_eq!(
        reasons,
        vec![
            "Launch Privileged Container: fields not captured: proc.vpid",
            "Launch Excessively Capable Container: fields not captured: proc.vpid, thread.cap_permitted",
            "Program run with disallowed http proxy env: fields not captured: proc.env",
            "Potential Local Privilege Escalation via Environment Variables Misuse: fields not captured: proc.env",
        ]
    );
}
