//! The event writer. Handlers hand events over and wait for the spool to
//! hold them durably ([`crate::spool`]); a shipper moves spooled batches to
//! the store (one multi-row insert per batch) and to Kafka, retrying while
//! either is down. So a 2xx or 3xx answer means its event is on disk, and an
//! outage delays events without losing or blocking them.
//!
//! While requests keep arriving, shipping waits briefly for a pause (the
//! events are already durable), so that it does not cut into a burst of
//! opens and clicks, then catches up; see [`ShipPolicy`] for when it ships.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mailpipe_core::{Backoff, EncodedEvent, Event, EventType, Suppression};
use mailpipe_queue::kafka::KafkaEvents;
use mailpipe_store::Store;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::spool::{Batch, Reader, Spool};

const BATCH: usize = 1024;
/// How long one store or Kafka write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

struct Pending {
    /// The event, encoded by the request's task so that the one writer
    /// task only joins bytes.
    json: Vec<u8>,
    /// An unsubscribe: shipped at once, so that it takes effect within
    /// seconds.
    urgent: bool,
    durable: oneshot::Sender<()>,
}

/// When spooled events are shipped while requests are still arriving.
#[derive(Debug, Clone)]
pub struct ShipPolicy {
    /// The writer counts as idle after this long without a batch; an idle
    /// writer means shipping goes ahead.
    pub idle_after: Duration,
    /// The longest a spooled event waits for a quiet moment.
    pub max_delay: Duration,
    /// Ship regardless once the spool holds this share of its bound.
    pub backlog_share: f64,
    /// Events per store write (whole spool records, so about this many).
    pub batch: usize,
}

impl ShipPolicy {
    /// `idle_after` and `max_delay` as configured (`tracker.ship_idle_ms`,
    /// `tracker.ship_max_delay_secs`); the backlog share and batch size are
    /// the shipper's own.
    pub fn new(idle_after: Duration, max_delay: Duration) -> Self {
        Self { idle_after, max_delay, backlog_share: 0.5, batch: 4096 }
    }
}

/// What the writer tells the shipper.
struct Activity {
    started: Instant,
    /// Milliseconds after `started` of the last spooled batch.
    last_batch_ms: AtomicU64,
    /// Set when an unsubscribe is spooled; cleared by the shipper.
    urgent: AtomicBool,
}

impl Activity {
    fn busy(&self, idle_after: Duration) -> bool {
        let since = (self.started.elapsed().as_millis() as u64)
            .saturating_sub(self.last_batch_ms.load(Ordering::Relaxed));
        since < idle_after.as_millis() as u64
    }
}

/// The sending side, held by request handlers.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Pending>,
    spool: Arc<Spool>,
    /// How long [`WriterHandle::send`] waits for room in a full spool.
    full_wait: Duration,
}

/// What became of an event handed to [`WriterHandle::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// In the spool: it will reach the store and Kafka.
    Durable,
    /// The spool stayed full for the whole wait: not taken, nothing recorded.
    Busy,
    /// The writer has stopped (shutdown began): not taken.
    Closed,
}

impl WriterHandle {
    /// The longest [`WriterHandle::send`] waits for a full spool to have
    /// room (by default it waits as long as it takes).
    pub fn with_full_wait(mut self, wait: Duration) -> Self {
        self.full_wait = wait;
        self
    }

    /// Queues an event and waits until it is durable in the spool. An
    /// event is queued only once the spool has room, so a `Busy` request
    /// leaves nothing behind that could be recorded later.
    pub async fn send(&self, event: Event) -> Sent {
        if self.spool.is_full() {
            // No deadline (the default's "as long as it takes") if it overflows.
            let deadline = tokio::time::Instant::now().checked_add(self.full_wait);
            let mut backoff = SPOOL_BACKOFF;
            while self.spool.is_full() {
                let now = tokio::time::Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    metrics::counter!("mailpipe_tracker_refused_total", "reason" => "spool_full")
                        .increment(1);
                    return Sent::Busy;
                }
                let next = now + backoff.next_delay();
                tokio::time::sleep_until(deadline.map_or(next, |d| d.min(next))).await;
            }
        }
        let (durable, done) = oneshot::channel();
        let urgent = event.kind == EventType::Unsubscribe;
        if self.tx.send(Pending { json: event.to_json(), urgent, durable }).await.is_err() {
            metrics::counter!("mailpipe_tracker_events_after_close_total").increment(1);
            return Sent::Closed;
        }
        if done.await.is_ok() { Sent::Durable } else { Sent::Closed }
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
    /// Syncs the spool on a timer, when batches are not synced as written.
    syncer: Option<JoinHandle<()>>,
    spool: Arc<Spool>,
}

