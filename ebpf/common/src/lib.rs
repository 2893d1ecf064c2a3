//! Record layouts shared by the kernel programs (`peregrine-ebpf`) and the agent.
//!
//! Every record written to the ring buffer starts with a [`RecordHeader`]. The header carries
//! [`ABI_VERSION`]: the agent refuses an object file, and any record, built against another
//! layout, because a silent mismatch would decode garbage into plausible-looking events.
//!
//! Layouts are `#[repr(C)]` with explicit padding so that the BPF target and x86_64 agree;
//! the `const` asserts below pin every size and offset the decoder relies on. [`TaskInfo`],
//! [`PathBuf`], [`ForkInfo`] and [`ExitInfo`] are filled by the C getters and mirror
//! `ebpf/programs/c/task_info.h`, which asserts the same sizes.
#![no_std]

/// Bump on any change to a record layout, a record kind's meaning, or a global the agent sets.
pub const ABI_VERSION: u32 = 7;

/// Name of the object-file symbol holding the ABI version the programs were built with.
pub const ABI_SYMBOL: &str = "PEREGRINE_ABI_VERSION";

/// Bytes of the executed file name kept in an exec record (the kernel limit is `PATH_MAX`).
pub const FILENAME_CAP: usize = 512;
/// Bytes of the argument area kept in an exec record. A power of two: the programs mask with it.
pub const ARGV_CAP: usize = 16384;
pub const COMM_LEN: usize = 16;
/// Bytes of path components kept per walked path (`PEREGRINE_PATH_CAP`).
pub const PATH_CAP: usize = 1024;
pub const TTY_NAME_LEN: usize = 32;
/// Bytes of a cgroup path kept in a cgroup record (kubelet paths are under 200 bytes).
pub const CGROUP_PATH_CAP: usize = 512;

/// Kinds of record; the value is [`RecordHeader::kind`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Exec = 1,
    Fork = 2,
    Exit = 3,
    /// A TCP connect: the attempt (at SYN_SENT) or its outcome.
    Connect = 4,
    Accept = 5,
    Listen = 6,
    /// First datagram (or UDP connect) of a flow, from the cgroup sock_addr hooks.
    Udp = 7,
    /// A connect or send refused by the egress policy.
    Denied = 8,
    /// A directory appeared in the cgroup2 hierarchy (`cgroup:cgroup_mkdir`).
    CgroupMkdir = 9,
    /// A directory left the cgroup2 hierarchy (`cgroup:cgroup_rmdir`).
    CgroupRmdir = 10,
    /// An exec the LSM hook refused (`EXEC_DENY`).
    ExecDenied = 11,
}

impl RecordKind {
    pub fn from_u16(value: u16) -> Option<Self> {
        match value {
            1 => Some(Self::Exec),
            2 => Some(Self::Fork),
            3 => Some(Self::Exit),
            4 => Some(Self::Connect),
            5 => Some(Self::Accept),
            6 => Some(Self::Listen),
            7 => Some(Self::Udp),
            8 => Some(Self::Denied),
            9 => Some(Self::CgroupMkdir),
            10 => Some(Self::CgroupRmdir),
            11 => Some(Self::ExecDenied),
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

/// [`PathBuf::flags`] bits (`PEREGRINE_PATH_*`).
pub mod path_flags {
    /// Depth or byte bound hit, or a component unreadable: the path lacks its top.
    pub const TRUNCATED: u16 = 1;
    /// The walk reached the process's root: the path is absolute (relative to that root).
    pub const ABSOLUTE: u16 = 2;
}

/// A path walked in the kernel: NUL-terminated components, leaf first.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PathBuf {
    pub len: u16,
    pub depth: u16,
    pub flags: u16,
    pub _pad: u16,
    pub buf: [u8; PATH_CAP],
}

/// What an exec record says about the process beyond argv and the executed file name.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TaskInfo {
    /// Process (thread group leader) start, boot-time ns: with the tgid, the process's identity.
    pub start_ns: u64,
    pub parent_start_ns: u64,
    pub cap_effective: u64,
    pub cap_permitted: u64,
    pub parent_tgid: u32,
    /// The pid as seen inside the task's own pid namespace.
    pub vpid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    /// `u32::MAX` when unset (no login session).
    pub loginuid: u32,
    pub sessionid: u32,
    pub ns_pid: u32,
    pub ns_mnt: u32,
    pub ns_net: u32,
    pub ns_uts: u32,
    pub ns_ipc: u32,
    pub ns_user: u32,
    pub ns_cgroup: u32,
    /// `/proc/<pid>/stat`'s tty_nr encoding; 0 without a controlling terminal.
    pub tty_nr: u32,
    pub tty_name: [u8; TTY_NAME_LEN],
    pub exe: PathBuf,
    pub cwd: PathBuf,
}

/// One `sched:sched_process_exec`. Written with `argv_len` bytes of `argv`; the unused tail of
/// `argv` is not sent, so readers must use [`ExecRecord::ARGV_OFFSET`] + `argv_len`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecRecord {
    pub header: RecordHeader,
    pub pid: u32,
    pub tgid: u32,
    /// Bytes of `filename` used, without the terminating NUL.
    pub filename_len: u16,
    /// Bytes of `argv` used: NUL-separated arguments as they sit in the new process's memory.
    pub argv_len: u16,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    pub task: TaskInfo,
    pub filename: [u8; FILENAME_CAP],
    pub argv: [u8; ARGV_CAP],
}

