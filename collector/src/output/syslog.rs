//! The syslog service: RFC 5424 messages with RFC 6587 octet-counting framing over TCP, or TLS
//! (RFC 5425) with rustls, one connection kept open and re-made on failure.
//!
//! A batch counts as accepted when all of its frames were written to the socket and flushed.
//! Syslog over TCP has no application acknowledgement: a receiver that dies after reading
//! loses what it had read. Before each write the connection is checked for an orderly close by
//! the peer (so a restarted receiver does not eat the first batch); on a write error the whole
//! batch is written again on a new connection (the receiver may see duplicates, same ids).

use std::{path::PathBuf, sync::Arc, time::Duration};

use peregrine_proto::Event;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde::Deserialize;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::Mutex,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{Ctx, OutputError, cef, retry::Backoff, truncate};
use crate::config::RetrySettings;

/// Default largest message (bytes, before framing). Receivers must accept it: rsyslog's own
/// default is 8 KiB (`global(maxMessageSize="64k")` raises it).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CefSyslogSettings {
    /// `host:port` of the receiver.
    pub address: String,
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA(s) to trust for TLS; without it, the Mozilla roots (webpki-roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name to verify the receiver's certificate against; default: the host of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Syslog facility number (16 = local0).
    #[serde(default = "default_facility")]
    pub facility: u8,
    #[serde(default = "default_app_name")]
    pub app_name: String,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
}

fn default_facility() -> u8 {
    16
}
fn default_app_name() -> String {
    "peregrine".into()
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_write_timeout_ms() -> u64 {
    10_000
}

impl CefSyslogSettings {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if split_host_port(&self.address).is_none() {
            return Err(("address".into(), format!("`{}` is not host:port", self.address)));
        }
        if self.facility > 23 {
            return Err(("facility".into(), "must be 0..=23".into()));
        }
        if self.ca_file.is_some() && !self.tls {
            return Err(("ca_file".into(), "only used with tls = true".into()));
        }
        Ok(())
    }

    pub fn build(&self, output: &str, retry: &RetrySettings) -> Result<CefSyslog, OutputError> {
        let err = |message: String| OutputError::Config { output: output.to_owned(), message };
        let (host, _) = split_host_port(&self.address).ok_or_else(|| err(format!("address `{}` is not host:port", self.address)))?;
        let tls = if self.tls {
            let mut roots = rustls::RootCertStore::empty();
            match &self.ca_file {
                Some(path) => {
                    let certs = CertificateDer::pem_file_iter(path)
                        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| err(format!("ca_file {}: {e}", path.display())))?;
                    if certs.is_empty() {
                        return Err(err(format!("ca_file {}: no certificate in it", path.display())));
                    }
                    for c in certs {
                        roots.add(c).map_err(|e| err(format!("ca_file {}: {e}", path.display())))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| err(format!("TLS setup: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = self.server_name.clone().unwrap_or_else(|| host.trim_matches(|c| c == '[' || c == ']').to_owned());
            let server_name = ServerName::try_from(name.clone()).map_err(|e| err(format!("server name `{name}`: {e}")))?;
            Some((TlsConnector::from(Arc::new(config)), server_name))
        } else {
            None
        };
        Ok(CefSyslog {
            address: self.address.clone(),
            tls,
            facility: self.facility,
            app_name: self.app_name.clone(),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            retry: retry.clone(),
            conn: Mutex::new(None),
        })
    }
}

fn split_host_port(a: &str) -> Option<(&str, u16)> {
    let (host, port) = a.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }

    fn writer(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send) {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.as_mut(),
        }
    }

    /// False when the peer has closed the connection (a peek returns end of stream at once).
    async fn alive(&self) -> bool {
        let mut b = [0u8; 1];
        !matches!(tokio::time::timeout(Duration::ZERO, self.tcp().peek(&mut b)).await, Ok(Ok(0) | Err(_)))
    }
}

pub struct CefSyslog {
    address: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    facility: u8,
    app_name: String,
    connect_timeout: Duration,
    write_timeout: Duration,
    retry: RetrySettings,
    conn: Mutex<Option<Conn>>,
}

impl CefSyslog {
    async fn connect(&self) -> Result<Conn, String> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| format!("connect timed out after {:?}", self.connect_timeout))?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Conn::Plain(tcp)),
            Some((connector, name)) => {
                let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| format!("TLS handshake timed out after {:?}", self.connect_timeout))?
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                Ok(Conn::Tls(Box::new(tls)))
            }
        }
    }

    /// Encodes one event as a framed message (for tests and the send path).
    pub fn encode(&self, e: &Event) -> Vec<u8> {
        cef::frame(&cef::rfc5424(e, self.facility, &self.app_name))
    }

    pub async fn send(&self, events: &[Event], ctx: &Ctx) -> Result<(), OutputError> {
        let mut buf = Vec::new();
        let mut n = 0;
        for e in events {
            let encode = |e: &Event| Ok::<_, std::convert::Infallible>(cef::rfc5424(e, self.facility, &self.app_name));
            match truncate::fit(e, ctx.max_event_bytes, encode, String::len) {
                Ok(truncate::Fitted::Fits(msg, truncated)) => {
                    if truncated {
                        ctx.metrics.truncated(&ctx.name);
                    }
                    buf.extend_from_slice(&cef::frame(&msg));
                    n += 1;
                }
                Ok(truncate::Fitted::TooLarge(why)) => ctx.dead_letter(e, "too_large", &why).await,
                Err(never) => match never {},
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        let mut backoff = Backoff::new(&self.retry);
        let mut conn = self.conn.lock().await;
        loop {
            let attempt = async {
                if let Some(c) = conn.as_ref()
                    && !c.alive().await
                {
                    *conn = None;
                }
                if conn.is_none() {
                    *conn = Some(self.connect().await?);
                }
                let c = conn.as_mut().ok_or("no connection")?;
                let w = c.writer();
                tokio::time::timeout(self.write_timeout, async {
                    w.write_all(&buf).await?;
                    w.flush().await
                })
                .await
                .map_err(|_| format!("write timed out after {:?}", self.write_timeout))?
                .map_err(|e| format!("write: {e}"))
            };
            match attempt.await {
                Ok(()) => {
                    ctx.metrics.sent(&ctx.name, n);
                    return Ok(());
                }
                Err(message) => {
                    *conn = None;
                    ctx.metrics.retry(&ctx.name, "connection");
                    match backoff.next_delay() {
                        Some(d) => {
                            tracing::warn!(output = %ctx.name, address = %self.address, error = %message, retry_in = ?d, "syslog delivery failed");
                            tokio::time::sleep(d).await;
                        }
                        None => {
                            return Err(OutputError::Syslog {
                                output: ctx.name.clone(),
                                address: self.address.clone(),
                                message,
                                attempts: backoff.retries() + 1,
                            });
                        }
                    }
                }
            }
        }
    }
}
