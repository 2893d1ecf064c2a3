//! The exec benchmark's load: `execstorm <workers> <seconds> <program>` runs, in each worker,
//! a fork + exec + wait loop of `program` for the given time and prints the total execs.
//! Compiled (not a shell loop) so the loop itself costs next to nothing.

use std::ffi::CString;

#[path = "../storm.rs"]
mod storm;

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
    let done = storm::run(workers, secs, || {
        let argv = [program.as_ptr(), std::ptr::null()];
        // SAFETY: the child only calls execv with pointers prepared before the fork, then
        // _exit; the parent waits for that child.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                libc::execv(program.as_ptr(), argv.as_ptr());
                libc::_exit(127);
            }
            if pid > 0 {
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                return 1;
            }
        }
        0
    });
    println!("{done}");
    std::process::ExitCode::SUCCESS
}
