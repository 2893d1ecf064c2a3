//! Microsoft Sentinel through the Azure Monitor Logs Ingestion API.
//!
//! `POST {endpoint}/dataCollectionRules/{dcr_immutable_id}/streams/{stream}?api-version=2023-01-01`
//! with a gzip'd JSON array (`Content-Encoding: gzip`) and an Entra bearer token.
//! Requests stay under `max_batch_bytes` of uncompressed JSON (the API's limit is 1 MB).
//!
//! Answers: 2xx accepted (204); 413 -> the request is split in two and both halves sent;
//! 400 (or another 4xx) on several rows -> split likewise until the rejected row is alone,
//! which is set aside (dead letter, with the answer) while the rest is delivered; 429 -> wait
//! `Retry-After` (capped by `retry.max_retry_after_ms`) and again; 401 -> one token refresh,
//! then a credentials error; 403 -> credentials error (no role on the DCR); 5xx, 408, a
//! dropped connection -> jittered backoff up to `retry.max_retries`. When a request cannot
//! be delivered the error is returned and the batch stays in this output's durable queue, to
//! be offered again.

use std::{collections::VecDeque, io::Write, path::PathBuf, time::Duration};

use flate2::{Compression, write::GzEncoder};
use peregrine_proto::Event;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use serde::Deserialize;

use super::{
    Ctx, OutputError, asim,
    auth::{AuthSettings, TokenSource},
    raw,
    retry::Backoff,
    truncate,
};
use crate::config::RetrySettings;

