//! The reputation circuit breaker (docs/deliverability.md): per tenant,
//! over rolling 24-hour and 7-day windows, the complaint rate (complaints
//! over delivered) and the hard-bounce rate, acting only above a minimum
//! volume. Above the pause thresholds the tenant's marketing stream is
//! paused: its marketing jobs wait on the retry schedule (never dropped),
//! its transactional mail keeps flowing, other tenants are untouched, until
//! an operator resumes it (`mailpipe tenant resume`). Every worker
//! evaluates; the store decides which one saw the pause first, and only
//! that one records the `stream_paused` event.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mailpipe_core::{Event, EventType, TenantId, now_ms};
use mailpipe_queue::kafka::KafkaEvents;
use mailpipe_store::{Store, StreamFigures};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// `[breaker]`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BreakerSettings {
    pub enabled: bool,
    /// How often each worker reads the figures and the paused streams.
    #[serde(rename = "evaluate_every_secs", deserialize_with = "mailpipe_core::units::secs")]
    pub evaluate_every: Duration,
    /// Delivered messages a window needs before its rates count.
    pub min_delivered: i64,
    pub complaint_warn: f64,
    pub complaint_pause: f64,
    pub hard_bounce_warn: f64,
    pub hard_bounce_pause: f64,
    /// How long a held marketing job of a paused stream waits on the retry
    /// schedule before it is looked at again.
    #[serde(rename = "recheck_secs", deserialize_with = "mailpipe_core::units::secs")]
    pub recheck: Duration,
}

impl BreakerSettings {
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let rate = |k: &str, v: f64, out: &mut Vec<String>| {
            if !(0.0 < v && v < 1.0) {
                out.push(format!("breaker.{k}: a fraction between 0 and 1 (0.003 is 0.3%)"));
            }
        };
        rate("complaint_warn", self.complaint_warn, &mut out);
        rate("complaint_pause", self.complaint_pause, &mut out);
        rate("hard_bounce_warn", self.hard_bounce_warn, &mut out);
        rate("hard_bounce_pause", self.hard_bounce_pause, &mut out);
        if self.complaint_warn > self.complaint_pause || self.hard_bounce_warn > self.hard_bounce_pause {
            out.push("breaker: a warn threshold is above its pause threshold".into());
        }
        if self.min_delivered < 1 {
            out.push("breaker.min_delivered: at least 1".into());
        }
        if self.evaluate_every.is_zero() || self.recheck.is_zero() {
            out.push("breaker.evaluate_every_secs, recheck_secs: at least 1".into());
        }
        out
    }
}

/// What a window's figures say.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    Healthy,
    Warn(String),
    Pause(String),
}

/// The one decision: `f` over `window` against the thresholds. Below the
/// minimum volume nothing is judged.
pub fn judge(f: &StreamFigures, window: &str, s: &BreakerSettings) -> Judgement {
    if f.delivered < s.min_delivered {
        return Judgement::Healthy;
    }
    let rate = |n: i64| n as f64 / f.delivered as f64;
    let (complaints, bounces) = (rate(f.complaints), rate(f.hard_bounces));
    let say = |what: &str, r: f64, limit: f64| {
        format!(
            "{what} rate {:.2}% over {window} ({} delivered; limit {:.2}%)",
            r * 100.0,
            f.delivered,
            limit * 100.0
        )
    };
    if complaints >= s.complaint_pause {
        Judgement::Pause(say("complaint", complaints, s.complaint_pause))
    } else if bounces >= s.hard_bounce_pause {
        Judgement::Pause(say("hard-bounce", bounces, s.hard_bounce_pause))
    } else if complaints >= s.complaint_warn {
        Judgement::Warn(say("complaint", complaints, s.complaint_warn))
    } else if bounces >= s.hard_bounce_warn {
        Judgement::Warn(say("hard-bounce", bounces, s.hard_bounce_warn))
    } else {
        Judgement::Healthy
    }
}

/// The tenants whose marketing streams are paused, as this worker last
/// read them.
#[derive(Debug, Default)]
pub struct Streams {
    paused: RwLock<HashSet<TenantId>>,
}

impl Streams {
    pub fn is_paused(&self, tenant: &TenantId) -> bool {
        self.paused.read().unwrap_or_else(|p| p.into_inner()).contains(tenant)
    }

