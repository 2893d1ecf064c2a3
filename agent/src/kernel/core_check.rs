//! CO-RE check: every relocation the kernel object carries, resolved against one kernel's BTF
//! by aya's own relocator (the code that relocates at load), listed with the program it is in,
//! its kind and its type and field path from the object's BTF.
//!
//! A relocation aya cannot resolve is poisoned (the instruction becomes a call to an invalid
//! helper, rejected by the verifier only if that path runs); this finds those before the
//! kernel does. An existence check answered 0 (`bpf_core_field_exists` of a field the kernel
//! lacks) is not a failure: it is the documented fallback, and listed as `missing`; accesses
//! to that field behind the check are listed as `guarded`. A type the kernel lacks entirely
//! makes aya's relocation fail outright, which the check reports as its error.
//!
//! `peregrine-agent --check-core <object> [--btf <file>]` prints the list as JSON lines;
//! `agent/tests/kernel_vm.rs` runs it inside the 6.1 VM and `agent/tests/failures.rs` on the
//! host (docs/KERNELS.md).

use std::collections::BTreeMap;

use aya::Btf;
use object::{Object, ObjectSection};

/// aya's marker for an instruction whose relocation did not resolve.
const POISON_IMM: i32 = 0x0BAD_2310;
/// BPF_JMP | BPF_CALL.
const CALL: u8 = 0x85;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CoreRelocation {
    /// The program (or out-of-line function) the instruction is in.
    pub program: String,
    pub kind: &'static str,
    /// `struct task_struct.real_parent.tgid`, `struct upid` (type relocations), ...
    pub spec: String,
    /// `resolved`; `missing` (an existence check answered no: the fallback is taken);
    /// `guarded` (unresolved, but behind an existence check that answered no, so never run);
    /// `unresolved` (the verifier would refuse the program if the access is reached).
    pub outcome: &'static str,
}

/// Resolves the object's relocations against `target` and lists them.
pub fn check(object_bytes: &[u8], target: &Btf) -> Result<Vec<CoreRelocation>, String> {
    let elf = object::File::parse(object_bytes).map_err(|e| format!("not an ELF object: {e}"))?;
    let section = |name: &str| -> Result<&[u8], String> {
        elf.section_by_name(name).ok_or_else(|| format!("the object has no {name} section"))?.data().map_err(|e| format!("{name}: {e}"))
    };
    let local = LocalBtf::parse(section(".BTF")?)?;
    let relos = core_relocations(section(".BTF.ext")?, &local)?;
    let mut obj = aya_obj::Object::parse(object_bytes).map_err(|e| format!("aya cannot parse the object: {e}"))?;
    obj.relocate_btf(target).map_err(|e| {
        let mut message = format!("relocation failed outright: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        message
    })?;
    let mut out = Vec::with_capacity(relos.len());
    for r in relos {
        let index = elf.section_by_name(&r.section).map(|s| s.index().0).ok_or_else(|| format!("no section {}", r.section))?;
        let (program, insn) = obj
            .functions
            .values()
            .find_map(|f| {
                let end = f.section_offset + f.instructions.len() * 8;
                (f.section_index.0 == index && (f.section_offset..end).contains(&r.insn_off))
                    .then(|| (short_name(&f.name), f.instructions.get((r.insn_off - f.section_offset) / 8).copied()))
            })
            .ok_or_else(|| format!("no function holds {}+{}", r.section, r.insn_off))?;
        let insn = insn.ok_or_else(|| format!("no instruction at {}+{}", r.section, r.insn_off))?;
        let outcome = if insn.code == CALL && insn.imm == POISON_IMM {
            "unresolved"
        } else if EXISTENCE.contains(&r.kind) && insn.imm == 0 {
            "missing"
        } else {
            "resolved"
        };
        out.push(CoreRelocation { program, kind: kind_name(r.kind), spec: r.spec, outcome });
    }
    // An access to a field whose existence check answered no is only reached when it exists:
    // the C getters guard optional fields (`bpf_core_field_exists`) and take their fallback.
    let absent: Vec<String> = out.iter().filter(|r| r.outcome == "missing").map(|r| r.spec.clone()).collect();
    for r in &mut out {
        if r.outcome == "unresolved"
            && absent.iter().any(|a| r.spec == *a || r.spec.starts_with(&format!("{a}.")) || r.spec.starts_with(&format!("{a}[")))
        {
            r.outcome = "guarded";
        }
    }
    Ok(out)
}

/// field_exists, type_exists, enumval_exists, type_matches.
const EXISTENCE: &[u32] = &[2, 8, 10, 12];

fn kind_name(kind: u32) -> &'static str {
    match kind {
        0 => "field_byte_offset",
        1 => "field_byte_size",
        2 => "field_exists",
        3 => "field_signed",
        4 => "field_lshift_u64",
        5 => "field_rshift_u64",
        6 => "type_id_local",
        7 => "type_id_target",
        8 => "type_exists",
        9 => "type_size",
        10 => "enumval_exists",
        11 => "enumval_value",
        12 => "type_matches",
        _ => "unknown",
    }
}

