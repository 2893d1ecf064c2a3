//! Ring-buffer records to typed records. Everything here treats the bytes as untrusted: a
//! short, oversized or foreign record is an error value, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use peregrine_common::{
    ABI_VERSION, CGROUP_PATH_CAP, COMM_LEN, CgroupRecord, ConnRecord, ConnWindow, DENIED_NAME_CAP, FlowKey, ExecDeniedRecord, ExecRecord, ExitRecord,
    FILENAME_CAP, ForkRecord, PATH_CAP, PathBuf, TTY_NAME_LEN,
    RecordHeader, RecordKind, TaskInfo, cgroup_flags, conn_flags, exec_flags, flow_dir, outcome, path_flags, sockaddr_op,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record ABI version {found}, expected {expected}")]
    Abi { found: u32, expected: u32 },
    #[error("unknown record kind {0}")]
    Kind(u16),
    #[error("{kind} record of {len} bytes, needs {need}")]
    Truncated { kind: &'static str, len: usize, need: usize },
}

impl DecodeError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Short(_) => "short",
            Self::Abi { .. } => "abi",
            Self::Kind(_) => "kind",
            Self::Truncated { .. } => "truncated",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Exec(Box<Exec>),
    Fork(Fork),
    Exit(Exit),
    Conn(Conn),
    Cgroup(Cgroup),
    ExecDenied(ExecDenied),
}

/// An exec the LSM hook refused (`process.deny_exec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecDenied {
    pub boot_ns: u64,
    pub tgid: u32,
    pub pid: u32,
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub comm: String,
    pub dev: u64,
    pub ino: u64,
    /// The name given to execve.
    pub filename: String,
}

/// A cgroup2 directory appeared or went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub boot_ns: u64,
    pub created: bool,
    pub id: u64,
    pub level: u32,
    /// Relative to the cgroup2 mount, starting with `/`.
    pub path: String,
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// A TCP connect: the attempt (`outcome == None`) or how it ended.
    Connect,
    Accept,
    Listen,
    /// The first datagram of a UDP flow (or a UDP connect).
    Udp,
    /// A connect or send refused by the egress policy.
    Denied,
}

