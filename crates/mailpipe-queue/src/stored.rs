//! The single-node mode's source: the store's durable send queue
//! (`queue.kind = "store"`, on SQLite), read as a consumer reads a
//! partition.
//!
//! Records are read in offset order from where this consumer started (the
//! first record still in the table); acknowledged records are deleted, in
//! batches, when the source reads its next batch (or goes looking for
//! one), and at a clean stop ([`StoredSource::flush`]). A record not yet deleted when the
//! process dies (it was in flight, or done but not yet deleted) is read
//! again by the next run, and the ledger makes it a replay or its first
//! send, never a second one: the guarantee the Kafka consumer gives by
//! storing offsets only after an outcome is durable.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailpipe_store::Store;

use crate::{Acker, Delivery, JobSource, QueueError, RecordId};

/// The topic name in record ids (and so in dead letters' sources).
pub const TOPIC: &str = "store";

pub struct StoredSource {
    store: Store,
    /// The last offset read.
    after: i64,
    ready: VecDeque<Delivery>,
    acks: Arc<Finished>,
    poll: Duration,
    batch: i64,
}

impl StoredSource {
    /// Reads `store`'s queue from its oldest record, `batch` at a time,
    /// looking again every `poll` while it is empty.
    pub fn new(store: Store, poll: Duration, batch: usize) -> Self {
        Self {
            store,
            after: 0,
            ready: VecDeque::new(),
            acks: Arc::default(),
            poll,
            batch: batch.clamp(1, 10_000) as i64,
        }
    }

    /// Deletes the records acknowledged so far. The worker calls it as it
    /// reads; call it once more after the run, so a clean stop leaves only
    /// unfinished records behind.
    pub async fn flush(&self) -> Result<(), QueueError> {
        let done = self.acks.snapshot();
        if done.is_empty() {
            return Ok(());
        }
        self.store.dequeue(&done).await?;
        // Only now: a flush cut short leaves them to the next one.
        self.acks.forget(&done);
        Ok(())
    }
}

/// The offsets acknowledged and not yet deleted. Bounded by the records
/// read, which the worker bounds by its permits.
#[derive(Default)]
struct Finished(Mutex<Vec<i64>>);

impl Finished {
    fn snapshot(&self) -> Vec<i64> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn forget(&self, done: &[i64]) {
        if let Ok(mut v) = self.0.lock() {
            let gone: std::collections::HashSet<i64> = done.iter().copied().collect();
            v.retain(|s| !gone.contains(s));
        }
    }
}

impl Acker for Finished {
    fn ack(&self, id: &RecordId) {
        if let Ok(mut v) = self.0.lock() {
            v.push(id.offset);
        }
    }
}

impl JobSource for StoredSource {
    /// Cancel-safe: `self` changes only after each await completes.
    async fn recv(&mut self) -> Result<Option<Delivery>, QueueError> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Ok(Some(d));
            }
            // Deleting is not reading: a delete that fails leaves the rows
            // to the next one (or to a replay), and reading goes on.
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "cannot remove finished jobs from the store queue; retrying at the next read");
            }
            if let Ok(depth) = self.store.queue_depth().await {
                metrics::gauge!("mailpipe_store_queue_depth").set(depth as f64);
            }
            let rows = self.store.queued_after(self.after, self.batch).await?;
            let Some(last) = rows.last() else {
                tokio::time::sleep(self.poll).await;
                continue;
            };
            self.after = last.seq;
            self.ready.extend(rows.into_iter().map(|r| Delivery {
                payload: r.payload,
                key: Some(r.key.into_bytes()),
                id: RecordId { topic: TOPIC.to_owned(), partition: 0, offset: r.seq },
            }));
        }
    }

    fn acker(&self) -> Arc<dyn Acker> {
        self.acks.clone()
    }
}
