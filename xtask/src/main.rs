//! `cargo xtask <command>`: the project's set-up, build, run and test entry points.
//!
//! Everything a fresh machine of the project's kind needs is installed from here
//! (`xtask/tools.toml`), idempotently: a second run checks and installs nothing.

mod bench;
mod image;
mod manifest;
mod run;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Peregrine developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (Debian packages, nightly rust-src, bpf-linker).
    Setup,
    /// Set up, then build the kernel object and the workspace.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, start a collector and an agent on this node, and show events live.
    Run {
        /// Cluster name the events carry.
        #[arg(long, default_value = "local")]
        cluster: String,
        /// Extra agent overrides (KEY=VALUE), passed as --set.
        #[arg(long = "agent-set")]
        agent_sets: Vec<String>,
    },
    /// Benchmarks (never part of `test`): `exec` measures the agent against an exec storm,
    /// `connect` against a connect storm, `syscall` what every syscall pays for the agent being
    /// there, `idle` the agent and collector with nothing to do,
    /// `rules` the rules engine, `ingest` the collector.
    Bench {
        /// What to measure: exec, connect, syscall, idle, rules or ingest.
        what: String,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Seconds per condition per round.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Storm workers; repeat for several (default: 1 and 2).
        #[arg(long = "workers")]
        workers: Vec<usize>,
        /// The agent's CPU limit in millicores, as in the DaemonSet.
        #[arg(long, default_value_t = 500)]
        cpu_millis: u32,
        /// Peers to measure after the agent rounds (auditd).
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// Run this many execs through one agent and report its memory instead of rounds.
        #[arg(long)]
        soak: Option<u64>,
        /// Also measure this agent binary (an earlier build) in the same rounds, and report
        /// this build's CPU and throughput against it, paired per round.
        #[arg(long)]
        baseline_agent: Option<PathBuf>,
        /// Also measure the in-kernel cost with this kernel object (an earlier build's
        /// target/ebpf/bpfel-unknown-none/release/peregrine-ebpf), interleaved with this
        /// build's for `--rounds` rounds (at least 2), and report the paired ratios per program.
        #[arg(long)]
        baseline_ebpf: Option<PathBuf>,
        /// Also measure this collector binary (an earlier build) in the same rounds, and
        /// report this build's collector CPU against it, paired per round (with
        /// `--baseline-agent`, the baseline rounds run both earlier builds).
        #[arg(long)]
        baseline_collector: Option<PathBuf>,
    },
    /// Build the agent and collector OCI images (umoci) into target/images.
    Image {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, and run every test.
    Test {
        /// Arguments passed to `cargo test` after `--` (e.g. a test name filter).
        rest: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let mut stages = Stages::new();
    match cli.command {
        Cmd::Setup => setup::run(&mut stages)?,
        Cmd::Build { release } => {
            setup::run(&mut stages)?;
            build_all(&mut stages, release)?;
        }
        Cmd::Run { cluster, agent_sets } => {
            setup::run(&mut stages)?;
            let bins = build_all(&mut stages, true)?;
            stages.report();
            run::run(&bins, &cluster, &agent_sets)?;
            return Ok(());
        }
        Cmd::Bench { what, rounds, seconds, workers, cpu_millis, peers, soak, baseline_agent, baseline_ebpf, baseline_collector } => {
            setup::run(&mut stages)?;
            if what == "rules" {
                // Criterion, in-process: the compiled upstream stable rules over recorded execs.
                stages.run("bench rules", || sh(cargo().args(["bench", "-p", "peregrine-rules", "--bench", "eval"])))?;
                stages.report();
                return Ok(());
            }
            let bins = build_all(&mut stages, true)?;
            if what == "ingest" {
                stages.run("bench ingest", || bench::ingest(&bins, rounds, seconds))?;
                stages.report();
                return Ok(());
            }
            if what == "idle" {
                let args = bench::Bench { workload: bench::Workload::Exec, rounds, seconds, workers: Vec::new(), cpu_millis, peers, soak: None, baseline_agent, baseline_ebpf: None, baseline_collector };
                stages.run("bench idle", || bench::idle(&bins, &args))?;
                stages.report();
                return Ok(());
            }
            let workers = if workers.is_empty() { vec![1, 2] } else { workers };
            let workload = match what.as_str() {
                "exec" => bench::Workload::Exec,
                "connect" => bench::Workload::Connect,
                "syscall" => bench::Workload::Syscall,
                other => bail!("unknown benchmark `{other}` (known: exec, connect, syscall, idle, rules, ingest)"),
            };
            stages.run(&format!("bench {what}"), || {
                bench::run(&bins, &bench::Bench { workload, rounds, seconds, workers, cpu_millis, peers, soak, baseline_agent: baseline_agent.clone(), baseline_ebpf: baseline_ebpf.clone(), baseline_collector: baseline_collector.clone() })
            })?;
        }
        Cmd::Image { release } => {
            setup::run(&mut stages)?;
            let bins = build_all(&mut stages, release)?;
            let (agent, collector) = stages.run("build images", || image::build(&bins, &root().join("target/images")))?;
            eprintln!("images (OCI layout tarballs; `ctr images import` or `skopeo copy oci-archive:`):\n  {}\n  {}", agent.display(), collector.display());
        }
        Cmd::Test { rest } => {
            setup::run(&mut stages)?;
            test(&mut stages, &rest)?;
        }
    }
    stages.report();
    Ok(())
}

/// Times each stage and prints a summary (CI logs show where the minutes go).
pub struct Stages {
    started: Instant,
    done: Vec<(String, f64)>,
}

impl Stages {
    fn new() -> Self {
        Self { started: Instant::now(), done: Vec::new() }
    }

    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("==> {name}");
        let t = Instant::now();
        let out = f();
        let secs = t.elapsed().as_secs_f64();
        eprintln!("<== {name}: {secs:.1}s{}", if out.is_err() { " (failed)" } else { "" });
        self.done.push((name.to_owned(), secs));
        out
    }

    fn report(&self) {
        eprintln!("---- stage times ----");
        for (name, secs) in &self.done {
            eprintln!("{secs:>8.1}s  {name}");
        }
        eprintln!("{:>8.1}s  total", self.started.elapsed().as_secs_f64());
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_owned).unwrap_or_default()
}