pub const DEFAULT_MAX_BATCH_BYTES: usize = 1_000_000;
/// One row must fit in one request.
pub const DEFAULT_MAX_EVENT_BYTES: usize = DEFAULT_MAX_BATCH_BYTES - 2;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SentinelMode {
    /// exec/exit to ASimProcessEventLogs, connections to ASimNetworkSessionLogs, alerts to
    /// PeregrineAlerts_CL (ASIM AlertEvent).
    #[default]
    Asim,
    /// Every event to one custom table, `PeregrineEvents_CL`.
    Raw,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSettings {
    /// The data collection endpoint (or the DCR's own logs ingestion endpoint), `https://...`.
    pub endpoint: String,
    /// The DCR's immutable id, `dcr-...`.
    pub dcr_immutable_id: String,
    #[serde(default)]
    pub mode: SentinelMode,
    #[serde(default = "default_process_stream")]
    pub process_stream: String,
    #[serde(default = "default_network_stream")]
    pub network_stream: String,
    #[serde(default = "default_alert_stream")]
    pub alert_stream: String,
    #[serde(default = "default_raw_stream")]
    pub raw_stream: String,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// Extra CA (PEM) to trust for the endpoint and the authority (a TLS-inspecting proxy).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    pub auth: AuthSettings,
}

// Streams are the DCR's input declarations, which must begin with `Custom-`; the DCR's data
// flows route them to their tables (deploy/sentinel/peregrine-sentinel.json).
fn default_process_stream() -> String {
    "Custom-PeregrineProcessEvent".into()
}
fn default_network_stream() -> String {
    "Custom-PeregrineNetworkSession".into()
}
fn default_alert_stream() -> String {
    "Custom-PeregrineAlerts_CL".into()
}
fn default_raw_stream() -> String {
    "Custom-PeregrineEvents_CL".into()
}
fn default_api_version() -> String {
    "2023-01-01".into()
}
fn default_max_batch_bytes() -> usize {
    DEFAULT_MAX_BATCH_BYTES
}
fn default_request_timeout_ms() -> u64 {
    30_000
}

impl SentinelSettings {
    pub fn supported_kinds(&self) -> Vec<&'static str> {
        match self.mode {
            SentinelMode::Asim => vec!["exec", "exit", "connection", "alert"],
            SentinelMode::Raw => super::EVENT_KINDS.to_vec(),
        }
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://")) {
            return Err(("endpoint".into(), format!("`{}` is not an https:// URL", self.endpoint)));
        }
        for (key, stream) in [
            ("process_stream", &self.process_stream),
            ("network_stream", &self.network_stream),
            ("alert_stream", &self.alert_stream),
            ("raw_stream", &self.raw_stream),
        ] {
            if !stream.starts_with("Custom-") {
                return Err((
                    key.into(),
                    format!("`{stream}` is not a DCR input stream: those begin with `Custom-` (the table, e.g. Microsoft-ASimProcessEventLogs, is the DCR's outputStream)"),
                ));
            }
        }
        if self.dcr_immutable_id.is_empty() {
            return Err(("dcr_immutable_id".into(), "required".into()));
        }
        if !(1024..=1_048_576).contains(&self.max_batch_bytes) {
            return Err(("max_batch_bytes".into(), "must be between 1024 and 1048576 (the API's 1 MB)".into()));
        }
        Ok(())
    }

    pub fn build(&self, output: &str, retry: &RetrySettings) -> Result<Sentinel, OutputError> {
        let err = |message: String| OutputError::Config { output: output.to_owned(), message };
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_millis(self.request_timeout_ms))
            .connect_timeout(Duration::from_millis(self.request_timeout_ms.min(10_000)));
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path).map_err(|e| err(format!("ca_file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(format!("ca_file {}: {e}", path.display())))?;
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        let http = http.build().map_err(|e| err(format!("HTTP client: {e}")))?;
        let (credential, authority, scope) = self.auth.resolve(|k| std::env::var(k).ok()).map_err(err)?;
        Ok(Sentinel {
            endpoint: self.endpoint.trim_end_matches('/').to_owned(),
            settings: self.clone(),
            auth: TokenSource::new(credential, authority, scope, http.clone()),
            http,
            retry: retry.clone(),
        })
    }
}

pub struct Sentinel {
    endpoint: String,
    settings: SentinelSettings,
    http: reqwest::Client,
    auth: TokenSource,
    retry: RetrySettings,
}

/// One encoded row and the event it came from.
struct Row {
    event: usize,
    json: Vec<u8>,
}

enum Answer {
    Accepted,
    /// Split the request (413, or a rejection with several rows) or, for one row, set it aside.
    Reject { status: u16, detail: String },
}

impl Sentinel {
    pub fn auth(&self) -> &TokenSource {
        &self.auth
    }

    pub fn url(&self, stream: &str) -> String {
        format!(
            "{}/dataCollectionRules/{}/streams/{}?api-version={}",
            self.endpoint, self.settings.dcr_immutable_id, stream, self.settings.api_version
        )
    }

    /// The stream and row of an event in this output's mode.
    pub fn encode(&self, e: &Event) -> Option<(String, serde_json::Value)> {
        match self.settings.mode {
            SentinelMode::Raw => Some((self.settings.raw_stream.clone(), raw::row(e))),
            SentinelMode::Asim => asim::row(e).map(|(table, row)| {
                let stream = match table {
                    asim::Table::Process => &self.settings.process_stream,
                    asim::Table::Network => &self.settings.network_stream,
                    asim::Table::Alert => &self.settings.alert_stream,
                };
                (stream.clone(), row)
            }),
        }
    }

    pub async fn send(&self, events: &[Event], ctx: &Ctx) -> Result<(), OutputError> {
        let limit = ctx.max_event_bytes.unwrap_or(DEFAULT_MAX_EVENT_BYTES).min(self.settings.max_batch_bytes - 2);
        let mut streams: Vec<(String, Vec<Row>)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let Some((stream, _)) = self.encode(e) else {
                ctx.dead_letter(e, "no_mapping", &format!("no {:?} row for a `{}` event", self.settings.mode, e.kind_name())).await;
                continue;
            };
            let encode = |e: &Event| match self.encode(e) {
                Some((_, row)) => serde_json::to_vec(&row),
                None => Ok(Vec::new()),
            };
            match truncate::fit(e, Some(limit), encode, Vec::len) {
                Ok(truncate::Fitted::Fits(json, truncated)) => {
                    if truncated {
                        ctx.metrics.truncated(&ctx.name);
                    }
                    match streams.iter_mut().find(|(s, _)| *s == stream) {
                        Some((_, rows)) => rows.push(Row { event: i, json }),
                        None => streams.push((stream, vec![Row { event: i, json }])),
                    }
                }
                Ok(truncate::Fitted::TooLarge(why)) => ctx.dead_letter(e, "too_large", &why).await,
                Err(err) => ctx.dead_letter(e, "encode_error", &err.to_string()).await,
            }
        }
        for (stream, rows) in streams {
            self.send_stream(&stream, rows, events, ctx).await?;
        }
        Ok(())
    }

    async fn send_stream(&self, stream: &str, rows: Vec<Row>, events: &[Event], ctx: &Ctx) -> Result<(), OutputError> {
        let url = self.url(stream);
        let mut queue: VecDeque<Vec<Row>> = chunk(rows, self.settings.max_batch_bytes).into();
        while let Some(mut rows) = queue.pop_front() {
            match self.post(&url, &rows, ctx).await? {
                Answer::Accepted => ctx.metrics.sent(&ctx.name, rows.len()),
                Answer::Reject { status, detail } if rows.len() > 1 => {
                    tracing::info!(output = %ctx.name, status, rows = rows.len(), "request rejected; splitting it");
                    ctx.metrics.retry(&ctx.name, if status == 413 { "split_413" } else { "split_rejected" });
                    let back = rows.split_off(rows.len() / 2);
                    queue.push_front(back);
                    queue.push_front(rows);
                    let _ = detail;
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

    async fn post(&self, url: &str, rows: &[Row], ctx: &Ctx) -> Result<Answer, OutputError> {
        let body = gzip(&json_array(rows)).map_err(|e| OutputError::Ingestion {
            output: ctx.name.clone(),
            url: url.to_owned(),
            message: format!("gzip: {e}"),
            attempts: 0,
        })?;
        let mut backoff = Backoff::new(&self.retry);
        let mut refreshed = false;
        let fail = |message: String, backoff: &Backoff| OutputError::Ingestion {
            output: ctx.name.clone(),
            url: url.to_owned(),
            message,
            attempts: backoff.retries() + 1,
        };
        let credentials = |message: String| OutputError::Credentials {
            output: ctx.name.clone(),
            credential: self.auth.describe(),
            message,
        };
        loop {
            let token = self.auth.token().await.map_err(credentials)?;
            let sent = self
                .http
                .post(url)
                .bearer_auth(&token)
                .header(CONTENT_TYPE, "application/json")
                .header(CONTENT_ENCODING, "gzip")
                .body(body.clone())
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    let message = format!("request failed: {e}");
                    ctx.metrics.retry(&ctx.name, "connection");
                    let d = backoff.next_delay().ok_or_else(|| fail(message.clone(), &backoff))?;
                    tracing::warn!(output = %ctx.name, error = %message, retry_in = ?d, "Logs Ingestion request failed");
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
                401 if !refreshed => {
                    refreshed = true;
                    ctx.metrics.retry(&ctx.name, "token_refresh");
                    self.auth.invalidate().await;
                }
                401 => return Err(credentials(format!("the ingestion endpoint refused a fresh token: {detail}"))),
                403 => {
                    return Err(credentials(format!(
                        "the ingestion endpoint refused access (does the identity have Monitoring Metrics Publisher on the DCR?): {detail}"
                    )));
                }
                429 => {
                    ctx.metrics.retry(&ctx.name, "throttled");
                    let d = match retry_after {
                        Some(wait) => backoff.server_delay(wait),
                        None => backoff.next_delay(),
                    }
                    .ok_or_else(|| fail(detail.clone(), &backoff))?;
                    tracing::warn!(output = %ctx.name, wait = ?d, "throttled by the Logs Ingestion API");
                    tokio::time::sleep(d).await;
                }
                408 | 500..=599 => {
                    ctx.metrics.retry(&ctx.name, "server_error");
                    let d = backoff.next_delay().ok_or_else(|| fail(detail.clone(), &backoff))?;
                    tokio::time::sleep(d).await;
                }
                _ => return Ok(Answer::Reject { status, detail }),
            }
        }
    }
}

/// Splits rows into requests whose JSON array stays within `max` bytes.
fn chunk(rows: Vec<Row>, max: usize) -> Vec<Vec<Row>> {
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

fn json_array(rows: &[Row]) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_given_as_the_stream_is_refused_with_the_fix() -> Result<(), serde_json::Error> {
        let s: SentinelSettings = serde_json::from_value(serde_json::json!({
            "endpoint": "https://dce.example.test",
            "dcr_immutable_id": "dcr-1",
            "process_stream": "Microsoft-ASimProcessEventLogs",
            "auth": {"method": "managed_identity"},
        }))?;
        let (key, message) = s.validate().err().unwrap_or_default();
        assert_eq!(key, "process_stream");
        assert!(message.contains("begin with `Custom-`") && message.contains("outputStream"), "{message}");
        Ok(())
    }

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
