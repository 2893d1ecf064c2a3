//! Jittered exponential backoff shared by the delivery services.

use std::time::Duration;

use crate::config::RetrySettings;

#[derive(Debug, Clone)]
pub struct Backoff {
    settings: RetrySettings,
    attempt: u32,
}

impl Backoff {
    pub fn new(settings: &RetrySettings) -> Self {
        Self { settings: settings.clone(), attempt: 0 }
    }

    /// Attempts made so far after the first.
    pub fn retries(&self) -> u32 {
        self.attempt
    }

    /// The wait before the next attempt, or `None` when the retries are used up.
    /// "Full jitter": uniformly random in [base/2, base], base doubling up to the maximum.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.attempt >= self.settings.max_retries {
            return None;
        }
        let exp = self.settings.initial_backoff_ms.saturating_mul(1u64 << self.attempt.min(20));
        let base = exp.min(self.settings.max_backoff_ms).max(1);
        self.attempt += 1;
        let jittered = base / 2 + fastrand::u64(0..=base - base / 2);
        Some(Duration::from_millis(jittered))
    }

    /// A server-given wait (`Retry-After`), capped, counting as an attempt.
    pub fn server_delay(&mut self, wait: Duration) -> Option<Duration> {
        if self.attempt >= self.settings.max_retries {
            return None;
        }
        self.attempt += 1;
        Some(wait.min(Duration::from_millis(self.settings.max_retry_after_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_and_stops() {
        let s = RetrySettings { max_retries: 4, initial_backoff_ms: 100, max_backoff_ms: 300, max_retry_after_ms: 1000 };
        let mut b = Backoff::new(&s);
        let d: Vec<u64> = std::iter::from_fn(|| b.next_delay()).map(|d| d.as_millis() as u64).collect();
        assert_eq!(d.len(), 4);
        assert!((50..=100).contains(&d[0]), "{d:?}");
        assert!((100..=200).contains(&d[1]), "{d:?}");
        assert!((150..=300).contains(&d[2]) && (150..=300).contains(&d[3]), "{d:?}");
        let mut b = Backoff::new(&s);
        assert_eq!(b.server_delay(Duration::from_secs(5)), Some(Duration::from_millis(1000)));
    }
}
