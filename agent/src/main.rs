//! peregrine-agent: loads the kernel programs, drains their records, and streams events to the
//! collector. See docs/ARCHITECTURE.md for the path an event takes.

mod alloc;
mod clock;
mod config;
mod container;
mod decode;
mod drain;
mod enroll;
mod k8s;
mod kernel;
mod metrics;
mod net;
mod process;
mod queue;
mod rules;
mod sender;
mod ticker;
mod watermark;

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use peregrine_service::config::Layers;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

use crate::{
    config::AgentConfig,
    drain::{Drain, DrainConfig, Stages},
    kernel::Sensor,
    metrics::Metrics,
    process::{CacheConfig, Tracker},
    sender::Sender,
};

/// Peregrine node agent.
///
/// Configuration comes from --config, then PEREGRINE_AGENT__<SECTION>__<KEY> environment
/// variables, then --set flags, each overriding the one before.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "PEREGRINE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Override one key, e.g. --set collector.address=http://10.0.0.5:7700 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Instead of running: resolve every CO-RE relocation of this kernel object against the
    /// kernel's BTF, print one JSON line per relocation, and fail if any does not resolve.
    #[arg(long, value_name = "OBJECT")]
    check_core: Option<PathBuf>,
    /// The BTF to check against (default: the running kernel's, /sys/kernel/btf/vmlinux).
    #[arg(long, value_name = "FILE", requires = "check_core")]
    btf: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(object) = &cli.check_core {
        return match check_core(object, cli.btf.as_deref()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(3),
            Err(e) => {
                eprintln!("peregrine-agent: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peregrine-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-core`: true when every relocation resolved (or took its documented fallback).
fn check_core(object: &std::path::Path, btf: Option<&std::path::Path>) -> anyhow::Result<bool> {
    let bytes = std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let btf_path = btf.unwrap_or(std::path::Path::new("/sys/kernel/btf/vmlinux"));
    let target = aya::Btf::parse_file(btf_path, aya::Endianness::default())
        .with_context(|| format!("reading the kernel BTF {}", btf_path.display()))?;
    let list = kernel::core_check::check(&bytes, &target).map_err(anyhow::Error::msg)?;
    for r in &list {
        println!("{}", serde_json::to_string(r)?);
    }
    let summary = kernel::core_check::summary(&list);
    eprintln!("CO-RE relocations against {}: {summary:?}", btf_path.display());
    Ok(!summary.contains_key("unresolved"))
}

fn load_config(cli: &Cli) -> anyhow::Result<AgentConfig> {
    let mut layers = Layers::new();
    if let Some(path) = &cli.config {
        layers = layers.file(path)?;
    }
    Ok(layers.env("PEREGRINE_AGENT", std::env::vars()).overrides(cli.sets.iter().map(String::as_str))?.build()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let huge_pages = peregrine_service::disable_huge_pages();
    let config = load_config(&cli)?;
    peregrine_service::init_logging(&config.log_level);
    huge_pages.report();
    // One thread: the agent's work is a pipeline of short steps that hand events to each other
    // (drain → sender → gRPC stream). On several workers each hand-off could wake another
    // thread, and a wake-up (futex, a timer re-armed in epoll_wait) costs more CPU than the
    // step it carries; measured in docs/PERFORMANCE.md (exec). The DaemonSet's CPU limit is
    // below one core anyway.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    let rules = rules::RulesStage::start(&config.rules)?;
    let policy = kernel::SocketPolicy {
        exclude_loopback: config.network.exclude_loopback,
        udp_dedup_ns: config.network.udp_dedup_ms.saturating_mul(1_000_000),
        tcp_dedup_ns: config.network.tcp_dedup_ms.saturating_mul(1_000_000),
        flow_map_entries: config.network.flow_map_entries,
        // Validated with the configuration.
        deny4: config.network.deny4().unwrap_or_default(),
        deny_exec: config.process.deny_exec.clone(),
    };
    let (sensor, maps) = Sensor::load(&config.ebpf, &policy)?;
    tracing::info!(hooks = ?sensor.hooks, object = %config.ebpf.object.display(), "kernel programs loaded");

    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let k8s_metrics = k8s::K8sMetrics::default();
    if config.kubernetes.enabled {
        k8s_metrics.register(&mut registry);
    }
    let (ready_tx, ready_rx) = watch::channel(false);
    let (scrape_tx, scrapes) = mpsc::channel(4);
    let http = peregrine_service::http::serve(config.http.listen, Arc::new(registry), ready_rx, Some(scrape_refresh(scrape_tx))).await?;
    tracing::info!(%http, "serving /healthz /readyz /metrics");

    let (tx, rx) = queue::bounded(config.pipeline.queue_capacity);
    let spool = peregrine_journal::Journal::open(&config.spool.dir, config.spool.journal())
        .with_context(|| format!("opening the spool at {} (spool.dir)", config.spool.dir.display()))?;
    tracing::info!(dir = %config.spool.dir.display(), unacknowledged = spool.depth().records, "spool opened");
    // Read before this run records anything: the gap since the previous run's last status.
    let watermark = watermark::Watermark::in_dir(&config.spool.dir);
    let previous_run = watermark.previous();
    let sender = Sender {
        node_name: config.node_name.clone(),
        collector: config.collector.clone(),
        pipeline: config.pipeline.clone(),
        metrics: metrics.clone(),
        spool,
        watermark: Some(watermark),
        unflushed_mark: None,
    };
    let sending = tokio::spawn(sender.run(rx));

    let stamper = drain::Stamper::new(config.node_name.clone(), config.cluster_name.clone());
    tracing::info!(node = %stamper.node(), cluster = %stamper.cluster(), run = %stamper.agent_run(), "agent started");
    // Seed after attaching: a process started in between is in the ring, and its record,
    // applied after the seed, is the newer truth.
    let mut tracker = Tracker::new(
        config.node_name.clone(),
        CacheConfig {
            capacity: config.process.cache_capacity,
            grace_ns: config.process.exit_grace_ms.saturating_mul(1_000_000),
            ancestry_depth: config.process.ancestry_depth,
            tick_ns: process::procfs::tick_ns(),
        },
    )
    .with_fork_events(config.process.fork_events);
    let seeded = tracker.seed();
    tracing::info!(processes = seeded, "process cache seeded from /proc");
    let net = net::ConnTracker::new(net::NetConfig {
        outcome_wait_ns: config.network.outcome_wait_ms.saturating_mul(1_000_000),
        tcp_dedup_ns: config.network.tcp_dedup_ms.saturating_mul(1_000_000),
        flow_map_entries: usize::try_from(config.network.flow_map_entries).unwrap_or(usize::MAX),
        // Both parsed in validation already.
        pod_cidrs: config.network.pod_cidrs().unwrap_or_default(),
        service_cidrs: config.network.service_cidrs().unwrap_or_default(),
    });
    let (mut containers, resolutions) = start_containers(&config, &metrics);
    if config.kubernetes.enabled {
        let (pods, _watch) = k8s::start(&config.kubernetes, &config.node_name, k8s_metrics)?;
        tracing::info!(node = %config.node_name, "watching this node's pods in the Kubernetes API");
        containers = containers.with_pods(Box::new(move |uid| pods.get(uid).map(|p| api_pod(&p))));
    }
    let drain = Drain::new(
        sensor,
        maps,
        Stages { tracker, net, containers, resolutions, rules, scrapes },
        stamper,
        tx,
        metrics,
        DrainConfig {
            drain_interval: Duration::from_millis(config.ebpf.drain_interval_ms),
            heartbeat_interval: Duration::from_millis(config.pipeline.heartbeat_interval_ms),
            pause_file: config.ebpf.drain_pause_file.clone(),
            previous_run,
        },
    );
    alloc::release_free_memory();
    let (stop_tx, stop_rx) = watch::channel(false);
    let draining = tokio::spawn(drain.run(stop_rx));
    let _ = ready_tx.send(true);

    peregrine_service::shutdown_signal().await;
    tracing::info!("stopping: draining the kernel ring and flushing to the collector");
    let _ = stop_tx.send(true);
    draining.await.context("drain task")?.context("ring buffer readiness")?;
    sending.await.context("sender task")?;
    Ok(())
}

/// How long a scrape of /metrics waits for the drain to read the figures it reads on demand
/// (the drain may be in the middle of a pass); past it, the last figures are served.
const SCRAPE_REFRESH_WAIT: Duration = Duration::from_secs(1);

/// A scrape asks the drain, which owns the kernel programs, for their statistics first.
fn scrape_refresh(drain: mpsc::Sender<tokio::sync::oneshot::Sender<()>>) -> peregrine_service::http::Refresh {
    Arc::new(move || {
        let drain = drain.clone();
        Box::pin(async move {
            let (done, answered) = tokio::sync::oneshot::channel();
            if drain.try_send(done).is_ok() {
                let _ = tokio::time::timeout(SCRAPE_REFRESH_WAIT, answered).await;
            }
        })
    })
}

/// The container stage and the resolver task answering its runtime lookups. Seeded after the
/// kernel programs are attached, like the process cache: a container created in between is
/// in the ring as a cgroup mkdir.
fn start_containers(
    config: &AgentConfig,
    metrics: &Metrics,
) -> (container::ContainerStage, mpsc::Receiver<container::Resolution>) {
    let (answer_tx, answer_rx) = mpsc::channel(1024);
    let host = container::HostView::of_node();
    if !config.container.enabled {
        return (container::ContainerStage::new(config.container.clone(), None, host, metrics.clone()), answer_rx);
    }
    let (request_tx, request_rx) = mpsc::channel(4096);
    let resolver = container::Resolver { config: config.container.clone(), requests: request_rx, answers: answer_tx };
    tokio::spawn(resolver.run());
    let mut stage = container::ContainerStage::new(config.container.clone(), Some(request_tx), host, metrics.clone());
    match kernel::cgroup2_mount(config.ebpf.cgroup2_path.as_deref()) {
        Ok(mount) => {
            let n = stage.seed(&mount);
            tracing::info!(cgroups = n, mount = %mount.display(), "cgroup map seeded");
        }
        Err(e) => tracing::warn!(error = %e, "no cgroup2 hierarchy: events carry no container context"),
    }
    (stage, answer_rx)
}

fn api_pod(p: &k8s::PodMeta) -> container::ApiPod {
    container::ApiPod {
        labels: p.labels.clone(),
        service_account: p.service_account.clone(),
        workload_kind: p.workload_kind.clone(),
        workload_name: p.workload_name.clone(),
    }
}