/// The last identifier of a Rust v0 mangled name (`_RNv...13cgroup_record` → `cgroup_record`).
fn short_name(name: &str) -> String {
    if !name.starts_with("_R") {
        return name.to_owned();
    }
    let bytes = name.as_bytes();
    for start in 0..bytes.len() {
        let digits: String = name[start..].chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() || (start > 0 && bytes[start - 1].is_ascii_digit()) {
            continue;
        }
        if let Ok(n) = digits.parse::<usize>()
            && start + digits.len() + n == name.len()
        {
            return name[start + digits.len()..].to_owned();
        }
    }
    name.to_owned()
}

struct RawRelocation {
    section: String,
    insn_off: usize,
    kind: u32,
    spec: String,
}

pub(super) fn u32_at(data: &[u8], off: usize) -> Result<u32, String> {
    data.get(off..off + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| format!("truncated BTF data at offset {off}"))
}

pub(super) fn usize_at(data: &[u8], off: usize) -> Result<usize, String> {
    usize::try_from(u32_at(data, off)?).map_err(|e| e.to_string())
}

/// The CO-RE records of `.BTF.ext` (kernel's `struct bpf_core_relo`), with their specs.
fn core_relocations(ext: &[u8], btf: &LocalBtf<'_>) -> Result<Vec<RawRelocation>, String> {
    let hdr_len = usize_at(ext, 4)?;
    if hdr_len < 32 {
        return Ok(Vec::new());
    }
    let (off, len) = (usize_at(ext, 24)?, usize_at(ext, 28)?);
    let data = ext.get(hdr_len + off..hdr_len + off + len).ok_or("the CO-RE section lies outside .BTF.ext")?;
    let rec_size = usize_at(data, 0)?;
    if rec_size < 16 {
        return Err(format!("CO-RE record size {rec_size} is too small"));
    }
    let mut out = Vec::new();
    let mut pos = 4;
    while pos + 8 <= data.len() {
        let section = btf.string(u32_at(data, pos)?)?.to_owned();
        let count = usize_at(data, pos + 4)?;
        pos += 8;
        for _ in 0..count {
            let insn_off = usize_at(data, pos)?;
            let type_id = u32_at(data, pos + 4)?;
            let access = btf.string(u32_at(data, pos + 8)?)?;
            let kind = u32_at(data, pos + 12)?;
            out.push(RawRelocation { section: section.clone(), insn_off, kind, spec: btf.spec(type_id, access, kind) });
            pos += rec_size;
        }
    }
    Ok(out)
}

/// Just enough of the object's own BTF to name types and members.
struct LocalBtf<'a> {
    strings: &'a [u8],
    /// By type id (0 = void).
    types: Vec<LocalType>,
}

#[derive(Default, Clone)]
struct LocalType {
    kind: u32,
    name_off: u32,
    /// The referenced type: pointee, typedef/modifier target, array element.
    refers: u32,
    members: Vec<(u32, u32)>,
    enumerators: Vec<u32>,
}

const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ARRAY: u32 = 3;

