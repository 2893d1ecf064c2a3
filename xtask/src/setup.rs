//! Installs what `xtask/tools.toml` lists and is missing. Idempotent and quick when done.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    Stages,
    manifest::{Kind, Manifest, VENV},
    sh,
};

/// LLVM major shared by the nightly rustc, bpf-linker and clang (bitcode must agree).
const LLVM_MAJOR: &str = "22";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn run(stages: &mut Stages) -> Result<()> {
    let manifest = Manifest::load()?;
    stages.run("setup: Debian packages", || apt(&manifest))?;
    stages.run("setup: nightly toolchain and rust-src", nightly)?;
    stages.run("setup: bpf-linker", || cargo_tools(&manifest))?;
    stages.run("setup: Python packages", || pip(&manifest))?;
    stages.run("setup: test kernels", || kernels(&manifest))?;
    Ok(())
}

/// Unpacks each `kind = "kernel"` package into its directory (for QEMU; /boot is untouched).
fn kernels(manifest: &Manifest) -> Result<()> {
    for tool in manifest.tool.iter().filter(|t| t.kind == Kind::Kernel) {
        let dir = Path::new(&tool.bin);
        if dir.join("boot").is_dir() {
            eprintln!("    kernel {} present", tool.package);
            continue;
        }
        eprintln!("    missing {} ({}): unpacking {}", tool.bin, tool.why, tool.package);
        let depends = Command::new("apt-cache").args(["depends", &tool.package]).output().context("running apt-cache")?;
        let mut versioned = String::from_utf8_lossy(&depends.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")).map(str::to_owned));
        if versioned.is_none() {
            sh(Command::new("apt-get").args(["update", "-q"]))?;
            let depends = Command::new("apt-cache").args(["depends", &tool.package]).output().context("running apt-cache")?;
            versioned = String::from_utf8_lossy(&depends.stdout)
                .lines()
                .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")).map(str::to_owned));
        }
        let versioned = versioned.with_context(|| format!("apt-cache depends {} names no linux-image package", tool.package))?;
        let work = dir.with_extension("download");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        // _apt cannot write into root's directory: the download runs as root, on purpose.
        sh(Command::new("apt-get").args(["download", "-q", "-o", "APT::Sandbox::User=root", &versioned]).current_dir(&work))?;
        let deb = std::fs::read_dir(&work)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download {versioned} left no .deb"))?;
        let staging = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&staging);
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging))?;
        std::fs::rename(&staging, dir).with_context(|| format!("moving the unpacked kernel to {}", dir.display()))?;
        std::fs::remove_dir_all(&work)?;
        if !dir.join("boot").is_dir() {
            bail!("{} has no boot/ after unpacking {versioned}", dir.display());
        }
    }
    Ok(())
}

/// PATH with LLVM 22's tools first (bpf-linker's build and the BPF link look for them there).
pub fn path_with_llvm() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let cargo_bin = home_cargo_bin();
    format!("{LLVM_BIN}:{}:{path}", cargo_bin.display())
}

fn home_cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// Whether a manifest `bin` is present: an absolute path that exists, or a program on PATH.
pub fn present(bin: &str) -> bool {
    if bin.starts_with('/') {
        return Path::new(bin).exists();
    }
    std::env::split_paths(&path_with_llvm()).any(|dir| dir.join(bin).is_file())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt(manifest: &Manifest) -> Result<()> {
    let mut missing: Vec<String> = Vec::new();
    for tool in manifest.tool.iter().filter(|t| t.kind == Kind::Apt) {
        let packages: Vec<&str> = tool.package.split_whitespace().collect();
        if !present(&tool.bin) || packages.iter().any(|p| !dpkg_installed(p)) {
            eprintln!("    missing {} ({}): needs {}", tool.bin, tool.why, tool.package);
            missing.extend(packages.iter().map(|p| (*p).to_owned()));
        }
    }
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        eprintln!("    all Debian packages present");
        return Ok(());
    }
    eprintln!("    installing: {}", missing.join(" "));
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for tool in manifest.tool.iter().filter(|t| t.kind == Kind::Apt) {
        if !present(&tool.bin) {
            bail!("{} is still missing after installing {}", tool.bin, tool.package);
        }
    }
    Ok(())
}

