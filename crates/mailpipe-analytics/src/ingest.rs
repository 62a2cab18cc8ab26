//! Counting events into the aggregates. Counting is idempotent (an event is
//! counted once, by `event_id`), so a redelivered batch or a re-read of the
//! store does no harm.

use std::time::Duration;

use mailpipe_core::{Backoff, Event};
use mailpipe_queue::JobSource;
use mailpipe_queue::kafka::{KafkaSettings, KafkaSource};
use mailpipe_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::AnalyticsError;

/// Where events are counted from.
pub enum EventFeed {
    /// The events topic, read by its own consumer group.
    Kafka(Box<KafkaSettings>),
    /// The store's events, read every second: the single-node mode's (on
    /// SQLite through the store's feed, which keeps the place across
    /// restarts; on PostgreSQL from the start, only for small stores
    /// without Kafka).
    Store,
}

impl EventFeed {
    /// The events topic of `kafka`, as consumer group `group_id`.
    pub fn kafka(kafka: &KafkaSettings, group_id: &str) -> Self {
        let mut s = kafka.clone();
        s.send_topic = s.events_topic.clone();
        s.group_id = group_id.to_owned();
        EventFeed::Kafka(Box::new(s))
    }
}

/// How long counting waits for the store: 100 ms, doubling to 5 s.
const STORE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Counts events until `shutdown`. From Kafka, a batch's offsets are stored
/// only after it is counted.
pub async fn run(feed: EventFeed, store: &Store, shutdown: CancellationToken) -> Result<(), AnalyticsError> {
    match feed {
        EventFeed::Kafka(settings) => {
            let mut source = KafkaSource::connect(&settings, Duration::from_secs(10)).await?;
            let acker = source.acker();
            loop {
                let first = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = source.recv() => r,
                };
                let mut batch = match first {
                    Ok(Some(d)) => vec![d],
                    Ok(None) => break,
                    Err(e) => {
                        // librdkafka recovers by itself; look again in a second.
                        warn!(error = %e, "events: receive failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                };
                // Take what else is ready, up to 500, without waiting long.
                while batch.len() < 500 {
                    match tokio::time::timeout(Duration::from_millis(20), source.recv()).await {
                        Ok(Ok(Some(d))) => batch.push(d),
                        _ => break,
                    }
                }
                let events: Vec<Event> =
                    batch.iter().filter_map(|d| serde_json::from_slice(&d.payload).ok()).collect();
                let mut backoff = STORE_BACKOFF;
                while let Err(e) = store.apply_events(&events).await {
                    warn!(error = %e, "cannot count events; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
                for d in &batch {
                    acker.ack(&d.id);
                }
                metrics::counter!("mailpipe_analytics_events_total").increment(events.len() as u64);
            }
            source.commit_stored()?;
        }
        EventFeed::Store => {
            let mut backoff = STORE_BACKOFF;
            loop {
                let pause = match count_stored(store).await {
                    Ok(n) => {
                        backoff = STORE_BACKOFF;
                        metrics::counter!("mailpipe_analytics_events_total").increment(n as u64);
                        Duration::from_secs(1)
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot count the stored events; retrying");
                        backoff.next_delay()
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    Ok(())
}

/// Counts the stored events not counted yet; returns how many were new.
/// On SQLite, through the store's feed (a row per event, deleted once
/// counted); on PostgreSQL, by reading every event again (only for a small
/// store without Kafka).
pub async fn count_stored(store: &Store) -> Result<usize, AnalyticsError> {
    let mut n = 0;
    if store.events_feed(0).await?.is_some() {
        loop {
            let Some((last, events)) = store.events_feed(1000).await? else { return Ok(n) };
            if last == 0 {
                return Ok(n);
            }
            n += store.apply_events(&events).await?;
            store.events_feed_done(last).await?;
        }
    }
    let mut cursor = 0;
    loop {
        let (next, events) = store.events_after(cursor, 1000).await?;
        if next == cursor {
            return Ok(n);
        }
        if !events.is_empty() {
            n += store.apply_events(&events).await?;
        }
        cursor = next;
    }
}
