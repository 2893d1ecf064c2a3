//! `xtask/tools.toml`: every external program the build and tests use, and what installs it.

use serde::Deserialize;

pub const TOOLS_TOML: &str = include_str!("../tools.toml");

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub tool: Vec<Tool>,
}

#[derive(Debug, Deserialize)]
pub struct Tool {
    pub bin: String,
    pub kind: Kind,
    pub package: String,
    pub why: String,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Apt,
    Cargo,
    Rustup,
    /// Pinned Python packages (`name==version ...`) in the project venv ([`VENV`]).
    Pip,
    /// A Debian kernel package for the VM tests, downloaded and unpacked into `bin` (a
    /// directory), never installed on this machine: `package` is a metapackage, resolved to
    /// the versioned kernel it depends on at install time.
    Kernel,
}

/// The project venv that `kind = "pip"` entries install into, made with Debian's python3.
pub const VENV: &str = "/opt/peregrine/py";

impl Tool {
    /// A `pip` entry's pins as (name, version); an entry without `==` has no version.
    pub fn pins(&self) -> Vec<(&str, &str)> {
        self.package.split_whitespace().map(|spec| spec.split_once("==").unwrap_or((spec, ""))).collect()
    }
}

impl Manifest {
    pub fn load() -> anyhow::Result<Self> {
        toml::from_str(TOOLS_TOML).map_err(|e| anyhow::anyhow!("xtask/tools.toml: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// Every program a test runs must be looked up through the manifest (`support::tool`),
    /// so `cargo xtask setup` is guaranteed to install it: a literal `Command::new("prog")`
    /// in a test bypasses that and fails here.
    #[test]
    fn tests_run_only_manifest_tools() {
        let manifest = Manifest::load().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
        let mut files = Vec::new();
        for dir in ["agent/tests", "collector/tests", "xtask/tests"] {
            rust_files(&root.join(dir), &mut files);
        }
        assert!(!files.is_empty(), "no test sources found under {}", root.display());
        let mut used = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(!text.contains("Command::new(\""), "{}: run external programs via support::tool(\"name\")", f.display());
            for chunk in text.split("tool(\"").skip(1) {
                let name = chunk.split('"').next().unwrap().to_owned();
                used.push((f.clone(), name));
            }
        }
        for (file, name) in used {
            assert!(
                manifest.tool.iter().any(|t| t.bin == name),
                "{} uses `{name}`, which xtask/tools.toml does not install",
                file.display()
            );
        }
    }

    #[test]
    fn manifest_entries_are_complete() {
        let manifest = Manifest::load().unwrap();
        for t in &manifest.tool {
            assert!(!t.package.is_empty() && !t.why.is_empty(), "{t:?}");
        }
        assert!(manifest.tool.iter().any(|t| t.bin == "bpf-linker" && t.kind == Kind::Cargo));
        // Python packages are pinned, live in the project venv, and the venv's interpreter is
        // itself an entry (tests look it up); Debian's venv module is installed first.
        let pip: Vec<&Tool> = manifest.tool.iter().filter(|t| t.kind == Kind::Pip).collect();
        assert!(pip.iter().any(|t| t.bin == format!("{VENV}/bin/python3")), "the venv interpreter is listed");
        for t in &pip {
            assert!(t.bin.starts_with(&format!("{VENV}/")), "{t:?}: pip installs only into {VENV}");
            for (name, version) in t.pins() {
                assert!(!name.is_empty() && !version.is_empty(), "{t:?}: `{name}` is not pinned as name==version");
            }
        }
        assert!(manifest.tool.iter().any(|t| t.kind == Kind::Apt && t.package.split_whitespace().any(|p| p == "python3-venv")));
    }
}
