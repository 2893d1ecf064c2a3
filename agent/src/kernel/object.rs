//! The kernel object file, checked before the kernel sees it.

use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol};
use peregrine_common::{ABI_SYMBOL, ABI_VERSION};

use super::error::KernelError;

/// Reads the object and refuses one built for another record ABI.
pub fn read_checked(path: &Path) -> Result<Vec<u8>, KernelError> {
    let bytes = std::fs::read(path).map_err(|source| KernelError::ObjectRead { path: path.to_owned(), source })?;
    let found = abi_version(&bytes).map_err(|message| KernelError::ObjectInvalid { path: path.to_owned(), message })?;
    if found != ABI_VERSION {
        return Err(KernelError::AbiMismatch { path: path.to_owned(), found, expected: ABI_VERSION });
    }
    Ok(bytes)
}

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// The object with its ring buffer map definition (`EVENTS`, a legacy `bpf_map_def` in the
/// `maps` section: type, key size, value size, max entries, ...) turned into a one-entry
/// array: for the perf transport, on kernels that cannot create a ring buffer map. The
/// programs' ring buffer paths are dead code then (`USE_PERF`), never walked by the verifier.
pub fn ring_buffer_as_array(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let file = object::File::parse(bytes).map_err(|e| format!("not an ELF object ({e})"))?;
    let symbol = file.symbols().find(|s| s.name() == Ok("EVENTS")).ok_or("no EVENTS map in the object")?;
    let index = symbol.section_index().ok_or("EVENTS has no section")?;
    let section = file.section_by_index(index).map_err(|e| e.to_string())?;
    let (file_offset, size) = section.file_range().ok_or("the EVENTS section has no file data")?;
    let within = symbol.address().saturating_sub(section.address());
    if within + 16 > size {
        return Err("EVENTS lies outside its section".into());
    }
    let at = usize::try_from(file_offset + within).map_err(|e| e.to_string())?;
    let mut out = bytes.to_vec();
    let def = out.get_mut(at..at + 16).ok_or("EVENTS lies outside the file")?;
    let found = u32::from_le_bytes([def[0], def[1], def[2], def[3]]);
    if found != BPF_MAP_TYPE_RINGBUF {
        return Err(format!("EVENTS is map type {found}, not a ring buffer ({BPF_MAP_TYPE_RINGBUF})"));
    }
    for (i, v) in [BPF_MAP_TYPE_ARRAY, 4, 4, 1].into_iter().enumerate() {
        def[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// The value of the object's ABI version symbol.
pub fn abi_version(bytes: &[u8]) -> Result<u32, String> {
    let file = object::File::parse(bytes).map_err(|e| format!("not an ELF object ({e})"))?;
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok(ABI_SYMBOL))
        .ok_or_else(|| format!("no {ABI_SYMBOL} symbol"))?;
    let index = symbol.section_index().ok_or_else(|| format!("{ABI_SYMBOL} has no section"))?;
    let section = file.section_by_index(index).map_err(|e| e.to_string())?;
    let data = section.data().map_err(|e| e.to_string())?;
    let start = usize::try_from(symbol.address().saturating_sub(section.address())).map_err(|e| e.to_string())?;
    let raw: [u8; 4] = data
        .get(start..start + 4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{ABI_SYMBOL} lies outside its section"))?;
    Ok(u32::from_le_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_an_object() {
        assert!(abi_version(b"not an elf").unwrap_err().starts_with("not an ELF object"));
    }
}
