//! The JSON-lines output: one event per line, flushed before the batch is acknowledged.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::Path,
};

use peregrine_proto::Event;

pub enum Output {
    Stdout(BufWriter<std::io::Stdout>),
    File(BufWriter<File>),
}

impl Output {
    pub fn stdout() -> Self {
        Self::Stdout(BufWriter::new(std::io::stdout()))
    }

    pub fn file(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self::File(BufWriter::new(file)))
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Self::Stdout(w) => w,
            Self::File(w) => w,
        }
    }

    /// Writes the events as JSON lines and flushes them to the OS.
    pub fn write_batch(&mut self, events: &[Event]) -> std::io::Result<()> {
        let w = self.writer();
        for event in events {
            serde_json::to_writer(&mut *w, event).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    }
}
