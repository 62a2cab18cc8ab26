//! The ledger writer: claims, commit-point marks and outcomes of concurrent
//! jobs, written in batches. Each kind has its own lane, a bounded queue
//! and a task that takes whatever is waiting (up to `max_rows`, after at
//! most `linger` for more) whenever fewer than `in_flight` of its batches
//! are being written, and writes it with one statement and one commit
//! per round ([`Store::claim_jobs`], [`Store::mark_sending_many`],
//! [`Store::finish_many`]), and answers each caller with its own row's
//! result only once that commit is done. Nothing about a job changes: each
//! caller gets what the one-row call would have given it, and a job's
//! outcome is durable when its `finish` returns.
//!
//! A batch the database refuses for a row's values is written again in
//! halves, and halves of those, so that a bad row fails alone; a batch
//! that fails for any other reason (the database unreachable, a deadlock)
//! fails every caller, who retries as before.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::ledger::{Claim, ClaimRequest, OutcomeRecord, SendingMark};
use crate::{Result, Store, StoreError};

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Most rows in one statement.
    pub max_rows: usize,
    /// How long a batch waits for more rows once it has one. Zero: it takes
    /// only what is already waiting, so that batches grow with the load
    /// (while one is written, the next gathers) and a lone job never waits.
    pub linger: Duration,
    /// Batches of one kind written at once. More than one keeps a job that
    /// arrives while a batch is being written from waiting for it: what the
    /// `sending` mark, which an SMTP connection waits for, needs.
    pub in_flight: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self { max_rows: 256, linger: Duration::ZERO, in_flight: 1 }
    }
}

/// The batching writer of one store's ledger. Cheap to share behind an
/// `Arc`; its tasks end when it is dropped, after the batches they hold.
pub struct LedgerWriter {
    claims: Lane<ClaimRequest, Claim>,
    marks: Lane<SendingMark, bool>,
    outcomes: Lane<OutcomeRecord, bool>,
}

impl LedgerWriter {
    /// Starts the writer's tasks on the current Tokio runtime.
    pub fn spawn(store: Store, settings: BatchSettings) -> Self {
        Self {
            claims: Lane::spawn::<Claims>(store.clone(), settings),
            marks: Lane::spawn::<Marks>(store.clone(), settings),
            outcomes: Lane::spawn::<Outcomes>(store, settings),
        }
    }

    /// [`Store::claim_job`], batched.
    pub async fn claim(&self, req: ClaimRequest) -> Result<Claim> {
        self.claims.call(req).await
    }

    /// [`Store::mark_sending`], batched.
    pub async fn mark_sending(&self, mark: SendingMark) -> Result<bool> {
        self.marks.call(mark).await
    }

    /// [`Store::finish`], batched: durable when it returns.
    pub async fn finish(&self, outcome: OutcomeRecord) -> Result<bool> {
        self.outcomes.call(outcome).await
    }

    /// Batches written so far and the rows they held: claims, marks,
    /// outcomes.
    pub fn stats(&self) -> [BatchStats; 3] {
        [self.claims.stats(), self.marks.stats(), self.outcomes.stats()]
    }
}

/// What one lane has written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    pub batches: u64,
    pub rows: u64,
    /// Batches the database refused and that were written again one row
    /// at a time.
    pub split: u64,
}

#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    rows: AtomicU64,
    split: AtomicU64,
}

/// One kind of write, as a batch.
trait Op: Send + Sync + 'static {
    type Req: Send + Sync + 'static;
    type Resp: Send + 'static;
    /// The `op` label of the writer's metrics.
    const NAME: &'static str;
    fn write<'a>(
        store: &'a Store,
        reqs: &'a [Self::Req],
    ) -> impl Future<Output = Result<Vec<Self::Resp>>> + Send + 'a;
}

struct Claims;
impl Op for Claims {
    type Req = ClaimRequest;
    type Resp = Claim;
    const NAME: &'static str = "claim";
    fn write<'a>(
        store: &'a Store,
        reqs: &'a [ClaimRequest],
    ) -> impl Future<Output = Result<Vec<Claim>>> + Send + 'a {
        store.claim_jobs(reqs)
    }
}

struct Marks;
impl Op for Marks {
    type Req = SendingMark;
    type Resp = bool;
    const NAME: &'static str = "mark_sending";
    fn write<'a>(
        store: &'a Store,
        reqs: &'a [SendingMark],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send + 'a {
        store.mark_sending_many(reqs)
    }
}

