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

use std::path::PathBuf;

use peregrine_proto::Event;
use serde::Deserialize;

use super::{
    Ctx, OutputError, asim,
    auth::{AuthSettings, TokenSource},
    http::{Authorize, Poster, Row},
    raw, truncate,
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
        let http = super::http::client(self.ca_file.as_deref(), self.request_timeout_ms).map_err(err)?;
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
        let exhausted = |message: String, attempts: u32| OutputError::Ingestion { output: ctx.name.clone(), url: url.clone(), message, attempts };
        let auth = EntraAuth { tokens: &self.auth, output: &ctx.name };
        let poster = Poster {
            http: &self.http,
            url: &url,
            gzip: true,
            max_bytes: self.settings.max_batch_bytes,
            retry: &self.retry,
            auth: &auth,
            exhausted: &exhausted,
        };
        poster.deliver(rows, events, ctx).await
    }
}

/// Entra bearer tokens: one refresh after a 401, then a credentials error naming the source.
struct EntraAuth<'a> {
    tokens: &'a TokenSource,
    output: &'a str,
}

impl Authorize for EntraAuth<'_> {
    async fn header(&self) -> Result<Option<String>, OutputError> {
        let token = self.tokens.token().await.map_err(|message| OutputError::Credentials {
            output: self.output.to_owned(),
            credential: self.tokens.describe(),
            message,
        })?;
        Ok(Some(format!("Bearer {token}")))
    }

    async fn refresh(&self) -> bool {
        self.tokens.invalidate().await;
        true
    }

    fn refused(&self, status: u16, detail: &str) -> OutputError {
        let message = if status == 403 {
            format!("the ingestion endpoint refused access (does the identity have Monitoring Metrics Publisher on the DCR?): {detail}")
        } else {
            format!("the ingestion endpoint refused a fresh token: {detail}")
        };
        OutputError::Credentials { output: self.output.to_owned(), credential: self.tokens.describe(), message }
    }
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
}
