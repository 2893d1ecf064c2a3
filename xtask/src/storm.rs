//! The storm binaries' shared loop (execstorm, connstorm, sysstorm include it with `#[path]`):
//! each of `workers` threads repeats one unit of work until the time is up.

use std::time::{Duration, Instant};

/// Runs `unit` in a loop on each of `workers` threads for `seconds`; returns the units done in
/// all. `unit` says how many units one call did (0 for an attempt that failed).
pub fn run(workers: usize, seconds: f64, unit: impl Fn() -> u64 + Sync) -> u64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let unit = &unit;
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(move || {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        n += unit();
                    }
                    n
                })
            })
            .collect();
        // A worker that panicked has already said why on stderr; the run fails then.
        threads.into_iter().map(|t| t.join().unwrap_or_else(|_| std::process::exit(1))).sum()
    })
}
