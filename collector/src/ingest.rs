//! The gRPC ingest service: puts each batch into every output's durable queue, then
//! acknowledges it. Delivery to the outputs happens behind the queues (`crate::queue`).
//!
//! Events are queued as received (`EventBatchRaw`: each event's encoded bytes): ingest reads
//! only each event's top-level fields (its node, for the identity check, and its kind, for the
//! metrics), so a well-formed batch is decoded once, by the output worker. An event whose
//! nested content does not decode is found there, logged and counted as dropped
//! (`reason="undecodable"`); a batch whose framing or top-level fields are malformed is refused
//! here, whole.

use std::pin::Pin;

use peregrine_proto::{Ack, EventBatchRaw, EventHeader, v1::ingest_server::Ingest};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
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
    /// With TLS on, a stream without a client certificate is refused (the handshake lets such
    /// clients in when enrollment is on, for the Enrollment service only).
    pub require_client_certificate: bool,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send>>;

/// The batch's events' headers, or why the batch is malformed (naming the event).
fn headers(batch: &EventBatchRaw) -> Result<Vec<EventHeader<'_>>, String> {
    batch
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| EventHeader::peek(e).map_err(|err| format!("event {i} of batch {} is malformed: {err}", batch.batch_seq)))
        .collect()
}

/// Every event's `node` must be a name the client certificate is valid for (its DNS SANs), so
/// one node's credentials cannot speak for another node.
fn check_nodes(cert: &rustls::pki_types::CertificateDer<'static>, events: &[EventHeader<'_>]) -> Result<(), String> {
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable client certificate: {e}"))?;
    let mut checked: Option<&str> = None;
    for e in events {
        if checked == Some(e.node) {
            continue;
        }
        let name = rustls::pki_types::ServerName::try_from(e.node).map_err(|_| format!("event node `{}` is not a valid DNS name", e.node))?;
        cert.verify_is_valid_for_subject_name(&name)
            .map_err(|_| format!("the client certificate is not valid for node `{}`", e.node))?;
        checked = Some(e.node);
    }
    Ok(())
}

