//! Peregrine's kernel programs.
//!
//! Records go to one ring buffer, submitted without a wake-up unless the buffer holds more than
//! `WAKEUP_WATERMARK_BYTES`: the agent drains on a short timer, so a storm of execs costs one
//! wake-up per batch instead of one per record. With `USE_PERF` set (kernels without a BPF
//! ring buffer, or forced) they go to the per-CPU perf event array instead; the ring buffer
//! paths are then dead code the verifier never walks, and the agent loads the object with
//! `EVENTS` turned into a one-entry array, so such a kernel never sees a ring buffer map.
//! Kernel struct reads go through the CO-RE getters in `c/getters.c`; tracepoint field offsets
//! come from tracefs via globals the agent sets.
#![no_std]
#![no_main]
// `atomic_xadd`: the stable atomics need compare-and-swap, which the BPF target does not offer.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str,
        bpf_probe_read_user,
    },
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{cgroup_sock_addr, fexit, lsm, map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, PerfEventByteArray, RingBuf, lpm_trie::{Key, LpmTrie}},
    programs::{FExitContext, LsmContext, RawTracePointContext, SockAddrContext, TracePointContext},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use peregrine_common::{
    ARGV_CAP, CGROUP_PATH_CAP, CgroupRecord, ConnRecord, ConnWindow, Connecting, DENIED_NAME_CAP, ExecDeniedRecord, ExecRecord, FileKey, ExitInfo, ExitRecord, FILENAME_CAP, FlowKey, ForkInfo,
    ForkRecord, RecordHeader, RecordKind, SockOwner, TaskInfo, Tuple, conn_flags, counter,
    cgroup_flags, exec_flags, flow_dir, outcome, sockaddr_op, tcp_state,
};

mod abi {
    include!(concat!(env!("OUT_DIR"), "/abi.rs"));
}

/// The layout version this object was built with; the agent reads it from the ELF before loading.
#[unsafe(no_mangle)]
static PEREGRINE_ABI_VERSION: u32 = abi::OBJECT_ABI_VERSION;

/// Offset of `__data_loc char[] filename` in `sched_process_exec`'s record (from tracefs).
#[unsafe(no_mangle)]
static EXEC_FILENAME_LOC_OFFSET: u32 = 8;

/// Offset of `ret` in `syscalls:sys_exit_accept{,4}`'s record.
#[unsafe(no_mangle)]
static ACCEPT_RET_OFFSET: u32 = 16;
/// `cgroup:cgroup_mkdir`/`cgroup_rmdir` field offsets (the two share one layout), from tracefs.
#[unsafe(no_mangle)]
static CGROUP_ROOT_OFFSET: u32 = 8;
#[unsafe(no_mangle)]
static CGROUP_LEVEL_OFFSET: u32 = 12;
#[unsafe(no_mangle)]
static CGROUP_ID_OFFSET: u32 = 16;
#[unsafe(no_mangle)]
static CGROUP_PATH_LOC_OFFSET: u32 = 24;
/// 1: connections to and from loopback addresses are not reported (the default).
#[unsafe(no_mangle)]
static EXCLUDE_LOOPBACK: u32 = 1;

/// A UDP flow (process, cgroup, destination) is reported again after this long (0: every send).
#[unsafe(no_mangle)]
static UDP_DEDUP_NS: u64 = 10_000_000_000;
/// A TCP flow (process, cgroup, peer, port, direction) is sent once per window of this long;
/// later connects and accepts in the window are counted in `TCP_SEEN` (0: every one is sent).
#[unsafe(no_mangle)]
static TCP_DEDUP_NS: u64 = 10_000_000_000;
/// 1: connects and sends to DENY4 destinations are refused (EPERM) and reported.
#[unsafe(no_mangle)]
static ENFORCE: u32 = 0;

/// Ring fill level above which a submit wakes the agent at once.
#[unsafe(no_mangle)]
static WAKEUP_WATERMARK_BYTES: u64 = 1 << 20;

/// 1: records go to PERF_EVENTS instead of EVENTS (set by the agent at load).
#[unsafe(no_mangle)]
static USE_PERF: u32 = 0;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
static PERF_EVENTS: PerfEventByteArray = PerfEventByteArray::new(0);

/// Files whose exec the LSM hook refuses (filled by the agent from `process.deny_exec`).
#[map]
static EXEC_DENY: HashMap<FileKey, u8> = HashMap::with_max_entries(1024, 0);

