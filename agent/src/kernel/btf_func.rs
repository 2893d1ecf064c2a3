//! A kernel function's parameter count from the kernel's BTF: a fexit program finds the return
//! value after the arguments, and their number changes between kernels (`inet_csk_accept`: 4
//! until 6.9, 2 since). aya does not expose BTF types, so this walks the type section once,
//! keeping nothing but what it looks for.

use super::core_check::{u32_at, usize_at};

const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;

/// The number of parameters of the function `name` in the BTF blob `data` (a split module's
/// BTF is not searched: these are vmlinux functions); `None` if the BTF has no such function.
pub fn param_count(data: &[u8], name: &str) -> Result<Option<usize>, String> {
    if data.get(..2) != Some(&[0x9f, 0xeb]) {
        return Err("not little-endian BTF (magic 0xeb9f)".into());
    }
    let hdr_len = usize_at(data, 4)?;
    let (type_off, type_len) = (usize_at(data, 8)?, usize_at(data, 12)?);
    let (str_off, str_len) = (usize_at(data, 16)?, usize_at(data, 20)?);
    let types = data.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or("BTF types outside the file")?;
    let strings = data.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or("BTF strings outside the file")?;
    let wanted = name.as_bytes();
    let is_name = |off: u32| -> bool {
        let start = off as usize;
        strings.get(start..start + wanted.len()) == Some(wanted) && strings.get(start + wanted.len()) == Some(&0)
    };
    // Types are numbered from 1 in file order; a FUNC names its FUNC_PROTO by id, which may
    // come before or after it.
    let mut protos = Vec::new();
    let mut proto_of_func = None;
    let (mut pos, mut id) = (0usize, 1u32);
    while pos + 12 <= types.len() {
        let name_off = u32_at(types, pos)?;
        let info = u32_at(types, pos + 4)?;
        let size_or_type = u32_at(types, pos + 8)?;
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        pos += 12;
        if kind == FUNC && proto_of_func.is_none() && is_name(name_off) {
            proto_of_func = Some(size_or_type);
        }
        if kind == FUNC_PROTO {
            protos.push((id, vlen));
        }
        pos += match kind {
            // INT, VAR, DECL_TAG: one u32.
            1 | 14 | 17 => 4,
            // ARRAY: element type, index type, count.
            3 => 12,
            // STRUCT, UNION, DATASEC, ENUM64: 12 bytes per member.
            4 | 5 | 15 | 19 => vlen * 12,
            // ENUM, FUNC_PROTO: 8 bytes per entry.
            6 | FUNC_PROTO => vlen * 8,
            // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG: nothing more.
            2 | 7..=12 | 16 | 18 => 0,
            other => return Err(format!("BTF type {id} has unknown kind {other}")),
        };
        id += 1;
    }
    let Some(proto) = proto_of_func else { return Ok(None) };
    match protos.binary_search_by_key(&proto, |(id, _)| *id) {
        Ok(i) => Ok(Some(protos[i].1)),
        Err(_) => Err(format!("BTF function {name} refers to type {proto}, which is not a function prototype")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A BTF blob: header, the given types, the given strings.
    fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for w in [24u32, 0, type_bytes.len() as u32, type_bytes.len() as u32, strings.len() as u32] {
            out.extend(w.to_le_bytes());
        }
        out.extend(type_bytes);
        out.extend(strings);
        out
    }

    const fn info(kind: u32, vlen: u32) -> u32 {
        (kind << 24) | vlen
    }

    #[test]
    fn finds_the_parameters_of_a_function_whose_prototype_comes_first_or_later() {
        let strings = b"\0int\0inet_csk_accept\0sk\0arg\0other\0";
        let types = [
            // 1: int
            1, info(1, 0), 4, 0x20,
            // 2: FUNC_PROTO (int sk, int arg) -> int
            0, info(FUNC_PROTO, 2), 1, 21, 1, 24, 1,
            // 3: FUNC inet_csk_accept -> 2
            5, info(FUNC, 0), 2,
            // 4: FUNC other -> 6 (a prototype after it)
            28, info(FUNC, 0), 6,
            // 5: struct with one member
            0, info(4, 1), 4, 21, 1, 0,
            // 6: FUNC_PROTO (int sk, int arg, int arg, int arg) -> int
            0, info(FUNC_PROTO, 4), 1, 21, 1, 24, 1, 24, 1, 24, 1,
        ];
        let data = blob(&types, strings);
        assert_eq!(param_count(&data, "inet_csk_accept").unwrap(), Some(2));
        assert_eq!(param_count(&data, "other").unwrap(), Some(4));
        // A prefix of a name is not the name.
        assert_eq!(param_count(&data, "inet_csk").unwrap(), None);
        assert_eq!(param_count(&data, "missing").unwrap(), None);
    }

    #[test]
    fn bad_btf_is_an_error_not_a_panic() {
        assert!(param_count(b"", "f").unwrap_err().contains("magic"));
        let mut data = blob(&[0, info(30, 0), 0], b"\0");
        assert!(param_count(&data, "f").unwrap_err().contains("unknown kind 30"));
        data.truncate(30);
        assert!(param_count(&data, "f").unwrap_err().contains("outside"));
    }

    #[test]
    fn this_kernels_inet_csk_accept_has_two_or_four_parameters() {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
        let n = param_count(&data, "inet_csk_accept").unwrap();
        assert!(matches!(n, Some(2 | 4)), "{n:?}");
        assert_eq!(param_count(&data, "do_exit").unwrap(), Some(1));
    }
}