    fn set(&self, paused: HashSet<TenantId>) {
        *self.paused.write().unwrap_or_else(|p| p.into_inner()) = paused;
    }
}

/// Windows the breaker reads, longest last.
const WINDOWS: [(&str, i64); 2] = [("24h", 86_400_000), ("7d", 7 * 86_400_000)];

/// One evaluation: pauses what the figures say to pause (recording the
/// event once), then reads which streams are paused.
pub async fn evaluate(
    store: &Store,
    s: &BreakerSettings,
    streams: &Streams,
    events: Option<&KafkaEvents>,
) -> Result<(), mailpipe_store::StoreError> {
    let now = now_ms();
    for (window, len) in WINDOWS {
        for (tenant, figures) in store.stream_figures(now - len).await? {
            match judge(&figures, window, s) {
                Judgement::Healthy => {}
                Judgement::Warn(why) => {
                    metrics::counter!("mailpipe_stream_warnings_total").increment(1);
                    warn!(%tenant, %why, "reputation: close to the pause threshold");
                }
                Judgement::Pause(why) => {
                    if store.pause_stream(&tenant, &why, now).await? {
                        metrics::counter!("mailpipe_stream_pauses_total").increment(1);
                        warn!(%tenant, %why, "reputation: marketing stream paused");
                        let mut e = Event::for_tenant(EventType::StreamPaused, &tenant, &now.to_string());
                        e.reason = Some(why);
                        store.insert_events(std::slice::from_ref(&e)).await?;
                        if let Some(k) = events
                            && let Err(err) = k.publish(std::slice::from_ref(&e)).await
                        {
                            warn!(error = %err, "reputation: the stream_paused event is in the store, not on the topic");
                        }
                    }
                }
            }
        }
    }
    let paused: HashSet<TenantId> = store.paused_streams().await?.into_iter().collect();
    metrics::gauge!("mailpipe_streams_paused").set(paused.len() as f64);
    streams.set(paused);
    Ok(())
}

/// Evaluates every `s.evaluate_every` until `shutdown`.
pub async fn run(
    store: Store,
    s: BreakerSettings,
    streams: Arc<Streams>,
    events: Option<KafkaEvents>,
    shutdown: CancellationToken,
) {
    info!(every_secs = s.evaluate_every.as_secs(), "reputation breaker started");
    loop {
        if let Err(e) = evaluate(&store, &s, &streams, events.as_ref()).await {
            warn!(error = %e, "reputation: cannot evaluate; the last known pauses stay in force");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(s.evaluate_every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            enabled: true,
            evaluate_every: Duration::from_secs(60),
            min_delivered: 1000,
            complaint_warn: 0.001,
            complaint_pause: 0.003,
            hard_bounce_warn: 0.02,
            hard_bounce_pause: 0.05,
            recheck: Duration::from_secs(300),
        }
    }

    fn f(delivered: i64, complaints: i64, hard_bounces: i64) -> StreamFigures {
        StreamFigures { delivered, complaints, hard_bounces }
    }

    #[test]
    fn thresholds_act_only_above_the_minimum_volume() {
        let s = settings();
        assert_eq!(judge(&f(999, 500, 500), "24h", &s), Judgement::Healthy, "too few to judge");
        assert_eq!(judge(&f(10_000, 9, 199), "24h", &s), Judgement::Healthy);
        assert!(
            matches!(judge(&f(10_000, 10, 0), "24h", &s), Judgement::Warn(w) if w.contains("complaint rate 0.10%"))
        );
        assert!(
            matches!(judge(&f(10_000, 30, 0), "7d", &s), Judgement::Pause(w) if w.contains("complaint rate 0.30% over 7d"))
        );
        assert!(
            matches!(judge(&f(10_000, 0, 200), "24h", &s), Judgement::Warn(w) if w.contains("hard-bounce"))
        );
        assert!(
            matches!(judge(&f(10_000, 0, 500), "24h", &s), Judgement::Pause(w) if w.contains("hard-bounce rate 5.00%"))
        );
        assert!(settings().problems().is_empty());
        let bad = BreakerSettings { complaint_pause: 3.0, min_delivered: 0, ..settings() };
        assert_eq!(bad.problems().len(), 2, "{:?}", bad.problems());
    }
}
