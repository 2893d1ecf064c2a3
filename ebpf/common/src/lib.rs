//! Record layouts shared by the kernel programs (`peregrine-ebpf`) and the agent.
//!
//! Every record written to the ring buffer starts with a [`RecordHeader`]. The header carries
//! [`ABI_VERSION`]: the agent refuses an object file, and any record, built against another
//! layout, because a silent mismatch would decode garbage into plausible-looking events.
//!
//! Layouts are `#[repr(C)]` with explicit padding so that the BPF target and x86_64 agree;
//! the `const` asserts below pin every size and offset the decoder relies on.
#![no_std]

/// Bump on any change to a record layout, a record kind's meaning, or a global the agent sets.
pub const ABI_VERSION: u32 = 1;

/// Name of the object-file symbol holding the ABI version the programs were built with.
pub const ABI_SYMBOL: &str = "PEREGRINE_ABI_VERSION";

/// Bytes of the executed file name kept in an exec record (the kernel limit is `PATH_MAX`).
pub const FILENAME_CAP: usize = 512;
/// Bytes of the argument area kept in an exec record. A power of two: the programs mask with it.
pub const ARGV_CAP: usize = 4096;
pub const COMM_LEN: usize = 16;

/// Kinds of record; the value is [`RecordHeader::kind`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Exec = 1,
}

impl RecordKind {
    pub fn from_u16(value: u16) -> Option<Self> {
        match value {
            1 => Some(Self::Exec),
            _ => None,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    pub abi_version: u32,
    pub kind: u16,
    pub flags: u16,
    /// Bytes of the whole record including this header; the ring buffer may round up.
    pub size: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns()` when the record was made: boot-time clock, counts suspend.
    pub boot_ns: u64,
}

/// [`RecordHeader::flags`] bits for exec records.
pub mod exec_flags {
    /// The argument area was longer than [`super::ARGV_CAP`].
    pub const ARGV_TRUNCATED: u16 = 1 << 0;
    /// Reading the argument area from user memory failed (e.g. paged out); argv is empty.
    pub const ARGV_UNREADABLE: u16 = 1 << 1;
    /// The file name was longer than [`super::FILENAME_CAP`].
    pub const FILENAME_TRUNCATED: u16 = 1 << 2;
}

/// One `sched:sched_process_exec`. Written with `argv_len` bytes of `argv`; the unused tail of
/// `argv` is not sent, so readers must use [`ExecRecord::ARGV_OFFSET`] + `argv_len`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecRecord {
    pub header: RecordHeader,
    pub pid: u32,
    pub tgid: u32,
    /// `current->real_parent->tgid`, read through a CO-RE getter.
    pub parent_tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of `filename` used, without the terminating NUL.
    pub filename_len: u16,
    /// Bytes of `argv` used: NUL-separated arguments as they sit in the new process's memory.
    pub argv_len: u16,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    pub filename: [u8; FILENAME_CAP],
    pub argv: [u8; ARGV_CAP],
}

impl ExecRecord {
    pub const ARGV_OFFSET: usize = core::mem::offset_of!(ExecRecord, argv);
}

/// Indices into the per-CPU counter map `COUNTERS`.
pub mod counter {
    /// Records the ring buffer had no room for.
    pub const RING_FULL: u32 = 0;
    /// Records dropped because a kernel read failed so badly nothing useful remained.
    pub const READ_FAILED: u32 = 1;
    pub const COUNT: u32 = 2;
}

const _: () = {
    assert!(core::mem::size_of::<RecordHeader>() == 24);
    assert!(core::mem::size_of::<ExecRecord>() == 24 + 24 + 8 + 16 + FILENAME_CAP + ARGV_CAP);
    assert!(ExecRecord::ARGV_OFFSET == 24 + 24 + 8 + 16 + FILENAME_CAP);
    assert!(core::mem::offset_of!(ExecRecord, cgroup_id) % 8 == 0);
    assert!(ARGV_CAP.is_power_of_two());
    // argv_len and filename_len are u16.
    assert!(ARGV_CAP <= u16::MAX as usize && FILENAME_CAP <= u16::MAX as usize);
};