impl<'a> LocalBtf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, String> {
        let hdr_len = usize_at(data, 4)?;
        let (type_off, type_len) = (usize_at(data, 8)?, usize_at(data, 12)?);
        let (str_off, str_len) = (usize_at(data, 16)?, usize_at(data, 20)?);
        let types_data = data.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or(".BTF types outside the section")?;
        let strings = data.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or(".BTF strings outside the section")?;
        let mut types = vec![LocalType::default()];
        let mut pos = 0;
        while pos + 12 <= types_data.len() {
            let name_off = u32_at(types_data, pos)?;
            let info = u32_at(types_data, pos + 4)?;
            let size_or_type = u32_at(types_data, pos + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            pos += 12;
            let mut t = LocalType { kind, name_off, ..LocalType::default() };
            match kind {
                1 | 14 | 17 => pos += 4,
                2 | 8..=11 | 18 => t.refers = size_or_type,
                ARRAY => {
                    t.refers = u32_at(types_data, pos)?;
                    pos += 12;
                }
                STRUCT | UNION => {
                    for i in 0..vlen {
                        let at = pos + i * 12;
                        t.members.push((u32_at(types_data, at)?, u32_at(types_data, at + 4)?));
                    }
                    pos += vlen * 12;
                }
                6 => {
                    for i in 0..vlen {
                        t.enumerators.push(u32_at(types_data, pos + i * 8)?);
                    }
                    pos += vlen * 8;
                }
                19 => {
                    for i in 0..vlen {
                        t.enumerators.push(u32_at(types_data, pos + i * 12)?);
                    }
                    pos += vlen * 12;
                }
                13 => pos += vlen * 8,
                15 => pos += vlen * 12,
                _ => {}
            }
            types.push(t);
        }
        Ok(Self { strings, types })
    }

    fn string(&self, off: u32) -> Result<&'a str, String> {
        let start = usize::try_from(off).map_err(|e| e.to_string())?;
        let rest = self.strings.get(start..).ok_or_else(|| format!("BTF string offset {off} out of range"))?;
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).map_err(|e| e.to_string())
    }

    fn ty(&self, id: u32) -> LocalType {
        usize::try_from(id).ok().and_then(|i| self.types.get(i)).cloned().unwrap_or_default()
    }

    /// Skips typedefs and modifiers (const, volatile, restrict, type tags).
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            let t = self.ty(id);
            if matches!(t.kind, 8..=11 | 18) {
                id = t.refers;
            } else {
                break;
            }
        }
        id
    }

    fn type_name(&self, id: u32) -> String {
        let t = self.ty(self.resolve(id));
        let name = self.string(t.name_off).unwrap_or_default();
        let prefix = match t.kind {
            STRUCT => "struct ",
            UNION => "union ",
            6 | 19 => "enum ",
            _ => "",
        };
        if name.is_empty() { format!("{prefix}(anonymous)") } else { format!("{prefix}{name}") }
    }

    /// `struct task_struct.real_parent.tgid` from the type and the access string `0:57:3`.
    fn spec(&self, type_id: u32, access: &str, kind: u32) -> String {
        let mut out = self.type_name(type_id);
        let idx: Vec<usize> = access.split(':').filter_map(|s| s.parse().ok()).collect();
        match kind {
            10 | 11 => {
                let t = self.ty(self.resolve(type_id));
                if let Some(name) = idx.first().and_then(|i| t.enumerators.get(*i)).and_then(|o| self.string(*o).ok()) {
                    out.push_str("::");
                    out.push_str(name);
                }
            }
            0..=5 => {
                let mut cur = self.resolve(type_id);
                for (n, i) in idx.iter().enumerate() {
                    let t = self.ty(cur);
                    if n == 0 {
                        if *i != 0 {
                            out.push_str(&format!("[{i}]"));
                        }
                        continue;
                    }
                    match t.kind {
                        STRUCT | UNION => {
                            let Some((name_off, member_type)) = t.members.get(*i).copied() else { break };
                            let name = self.string(name_off).unwrap_or_default();
                            out.push('.');
                            out.push_str(if name.is_empty() { "(anonymous)" } else { name });
                            cur = self.resolve(member_type);
                        }
                        ARRAY => {
                            out.push_str(&format!("[{i}]"));
                            cur = self.resolve(t.refers);
                        }
                        _ => break,
                    }
                }
            }
            _ => {}
        }
        out
    }
}

/// The relocations per outcome, for the summary line.
pub fn summary(list: &[CoreRelocation]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for r in list {
        *m.entry(r.outcome).or_default() += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mangled_names_are_shortened() {
        assert_eq!(short_name("_RNvCs8il8fXGy4TX_14peregrine_ebpf13cgroup_record"), "cgroup_record");
        assert_eq!(short_name("_RNvCs8il8fXGy4TX_14peregrine_ebpf9on_accept"), "on_accept");
        assert_eq!(short_name("sched_process_exec"), "sched_process_exec");
    }

    #[test]
    fn garbage_is_refused_with_the_reason() {
        let btf = Btf::new();
        assert!(check(b"not an elf", &btf).unwrap_err().starts_with("not an ELF object"));
    }
}
