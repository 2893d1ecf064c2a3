//! Up to when this node was observed, kept beside the spool (a hostPath that outlives the pod),
//! so the next run can report the window in which no agent was watching: between an upgrade's
//! old and new pod, or after a crash, an OOM kill or a reboot. Nothing in the kernel keeps
//! records while no agent runs, so the gap is reported, not hidden.
//!
//! One line, replaced atomically (write + rename) at every status event:
//! `v1 <unix_ns> <running|stopped> <version>`.

use std::path::{Path, PathBuf};

const FILE: &str = "observed-until";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous {
    pub until_unix_ns: u64,
    pub stopped: bool,
    pub version: String,
}

impl Previous {
    /// How the previous run ended, for the gap's `detail`.
    pub fn detail(&self) -> String {
        if self.stopped {
            format!("previous agent {} stopped", self.version)
        } else {
            format!("previous agent {} ended without stopping (crash, kill, OOM kill or node reboot)", self.version)
        }
    }
}

pub struct Watermark {
    path: PathBuf,
    tmp: PathBuf,
    warned: bool,
}

impl Watermark {
    pub fn in_dir(dir: &Path) -> Self {
        Self { path: dir.join(FILE), tmp: dir.join(format!("{FILE}.tmp")), warned: false }
    }

    /// What the previous run recorded; None on a first start. A damaged file is reported and
    /// treated as a first start (the gap cannot be bounded).
    pub fn previous(&self) -> Option<Previous> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the previous run's watermark: its gap is not reported");
                return None;
            }
        };
        let parsed = parse(&text);
        if parsed.is_none() {
            tracing::warn!(path = %self.path.display(), content = %text.trim(), "damaged watermark: the previous run's gap is not reported");
        }
        parsed
    }

    /// Records that everything up to `unix_ns` was observed. Failures are logged once: the
    /// agent goes on (only the next run's gap report would be less precise).
    pub fn record(&mut self, unix_ns: u64, stopped: bool) {
        let line = format!("v1 {unix_ns} {} {}\n", if stopped { "stopped" } else { "running" }, env!("CARGO_PKG_VERSION"));
        let written = std::fs::write(&self.tmp, line).and_then(|()| std::fs::rename(&self.tmp, &self.path));
        match written {
            Ok(()) => self.warned = false,
            Err(e) if !self.warned => {
                self.warned = true;
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the watermark: a later restart's gap will not be reported");
            }
            Err(_) => {}
        }
    }
}

fn parse(text: &str) -> Option<Previous> {
    let mut it = text.split_whitespace();
    if it.next()? != "v1" {
        return None;
    }
    let until_unix_ns = it.next()?.parse().ok()?;
    let stopped = match it.next()? {
        "stopped" => true,
        "running" => false,
        _ => return None,
    };
    let version = it.next()?.to_owned();
    Some(Previous { until_unix_ns, stopped, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_reads_back_and_refuses_damage() {
        let dir = std::env::temp_dir().join(format!("peregrine-watermark-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = Watermark::in_dir(&dir);
        assert_eq!(w.previous(), None, "first start");
        w.record(1_700_000_000_123_456_789, false);
        let p = w.previous().unwrap();
        assert_eq!(p.until_unix_ns, 1_700_000_000_123_456_789);
        assert!(!p.stopped);
        assert!(p.detail().contains("ended without stopping"));
        w.record(42, true);
        assert_eq!(w.previous().unwrap(), Previous { until_unix_ns: 42, stopped: true, version: env!("CARGO_PKG_VERSION").into() });
        for bad in ["", "v2 1 stopped x", "v1 x stopped 1", "v1 1 paused 1", "v1 1 stopped"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