/// How long the writer waits for a full or failing spool: 50 ms, doubling to 1 s.
const SPOOL_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
/// How long the shipper waits for the store or Kafka: 100 ms, doubling to 5 s.
const SHIP_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

impl EventWriter {
    pub fn spawn(
        store: Store,
        kafka: Option<KafkaEvents>,
        spool: Arc<Spool>,
        capacity: usize,
        policy: ShipPolicy,
    ) -> (Self, WriterHandle) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let shipped = Arc::new(Notify::new());
        let writer_done = Arc::new(Notify::new());
        let activity = Arc::new(Activity {
            started: Instant::now(),
            last_batch_ms: AtomicU64::new(0),
            urgent: AtomicBool::new(false),
        });
        let writer = tokio::spawn(write_loop(spool.clone(), rx, shipped.clone(), activity.clone()));
        let sinks = Sinks { store, kafka };
        let shipper =
            tokio::spawn(ship_loop(sinks, spool.clone(), shipped, writer_done.clone(), activity, policy));
        let syncer = spool.sync_every().map(|every| tokio::spawn(sync_loop(spool.clone(), every)));
        let handle = WriterHandle { tx, spool: spool.clone(), full_wait: Duration::MAX };
        (Self { writer, shipper, writer_done, syncer, spool }, handle)
    }

    /// Waits until every queued event is spooled, then gives the shipper up
    /// to `grace` to empty the spool; what is left is shipped at next start.
    pub async fn finish(self, grace: Duration) {
        let _ = self.writer.await;
        if let Some(syncer) = self.syncer {
            syncer.abort();
            let spool = self.spool.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.sync()).await {
                warn!(error = %e, "cannot sync the event spool at shutdown");
            }
        }
        self.writer_done.notify_one();
        let mut shipper = self.shipper;
        if tokio::time::timeout(grace, &mut shipper).await.is_err() {
            warn!("events left in the spool at shutdown; they are shipped at the next start");
            shipper.abort();
        }
    }
}

async fn write_loop(
    spool: Arc<Spool>,
    mut rx: mpsc::Receiver<Pending>,
    shipped: Arc<Notify>,
    activity: Arc<Activity>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let encoded = Arc::new(crate::spool::join_lines(batch.iter().map(|p| &p.json)));
        let count = batch.len();
        let urgent = batch.iter().any(|p| p.urgent);
        let mut backoff = SPOOL_BACKOFF;
        while spool.is_full() {
            metrics::counter!("mailpipe_tracker_spool_full_waits_total").increment(1);
            tokio::time::sleep(backoff.next_delay()).await;
        }
        let s = spool.clone();
        until_done("write the event spool", move || s.append_encoded(&encoded)).await;
        if urgent {
            // Even when the spool syncs on a timer, an unsubscribe is on
            // disk before it is confirmed.
            let s = spool.clone();
            until_done("sync the event spool", move || s.sync()).await;
        }
        activity.last_batch_ms.store(activity.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if urgent {
            activity.urgent.store(true, Ordering::Relaxed);
        }
        for p in batch.drain(..) {
            let _ = p.durable.send(());
        }
        metrics::counter!("mailpipe_tracker_events_spooled_total").increment(count as u64);
        metrics::gauge!("mailpipe_tracker_spool_bytes").set(spool.bytes() as f64);
        shipped.notify_one();
    }
}

struct Sinks {
    store: Store,
    kafka: Option<KafkaEvents>,
}

