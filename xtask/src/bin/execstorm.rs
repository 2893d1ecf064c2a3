//! The exec benchmark's load: `execstorm <workers> <seconds> <program>` runs, in each worker,
//! a fork + exec + wait loop of `program` for the given time and prints the total execs.
//! Compiled (not a shell loop) so the loop itself costs next to nothing.

use std::{
    ffi::CString,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

static DONE: AtomicU64 = AtomicU64::new(0);

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(workers), Some(secs), Some(program)) = (
        args.get(1).and_then(|s| s.parse::<usize>().ok()),
        args.get(2).and_then(|s| s.parse::<f64>().ok()),
        args.get(3).and_then(|s| CString::new(s.as_bytes()).ok()),
    ) else {
        eprintln!("usage: execstorm <workers> <seconds> <program>");
        return std::process::ExitCode::FAILURE;
    };
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    std::thread::scope(|s| {
        for _ in 0..workers {
            let program = program.clone();
            s.spawn(move || {
                let argv = [program.as_ptr(), std::ptr::null()];
                let mut n = 0u64;
                while Instant::now() < deadline {
                    // SAFETY: the child only calls execv with pointers prepared before the
                    // fork, then _exit; the parent waits for that child.
                    unsafe {
                        let pid = libc::fork();
                        if pid == 0 {
                            libc::execv(program.as_ptr(), argv.as_ptr());
                            libc::_exit(127);
                        }
                        if pid > 0 {
                            let mut status = 0;
                            libc::waitpid(pid, &mut status, 0);
                            n += 1;
                        }
                    }
                }
                DONE.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    println!("{}", DONE.load(Ordering::Relaxed));
    std::process::ExitCode::SUCCESS
}
