//! The syscall benchmark's load: `sysstorm <workers> <seconds>` runs, in each worker, a loop of
//! `getppid` system calls (about the cheapest there is, so what every syscall pays on top
//! shows most) for the given time and prints the total. A syscall tracepoint attached anywhere
//! puts every syscall on the node on the tracing slow path; this measures that.

#[path = "../storm.rs"]
mod storm;

/// Syscalls between two looks at the clock.
const BATCH: u64 = 1024;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(workers), Some(secs)) =
        (args.get(1).and_then(|s| s.parse::<usize>().ok()), args.get(2).and_then(|s| s.parse::<f64>().ok()))
    else {
        eprintln!("usage: sysstorm <workers> <seconds>");
        return std::process::ExitCode::FAILURE;
    };
    let done = storm::run(workers, secs, || {
        for _ in 0..BATCH {
            // SAFETY: getppid takes no arguments and cannot fail. Called through syscall(2) so
            // no libc cache answers instead of the kernel.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        BATCH
    });
    println!("{done}");
    std::process::ExitCode::SUCCESS
}