#[map]
static DENIED_SCRATCH: PerCpuArray<ExecDeniedRecord> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU staging of cgroup records for the perf path (the ring path writes in place).
#[map]
static CGROUP_SCRATCH: PerCpuArray<CgroupRecord> = PerCpuArray::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Who started each connecting socket, recorded at SYN_SENT (process context) for the outcome,
/// which the kernel reports in softirq where `current` is an unrelated task; kept after a
/// reported connect established, for a later reset by the peer.
#[map]
static CONNECTING: LruHashMap<u64, Connecting> = LruHashMap::with_max_entries(65536, 0);

#[map]
static CONN_SCRATCH: PerCpuArray<ConnRecord> = PerCpuArray::with_max_entries(1, 0);

/// Egress policy: IPv4 destinations refused when ENFORCE is set (filled by the agent).
#[map]
static DENY4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(1024, 0);

/// TCP dedup windows by flow; the agent reads a window once it has expired.
#[map]
static TCP_SEEN: LruHashMap<FlowKey, ConnWindow> = LruHashMap::with_max_entries(65536, 0);

/// When each UDP flow was last reported.
#[map]
static UDP_SEEN: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Per-CPU staging area: an exec record is too large for the 512-byte BPF stack.
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecRecord> = PerCpuArray::with_max_entries(1, 0);

unsafe extern "C" {
    fn peregrine_current_arg_area(start: *mut u64, end: *mut u64) -> i32;
    fn peregrine_exec_task_info(info: *mut TaskInfo) -> i32;
    fn peregrine_fork_info(parent: *const u8, child: *const u8, out: *mut ForkInfo) -> i32;
    fn peregrine_exit_info(out: *mut ExitInfo) -> i32;
    fn peregrine_current_start_ns() -> u64;
    fn peregrine_sock_tuple(sk: u64, out: *mut Tuple) -> i32;
    fn peregrine_sock_error(sk: u64) -> i32;
    fn peregrine_sock_sport(sk: u64) -> u16;
    fn peregrine_fd_sock(fd: i32) -> u64;
    fn peregrine_fd_sock_btf(fd: i32) -> u64;
    fn peregrine_bprm_file(bprm: *const u8, out: *mut FileKey) -> i32;
    fn peregrine_bprm_filename(bprm: *const u8, buf: *mut u8, size: u32) -> i32;
}

#[inline(always)]
fn global<T: Copy>(value: &'static T) -> T {
    // SAFETY: the pointer comes from a reference to a static; the volatile read stops the
    // compiler from folding the value the agent rewrites at load time.
    unsafe { core::ptr::read_volatile(value) }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, programs do not preempt each other on one CPU for this map.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn use_perf() -> bool {
    global(&USE_PERF) != 0
}

/// Sends one record through the transport in force. The perf path's losses (buffer full) are
/// counted by the kernel per CPU buffer and read by the agent with the records.
#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, bytes: &[u8]) {
    if use_perf() {
        PERF_EVENTS.output(ctx, bytes, 0);
    } else if EVENTS.output::<[u8]>(bytes, submit_flags()).is_err() {
        count(counter::RING_FULL);
    }
}

/// A record's bytes.
#[inline(always)]
fn bytes_of<T>(rec: &T) -> &[u8] {
    // SAFETY: records are `repr(C)` plain data with explicit padding fields, fully written
    // before they are sent; the slice covers exactly the value and lives as long as `rec`.
    unsafe { core::slice::from_raw_parts((rec as *const T).cast::<u8>(), size_of::<T>()) }
}

#[inline(always)]
fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= global(&WAKEUP_WATERMARK_BYTES) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    if try_exec(&ctx).is_err() {
        count(counter::READ_FAILED);
    }
    0
}

