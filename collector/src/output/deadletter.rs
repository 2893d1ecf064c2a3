//! Where an output sets aside what it could not deliver: one JSON object per line with the
//! output's name, the reason, the time and the event as received. Without a configured path
//! the record goes to the log at error level. Either way the output's
//! `events_dead_lettered{reason}` counter goes up: nothing is dropped silently.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use peregrine_proto::Event;
use tokio::sync::Mutex;

use super::{Ctx, OutputError};

pub struct DeadLetter {
    file: Option<(PathBuf, Mutex<File>)>,
}

impl DeadLetter {
    pub fn open(output: &str, path: Option<&Path>) -> Result<Self, OutputError> {
        let file = match path {
            Some(p) => {
                let f = OpenOptions::new().create(true).append(true).open(p).map_err(|source| OutputError::Open {
                    output: output.to_owned(),
                    path: p.display().to_string(),
                    source,
                })?;
                Some((p.to_owned(), Mutex::new(f)))
            }
            None => None,
        };
        Ok(Self { file })
    }
}

impl Ctx {
    /// Sets `event` aside with `reason` (a short metric label) and `detail` (free text).
    pub async fn dead_letter(&self, event: &Event, reason: &str, detail: &str) {
        self.metrics.dead_lettered(&self.name, reason);
        let record = serde_json::json!({
            "output": self.name,
            "reason": reason,
            "detail": detail,
            "time_unix_nano": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            "event": event,
        });
        match &self.dead_letter.file {
            Some((path, file)) => {
                let mut line = record.to_string();
                line.push('\n');
                let mut f = file.lock().await;
                if let Err(e) = f.write_all(line.as_bytes()).and_then(|()| f.flush()) {
                    tracing::error!(output = %self.name, path = %path.display(), error = %e, event_id = %event.id, %reason, %detail,
                        "cannot write the dead-letter file; event set aside in this log line only");
                }
            }
            None => {
                tracing::error!(output = %self.name, event_id = %event.id, %reason, %detail, record = %record,
                    "event set aside (no dead_letter_path configured)");
            }
        }
    }
}
