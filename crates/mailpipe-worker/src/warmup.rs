//! The warm-up gate (docs/deliverability.md, "Warm-up"): a domain that is
//! warming up sends to each provider group at most its ramp's cap per
//! window. Over the cap, marketing is parked for a later window, never
//! dropped; transactional mail counts against the cap and goes past it,
//! up to [`TRANSACTIONAL_HEADROOM`] times the cap, then waits as marketing
//! does. When a window ends, the ramp moves one step on if the window used
//! at least half its cap and the domain's complaint and bounce figures are
//! healthy, and holds otherwise. The counts are the store's, so workers together keep the cap.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mailpipe_core::warmup::HEALTH_WINDOWS;
#[cfg(doc)]
use mailpipe_core::warmup::TRANSACTIONAL_HEADROOM;
use mailpipe_core::{Category, WarmupSettings};
use mailpipe_store::{Store, StoreError, Take};

use crate::breaker::{BreakerSettings, Judgement, judge};

/// What the gate says of one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// Over the cap: park the job until this time (unix ms).
    ParkUntil(i64),
}

/// How long a pair found warm is taken for warm without asking the store
/// (a warm-up started again is seen after this long).
const WARM_FOR: Duration = Duration::from_secs(60);

pub struct Warmup {
    settings: WarmupSettings,
    /// The thresholds a window's figures are judged on: the breaker's, its
    /// warning levels holding the ramp, from warm-up's minimum volume.
    health: BreakerSettings,
    warm: Mutex<HashMap<(String, String), Instant>>,
}

impl Warmup {
    pub fn new(settings: WarmupSettings, breaker: &BreakerSettings) -> Self {
        let health = BreakerSettings { min_delivered: settings.min_delivered, ..breaker.clone() };
        Self { settings, health, warm: Mutex::new(HashMap::new()) }
    }

    pub fn settings(&self) -> &WarmupSettings {
        &self.settings
    }

    /// One send of `category` as `domain` (warming up) to `provider`, at
    /// `now` (unix ms).
    pub async fn admit(
        &self,
        store: &Store,
        domain: &str,
        provider: &str,
        category: Category,
        now: i64,
    ) -> Result<Gate, StoreError> {
        let key = (domain.to_ascii_lowercase(), provider.to_owned());
        if self.known_warm(&key) {
            return Ok(Gate::Go);
        }
        let (domain, provider) = (key.0.as_str(), key.1.as_str());
        let force = category == Category::Transactional;
        let mut window = self.settings.window_start(now);
        let mut begun = false;
        // A few rounds: each either decides or changes the row (begins or
        // rolls it over), and a change by another worker only sends us
        // round again.
        for _ in 0..6 {
            match store.warmup_take(domain, provider, window, force, now).await? {
                Take::Taken { warm } => {
                    if warm {
                        self.remember_warm(key.clone());
                    }
                    return Ok(Gate::Go);
                }
                Take::Over { step, k } => {
                    return Ok(Gate::ParkUntil(self.settings.park_until(window, step, k)));
                }
                // Begun already, and still missing: the domain's warm-up
                // was ended meanwhile.
                Take::Missing if begun => return Ok(Gate::Go),
                Take::Missing => {
                    store.warmup_begin(domain, provider, window, self.settings.cap(0), now).await?;
                    begun = true;
                }
                Take::Stale(row) if row.cap.is_none() => {
                    self.remember_warm(key.clone());
                    return Ok(Gate::Go);
                }
                // Another worker's clock is ahead: count in its window.
                Take::Stale(row) if row.window_start > window => window = row.window_start,
                Take::Stale(row) if row.window_start == window => {}
                Take::Stale(row) => {
                    let unhealthy = if row.used > 0 {
                        self.unhealthy(store, domain, row.window_start).await?
                    } else {
                        None
                    };
                    let (step, held) = self.settings.next_step(row.step, row.used, unhealthy.as_deref());
                    if let Some(why) = &held {
                        metrics::counter!("mailpipe_warmup_holds_total").increment(1);
                        tracing::warn!(domain, provider, step, %why, "warm-up: the ramp holds");
                    }
                    let cap = self.settings.cap(step);
                    store
                        .warmup_roll(
                            domain,
                            provider,
                            row.window_start,
                            window,
                            step,
                            cap,
                            held.as_deref(),
                            now,
                        )
                        .await?;
                }
            }
        }
        // Rows that kept changing under us: wait a moment rather than risk
        // passing the cap.
        Ok(Gate::ParkUntil(now + 1_000))
    }

    /// Why `domain`'s figures hold its ramp, if they do: since the start of
    /// the window that ended (`ended`), or of the six before it, at or
    /// above a warning level. From the window's start, not a window back
    /// from now: the first send after a quiet spell must not judge the
    /// window on an empty stretch of the next.
    async fn unhealthy(&self, store: &Store, domain: &str, ended: i64) -> Result<Option<String>, StoreError> {
        let w = self.settings.window_ms();
        let week = w.saturating_mul(HEALTH_WINDOWS - 1);
        for (label, since) in [("the last window", ended), ("the last 7 windows", ended.saturating_sub(week))]
        {
            let figures = store.domain_figures(domain, since).await?;
            match judge(&figures, label, &self.health) {
                Judgement::Healthy => {}
                Judgement::Warn(why) | Judgement::Pause(why) => return Ok(Some(why)),
            }
        }
        Ok(None)
    }

    fn known_warm(&self, key: &(String, String)) -> bool {
        let warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        warm.get(key).is_some_and(|until| *until > Instant::now())
    }

    fn remember_warm(&self, key: (String, String)) {
        let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        if warm.len() >= 100_000 {
            let now = Instant::now();
            warm.retain(|_, until| *until > now);
        }
        warm.insert(key, Instant::now() + WARM_FOR);
    }
}
