//! How records travel from the kernel programs to the agent: the BPF ring buffer (one buffer,
//! records in submission order, wake-ups batched) or, where the kernel has none or when forced,
//! the per-CPU perf event array (`ebpf.transport`, docs/KERNELS.md).
//!
//! The perf path drains on the drain timer rather than on wake-ups, and its losses (a CPU's
//! buffer full) come from the kernel's own `PERF_RECORD_LOST` counts, read with the records.

use aya::maps::{
    MapData, PerfEventArray, RingBuf,
    perf::{PerfEvent, PerfEventArrayBuffer},
};
use tokio::io::unix::AsyncFd;

use super::KernelError;

/// The transport in force, as reported in the started status and the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RingBuffer,
    PerfEventArray,
}

/// Asks for a record's cache lines before it is decoded. The kernel wrote them on another
/// CPU; fetched one at a time as decoding reached them (an exec record's fixed part spans ~40
/// lines, read sparsely), the waits were about half of the drain's own time under an exec
/// storm (perf annotate). Asked for together, the fetches overlap. Past `PREFETCH_MAX` bytes
/// (an exec record's argv can reach 16 KiB) the rest is read in order, which the CPU's own
/// prefetcher follows; more requests would only evict what the first lines brought in.
#[inline]
fn prefetch(record: &[u8]) {
    const LINE: usize = 64;
    const PREFETCH_MAX: usize = 4096;
    #[cfg(target_arch = "x86_64")]
    {
        // From the start of the record's first line: a record need not start on one, and
        // stepping from its first byte would miss its last line.
        let misalign = record.as_ptr() as usize % LINE;
        let first_line = record.as_ptr().wrapping_sub(misalign);
        for offset in (0..misalign + record.len().min(PREFETCH_MAX)).step_by(LINE) {
            // SAFETY: SSE is part of every x86_64 CPU (the instruction needs nothing more),
            // and a prefetch is a hint: it neither faults nor reads or changes memory, so the
            // address needs no bounds.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(first_line.wrapping_add(offset).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (record, LINE, PREFETCH_MAX);
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::RingBuffer => "ring_buffer",
            Self::PerfEventArray => "perf_event_array",
        }
    }
}

/// The maps the agent reads, taken from the loaded object.
pub enum Maps {
    Ring(RingBuf<MapData>),
    /// Opened before the programs are attached: a record written to a CPU whose buffer is
    /// not installed yet would be dropped without a count.
    Perf(PerfReader),
}

/// The open reading side.
pub enum Records {
    Ring(AsyncFd<RingBuf<MapData>>),
    Perf(PerfReader),
}

pub struct PerfReader {
    buffers: Vec<PerfEventArrayBuffer<MapData>>,
    /// A sample that straddles a buffer's end, joined.
    joined: Vec<u8>,
    lost: u64,
}

impl PerfReader {
    /// Opens and installs one buffer per online CPU.
    pub fn open(mut array: PerfEventArray<MapData>, pages: usize) -> Result<Self, KernelError> {
        let cpus = aya::util::online_cpus()
            .map_err(|(path, e)| KernelError::Map { map: "PERF_EVENTS", message: format!("reading {path}: {e}") })?;
        let mut buffers = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            buffers.push(array.open(cpu, Some(pages)).map_err(|e| KernelError::Map {
                map: "PERF_EVENTS",
                message: format!("opening the perf buffer of CPU {cpu} ({pages} pages): {e}"),
            })?);
        }
        Ok(Self { buffers, joined: Vec::new(), lost: 0 })
    }
}

impl Maps {
    /// The reading side: the ring under tokio's reactor, or the perf buffers.
    pub fn open(self) -> Result<Records, KernelError> {
        match self {
            Self::Ring(ring) => {
                // SAFETY: the RingBuf owns its map fd and keeps it open for as long as the
                // AsyncFd (which owns the RingBuf) is registered; nothing else closes it.
                let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                    .map_err(|e| KernelError::Map { map: "EVENTS", message: format!("registering the ring buffer: {e}") })?;
                Ok(Records::Ring(fd))
            }
            Self::Perf(reader) => Ok(Records::Perf(reader)),
        }
    }
}

impl Records {
    /// Waits until the ring has data; the perf path never wakes (it drains on the timer).
    pub async fn readable(&mut self) {
        match self {
            Self::Ring(fd) => {
                if let Ok(mut guard) = fd.readable_mut().await {
                    guard.clear_ready();
                }
            }
            Self::Perf(_) => std::future::pending().await,
        }
    }

    /// Hands available records to `f`, in each buffer's order: from the ring at most `max`
    /// (true when it stopped there, with more waiting), from the perf buffers all of them
    /// (bounded by their size).
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> bool {
        match self {
            Self::Ring(fd) => {
                let ring = fd.get_mut();
                for _ in 0..max {
                    let Some(item) = ring.next() else { return false };
                    prefetch(&item);
                    f(&item);
                }
                true
            }
            Self::Perf(p) => {
                let PerfReader { buffers, joined, lost } = p;
                for buffer in buffers.iter_mut() {
                    buffer.for_each(|event| match event {
                        PerfEvent::Sample { head, tail: [] } => f(head),
                        PerfEvent::Sample { head, tail } => {
                            joined.clear();
                            joined.extend_from_slice(head);
                            joined.extend_from_slice(tail);
                            f(joined);
                        }
                        PerfEvent::Lost { count } => *lost += count,
                    });
                }
                false
            }
        }
    }

    /// Records the kernel dropped because a perf buffer was full, since the start (the ring
    /// buffer's losses are counted by the programs instead).
    pub fn lost(&self) -> u64 {
        match self {
            Self::Ring(_) => 0,
            Self::Perf(p) => p.lost,
        }
    }
}