impl ExecRecord {
    pub const ARGV_OFFSET: usize = core::mem::offset_of!(ExecRecord, argv);
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkInfo {
    pub child_start_ns: u64,
    pub parent_start_ns: u64,
    pub child_tgid: u32,
    /// The child's real parent (differs from the forker with CLONE_PARENT).
    pub parent_tgid: u32,
    pub forker_tgid: u32,
    pub _pad: u32,
}

/// A new process (not thread), from `sched_process_fork`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkRecord {
    pub header: RecordHeader,
    pub info: ForkInfo,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitInfo {
    pub start_ns: u64,
    pub tgid: u32,
    /// Wait status: exit status << 8, 0x80 when a core was dumped, the signal in the low 7 bits.
    pub exit_code: i32,
}

/// A process ended: `sched_process_exit` of its last thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitRecord {
    pub header: RecordHeader,
    pub info: ExitInfo,
    /// Thread id of the last thread (the leader may have exited before it).
    pub pid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// [`RecordHeader::flags`] bits for cgroup records.
pub mod cgroup_flags {
    /// The path was longer than [`super::CGROUP_PATH_CAP`].
    pub const PATH_TRUNCATED: u16 = 1;
}

/// A cgroup2 directory created or removed. Only the default (cgroup2) hierarchy is reported:
/// its ids are what `bpf_get_current_cgroup_id()` returns, so they join every other record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupRecord {
    pub header: RecordHeader,
    /// The cgroup's id (its cgroup2 directory's inode number).
    pub id: u64,
    /// Depth below the hierarchy root (the root is level 0).
    pub level: u32,
    /// Bytes of `path` used, without the terminating NUL.
    pub path_len: u16,
    pub _pad: u16,
    /// Path relative to the cgroup2 mount, e.g. `/kubepods/besteffort/pod<uid>/<id>`.
    pub path: [u8; CGROUP_PATH_CAP],
}

/// The process behind a socket, recorded in process context (connect, accept, listen).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockOwner {
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
}

/// [`ConnRecord::outcome`] values.
pub mod outcome {
    /// The SYN is out; no answer yet.
    pub const ATTEMPT: u16 = 0;
    pub const ESTABLISHED: u16 = 1;
    /// Closed before establishing; `error` (the socket's sk_err) tells why.
    pub const FAILED: u16 = 2;
    /// A connect reported established was later ended by the peer's reset (ECONNRESET).
    pub const RESET: u16 = 3;
}

/// [`RecordHeader::flags`] bits for connection records.
pub mod conn_flags {
    /// No owner was recorded for the socket (evicted, or connecting before the agent started):
    /// the record is not attributed rather than attributed to whatever ran in softirq.
    pub const OWNER_UNKNOWN: u16 = 1;
}

