//! The send worker.
//!
//! For each job: parse, claim in the ledger, check suppression, render, mark
//! `sending`, send, then record the outcome (ledger row and event in one
//! transaction), publish the event, and only then acknowledge the record.
//!
//! Invariants:
//! * A record is acknowledged only after its outcome is durable in the store
//!   and, with Kafka, acknowledged by the broker on the events topic.
//! * A job whose ledger row is terminal is never sent again; its stored
//!   terminal event is re-published instead (same `event_id`).
//! * Infrastructure failures (store, broker) are retried with back-off while
//!   the job holds its concurrency permit, so an outage turns into
//!   backpressure, not loss.
#![forbid(unsafe_code)]

pub mod breaker;
mod pipeline;
mod settings;
mod templates;
pub mod warmup;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mailpipe_queue::JobSource;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use breaker::{BreakerSettings, Streams};
pub use pipeline::{EventOut, Outcome, Pipeline};
pub use settings::{InDoubtPolicy, WorkerSettings};
pub use warmup::Warmup;

/// Outcome counters, for progress display and the end-of-run summary.
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub deferred: AtomicU64,
    /// Parked by a rate limit (no attempt made).
    pub parked: AtomicU64,
    pub bounced: AtomicU64,
    pub suppressed: AtomicU64,
    pub failed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub replayed: AtomicU64,
    pub in_doubt: AtomicU64,
}

impl Counters {
    /// Jobs that reached a terminal outcome in this run (including replays
    /// of outcomes recorded by an earlier run).
    pub fn finished(&self) -> u64 {
        [&self.sent, &self.bounced, &self.suppressed, &self.failed, &self.dead_lettered, &self.replayed]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    /// Jobs still in flight when the grace period ran out.
    pub abandoned: usize,
}

/// Consumes `source` and the retry schedule until `shutdown` fires, then
/// drains. An exhaustible source (the embedded queue) ends the run once it is
/// exhausted and the retry schedule is empty.
pub async fn run<S: JobSource>(
    source: &mut S,
    pipeline: Arc<Pipeline>,
    cfg: &WorkerSettings,
    shutdown: CancellationToken,
) -> RunReport {
    let permits = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let tasks = TaskTracker::new();
    let acker = source.acker();
    let gauge = metrics::gauge!("mailpipe_jobs_in_flight");
    let source_done = CancellationToken::new();
    let retries = tokio::spawn(retry_loop(
        source.shards(),
        pipeline.clone(),
        permits.clone(),
        tasks.clone(),
        cfg.clone(),
        shutdown.clone(),
        source_done.clone(),
    ));
    loop {
        // A permit first: with all permits taken we stop reading, which is
        // the backpressure that bounds memory and protects the store.
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let delivery = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = source.recv() => r,
        };
        let delivery = match delivery {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) => {
                warn!(error = %e, "receive failed; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let pipeline = pipeline.clone();
        let acker = acker.clone();
        let shutdown = shutdown.clone();
        let gauge = gauge.clone();
        gauge.increment(1.0);
        tasks.spawn(async move {
            let id = delivery.id.clone();
            // Terminal or on the retry schedule: either way durable, so the
            // record is done with.
            if pipeline.process(delivery, &shutdown).await.is_some() {
                acker.ack(&id);
            }
            gauge.decrement(1.0);
            drop(permit);
        });
    }
    source_done.cancel();
    if let Err(e) = retries.await {
        warn!(error = %e, "retry scheduler ended abnormally");
    }
    tasks.close();
    let pending = tasks.len();
    if pending > 0 {
        info!(pending, grace_secs = cfg.grace_period.as_secs(), "draining in-flight jobs");
    }
    let abandoned = match tokio::time::timeout(cfg.grace_period, tasks.wait()).await {
        Ok(()) => 0,
        Err(_) => {
            let left = tasks.len();
            warn!(left, "grace period over; unfinished jobs stay unacknowledged and will be redelivered");
            left
        }
    };
    RunReport { abandoned }
}

/// Runs due jobs from the durable retry schedule, within the same
/// concurrency bound as queue records, for the partitions this worker owns. Takes no more than it can start at
/// once, so a leased job never waits for a slot.
async fn retry_loop(
    shards: mailpipe_queue::Shards,
    pipeline: Arc<Pipeline>,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    cfg: WorkerSettings,
    shutdown: CancellationToken,
    source_done: CancellationToken,
) {
    let gauge = metrics::gauge!("mailpipe_jobs_in_flight");
    let backlog_gauge = metrics::gauge!("mailpipe_retry_backlog");
    let mut last_backlog_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(cfg.retry_poll) => {}
        }
        let free = permits.available_permits().min(256);
        if free > 0 {
            let now = mailpipe_core::now_ms();
            let lease = now + cfg.retry_lease.as_millis() as i64;
            // Only jobs of partitions this worker owns: a job's rate limit
            // is then applied by the one worker that sees all of its traffic.
            let owned = shards();
            match pipeline.store().take_due_retries(now, lease, free as i64, owned.as_deref()).await {
                Ok(batch) => {
                    for due in batch {
                        // Normally free already; if queue records took the
                        // slots meanwhile, wait for one rather than let the
                        // lease run out.
                        let permit = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                        };
                        let pipeline = pipeline.clone();
                        let shutdown = shutdown.clone();
                        let gauge = gauge.clone();
                        gauge.increment(1.0);
                        tasks.spawn(async move {
                            pipeline.process_retry(due, &shutdown).await;
                            gauge.decrement(1.0);
                            drop(permit);
                        });
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the retry schedule; trying again"),
            }
        }
        let exhausted = source_done.is_cancelled();
        if exhausted || last_backlog_check.elapsed() >= Duration::from_secs(5) {
            last_backlog_check = tokio::time::Instant::now();
            // Read "nothing in flight" before the backlog: a job finishing in
            // between has already written its deferral when the count is read.
            let idle = tasks.is_empty();
            match pipeline.store().retry_backlog().await {
                Ok((n, _)) => {
                    backlog_gauge.set(n as f64);
                    if exhausted && idle && n == 0 {
                        return;
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the retry backlog"),
            }
        }
    }
}