fn try_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let rec = match EXEC_SCRATCH.get_ptr_mut(0) {
        // SAFETY: the map value is valid, per-CPU, and not shared with another program run.
        Some(p) => unsafe { &mut *p },
        None => return Err(-1),
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut flags = 0u16;

    rec.pid = pid_tgid as u32;
    rec.tgid = (pid_tgid >> 32) as u32;
    // SAFETY: helper without arguments.
    rec.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    rec.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: CO-RE getter filling the record's task info (a map value) with probe reads.
    unsafe { peregrine_exec_task_info(&mut rec.task) };

    // Filename: a __data_loc field, low 16 bits = offset in the record, high 16 = length with NUL.
    // SAFETY: reading the tracepoint record through bpf_probe_read_kernel.
    let loc: u32 = unsafe { ctx.read_at(global(&EXEC_FILENAME_LOC_OFFSET) as usize) }
        .map_err(|e| e as i64)?;
    // SAFETY: the data_loc offset points inside the tracepoint record; the helper bounds the copy.
    let copied = unsafe {
        bpf_probe_read_kernel_str(
            rec.filename.as_mut_ptr().cast(),
            FILENAME_CAP as u32,
            ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize).cast(),
        )
    };
    rec.filename_len = if copied > 0 { (copied - 1) as u16 } else { 0 };
    if (loc >> 16) as usize > FILENAME_CAP {
        flags |= exec_flags::FILENAME_TRUNCATED;
    }

    let mut start = 0u64;
    let mut end = 0u64;
    // SAFETY: CO-RE getter writing two u64 out-parameters on our stack.
    let have_mm = unsafe { peregrine_current_arg_area(&mut start, &mut end) } == 0;
    let total = if have_mm && end > start { end - start } else { 0 };
    let mut n = total as usize;
    if n > ARGV_CAP {
        n = ARGV_CAP;
        flags |= exec_flags::ARGV_TRUNCATED;
    }
    rec.argv_len = 0;
    if n > 0 {
        // SAFETY: n <= ARGV_CAP bytes into the record's argv array; the helper faults safely.
        let r = unsafe { bpf_probe_read_user(rec.argv.as_mut_ptr().cast(), n as u32, start as *const _) };
        if r == 0 {
            rec.argv_len = n as u16;
        } else {
            flags |= exec_flags::ARGV_UNREADABLE;
        }
    }

    let size = ExecRecord::ARGV_OFFSET + rec.argv_len as usize;
    rec.header = header(RecordKind::Exec, flags, size);
    output(ctx, rec as *const ExecRecord as *const u8, size, ExecRecord::ARGV_OFFSET + ARGV_CAP)
}

#[inline(always)]
fn header(kind: RecordKind, flags: u16, size: usize) -> RecordHeader {
    RecordHeader {
        abi_version: global(&PEREGRINE_ABI_VERSION),
        kind: kind as u16,
        flags,
        size: size as u32,
        _pad: 0,
        // SAFETY: helper without arguments.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}

/// New processes (threads are skipped in the getter). A raw tracepoint: the plain one carries
/// no child task, and the child's start time is needed to key it.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    let mut rec = ForkRecord {
        header: header(RecordKind::Fork, 0, size_of::<ForkRecord>()),
        info: ForkInfo { child_start_ns: 0, parent_start_ns: 0, child_tgid: 0, parent_tgid: 0, forker_tgid: 0, _pad: 0 },
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // SAFETY: the tracepoint's task pointers, read by the CO-RE getter with probe reads.
    if unsafe { peregrine_fork_info(parent, child, &mut rec.info) } == 1 {
        emit(&ctx, bytes_of(&rec));
    }
    0
}

/// Process ends: only the last thread's exit is recorded.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut rec = ExitRecord {
        header: header(RecordKind::Exit, 0, size_of::<ExitRecord>()),
        info: ExitInfo { start_ns: 0, tgid: 0, exit_code: 0 },
        pid: pid_tgid as u32,
        _pad: 0,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // SAFETY: CO-RE getter reading the current task with probe reads.
    if unsafe { peregrine_exit_info(&mut rec.info) } == 1 {
        emit(&ctx, bytes_of(&rec));
    }
    0
}

/// A container's cgroup appears before its first process runs in it: recording the path here
/// lets the agent know the container (and look it up in the runtime) before its first exec.
#[tracepoint]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    if cgroup_record(&ctx, RecordKind::CgroupMkdir).is_err() {
        count(counter::READ_FAILED);
    }
    0
}

#[tracepoint]
pub fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    if cgroup_record(&ctx, RecordKind::CgroupRmdir).is_err() {
        count(counter::READ_FAILED);
    }
    0
}