/// TCP states (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const CLOSE: i32 = 7;
    pub const LISTEN: i32 = 10;
}

/// A socket's endpoints (`struct peregrine_tuple`). Ports in host order; addresses in network
/// order, IPv4 in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Tuple {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u16,
    /// The socket's pending error (errno), meaningful when a connect failed.
    pub error: i32,
    pub _pad: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// A TCP connection record: a connect attempt or outcome, an accept, a new listener.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnRecord {
    pub header: RecordHeader,
    pub owner: SockOwner,
    /// The socket's kernel address: joins an attempt to its outcome.
    pub sock: u64,
    pub tuple: Tuple,
    /// [`outcome`] for connects; 0 otherwise.
    pub outcome: u16,
    pub _pad: [u16; 3],
    /// Boot-time ns of the dedup window this record opened (its flow's first connect or
    /// accept in the window); 0 when TCP dedup is off or the record is no connect attempt or
    /// accept. The window's key is the owner's cgroup and tgid with the tuple's peer address,
    /// the port ([`flow_dir`]) and the family or'ed with the direction.
    pub window_start_ns: u64,
    /// The flow's previous window, when the kernel closed it itself (a connect after it
    /// expired, before the agent read it): the attempts it absorbed. Zero otherwise.
    pub carried: ConnWindow,
}

/// A TCP dedup window of one flow ([`FlowKey`] with [`flow_dir`] bits): the value of
/// `TCP_SEEN`. The window's first connect or accept is sent as a record; the others only
/// count here. Counters are added to atomically (several CPUs share one flow).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnWindow {
    pub start_ns: u64,
    /// Connects or accepts absorbed (not sent) in the window.
    pub absorbed: u64,
    /// Of the absorbed connects, how many ended established and how many failed, as far as
    /// known when the window was read (a SYN timeout can end after it).
    pub established: u64,
    pub failed: u64,
}

/// Bits or'ed into [`FlowKey::family`] so one map keeps the flows of each direction apart.
pub mod flow_dir {
    /// A UDP datagram received (the key's address is its source).
    pub const UDP_IN: u16 = 0x8000;
    /// TCP connects (the key's address and port are the destination's).
    pub const TCP_OUT: u16 = 0x4000;
    /// TCP accepts (the key's address is the peer's, the port the local listening one).
    pub const TCP_IN: u16 = 0x2000;
}

/// The `CONNECTING` map's value: who connected, and whether the record was absorbed into a
/// dedup window (then its outcome is counted there, not sent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Connecting {
    /// The whole owner when the attempt was sent; only pid, tgid and cgroup when absorbed.
    pub owner: SockOwner,
    /// The window the attempt was absorbed into; 0 when it was sent (then the entry stays
    /// after the connect established, so a reset by the peer can be reported).
    pub absorbed_into: u64,
    /// The absorbing window's key (so the outcome needs no second read of the socket).
    pub key: FlowKey,
}

/// [`RecordHeader::flags`] bits for UDP and denial records (the socket operation).
pub mod sockaddr_op {
    pub const CONNECT: u16 = 1 << 8;
    pub const SENDMSG: u16 = 1 << 9;
    /// A datagram received: the address is its source.
    pub const RECVMSG: u16 = 1 << 10;
}

/// Key of the UDP first-contact and TCP dedup maps: one flow per process, cgroup, peer and
/// port, and direction ([`flow_dir`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub cgroup_id: u64,
    pub tgid: u32,
    pub family: u16,
    pub dport: u16,
    pub daddr: [u8; 16],
}

impl FlowKey {
    /// The TCP dedup key of a connection record's flow (the kernel builds it from the staged
    /// record, the agent from the record it received): owner's cgroup and tgid, the peer's
    /// address, and the peer's port for a connect ([`flow_dir::TCP_OUT`]) or the local one for
    /// an accept ([`flow_dir::TCP_IN`]: a client's source port varies per connection).
    #[inline(always)]
    pub fn tcp(rec: &ConnRecord, dir: u16) -> Self {
        Self {
            cgroup_id: rec.owner.cgroup_id,
            tgid: rec.owner.tgid,
            family: rec.tuple.family | dir,
            dport: if dir == flow_dir::TCP_IN { rec.tuple.sport } else { rec.tuple.dport },
            daddr: rec.tuple.daddr,
        }
    }

