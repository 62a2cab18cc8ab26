//! The in-process queue of the embedded default: a bounded channel.
//!
//! It is not durable: what sits in it when the process dies is gone. The
//! embedded default compensates by keeping the ledger in SQLite, so a rerun
//! of the same jobs sends only those without an outcome.

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::mpsc;

use crate::{Acker, Delivery, JobSource, QueueError, RecordId};

/// The producing half. Dropping every producer ends the source.
#[derive(Clone)]
pub struct MemoryProducer {
    tx: mpsc::Sender<Delivery>,
    next: std::sync::Arc<AtomicI64>,
    /// `memory-<start ms>`: record ids stay unique across runs that share a
    /// database, as dead letters are recorded once per record id.
    run: std::sync::Arc<str>,
}

impl MemoryProducer {
    /// Enqueues a job; waits while the queue is full (backpressure).
    pub async fn send(&self, key: &str, payload: Vec<u8>) -> Result<(), QueueError> {
        let offset = self.next.fetch_add(1, Ordering::Relaxed);
        let d = Delivery {
            payload,
            key: Some(key.as_bytes().to_vec()),
            id: RecordId { topic: self.run.to_string(), partition: 0, offset },
        };
        self.tx.send(d).await.map_err(|_| QueueError::Closed)
    }
}

pub struct MemorySource {
    rx: mpsc::Receiver<Delivery>,
}

/// A bounded in-process queue holding at most `capacity` jobs.
pub fn memory_queue(capacity: usize) -> (MemoryProducer, MemorySource) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let run = format!("memory-{}", mailpipe_core::now_ms()).into();
    (MemoryProducer { tx, next: Default::default(), run }, MemorySource { rx })
}

struct NoAck;
impl Acker for NoAck {
    fn ack(&self, _id: &RecordId) {}
}

impl JobSource for MemorySource {
    async fn recv(&mut self) -> Result<Option<Delivery>, QueueError> {
        Ok(self.rx.recv().await)
    }

    fn acker(&self) -> std::sync::Arc<dyn Acker> {
        std::sync::Arc::new(NoAck)
    }
}
