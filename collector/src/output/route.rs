//! Per-output routing (event kinds, alert priority, a filter in the rules language) and argv
//! redaction.

use std::collections::HashMap;

use peregrine_proto::{Event, Kind, Process};
use peregrine_rules::{RulesSource, Ruleset, proto_view::RuleEvent};
use regex::Regex;

/// Falco's priorities, most severe first.
pub const PRIORITIES: &[&str] = &["Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug"];

/// 0 = Emergency ... 7 = Debug; case-insensitive, `Info` accepted for Informational.
pub fn priority_rank(p: &str) -> Option<usize> {
    let p = p.trim();
    if p.eq_ignore_ascii_case("info") {
        return Some(6);
    }
    PRIORITIES.iter().position(|q| q.eq_ignore_ascii_case(p))
}

pub struct Route {
    kinds: Vec<String>,
    /// Alerts whose rank is above this (less severe) are not sent.
    max_rank: Option<usize>,
}

impl Route {
    pub fn new(kinds: &[String], min_priority: Option<&str>) -> Result<Self, String> {
        let max_rank = match min_priority {
            Some(p) => Some(priority_rank(p).ok_or_else(|| format!("min_priority `{p}` is not a Falco priority"))?),
            None => None,
        };
        Ok(Self { kinds: kinds.to_vec(), max_rank })
    }

    /// Whether events of this kind are sent, as far as the kind decides: alerts under a
    /// `min_priority` also need [`Route::accepts`] on the decoded event.
    pub fn accepts_kind(&self, kind: &str) -> bool {
        self.kinds.iter().any(|k| k == kind)
    }

    /// Whether [`Route::accepts_kind`] is the whole answer for this kind.
    pub fn kind_decides(&self, kind: &str) -> bool {
        kind != "alert" || self.max_rank.is_none()
    }

    pub fn accepts(&self, e: &Event) -> bool {
        if !self.accepts_kind(e.kind_name()) {
            return false;
        }
        match (&e.kind, self.max_rank) {
            // An alert with an unknown priority is sent: a typo upstream must not hide it.
            (Some(Kind::Alert(a)), Some(max)) => priority_rank(&a.priority).is_none_or(|r| r <= max),
            _ => true,
        }
    }
}

/// An output's `filter`: a condition in the rules language (Falco's, as in rules files, with
/// the same fields), evaluated on the events it can be evaluated on (exec, connect, accept,
/// listen); those are sent only when it holds. Other kinds pass: route them with `kinds`.
/// The collector has no node's user database, so `user.name` is absent here; use `user.uid`.
pub struct Filter {
    rules: Ruleset,
}

impl Filter {
    pub fn new(condition: &str) -> Result<Self, String> {
        // A one-rule rules file: the condition goes through the engine's own parser and
        // compiler, so the language and its errors are those of rules files.
        let mut text = String::from("- rule: filter\n  desc: the output's filter\n  output: filter\n  priority: DEBUG\n  condition: >-\n");
        for line in condition.lines() {
            text.push_str("    ");
            text.push_str(line);
            text.push('\n');
        }
        let rules = Ruleset::from_sources(&[RulesSource { name: "filter".into(), text }]).map_err(|e| e.to_string())?;
        if let Some((_, reason)) = rules.report().skipped().next() {
            return Err(format!("`{condition}` cannot be evaluated: {reason}"));
        }
        Ok(Self { rules })
    }

    pub fn keeps(&self, e: &Event) -> bool {
        let users = HashMap::new();
        match RuleEvent::new(e, &users) {
            Some(view) => self.rules.first_match(&view).is_some(),
            None => true,
        }
    }
}

pub const REDACTED: &str = "[REDACTED]";

/// Replaces every match of the configured patterns in command lines with `[REDACTED]`.
///
/// Applied to each argv element of the event's process and its ancestors, and to an alert's
/// output text and field values (which quote command lines). A pattern matches inside one
/// argv element: `--password=\S+` works, a pattern spanning two elements does not.
pub struct Redactor {
    patterns: Vec<Regex>,
}