/// Runs a blocking spool operation until it succeeds, backing off. A failed
/// write leaves nothing counted, so trying again is safe.
async fn until_done(what: &'static str, op: impl Fn() -> std::io::Result<()> + Clone + Send + 'static) {
    let mut backoff = SPOOL_BACKOFF;
    loop {
        match tokio::task::spawn_blocking(op.clone()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => warn!(error = %e, "cannot {what}; retrying"),
            Err(e) => warn!(error = %e, "cannot {what} (task failed); retrying"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Syncs the spool every `every` (`tracker.spool_sync_ms`).
async fn sync_loop(spool: Arc<Spool>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = spool.clone();
        match tokio::task::spawn_blocking(move || s.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot sync the event spool; retrying"),
            Err(e) => warn!(error = %e, "spool sync task failed; retrying"),
        }
    }
}

/// Runs `f` on the shipper's reader in the blocking pool (file I/O).
async fn with_reader<T: Send + 'static>(
    spool: &Arc<Spool>,
    reader: &mut Option<Reader>,
    f: impl FnOnce(&Spool, &mut Reader) -> T + Send + 'static,
) -> T {
    let (s, mut r) = (spool.clone(), reader.take().expect("the reader is put back"));
    let (r, out) = tokio::task::spawn_blocking(move || {
        let out = f(&s, &mut r);
        (r, out)
    })
    .await
    .expect("spool I/O does not panic");
    *reader = Some(r);
    out
}

async fn ship_loop(
    sinks: Sinks,
    spool: Arc<Spool>,
    spooled: Arc<Notify>,
    writer_done: Arc<Notify>,
    activity: Arc<Activity>,
    policy: ShipPolicy,
) {
    let Sinks { store, kafka } = sinks;
    // Separate back-offs, so that a failing disk never lengthens the wait
    // for a store or Kafka that has come back, and the other way round.
    let (mut ship_backoff, mut read_backoff) = (SHIP_BACKOFF, SHIP_BACKOFF);
    let mut stopping = false;
    let mut was_down = false;
    let mut reader = Some(spool.reader());
    // A batch read but not yet shipped: kept across failed attempts.
    let mut pending: Option<(Batch, Instant)> = None;
    // Set by an unsubscribe, or by a batch that waited `max_delay`: ship
    // without waiting until caught up, so no event waits much longer.
    let mut eager = false;
    loop {
        let Some((batch, read_at)) = &mut pending else {
            let most = policy.batch;
            match with_reader(&spool, &mut reader, move |s, r| (r.position(), s.read(r, most))).await {
                (at, Ok(b)) if b.next != at => {
                    read_backoff.reset();
                    pending = Some((b, Instant::now()));
                }
                (_, Ok(_)) if stopping => return,
                (_, Ok(_)) => {
                    eager = false;
                    // Caught up: close the tail once it is idle and shipped.
                    let tidied = with_reader(&spool, &mut reader, |s, r| s.commit(r, r.position())).await;
                    if let Err(e) = tidied {
                        warn!(error = %e, "cannot tidy the event spool");
                    }
                    tokio::select! {
                        _ = spooled.notified() => {}
                        _ = writer_done.notified() => stopping = true,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                (_, Err(e)) => {
                    warn!(error = %e, "cannot read the event spool");
                    tokio::time::sleep(read_backoff.next_delay()).await;
                }
            }
            continue;
        };
        eager |= activity.urgent.swap(false, Ordering::Relaxed) || read_at.elapsed() >= policy.max_delay;
        let backlog = spool.bytes() as f64 >= spool.max_bytes() as f64 * policy.backlog_share;
        let wait = !stopping && !eager && !backlog;
        if wait && activity.busy(policy.idle_after) {
            metrics::counter!("mailpipe_tracker_ship_deferrals_total").increment(1);
            let recheck = (policy.idle_after / 2).min(policy.max_delay.saturating_sub(read_at.elapsed()));
            tokio::select! {
                _ = tokio::time::sleep(recheck.max(Duration::from_millis(5))) => {}
                _ = writer_done.notified() => stopping = true,
            }
            continue;
        }
        match ship(&store, kafka.as_ref(), &mut batch.events).await {
            Ok(()) => {
                let (count, next) = (batch.events.len(), batch.next);
                pending = None;
                if let Err(e) = with_reader(&spool, &mut reader, move |s, r| s.commit(r, next)).await {
                    warn!(error = %e, "cannot remove shipped spool segments");
                }
                if was_down {
                    info!("event sinks are back; spooled events shipped");
                    was_down = false;
                }
                metrics::counter!("mailpipe_tracker_events_written_total").increment(count as u64);
                metrics::gauge!("mailpipe_tracker_spool_bytes").set(spool.bytes() as f64);
                ship_backoff.reset();
            }
            Err(e) => {
                if !was_down {
                    warn!(error = %e, spooled_bytes = spool.bytes(), "cannot ship events; keeping them in the spool");
                }
                was_down = true;
                metrics::counter!("mailpipe_tracker_ship_failures_total").increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(ship_backoff.next_delay()) => {}
                    _ = writer_done.notified() => stopping = true,
                }
            }
        }
    }
}

async fn ship(store: &Store, kafka: Option<&KafkaEvents>, events: &mut [EncodedEvent]) -> Result<(), String> {
    let bounded = |what: &'static str| move |_| format!("{what} timed out after {WRITE_TIMEOUT:?}");
    // An erased recipient's old links still count, but carry no client
    // details and no URL (a personalised link may name them): nothing new
    // that could identify them is stored.
    let with_client: Vec<(String, String)> = events
        .iter()
        .map(EncodedEvent::event)
        .filter(|e| e.client.is_some() || e.url.is_some())
        .filter_map(|e| Some((e.tenant_id.as_ref()?.to_string(), e.job_id.as_ref()?.to_string())))
        .collect();
    let erased = tokio::time::timeout(WRITE_TIMEOUT, store.erased_jobs(&with_client))
        .await
        .map_err(bounded("store"))?
        .map_err(|e| e.to_string())?;
    if !erased.is_empty() {
        for e in events.iter_mut() {
            let job = match (&e.event().tenant_id, &e.event().job_id) {
                (Some(t), Some(j)) => (t.to_string(), j.to_string()),
                _ => continue,
            };
            if (e.event().client.is_some() || e.event().url.is_some()) && erased.contains(&job) {
                e.update(|e| {
                    e.client = None;
                    e.url = None;
                });
            }
        }
    }
    tokio::time::timeout(WRITE_TIMEOUT, store.insert_encoded_events(events))
        .await
        .map_err(bounded("store"))?
        .map_err(|e| e.to_string())?;
    for e in events.iter().map(EncodedEvent::event).filter(|e| e.kind == EventType::Unsubscribe) {
        let (Some(recipient), Some(tenant)) = (e.recipient_ref.as_deref(), e.tenant_id.as_ref()) else {
            continue;
        };
        // A reference that does not parse came from no token of ours.
        let Ok(recipient) = recipient.parse() else { continue };
        // Marketing only, and platform-wide: no tenant mails them marketing again.
        let entry = Suppression::unsubscribe(tenant, recipient);
        tokio::time::timeout(WRITE_TIMEOUT, store.add_suppression(&entry))
            .await
            .map_err(bounded("store"))?
            .map_err(|e| e.to_string())?;
    }
    if let Some(k) = kafka {
        // No timeout here: librdkafka keeps retrying a batch through a broker
        // restart (up to message.timeout.ms), and abandoning the wait would
        // only publish the batch twice. Requests never wait on this.
        k.publish_encoded(events).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpoolOptions;
    use mailpipe_core::{CampaignId, JobId};

    fn ev(kind: EventType, i: usize) -> Event {
        Event::for_job(
            kind,
            &mailpipe_core::TenantId::parse("acme").unwrap(),
            &CampaignId::parse("c").unwrap(),
            &JobId::parse(format!("j{i}")).unwrap(),
            "",
        )
    }

    async fn writer(name: &str, policy: ShipPolicy) -> (EventWriter, WriterHandle, Store) {
        let (w, h, store, _) = writer_with(name, policy, SpoolOptions::new(1 << 30, None)).await;
        (w, h, store)
    }

    async fn writer_with(
        name: &str,
        policy: ShipPolicy,
        options: SpoolOptions,
    ) -> (EventWriter, WriterHandle, Store, Arc<Spool>) {
        let dir = std::env::temp_dir().join(format!("writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::connect(&format!("sqlite:{}", dir.join("db.sqlite").display()), 2).await.unwrap();
        store.migrate().await.unwrap();
        let spool = Arc::new(Spool::open_with(&dir.join("spool"), options).unwrap());
        let (w, h) = EventWriter::spawn(store.clone(), None, spool.clone(), 100, policy);
        (w, h, store, spool)
    }

    async fn stored(store: &Store, kind: &str) -> i64 {
        store.event_counts("acme", "c").await.unwrap().get(kind).copied().unwrap_or(0)
    }

    /// Sends an open every 10 ms until `stop`, counting them in `sent`;
    /// returns how many.
    fn traffic(h: WriterHandle, stop: Arc<Notify>, sent: Arc<AtomicU64>) -> JoinHandle<usize> {
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                tokio::select! {
                    _ = stop.notified() => return n,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
                n += 1;
                assert_eq!(h.send(ev(EventType::Open, n)).await, Sent::Durable);
                sent.store(n as u64, Ordering::Relaxed);
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shipping_waits_for_a_pause_in_requests_but_an_unsubscribe_does_not() {
        let policy = ShipPolicy::new(Duration::from_secs(1), Duration::from_secs(60));
        let (w, h, store) = writer("pause", policy).await;
        let stop = Arc::new(Notify::new());
        let burst = traffic(h.clone(), stop.clone(), Arc::default());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(h.send(ev(EventType::Unsubscribe, 0)).await, Sent::Durable);
        let t0 = Instant::now();
        while stored(&store, "unsubscribe").await == 0 {
            assert!(t0.elapsed() < Duration::from_secs(3), "the unsubscribe waited for the burst to end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Once caught up, opens wait again while the burst goes on.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let during = stored(&store, "open").await;
        stop.notify_one();
        let sent = burst.await.unwrap() as i64;
        assert!(during < sent, "opens were shipped in the middle of the burst ({during} of {sent})");
        let t0 = Instant::now();
        while stored(&store, "open").await < sent {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the pause after the burst did not ship its events"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(h);
        w.finish(Duration::from_secs(5)).await;
        assert_eq!(stored(&store, "open").await, sent);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_steady_traffic_events_wait_no_longer_than_the_max_delay() {
        // Batches of about 10 events, so that a backlog takes many of them.
        let policy =
            ShipPolicy { batch: 10, ..ShipPolicy::new(Duration::from_secs(10), Duration::from_millis(300)) };
        let (w, h, store) = writer("steady", policy).await;
        let stop = Arc::new(Notify::new());
        let sent_so_far = Arc::new(AtomicU64::new(0));
        let burst = traffic(h.clone(), stop.clone(), sent_so_far.clone());
        // Sixty events, a backlog of six batches: about 0.6 s, longer on a
        // loaded machine (each send waits for its event to be spooled), so
        // counted rather than timed.
        let t0 = Instant::now();
        while sent_so_far.load(Ordering::Relaxed) < 60 {
            assert!(t0.elapsed() < Duration::from_secs(20), "the test's traffic did not run");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let by_then = sent_so_far.load(Ordering::Relaxed) as i64;
        // 300 ms of delay, and time to catch up, traffic going on.
        tokio::time::sleep(Duration::from_millis(1400)).await;
        let shipped = stored(&store, "open").await;
        assert!(shipped >= by_then, "only {shipped} of the first {by_then} events sent were shipped");
        stop.notify_one();
        let sent = burst.await.unwrap() as i64;
        drop(h);
        // Shutdown ships everything without waiting for a pause.
        w.finish(Duration::from_secs(5)).await;
        assert_eq!(stored(&store, "open").await, sent);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_spool_sync_ms_the_spool_is_synced_on_a_timer() {
        let policy = ShipPolicy::new(Duration::from_millis(200), Duration::from_secs(30));
        let options = SpoolOptions::new(1 << 30, Some(Duration::from_millis(50)));
        let (w, h, store, spool) = writer_with("timer", policy.clone(), options).await;
        assert_eq!(h.send(ev(EventType::Open, 1)).await, Sent::Durable);
        let t0 = Instant::now();
        while spool.pending_sync() {
            assert!(t0.elapsed() < Duration::from_secs(2), "the spool was not synced on its timer");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // An unsubscribe does not wait for the timer.
        let options = SpoolOptions::new(1 << 30, Some(Duration::from_secs(3600)));
        let (w2, h2, _, spool2) = writer_with("timer-unsub", policy, options).await;
        assert_eq!(h2.send(ev(EventType::Open, 1)).await, Sent::Durable);
        assert!(spool2.pending_sync());
        assert_eq!(h2.send(ev(EventType::Unsubscribe, 2)).await, Sent::Durable);
        assert!(!spool2.pending_sync(), "an answered unsubscribe is synced");
        drop(h2);
        w2.finish(Duration::from_secs(5)).await;

        assert_eq!(h.send(ev(EventType::Open, 2)).await, Sent::Durable);
        drop(h);
        w.finish(Duration::from_secs(5)).await;
        assert!(!spool.pending_sync(), "shutdown syncs what is written");
        assert_eq!(stored(&store, "open").await, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_that_stays_full_refuses_after_the_wait_and_takes_nothing() {
        let policy = ShipPolicy::new(Duration::from_millis(10), Duration::from_millis(10));
        let (w, h, store, spool) = writer_with("full", policy, SpoolOptions::new(10, None)).await;
        // Nothing can be shipped, so nothing leaves the spool.
        store.close().await;
        let h = h.with_full_wait(Duration::from_millis(300));
        assert_eq!(h.send(ev(EventType::Open, 1)).await, Sent::Durable, "room for one");
        assert!(spool.is_full());
        let bytes = spool.bytes();
        let t0 = Instant::now();
        assert_eq!(h.send(ev(EventType::Open, 2)).await, Sent::Busy);
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(300), "it waited for room first ({waited:?})");
        assert!(waited < Duration::from_secs(5), "and no longer ({waited:?})");
        assert_eq!(spool.bytes(), bytes, "the refused event was not written");
        drop(h);
        w.finish(Duration::from_millis(200)).await;
    }
}
