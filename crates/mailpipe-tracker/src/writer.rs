//! The event writer. Handlers hand events over and wait for the spool to
//! hold them durably ([`crate::spool`]); a shipper moves spooled batches to
//! the store (one multi-row insert per batch) and to Kafka, retrying while
//! either is down. So a 2xx or 3xx answer means its event is on disk, and an
//! outage delays events without losing or blocking them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpipe_core::{Category, Event, EventType, TenantId};
use mailpipe_queue::kafka::KafkaEvents;
use mailpipe_store::Store;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::spool::{Segment, Spool};

const BATCH: usize = 1024;
/// Events per store write when catching up.
const SHIP_BATCH: usize = 4096;
/// How long one store or Kafka write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

struct Pending {
    event: Event,
    durable: oneshot::Sender<()>,
}

/// The sending side, held by request handlers.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Pending>,
    spool: Arc<Spool>,
}

impl WriterHandle {
    /// Queues an event and waits until it is durable in the spool. False
    /// only if the writer has stopped (after shutdown began).
    pub async fn send(&self, event: Event) -> bool {
        let (durable, done) = oneshot::channel();
        if self.tx.send(Pending { event, durable }).await.is_err() {
            metrics::counter!("mailpipe_tracker_events_after_close_total").increment(1);
            return false;
        }
        done.await.is_ok()
    }

    /// Whether new events can be taken without waiting for space.
    pub fn ready(&self) -> bool {
        !self.spool.is_full()
    }
}

/// Owns the writer and shipper tasks.
pub struct EventWriter {
    writer: JoinHandle<()>,
    shipper: JoinHandle<()>,
    writer_done: Arc<Notify>,
}

/// Where unsubscribes apply: every tenant's marketing, or one tenant's.
async fn scope_of(store: &Store, cache: &mut HashMap<TenantId, (bool, Instant)>, t: &TenantId) -> bool {
    if let Some((platform, at)) = cache.get(t)
        && at.elapsed() < Duration::from_secs(60)
    {
        return *platform;
    }
    // Unknown tenants and errors fall back to the platform default.
    let platform = store.unsubscribe_scope_is_platform(t).await.unwrap_or(true);
    cache.insert(t.clone(), (platform, Instant::now()));
    platform
}

impl EventWriter {
    pub fn spawn(
        store: Store,
        kafka: Option<KafkaEvents>,
        spool: Arc<Spool>,
        capacity: usize,
    ) -> (Self, WriterHandle) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let shipped = Arc::new(Notify::new());
        let writer_done = Arc::new(Notify::new());
        let writer = tokio::spawn(write_loop(spool.clone(), rx, shipped.clone()));
        let shipper = tokio::spawn(ship_loop(store, kafka, spool.clone(), shipped, writer_done.clone()));
        (Self { writer, shipper, writer_done }, WriterHandle { tx, spool })
    }

    /// Waits until every queued event is spooled, then gives the shipper up
    /// to `grace` to empty the spool; what is left is shipped at next start.
    pub async fn finish(self, grace: Duration) {
        let _ = self.writer.await;
        self.writer_done.notify_one();
        let mut shipper = self.shipper;
        if tokio::time::timeout(grace, &mut shipper).await.is_err() {
            warn!("events left in the spool at shutdown; they are shipped at the next start");
            shipper.abort();
        }
    }
}