fn cgroup_record(ctx: &TracePointContext, kind: RecordKind) -> Result<(), i64> {
    // SAFETY: reading the tracepoint record through bpf_probe_read_kernel.
    let root: i32 = unsafe { ctx.read_at(global(&CGROUP_ROOT_OFFSET) as usize) }.map_err(|e| e as i64)?;
    // cgroup v1 hierarchies (hybrid hosts) have ids >= 1; their cgroup ids join nothing.
    if root != 0 {
        return Ok(());
    }
    if use_perf() {
        let Some(rec) = CGROUP_SCRATCH.get_ptr_mut(0) else { return Err(-1) };
        // SAFETY: the per-CPU scratch value, size_of::<CgroupRecord>() bytes, not shared with
        // another program run on this CPU.
        if !unsafe { fill_cgroup(ctx, kind, rec) } {
            return Err(-1);
        }
        // SAFETY: filled above; the map value outlives this call.
        emit(ctx, bytes_of(unsafe { &*rec }));
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<CgroupRecord>(0) else {
        count(counter::RING_FULL);
        return Ok(());
    };
    // SAFETY: a reserved ring buffer slot of size_of::<CgroupRecord>() bytes, which we own
    // until submit/discard.
    if unsafe { fill_cgroup(ctx, kind, entry.as_mut_ptr()) } {
        entry.submit(submit_flags());
        Ok(())
    } else {
        entry.discard(0);
        Err(-1)
    }
}

/// Writes every field of a cgroup record from the tracepoint; false if a read failed.
///
/// # Safety
/// `rec` must point to `size_of::<CgroupRecord>()` writable bytes owned by the caller.
#[inline(always)]
unsafe fn fill_cgroup(ctx: &TracePointContext, kind: RecordKind, rec: *mut CgroupRecord) -> bool {
    // SAFETY: reads of the tracepoint record through bpf_probe_read_kernel; `rec` is the
    // caller's.
    unsafe {
        let id: Result<u64, _> = ctx.read_at(global(&CGROUP_ID_OFFSET) as usize);
        let level: Result<i32, _> = ctx.read_at(global(&CGROUP_LEVEL_OFFSET) as usize);
        let loc: Result<u32, _> = ctx.read_at(global(&CGROUP_PATH_LOC_OFFSET) as usize);
        match (id, level, loc) {
            (Ok(id), Ok(level), Ok(loc)) => {
                let copied = bpf_probe_read_kernel_str(
                    (*rec).path.as_mut_ptr().cast(),
                    CGROUP_PATH_CAP as u32,
                    ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize).cast(),
                );
                let flags = if (loc >> 16) as usize > CGROUP_PATH_CAP { cgroup_flags::PATH_TRUNCATED } else { 0 };
                (*rec).header = header(kind, flags, size_of::<CgroupRecord>());
                (*rec).id = id;
                (*rec).level = level as u32;
                (*rec).path_len = if copied > 0 { (copied - 1) as u16 } else { 0 };
                (*rec)._pad = 0;
                true
            }
            _ => false,
        }
    }
}

const IPPROTO_TCP: u16 = 6;

fn fill_current_owner(owner: &mut SockOwner) {
    fill_owner_ids(owner);
    fill_owner_details(owner);
}

/// What a dedup key needs: cheap helpers only.
#[inline(always)]
fn fill_owner_ids(owner: &mut SockOwner) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: helper without arguments.
    owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    owner.pid = pid_tgid as u32;
    owner.tgid = (pid_tgid >> 32) as u32;
}

/// What only a sent record needs.
#[inline(always)]
fn fill_owner_details(owner: &mut SockOwner) {
    // SAFETY: CO-RE getter reading the current task with probe reads.
    owner.start_ns = unsafe { peregrine_current_start_ns() };
    owner.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

#[inline(always)]
fn is_loopback(t: &Tuple) -> bool {
    match t.family {
        2 => t.daddr[0] == 127 || t.saddr[0] == 127,
        10 => {
            let v6_loop = |a: &[u8; 16]| a[..15].iter().all(|b| *b == 0) && a[15] == 1;
            let mapped_loop =
                |a: &[u8; 16]| a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff && a[12] == 127;
            v6_loop(&t.daddr) || v6_loop(&t.saddr) || mapped_loop(&t.daddr) || mapped_loop(&t.saddr)
        }
        _ => false,
    }
}

/// The per-CPU connection record being built (the BPF stack is too small for copies of it).
#[inline(always)]
fn conn_scratch() -> Option<&'static mut ConnRecord> {
    // SAFETY: the map value is valid, per-CPU, and not shared with another program run.
    CONN_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn loopback_excluded(t: &Tuple) -> bool {
    global(&EXCLUDE_LOOPBACK) != 0 && is_loopback(t)
}

/// Adds one to a counter of a map value other CPUs may be adding to.
#[inline(always)]
fn add_one(counter: *mut u64) {
    // SAFETY: `counter` points into a map value, valid and 8-byte aligned for the program's
    // run; the atomic add (BPF_XADD, its result unused) is what the kernel allows there.
    let _ = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}

/// The dedup window of the staged record's flow: `Some(start)` when the record falls in an
/// open window and was counted there (not to be sent); `None` when it is to be sent, having
/// opened a new window (`window_start_ns`, with the expired one's counts in `carried`).
#[inline(always)]
fn tcp_window(rec: &mut ConnRecord, key: &FlowKey) -> Option<u64> {
    let window = global(&TCP_DEDUP_NS);
    if window == 0 {
        return None;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(w) = TCP_SEEN.get_ptr_mut(key) {
        // SAFETY: a map value, valid for this run; counters are only ever added to.
        let start = unsafe { (*w).start_ns };
        if now.saturating_sub(start) < window {
            // SAFETY: as above.
            add_one(unsafe { &raw mut (*w).absorbed });
            return Some(start);
        }
        // SAFETY: as above; copied before the entry is replaced.
        rec.carried = unsafe { *w };
    }
    let _ = TCP_SEEN.insert(key, &ConnWindow { start_ns: now, absorbed: 0, established: 0, failed: 0 }, 0);
    rec.window_start_ns = now;
    None
}

/// Emits the staged connection record.
#[inline(always)]
fn emit_conn<C: EbpfContext>(ctx: &C, rec: &mut ConnRecord, kind: RecordKind, flags: u16, sock: u64, result: u16) {
    rec.header = header(kind, flags, size_of::<ConnRecord>());
    rec.sock = sock;
    rec.outcome = result;
    rec._pad = [0; 3];
    emit(ctx, bytes_of(rec));
}

/// TCP state changes: CLOSE->SYN_SENT (a connect, in the caller's context: remember who),
/// SYN_SENT->ESTABLISHED or ->CLOSE (the outcome, usually in softirq: attribute from the map,
/// never from `current`), CLOSE->LISTEN (a new listener, in the caller's context).
/// A raw tracepoint: its arguments (sock, old state, new state) are plain loads from the
/// context, so the many uninteresting changes of every connection cost next to nothing, and
/// the kernel builds no trace record for it.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    match (old, new) {
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => on_connect(&ctx, sk),
        (tcp_state::SYN_SENT, tcp_state::ESTABLISHED) => on_outcome(&ctx, sk, true),
        (tcp_state::SYN_SENT, tcp_state::CLOSE) => on_outcome(&ctx, sk, false),
        (tcp_state::CLOSE, tcp_state::LISTEN) => on_listen(&ctx, sk),
        _ => {}
    }
    0
}

