//! The JSON-lines service: one event per line to stdout or a file, flushed before the batch
//! counts as accepted. Encoding is serde's JSON of the event model (`docs/OUTPUTS.md`); the
//! queue's worker usually hands it lines written straight from the wire bytes
//! (`peregrine_proto::json`: the same documents).

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
    File(PathBuf, File),
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
        Ok(Self { target: Mutex::new(Target::File(path.to_owned(), file)) })
    }

    pub async fn send(&self, events: &[Event], ctx: &Ctx) -> Result<(), OutputError> {
        // The whole batch as one buffer: one write, and one place to undo it if refused.
        let mut lines = Vec::with_capacity(events.len() * 1024);
        let mut n = 0;
        for e in events {
            let start = lines.len();
            let encoded = match ctx.max_event_bytes {
                // No size limit: straight into the batch, without a buffer per event.
                None => serde_json::to_writer(&mut lines, e).map(|()| truncate::Fitted::Fits((), false)),
                limit => truncate::fit(e, limit, serde_json::to_vec, Vec::len).map(|fitted| match fitted {
                    truncate::Fitted::Fits(bytes, truncated) => {
                        lines.extend_from_slice(&bytes);
                        truncate::Fitted::Fits((), truncated)
                    }
                    truncate::Fitted::TooLarge(why) => truncate::Fitted::TooLarge(why),
                }),
            };
            match encoded {
                Ok(truncate::Fitted::Fits((), truncated)) => {
                    if truncated {
                        ctx.metrics.truncated(&ctx.name);
                    }
                    lines.push(b'\n');
                    n += 1;
                }
                Ok(truncate::Fitted::TooLarge(why)) => ctx.dead_letter(e, "too_large", &why).await,
                Err(err) => {
                    lines.truncate(start);
                    ctx.dead_letter(e, "encode_error", &err.to_string()).await;
                }
            }
        }
        self.write(&lines, n, ctx).await
    }

    /// Writes lines already encoded (`n` events) as one batch.
    pub async fn write(&self, lines: &[u8], n: usize, ctx: &Ctx) -> Result<(), OutputError> {
        let mut target = self.target.lock().await;
        let (path, written) = match &mut *target {
            Target::Stdout(w) => ("stdout".into(), w.write_all(lines).and_then(|()| w.flush())),
            Target::File(p, f) => (p.display().to_string(), write_batch(f, lines)),
        };
        written.map_err(|source| OutputError::Write { output: ctx.name.clone(), path, source })?;
        ctx.metrics.sent(&ctx.name, n);
        Ok(())
    }
}

/// Appends a batch or nothing: a refused write (disk full, I/O error) may have put part of it
/// on disk, and the whole batch is offered again, so that part is cut off again. Otherwise the
/// retry would leave a torn line (swallowing the line after it) and every line before it twice.
fn write_batch(file: &mut File, batch: &[u8]) -> std::io::Result<()> {
    let before = file.metadata()?.len();
    let Err(e) = file.write_all(batch) else { return Ok(()) };
    if let Err(undo) = file.set_len(before) {
        tracing::error!(error = %undo, "cannot cut a partly written batch off the output file; its lines will be written again after it");
    }
    Err(e)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// On a volume that fills up mid-batch, the refused batch leaves nothing behind: the file
    /// ends after the last batch that was accepted, on a line boundary.
    #[test]
    fn a_refused_batch_is_cut_off_again() {
        let at = std::env::temp_dir().join(format!("peregrine-full-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&at).unwrap();
        nix::mount::mount(Some("tmpfs"), &at, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=64k"))
            .unwrap_or_else(|e| panic!("mounting a 64 KiB tmpfs at {} (the test runs as root): {e}", at.display()));
        let path = at.join("out.jsonl");
        let mut file = open_append("file", &path).unwrap();
        let line = |c: u8| [vec![c; 1023], vec![b'\n']].concat();
        write_batch(&mut file, &line(b'a').repeat(16)).unwrap();
        let err = write_batch(&mut file, &line(b'b').repeat(128)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
        let text = std::fs::read(&path).unwrap();
        let _ = nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&at);
        assert_eq!(text, line(b'a').repeat(16));
    }
}
