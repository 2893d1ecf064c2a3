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
        let file = open_append(output, path)?;
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

pub fn open_append(output: &str, path: &Path) -> Result<File, OutputError> {
    OpenOptions::new().create(true).append(true).open(path).map_err(|source| OutputError::Open {
        output: output.to_owned(),
        path: path.display().to_string(),
        source,
    })
}
