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
    /// The store's events table, read every second: the single-node mode's
    /// (on SQLite, from where the last read ended; on PostgreSQL, from the
    /// start, as it is only for small stores without Kafka).
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
            // On SQLite a row's rowid only grows (one writer at a time), so
            // each round reads on from where the last ended; PostgreSQL's
            // paging is by position, so it reads from the start each round.
            let keep = store.backend() == "sqlite";
            let mut cursor = 0;
            let mut backoff = STORE_BACKOFF;
            loop {
                let pause = match count_stored(store, if keep { cursor } else { 0 }).await {
                    Ok((next, n)) => {
                        cursor = next;
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

/// Counts the stored events after `cursor`; returns where it ended and
/// how many were new.
pub async fn count_stored(store: &Store, mut cursor: i64) -> Result<(i64, usize), AnalyticsError> {
    let mut n = 0;
    loop {
        let (next, events) = store.events_after(cursor, 1000).await?;
        if next == cursor {
            return Ok((cursor, n));
        }
        // A page of rows that do not parse still moves the cursor on.
        if !events.is_empty() {
            n += store.apply_events(&events).await?;
        }
        cursor = next;
    }
}