struct Outcomes;
impl Op for Outcomes {
    type Req = OutcomeRecord;
    type Resp = bool;
    const NAME: &'static str = "finish";
    fn write<'a>(
        store: &'a Store,
        reqs: &'a [OutcomeRecord],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send + 'a {
        store.finish_many(reqs)
    }
}

type Request<Req, Resp> = (Req, oneshot::Sender<Result<Resp>>);

/// The queue into one kind's task.
struct Lane<Req, Resp> {
    tx: mpsc::Sender<Request<Req, Resp>>,
    counts: Arc<Counts>,
}

impl<Req: Send + Sync + 'static, Resp: Send + 'static> Lane<Req, Resp> {
    fn spawn<O: Op<Req = Req, Resp = Resp>>(store: Store, settings: BatchSettings) -> Self {
        let max = settings.max_rows.max(1);
        // Bounded: a caller waits for room (backpressure) rather than the
        // queue growing; the worker's in-flight bound keeps it short anyway.
        let (tx, rx) = mpsc::channel(max * 4);
        let counts = Arc::new(Counts::default());
        tokio::spawn(run::<O>(store, rx, settings, counts.clone()));
        Self { tx, counts }
    }

    fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.counts.batches.load(Ordering::Relaxed),
            rows: self.counts.rows.load(Ordering::Relaxed),
            split: self.counts.split.load(Ordering::Relaxed),
        }
    }

    async fn call(&self, req: Req) -> Result<Resp> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((req, reply)).await.map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

async fn run<O: Op>(
    store: Store,
    mut rx: mpsc::Receiver<Request<O::Req, O::Resp>>,
    settings: BatchSettings,
    counts: Arc<Counts>,
) {
    let (max, linger) = (settings.max_rows.max(1), settings.linger);
    // A permit per batch being written. The next batch gathers only once
    // one is free, so while all are busy the queue fills and batches grow.
    let permits = Arc::new(Semaphore::new(settings.in_flight.max(1)));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch: Vec<Request<O::Req, O::Resp>> = Vec::with_capacity(max);
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if !linger.is_zero() && batch.len() < max {
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < max {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) => batch.push(r),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let (store, counts) = (store.clone(), counts.clone());
        tokio::spawn(async move {
            write::<O>(&store, batch, &counts).await;
            drop(permit);
        });
    }
}

/// Writes one batch and answers its callers.
async fn write<O: Op>(store: &Store, batch: Vec<Request<O::Req, O::Resp>>, counts: &Counts) {
    let (reqs, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    metrics::histogram!("mailpipe_ledger_batch_rows", "op" => O::NAME).record(reqs.len() as f64);
    counts.batches.fetch_add(1, Ordering::Relaxed);
    counts.rows.fetch_add(reqs.len() as u64, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let written = O::write(store, &reqs).await;
    metrics::histogram!("mailpipe_ledger_batch_seconds", "op" => O::NAME)
        .record(started.elapsed().as_secs_f64());
    match written {
        Ok(resps) => {
            for (reply, resp) in replies.into_iter().zip(resps) {
                let _ = reply.send(Ok(resp));
            }
        }
        Err(e) if reqs.len() > 1 && e.is_statement_error() => {
            // One row the database refuses must not fail its neighbours:
            // halve until the parts are written or the bad row is alone.
            metrics::counter!("mailpipe_ledger_batch_splits_total", "op" => O::NAME).increment(1);
            counts.split.fetch_add(1, Ordering::Relaxed);
            let mut replies: Vec<_> = replies.into_iter().map(Some).collect();
            let mut answer = |i: usize, r: Result<O::Resp>| {
                if let Some(reply) = replies[i].take() {
                    let _ = reply.send(r);
                }
            };
            let mid = reqs.len() / 2;
            let mut parts = vec![(mid, reqs.len()), (0, mid)];
            while let Some((a, b)) = parts.pop() {
                match O::write(store, &reqs[a..b]).await {
                    Ok(resps) => (a..b).zip(resps).for_each(|(i, r)| answer(i, Ok(r))),
                    Err(e) if b - a > 1 && e.is_statement_error() => {
                        let m = (a + b) / 2;
                        parts.extend([(m, b), (a, m)]);
                    }
                    Err(e) if b - a == 1 => answer(a, Err(e)),
                    Err(e) => {
                        let why = e.to_string();
                        (a..b).for_each(|i| answer(i, Err(StoreError::Batch(why.clone()))));
                    }
                }
            }
        }
        Err(e) => {
            let why = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(StoreError::Batch(why.clone())));
            }
        }
    }
}
