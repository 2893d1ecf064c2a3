mod common;
use peregrine_rules::*;

#[test]
fn explore() {
    for f in ["falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"] {
        match Ruleset::from_sources(&[common::corpus_file(f)]) {
            Ok(rs) => {
                println!("== {f}: {:?}", rs.report().counts(f));
                for r in &rs.report().rules {
                    match &r.status {
                        RuleStatus::Compiled(t) => println!("  OK   {} {:?} na={:?} unk={:?}", r.name, t, r.output_fields_not_captured, r.output_fields_unknown),
                        RuleStatus::Skipped(s) => println!("  SKIP {} -- [{}] {}", r.name, s.category(), s),
                    }
                }
                for w in &rs.report().warnings { println!("  warn {w}"); }
            }
            Err(e) => println!("== {f}: ERROR {e}"),
        }
    }
}
