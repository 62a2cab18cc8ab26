//! Exponential back-off, the one shape of every retry in mailpipe: a store
//! or broker call retried while a job holds its permit, the tracker's
//! shipper waiting out an outage, a deferred job's next attempt.

use std::time::Duration;

/// Delays that start at `base`, double per step and stop growing at `max`.
///
/// A loop takes [`Backoff::next_delay`] after each failure and calls
/// [`Backoff::reset`] after a success; a schedule that keeps only an attempt
/// count asks [`Backoff::jittered`] for that attempt's delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, next: base }
    }

    /// The delay to wait now; the one after it is twice as long, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let now = self.next.min(self.max);
        self.next = now.saturating_mul(2).min(self.max);
        now
    }

    /// Back to `base`, after a success.
    pub fn reset(&mut self) {
        self.next = self.base;
    }

    /// The delay before attempt `attempt` + 1 (the first retry is attempt 1:
    /// `base`), capped, then spread by ±25% so that jobs that failed together
    /// do not all come back together.
    pub fn jittered(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max);
        // Cheap jitter from the clock: enough to spread retries, no RNG needed.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
        capped.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_stop_at_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let steps: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(steps, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn jittered_delays_grow_with_the_attempt_and_are_capped() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let d1 = b.jittered(1);
        assert!(d1 >= Duration::from_millis(750) && d1 <= Duration::from_millis(1250), "{d1:?}");
        let d4 = b.jittered(4);
        assert!(d4 >= Duration::from_secs(6) && d4 <= Duration::from_secs(10), "{d4:?}");
        assert!(b.jittered(30) <= Duration::from_secs(75));
    }
}
