//! The gRPC ingest service: delivers each batch to every output, then acknowledges it.

use std::pin::Pin;

use peregrine_proto::{Ack, EventBatch, v1::ingest_server::Ingest};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::output::Outputs;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub events: Family<KindLabel, Counter>,
    pub batches: Counter,
    pub write_errors: Counter,
    pub stream_errors: Counter,
    pub streams: Gauge,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("peregrine_collector");
        r.register("events_received", "Events every output accepted, by kind", self.events.clone());
        r.register("batches_acked", "Batches written and acknowledged", self.batches.clone());
        r.register("output_write_errors", "Batches an output failed to accept (not acknowledged)", self.write_errors.clone());
        r.register("stream_errors", "Agent streams that ended with an error", self.stream_errors.clone());
        r.register("agent_streams", "Open agent streams", self.streams.clone());
    }
}

pub struct IngestService {
    pub outputs: Outputs,
    pub metrics: Metrics,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = AckStream;

    async fn stream(&self, request: Request<Streaming<EventBatch>>) -> Result<Response<AckStream>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        let mut batches = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let outputs = self.outputs.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            metrics.streams.inc();
            tracing::info!(%peer, "agent stream opened");
            while let Some(next) = batches.next().await {
                let batch = match next {
                    Ok(b) => b,
                    Err(status) => {
                        metrics.stream_errors.inc();
                        tracing::warn!(%peer, error = %status, "agent stream failed");
                        break;
                    }
                };
                let delivered = outputs.deliver(&batch.events).await;
                if let Err(e) = delivered {
                    metrics.write_errors.inc();
                    tracing::error!(%peer, error = %e, "output failed; batch not acknowledged");
                    let _ = tx.send(Err(Status::unavailable(format!("output failed: {e}")))).await;
                    break;
                }
                for event in &batch.events {
                    metrics.events.get_or_create(&KindLabel { kind: event.kind_name() }).inc();
                }
                metrics.batches.inc();
                let ack = Ack { batch_seq: batch.batch_seq, accepted: u32::try_from(batch.events.len()).unwrap_or(u32::MAX) };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
            metrics.streams.dec();
            tracing::info!(%peer, "agent stream closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
