//! `docs/RULES.md` carries the field catalogue verbatim: this keeps the two in step.
//! To regenerate the table: `PEREGRINE_PRINT_FIELDS=1 cargo test -p peregrine-rules --test docs -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use peregrine_rules::fields::{Access, CATALOGUE};

fn table() -> String {
    let mut s = String::from("| field | type | captured | meaning |\n|---|---|---|---|\n");
    for d in CATALOGUE {
        let name = match d.access {
            Access::Ancestor { .. } => format!("`{}`, `{}[N]`", d.name, d.name),
            Access::Keyed(_) => format!("`{}[key]`", d.name),
            Access::NotCaptured { prefix: true, .. } => format!("`{}.*`, `{}[N]`", d.name, d.name),
            Access::NotCaptured { arg: true, .. } => format!("`{}`, `{}[...]`", d.name, d.name),
            _ => format!("`{}`", d.name),
        };
        let captured = if d.captured() { "yes" } else { "no" };
        s.push_str(&format!(
            "| {name} | {} | {captured} | {} |\n",
            d.ty.name(),
            d.meaning
        ));
    }
    s
}

#[test]
fn rules_md_lists_every_field() {
    let t = table();
    if std::env::var_os("PEREGRINE_PRINT_FIELDS").is_some() {
        println!("{t}");
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/RULES.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        doc.contains(&t),
        "docs/RULES.md's field table is out of date: regenerate it (see this file's header)"
    );
}
