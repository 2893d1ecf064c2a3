//! The allocator, and handing its free memory back to the system.
//!
//! Events are many small, short-lived allocations: glibc's malloc spent a quarter of the
//! agent's CPU on them under an exec storm (perf); mimalloc is built for this. mimalloc keeps
//! freed pages for reuse and returns them only from inside later allocations: after start-up
//! (loading the kernel programs parses the kernel's BTF) an idle agent kept ~46 MiB it no
//! longer used, which counts against the DaemonSet's memory limit.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the allocator's free pages to the system. Costs a walk of its pages: call it after
/// start-up and on the heartbeat, not per event.
pub fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and only touches the allocator's own state; any
    // thread may call it at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