const ECONNRESET: i32 = 104;

/// Socket errors (`sk_error_report`), which only fire when something went wrong: a reset by
/// the peer of a connect that was reported established ends it as `reset`. Watching every
/// close instead would cost a map lookup per connection.
#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    // SAFETY: CO-RE getter reading the socket with a probe read.
    if unsafe { peregrine_sock_error(sk) } == ECONNRESET {
        on_reset(&ctx, sk);
    }
    0
}

#[inline(always)]
fn on_reset<C: EbpfContext>(ctx: &C, sk: u64) {
    // SAFETY: the map value is copied out before the entry is removed.
    let Some(c) = (unsafe { CONNECTING.get(&sk) }).copied() else { return };
    if c.absorbed_into != 0 {
        return;
    }
    let Some(rec) = tcp_tuple(sk) else { return };
    // The entry outlives its socket when that closed without an error: it must name this
    // connection (a later connect at the same address replaced it at SYN_SENT).
    if c.key.family & !flow_dir::TCP_OUT != rec.tuple.family || c.key.dport != rec.tuple.dport || c.key.daddr != rec.tuple.daddr {
        return;
    }
    let _ = CONNECTING.remove(&sk);
    rec.owner = c.owner;
    rec.tuple.error = ECONNRESET;
    // By now the socket has left the bind hash (skc_num is 0); inet_sport keeps the port.
    // SAFETY: CO-RE getter reading the socket with a probe read.
    rec.tuple.sport = unsafe { peregrine_sock_sport(sk) };
    emit_conn(ctx, rec, RecordKind::Connect, 0, sk, outcome::RESET);
}

// `clear_window` clears ConnWindow field by field: a field added there must be added here.
const _: () = assert!(size_of::<ConnWindow>() == 32);

/// Clears the staged record's window fields with five stores: written plainly, the compiler
/// makes them a call to a BPF `memset` subprogram, on every connect and accept.
#[inline(always)]
fn clear_window(rec: &mut ConnRecord) {
    // SAFETY: the fields of a valid, exclusively borrowed record.
    unsafe {
        core::ptr::write_volatile(&raw mut rec.window_start_ns, 0);
        core::ptr::write_volatile(&raw mut rec.carried.start_ns, 0);
        core::ptr::write_volatile(&raw mut rec.carried.absorbed, 0);
        core::ptr::write_volatile(&raw mut rec.carried.established, 0);
        core::ptr::write_volatile(&raw mut rec.carried.failed, 0);
    }
}

/// Stages a record for the socket: its tuple read, no dedup window (`tcp_window` sets one).
/// None when unreadable, not TCP, or excluded loopback.
#[inline(always)]
fn tcp_tuple(sk: u64) -> Option<&'static mut ConnRecord> {
    let rec = conn_scratch()?;
    clear_window(rec);
    // SAFETY: CO-RE getter reading the socket with probe reads into the staged record.
    let family = unsafe { peregrine_sock_tuple(sk, &mut rec.tuple) };
    (family != 0 && rec.tuple.protocol == IPPROTO_TCP && !loopback_excluded(&rec.tuple)).then_some(rec)
}

