//! Evaluation allocates nothing: counted with a global allocator wrapper.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn evaluating_the_stable_rules_does_not_allocate() {
    let rs = common::stable();
    let events = [
        common::event(common::EXEC_IN_CONTAINER),
        common::event(common::CONNECT_ON_HOST),
        common::event_with(
            common::EXEC_IN_CONTAINER,
            r#"{"proc.name": "sh", "proc.cmdline": "sh -c id", "proc.aname": ["nginx", "containerd-shim", "systemd"]}"#,
        ),
        common::event_with(
            common::EXEC_IN_CONTAINER,
            r#"{"proc.name": "debugfs", "container.privileged": true}"#,
        ),
    ];
    let mut matched = 0usize;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..100 {
        for e in &events {
            rs.evaluate(e, |_| matched += 1);
        }
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(matched, 200);
    assert_eq!(after - before, 0, "evaluation allocated");
}
