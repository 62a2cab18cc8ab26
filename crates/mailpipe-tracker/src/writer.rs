//! The event writer: a bounded channel drained in batches into the store
//! (and Kafka, when configured), retried until written.

use std::time::Duration;

use mailpipe_core::{Category, Event, EventType};
use mailpipe_queue::kafka::KafkaEvents;
use mailpipe_store::Store;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

const BATCH: usize = 512;

/// The sending side, held by request handlers.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Event>,
}

impl WriterHandle {
    /// Queues an event; waits if the writer is behind (backpressure).
    pub async fn send(&self, e: Event) {
        if self.tx.send(e).await.is_err() {
            // Only after shutdown began; requests are drained before that.
            metrics::counter!("mailpipe_tracker_events_after_close_total").increment(1);
        }
    }
}

/// Owns the writer task. Dropping every [`WriterHandle`] and awaiting
/// [`EventWriter::finish`] flushes what is queued.
pub struct EventWriter {
    task: JoinHandle<()>,
}

impl EventWriter {
    pub fn spawn(store: Store, kafka: Option<KafkaEvents>, capacity: usize) -> (Self, WriterHandle) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let task = tokio::spawn(run(store, kafka, rx));
        (Self { task }, WriterHandle { tx })
    }

    /// Waits until every queued event is written.
    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

async fn run(store: Store, kafka: Option<KafkaEvents>, mut rx: mpsc::Receiver<Event>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut delay = Duration::from_millis(100);
        loop {
            match write(&store, kafka.as_ref(), &batch).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, events = batch.len(), "event write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        metrics::counter!("mailpipe_tracker_events_written_total").increment(batch.len() as u64);
        batch.clear();
    }
}

async fn write(store: &Store, kafka: Option<&KafkaEvents>, batch: &[Event]) -> Result<(), String> {
    store.insert_events(batch).await.map_err(|e| e.to_string())?;
    for e in batch.iter().filter(|e| e.kind == EventType::Unsubscribe) {
        let (Some(hash), Some(tenant)) = (e.recipient_ref.as_deref(), e.tenant_id.as_ref()) else { continue };
        // Platform-wide, marketing only: the platform's default policy.
        store
            .add_suppression(None, hash, "unsubscribe", Category::Marketing, Some(tenant.as_str()))
            .await
            .map_err(|e| e.to_string())?;
    }
    if let Some(k) = kafka {
        k.publish(batch).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
