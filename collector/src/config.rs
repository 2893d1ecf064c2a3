//! The collector's configuration: file, `PEREGRINE_COLLECTOR__*` environment, `--set` flags.

use std::{net::SocketAddr, path::PathBuf};

use peregrine_service::config::Validate;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// gRPC ingest address agents connect to.
    pub listen: SocketAddr,
    pub log_level: String,
    pub output: OutputConfig,
    pub http: HttpConfig,
    /// Largest accepted gRPC message (a batch); larger ones are refused with a clear status.
    pub max_message_bytes: usize,
}

/// Where events go: JSON lines on stdout or appended to a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// `stdout` or `file`.
    pub kind: String,
    /// The file for `kind = "file"`.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7700)),
            log_level: "info".into(),
            output: OutputConfig::default(),
            http: HttpConfig::default(),
            max_message_bytes: 16 << 20,
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self { kind: "stdout".into(), path: None }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([0, 0, 0, 0], 9465)) }
    }
}

impl Validate for CollectorConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        match (self.output.kind.as_str(), &self.output.path) {
            ("stdout", _) | ("file", Some(_)) => {}
            ("file", None) => return Err(("output.path".into(), "required when output.kind = \"file\"".into())),
            (other, _) => return Err(("output.kind".into(), format!("`{other}` is not one of: stdout, file"))),
        }
        if self.max_message_bytes < 1024 {
            return Err(("max_message_bytes".into(), "must be at least 1024".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_service::config::Layers;

    #[test]
    fn file_output_needs_a_path() {
        let e = Layers::new().overrides(["output.kind=file"]).unwrap().build::<CollectorConfig>().unwrap_err();
        assert_eq!(e.to_string(), "config key `output.path`: required when output.kind = \"file\"");
        let e = Layers::new().overrides(["output.kind=kafka"]).unwrap().build::<CollectorConfig>().unwrap_err();
        assert_eq!(e.to_string(), "config key `output.kind` (set by --set output.kind=kafka): `kafka` is not one of: stdout, file");
    }
}
