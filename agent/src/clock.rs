//! Kernel boot-time nanoseconds to wall-clock time.
//!
//! Records carry `bpf_ktime_get_boot_ns()` (CLOCK_BOOTTIME: monotonic, counts suspend). The
//! wall-clock offset is sampled at start and on every heartbeat, so an NTP step moves later
//! events but never reorders one agent's records.

use nix::time::{ClockId, clock_gettime};

#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// CLOCK_REALTIME - CLOCK_BOOTTIME, in nanoseconds.
    offset_ns: i128,
}

fn nanos(id: ClockId) -> i128 {
    match clock_gettime(id) {
        Ok(t) => i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()),
        Err(_) => 0,
    }
}

/// CLOCK_BOOTTIME now, in nanoseconds: the clock the programs stamp records with.
pub fn boot_now_ns() -> u64 {
    u64::try_from(nanos(ClockId::CLOCK_BOOTTIME)).unwrap_or(0)
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl BootClock {
    pub fn sample() -> Self {
        // Read realtime between two boottime reads and take the midpoint, halving the error
        // a preemption between the reads would cause.
        let b0 = nanos(ClockId::CLOCK_BOOTTIME);
        let real = nanos(ClockId::CLOCK_REALTIME);
        let b1 = nanos(ClockId::CLOCK_BOOTTIME);
        Self { offset_ns: real - (b0 + b1) / 2 }
    }

    #[cfg(test)]
    pub fn from_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Nanoseconds since the Unix epoch, saturating at the i64 range.
    pub fn to_unix_nanos(self, boot_ns: u64) -> i64 {
        let t = i128::from(boot_ns) + self.offset_ns;
        i64::try_from(t).unwrap_or(if t < 0 { i64::MIN } else { i64::MAX })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_adds_offset_and_saturates() {
        let c = BootClock::from_offset(1_700_000_000_000_000_000);
        assert_eq!(c.to_unix_nanos(5), 1_700_000_000_000_000_005);
        assert_eq!(BootClock::from_offset(i128::from(i64::MAX)).to_unix_nanos(10), i64::MAX);
    }

    #[test]
    fn sampled_offset_matches_system_time() {
        let c = BootClock::sample();
        let now_wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
        let derived = c.to_unix_nanos(boot_now_ns());
        assert!((derived - now_wall).abs() < 50_000_000, "derived {derived} vs wall {now_wall}");
    }
}
