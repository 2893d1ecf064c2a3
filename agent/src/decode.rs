//! Ring-buffer records to typed events. Everything here treats the bytes as untrusted: a
//! short, oversized or foreign record is an error value, never a panic.

use peregrine_common::{ABI_VERSION, COMM_LEN, ExecRecord, FILENAME_CAP, RecordHeader, RecordKind, exec_flags};
use peregrine_proto::ProcessExec;

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

#[derive(Debug, PartialEq)]
pub struct Decoded {
    pub boot_ns: u64,
    pub exec: ProcessExec,
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked above, `T` is a plain-old-data `#[repr(C)]` record type
    // from peregrine-common (any bit pattern is valid), and read_unaligned needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let header: RecordHeader = read(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    if header.abi_version != ABI_VERSION {
        return Err(DecodeError::Abi { found: header.abi_version, expected: ABI_VERSION });
    }
    match RecordKind::from_u16(header.kind) {
        Some(RecordKind::Exec) => decode_exec(&header, bytes),
        None => Err(DecodeError::Kind(header.kind)),
    }
}

fn decode_exec(header: &RecordHeader, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let fixed = ExecRecord::ARGV_OFFSET;
    let truncated = |need| DecodeError::Truncated { kind: "exec", len: bytes.len(), need };
    if bytes.len() < fixed {
        return Err(truncated(fixed));
    }
    // The record is sent without the unused tail of `argv`; read the fixed part field by field.
    let field = |offset: usize| -> u32 { read::<u32>(&bytes[offset..]).unwrap_or(0) };
    let pid = field(std::mem::offset_of!(ExecRecord, pid));
    let tgid = field(std::mem::offset_of!(ExecRecord, tgid));
    let parent_tgid = field(std::mem::offset_of!(ExecRecord, parent_tgid));
    let uid = field(std::mem::offset_of!(ExecRecord, uid));
    let gid = field(std::mem::offset_of!(ExecRecord, gid));
    let filename_len = usize::from(read::<u16>(&bytes[std::mem::offset_of!(ExecRecord, filename_len)..]).unwrap_or(0));
    let argv_len = usize::from(read::<u16>(&bytes[std::mem::offset_of!(ExecRecord, argv_len)..]).unwrap_or(0));
    let cgroup_id = read::<u64>(&bytes[std::mem::offset_of!(ExecRecord, cgroup_id)..]).unwrap_or(0);
    let comm_at = std::mem::offset_of!(ExecRecord, comm);
    let name_at = std::mem::offset_of!(ExecRecord, filename);
    if bytes.len() < fixed + argv_len {
        return Err(truncated(fixed + argv_len));
    }
    let mut lossy = false;
    let comm = text(until_nul(&bytes[comm_at..comm_at + COMM_LEN]), &mut lossy);
    let filename = text(until_nul(&bytes[name_at..name_at + filename_len.min(FILENAME_CAP)]), &mut lossy);
    let argv = split_argv(&bytes[fixed..fixed + argv_len], &mut lossy);
    let flags = header.flags;
    Ok(Decoded {
        boot_ns: header.boot_ns,
        exec: ProcessExec {
            pid,
            tgid,
            parent_tgid,
            uid,
            gid,
            comm,
            filename,
            argv,
            cgroup_id,
            argv_truncated: flags & exec_flags::ARGV_TRUNCATED != 0,
            filename_truncated: flags & exec_flags::FILENAME_TRUNCATED != 0,
            argv_unreadable: flags & exec_flags::ARGV_UNREADABLE != 0,
            lossy_utf8: lossy,
        },
    })
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.iter().position(|&b| b == 0).map_or(bytes, |n| &bytes[..n])
}

fn text(bytes: &[u8], lossy: &mut bool) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            *lossy = true;
            String::from_utf8_lossy(bytes).into_owned()
        }
    }
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

    fn record(argv: &[u8], name: &[u8], flags: u16) -> Vec<u8> {
        let mut rec = ExecRecord {
            header: RecordHeader { abi_version: ABI_VERSION, kind: RecordKind::Exec as u16, flags, size: 0, _pad: 0, boot_ns: 77 },
            pid: 10,
            tgid: 10,
            parent_tgid: 9,
            uid: 1000,
            gid: 1001,
            filename_len: name.len() as u16,
            argv_len: argv.len() as u16,
            cgroup_id: 4242,
            comm: [0; 16],
            filename: [0; FILENAME_CAP],
            argv: [0; peregrine_common::ARGV_CAP],
        };
        rec.comm[..4].copy_from_slice(b"true");
        rec.filename[..name.len()].copy_from_slice(name);
        rec.argv[..argv.len()].copy_from_slice(argv);
        let size = ExecRecord::ARGV_OFFSET + argv.len();
        rec.header.size = size as u32;
        // SAFETY (test): viewing a repr(C) value as bytes.
        let all = unsafe { std::slice::from_raw_parts((&rec as *const ExecRecord).cast::<u8>(), size_of::<ExecRecord>()) };
        all[..size].to_vec()
    }

    #[test]
    fn exec_record_decodes_exactly() {
        let d = decode(&record(b"/bin/true\0-x\0\0last\0", b"/bin/true", 0)).unwrap();
        assert_eq!(d.boot_ns, 77);
        assert_eq!(d.exec.pid, 10);
        assert_eq!(d.exec.parent_tgid, 9);
        assert_eq!((d.exec.uid, d.exec.gid), (1000, 1001));
        assert_eq!(d.exec.comm, "true");
        assert_eq!(d.exec.filename, "/bin/true");
        assert_eq!(d.exec.argv, vec!["/bin/true", "-x", "", "last"]);
        assert_eq!(d.exec.cgroup_id, 4242);
        assert!(!d.exec.argv_truncated && !d.exec.lossy_utf8);
    }

    #[test]
    fn flags_and_invalid_utf8_are_reported() {
        let d = decode(&record(b"a\xff\nb\0cut", b"x", exec_flags::ARGV_TRUNCATED | exec_flags::FILENAME_TRUNCATED)).unwrap();
        assert_eq!(d.exec.argv, vec!["a\u{fffd}\nb", "cut"]);
        assert!(d.exec.argv_truncated && d.exec.filename_truncated && d.exec.lossy_utf8);
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
    }

    #[test]
    fn argv_edge_cases() {
        let mut lossy = false;
        assert!(split_argv(b"", &mut lossy).is_empty());
        assert_eq!(split_argv(b"\0", &mut lossy), vec![""]);
        assert_eq!(split_argv(b"sh\0-c\0\0", &mut lossy), vec!["sh", "-c", ""]);
        assert!(!lossy);
    }
}
