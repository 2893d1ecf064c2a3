//! A test helper: `uringaccept <ipv4:port>` listens there, accepts one connection through
//! io_uring (`IORING_OP_ACCEPT`, which never passes the `syscalls:` accept tracepoints) and
//! prints the accepted descriptor. Raw syscalls, no io_uring crate: one accept is all it does.

use std::{io::Write, net::TcpListener, os::fd::AsRawFd};

#[repr(C)]
#[derive(Default)]
struct SqRingOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct CqRingOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

/// `struct io_uring_params` (120 bytes).
#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqRingOffsets,
    cq_off: CqRingOffsets,
}

/// `struct io_uring_sqe` (64 bytes), with the fields an accept uses.
#[repr(C)]
struct Sqe {
    opcode: u8,
    flags: u8,
    ioprio: u16,
    fd: i32,
    addr2: u64,
    addr: u64,
    len: u32,
    accept_flags: u32,
    user_data: u64,
    buf_index: u16,
    personality: u16,
    file_index: u32,
    addr3: u64,
    pad: u64,
}

const _: () = assert!(size_of::<Params>() == 120 && size_of::<Sqe>() == 64);

const IORING_OP_ACCEPT: u8 = 13;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_OFF_SQ_RING: i64 = 0;
const IORING_OFF_CQ_RING: i64 = 0x800_0000;
const IORING_OFF_SQES: i64 = 0x1000_0000;

fn fail(what: &str) -> std::process::ExitCode {
    eprintln!("uringaccept: {what}: {}", std::io::Error::last_os_error());
    std::process::ExitCode::FAILURE
}

/// Maps `len` bytes of the ring `fd` at `offset`; null on failure.
///
/// # Safety
/// `fd` is an io_uring descriptor.
unsafe fn map(fd: i32, len: usize, offset: i64) -> *mut u8 {
    // SAFETY: a fresh shared mapping of the ring, as io_uring_setup(2) documents.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_POPULATE, fd, offset)
    };
    if p == libc::MAP_FAILED { std::ptr::null_mut() } else { p.cast() }
}

fn main() -> std::process::ExitCode {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: uringaccept <ipv4:port>");
        return std::process::ExitCode::FAILURE;
    };
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("uringaccept: bind {addr}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut p = Params::default();
    // SAFETY: io_uring_setup with one entry and a params struct of the kernel's layout.
    let ring = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, &raw mut p) } as i32;
    if ring < 0 {
        return fail("io_uring_setup");
    }
    let sq_len = p.sq_off.array as usize + p.sq_entries as usize * 4;
    let cq_len = p.cq_off.cqes as usize + p.cq_entries as usize * 16;
    // SAFETY: `ring` is the io_uring just set up; the lengths are from its params.
    let (sq, cq, sqes) = unsafe {
        (map(ring, sq_len, IORING_OFF_SQ_RING), map(ring, cq_len, IORING_OFF_CQ_RING), map(ring, size_of::<Sqe>(), IORING_OFF_SQES))
    };
    if sq.is_null() || cq.is_null() || sqes.is_null() {
        return fail("mmap of the rings");
    }
    // SAFETY: offsets inside the mappings, from the kernel's params; one entry, slot 0, so
    // the index array and the SQE are the first ones; the tail is published with a release
    // store and the completion read after io_uring_enter waited for it.
    let res = unsafe {
        sqes.cast::<Sqe>().write(Sqe {
            opcode: IORING_OP_ACCEPT,
            flags: 0,
            ioprio: 0,
            fd: listener.as_raw_fd(),
            addr2: 0,
            addr: 0,
            len: 0,
            accept_flags: 0,
            user_data: 1,
            buf_index: 0,
            personality: 0,
            file_index: 0,
            addr3: 0,
            pad: 0,
        });
        sq.add(p.sq_off.array as usize).cast::<u32>().write(0);
        let tail = &*sq.add(p.sq_off.tail as usize).cast::<std::sync::atomic::AtomicU32>();
        tail.fetch_add(1, std::sync::atomic::Ordering::Release);
        println!("listening");
        let _ = std::io::stdout().flush();
        // Submits the one entry and waits for its completion.
        let submitted = libc::syscall(libc::SYS_io_uring_enter, ring, 1u32, 1u32, IORING_ENTER_GETEVENTS, std::ptr::null::<u8>(), 0usize);
        if submitted != 1 {
            return fail(&format!("io_uring_enter submitted {submitted} entries, not 1"));
        }
        let head = &*cq.add(p.cq_off.head as usize).cast::<std::sync::atomic::AtomicU32>();
        let tail = &*cq.add(p.cq_off.tail as usize).cast::<std::sync::atomic::AtomicU32>();
        let mask = cq.add(p.cq_off.ring_mask as usize).cast::<u32>().read();
        let h = head.load(std::sync::atomic::Ordering::Relaxed);
        // The kernel publishes a completion by its tail: acquire it before reading the entry.
        if tail.load(std::sync::atomic::Ordering::Acquire) == h {
            eprintln!("uringaccept: io_uring_enter returned without a completion");
            return std::process::ExitCode::FAILURE;
        }
        let slot = h & mask;
        let res = cq.add(p.cq_off.cqes as usize + slot as usize * 16 + 8).cast::<i32>().read();
        head.fetch_add(1, std::sync::atomic::Ordering::Release);
        res
    };
    if res < 0 {
        eprintln!("uringaccept: accept failed: {}", std::io::Error::from_raw_os_error(-res));
        return std::process::ExitCode::FAILURE;
    }
    println!("accepted fd {res}");
    std::process::ExitCode::SUCCESS
}
