//! Warm-up schedules (docs/deliverability.md, "Warm-up"): the arithmetic of
//! a new sending domain's ramp, with no clock of its own. Every function
//! takes `now` (unix ms), so that weeks of a ramp can be run in a test.
//!
//! Per sending domain and provider group, a window (a UTC day by default)
//! lets through at most the ramp's cap for the ramp's current step. A
//! window that used at least half its cap and ended with the domain
//! healthy moves the ramp one step on; one that ended unhealthy holds it
//! where it is; a window that used less (an idle one, or a trickle) neither:
//! the ramp follows the volume a domain has shown it can send well, not the
//! days on the calendar. Past the ramp's last step the pair is warm: no cap.

use std::time::Duration;

/// `[warmup]`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct WarmupSettings {
    /// Whether workers apply the ramps of domains that are warming up.
    pub enabled: bool,
    /// One window of the ramp: a day, by default, starting at 00:00 UTC.
    #[serde(rename = "window_secs", deserialize_with = "crate::units::secs")]
    pub window: Duration,
    /// The cap of each step, one step per window with mail; past the last,
    /// no cap.
    pub ramp: Vec<i64>,
    /// Delivered messages (over the last seven windows) the domain needs
    /// before its complaint and bounce rates can hold the ramp.
    pub min_delivered: i64,
}

/// The default curve: a few dozen on the first day, full volume after four
/// weeks of sending, roughly one and a half times the day before.
pub const DEFAULT_RAMP: [i64; 28] = [
    50, 75, 100, 150, 200, 300, 450, 650, 1_000, 1_500, 2_000, 3_000, 4_500, 6_500, 10_000, 15_000, 20_000,
    30_000, 45_000, 65_000, 100_000, 150_000, 200_000, 300_000, 450_000, 650_000, 1_000_000, 1_500_000,
];

impl Default for WarmupSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(86_400),
            ramp: DEFAULT_RAMP.to_vec(),
            min_delivered: 50,
        }
    }
}

/// How many windows of figures the health check reads.
pub const HEALTH_WINDOWS: i64 = 7;

/// Transactional mail goes past the cap, counted, up to this many times
/// the cap: receipts are not held for an ordinary day's overflow, but a
/// flood labelled transactional does not skip the ramp.
pub const TRANSACTIONAL_HEADROOM: i64 = 2;