/// The socket call a cgroup hook saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockOp {
    Connect,
    Send,
    Receive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnOutcome {
    Established,
    /// Closed before establishing, with the socket's errno (0: closed by the caller).
    Failed(i32),
    /// Established, then ended by the peer's reset.
    Reset,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Conn {
    pub boot_ns: u64,
    pub kind: ConnKind,
    /// None for the attempt record of a connect.
    pub outcome: Option<ConnOutcome>,
    /// The process, or None when the kernel could not attribute the socket.
    pub owner: Option<Owner>,
    pub sock: u64,
    /// IPPROTO_TCP (6) or IPPROTO_UDP (17).
    pub protocol: u16,
    /// For UDP and denials: which call.
    pub op: Option<SockOp>,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    /// The TCP dedup window this record opened, if it opened one.
    pub window: Option<OpenedWindow>,
    /// The flow's previous window, closed by the kernel itself, when it absorbed anything.
    pub carried: Option<ConnWindow>,
}

/// A dedup window a connect attempt or accept opened, with the key the kernel keeps it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenedWindow {
    pub start_ns: u64,
    pub key: FlowKey,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub tgid: u32,
    pub pid: u32,
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub comm: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exec {
    pub boot_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    pub filename: String,
    pub argv: Vec<String>,
    pub exe: String,
    pub cwd: String,
    pub start_ns: u64,
    pub parent_tgid: u32,
    pub parent_start_ns: u64,
    pub vpid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub loginuid: Option<u32>,
    pub sessionid: Option<u32>,
    pub cap_effective: u64,
    pub cap_permitted: u64,
    /// pid, mnt, net, uts, ipc, user, cgroup.
    pub ns: [u32; 7],
    pub tty: String,
    pub tty_nr: u32,
    /// What is incomplete: `argv_truncated`, `exe_truncated`, `lossy_utf8`, ...
    pub partial: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fork {
    pub boot_ns: u64,
    pub child_tgid: u32,
    pub child_start_ns: u64,
    pub parent_tgid: u32,
    pub parent_start_ns: u64,
    pub cgroup_id: u64,
    pub comm: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub boot_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub start_ns: u64,
    /// Wait status as the kernel keeps it.
    pub exit_code: i32,
    pub cgroup_id: u64,
    pub comm: String,
}

impl Record {
    pub fn boot_ns(&self) -> u64 {
        match self {
            Self::Exec(e) => e.boot_ns,
            Self::Fork(f) => f.boot_ns,
            Self::Exit(e) => e.boot_ns,
            Self::Conn(c) => c.boot_ns,
            Self::Cgroup(c) => c.boot_ns,
            Self::ExecDenied(d) => d.boot_ns,
        }
    }
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked above, `T` is a plain-old-data `#[repr(C)]` record type
    // from peregrine-common (any bit pattern is valid), and read_unaligned needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let header: RecordHeader = read(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    if header.abi_version != ABI_VERSION {
        return Err(DecodeError::Abi { found: header.abi_version, expected: ABI_VERSION });
    }
    match RecordKind::from_u16(header.kind) {
        Some(RecordKind::Exec) => decode_exec(&header, bytes).map(|e| Record::Exec(Box::new(e))),
        Some(RecordKind::Fork) => {
            let r: ForkRecord = fixed(bytes, "fork")?;
            let mut lossy = false;
            Ok(Record::Fork(Fork {
                boot_ns: header.boot_ns,
                child_tgid: r.info.child_tgid,
                child_start_ns: r.info.child_start_ns,
                parent_tgid: r.info.parent_tgid,
                parent_start_ns: r.info.parent_start_ns,
                cgroup_id: r.cgroup_id,
                comm: text(until_nul(&r.comm), &mut lossy),
            }))
        }
        Some(RecordKind::Exit) => {
            let r: ExitRecord = fixed(bytes, "exit")?;
            let mut lossy = false;
            Ok(Record::Exit(Exit {
                boot_ns: header.boot_ns,
                tgid: r.info.tgid,
                tid: r.pid,
                start_ns: r.info.start_ns,
                exit_code: r.info.exit_code,
                cgroup_id: r.cgroup_id,
                comm: text(until_nul(&r.comm), &mut lossy),
            }))
        }
        Some(
            kind @ (RecordKind::Connect
            | RecordKind::Accept
            | RecordKind::Listen
            | RecordKind::Udp
            | RecordKind::Denied),
        ) => {
            let r: ConnRecord = fixed(bytes, "connection")?;
            Ok(Record::Conn(decode_conn(&header, kind, &r)))
        }
        Some(kind @ (RecordKind::CgroupMkdir | RecordKind::CgroupRmdir)) => {
            let r: CgroupRecord = fixed(bytes, "cgroup")?;
            let mut lossy = false;
            let len = usize::from(r.path_len).min(CGROUP_PATH_CAP);
            Ok(Record::Cgroup(Cgroup {
                boot_ns: header.boot_ns,
                created: kind == RecordKind::CgroupMkdir,
                id: r.id,
                level: r.level,
                path: text(until_nul(&r.path[..len]), &mut lossy),
                truncated: header.flags & cgroup_flags::PATH_TRUNCATED != 0,
            }))
        }
        Some(RecordKind::ExecDenied) => {
            let r: ExecDeniedRecord = fixed(bytes, "exec denial")?;
            let mut lossy = false;
            let len = usize::from(r.filename_len).min(DENIED_NAME_CAP);
            Ok(Record::ExecDenied(ExecDenied {
                boot_ns: header.boot_ns,
                tgid: r.owner.tgid,
                pid: r.owner.pid,
                start_ns: r.owner.start_ns,
                cgroup_id: r.owner.cgroup_id,
                comm: text(until_nul(&r.owner.comm), &mut lossy),
                dev: r.file.dev,
                ino: r.file.ino,
                filename: text(until_nul(&r.filename[..len]), &mut lossy),
            }))
        }
        None => Err(DecodeError::Kind(header.kind)),
    }
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == 10 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// The kernel's key for the window a record opened (see `ConnRecord::window_start_ns`).
fn opened_window(kind: ConnKind, r: &ConnRecord) -> Option<OpenedWindow> {
    let dir = match kind {
        ConnKind::Connect => flow_dir::TCP_OUT,
        ConnKind::Accept => flow_dir::TCP_IN,
        _ => return None,
    };
    (r.window_start_ns != 0).then(|| OpenedWindow { start_ns: r.window_start_ns, key: FlowKey::tcp(r, dir) })
}

fn decode_conn(header: &RecordHeader, kind: RecordKind, r: &ConnRecord) -> Conn {
    let mut lossy = false;
    let owner = (header.flags & conn_flags::OWNER_UNKNOWN == 0).then(|| Owner {
        tgid: r.owner.tgid,
        pid: r.owner.pid,
        start_ns: r.owner.start_ns,
        cgroup_id: r.owner.cgroup_id,
        comm: text(until_nul(&r.owner.comm), &mut lossy),
    });
    let kind = match kind {
        RecordKind::Accept => ConnKind::Accept,
        RecordKind::Listen => ConnKind::Listen,
        RecordKind::Udp => ConnKind::Udp,
        RecordKind::Denied => ConnKind::Denied,
        _ => ConnKind::Connect,
    };
    let op = if header.flags & sockaddr_op::CONNECT != 0 {
        Some(SockOp::Connect)
    } else if header.flags & sockaddr_op::SENDMSG != 0 {
        Some(SockOp::Send)
    } else if header.flags & sockaddr_op::RECVMSG != 0 {
        Some(SockOp::Receive)
    } else {
        None
    };
    let result = match (kind, r.outcome) {
        (ConnKind::Connect, outcome::ESTABLISHED) => Some(ConnOutcome::Established),
        (ConnKind::Connect, outcome::FAILED) => Some(ConnOutcome::Failed(r.tuple.error)),
        (ConnKind::Connect, outcome::RESET) => Some(ConnOutcome::Reset),
        _ => None,
    };
    Conn {
        boot_ns: header.boot_ns,
        kind,
        outcome: result,
        owner,
        sock: r.sock,
        protocol: r.tuple.protocol,
        op,
        local: (ip(r.tuple.family, &r.tuple.saddr), r.tuple.sport),
        remote: (ip(r.tuple.family, &r.tuple.daddr), r.tuple.dport),
        window: opened_window(kind, r),
        carried: (r.window_start_ns != 0 && r.carried.absorbed != 0).then_some(r.carried),
    }
}

fn fixed<T: Copy>(bytes: &[u8], kind: &'static str) -> Result<T, DecodeError> {
    read(bytes).ok_or(DecodeError::Truncated { kind, len: bytes.len(), need: size_of::<T>() })
}

fn decode_exec(header: &RecordHeader, bytes: &[u8]) -> Result<Exec, DecodeError> {
    let fixed_len = ExecRecord::ARGV_OFFSET;
    let truncated = |need| DecodeError::Truncated { kind: "exec", len: bytes.len(), need };
    if bytes.len() < fixed_len {
        return Err(truncated(fixed_len));
    }
    // The record is sent without the unused tail of `argv`: read the fixed part by offsets.
    let at = |offset: usize| bytes.get(offset..).unwrap_or_default();
    let pid = read::<u32>(at(std::mem::offset_of!(ExecRecord, pid))).unwrap_or(0);
    let tgid = read::<u32>(at(std::mem::offset_of!(ExecRecord, tgid))).unwrap_or(0);
    let filename_len = usize::from(read::<u16>(at(std::mem::offset_of!(ExecRecord, filename_len))).unwrap_or(0));
    let argv_len = usize::from(read::<u16>(at(std::mem::offset_of!(ExecRecord, argv_len))).unwrap_or(0));
    let cgroup_id = read::<u64>(at(std::mem::offset_of!(ExecRecord, cgroup_id))).unwrap_or(0);
    let comm: [u8; COMM_LEN] = read(at(std::mem::offset_of!(ExecRecord, comm))).unwrap_or([0; COMM_LEN]);
    // The task's fields are read where they lie: the whole `TaskInfo` is 2 KiB, mostly its
    // two path buffers' unused tails, and copying it out showed in the agent's profile.
    let task_at = std::mem::offset_of!(ExecRecord, task);
    let in_task = |offset: usize| at(task_at + offset);
    // The read's type is the field's (`of_field`): a field whose width changes cannot be read
    // with the old one.
    macro_rules! task {
        ($field:ident) => {
            of_field(|t: &TaskInfo| &t.$field, read(in_task(std::mem::offset_of!(TaskInfo, $field))).unwrap_or_default())
        };
    }
    let name_at = std::mem::offset_of!(ExecRecord, filename);
    let argv_area = bytes.get(fixed_len..fixed_len + argv_len).ok_or_else(|| truncated(fixed_len + argv_len))?;
    let name_bytes = bytes.get(name_at..name_at + filename_len.min(FILENAME_CAP)).unwrap_or_default();

    let mut lossy = false;
    let mut partial = Vec::new();
    let flags = header.flags;
    if flags & exec_flags::ARGV_TRUNCATED != 0 {
        partial.push("argv_truncated");
    }
    if flags & exec_flags::ARGV_UNREADABLE != 0 {
        partial.push("argv_unreadable");
    }
    if flags & exec_flags::FILENAME_TRUNCATED != 0 {
        partial.push("filename_truncated");
    }
    let (exe, exe_complete) = walked_path_at(in_task(std::mem::offset_of!(TaskInfo, exe)), &mut lossy);
    if !exe_complete {
        partial.push("exe_truncated");
    }
    let (cwd, cwd_complete) = walked_path_at(in_task(std::mem::offset_of!(TaskInfo, cwd)), &mut lossy);
    if !cwd_complete {
        partial.push("cwd_truncated");
    }
    let exec = Exec {
        boot_ns: header.boot_ns,
        pid,
        tgid,
        cgroup_id,
        comm: text(until_nul(&comm), &mut lossy),
        filename: text(until_nul(name_bytes), &mut lossy),
        argv: split_argv(argv_area, &mut lossy),
        exe,
        cwd,
        start_ns: task!(start_ns),
        parent_tgid: task!(parent_tgid),
        parent_start_ns: task!(parent_start_ns),
        vpid: task!(vpid),
        uid: task!(uid),
        gid: task!(gid),
        euid: task!(euid),
        egid: task!(egid),
        loginuid: Some(task!(loginuid)).filter(|&id| id != u32::MAX),
        sessionid: Some(task!(sessionid)).filter(|&id| id != u32::MAX),
        cap_effective: task!(cap_effective),
        cap_permitted: task!(cap_permitted),
        ns: [task!(ns_pid), task!(ns_mnt), task!(ns_net), task!(ns_uts), task!(ns_ipc), task!(ns_user), task!(ns_cgroup)],
        tty: text(until_nul(in_task(std::mem::offset_of!(TaskInfo, tty_name)).get(..TTY_NAME_LEN).unwrap_or_default()), &mut lossy),
        tty_nr: task!(tty_nr),
        partial,
    };
    let mut exec = exec;
    if lossy {
        exec.partial.push("lossy_utf8");
    }
    Ok(exec)
}

/// `value`, typed as the field `field` points at.
fn of_field<S, T>(_field: fn(&S) -> &T, value: T) -> T {
    value
}

/// A kernel path walk as it lies in a record (`bytes` starts at its `PathBuf`): read in place,
/// as only `len` bytes of its buffer are used.
fn walked_path_at(bytes: &[u8], lossy: &mut bool) -> (String, bool) {
    let field = |offset: usize| read::<u16>(bytes.get(offset..).unwrap_or_default()).unwrap_or(0);
    let (len, flags) = (field(std::mem::offset_of!(PathBuf, len)), field(std::mem::offset_of!(PathBuf, flags)));
    let buf = bytes.get(std::mem::offset_of!(PathBuf, buf)..).unwrap_or_default();
    walked_path(len, flags, buf.get(..PATH_CAP).unwrap_or(buf), lossy)
}

/// Joins a kernel path walk (components leaf first, `len` bytes of `buf` used) into a path.
/// Returns whether it is whole; a truncated walk is shown with a leading `…/`, so it cannot be
/// mistaken for a full path.
fn walked_path(len: u16, flags: u16, buf: &[u8], lossy: &mut bool) -> (String, bool) {
    let area = buf.get(..usize::from(len)).unwrap_or(buf);
    let body = area.strip_suffix(&[0]).unwrap_or(area);
    let complete = flags & path_flags::TRUNCATED == 0 && flags & path_flags::ABSOLUTE != 0;
    // One string, built root first: this runs twice per exec.
    let mut out = String::with_capacity(body.len() + 4);
    out.push_str(if complete { "/" } else { "…/" });
    if !body.is_empty() {
        for (i, c) in body.rsplit(|&b| b == 0).enumerate() {
            if i > 0 {
                out.push('/');
            }
            push_text(&mut out, c, lossy);
        }
    }
    (out, complete)
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.iter().position(|&b| b == 0).map_or(bytes, |n| &bytes[..n])
}

/// Appends `bytes` as text, invalid UTF-8 replaced (and `lossy` set).
fn push_text(out: &mut String, bytes: &[u8], lossy: &mut bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => out.push_str(s),
        Err(_) => {
            *lossy = true;
            out.push_str(&String::from_utf8_lossy(bytes));
        }
    }
}

fn text(bytes: &[u8], lossy: &mut bool) -> String {
    let mut out = String::new();
    push_text(&mut out, bytes, lossy);
    out
}

/// Splits the kernel's argument area (each argument NUL-terminated) into arguments. Empty
/// arguments are kept (`sh -c ''` has one); a final argument cut off by truncation has no NUL.
pub fn split_argv(area: &[u8], lossy: &mut bool) -> Vec<String> {
    if area.is_empty() {
        return Vec::new();
    }
    let body = area.strip_suffix(&[0]).unwrap_or(area);
    body.split(|&b| b == 0).map(|a| text(a, lossy)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_common::ARGV_CAP;

    fn path(components_leaf_first: &[&[u8]], flags: u16) -> PathBuf {
        let mut p = PathBuf { len: 0, depth: 0, flags, _pad: 0, buf: [0; PATH_CAP] };
        let mut off = 0;
        for c in components_leaf_first {
            p.buf[off..off + c.len()].copy_from_slice(c);
            off += c.len() + 1;
            p.depth += 1;
        }
        p.len = off as u16;
        p
    }

    fn zero_task() -> TaskInfo {
        // SAFETY: test-only; TaskInfo is plain old data; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }

    fn record(argv: &[u8], name: &[u8], flags: u16) -> Vec<u8> {
        // SAFETY: test-only; ExecRecord is plain old data; all-zero is a valid value.
        let mut rec: Box<ExecRecord> = Box::new(unsafe { std::mem::zeroed() });
        rec.header = RecordHeader { abi_version: ABI_VERSION, kind: RecordKind::Exec as u16, flags, size: 0, _pad: 0, boot_ns: 77 };
        rec.pid = 10;
        rec.tgid = 10;
        rec.filename_len = name.len() as u16;
        rec.argv_len = argv.len() as u16;
        rec.cgroup_id = 4242;
        rec.comm[..4].copy_from_slice(b"true");
        let mut task = zero_task();
        // Every field its own value: a field read at another's offset shows.
        task.start_ns = 1_000_000_001;
        task.parent_start_ns = 1_000_000_002;
        task.vpid = 11;
        task.parent_tgid = 9;
        task.uid = 1000;
        task.euid = 0;
        task.gid = 1001;
        task.egid = 1002;
        task.loginuid = u32::MAX;
        task.sessionid = 3;
        task.cap_effective = 0x1fffeffffff;
        task.cap_permitted = 0x3fffeffffff;
        task.ns_pid = 4026531836;
        task.ns_mnt = 4026531841;
        task.ns_net = 4026531842;
        task.ns_uts = 4026531843;
        task.ns_ipc = 4026531844;
        task.ns_user = 4026531845;
        task.ns_cgroup = 4026531846;
        task.tty_name[..4].copy_from_slice(b"pts3");
        task.tty_nr = 34819;
        task.exe = path(&[b"true", b"bin", b"usr"], path_flags::ABSOLUTE);
        task.cwd = path(&[b"tmp"], path_flags::ABSOLUTE);
        rec.task = task;
        rec.filename[..name.len()].copy_from_slice(name);
        rec.argv[..argv.len()].copy_from_slice(argv);
        let size = ExecRecord::ARGV_OFFSET + argv.len();
        rec.header.size = size as u32;
        // SAFETY: test-only; viewing a repr(C) value as bytes.
        let all = unsafe { std::slice::from_raw_parts((&*rec as *const ExecRecord).cast::<u8>(), size_of::<ExecRecord>()) };
        all[..size].to_vec()
    }

    fn exec(r: Record) -> Exec {
        match r {
            Record::Exec(e) => *e,
            other => panic!("not an exec: {other:?}"),
        }
    }

    #[test]
    fn exec_record_decodes_exactly() {
        let d = exec(decode(&record(b"/bin/true\0-x\0\0last\0", b"/bin/true", 0)).unwrap());
        assert_eq!(d.boot_ns, 77);
        assert_eq!(d.pid, 10);
        assert_eq!((d.start_ns, d.parent_start_ns, d.vpid), (1_000_000_001, 1_000_000_002, 11));
        assert_eq!(d.parent_tgid, 9);
        assert_eq!((d.uid, d.euid, d.gid, d.egid), (1000, 0, 1001, 1002));
        assert_eq!(d.comm, "true");
        assert_eq!(d.filename, "/bin/true");
        assert_eq!(d.exe, "/usr/bin/true");
        assert_eq!(d.cwd, "/tmp");
        assert_eq!(d.argv, vec!["/bin/true", "-x", "", "last"]);
        assert_eq!(d.cgroup_id, 4242);
        assert_eq!(d.loginuid, None);
        assert_eq!(d.sessionid, Some(3));
        assert_eq!((d.cap_effective, d.cap_permitted), (0x1fffeffffff, 0x3fffeffffff));
        assert_eq!(d.ns, [4026531836, 4026531841, 4026531842, 4026531843, 4026531844, 4026531845, 4026531846]);
        assert_eq!((d.tty.as_str(), d.tty_nr), ("pts3", 34819));
        assert!(d.partial.is_empty());
    }

    #[test]
    fn flags_and_invalid_utf8_are_reported() {
        let d = exec(decode(&record(b"a\xff\nb\0cut", b"x", exec_flags::ARGV_TRUNCATED | exec_flags::FILENAME_TRUNCATED)).unwrap());
        assert_eq!(d.argv, vec!["a\u{fffd}\nb", "cut"]);
        assert_eq!(d.partial, vec!["argv_truncated", "filename_truncated", "lossy_utf8"]);
    }

    #[test]
    fn walked_paths() {
        let mut lossy = false;
        let walked_path = |p: &PathBuf, lossy: &mut bool| walked_path(p.len, p.flags, &p.buf, lossy);
        assert_eq!(walked_path(&path(&[], path_flags::ABSOLUTE), &mut lossy), ("/".to_owned(), true));
        assert_eq!(walked_path(&path(&[b"c", b"b", b"a"], path_flags::ABSOLUTE), &mut lossy), ("/a/b/c".to_owned(), true));
        assert_eq!(walked_path(&path(&[b"c", b"b"], path_flags::TRUNCATED), &mut lossy), ("…/b/c".to_owned(), false));
        assert_eq!(walked_path(&path(&[b"new\nline"], path_flags::ABSOLUTE), &mut lossy), ("/new\nline".to_owned(), true));
        assert!(!lossy);
        // A corrupt length never reads past the buffer.
        let mut p = path(&[b"x"], path_flags::ABSOLUTE);
        p.len = u16::MAX;
        let _ = walked_path(&p, &mut lossy);
    }

    /// A walk read in place from a record's bytes: its used length only, never past its
    /// buffer, and whatever part of it the bytes hold.
    #[test]
    fn walked_paths_in_place() {
        let bytes_of = |p: &PathBuf| {
            // SAFETY: test-only; viewing a repr(C) value as bytes.
            unsafe { std::slice::from_raw_parts((p as *const PathBuf).cast::<u8>(), size_of::<PathBuf>()) }.to_vec()
        };
        let mut lossy = false;
        let mut p = path(&[b"c", b"b", b"a"], path_flags::ABSOLUTE);
        p.buf[10..14].copy_from_slice(b"junk");
        assert_eq!(walked_path_at(&bytes_of(&p), &mut lossy), ("/a/b/c".to_owned(), true));
        // A length past the buffer takes the buffer; the bytes after it are not read.
        p.len = u16::MAX;
        let mut bytes = bytes_of(&p);
        bytes.extend_from_slice(b"\0beyond");
        let (walked, _) = walked_path_at(&bytes, &mut lossy);
        assert!(!walked.contains("beyond"), "{walked}");
        // Cut short: no panic.
        for n in [0, 3, 7, 9, 100] {
            let _ = walked_path_at(&bytes[..n], &mut lossy);
        }
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let mut r = record(b"a\0", b"a", 0);
        r[0] = 99;
        assert_eq!(decode(&r), Err(DecodeError::Abi { found: 99, expected: ABI_VERSION }));
        let mut r = record(b"a\0", b"a", 0);
        r[4] = 200;
        assert_eq!(decode(&r), Err(DecodeError::Kind(200)));
        let r = record(b"abcdef\0", b"a", 0);
        assert!(matches!(decode(&r[..r.len() - 3]), Err(DecodeError::Truncated { .. })));
        assert!(matches!(decode(&r[..40]), Err(DecodeError::Truncated { .. })));
        // Every prefix of a valid record decodes or errors; none panics.
        for n in 0..r.len() {
            let _ = decode(&r[..n]);
        }
        // Claimed lengths beyond the record are errors.
        let mut r = record(b"a\0", b"a", 0);
        let at = std::mem::offset_of!(ExecRecord, argv_len);
        r[at..at + 2].copy_from_slice(&(ARGV_CAP as u16).to_le_bytes());
        assert!(matches!(decode(&r), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn argv_edge_cases() {
        let mut lossy = false;
        assert!(split_argv(b"", &mut lossy).is_empty());
        assert_eq!(split_argv(b"\0", &mut lossy), vec![""]);
        assert_eq!(split_argv(b"sh\0-c\0\0", &mut lossy), vec!["sh", "-c", ""]);
        assert!(!lossy);
    }

    #[test]
    fn cgroup_records_decode_and_short_ones_are_errors() {
        let path = b"/kubepods/besteffort/podu1/abc";
        let mut rec = CgroupRecord {
            header: RecordHeader {
                abi_version: ABI_VERSION,
                kind: RecordKind::CgroupMkdir as u16,
                flags: cgroup_flags::PATH_TRUNCATED,
                size: size_of::<CgroupRecord>() as u32,
                _pad: 0,
                boot_ns: 99,
            },
            id: 4242,
            level: 4,
            path_len: path.len() as u16,
            _pad: 0,
            path: [0; CGROUP_PATH_CAP],
        };
        rec.path[..path.len()].copy_from_slice(path);
        // SAFETY: test-only; viewing a repr(C) value as bytes.
        let bytes = unsafe { std::slice::from_raw_parts((&rec as *const CgroupRecord).cast::<u8>(), size_of::<CgroupRecord>()) };
        let want = Cgroup {
            boot_ns: 99,
            created: true,
            id: 4242,
            level: 4,
            path: "/kubepods/besteffort/podu1/abc".into(),
            truncated: true,
        };
        assert_eq!(decode(bytes), Ok(Record::Cgroup(want)));
        // A path length past the buffer is clamped, not trusted.
        rec.path_len = u16::MAX;
        rec.header.kind = RecordKind::CgroupRmdir as u16;
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts((&rec as *const CgroupRecord).cast::<u8>(), size_of::<CgroupRecord>()) };
        match decode(bytes) {
            Ok(Record::Cgroup(c)) => assert_eq!((c.created, c.path.as_str()), (false, "/kubepods/besteffort/podu1/abc")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(&bytes[..100]), Err(DecodeError::Truncated { kind: "cgroup", .. })));
    }
}
