//! The JSON-lines service: one event per line to stdout or a file, flushed before the batch
//! counts as accepted. Encoding is serde's JSON of the event model (`docs/OUTPUTS.md`).

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use peregrine_proto::Event;
use tokio::sync::Mutex;

use super::{Ctx, OutputError, truncate};

enum Target {
    Stdout(BufWriter<std::io::Stdout>),
    File(PathBuf, BufWriter<File>),
}

pub struct JsonLines {
    target: Mutex<Target>,
}

impl JsonLines {
    pub fn stdout() -> Self {
        Self { target: Mutex::new(Target::Stdout(BufWriter::new(std::io::stdout()))) }
    }

    pub fn file(output: &str, path: &Path) -> Result<Self, OutputError> {
        let mut file = open_append(output, path)?;
        end_torn_line(&mut file);
        Ok(Self { target: Mutex::new(Target::File(path.to_owned(), BufWriter::new(file))) })
    }

    pub async fn send(&self, events: &[Event], ctx: &Ctx) -> Result<(), OutputError> {
        let mut lines = Vec::with_capacity(events.len());
        for e in events {
            match truncate::fit(e, ctx.max_event_bytes, serde_json::to_vec, Vec::len) {
                Ok(truncate::Fitted::Fits(bytes, truncated)) => {
                    if truncated {
                        ctx.metrics.truncated(&ctx.name);
                    }
                    lines.push(bytes);
                }
                Ok(truncate::Fitted::TooLarge(why)) => ctx.dead_letter(e, "too_large", &why).await,
                Err(err) => ctx.dead_letter(e, "encode_error", &err.to_string()).await,
            }
        }
        let mut target = self.target.lock().await;
        let (path, w): (String, &mut dyn Write) = match &mut *target {
            Target::Stdout(w) => ("stdout".into(), w),
            Target::File(p, w) => (p.display().to_string(), w),
        };
        let n = lines.len();
        let written = (|| {
            for line in &lines {
                w.write_all(line)?;
                w.write_all(b"\n")?;
            }
            w.flush()
        })();
        written.map_err(|source| OutputError::Write { output: ctx.name.clone(), path, source })?;
        ctx.metrics.sent(&ctx.name, n);
        Ok(())
    }
}

/// A line cut short by a crash mid-write would swallow the next line written after it: end it.
/// (Its event was never confirmed, so the queue delivers it again in full.)
fn end_torn_line(file: &mut File) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(len) = file.metadata().map(|m| m.len()) else { return };
    if len == 0 {
        return;
    }
    let mut last = [0u8; 1];
    let Ok(mut reader) = file.try_clone() else { return };
    if reader.seek(SeekFrom::Start(len - 1)).is_ok() && reader.read_exact(&mut last).is_ok() && last[0] != b'\n' {
        let _ = file.write_all(b"\n");
    }
}

/// Ids of the events in the last `tail_bytes` of a JSON-lines file: what this output wrote
/// before a crash may not be in the delivered-id log yet, and must not be written twice.
pub fn written_ids(path: &Path, tail_bytes: u64) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(tail_bytes);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut tail = Vec::new();
    if file.take(tail_bytes).read_to_end(&mut tail).is_err() {
        return Vec::new();
    }
    // From the middle of the file, the first line is partial: skip it.
    let body = if start > 0 { tail.splitn(2, |b| *b == b'\n').nth(1).unwrap_or_default() } else { &tail[..] };
    #[derive(serde::Deserialize)]
    struct Line {
        id: String,
    }
    body.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice::<Line>(l).ok()).map(|l| l.id).collect()
}

pub fn open_append(output: &str, path: &Path) -> Result<File, OutputError> {
    OpenOptions::new().create(true).append(true).open(path).map_err(|source| OutputError::Open {
        output: output.to_owned(),
        path: path.display().to_string(),
        source,
    })
}
