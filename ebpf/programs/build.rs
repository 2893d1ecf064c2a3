//! Compiles the CO-RE getters (C) to LLVM bitcode for bpf-linker, and fixes the ABI version
//! the object declares (overridable only so the agent's refusal of a mismatch can be tested).

use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let clang = env::var("PEREGRINE_CLANG").unwrap_or_else(|_| "clang-22".to_owned());
    println!("cargo::rerun-if-changed=c/getters.c");
    println!("cargo::rerun-if-changed=c/task_info.h");
    println!("cargo::rerun-if-env-changed=PEREGRINE_CLANG");
    println!("cargo::rerun-if-env-changed=PEREGRINE_EBPF_ABI_OVERRIDE");

    let bitcode = out.join("getters.bc");
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-emit-llvm", "-c", "c/getters.c", "-o"])
        .arg(&bitcode)
        .arg("-I/usr/include/x86_64-linux-gnu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!("{clang} failed to compile c/getters.c ({s})")),
        Err(e) => fail(&format!(
            "cannot run {clang} ({e}): install it with `cargo xtask setup`"
        )),
    }
    println!("cargo::rustc-link-arg-bins={}", bitcode.display());

    let abi = match env::var("PEREGRINE_EBPF_ABI_OVERRIDE") {
        Ok(v) => match v.parse::<u32>() {
            Ok(n) => n,
            Err(_) => fail(&format!("PEREGRINE_EBPF_ABI_OVERRIDE={v:?} is not a u32")),
        },
        Err(_) => peregrine_common::ABI_VERSION,
    };
    let abi_rs = format!("pub const OBJECT_ABI_VERSION: u32 = {abi};\n");
    if let Err(e) = std::fs::write(out.join("abi.rs"), abi_rs) {
        fail(&format!("writing abi.rs: {e}"));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}
