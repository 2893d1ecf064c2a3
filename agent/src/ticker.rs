//! The drain's periodic wake-up: a kernel timer (timerfd) under tokio's reactor.
//!
//! A wake-up costs 35–60 µs of CPU on the machines measured (docs/PERFORMANCE.md), so the agent
//! counts them. A tokio interval of 50 ms woke the thread up to three times per tick: the
//! tick itself; once more at each 64 ms boundary of tokio's timer wheel a deadline lies past
//! (to move the timer down a level of the wheel); and an immediate turn of the reactor when
//! the re-armed timer was due before the wheel's next planned wake-up. A timerfd is due in the
//! kernel: epoll returns when it fires and sleeps without a timeout in between.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, RawFd},
    time::Duration,
};

use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::io::{Interest, unix::AsyncFd};

pub struct Ticker {
    timer: AsyncFd<Timer>,
    /// Set for good if the timer ever fails to read: tokio's own timer takes over.
    fallback: Option<tokio::time::Interval>,
    period: Duration,
}

/// The timerfd as tokio's reactor takes it.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Ticker {
    /// Fires every `period`, the first time one period from now.
    pub fn new(period: Duration) -> io::Result<Self> {
        let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
        timer.set(Expiration::Interval(TimeSpec::from(period)), TimerSetTimeFlags::empty())?;
        // SAFETY: the TimerFd owns its fd and keeps it open for as long as the AsyncFd (which
        // owns the TimerFd) is registered; nothing else closes it.
        let timer = unsafe { AsyncFd::register_with_interest(Timer(timer), Interest::READABLE) }.map_err(io::Error::from)?;
        Ok(Self { timer, fallback: None, period })
    }

    /// Waits for the next expiry; expiries missed while the thread was busy count as one.
    pub async fn tick(&mut self) {
        if let Some(fallback) = &mut self.fallback {
            fallback.tick().await;
            return;
        }
        loop {
            let Ok(mut ready) = self.timer.readable_mut().await else { break };
            match ready.try_io(|timer| timer.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(Ok(())) => {
                    // Read: nothing is due until the next expiry, which sets it readable again.
                    ready.clear_ready();
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the drain's timer failed; tokio's timer replaces it");
                    break;
                }
                // Not due yet: the readiness is cleared, wait again.
                Err(_would_block) => {}
            }
        }
        let mut fallback = tokio::time::interval(self.period);
        fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Its first tick is immediate: that is this one.
        fallback.tick().await;
        self.fallback = Some(fallback);
    }
}