async fn write_loop(spool: Arc<Spool>, mut rx: mpsc::Receiver<Pending>, shipped: Arc<Notify>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Encoded here, once; the blocking task gets bytes, not events.
        let encoded = Arc::new(crate::spool::encode_iter(batch.iter().map(|p| &p.event)));
        let count = batch.len();
        let mut delay = Duration::from_millis(50);
        loop {
            if spool.is_full() {
                metrics::counter!("mailpipe_tracker_spool_full_waits_total").increment(1);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                continue;
            }
            let (s, buf) = (spool.clone(), encoded.clone());
            match tokio::task::spawn_blocking(move || s.append_encoded(&buf)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => warn!(error = %e, "cannot write the event spool; retrying"),
                Err(e) => warn!(error = %e, "spool writer task failed; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
        for p in batch.drain(..) {
            let _ = p.durable.send(());
        }
        metrics::counter!("mailpipe_tracker_events_spooled_total").increment(count as u64);
        metrics::gauge!("mailpipe_tracker_spool_bytes").set(spool.bytes() as f64);
        shipped.notify_one();
    }
}

async fn ship_loop(
    store: Store,
    kafka: Option<KafkaEvents>,
    spool: Arc<Spool>,
    spooled: Arc<Notify>,
    writer_done: Arc<Notify>,
) {
    let mut scopes = HashMap::new();
    let mut delay = Duration::from_millis(100);
    let mut stopping = false;
    let mut was_down = false;
    loop {
        let segments = match spool.segments() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot list the event spool");
                Vec::new()
            }
        };
        if segments.is_empty() {
            if stopping {
                return;
            }
            tokio::select! {
                _ = spooled.notified() => {}
                _ = writer_done.notified() => stopping = true,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        // Take whole segments up to SHIP_BATCH events: one store write.
        let mut take: Vec<Segment> = Vec::new();
        let mut events: Vec<Event> = Vec::new();
        for seg in segments {
            match Spool::read(&seg) {
                Ok(evs) => {
                    events.extend(evs);
                    take.push(seg);
                }
                Err(e) => warn!(error = %e, path = %seg.path.display(), "cannot read a spool file"),
            }
            if events.len() >= SHIP_BATCH {
                break;
            }
        }
        match ship(&store, kafka.as_ref(), &mut events, &mut scopes).await {
            Ok(()) => {
                for seg in &take {
                    if let Err(e) = spool.remove(seg) {
                        warn!(error = %e, "cannot remove a shipped spool file");
                    }
                }
                if was_down {
                    info!("event sinks are back; spooled events shipped");
                    was_down = false;
                }
                metrics::counter!("mailpipe_tracker_events_written_total").increment(events.len() as u64);
                metrics::gauge!("mailpipe_tracker_spool_bytes").set(spool.bytes() as f64);
                delay = Duration::from_millis(100);
            }
            Err(e) => {
                if !was_down {
                    warn!(error = %e, spooled_bytes = spool.bytes(), "cannot ship events; keeping them in the spool");
                }
                was_down = true;
                metrics::counter!("mailpipe_tracker_ship_failures_total").increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = writer_done.notified() => stopping = true,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn ship(
    store: &Store,
    kafka: Option<&KafkaEvents>,
    events: &mut [Event],
    scopes: &mut HashMap<TenantId, (bool, Instant)>,
) -> Result<(), String> {
    let bounded = |what: &'static str| move |_| format!("{what} timed out after {WRITE_TIMEOUT:?}");
    // An erased recipient's old links still count, but carry no client
    // details: nothing new that could identify them is stored.
    let with_client: Vec<(String, String)> = events
        .iter()
        .filter(|e| e.client.is_some())
        .filter_map(|e| Some((e.tenant_id.as_ref()?.to_string(), e.job_id.as_ref()?.to_string())))
        .collect();
    let erased = tokio::time::timeout(WRITE_TIMEOUT, store.erased_jobs(&with_client))
        .await
        .map_err(bounded("store"))?
        .map_err(|e| e.to_string())?;
    if !erased.is_empty() {
        for e in events.iter_mut() {
            if let (Some(t), Some(j)) = (&e.tenant_id, &e.job_id)
                && erased.contains(&(t.to_string(), j.to_string()))
            {
                e.client = None;
            }
        }
    }
    tokio::time::timeout(WRITE_TIMEOUT, store.insert_events(events))
        .await
        .map_err(bounded("store"))?
        .map_err(|e| e.to_string())?;
    for e in events.iter().filter(|e| e.kind == EventType::Unsubscribe) {
        let (Some(hash), Some(tenant)) = (e.recipient_ref.as_deref(), e.tenant_id.as_ref()) else { continue };
        // Marketing only; platform-wide unless the tenant chose its own scope.
        let scope = if scope_of(store, scopes, tenant).await { None } else { Some(tenant.as_str()) };
        tokio::time::timeout(
            WRITE_TIMEOUT,
            store.add_suppression(scope, hash, "unsubscribe", Category::Marketing, Some(tenant.as_str())),
        )
        .await
        .map_err(bounded("store"))?
        .map_err(|e| e.to_string())?;
    }
    if let Some(k) = kafka {
        // No timeout here: librdkafka keeps retrying a batch through a broker
        // restart (up to message.timeout.ms), and abandoning the wait would
        // only publish the batch twice. Requests never wait on this.
        k.publish(events).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
