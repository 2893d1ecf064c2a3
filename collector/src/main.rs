//! peregrine-collector: receives agents' event streams and writes them to outputs.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::Parser;
use peregrine_proto::v1::ingest_server::IngestServer;
use peregrine_service::config::Layers;
use prometheus_client::registry::Registry;
use peregrine_collector::{
    config::CollectorConfig,
    ingest::{self, IngestService},
    output::{OutputMetrics, Outputs},
};
use tokio::sync::watch;

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
    let mut layers = Layers::new();
    if let Some(path) = &cli.config {
        layers = layers.file(path)?;
    }
    let config: CollectorConfig =
        layers.env("PEREGRINE_COLLECTOR", std::env::vars()).overrides(cli.sets.iter().map(String::as_str))?.build()?;
    peregrine_service::init_logging(&config.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: CollectorConfig) -> anyhow::Result<()> {
    let output_metrics = OutputMetrics::default();
    let outputs = Outputs::build(&config.effective_outputs(), &output_metrics).context("building the outputs")?;
    let metrics = ingest::Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    output_metrics.register(&mut registry);
    let (ready_tx, ready_rx) = watch::channel(false);
    let http = peregrine_service::http::serve(config.http.listen, Arc::new(registry), ready_rx).await?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen for agents on {} (choose another address with listen)", config.listen))?;
    let ingest_addr = listener.local_addr().context("ingest address")?;
    tracing::info!(ingest = %ingest_addr, %http, outputs = ?outputs.names(), "collector listening");

    let service = IngestService { outputs, metrics };
    let server = IngestServer::new(service)
        .max_decoding_message_size(config.max_message_bytes);
    let _ = ready_tx.send(true);
    tonic::transport::Server::builder()
        .add_service(server)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            peregrine_service::shutdown_signal(),
        )
        .await
        .context("ingest server")?;
    tracing::info!("collector stopped");
    Ok(())
}