/// Runs a command, failing with its command line when it fails.
pub fn sh(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// A cargo invocation for the host toolchain, without the variables `cargo xtask` itself set.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Builds the kernel object with nightly + build-std; returns the object's path.
pub fn build_ebpf(target_dir: &Path, abi_override: Option<u32>) -> Result<PathBuf> {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "build", "--release", "--target-dir"])
        .arg(target_dir)
        .current_dir(root().join("ebpf/programs"))
        .env("PATH", setup::path_with_llvm())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO");
    if let Some(abi) = abi_override {
        c.env("PEREGRINE_EBPF_ABI_OVERRIDE", abi.to_string());
    } else {
        c.env_remove("PEREGRINE_EBPF_ABI_OVERRIDE");
    }
    sh(&mut c)?;
    Ok(target_dir.join("bpfel-unknown-none/release/peregrine-ebpf"))
}

pub struct Binaries {
    pub agent: PathBuf,
    pub collector: PathBuf,
    pub ebpf: PathBuf,
}

fn build_all(stages: &mut Stages, release: bool) -> Result<Binaries> {
    let ebpf = stages.run("build kernel object", || build_ebpf(&root().join("target/ebpf"), None))?;
    stages.run("build workspace", || {
        let mut c = cargo();
        c.args(["build", "--workspace", "--bins"]);
        if release {
            c.arg("--release");
        }
        sh(&mut c)
    })?;
    let dir = root().join("target").join(if release { "release" } else { "debug" });
    Ok(Binaries { agent: dir.join("peregrine-agent"), collector: dir.join("peregrine-collector"), ebpf })
}

/// ABI version of the deliberately mismatched object the ABI test loads.
const WRONG_ABI: u32 = 999;

fn test(stages: &mut Stages, rest: &[String]) -> Result<()> {
    // Built first, in the same target directory as the real object and copied aside: a
    // directory of its own would hold a second copy of core and the build scripts (~300 MB),
    // and CI machines can be short of disk. Only the last crate is rebuilt after it.
    let wrong = stages.run("build kernel object with a foreign ABI", || {
        let built = build_ebpf(&root().join("target/ebpf"), Some(WRONG_ABI))?;
        let kept = root().join(format!("target/ebpf/peregrine-ebpf-abi-{WRONG_ABI}"));
        std::fs::copy(&built, &kept).with_context(|| format!("cannot copy {} to {}", built.display(), kept.display()))?;
        Ok(kept)
    })?;
    let bins = build_all(stages, false)?;
    // The lint policy (no unwrap/expect/panic on outside input, SAFETY comments) is enforced,
    // not advisory.
    stages.run("clippy (lint policy)", || {
        sh(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
    })?;
    // The manifests, offline: rendered, validated strictly, checkov clean (deploy/check.py).
    stages.run("deploy checks", || {
        sh(Command::new(format!("{}/bin/python3", manifest::VENV)).arg(root().join("deploy/check.py")))
    })?;
    let (agent_image, _) = stages.run("build images", || image::build(&bins, &root().join("target/images")))?;
    stages.run("cargo test", || {
        let mut c = cargo();
        c.args(["test", "--workspace", "--no-fail-fast"])
            .env("PEREGRINE_EBPF_OBJECT", &bins.ebpf)
            .env("PEREGRINE_AGENT_IMAGE", &agent_image)
            .env("PEREGRINE_EBPF_OBJECT_WRONG_ABI", &wrong)
            .env("PEREGRINE_EBPF_WRONG_ABI", WRONG_ABI.to_string());
        if !rest.is_empty() {
            c.arg("--").args(rest);
        }
        sh(&mut c)
    })
}
