use peregrine_rules::*;
fn t(s: &str) { println!("{:?} => {:?}", s, Ruleset::from_sources(&[RulesSource{name:"t".into(), text:s.into()}]).map(|_|())); }
#[test]
fn explore2() {
    t("- list: a\n  items: [\n    \"x\",\n    \"y\"\n  ]\n");
    t("- list: a\n  items: [\n    x,\n    y\n  ]\n");
    t("- list: a\n  items: [\n    \"x\",\n    y\n  ]\n");
    t("- list: a\n  items: [\n    x,\n    \"y\"\n    ]\n");
    t("- list: a\n  items: [\"x\",\n    \"y\"\n  ]\n");
    t("- list: a\n  items: [\"x\", \"y\"\n  ]\n");
    t("- list: a\n  items: [\"y\"\n   ]\n");
    t("- list: a\n  items: [\"y\"\n  ]\n");
}