impl WarmupSettings {
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.ramp.is_empty() {
            out.push("warmup.ramp: at least one step".into());
        }
        if self.ramp.iter().any(|c| *c < 1) {
            out.push("warmup.ramp: every cap at least 1".into());
        }
        if self.ramp.windows(2).any(|w| w[1] < w[0]) {
            out.push("warmup.ramp: caps never go down from one step to the next".into());
        }
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(7 * 86_400) {
            out.push("warmup.window_secs: from 1 to 604800 (a week)".into());
        }
        if self.min_delivered < 1 {
            out.push("warmup.min_delivered: at least 1".into());
        }
        out
    }

    pub fn window_ms(&self) -> i64 {
        i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX).max(1)
    }

    /// The start of the window `now` is in (windows are aligned to the unix
    /// epoch: a day's starts at 00:00 UTC).
    pub fn window_start(&self, now: i64) -> i64 {
        now - now.rem_euclid(self.window_ms())
    }

    /// The cap of `step`; `None` past the ramp: warm, no cap.
    pub fn cap(&self, step: i64) -> Option<i64> {
        usize::try_from(step).ok().and_then(|s| self.ramp.get(s)).copied()
    }

    /// The steps of the ramp.
    pub fn steps(&self) -> i64 {
        self.ramp.len() as i64
    }

    /// Where the ramp goes when the window it was in is over: one step on if
    /// the window used at least half its cap and the domain is healthy
    /// (`unhealthy` is `None`), else where it was; with the reason it held,
    /// if it held on health. A domain that sends a trickle each day does not
    /// earn a big one's cap by waiting.
    pub fn next_step(&self, step: i64, used: i64, unhealthy: Option<&str>) -> (i64, Option<String>) {
        let Some(cap) = self.cap(step) else {
            return (step, None);
        };
        match (used.saturating_mul(2) >= cap, unhealthy) {
            (false, _) => (step, None),
            (true, Some(why)) => (step, Some(why.to_owned())),
            (true, None) => (step + 1, None),
        }
    }

    /// When the `k`th job (from 0) parked over the cap of `step` in the
    /// window starting at `window_start` is next due: in the first later
    /// window whose cap (the ramp going on as planned) still has room for
    /// it, spread evenly over that window by its place in the queue, so
    /// that a backlog comes back at the pace it can go, not all at once.
    /// If the ramp holds instead, the job is parked again: never dropped.
    pub fn park_until(&self, window_start: i64, step: i64, k: i64) -> i64 {
        let w = self.window_ms();
        let mut before = 0i64;
        let mut d = 1i64;
        loop {
            let start = window_start.saturating_add(d.saturating_mul(w));
            let (place, cap) = match self.cap(step.saturating_add(d)) {
                Some(cap) if k < before.saturating_add(cap.max(1)) => (k - before, cap.max(1)),
                Some(cap) => {
                    before = before.saturating_add(cap.max(1));
                    d += 1;
                    continue;
                }
                // Past the ramp: no cap, but still spread, at the last
                // step's pace, rather than all due at one instant.
                None => {
                    let last = self.ramp.last().copied().unwrap_or(1).max(1);
                    ((k - before) % last, last)
                }
            };
            // (w / cap) * place, without overflow for large caps.
            let offset = (i128::from(w) * i128::from(place) / i128::from(cap)) as i64;
            return start.saturating_add(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn short(ramp: &[i64]) -> WarmupSettings {
        WarmupSettings { ramp: ramp.to_vec(), ..WarmupSettings::default() }
    }

    #[test]
    fn the_default_ramp_goes_from_dozens_to_full_volume_in_four_weeks() {
        let s = WarmupSettings::default();
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        assert_eq!(s.cap(0), Some(50));
        assert_eq!(s.cap(27), Some(1_500_000));
        assert_eq!(s.cap(28), None, "warm past the last step");
        for w in s.ramp.windows(2) {
            let growth = w[1] as f64 / w[0] as f64;
            assert!((1.3..=1.55).contains(&growth), "{w:?} grows by {growth}");
        }
    }

    #[test]
    fn windows_are_utc_days() {
        let s = WarmupSettings::default();
        let noon = 20_000 * DAY + DAY / 2;
        assert_eq!(s.window_start(noon), 20_000 * DAY);
        assert_eq!(s.window_start(20_000 * DAY), 20_000 * DAY);
        assert_eq!(s.window_start(-1), -DAY);
    }

    #[test]
    fn the_ramp_moves_on_a_healthy_day_that_used_half_its_cap_and_holds_otherwise() {
        let s = short(&[10, 20, 40]);
        assert_eq!(s.next_step(0, 10, None), (1, None));
        assert_eq!(s.next_step(0, 5, None), (1, None), "half the cap is a day of sending");
        assert_eq!(s.next_step(0, 4, None), (0, None), "a trickle is not");
        assert_eq!(s.next_step(0, 1, None), (0, None), "one message a day never warms a domain");
        assert_eq!(s.next_step(0, 0, None), (0, None), "an idle window is not a day of sending");
        assert_eq!(s.next_step(1, 10, Some("complaint rate 1%")), (1, Some("complaint rate 1%".into())));
        assert_eq!(s.next_step(2, 40, None), (3, None));
        assert_eq!(s.cap(3), None);
        assert_eq!(s.next_step(3, 1_000, Some("x")), (3, None), "a warm pair stays warm");
    }

    #[test]
    fn parked_jobs_are_spread_over_the_windows_that_have_room() {
        let s = short(&[10, 20, 40]);
        let start = 100 * DAY;
        // Today (step 0, cap 10) is full: tomorrow has 20 places, each
        // 1/20 of a day apart; the 21st waits for the day after (40).
        assert_eq!(s.park_until(start, 0, 0), start + DAY);
        assert_eq!(s.park_until(start, 0, 1), start + DAY + DAY / 20);
        assert_eq!(s.park_until(start, 0, 19), start + DAY + 19 * DAY / 20);
        assert_eq!(s.park_until(start, 0, 20), start + 2 * DAY);
        assert_eq!(s.park_until(start, 0, 21), start + 2 * DAY + DAY / 40);
        // Past 20 + 40, the ramp is over: no cap, spread over that window
        // at the last step's pace (40 a day), never past it.
        assert_eq!(s.park_until(start, 0, 60), start + 3 * DAY);
        assert_eq!(s.park_until(start, 0, 61), start + 3 * DAY + DAY / 40);
        assert_eq!(s.park_until(start, 0, 100), start + 3 * DAY);
        for k in [60, 99, 1_000_000, i64::MAX] {
            let due = s.park_until(start, 0, k);
            assert!((start + 3 * DAY..start + 4 * DAY).contains(&due), "{k}: {due}");
        }
        // No overflow however large the caps.
        let huge = short(&[i64::MAX, i64::MAX]);
        assert!(huge.park_until(start, 0, i64::MAX) >= start + DAY);
        // Nothing parked is ever due in the window it was parked in.
        for k in 0..200 {
            assert!(s.park_until(start, 1, k) >= start + DAY);
        }
    }

    /// The default curve with every window used to its cap: a few dozen on
    /// day 1, each day's cap the next, no cap from day 29.
    #[test]
    fn the_default_ramp_is_warm_after_four_weeks_of_full_healthy_days() {
        let s = WarmupSettings::default();
        let (mut step, mut caps) = (0, Vec::new());
        for _ in 0..30 {
            caps.push(s.cap(step));
            step = s.next_step(step, s.cap(step).unwrap_or(0), None).0;
        }
        assert_eq!(caps[0], Some(50));
        assert_eq!(caps[6], Some(450), "a week in");
        assert_eq!(caps[13], Some(6_500), "two weeks in");
        assert_eq!(caps[27], Some(1_500_000));
        assert_eq!(caps[28], None, "warm from day 29");
    }

    #[test]
    fn bad_settings_are_named() {
        let bad =
            WarmupSettings { ramp: vec![10, 5, 0], min_delivered: 0, window: Duration::ZERO, enabled: true };
        let p = bad.problems();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(short(&[]).problems().iter().any(|p| p.contains("at least one step")));
    }
}
