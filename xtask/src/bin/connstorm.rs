//! The connect benchmark's load. `connstorm server <addr>`: accept and close, forever (stopped
//! by PID). `connstorm client <workers> <seconds> <addr>`: connect + close in a loop in each
//! worker for the given time; prints the number of connections made.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

#[path = "../storm.rs"]
mod storm;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => {
            let Some(addr) = args.get(2).and_then(|a| a.parse::<SocketAddr>().ok()) else { return usage() };
            let Ok(listener) = TcpListener::bind(addr) else {
                eprintln!("connstorm: cannot listen on {addr}");
                return std::process::ExitCode::FAILURE;
            };
            // A deep backlog: a SYN dropped on a full queue costs the client a 1 s retransmit,
            // which would turn any brief slowdown into a collapse of the connect rate.
            {
                use std::os::fd::AsRawFd;
                // SAFETY: listen() again on our listening socket only resizes its backlog.
                unsafe { libc::listen(listener.as_raw_fd(), 4096) };
            }
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let l = &listener;
                    s.spawn(move || {
                        loop {
                            // Accept and drop: the client's close finishes the exchange.
                            let _ = l.accept();
                        }
                    });
                }
            });
            std::process::ExitCode::SUCCESS
        }
        Some("client") => {
            let (Some(workers), Some(secs), Some(addr)) = (
                args.get(2).and_then(|s| s.parse::<usize>().ok()),
                args.get(3).and_then(|s| s.parse::<f64>().ok()),
                args.get(4).and_then(|a| a.parse::<SocketAddr>().ok()),
            ) else {
                return usage();
            };
            let done = storm::run(workers, secs, || match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(stream) => {
                    abortive_close(stream);
                    1
                }
                Err(_) => 0,
            });
            println!("{done}");
            std::process::ExitCode::SUCCESS
        }
        _ => usage(),
    }
}

/// Closes with RST (SO_LINGER 0): a normal close leaves the client's port in TIME_WAIT, and a
/// storm would exhaust the ephemeral ports within seconds and measure that instead.
fn abortive_close(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket we own, with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

fn usage() -> std::process::ExitCode {
    eprintln!("usage: connstorm server <addr> | connstorm client <workers> <seconds> <addr>");
    std::process::ExitCode::FAILURE
}
