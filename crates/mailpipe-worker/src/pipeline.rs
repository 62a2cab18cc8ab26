//! One job, from bytes to a durable outcome.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailpipe_core::{Content, Event, EventType, SendJob, TenantId, now_ms};
use mailpipe_queue::Delivery;
use mailpipe_queue::kafka::KafkaEvents;
use mailpipe_render::Composer;
use mailpipe_smtp::{DeliveryError, Disposition, Envelope, Reply, Throttle, Transport, classify};
use mailpipe_store::{DeadLetter, DueRetry, LedgerStatus, Store, StoreError, SuppressionFilter, Verdict};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::Counters;
use crate::templates::{Lookup, TemplateCache};

/// Where events go besides the store.
pub enum EventOut {
    /// Kafka: events to `mailpipe.events.v1`, rejects to `mailpipe.send.dlq.v1`.
    Kafka(KafkaEvents),
    /// Embedded default: the store is the only record.
    StoreOnly,
}

/// What to do with a job found `sending` on redelivery: its previous attempt
/// died after the SMTP transaction began, so it may have been delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InDoubtPolicy {
    /// Record it as sent (flagged in doubt) and never send again: no
    /// duplicates, at the risk of a lost message. The default.
    AssumeDelivered,
    /// Send again: no loss, at the risk of a duplicate (same Message-ID).
    Retry,
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub in_doubt: InDoubtPolicy,
    /// Delivery attempts before a deferred job fails.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt, with jitter.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// A deferred job older than this fails instead of retrying again.
    pub max_age: Duration,
    /// A job whose rate limit asks it to wait longer than this is parked on
    /// the retry schedule instead, releasing its slot for other domains.
    pub park_after: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            in_doubt: InDoubtPolicy::AssumeDelivered,
            max_attempts: 5,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            max_age: Duration::from_secs(24 * 3600),
            park_after: Duration::from_secs(1),
        }
    }
}

/// The terminal outcome of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Bounced,
    Suppressed,
    Failed,
    DeadLettered,
    /// Finished in an earlier run; its event was re-published.
    Replayed,
    /// Not terminal: deferred after a failed attempt, on the retry schedule.
    Deferred,
    /// Not terminal: its rate limit was exhausted; on the retry schedule
    /// without an attempt.
    Parked,
    /// A redelivered queue record for a job the retry schedule already owns.
    Scheduled,
}

impl Outcome {
    /// Whether the job has ended (as opposed to waiting on the schedule).
    pub fn is_terminal(self) -> bool {
        match self {
            Outcome::Sent
            | Outcome::Bounced
            | Outcome::Suppressed
            | Outcome::Failed
            | Outcome::DeadLettered
            | Outcome::Replayed => true,
            Outcome::Deferred | Outcome::Parked | Outcome::Scheduled => false,
        }
    }
}

/// A record being processed: from the queue, or from the retry schedule.
struct Record<'a> {
    /// Unique per record: `topic/partition/offset` or `retry/tenant/job`.
    source: String,
    key: &'a [u8],
    payload: &'a [u8],
    /// The queue partition the job came from.
    shard: i32,
    retry: bool,
}

pub struct Pipeline {
    store: Store,
    composer: Composer,
    transport: Arc<dyn Transport>,
    events: EventOut,
    cfg: PipelineConfig,
    templates: TemplateCache,
    throttle: Option<Arc<Throttle>>,
    filter: Option<Arc<SuppressionFilter>>,
    known_tenants: Mutex<HashSet<TenantId>>,
    /// Per rate-limit key, the next free slot for a parked job, so that a
    /// backlog is spread over time at the key's rate instead of falling due
    /// all at once.
    slots: Mutex<HashMap<String, tokio::time::Instant>>,
    pub counters: Arc<Counters>,
}

/// A failure of our own infrastructure, retried until it heals or shutdown.
#[derive(Debug, thiserror::Error)]
enum Infra {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] mailpipe_queue::QueueError),
}

