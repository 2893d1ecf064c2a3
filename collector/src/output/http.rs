//! Delivery of JSON rows over HTTPS, shared by the Sentinel and OCSF webhook services.
//!
//! Rows go as JSON arrays of at most `max_bytes` (uncompressed), gzip'd when asked. Answers:
//! 2xx accepted; 413, or a rejection of several rows, splits the request in two; a rejected
//! single row is set aside in the dead-letter file with the answer; 429 waits `Retry-After`
//! (capped) and tries again; 401 calls the service's `refresh` once; 408, 5xx and dropped
//! connections back off with jitter up to `retry.max_retries`; then the error is returned and
//! the batch stays in the output's queue.

use std::{collections::VecDeque, io::Write, time::Duration};

use flate2::{Compression, write::GzEncoder};
use peregrine_proto::Event;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};

use super::{Ctx, OutputError, retry::Backoff};
use crate::config::RetrySettings;

/// One encoded row and the index of the event it came from.
pub struct Row {
    pub event: usize,
    pub json: Vec<u8>,
}

/// How a request is authorised, asked before every attempt.
pub trait Authorize {
    /// The `Authorization` header value, if any.
    fn header(&self) -> impl Future<Output = Result<Option<String>, OutputError>> + Send;
    /// Called once after a 401: `true` if a retry with fresh credentials makes sense.
    fn refresh(&self) -> impl Future<Output = bool> + Send;
    /// The error for a refusal (401 after refresh, 403), naming where credentials come from.
    fn refused(&self, status: u16, detail: &str) -> OutputError;
}

enum Answer {
    Accepted,
    /// Split the request (413, or a rejection with several rows) or, for one row, set it aside.
    Reject { status: u16, detail: String },
}

pub struct Poster<'a, A: Authorize> {
    pub http: &'a reqwest::Client,
    pub url: &'a str,
    pub gzip: bool,
    pub max_bytes: usize,
    pub retry: &'a RetrySettings,
    pub auth: &'a A,
    /// The error after retries are exhausted: (message, attempts).
    pub exhausted: &'a (dyn Fn(String, u32) -> OutputError + Sync),
}

impl<A: Authorize + Sync> Poster<'_, A> {
    /// Sends `rows` in requests within the size limit, splitting on rejection; rows rejected
    /// alone go to the dead-letter file. `Err` leaves the whole batch to be retried.
    pub async fn deliver(&self, rows: Vec<Row>, events: &[Event], ctx: &Ctx) -> Result<(), OutputError> {
        let mut queue: VecDeque<Vec<Row>> = chunk(rows, self.max_bytes).into();
        while let Some(mut rows) = queue.pop_front() {
            match self.post(&json_array(&rows), ctx).await? {
                Answer::Accepted => ctx.metrics.sent(&ctx.name, rows.len()),
                Answer::Reject { status, .. } if rows.len() > 1 => {
                    tracing::info!(output = %ctx.name, status, rows = rows.len(), "request rejected; splitting it");
                    ctx.metrics.retry(&ctx.name, if status == 413 { "split_413" } else { "split_rejected" });
                    let back = rows.split_off(rows.len() / 2);
                    queue.push_front(back);
                    queue.push_front(rows);
                }
                Answer::Reject { status, detail } => {
                    for r in &rows {
                        if let Some(e) = events.get(r.event) {
                            ctx.dead_letter(e, &format!("rejected_{status}"), &detail).await;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn post(&self, json: &[u8], ctx: &Ctx) -> Result<Answer, OutputError> {
        let body = if self.gzip { gzip(json).map_err(|e| (self.exhausted)(format!("gzip: {e}"), 0))? } else { json.to_vec() };
        let mut backoff = Backoff::new(self.retry);
        let mut refreshed = false;
        loop {
            let mut request = self.http.post(self.url).header(CONTENT_TYPE, "application/json").body(body.clone());
            if self.gzip {
                request = request.header(CONTENT_ENCODING, "gzip");
            }
            if let Some(h) = self.auth.header().await? {
                request = request.header(AUTHORIZATION, h);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    let message = format!("request failed: {e}");
                    ctx.metrics.retry(&ctx.name, "connection");
                    let d = backoff.next_delay().ok_or_else(|| (self.exhausted)(message.clone(), backoff.retries() + 1))?;
                    tracing::warn!(output = %ctx.name, error = %message, retry_in = ?d, "request failed");
                    tokio::time::sleep(d).await;
                    continue;
                }
            };
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = response.text().await.unwrap_or_default();
            let detail = format!("HTTP {status}: {}", text.chars().take(1000).collect::<String>());
            match status {
                200..=299 => return Ok(Answer::Accepted),
                401 if !refreshed && self.auth.refresh().await => {
                    refreshed = true;
                    ctx.metrics.retry(&ctx.name, "token_refresh");
                }
                401 | 403 => return Err(self.auth.refused(status, &detail)),
                429 => {
                    ctx.metrics.retry(&ctx.name, "throttled");
                    let d = match retry_after {
                        Some(wait) => backoff.server_delay(wait),
                        None => backoff.next_delay(),
                    }
                    .ok_or_else(|| (self.exhausted)(detail.clone(), backoff.retries() + 1))?;
                    tracing::warn!(output = %ctx.name, wait = ?d, "throttled");
                    tokio::time::sleep(d).await;
                }
                408 | 500..=599 => {
                    ctx.metrics.retry(&ctx.name, "server_error");
                    let d = backoff.next_delay().ok_or_else(|| (self.exhausted)(detail.clone(), backoff.retries() + 1))?;
                    tokio::time::sleep(d).await;
                }
                _ => return Ok(Answer::Reject { status, detail }),
            }
        }
    }
}

/// Splits rows into requests whose JSON array stays within `max` bytes.
pub fn chunk(rows: Vec<Row>, max: usize) -> Vec<Vec<Row>> {
    let mut out = Vec::new();
    let mut cur: Vec<Row> = Vec::new();
    let mut size = 2;
    for r in rows {
        let add = r.json.len() + usize::from(!cur.is_empty());
        if !cur.is_empty() && size + add > max {
            out.push(std::mem::take(&mut cur));
            size = 2;
        }
        size += r.json.len() + usize::from(!cur.is_empty());
        cur.push(r);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub fn json_array(rows: &[Row]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.iter().map(|r| r.json.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&r.json);
    }
    out.push(b']');
    out
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

/// Reads a CA bundle (PEM) into the client's trust store, beside the web roots.
pub fn client(ca_file: Option<&std::path::Path>, timeout_ms: u64) -> Result<reqwest::Client, String> {
    let mut http = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_millis(timeout_ms))
        .connect_timeout(Duration::from_millis(timeout_ms.min(10_000)));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        for c in certs {
            http = http.add_root_certificate(c);
        }
    }
    http.build().map_err(|e| format!("HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_the_byte_limit() {
        let rows: Vec<Row> = (0..10).map(|i| Row { event: i, json: vec![b'x'; 100] }).collect();
        let chunks = chunk(rows, 2 + 100 * 3 + 2);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        for c in &chunks {
            assert!(json_array(c).len() <= 304);
        }
    }
}
