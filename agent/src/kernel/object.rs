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