/// Retries `op` with capped exponential back-off while `shutdown` has not
/// fired. `None` means shutdown came first; the job is then left
/// unacknowledged and will be redelivered.
async fn durably<T, F, Fut>(what: &'static str, shutdown: &CancellationToken, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Infra>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                metrics::counter!("mailpipe_infra_retries_total", "step" => what).increment(1);
                warn!(step = what, error = %e, retry_in_ms = delay.as_millis() as u64, "infrastructure error; holding the job and retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

impl Pipeline {
    pub fn new(
        store: Store,
        composer: Composer,
        transport: Arc<dyn Transport>,
        events: EventOut,
        cfg: PipelineConfig,
    ) -> Self {
        let limits = composer.limits().clone();
        Self {
            store,
            composer,
            transport,
            events,
            cfg,
            templates: TemplateCache::new(limits, 1024),
            throttle: None,
            filter: None,
            known_tenants: Mutex::new(HashSet::new()),
            slots: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
        }
    }

    /// Paces sends by recipient domain and provider group.
    pub fn with_throttle(mut self, throttle: Arc<Throttle>) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// Answers most suppression checks from memory; see
    /// [`SuppressionFilter`]. The caller keeps it current.
    pub fn with_suppression_filter(mut self, filter: Arc<SuppressionFilter>) -> Self {
        self.filter = Some(filter);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Processes one queue record to a durable outcome (terminal, or on the
    /// retry schedule). Returns `None` only if shutdown interrupted it first;
    /// the record must then stay unacknowledged.
    pub async fn process(&self, d: Delivery, shutdown: &CancellationToken) -> Option<Outcome> {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let rec = Record {
            source: d.id.to_string(),
            key: d.key.as_deref().unwrap_or_default(),
            payload: &d.payload,
            shard: d.id.partition,
            retry: false,
        };
        self.process_record(rec, shutdown).await
    }

    /// Runs a job taken from the retry schedule.
    pub async fn process_retry(&self, r: DueRetry, shutdown: &CancellationToken) -> Option<Outcome> {
        let rec = Record {
            source: format!("retry/{}/{}", r.tenant_id, r.job_id),
            key: &[],
            payload: &r.payload,
            shard: r.shard,
            retry: true,
        };
        self.process_record(rec, shutdown).await
    }

    async fn process_record(&self, rec: Record<'_>, shutdown: &CancellationToken) -> Option<Outcome> {
        let job = match SendJob::from_json(rec.payload) {
            Ok(job) => job,
            Err(e) => return self.reject(&rec, None, e.reason(), &e.to_string(), shutdown).await,
        };
        let span = info_span!("job", tenant = %job.tenant_id, campaign = %job.campaign_id, job = %job.job_id, rcpt_domain = job.to.email.domain(), record = %rec.source);
        self.process_job(&rec, job, shutdown).instrument(span).await
    }

    async fn process_job(
        &self,
        d: &Record<'_>,
        job: SendJob,
        shutdown: &CancellationToken,
    ) -> Option<Outcome> {
        if !self.tenant_known(&job.tenant_id, shutdown).await? {
            return self.reject(d, Some(&job), "unknown_tenant", "tenant is not registered", shutdown).await;
        }
        let claim = durably("claim", shutdown, || async { Ok(self.store.claim_job(&job).await?) }).await?;
        if claim.status.is_terminal() {
            return self.replay(&job, shutdown).await;
        }
        if claim.scheduled && !d.retry {
            // Deferred earlier and acknowledged late (a crash in between):
            // the retry schedule owns the job now.
            debug!("job is on the retry schedule; queue record acknowledged");
            return Some(Outcome::Scheduled);
        }
        if claim.status == LedgerStatus::Sending {
            self.counters.in_doubt.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("mailpipe_jobs_in_doubt_total").increment(1);
            if self.cfg.in_doubt == InDoubtPolicy::AssumeDelivered {
                warn!("previous attempt died mid-transaction; recording as sent (in doubt) per policy");
                let mut ev = self.event(&job, EventType::Sent, "");
                ev.message_id = claim.message_id.clone();
                ev.reason = Some("in_doubt".into());
                return self.finish(&job, LedgerStatus::Sent, None, ev, Outcome::Sent, shutdown).await;
            }
        }

        // Suppression comes before rendering: a suppressed job costs one lookup.
        let rkey = self.composer.recipients().hash(&job.to.email.canonical());
        let rref = rkey.to_hex();
        let tenant = job.tenant_id.as_str();
        let supp = match self.filter.as_ref().map(|f| f.check(&rkey.0)) {
            Some(Verdict::Absent) => None,
            Some(Verdict::Lookup) | None => {
                durably("suppression", shutdown, || async {
                    Ok(self.store.suppression(&rref, tenant, job.category).await?)
                })
                .await?
            }
        };
        if let Some(s) = supp {
            let mut ev = self.event(&job, EventType::Suppressed, "");
            ev.reason = Some(s.reason.clone());
            ev.detail = Some(if s.platform_wide { "platform" } else { "tenant" }.into());
            return self
                .finish(&job, LedgerStatus::Suppressed, None, ev, Outcome::Suppressed, shutdown)
                .await;
        }

        // The rate limit comes before rendering too: a parked job is rendered
        // when it finally goes. Waiters take successive slots of the key's
        // rate, so that a short wait is slept off but a backlog is parked.
        if let Some(t) = &self.throttle {
            let domain = job.to.email.domain();
            while let Err(wait) = t.check(domain) {
                let delay = self.reserve_slot(t.key(domain), t.interval(domain), wait);
                if delay > self.cfg.park_after {
                    return self.park(d, &job, claim.attempts.max(0) as u32, delay, shutdown).await;
                }
                metrics::counter!("mailpipe_throttle_waits_total").increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }

        let compiled = match &job.content {
            Content::Inline { .. } => None,
            Content::Registered(t) => {
                let lookup = durably("template", shutdown, || async {
                    Ok(self.templates.get(&self.store, tenant, job.campaign_id.as_str(), t.as_str()).await?)
                })
                .await?;
                match lookup {
                    Lookup::Found(c) => Some(c),
                    Lookup::Unknown => {
                        return self
                            .reject(
                                d,
                                Some(&job),
                                "unknown_template",
                                &format!("template {t} is not registered for this campaign"),
                                shutdown,
                            )
                            .await;
                    }
                    Lookup::Invalid(e) => {
                        return self.reject(d, Some(&job), e.reason(), &e.to_string(), shutdown).await;
                    }
                }
            }
        };
        let composed = match self.composer.compose(&job, compiled.as_deref(), OffsetDateTime::now_utc()) {
            Ok(c) => c,
            Err(e) => return self.reject(d, Some(&job), e.reason(), &e.to_string(), shutdown).await,
        };

        let envelope = Envelope { from: job.from.email.clone(), to: job.to.email.clone() };
        let attempt = claim.attempts.max(0) as u32 + 1;
        // The ledger says `sending` only from the commit point on (after the
        // server's 354), so a crash earlier is a plain redelivery, not a job
        // in doubt.
        let commit_point = Box::pin(async {
            self.store
                .mark_sending(tenant, job.job_id.as_str(), &composed.message_id)
                .await
                .map_err(|e| e.to_string())
        });
        let started = Instant::now();
        let result = self.transport.send(&envelope, &composed.bytes, commit_point).await;
        metrics::histogram!("mailpipe_send_duration_seconds").record(started.elapsed().as_secs_f64());
        let disposition = classify(&result);
        debug!(?disposition, attempt, "delivery attempt");
        let reply = reply_of(&result);
        let ev = |kind, disc: &str| {
            let mut e = self.event(&job, kind, disc);
            e.message_id = Some(composed.message_id.clone());
            e.attempt = Some(attempt);
            e.smtp = reply.as_ref().map(Reply::to_event);
            e
        };
        let last = reply
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| result.as_ref().err().map(ToString::to_string));
        if let Some(t) = &self.throttle {
            match &disposition {
                Disposition::Deferred { slow_down: true } => t.slow_down(job.to.email.domain()),
                Disposition::Delivered => t.recovered(job.to.email.domain()),
                _ => {}
            }
        }
        match disposition {
            Disposition::Delivered => {
                return self
                    .finish(
                        &job,
                        LedgerStatus::Sent,
                        last.as_deref(),
                        ev(EventType::Sent, ""),
                        Outcome::Sent,
                        shutdown,
                    )
                    .await;
            }
            Disposition::InDoubt => {
                self.counters.in_doubt.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("mailpipe_jobs_in_doubt_total").increment(1);
                if self.cfg.in_doubt == InDoubtPolicy::AssumeDelivered {
                    let mut e = ev(EventType::Sent, "");
                    e.reason = Some("in_doubt".into());
                    return self
                        .finish(&job, LedgerStatus::Sent, last.as_deref(), e, Outcome::Sent, shutdown)
                        .await;
                }
                // Retry policy: fall through to a deferral.
            }
            Disposition::Bounced { suppress } => {
                if suppress {
                    durably("suppress", shutdown, || async {
                        Ok(self
                            .store
                            .add_suppression(
                                None,
                                &rref,
                                "hard_bounce",
                                mailpipe_core::Category::Transactional,
                                Some(tenant),
                            )
                            .await?)
                    })
                    .await?;
                }
                let mut e = ev(EventType::Bounced, "");
                if suppress {
                    e.recipient_ref = Some(rref.clone());
                }
                e.reason = Some(if suppress { "hard_bounce" } else { "rejected" }.into());
                return self
                    .finish(&job, LedgerStatus::Bounced, last.as_deref(), e, Outcome::Bounced, shutdown)
                    .await;
            }
            Disposition::DeadLetter { reason } => {
                let detail = last.clone().unwrap_or_default();
                return self.reject(d, Some(&job), reason, &detail, shutdown).await;
            }
            Disposition::Deferred { .. } => {}
        }

        // Deferred (or in doubt under the retry policy): onto the durable
        // retry schedule, unless the job is out of attempts or too old.
        let delay = backoff(self.cfg.retry_base, self.cfg.retry_max, attempt);
        let age = Duration::from_millis((now_ms() - claim.created_at_ms).max(0) as u64);
        if attempt >= self.cfg.max_attempts || age + delay > self.cfg.max_age {
            let mut e = ev(EventType::Failed, "");
            e.reason = Some(if attempt >= self.cfg.max_attempts { "max_attempts" } else { "max_age" }.into());
            return self
                .finish(&job, LedgerStatus::Failed, last.as_deref(), e, Outcome::Failed, shutdown)
                .await;
        }
        let due = now_ms() + delay.as_millis() as i64;
        let e = ev(EventType::Deferred, &attempt.to_string());
        durably("record_deferral", shutdown, || async {
            self.store
                .defer(
                    tenant,
                    job.job_id.as_str(),
                    d.shard,
                    attempt,
                    last.as_deref(),
                    due,
                    d.payload,
                    Some(&e),
                )
                .await?;
            self.publish(std::slice::from_ref(&e)).await
        })
        .await?;
        self.count(Outcome::Deferred, self.provider(job.to.email.domain()));
        Some(Outcome::Deferred)
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
    /// after `delay`, so that it holds no concurrency slot (and no
    /// partition) while it waits.
    async fn park(
        &self,
        d: &Record<'_>,
        job: &SendJob,
        attempts: u32,
        delay: Duration,
        shutdown: &CancellationToken,
    ) -> Option<Outcome> {
        let due = now_ms() + delay.as_millis() as i64;
        durably("park", shutdown, || async {
            Ok(self
                .store
                .defer(
                    job.tenant_id.as_str(),
                    job.job_id.as_str(),
                    d.shard,
                    attempts,
                    None,
                    due,
                    d.payload,
                    None,
                )
                .await?)
        })
        .await?;
        metrics::counter!("mailpipe_jobs_parked_total").increment(1);
        self.counters.parked.fetch_add(1, Ordering::Relaxed);
        Some(Outcome::Parked)
    }

    async fn tenant_known(&self, tenant: &TenantId, shutdown: &CancellationToken) -> Option<bool> {
        if self.known_tenants.lock().unwrap_or_else(|p| p.into_inner()).contains(tenant) {
            return Some(true);
        }
        let known =
            durably("tenant", shutdown, || async { Ok(self.store.tenant_exists(tenant).await?) }).await?;
        if known {
            self.known_tenants.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant.clone());
        }
        Some(known)
    }

    /// The provider group of a recipient domain, for metrics and events:
    /// a configured group name, or `other`. Never the domain itself, which
    /// would make metric labels unbounded.
    fn provider<'a>(&'a self, domain: &str) -> &'a str {
        self.throttle.as_ref().and_then(|t| t.group(domain)).unwrap_or("other")
    }

    fn event(&self, job: &SendJob, kind: EventType, discriminator: &str) -> Event {
        let mut e = Event::for_job(kind, &job.tenant_id, &job.campaign_id, &job.job_id, discriminator);
        e.category = Some(job.category);
        e.provider = Some(self.provider(job.to.email.domain()).to_owned());
        e
    }

    async fn publish(&self, events: &[Event]) -> Result<(), Infra> {
        match &self.events {
            EventOut::Kafka(k) => Ok(k.publish(events).await?),
            EventOut::StoreOnly => Ok(()),
        }
    }

    /// Store the outcome, then publish it; both retried until done.
    async fn finish(
        &self,
        job: &SendJob,
        status: LedgerStatus,
        last_reply: Option<&str>,
        event: Event,
        outcome: Outcome,
        shutdown: &CancellationToken,
    ) -> Option<Outcome> {
        let (tenant, id) = (job.tenant_id.as_str(), job.job_id.as_str());
        durably("record_outcome", shutdown, || async {
            Ok(self.store.finish(tenant, id, status, last_reply, &event).await?)
        })
        .await?;
        durably("publish_outcome", shutdown, || self.publish(std::slice::from_ref(&event))).await?;
        self.count(outcome, self.provider(job.to.email.domain()));
        Some(outcome)
    }

    async fn replay(&self, job: &SendJob, shutdown: &CancellationToken) -> Option<Outcome> {
        let (tenant, id) = (job.tenant_id.as_str(), job.job_id.as_str());
        let ev =
            durably("load_outcome", shutdown, || async { Ok(self.store.terminal_event(tenant, id).await?) })
                .await?;
        if let Some(ev) = ev {
            durably("publish_outcome", shutdown, || self.publish(std::slice::from_ref(&ev))).await?;
        }
        debug!("job already finished; outcome re-published, nothing sent");
        self.count(Outcome::Replayed, self.provider(job.to.email.domain()));
        Some(Outcome::Replayed)
    }

    /// Dead-letters a record: to the store (with its event), to the DLQ
    /// topic, and the event to the events topic.
    async fn reject(
        &self,
        d: &Record<'_>,
        job: Option<&SendJob>,
        reason: &str,
        detail: &str,
        shutdown: &CancellationToken,
    ) -> Option<Outcome> {
        warn!(reason, detail, record = %d.source, "dead-lettering job");
        let mut ev = match job {
            Some(j) => self.event(j, EventType::DeadLettered, ""),
            // Too broken to name a tenant: key the event by the record.
            None => Event::unattributed(EventType::DeadLettered, &d.source),
        };
        ev.reason = Some(reason.to_owned());
        ev.detail = Some(detail.to_owned());
        let dl = DeadLetter {
            source: d.source.clone(),
            reason: reason.to_owned(),
            detail: detail.to_owned(),
            tenant_id: job.map(|j| j.tenant_id.to_string()),
            job_id: job.map(|j| j.job_id.to_string()),
            payload: d.payload.to_vec(),
        };
        durably("record_dead_letter", shutdown, || async {
            self.store.dead_letter(&dl, &ev).await?;
            if let Some(j) = job {
                // A claimed job's ledger row ends here too; unclaimed jobs have none.
                self.store
                    .finish(
                        j.tenant_id.as_str(),
                        j.job_id.as_str(),
                        LedgerStatus::DeadLettered,
                        Some(detail),
                        &ev,
                    )
                    .await?;
            }
            Ok(())
        })
        .await?;
        if let EventOut::Kafka(k) = &self.events {
            durably("publish_dead_letter", shutdown, || async {
                k.dead_letter(&d.source, d.key, d.payload, reason, detail).await?;
                Ok(k.publish(std::slice::from_ref(&ev)).await?)
            })
            .await?;
        }
        self.count(Outcome::DeadLettered, job.map_or("unknown", |j| self.provider(j.to.email.domain())));
        Some(Outcome::DeadLettered)
    }

    fn count(&self, o: Outcome, provider: &str) {
        let (c, label) = match o {
            Outcome::Sent => (&self.counters.sent, "sent"),
            Outcome::Bounced => (&self.counters.bounced, "bounced"),
            Outcome::Suppressed => (&self.counters.suppressed, "suppressed"),
            Outcome::Failed => (&self.counters.failed, "failed"),
            Outcome::DeadLettered => (&self.counters.dead_lettered, "dead_lettered"),
            Outcome::Replayed => (&self.counters.replayed, "replayed"),
            Outcome::Deferred => (&self.counters.deferred, "deferred"),
            Outcome::Parked | Outcome::Scheduled => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("mailpipe_jobs_total", "outcome" => label, "provider" => provider.to_owned())
            .increment(1);
    }
}

fn reply_of(r: &Result<Reply, DeliveryError>) -> Option<Reply> {
    match r {
        Ok(reply) => Some(reply.clone()),
        Err(DeliveryError::Rejected { reply, .. }) => Some(reply.clone()),
        Err(
            DeliveryError::Io { .. }
            | DeliveryError::Protocol { .. }
            | DeliveryError::Unsendable(_)
            | DeliveryError::Abandoned(_),
        ) => None,
    }
}

/// Exponential back-off with ±25% jitter, capped.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(max);
    // Cheap jitter from the clock: enough to spread retries, no RNG needed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.75 + (nanos % 1000) as f64 / 2000.0;
    capped.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        let d1 = backoff(b, m, 1);
        assert!(d1 >= Duration::from_millis(750) && d1 <= Duration::from_millis(1250), "{d1:?}");
        let d4 = backoff(b, m, 4);
        assert!(d4 >= Duration::from_secs(6) && d4 <= Duration::from_secs(10), "{d4:?}");
        assert!(backoff(b, m, 30) <= Duration::from_secs(75));
    }
}
