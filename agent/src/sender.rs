//! Streams batches to the collector and counts acknowledgements.
//!
//! An event counts as sent only when the collector acknowledges its batch. Without a collector
//! the sender keeps consuming the queue and counts each event as dropped, so the agent keeps
//! running and the drain never stalls (durable spooling replaces this in the transport issue).

use std::{collections::VecDeque, time::Duration};

use peregrine_proto::{Event, EventBatch, v1::ingest_client::IngestClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::{
    config::{CollectorConfig, PipelineConfig},
    metrics::{Metrics, reason},
};

pub struct Sender {
    pub collector: CollectorConfig,
    pub pipeline: PipelineConfig,
    pub metrics: Metrics,
}

enum Outcome {
    /// The queue closed: the agent is stopping.
    Finished,
    /// The connection failed or ended; reconnect.
    Disconnected(String),
}

impl Sender {
    pub async fn run(self, mut rx: mpsc::Receiver<Event>) {
        let mut backoff = Duration::from_millis(100);
        let max_backoff = Duration::from_millis(self.collector.max_backoff_ms.max(100));
        let mut connected_before = false;
        let mut last_error = String::new();
        loop {
            match self.connect().await {
                Ok(client) => {
                    if connected_before {
                        self.metrics.reconnects.inc();
                    }
                    connected_before = true;
                    tracing::info!(collector = %self.collector.address, "connected to collector");
                    backoff = Duration::from_millis(100);
                    last_error.clear();
                    match self.stream(client, &mut rx).await {
                        Outcome::Finished => return,
                        Outcome::Disconnected(e) => {
                            tracing::warn!(collector = %self.collector.address, error = %e, "collector stream ended; reconnecting");
                        }
                    }
                }
                Err(e) => {
                    // Log a failure once until it changes, not on every retry.
                    if e != last_error {
                        tracing::warn!(collector = %self.collector.address, error = %e, "collector unreachable; events are counted as dropped until it is back");
                        last_error = e;
                    }
                }
            }
            // Wait out the backoff while still consuming (and counting) what arrives.
            let jitter = Duration::from_millis(u64::from(uuid::Uuid::now_v7().as_bytes()[15]) % 50);
            let deadline = tokio::time::Instant::now() + backoff + jitter;
            loop {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(_) => self.metrics.drop_event(reason::COLLECTOR_UNAVAILABLE, 1),
                        None => return,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    async fn connect(&self) -> Result<IngestClient<Channel>, String> {
        let endpoint = Endpoint::from_shared(self.collector.address.clone())
            .map_err(|e| format!("invalid collector.address: {e}"))?
            .connect_timeout(Duration::from_millis(self.collector.connect_timeout_ms))
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| crate::kernel::error_chain(&e))?;
        Ok(IngestClient::new(channel))
    }

    async fn stream(&self, mut client: IngestClient<Channel>, rx: &mut mpsc::Receiver<Event>) -> Outcome {
        let (out, out_rx) = mpsc::channel::<EventBatch>(4);
        let call = client.stream(ReceiverStream::new(out_rx));
        // The call resolves once the collector answers with headers; keep consuming meanwhile
        // would complicate ordering, and the answer is immediate on a healthy collector.
        let connect_timeout = Duration::from_millis(self.collector.connect_timeout_ms);
        let mut acks = match tokio::time::timeout(connect_timeout, call).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Outcome::Disconnected(format!("collector refused the stream: {status}")),
            Err(_) => return Outcome::Disconnected("collector did not answer the stream in time".into()),
        };
        self.metrics.collector_connected.set(1);
        let mut pending: VecDeque<(u64, u64)> = VecDeque::new();
        let mut batch: Vec<Event> = Vec::with_capacity(self.pipeline.batch_max_events);
        let mut batch_seq = 0u64;
        let delay = Duration::from_millis(self.pipeline.batch_max_delay_ms);
        let mut flush_at: Option<tokio::time::Instant> = None;
        let mut queue_open = true;
        // After the queue closes, wait this long at most for the last acknowledgements.
        let mut finish_by: Option<tokio::time::Instant> = None;

        let outcome = loop {
            let flush_timer = async {
                match flush_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                next = rx.recv(), if queue_open => match next {
                    Some(event) => {
                        batch.push(event);
                        if flush_at.is_none() {
                            flush_at = Some(tokio::time::Instant::now() + delay);
                        }
                        if batch.len() >= self.pipeline.batch_max_events
                            && let Err(e) = self.send(&out, &mut batch, &mut batch_seq, &mut pending, &mut flush_at).await
                        {
                            break Outcome::Disconnected(e);
                        }
                    }
                    None => {
                        queue_open = false;
                        finish_by = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                        if let Err(e) = self.send(&out, &mut batch, &mut batch_seq, &mut pending, &mut flush_at).await {
                            break Outcome::Disconnected(e);
                        }
                        if pending.is_empty() {
                            break Outcome::Finished;
                        }
                    }
                },
                _ = flush_timer => {
                    if let Err(e) = self.send(&out, &mut batch, &mut batch_seq, &mut pending, &mut flush_at).await {
                        break Outcome::Disconnected(e);
                    }
                }
                _ = async { if let Some(t) = finish_by { tokio::time::sleep_until(t).await } }, if finish_by.is_some() => {
                    tracing::warn!(batches = pending.len(), "stopping without the collector's last acknowledgements");
                    break Outcome::Finished;
                }
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => {
                        while let Some(&(seq, n)) = pending.front() {
                            if seq > ack.batch_seq {
                                break;
                            }
                            pending.pop_front();
                            if seq == ack.batch_seq {
                                self.metrics.sent.inc_by(n);
                                self.metrics.batches_acked.inc();
                            } else {
                                // Acks are in order; a skipped batch was not confirmed.
                                self.metrics.drop_event(reason::UNACKNOWLEDGED, n);
                            }
                        }
                        if !queue_open && pending.is_empty() {
                            break Outcome::Finished;
                        }
                    }
                    Ok(None) => break Outcome::Disconnected("collector closed the stream".into()),
                    Err(status) => break Outcome::Disconnected(format!("collector stream failed: {status}")),
                },
            }
        };
        self.metrics.collector_connected.set(0);
        let unacked: u64 = pending.iter().map(|&(_, n)| n).sum();
        self.metrics.drop_event(reason::UNACKNOWLEDGED, unacked);
        self.metrics.drop_event(reason::COLLECTOR_UNAVAILABLE, batch.len() as u64);
        outcome
    }

    async fn send(
        &self,
        out: &mpsc::Sender<EventBatch>,
        batch: &mut Vec<Event>,
        batch_seq: &mut u64,
        pending: &mut VecDeque<(u64, u64)>,
        flush_at: &mut Option<tokio::time::Instant>,
    ) -> Result<(), String> {
        *flush_at = None;
        if batch.is_empty() {
            return Ok(());
        }
        *batch_seq += 1;
        let events = std::mem::take(batch);
        let n = events.len() as u64;
        pending.push_back((*batch_seq, n));
        out.send(EventBatch { batch_seq: *batch_seq, events }).await.map_err(|_| "collector stream closed".to_owned())
    }
}
