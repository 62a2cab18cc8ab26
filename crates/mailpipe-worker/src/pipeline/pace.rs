//! Stage 2: may it go now? Not before its `send_at`, nor while its tenant's marketing stream is
//! paused (the reputation breaker). Then the rate limit of the recipient's domain or
//! provider group allows a send, or the job waits: a short wait is slept
//! off, a long one parks the job on the retry schedule so that it holds no
//! concurrency slot (and no partition) meanwhile. Last, a domain warming up
//! must have room left in its cap to the provider for the window, or the
//! job is parked for a later one.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mailpipe_core::{Category, SendJob, now_ms};
use mailpipe_store::Claim;
use tokio_util::sync::CancellationToken;

use super::{Outcome, Pipeline, Record, Step, durably, ended};

impl Pipeline {
    /// The rate limit comes before rendering: a parked job is rendered when
    /// it finally goes. Waiters take successive slots of the key's rate, so
    /// that a short wait is slept off but a backlog is parked.
    pub(super) async fn pace(
        &self,
        rec: &Record<'_>,
        job: &SendJob,
        claim: &Claim,
        shutdown: &CancellationToken,
    ) -> Step<()> {
        // Scheduled for later: held on the retry schedule until then, like
        // a job the rate limit parks; when it comes back it is due.
        if let Some(at) = job.send_at {
            let now = time::OffsetDateTime::now_utc();
            if let Some(e) = job.schedule_error(now) {
                return ended(self.reject(rec, Some(job), e.reason(), &e.to_string(), shutdown).await?);
            }
            let wait = at - now;
            if wait.is_positive() {
                metrics::counter!("mailpipe_jobs_held_total", "why" => "scheduled").increment(1);
                let wait = Duration::try_from(wait).unwrap_or(Duration::MAX);
                return ended(self.park(rec, job, claim, wait, shutdown).await?);
            }
        }
        // The provider, by MX: a company domain hosted by Google is paced
        // as Google, with Google's limit, and counted with Google.
        let domain = job.to.email.domain();
        let group = match &self.providers {
            Some(p) => p.group(domain).await,
            None => self.group(domain),
        };
        // A paused marketing stream (the tenant's, that of the domain it
        // sends as, or that of the recipient's provider): held on the
        // retry schedule, never dropped; transactional mail, other domains,
        // other providers and other tenants go on.
        if job.category == Category::Marketing
            && let Some((streams, recheck)) = &self.streams
            && streams.is_paused(&job.tenant_id, job.from.email.domain(), group.as_deref())
        {
            metrics::counter!("mailpipe_jobs_held_total", "why" => "stream_paused").increment(1);
            return ended(self.park(rec, job, claim, *recheck, shutdown).await?);
        }
        // The warm-up cap before the rate limits: a job parked over its
        // domain's cap must not spend a token of the recipient's provider,
        // which every tenant shares (a tenant's backlog of a million parked
        // newsletters would hold up everyone's Gmail traffic). A job the
        // throttle then parks has used a place of the cap without going:
        // the cap errs low, never high.
        let sender = job.from.email.domain();
        if let Some(w) = &self.warmup
            && self.senders.warming(sender)
        {
            let provider = group.as_deref().unwrap_or("other");
            let gate = durably("warmup", shutdown, || async {
                Ok(w.admit(&self.store, sender, provider, job.category, now_ms()).await?)
            })
            .await?;
            if let crate::warmup::Gate::ParkUntil(due) = gate {
                metrics::counter!("mailpipe_jobs_held_total", "why" => "warmup").increment(1);
                let wait = Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0));
                return ended(self.park(rec, job, claim, wait, shutdown).await?);
            }
        }
        if let Some(t) = &self.throttle {
            let key = t.key_for(domain, group.as_deref());
            while let Err(wait) = t.check(key) {
                let delay = self.reserve_slot(t.key(key), t.interval(key), wait);
                if delay > self.cfg.park_after {
                    return ended(self.park(rec, job, claim, delay, shutdown).await?);
                }
                metrics::counter!("mailpipe_throttle_waits_total").increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => return ControlFlow::Break(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Takes the next free slot of a rate-limit key, at least `wait` from
    /// now, and returns how far away it is. Successive callers get slots one
    /// `interval` apart, so that waiting jobs queue up at the key's rate.
    fn reserve_slot(&self, key: &str, interval: Option<Duration>, wait: Duration) -> Duration {
        let now = tokio::time::Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() > 10_000 {
            slots.retain(|_, t| *t > now);
        }
        let slot = slots.entry(key.to_owned()).or_insert(now);
        let at = (*slot).max(now + wait);
        *slot = at + interval.unwrap_or_default();
        at - now
    }

    /// Parks a job whose rate limit is exhausted on the retry schedule, due
    /// after `delay`.
    async fn park(
        &self,
        rec: &Record<'_>,
        job: &SendJob,
        claim: &Claim,
        delay: Duration,
        shutdown: &CancellationToken,
    ) -> Step<Outcome> {
        let due = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        // Fenced to the row as the claim read it, as a deferral after an
        // attempt is: another attempt may have sent the job meanwhile.
        let parked = durably("park", shutdown, || async {
            Ok(self
                .store
                .defer_attempt(
                    job.tenant_id.as_str(),
                    job.job_id.as_str(),
                    rec.shard,
                    claim.attempts.max(0) as u32,
                    None,
                    due,
                    rec.payload,
                    None,
                    Some(&[(claim.status, claim.attempts)]),
                )
                .await?)
        })
        .await?;
        if !parked {
            return self.after_other_attempt(rec, job, shutdown).await;
        }
        metrics::counter!("mailpipe_jobs_parked_total").increment(1);
        self.counters.parked.fetch_add(1, Ordering::Relaxed);
        ControlFlow::Continue(Outcome::Parked)
    }
}