impl Redactor {
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let patterns = patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| format!("redact_argv_patterns: `{p}`: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    fn redact(&self, s: &mut String) {
        for re in &self.patterns {
            if re.is_match(s) {
                *s = re.replace_all(s, REDACTED).into_owned();
            }
        }
    }

    fn process(&self, p: &mut Process) {
        for a in &mut p.argv {
            self.redact(a);
        }
    }

    pub fn apply(&self, e: &mut Event) {
        if self.is_empty() {
            return;
        }
        match &mut e.kind {
            Some(Kind::Exec(x)) => {
                if let Some(p) = &mut x.process {
                    self.process(p);
                }
                for a in &mut x.ancestors {
                    for s in &mut a.argv {
                        self.redact(s);
                    }
                }
            }
            Some(Kind::Fork(x)) => {
                if let Some(p) = &mut x.process {
                    self.process(p);
                }
            }
            Some(Kind::Exit(x)) => {
                if let Some(p) = &mut x.process {
                    self.process(p);
                }
            }
            Some(Kind::Connection(x)) => {
                if let Some(p) = &mut x.process {
                    self.process(p);
                }
            }
            Some(Kind::Alert(a)) => {
                if let Some(p) = &mut a.process {
                    self.process(p);
                }
                self.redact(&mut a.output);
                for v in a.fields.values_mut() {
                    self.redact(v);
                }
            }
            Some(Kind::Loss(_)) | Some(Kind::Status(_)) | Some(Kind::ContainerStarted(_)) | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_proto::{ProcessExec, v1::Alert};

    fn exec(argv: &[&str]) -> Event {
        Event {
            kind: Some(Kind::Exec(ProcessExec {
                process: Some(Process { argv: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }.into()),
                ancestors: vec![],
            })),
            ..Default::default()
        }
    }

    fn alert(priority: &str) -> Event {
        Event { kind: Some(Kind::Alert(Alert { priority: priority.into(), ..Default::default() })), ..Default::default() }
    }

    #[test]
    fn routes_by_kind_and_priority() {
        let r = Route::new(&["exec".into(), "alert".into()], Some("warning")).unwrap();
        assert!(r.accepts(&exec(&["ls"])));
        assert!(r.accepts(&alert("Critical")));
        assert!(r.accepts(&alert("Warning")));
        assert!(!r.accepts(&alert("Notice")));
        assert!(r.accepts(&alert("Nonsense")), "unknown priorities are not hidden");
        let only_alerts = Route::new(&["alert".into()], None).unwrap();
        assert!(!only_alerts.accepts(&exec(&["ls"])));
        assert!(only_alerts.accepts(&alert("Debug")));
    }

    #[test]
    fn redacts_argv_and_alert_text() {
        let r = Redactor::new(&["--password=\\S+".into(), "AKIA[0-9A-Z]{16}".into()]).unwrap();
        let mut e = exec(&["mysql", "--password=hunter2", "-u", "root", "key=AKIAABCDEFGHIJKLMNOP"]);
        r.apply(&mut e);
        assert_eq!(e.process().unwrap().argv, ["mysql", "[REDACTED]", "-u", "root", "key=[REDACTED]"]);
        let mut a = alert("Warning");
        if let Some(Kind::Alert(x)) = &mut a.kind {
            x.output = "cmdline=mysql --password=hunter2".into();
            x.fields.insert("proc.cmdline".into(), "mysql --password=hunter2".into());
        }
        r.apply(&mut a);
        let Some(Kind::Alert(x)) = &a.kind else { unreachable!() };
        assert_eq!(x.output, "cmdline=mysql [REDACTED]");
        assert_eq!(x.fields["proc.cmdline"], "mysql [REDACTED]");
    }
}