fn nightly() -> Result<()> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "-vV"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("running rustup (the machine's Rust toolchain manager)")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: the kernel programs need nightly (build-std); this machine's image ships one, \
             install it with `rustup toolchain install nightly` where the Rust distribution server is reachable"
        );
    }
    let info = String::from_utf8_lossy(&out.stdout);
    let llvm = info.lines().find_map(|l| l.strip_prefix("LLVM version: ")).unwrap_or("unknown");
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        bail!("nightly rustc uses LLVM {llvm}, but bpf-linker and clang here are LLVM {LLVM_MAJOR}: the bitcode would not link");
    }
    let comps = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("listing nightly components")?;
    if String::from_utf8_lossy(&comps.stdout).lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("    nightly (LLVM {llvm}) with rust-src present");
        return Ok(());
    }
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn cargo_tools(manifest: &Manifest) -> Result<()> {
    for tool in manifest.tool.iter().filter(|t| t.kind == Kind::Cargo) {
        let (name, version) = tool.package.split_once('@').unwrap_or((tool.package.as_str(), ""));
        let have = Command::new(home_cargo_bin().join(&tool.bin))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(version))
            .unwrap_or(false);
        if have {
            eprintln!("    {} {version} present", tool.bin);
            continue;
        }
        eprintln!("    installing {} {version} ({})", tool.bin, tool.why);
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.args(["install", "--locked", name])
            .env("PATH", path_with_llvm())
            .env_remove("RUSTUP_TOOLCHAIN");
        if !version.is_empty() {
            c.args(["--version", version]);
        }
        if name == "bpf-linker" {
            // Default features target LLVM 23; the nightly and clang here are LLVM 22.
            c.args(["--no-default-features", "--features", "llvm-22"]);
        }
        sh(&mut c)?;
    }
    Ok(())
}

/// Debian's interpreter: `python3` on PATH may be a pyenv shim, whose Python the venv would
/// then depend on.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Whether every `name==version` pin is installed in the venv (one interpreter start).
fn pins_installed(python: &Path, pins: &[(&str, &str)]) -> bool {
    if pins.is_empty() {
        return true;
    }
    const CHECK: &str = r#"
import sys
from importlib.metadata import version, PackageNotFoundError
ok = True
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        ok = ok and (not want or version(name) == want)
    except PackageNotFoundError:
        ok = False
sys.exit(0 if ok else 1)
"#;
    Command::new(python)
        .arg("-I")
        .arg("-c")
        .arg(CHECK)
        .args(pins.iter().map(|(n, v)| if v.is_empty() { (*n).to_owned() } else { format!("{n}=={v}") }))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Makes the project venv with Debian's python3 if it is missing, then installs the pinned
/// packages of every `kind = "pip"` entry that is absent or at another version.
fn pip(manifest: &Manifest) -> Result<()> {
    let venv = Path::new(VENV);
    let python = venv.join("bin/python3");
    let tools: Vec<_> = manifest.tool.iter().filter(|t| t.kind == Kind::Pip).collect();
    let missing: Vec<_> = tools.iter().filter(|t| !present(&t.bin) || !pins_installed(&python, &t.pins())).collect();
    if missing.is_empty() {
        eprintln!("    all Python packages present in {VENV}");
        return Ok(());
    }
    if !python.exists() {
        eprintln!("    creating the venv {VENV} with {SYSTEM_PYTHON}");
        if let Some(parent) = venv.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        sh(Command::new(SYSTEM_PYTHON).args(["-m", "venv"]).arg(venv))?;
    }
    let mut specs: Vec<String> = Vec::new();
    for tool in &missing {
        eprintln!("    missing {} ({}): needs {}", tool.bin, tool.why, tool.package);
        specs.extend(tool.package.split_whitespace().map(str::to_owned));
    }
    specs.sort();
    specs.dedup();
    eprintln!("    installing into {VENV}: {}", specs.join(" "));
    sh(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(&specs)
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME"))?;
    for tool in &tools {
        if !present(&tool.bin) || !pins_installed(&python, &tool.pins()) {
            bail!("{} ({}) is still missing from {VENV} after installing it", tool.bin, tool.package);
        }
    }
    Ok(())
}
