//! The reputation circuit breaker (docs/deliverability.md): per tenant, per
//! sending domain and per mailbox provider, over rolling 24-hour and 7-day windows, the
//! complaint rate (complaints over delivered), the hard-bounce rate and the
//! unknown-user rate, acting only above a minimum volume. Above a pause
//! threshold the stream's marketing is paused: its marketing jobs wait on
//! the retry schedule (never dropped), its transactional mail keeps
//! flowing, other tenants (and the tenant's other domains or providers,
//! when only one domain's or provider's stream is paused) are untouched, until an operator resumes it
//! (`mailpipe tenant resume`). Every worker evaluates; the store decides
//! which one saw the pause first, and only that one records the
//! `stream_paused` event.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mailpipe_core::{Event, EventType, TenantId, now_ms};
use mailpipe_queue::kafka::KafkaEvents;
use mailpipe_store::{Store, StreamFigures, StreamKey};
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
    /// Unknown users over delivered: a list bought or gone stale.
    pub unknown_user_warn: f64,
    pub unknown_user_pause: f64,
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
        rate("unknown_user_warn", self.unknown_user_warn, &mut out);
        rate("unknown_user_pause", self.unknown_user_pause, &mut out);
        if self.complaint_warn > self.complaint_pause
            || self.hard_bounce_warn > self.hard_bounce_pause
            || self.unknown_user_warn > self.unknown_user_pause
        {
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
    let say = |what: &str, r: f64, limit: f64| {
        format!(
            "{what} rate {:.2}% over {window} ({} delivered; limit {:.2}%)",
            r * 100.0,
            f.delivered,
            limit * 100.0
        )
    };
    // Worst first: a pause on any figure, then a warning.
    let figures = [
        ("complaint", rate(f.complaints), s.complaint_warn, s.complaint_pause),
        ("hard-bounce", rate(f.hard_bounces), s.hard_bounce_warn, s.hard_bounce_pause),
        ("unknown-user", rate(f.unknown_users), s.unknown_user_warn, s.unknown_user_pause),
    ];
    if let Some((what, r, _, limit)) = figures.iter().find(|(_, r, _, pause)| r >= pause) {
        return Judgement::Pause(say(what, *r, *limit));
    }
    if let Some((what, r, limit, _)) = figures.iter().find(|(_, r, warn, _)| r >= warn) {
        return Judgement::Warn(say(what, *r, *limit));
    }
    Judgement::Healthy
}

/// The paused marketing streams, as this worker last read them.
#[derive(Debug, Default)]
pub struct Streams {
    paused: RwLock<HashSet<StreamKey>>,
}

impl Streams {
    /// Whether marketing `tenant` sends as `domain` to `provider`'s users
    /// is held: its whole stream, that domain's or that provider's is
    /// paused.
    pub fn is_paused(&self, tenant: &TenantId, domain: &str, provider: Option<&str>) -> bool {
        let paused = self.paused.read().unwrap_or_else(|p| p.into_inner());
        if paused.is_empty() {
            return false;
        }
        paused.contains(&StreamKey::tenant(tenant))
            || paused.contains(&StreamKey::domain(tenant, domain))
            || provider.is_some_and(|p| paused.contains(&StreamKey::provider(tenant, p)))
    }

    fn hold(&self, stream: StreamKey) {
        self.paused.write().unwrap_or_else(|p| p.into_inner()).insert(stream);
    }

    fn set(&self, paused: HashSet<StreamKey>) {
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
    // A tenant whose whole stream is paused has every domain's and
    // provider's held: none of them is paused on top, for the same figures.
    let mut tenants_paused: HashSet<TenantId> =
        store.paused_streams().await?.into_iter().filter(StreamKey::is_whole).map(|k| k.tenant).collect();
    for (window, len) in WINDOWS {
        // Tenants come before their domains.
        for (stream, figures) in store.stream_figures(now - len).await? {
            if !stream.is_whole() && tenants_paused.contains(&stream.tenant) {
                continue;
            }
            match judge(&figures, window, s) {
                Judgement::Healthy => {}
                Judgement::Warn(why) => {
                    metrics::counter!("mailpipe_stream_warnings_total").increment(1);
                    warn!(%stream, %why, "reputation: close to the pause threshold");
                }
                Judgement::Pause(why) => {
                    if stream.is_whole() {
                        tenants_paused.insert(stream.tenant.clone());
                    }
                    // Held here first, then recorded: once the store says
                    // paused, this worker holds the stream already.
                    streams.hold(stream.clone());
                    if store.pause_stream(&stream, &why, now).await? {
                        metrics::counter!("mailpipe_stream_pauses_total").increment(1);
                        warn!(%stream, %why, "reputation: marketing stream paused");
                        let e = stream_event(EventType::StreamPaused, &stream, now, Some(why));
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
    let paused: HashSet<StreamKey> = store.paused_streams().await?.into_iter().collect();
    metrics::gauge!("mailpipe_streams_paused").set(paused.len() as f64);
    streams.set(paused);
    Ok(())
}

/// The `stream_paused` or `stream_resumed` event of `stream` at `now`: the
/// sending domain or the provider on the event when the stream is one's.
pub fn stream_event(kind: EventType, stream: &StreamKey, now: i64, reason: Option<String>) -> Event {
    let discriminator = format!(
        "{}/{}@{now}",
        stream.domain.as_deref().unwrap_or(""),
        stream.provider.as_deref().unwrap_or("")
    );
    let mut e = Event::for_tenant(kind, &stream.tenant, &discriminator);
    e.sender_domain.clone_from(&stream.domain);
    e.provider.clone_from(&stream.provider);
    e.reason = reason;
    e
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
            unknown_user_warn: 0.01,
            unknown_user_pause: 0.03,
            recheck: Duration::from_secs(300),
        }
    }

    fn f(delivered: i64, complaints: i64, hard_bounces: i64) -> StreamFigures {
        StreamFigures { delivered, complaints, hard_bounces, unknown_users: 0 }
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
        let stale = StreamFigures { unknown_users: 300, ..f(10_000, 0, 300) };
        assert!(
            matches!(judge(&stale, "24h", &s), Judgement::Pause(w) if w.contains("unknown-user rate 3.00%")),
            "a stale list pauses before the hard-bounce limit"
        );
        let stale = StreamFigures { unknown_users: 100, ..f(10_000, 0, 100) };
        assert!(matches!(judge(&stale, "24h", &s), Judgement::Warn(w) if w.contains("unknown-user")));
        assert!(
            matches!(judge(&f(10_000, 30, 300), "24h", &s), Judgement::Pause(w) if w.contains("complaint")),
            "a pause on any figure outranks a warning on another"
        );
        assert!(settings().problems().is_empty());
        let bad = BreakerSettings { complaint_pause: 3.0, min_delivered: 0, ..settings() };
        assert_eq!(bad.problems().len(), 2, "{:?}", bad.problems());
    }
}
