//! One job, from bytes to a durable outcome, in five named stages:
//!
//! 1. [`admit`](Pipeline::admit): the tenant is known, the ledger claim is
//!    taken (a finished job is only re-announced), the tenant may send as
//!    the From domain (which gives the key that signs), and the recipient
//!    is not suppressed;
//! 2. [`pace`](Pipeline::pace): the rate limit and, for a domain warming
//!    up, the day's cap allow a send now, or the job is parked on the retry
//!    schedule;
//! 3. [`render`](Pipeline::render): the template is found and the message
//!    composed and signed `d=` the From domain;
//! 4. [`deliver`](Pipeline::deliver): one SMTP attempt, the ledger marked
//!    `sending` at its commit point, the reply classified;
//! 5. [`settle`](Pipeline::settle): the outcome recorded (ledger row and
//!    event in one transaction) and published, or the job deferred.
//!
//! Each stage either hands the next one what it needs or ends the job
//! ([`Step`]). Every store or broker call goes through [`durably`], which
//! retries until it succeeds or shutdown comes first.

mod admit;
mod deliver;
mod pace;
mod render;
mod settle;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailpipe_core::{Backoff, EmailAddress, Event, EventType, JobId, SendJob, TenantId};
use mailpipe_domains::Providers;
use mailpipe_domains::Senders;
use mailpipe_feedback::ReturnPaths;
use mailpipe_queue::Delivery;
use mailpipe_queue::kafka::KafkaEvents;
use mailpipe_render::Composer;
use mailpipe_smtp::Transport;
use mailpipe_store::{Claim, DueRetry, LedgerWriter, Store, StoreError, SuppressionFilter};
use mailpipe_throttle::Throttle;
use mailpipe_token::ReturnTag;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug_span, info_span, warn};

use crate::templates::TemplateCache;
use crate::{Counters, WorkerSettings};

/// Where events go besides the store.
pub enum EventOut {
    /// Kafka: events to `mailpipe.events.v1`, rejects to `mailpipe.send.dlq.v1`.
    Kafka(KafkaEvents),
    /// Embedded default: the store is the only record.
    StoreOnly,
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

/// What a stage returns: `Continue` with what the next stage needs, or
/// `Break` with how the job ended: `Some(outcome)`, durable, or `None` if
/// shutdown came first (the record then stays unacknowledged).
type Step<T> = ControlFlow<Option<Outcome>, T>;

/// A stage's early end with a durable outcome.
fn ended<T>(outcome: Outcome) -> Step<T> {
    ControlFlow::Break(Some(outcome))
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
    /// Claims, commit-point marks and outcomes, batched across jobs.
    ledger: LedgerWriter,
    composer: Composer,
    transport: Arc<dyn Transport>,
    events: EventOut,
    cfg: WorkerSettings,
    templates: TemplateCache,
    /// Who may send as which domain, and the key that signs it.
    senders: Arc<Senders>,
    throttle: Option<Arc<Throttle>>,
    /// Recipient domain → provider group, by MX (and `[throttle.groups]`).
    providers: Option<Arc<Providers>>,
    filter: Option<Arc<SuppressionFilter>>,
    /// Where envelope senders point, and the MAC that tags them; `None`:
    /// the envelope sender is the From address.
    return_paths: Option<ReturnPaths>,
    /// Paused marketing streams, and how long a held job waits before it is
    /// looked at again (the reputation breaker).
    streams: Option<(Arc<crate::Streams>, Duration)>,
    /// The caps of domains warming up.
    warmup: Option<Arc<crate::Warmup>>,
    tenants: Mutex<HashMap<TenantId, (mailpipe_store::TenantPolicy, std::time::Instant)>>,
    /// Per rate-limit key, the next free slot for a parked job, so that a
    /// backlog is spread over time at the key's rate instead of falling due
    /// all at once.
    slots: Mutex<HashMap<String, tokio::time::Instant>>,
    /// The jobs this worker is processing, one record at a time per job: a
    /// second record of a job (a producer's retry, back to back on the same
    /// partition) waits for the first to finish, then finds its outcome.
    running: Running,
    pub counters: Arc<Counters>,
}

/// Per job being processed, the lock its records take turns on.
type Running = Mutex<HashMap<(TenantId, JobId), Arc<tokio::sync::Mutex<()>>>>;

/// A job's turn in [`Pipeline::running`]; ending it lets the next record of
/// the job go, and forgets the job if none waits.
struct Turn<'a> {
    running: &'a Running,
    key: (TenantId, JobId),
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        // The map's reference and ours: nobody else waits for this job.
        if Arc::strong_count(&self.lock) <= 2 {
            running.remove(&self.key);
        }
    }
}