    /// The key as the map holds it (the layout has no padding).
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&self.cgroup_id.to_ne_bytes());
        b[8..12].copy_from_slice(&self.tgid.to_ne_bytes());
        b[12..14].copy_from_slice(&self.family.to_ne_bytes());
        b[14..16].copy_from_slice(&self.dport.to_ne_bytes());
        b[16..].copy_from_slice(&self.daddr);
        b
    }
}

impl ConnWindow {
    /// A window as the map holds it.
    pub fn from_bytes(b: &[u8; 32]) -> Self {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(w)
        };
        Self { start_ns: word(0), absorbed: word(1), established: word(2), failed: word(3) }
    }
}

/// A file as the kernel knows it: its superblock's device (the kernel's encoding,
/// `major << 20 | minor`) and its inode number. Key of the exec deny map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

/// Bytes of the file name kept in an exec denial (the name as given to execve).
pub const DENIED_NAME_CAP: usize = 256;

/// An exec refused by the LSM hook because its file is in `EXEC_DENY`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecDeniedRecord {
    pub header: RecordHeader,
    pub owner: SockOwner,
    pub file: FileKey,
    pub filename_len: u16,
    pub _pad: [u16; 3],
    pub filename: [u8; DENIED_NAME_CAP],
}

/// Indices into the per-CPU counter map `COUNTERS`.
pub mod counter {
    /// Records the ring buffer had no room for.
    pub const RING_FULL: u32 = 0;
    /// Records dropped because a kernel read failed so badly nothing useful remained.
    pub const READ_FAILED: u32 = 1;
    /// Connect outcomes whose owner was not in the map.
    pub const CONN_OWNER_MISSING: u32 = 2;
    pub const COUNT: u32 = 3;
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<RecordHeader>() == 24);
    assert!(size_of::<PathBuf>() == 8 + PATH_CAP);
    assert!(size_of::<TaskInfo>() == 32 + 16 * 4 + TTY_NAME_LEN + 2 * (8 + PATH_CAP));
    assert!(offset_of!(TaskInfo, exe) == 32 + 16 * 4 + TTY_NAME_LEN);
    assert!(size_of::<ForkInfo>() == 32);
    assert!(size_of::<ExitInfo>() == 16);
    assert!(offset_of!(ExecRecord, cgroup_id) == 40);
    assert!(offset_of!(ExecRecord, task) == 64);
    assert!(ExecRecord::ARGV_OFFSET == 64 + size_of::<TaskInfo>() + FILENAME_CAP);
    assert!(size_of::<ExecRecord>() == ExecRecord::ARGV_OFFSET + ARGV_CAP);
    assert!(size_of::<ForkRecord>() == 24 + 32 + 8 + 16);
    assert!(size_of::<ExitRecord>() == 24 + 16 + 8 + 8 + 16);
    assert!(size_of::<SockOwner>() == 40);
    assert!(size_of::<FileKey>() == 16);
    assert!(size_of::<ExecDeniedRecord>() == 24 + 40 + 16 + 8 + DENIED_NAME_CAP);
    assert!(size_of::<Tuple>() == 48);
    assert!(size_of::<FlowKey>() == 32);
    assert!(size_of::<ConnRecord>() == 24 + 40 + 8 + 48 + 8 + 8 + 32);
    assert!(size_of::<ConnWindow>() == 32);
    assert!(size_of::<Connecting>() == 80);
    assert!(size_of::<CgroupRecord>() == 24 + 16 + CGROUP_PATH_CAP);
    assert!(ARGV_CAP.is_power_of_two() && PATH_CAP.is_power_of_two());
    // argv_len and filename_len are u16.
    assert!(ARGV_CAP <= u16::MAX as usize);
    assert!(FILENAME_CAP <= u16::MAX as usize);
    // Per-CPU array values are limited to 32 KiB.
    assert!(size_of::<ExecRecord>() <= 32768);
};
