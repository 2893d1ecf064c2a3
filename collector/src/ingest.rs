//! The gRPC ingest service: puts each batch into every output's durable queue, then
//! acknowledges it. Delivery to the outputs happens behind the queues (`crate::queue`).

use std::pin::Pin;

use peregrine_proto::{Ack, EventBatch, v1::ingest_server::Ingest};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::queue::Queues;

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
        r.register("events_received", "Events received and queued for every output, by kind", self.events.clone());
        r.register("batches_acked", "Batches queued and acknowledged", self.batches.clone());
        r.register("output_write_errors", "Batches that could not be queued (not acknowledged; the agent resends)", self.write_errors.clone());
        r.register("stream_errors", "Agent streams that ended with an error", self.stream_errors.clone());
        r.register("agent_streams", "Open agent streams", self.streams.clone());
    }
}

pub struct IngestService {
    pub queues: Queues,
    pub metrics: Metrics,
    /// Turns true at shutdown: open streams end (agents reconnect, to another replica if
    /// there is one) rather than hold the collector up.
    pub stopping: watch::Receiver<bool>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send>>;

/// Every event's `node` must be a name the client certificate is valid for (its DNS SANs), so
/// one node's credentials cannot speak for another node.
fn check_nodes(cert: &rustls::pki_types::CertificateDer<'static>, events: &[peregrine_proto::Event]) -> Result<(), String> {
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable client certificate: {e}"))?;
    let mut checked: Option<&str> = None;
    for e in events {
        if checked == Some(e.node.as_str()) {
            continue;
        }
        let name = rustls::pki_types::ServerName::try_from(e.node.as_str())
            .map_err(|_| format!("event node `{}` is not a valid DNS name", e.node))?;
        cert.verify_is_valid_for_subject_name(&name)
            .map_err(|_| format!("the client certificate is not valid for node `{}`", e.node))?;
        checked = Some(e.node.as_str());
    }
    Ok(())
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = AckStream;

    async fn stream(&self, request: Request<Streaming<EventBatch>>) -> Result<Response<AckStream>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        // With mutual TLS, the node the client certificate names; every event must be from it.
        let identity = request.peer_certs().and_then(|certs| certs.first().cloned());
        let mut batches = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let queues = self.queues.clone();
        let metrics = self.metrics.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            metrics.streams.inc();
            tracing::info!(%peer, "agent stream opened");
            loop {
                let next = tokio::select! {
                    next = batches.next() => next,
                    () = async { let _ = stopping.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(Status::unavailable("collector shutting down"))).await;
                        break;
                    }
                };
                let batch = match next {
                    Some(Ok(b)) => b,
                    Some(Err(status)) => {
                        metrics.stream_errors.inc();
                        tracing::warn!(%peer, error = %status, "agent stream failed");
                        break;
                    }
                    None => break,
                };
                if let Some(cert) = &identity
                    && let Err(why) = check_nodes(cert, &batch.events)
                {
                    metrics.stream_errors.inc();
                    tracing::warn!(%peer, error = %why, "agent batch refused: its certificate does not name the node its events come from");
                    let _ = tx.send(Err(Status::permission_denied(why))).await;
                    break;
                }
                // Encoded once, the same bytes go to every output's queue.
                let payloads: Vec<Vec<u8>> = batch.events.iter().map(Message::encode_to_vec).collect();
                if let Err(e) = queues.append(payloads).await {
                    metrics.write_errors.inc();
                    tracing::error!(%peer, error = %e, "cannot queue the batch; not acknowledged");
                    let _ = tx.send(Err(Status::unavailable(format!("queue failed: {e}")))).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_proto::{Event, EventBatch};

    /// The ingest decoding on garbage and on mutations of a real batch: errors, never panics,
    /// and nothing decoded is trusted further than prost's checks (bounded iterations).
    #[test]
    fn batch_decoding_survives_garbage_and_mutations() {
        let seed = std::env::var("PEREGRINE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
        let mut rng = fastrand::Rng::with_seed(seed);
        let valid = EventBatch {
            batch_seq: 7,
            events: (0..20)
                .map(|i| Event { id: format!("id-{i}"), seq: i, node: "node-1".into(), ..Default::default() })
                .collect(),
        }
        .encode_to_vec();
        for round in 0..5_000 {
            let mut bytes = if round % 2 == 0 {
                (0..rng.usize(0..512)).map(|_| rng.u8(..)).collect::<Vec<u8>>()
            } else {
                valid.clone()
            };
            if !bytes.is_empty() {
                for _ in 0..rng.usize(1..8) {
                    let i = rng.usize(..bytes.len());
                    bytes[i] = rng.u8(..);
                }
            }
            if let Ok(batch) = EventBatch::decode(bytes.as_slice()) {
                // Whatever decodes re-encodes: the queue stores re-encoded events.
                for e in &batch.events {
                    let again = Event::decode(e.encode_to_vec().as_slice());
                    assert!(again.is_ok(), "round {round} (seed {seed})");
                }
            }
        }
    }

    #[test]
    fn node_identity_check_refuses_other_nodes() {
        use rcgen::{CertificateParams, KeyPair};
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = CertificateParams::new(vec!["node-a".to_owned()])
            .and_then(|p| p.self_signed(&key))
            .unwrap_or_else(|e| panic!("{e}"));
        let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
        let from = |node: &str| Event { node: node.into(), ..Default::default() };
        assert_eq!(check_nodes(&der, &[from("node-a"), from("node-a")]), Ok(()));
        assert_eq!(
            check_nodes(&der, &[from("node-a"), from("node-b")]),
            Err("the client certificate is not valid for node `node-b`".to_owned())
        );
        assert_eq!(check_nodes(&der, &[from("not a name")]), Err("event node `not a name` is not a valid DNS name".to_owned()));
    }
}