/// A failure of our own infrastructure, retried until it heals or shutdown.
#[derive(Debug, thiserror::Error)]
enum Infra {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] mailpipe_queue::QueueError),
    #[error("the DKIM key of {0} does not open on this worker (is its key-encryption key in domains.keys?)")]
    KeyUnavailable(String),
    #[error(transparent)]
    Sandbox(#[from] mailpipe_render::SandboxError),
}

/// How long a store or broker call waits before its next try.
const INFRA_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

/// Retries `op` with back-off while `shutdown` has not fired. `Break(None)`
/// means shutdown came first; the job is then left unacknowledged and will be
/// redelivered.
async fn durably<T, F, Fut>(what: &'static str, shutdown: &CancellationToken, mut op: F) -> Step<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Infra>>,
{
    let mut backoff = INFRA_BACKOFF;
    loop {
        match op().await {
            Ok(v) => return ControlFlow::Continue(v),
            Err(e) => {
                let delay = backoff.next_delay();
                metrics::counter!("mailpipe_infra_retries_total", "step" => what).increment(1);
                warn!(step = what, error = %e, retry_in_ms = delay.as_millis() as u64, "infrastructure error; holding the job and retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return ControlFlow::Break(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

impl Pipeline {
    /// Must be called within a Tokio runtime: the ledger writer's tasks
    /// start here.
    pub fn new(
        store: Store,
        composer: Composer,
        transport: Arc<dyn Transport>,
        events: EventOut,
        cfg: WorkerSettings,
        senders: Arc<Senders>,
    ) -> Self {
        let limits = composer.limits().clone();
        let template_recheck = cfg.template_recheck;
        Self {
            ledger: LedgerWriter::spawn(
                store.bounded(cfg.ledger_write_timeout, cfg.ledger_connections()),
                cfg.ledger_batches(),
            ),
            store,
            composer,
            transport,
            events,
            cfg,
            templates: TemplateCache::new(limits, 1024, template_recheck),
            senders,
            throttle: None,
            providers: None,
            filter: None,
            return_paths: None,
            streams: None,
            warmup: None,
            tenants: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
        }
    }

    /// Paces sends by recipient domain and provider group.
    pub fn with_throttle(mut self, throttle: Arc<Throttle>) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// Finds each recipient domain's provider group by its MX hosts, for
    /// pacing, back-off, events and metrics.
    pub fn with_providers(mut self, providers: Arc<Providers>) -> Self {
        self.providers = Some(providers);
        self
    }

    /// Answers most suppression checks from memory; see
    /// [`SuppressionFilter`]. The caller keeps it current.
    pub fn with_suppression_filter(mut self, filter: Arc<SuppressionFilter>) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Sends with return paths that come back to the platform
    /// (`b-<tag>@<bounce domain>`), each job's tag drawn at its first claim
    /// and kept in the ledger.
    pub fn with_return_paths(mut self, paths: Option<ReturnPaths>) -> Self {
        self.return_paths = paths;
        self
    }

    /// Holds the marketing jobs of the streams the breaker's `Streams` says
    /// are paused, looking at each again after its recheck delay.
    pub fn with_breaker(mut self, streams: Option<(Arc<crate::Streams>, Duration)>) -> Self {
        self.streams = streams;
        self
    }

    /// Caps what domains warming up send per window and provider group.
    pub fn with_warmup(mut self, warmup: Option<Arc<crate::Warmup>>) -> Self {
        self.warmup = warmup;
        self
    }

    /// The tag to claim a new job with, when return paths are on.
    fn new_return_tag(&self) -> Option<ReturnTag> {
        self.return_paths.as_ref().map(|_| ReturnTag::random())
    }

    /// The envelope sender of `job`: the return path its claim carries, or
    /// its From address (return paths off, or a job claimed without one).
    fn envelope_from(&self, job: &SendJob, claim: &Claim) -> EmailAddress {
        let tag = claim.return_tag.as_deref().and_then(ReturnTag::parse);
        self.return_paths
            .as_ref()
            .zip(tag)
            .and_then(|(paths, tag)| paths.envelope_from(&tag, job.from.email.domain()))
            .unwrap_or_else(|| job.from.email.clone())
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
        let step = match SendJob::from_json(rec.payload) {
            Ok(job) => {
                let span = info_span!("job", tenant = %job.tenant_id, campaign = %job.campaign_id, job = %job.job_id, rcpt_domain = job.to.email.domain(), record = %rec.source);
                self.stages(&rec, &job, shutdown).instrument(span).await
            }
            Err(e) => self.reject(&rec, None, e.reason(), &e.to_string(), shutdown).await,
        };
        match step {
            ControlFlow::Continue(outcome) => Some(outcome),
            ControlFlow::Break(outcome) => outcome,
        }
    }

    /// The five stages, in order; each may end the job early. One record of
    /// a job at a time in this worker. Each stage is a span of its own
    /// (debug level) and a `mailpipe_step_seconds{step}` observation:
    /// `claim` (admission: tenant, ledger claim, suppression), `pace`,
    /// `render` (signing inside it is `sign`), `smtp`, `settle`.
    async fn stages(&self, rec: &Record<'_>, job: &SendJob, shutdown: &CancellationToken) -> Step<Outcome> {
        let _turn = self.turn(job, shutdown).await?;
        let admitted = step("claim", self.admit(rec, job, shutdown)).await?;
        let claim = admitted.claim;
        step("pace", self.pace(rec, job, &claim, shutdown)).await?;
        let message = step("render", self.render(rec, job, &admitted.signer, shutdown)).await?;
        let attempt = step("smtp", self.deliver(job, &claim, &message)).await;
        if attempt.superseded {
            return self.after_other_attempt(rec, job, shutdown).await;
        }
        step("settle", self.settle(rec, job, &claim, &message, attempt, shutdown)).await
    }

    /// Waits until no other record of `job` is being processed here.
    async fn turn(&self, job: &SendJob, shutdown: &CancellationToken) -> Step<Turn<'_>> {
        let key = (job.tenant_id.clone(), job.job_id.clone());
        let lock =
            self.running.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_default().clone();
        let guard = tokio::select! {
            g = lock.clone().lock_owned() => g,
            _ = shutdown.cancelled() => return ControlFlow::Break(None),
        };
        ControlFlow::Continue(Turn { running: &self.running, key, lock, guard: Some(guard) })
    }

    /// The provider group of a recipient domain as known now (by MX once
    /// [`Pipeline::pace`] looked it up, or `[throttle.groups]`), if any.
    fn group(&self, domain: &str) -> Option<Arc<str>> {
        match &self.providers {
            Some(p) => p.known(domain),
            None => self.throttle.as_ref().and_then(|t| t.group(domain)).map(Arc::from),
        }
    }

    /// The provider group of a recipient domain, for metrics and events:
    /// a configured group name, or `other`. Never the domain itself, which
    /// would make metric labels unbounded.
    fn provider(&self, domain: &str) -> Arc<str> {
        self.group(domain).unwrap_or_else(|| Arc::from("other"))
    }

    fn event(&self, job: &SendJob, kind: EventType, discriminator: &str) -> Event {
        let mut e = Event::for_job(kind, &job.tenant_id, &job.campaign_id, &job.job_id, discriminator);
        e.category = Some(job.category);
        e.provider = Some(self.provider(job.to.email.domain()).to_string());
        e.sender_domain = Some(job.from.email.domain().to_ascii_lowercase());
        e
    }

    async fn publish(&self, events: &[Event]) -> Result<(), Infra> {
        match &self.events {
            EventOut::Kafka(k) => Ok(k.publish(events).await?),
            EventOut::StoreOnly => Ok(()),
        }
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

/// One stage of a job: in its own span, its time recorded under `name`.
async fn step<T>(name: &'static str, stage: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = stage.instrument(debug_span!("step", name)).await;
    metrics::histogram!("mailpipe_step_seconds", "step" => name).record(started.elapsed().as_secs_f64());
    out
}