/// When the certificate stops being valid, as an instant of this process's clock.
fn certificate_expiry(cert: &rustls::pki_types::CertificateDer<'static>) -> Option<tokio::time::Instant> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let not_after = parsed.validity().not_after.timestamp();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    let left = u64::try_from(not_after).ok()?.saturating_sub(now);
    Some(tokio::time::Instant::now() + std::time::Duration::from_secs(left))
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = AckStream;

    async fn stream(&self, request: Request<Streaming<EventBatchRaw>>) -> Result<Response<AckStream>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        // With mutual TLS, the node the client certificate names; every event must be from it.
        let identity = request.peer_certs().and_then(|certs| certs.first().cloned());
        if self.require_client_certificate && identity.is_none() {
            self.metrics.stream_errors.inc();
            tracing::warn!(%peer, "agent stream refused: no client certificate");
            return Err(Status::unauthenticated(
                "no client certificate: this collector requires mutual TLS; configure collector.tls.cert_file and \
                 key_file, or collector.tls.enroll_token_file to get a node certificate from the collector",
            ));
        }
        // A stream lives no longer than its certificate: the agent reconnects with a renewed one,
        // and a node whose enrollment is no longer allowed stops being heard.
        let expires = identity.as_ref().and_then(certificate_expiry);
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
                    () = async { if let Some(at) = expires { tokio::time::sleep_until(at).await } else { std::future::pending().await } } => {
                        tracing::info!(%peer, "agent stream ended: its client certificate expired");
                        let _ = tx.send(Err(Status::unauthenticated("the client certificate expired: reconnect with a renewed one"))).await;
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
                let headers = match headers(&batch) {
                    Ok(h) => h,
                    Err(why) => {
                        metrics.stream_errors.inc();
                        tracing::warn!(%peer, error = %why, "agent batch refused");
                        let _ = tx.send(Err(Status::invalid_argument(why))).await;
                        break;
                    }
                };
                if let Some(cert) = &identity
                    && let Err(why) = check_nodes(cert, &headers)
                {
                    metrics.stream_errors.inc();
                    tracing::warn!(%peer, error = %why, "agent batch refused: its certificate does not name the node its events come from");
                    let _ = tx.send(Err(Status::permission_denied(why))).await;
                    break;
                }
                let mut kinds: Vec<(&'static str, u64)> = Vec::new();
                for h in &headers {
                    match kinds.iter_mut().find(|(k, _)| *k == h.kind) {
                        Some((_, n)) => *n += 1,
                        None => kinds.push((h.kind, 1)),
                    }
                }
                drop(headers);
                let n = batch.events.len();
                // The bytes as received go to every output's queue.
                if let Err(e) = queues.append(batch.events).await {
                    metrics.write_errors.inc();
                    tracing::error!(%peer, error = %e, "cannot queue the batch; not acknowledged");
                    let _ = tx.send(Err(Status::unavailable(format!("queue failed: {e}")))).await;
                    break;
                }
                for (kind, count) in kinds {
                    metrics.events.get_or_create(&KindLabel { kind }).inc_by(count);
                }
                metrics.batches.inc();
                let ack = Ack { batch_seq: batch.batch_seq, accepted: u32::try_from(n).unwrap_or(u32::MAX) };
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
    use prost::Message;

    /// The ingest decoding on garbage and on mutations of a real batch: errors, never panics.
    /// Whatever passes ingest is then decoded by the output worker, which must also cope.
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
        let (mut accepted, mut refused) = (0, 0);
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
            let Ok(batch) = EventBatchRaw::decode(bytes.as_slice()) else { continue };
            match headers(&batch) {
                Ok(h) => {
                    accepted += 1;
                    assert_eq!(h.len(), batch.events.len());
                    for e in &batch.events {
                        let _ = Event::decode(e.as_ref());
                    }
                }
                Err(why) => {
                    refused += 1;
                    assert!(why.contains(&format!("of batch {} is malformed", batch.batch_seq)), "{why}");
                }
            }
        }
        assert!(accepted > 0 && refused > 0, "the mutations exercise both outcomes ({accepted} accepted, {refused} refused)");
    }

    /// The raw batch is the typed batch on the wire, and ingest reads the same nodes and kinds.
    #[test]
    fn a_typed_batch_reads_as_a_raw_one() {
        let typed = EventBatch {
            batch_seq: 9,
            events: vec![
                Event { id: "a".into(), node: "node-1".into(), kind: Some(peregrine_proto::Kind::Loss(Default::default())), ..Default::default() },
                Event { id: "b".into(), node: "node-2".into(), ..Default::default() },
            ],
        };
        let raw = EventBatchRaw::decode(typed.encode_to_vec().as_slice()).unwrap();
        assert_eq!(raw.batch_seq, 9);
        assert_eq!(Event::decode(raw.events[0].as_ref()).unwrap(), typed.events[0]);
        let h = headers(&raw).unwrap();
        assert_eq!((h[0].node, h[0].kind, h[1].node, h[1].kind), ("node-1", "loss", "node-2", "unknown"));
    }

    #[test]
    fn node_identity_check_refuses_other_nodes() {
        use rcgen::{CertificateParams, KeyPair};
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = CertificateParams::new(vec!["node-a".to_owned()])
            .and_then(|p| p.self_signed(&key))
            .unwrap_or_else(|e| panic!("{e}"));
        let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
        let from = |node| EventHeader { id: b"", node, kind: "exec" };
        assert_eq!(check_nodes(&der, &[from("node-a"), from("node-a")]), Ok(()));
        assert_eq!(
            check_nodes(&der, &[from("node-a"), from("node-b")]),
            Err("the client certificate is not valid for node `node-b`".to_owned())
        );
        assert_eq!(check_nodes(&der, &[from("not a name")]), Err("event node `not a name` is not a valid DNS name".to_owned()));
    }
}