#[inline(always)]
fn on_connect<C: EbpfContext>(ctx: &C, sk: u64) {
    let Some(rec) = tcp_tuple(sk) else { return };
    fill_owner_ids(&mut rec.owner);
    let key = FlowKey::tcp(rec, flow_dir::TCP_OUT);
    match tcp_window(rec, &key) {
        Some(start) => {
            let _ = CONNECTING.insert(&sk, &Connecting { owner: rec.owner, absorbed_into: start, key }, 0);
        }
        None => {
            fill_owner_details(&mut rec.owner);
            let _ = CONNECTING.insert(&sk, &Connecting { owner: rec.owner, absorbed_into: 0, key }, 0);
            emit_conn(ctx, rec, RecordKind::Connect, 0, sk, outcome::ATTEMPT);
        }
    }
}

#[inline(always)]
fn on_listen<C: EbpfContext>(ctx: &C, sk: u64) {
    let Some(rec) = tcp_tuple(sk) else { return };
    fill_current_owner(&mut rec.owner);
    emit_conn(ctx, rec, RecordKind::Listen, 0, sk, 0);
}

#[inline(always)]
fn on_outcome<C: EbpfContext>(ctx: &C, sk: u64, established: bool) {
    // SAFETY: the map value is copied out before the entry is removed.
    let entry = unsafe { CONNECTING.get(&sk) }.copied();
    // A reported connect that established stays, so a reset by the peer can name its owner
    // (`on_reset`); the LRU or the next connect at the same address replaces it.
    let keep = established && entry.is_some_and(|c| c.absorbed_into == 0);
    if entry.is_some() && !keep {
        let _ = CONNECTING.remove(&sk);
    }
    if let Some(c) = &entry
        && c.absorbed_into != 0
    {
        count_absorbed_outcome(c, established);
        return;
    }
    let Some(rec) = tcp_tuple(sk) else { return };
    let mut flags = 0;
    match entry {
        Some(c) => rec.owner = c.owner,
        None => {
            count(counter::CONN_OWNER_MISSING);
            rec.owner = SockOwner::default();
            flags = conn_flags::OWNER_UNKNOWN;
        }
    }
    if !established {
        // SAFETY: CO-RE getter reading the socket with a probe read.
        rec.tuple.error = unsafe { peregrine_sock_error(sk) };
    }
    let result = if established { outcome::ESTABLISHED } else { outcome::FAILED };
    emit_conn(ctx, rec, RecordKind::Connect, flags, sk, result);
}

/// The outcome of an absorbed connect, added to its window if that is still the open one.
#[inline(always)]
fn count_absorbed_outcome(c: &Connecting, established: bool) {
    if let Some(w) = TCP_SEEN.get_ptr_mut(&c.key) {
        // SAFETY: a map value, valid for this run; counters are only ever added to.
        unsafe {
            if (*w).start_ns == c.absorbed_into {
                add_one(if established { &raw mut (*w).established } else { &raw mut (*w).failed });
            }
        }
    }
}

/// `ret` of a `syscalls:sys_exit_*` record. Its offset (16 in every kernel so far: the
/// common header, the syscall number, padding) is the agent's from tracefs; when it is the
/// usual one the verifier, knowing the global, keeps the direct context load, not the probe read.
#[inline(always)]
fn syscall_ret(ctx: &TracePointContext) -> i64 {
    const USUAL: u32 = 16;
    let offset = global(&ACCEPT_RET_OFFSET);
    if offset == USUAL {
        // SAFETY: a load from the program's own record at a constant offset, which the
        // verifier checks; `ret` is a `long` at 16 in every syscall-exit record (the agent
        // reads `sys_exit_accept4`'s format; `sys_exit_accept` has the same layout).
        unsafe { *ctx.as_ptr().cast::<u8>().add(USUAL as usize).cast::<i64>() }
    } else {
        // SAFETY: reading the tracepoint record through bpf_probe_read_kernel.
        unsafe { ctx.read_at::<i64>(offset as usize) }.unwrap_or(-1)
    }
}

/// An accepted connection: the new fd's socket through the fd table. `TASK_BTF`: the walk
/// from the task's BTF pointer (plain loads; kernels >= 5.11); else every step a probe read.
#[inline(always)]
fn on_accept<const TASK_BTF: bool>(ctx: &TracePointContext) {
    let ret = syscall_ret(ctx);
    if ret < 0 || ret > i64::from(i32::MAX) {
        return;
    }
    // SAFETY: CO-RE getters walking the current task's fd table, bounded by its size.
    let sk = unsafe { if TASK_BTF { peregrine_fd_sock_btf(ret as i32) } else { peregrine_fd_sock(ret as i32) } };
    on_accepted(ctx, sk);
}

