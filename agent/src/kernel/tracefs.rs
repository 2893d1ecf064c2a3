//! Tracepoint record layouts from tracefs `format` files. The offsets are a stable ABI per
//! kernel but not across kernels, so they are read at start and handed to the programs.

use std::path::Path;

use super::error::KernelError;

/// Byte offset of `field` in a tracepoint `format` file's text.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.split_whitespace().last()?.split('[').next()?;
        if name != field {
            return None;
        }
        let offset = rest.trim().strip_prefix("offset:")?;
        offset.split(';').next()?.trim().parse().ok()
    })
}

pub fn read_field_offset(tracefs: &Path, category: &str, name: &str, field: &str) -> Result<u32, KernelError> {
    let path = tracefs.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| KernelError::TracepointFormat { path: path.clone(), message: e.to_string() })?;
    field_offset(&text, field)
        .ok_or_else(|| KernelError::TracepointFormat { path, message: format!("no field `{field}`") })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXEC: &str = "name: sched_process_exec\nID: 316\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n\nprint fmt: \"filename=%s\"\n";

    #[test]
    fn offsets_from_the_real_layout() {
        assert_eq!(field_offset(EXEC, "filename"), Some(8));
        assert_eq!(field_offset(EXEC, "pid"), Some(12));
        assert_eq!(field_offset(EXEC, "old_pid"), Some(16));
        assert_eq!(field_offset(EXEC, "common_pid"), Some(4));
        assert_eq!(field_offset(EXEC, "nope"), None);
        assert_eq!(field_offset("garbage\nfield:;", "x"), None);
    }
}
