//! peregrine-collector: receives agents' event streams and writes them to outputs.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use peregrine_proto::v1::{enrollment_server::EnrollmentServer, ingest_server::IngestServer};
use peregrine_service::config::Layers;
use prometheus_client::registry::Registry;
use peregrine_collector::{
    config::CollectorConfig,
    enroll::{EnrollMetrics, EnrollService},
    ingest::{self, IngestService},
    output::{OutputMetrics, Outputs},
    queue::{self, QueueMetrics},
};
use tokio::sync::watch;

// Every event is decoded into owned strings and encoded once per output: with glibc's malloc,
// allocation and free were a quarter of the collector's CPU under load (perf); mimalloc is
// built for this.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Peregrine collector.
///
/// Configuration comes from --config, then PEREGRINE_COLLECTOR__<SECTION>__<KEY> environment
/// variables, then --set flags, each overriding the one before.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "PEREGRINE_COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Override one key, e.g. --set output.kind=file (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peregrine-collector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let huge_pages = peregrine_service::disable_huge_pages();
    let mut layers = Layers::new();
    if let Some(path) = &cli.config {
        layers = layers.file(path)?;
    }
    let config: CollectorConfig =
        layers.env("PEREGRINE_COLLECTOR", std::env::vars()).overrides(cli.sets.iter().map(String::as_str))?.build()?;
    peregrine_service::init_logging(&config.log_level);
    huge_pages.report();
    // One ingest thread by default: with two, a batch woke the other thread on its way to the
    // queue writer and back (docs/PERFORMANCE.md).
    let mut builder = if config.ingest_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.ingest_threads);
        b
    };
    let runtime = builder.enable_all().build().context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

/// After SIGTERM, how long agent streams get to end before the server stops waiting for them.
const STREAMS_GRACE: Duration = Duration::from_secs(2);
/// The largest HTTP/2 frame agents may send (the protocol allows up to 16 MiB - 1).
const MAX_FRAME_BYTES: u32 = 1 << 20;

async fn serve(config: CollectorConfig) -> anyhow::Result<()> {
    let output_metrics = OutputMetrics::default();
    let outputs = Outputs::build(&config.effective_outputs(), &output_metrics).context("building the outputs")?;
    let metrics = ingest::Metrics::default();
    let queue_metrics = QueueMetrics::default();
    let enroll_metrics = EnrollMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    enroll_metrics.register(&mut registry);
    let enroll = if config.enroll.enabled() {
        tracing::info!("enrollment: agents with a service-account token get a node certificate (enroll.*)");
        Some(config.enroll.build(enroll_metrics).context("enrollment (enroll.*)")?)
    } else {
        None
    };
    output_metrics.register(&mut registry);
    queue_metrics.register(&mut registry);
    let (queues, workers) = queue::start(&config.queue, &outputs, &queue_metrics)
        .with_context(|| format!("opening the output queues in {} (queue.dir)", config.queue.dir.display()))?;
    let (ready_tx, ready_rx) = watch::channel(false);
    let http = peregrine_service::http::serve(config.http.listen, Arc::new(registry), ready_rx, None).await?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen for agents on {} (choose another address with listen)", config.listen))?;
    let ingest_addr = listener.local_addr().context("ingest address")?;
    tracing::info!(ingest = %ingest_addr, %http, outputs = ?outputs.names(), "collector listening");

    let (stopping_tx, stopping) = watch::channel(false);
    let service =
        IngestService { queues, metrics, stopping: stopping.clone(), require_client_certificate: config.tls.enabled() };
    let server = IngestServer::new(service)
        // Agents compress their batches (collector.compression = gzip by default).
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(config.max_message_bytes);
    let _ = ready_tx.send(true);
    // Frames as large as a batch: with HTTP/2's default 16 KiB an agent's batch of a few hundred
    // events went out as one write per 16 KiB frame, and came in as as many reads.
    let mut builder = tonic::transport::Server::builder().max_frame_size(MAX_FRAME_BYTES);
    if config.tls.enabled() {
        let enroll_ca = enroll.as_ref().map(EnrollService::ca_pem);
        builder = builder.tls_config(server_tls(&config.tls, enroll_ca)?).context("collector TLS settings (tls.*)")?;
        tracing::info!("mutual TLS: agents must present a node certificate (tls.client_ca_file, or enrolled: enroll.*)");
    }
    let served = builder.add_service(server).add_optional_service(enroll.map(EnrollmentServer::new)).serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async move {
            peregrine_service::shutdown_signal().await;
            tracing::info!("stopping: no new streams; open ones are closed");
            let _ = stopping_tx.send(true);
        },
    );
    tokio::pin!(served);
    let mut signalled = stopping.clone();
    tokio::select! {
        r = &mut served => r.context("ingest server")?,
        () = async {
            if signalled.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(STREAMS_GRACE).await;
        } => tracing::warn!("agent streams still open after the grace period; dropping them"),
    }
    let _ = ready_tx.send(false);
    // Every acknowledged batch is already flushed to the queues; the workers get a bounded
    // time to deliver what is queued, the rest waits for the next start.
    workers.stop(Duration::from_millis(config.queue.drain_timeout_ms)).await;
    tracing::info!("collector stopped");
    Ok(())
}

/// `enroll_ca`: the enrollment CA, trusted besides `tls.client_ca_file`, when enrollment is on.
fn server_tls(
    tls: &peregrine_collector::config::ServerTls,
    enroll_ca: Option<&str>,
) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |path: &Option<std::path::PathBuf>, key: &str| -> anyhow::Result<Vec<u8>> {
        let path = path.as_ref().with_context(|| format!("{key} is not set"))?;
        std::fs::read(path).with_context(|| format!("reading {key} {}", path.display()))
    };
    let server = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&tls.cert_file, "tls.cert_file")?, read(&tls.key_file, "tls.key_file")?));
    let mut client_roots = match &tls.client_ca_file {
        Some(_) => read(&tls.client_ca_file, "tls.client_ca_file")?,
        None => Vec::new(),
    };
    let Some(enroll_ca) = enroll_ca else {
        return Ok(server.client_ca_root(Certificate::from_pem(client_roots)));
    };
    // An agent without a certificate yet must reach the Enrollment service: the handshake lets
    // it in without one, and the Ingest service refuses any stream that has none.
    client_roots.push(b'\n');
    client_roots.extend_from_slice(enroll_ca.as_bytes());
    Ok(server.client_ca_root(Certificate::from_pem(client_roots)).client_auth_optional(true))
}