/// The accepted socket `sk` (0: none), in the accepting process's context.
#[inline(always)]
fn on_accepted<C: EbpfContext>(ctx: &C, sk: u64) {
    if sk == 0 {
        return;
    }
    let Some(rec) = tcp_tuple(sk) else { return };
    fill_owner_ids(&mut rec.owner);
    let key = FlowKey::tcp(rec, flow_dir::TCP_IN);
    if tcp_window(rec, &key).is_none() {
        fill_owner_details(&mut rec.owner);
        emit_conn(ctx, rec, RecordKind::Accept, 0, sk, 0);
    }
}

/// Inbound connections, in the accepting process's context. The agent loads these, and the
/// `*_probe_read` pair below only where the verifier refuses them (kernels before 5.11).
#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept::<true>(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept::<true>(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4_probe_read(ctx: TracePointContext) -> u32 {
    on_accept::<false>(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept_probe_read(ctx: TracePointContext) -> u32 {
    on_accept::<false>(&ctx);
    0
}

/// Accepts where the kernel runs BPF trampolines: the accepted socket is `inet_csk_accept`'s
/// return value, in the accepting task (a syscall's, or io_uring's, which the syscall
/// tracepoints miss). The agent attaches these instead of the `sys_exit_accept*` pair, because
/// attaching any syscall tracepoint puts every syscall of every process on the node on the
/// tracing slow path. A fexit program reads the return value after the arguments: 4 of them
/// until 6.9 (`sk, flags, err, kern`), 2 since 6.10 (`sk, arg`); the agent loads the one
/// matching the kernel's BTF (the other would read an argument as the socket).
#[fexit(function = "inet_csk_accept")]
pub fn inet_csk_accept_fexit4(ctx: FExitContext) -> i32 {
    on_accepted(&ctx, ctx.arg::<u64>(4));
    0
}

#[fexit(function = "inet_csk_accept")]
pub fn inet_csk_accept_fexit2(ctx: FExitContext) -> i32 {
    on_accepted(&ctx, ctx.arg::<u64>(2));
    0
}

const IPPROTO_UDP: u32 = 17;
/// Verdicts of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// connect()/sendmsg() on IPv4 and IPv6 sockets, in the caller's context. Data path: every
/// path that is not a deliberate denial returns ALLOW, errors included.
#[inline(always)]
fn on_sock_addr(ctx: &SockAddrContext, v6: bool, op: u16) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel passes a valid bpf_sock_addr. The verifier allows user_ip4 only in
    // the *4 hooks and user_ip6 only in the *6 hooks, so each is read on its own branch.
    let (protocol, port) = unsafe { ((*sa).protocol, (*sa).user_port) };
    // TCP connects are the state tracepoint's; here only for enforcement.
    if protocol != IPPROTO_UDP && global(&ENFORCE) == 0 {
        return ALLOW;
    }
    // SAFETY: as above.
    let (ip4, ip6) = if v6 { (0, unsafe { (*sa).user_ip6 }) } else { (unsafe { (*sa).user_ip4 }, [0u32; 4]) };
    let Some(rec) = conn_scratch() else { return ALLOW };
    rec.tuple = Tuple::default();
    clear_window(rec);
    rec.tuple.family = if v6 { 10 } else { 2 };
    rec.tuple.protocol = protocol as u16;
    // user_port holds the port in network byte order in its low 16 bits.
    rec.tuple.dport = u16::from_be(port as u16);
    if v6 {
        let mut i = 0;
        while i < 4 {
            let b = ip6[i].to_ne_bytes();
            rec.tuple.daddr[i * 4] = b[0];
            rec.tuple.daddr[i * 4 + 1] = b[1];
            rec.tuple.daddr[i * 4 + 2] = b[2];
            rec.tuple.daddr[i * 4 + 3] = b[3];
            i += 1;
        }
    } else {
        let b = ip4.to_ne_bytes();
        rec.tuple.daddr[0] = b[0];
        rec.tuple.daddr[1] = b[1];
        rec.tuple.daddr[2] = b[2];
        rec.tuple.daddr[3] = b[3];
    }
    // IPv4 destinations, including IPv4-mapped IPv6 ones (an AF_INET6 socket to ::ffff:a.b.c.d).
    let d = &rec.tuple.daddr;
    let mapped = d[0] | d[1] | d[2] | d[3] | d[4] | d[5] | d[6] | d[7] | d[8] | d[9] == 0 && d[10] == 0xff && d[11] == 0xff;
    let v4 = if !v6 { Some(ip4.to_ne_bytes()) } else if mapped { Some([d[12], d[13], d[14], d[15]]) } else { None };
    // recvmsg hooks cannot refuse (the verifier requires them to return 1): no policy there.
    let denied = match v4 {
        Some(addr) => op != sockaddr_op::RECVMSG && global(&ENFORCE) != 0 && DENY4.get(Key::new(32, addr)).is_some(),
        None => false,
    };
    if denied {
        fill_sockaddr_owner(&mut rec.owner);
        if !loopback_excluded(&rec.tuple) {
            emit_conn(ctx, rec, RecordKind::Denied, op, 0, 0);
        }
        return DENY;
    }
    if protocol != IPPROTO_UDP || loopback_excluded(&rec.tuple) {
        return ALLOW;
    }
    fill_sockaddr_owner(&mut rec.owner);
    let key = FlowKey {
        cgroup_id: rec.owner.cgroup_id,
        tgid: rec.owner.tgid,
        // Inbound and outbound flows with one peer are distinct.
        family: rec.tuple.family | if op == sockaddr_op::RECVMSG { flow_dir::UDP_IN } else { 0 },
        dport: rec.tuple.dport,
        daddr: rec.tuple.daddr,
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: the value is copied out at once.
    if let Some(last) = unsafe { UDP_SEEN.get(&key) }.copied()
        && now.saturating_sub(last) < global(&UDP_DEDUP_NS)
    {
        return ALLOW;
    }
    let _ = UDP_SEEN.insert(&key, &now, 0);
    emit_conn(ctx, rec, RecordKind::Udp, op, 0, 0);
    ALLOW
}

/// The caller of a socket call, as far as cgroup programs can tell (no task struct here: the
/// process start time stays 0 and the agent matches by tgid).
fn fill_sockaddr_owner(owner: &mut SockOwner) {
    let pid_tgid = bpf_get_current_pid_tgid();
    owner.start_ns = 0;
    // SAFETY: helper without arguments.
    owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    owner.pid = pid_tgid as u32;
    owner.tgid = (pid_tgid >> 32) as u32;
    owner.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    on_sock_addr(&ctx, false, sockaddr_op::CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    on_sock_addr(&ctx, true, sockaddr_op::CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_sock_addr(&ctx, false, sockaddr_op::SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_sock_addr(&ctx, true, sockaddr_op::SENDMSG)
}

/// Inbound datagrams (first per flow): the hook sees the sender's address.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    on_sock_addr(&ctx, false, sockaddr_op::RECVMSG)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    on_sock_addr(&ctx, true, sockaddr_op::RECVMSG)
}

/// Exec enforcement where the kernel runs BPF LSM: an exec of a file in EXEC_DENY fails with
/// EPERM before the new image replaces the caller, and the refusal is reported. Loaded only
/// where the `lsm` feature is available and `enforcement.deny_exec` lists files.
#[lsm(hook = "bprm_check_security")]
pub fn lsm_bprm_check(ctx: LsmContext) -> i32 {
    // bprm_check_security(struct linux_binprm *), then the verdict of earlier BPF LSM programs.
    let (bprm, previous): (*const u8, i32) = (ctx.arg(0), ctx.arg(1));
    if previous != 0 {
        return previous;
    }
    let mut key = FileKey { dev: 0, ino: 0 };
    // SAFETY: CO-RE getter reading the binprm with probe reads.
    if unsafe { peregrine_bprm_file(bprm, &mut key) } != 1 {
        return 0;
    }
    // SAFETY: a plain lookup; the value is not kept.
    if unsafe { EXEC_DENY.get(&key) }.is_none() {
        return 0;
    }
    if let Some(rec) = DENIED_SCRATCH.get_ptr_mut(0) {
        // SAFETY: the per-CPU scratch value, not shared with another program run on this CPU;
        // every field is written before it is sent.
        unsafe {
            (*rec).header = header(RecordKind::ExecDenied, 0, size_of::<ExecDeniedRecord>());
            fill_current_owner(&mut (*rec).owner);
            (*rec).file = key;
            (*rec)._pad = [0; 3];
            let n = peregrine_bprm_filename(bprm, (*rec).filename.as_mut_ptr(), DENIED_NAME_CAP as u32);
            (*rec).filename_len = if n > 0 { (n - 1) as u16 } else { 0 };
            emit(&ctx, bytes_of(&*rec));
        }
    }
    -1
}

/// Copies `len` bytes (at most `cap`, the staging record's size) of a staged record to the ring.
#[inline(always)]
fn output<C: EbpfContext>(ctx: &C, ptr: *const u8, len: usize, cap: usize) -> Result<(), i64> {
    let len = if len > cap { cap } else { len };
    // SAFETY: ptr is the staging map value, which is `cap` bytes long, and len <= cap.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, len) };
    emit(ctx, bytes);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
