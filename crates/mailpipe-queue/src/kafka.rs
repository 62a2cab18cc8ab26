//! Apache Kafka: the send-job consumer group and the event producer.
//!
//! Offsets are never committed by the worker directly. Auto-commit is on,
//! auto offset *store* is off: a position is stored (and later committed) only
//! when [`Acker::ack`] says a job's outcome is durable, and only up to the
//! lowest unfinished offset of its partition.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailpipe_core::{EncodedEvent, Event};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::{Acker, Delivery, JobSource, OffsetTracker, QueueError, RecordId};

/// Connection settings shared by consumer and producer: the
/// `[queue.kafka]` configuration section itself.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    pub send_topic: String,
    pub events_topic: String,
    pub dlq_topic: String,
    /// How long connecting waits for a broker to answer.
    #[serde(rename = "connect_timeout_secs", deserialize_with = "mailpipe_core::units::secs")]
    pub connect_timeout: Duration,
    /// How much a worker's consumer may fetch ahead of what it processes,
    /// in KiB (librdkafka's `queued.max.messages.kbytes`, and the most one
    /// fetch brings): a bound on what librdkafka holds, which its default
    /// (64 MiB) leaves loose. In the send bench it did not move the
    /// worker's peak RSS (docs/benchmarks.md).
    pub consumer_prefetch_kib: u32,
    /// How `mailpipe topics` makes the topics, and their retention.
    pub topics: crate::topics::TopicSettings,
    /// TLS and SASL/SCRAM (`[queue.kafka.security]`).
    #[serde(default)]
    pub security: crate::security::KafkaSecurity,
    /// Extra librdkafka properties, applied last (tests use it; not a
    /// configuration key).
    #[serde(skip)]
    pub extra: Vec<(String, String)>,
}

impl KafkaSettings {
    /// A client's configuration: the brokers, `props`, then the overrides
    /// in `extra`, which win.
    pub(crate) fn client_config(&self, props: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", "mailpipe");
        self.security.apply(&mut c);
        for (k, v) in props {
            c.set(*k, *v);
        }
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    pub(crate) fn unreachable(&self, detail: impl ToString) -> QueueError {
        QueueError::Unreachable { brokers: self.brokers.clone(), detail: detail.to_string() }
    }
}

/// Keeps the offset tracker in step with partition assignment, drains
/// revoked partitions, and exports consumer lag.
pub struct TrackingContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    assigned: Arc<Mutex<std::collections::BTreeSet<i32>>>,
    drain_timeout: Duration,
    /// When a failed commit was last logged at warn: while a broker is away
    /// every auto-commit fails, and one line per 10 s says enough.
    last_commit_warning: Mutex<Option<std::time::Instant>>,
}

impl ClientContext for TrackingContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of
    /// the partitions this consumer owns, summed per topic.
    fn stats(&self, stats: rdkafka::Statistics) {
        for (name, topic) in &stats.topics {
            let lag: i64 = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(|p| p.consumer_lag)
                .sum();
            metrics::gauge!("mailpipe_consumer_lag", "topic" => name.clone()).set(lag as f64);
        }
    }
}

impl ConsumerContext for TrackingContext {
    /// Before giving partitions up, let their in-flight jobs finish (up to
    /// `drain_timeout`) and commit their offsets, so that the new owner starts
    /// after them instead of racing them: a rebalance then re-sends nothing.
    /// Jobs still running at the deadline are redelivered to the new owner,
    /// where the ledger decides (a finished job is replayed, one caught
    /// mid-transaction is in doubt).
    fn pre_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            let started = std::time::Instant::now();
            let busy = || self.tracker.lock().unwrap_or_else(|p| p.into_inner()).in_flight_of(&parts);
            let left = if wait_blocking(self.drain_timeout, || busy() == 0) { 0 } else { busy() };
            match c.commit_consumer_state(CommitMode::Sync) {
                Ok(())
                | Err(rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::NoOffset,
                )) => {}
                Err(e) => warn!(error = %e, "commit before revocation failed"),
            }
            let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
            let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
            for p in &parts {
                t.forget(*p);
                assigned.remove(p);
            }
            info!(
                partitions = parts.len(),
                waited_ms = started.elapsed().as_millis() as u64,
                left_unfinished = left,
                "partitions revoked after draining their in-flight jobs"
            );
        }
    }

    /// Auto-commit reports here, and librdkafka logs nothing of its own
    /// when a commit fails: without this a group whose position stopped
    /// moving would say nothing about why.
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => metrics::counter!("mailpipe_offset_commits_total", "result" => "ok").increment(1),
            // Nothing stored since the last commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                metrics::counter!("mailpipe_offset_commits_total", "result" => "error").increment(1);
                let now = std::time::Instant::now();
                let mut last = self.last_commit_warning.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                    *last = Some(now);
                    warn!(error = %e, partitions = offsets.count(), "offset commit failed; the next one retries");
                } else {
                    debug!(error = %e, partitions = offsets.count(), "offset commit failed; the next one retries");
                }
            }
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                // Fetching restarts at the committed offset: start the
                // partitions' bookkeeping afresh with it.
                let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
                for p in &parts {
                    t.forget(*p);
                }
                drop(t);
                self.assigned.lock().unwrap_or_else(|p| p.into_inner()).extend(parts);
                info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

/// Polls `done` every 10 ms until it holds or `timeout` passes; true if it
/// held. Runs inside librdkafka's rebalance callback, which is called from
/// `recv()` on a tokio worker: on the multi-threaded runtime the thread is
/// handed over with `block_in_place` so that the jobs being waited for keep
/// running. On a current-thread runtime they could not, so it does not wait.
fn wait_blocking(timeout: Duration, done: impl Fn() -> bool) -> bool {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let can_block = match Handle::try_current() {
        Ok(h) => h.runtime_flavor() == RuntimeFlavor::MultiThread,
        Err(_) => true,
    };
    if done() || !can_block {
        return done();
    }
    let poll = || {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        done()
    };
    if Handle::try_current().is_ok() { tokio::task::block_in_place(poll) } else { poll() }
}

/// The consumer side of `mailpipe.send.v1`.
pub struct KafkaSource {
    consumer: Arc<StreamConsumer<TrackingContext>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    assigned: Arc<Mutex<std::collections::BTreeSet<i32>>>,
    topic: String,
    /// When a recoverable consumer error was last logged at warn.
    last_transient_log: Option<std::time::Instant>,
    /// When to store every partition's position again (see [`Self::restore_positions`]).
    restore: tokio::time::Interval,
}

impl KafkaSource {
    /// Joins the consumer group. Fails within `s.connect_timeout` if no
    /// broker answers. `drain_timeout` bounds how long a rebalance waits for
    /// the in-flight jobs of revoked partitions.
    pub async fn connect(s: &KafkaSettings, drain_timeout: Duration) -> Result<Self, QueueError> {
        let timeout = s.connect_timeout;
        let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
        let assigned = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let prefetch_kib = s.consumer_prefetch_kib.to_string();
        // One fetch brings at most the prefetch (and at least one record of
        // the largest size a broker takes, 1 MB by default).
        let fetch_bytes = (u64::from(s.consumer_prefetch_kib) * 1024).max(2 << 20).to_string();
        let c = s.client_config(&[
            ("queued.max.messages.kbytes", &prefetch_kib),
            // The queue's byte bound counts what came over the wire, and
            // jobs of one campaign compress 10-20 times in a batch: what
            // bounds the decompressed queue is the count it refills to
            // (per partition) and the size of one partition's fetch. With
            // librdkafka's 1000 and 1 MB, the send bench's worker held
            // about 150 MB of prefetched jobs at start.
            ("queued.min.messages", "300"),
            ("fetch.message.max.bytes", "262144"),
            ("fetch.max.bytes", &fetch_bytes),
            ("group.id", &s.group_id),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("session.timeout.ms", "10000"),
            ("max.poll.interval.ms", "300000"),
            ("statistics.interval.ms", "5000"),
        ]);
        let consumer: StreamConsumer<TrackingContext> = c.create_with_context(TrackingContext {
            tracker: tracker.clone(),
            assigned: assigned.clone(),
            drain_timeout,
            last_commit_warning: Mutex::new(None),
        })?;
        let consumer = Arc::new(consumer);
        check_topic(consumer.as_ref(), &s.send_topic, timeout, s).await?;
        consumer.subscribe(&[&s.send_topic])?;
        let mut restore = tokio::time::interval(RESTORE_EVERY);
        restore.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            consumer,
            tracker,
            assigned,
            topic: s.send_topic.clone(),
            last_transient_log: None,
            restore,
        })
    }

    /// Stores every partition's position again. A position lives in the
    /// client's memory until the next auto-commit; a store that failed, or a
    /// stored offset the client cleared, would otherwise stay lost until a
    /// later job of the partition finished, and after the last job of a
    /// partition none does: its committed offset would never move again.
    /// Storing a position the group already committed is a no-op.
    fn restore_positions(&self) {
        let positions = self.tracker.lock().unwrap_or_else(|p| p.into_inner()).positions();
        for (partition, pos) in positions {
            if let Err(e) = store_position(&self.consumer, &self.topic, partition, pos) {
                debug!(error = %e, partition, offset = pos, "position not stored again");
            }
        }
    }

    /// Commits stored offsets synchronously; call after draining on shutdown.
    pub fn commit_stored(&self) -> Result<(), QueueError> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => Ok(()),
            // Nothing stored since the last commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner()).in_flight()
    }
}

async fn check_topic<C: Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
    s: &KafkaSettings,
) -> Result<(), QueueError> {
    // fetch_metadata blocks; it is bounded by `timeout` and runs once at start-up.
    let md = tokio::task::block_in_place(|| consumer.fetch_metadata(Some(topic), timeout))
        .map_err(|e| s.unreachable(e))?;
    topic_ready(&md, topic, s)
}

/// Whether `topic` is in `md` with partitions: else why not, in one message
/// for a missing topic and one this principal may not see (the broker
/// answers both as an error on the topic).
fn topic_ready(md: &rdkafka::metadata::Metadata, topic: &str, s: &KafkaSettings) -> Result<(), QueueError> {
    let found = md.topics().iter().find(|t| t.name() == topic);
    match found.map(|t| (t.error(), t.partitions().is_empty())) {
        Some((None, false)) => Ok(()),
        Some((Some(e), _)) if matches!(RDKafkaErrorCode::from(e), RDKafkaErrorCode::TopicAuthorizationFailed) => {
            Err(s.unreachable(format!(
                "not authorized to use topic {topic} (TopicAuthorizationFailed): the brokers' ACLs do not give \
                 this principal ({}) the topic",
                if s.security.username.is_empty() { "anonymous" } else { s.security.username.as_str() }
            )))
        }
        _ => Err(s.unreachable(format!("topic {topic} does not exist (scripts/services.sh up creates it)"))),
    }
}

struct KafkaAcker {
    consumer: Arc<StreamConsumer<TrackingContext>>,
    tracker: Arc<Mutex<OffsetTracker>>,
}

/// How often [`KafkaSource::restore_positions`] runs: as often as auto-commit.
const RESTORE_EVERY: Duration = Duration::from_secs(1);

/// Stores `pos` as the next offset to commit for one partition.
fn store_position(
    consumer: &StreamConsumer<TrackingContext>,
    topic: &str,
    partition: i32,
    pos: i64,
) -> rdkafka::error::KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(pos))?;
    consumer.store_offsets(&tpl)
}

impl Acker for KafkaAcker {
    fn ack(&self, id: &RecordId) {
        let pos = self.tracker.lock().unwrap_or_else(|p| p.into_inner()).complete(id.partition, id.offset);
        if let Some(pos) = pos {
            // A revoked partition is gone from the tracker, so this is not
            // expected to fail. If it does, the next periodic store tries
            // again; should the partition be gone, its new owner redelivers
            // the record and the ledger turns that into a replay.
            if let Err(e) = store_position(&self.consumer, &id.topic, id.partition, pos) {
                warn!(error = %e, partition = id.partition, offset = pos, "offset not stored");
            }
        }
    }
}

impl JobSource for KafkaSource {
    async fn recv(&mut self) -> Result<Option<Delivery>, QueueError> {
        let m = loop {
            let next = tokio::select! {
                m = self.consumer.recv() => m,
                _ = self.restore.tick() => {
                    self.restore_positions();
                    continue;
                }
            };
            match next {
                Ok(m) => break m,
                // librdkafka recovers from every consumer error but a fatal
                // one by itself (reconnects, rejoins the group); the errors
                // it queues while a broker is away are news, not failures.
                // Waiting on each would leave them to drain one by one
                // long after the broker is back, with records queued
                // behind them. Log the first of a run, and read on.
                Err(rdkafka::error::KafkaError::MessageConsumption(code))
                    if code != RDKafkaErrorCode::Fatal =>
                {
                    let now = std::time::Instant::now();
                    if self.last_transient_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
                    {
                        warn!(error = %code, "consumer error; librdkafka is recovering, reading on");
                        self.last_transient_log = Some(now);
                    } else {
                        debug!(error = %code, "consumer error; librdkafka is recovering");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        let d = Delivery {
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            key: m.key().map(<[u8]>::to_vec),
            id: RecordId { topic: self.topic.clone(), partition: m.partition(), offset: m.offset() },
        };
        self.tracker.lock().unwrap_or_else(|p| p.into_inner()).begin(d.id.partition, d.id.offset);
        Ok(Some(d))
    }

    fn acker(&self) -> Arc<dyn Acker> {
        Arc::new(KafkaAcker { consumer: self.consumer.clone(), tracker: self.tracker.clone() })
    }

    fn shards(&self) -> crate::Shards {
        let assigned = self.assigned.clone();
        Arc::new(move || Some(assigned.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()))
    }
}

/// Publishes events, dead letters and (for `mailpipe enqueue`) send jobs,
/// each call returning once the broker has acknowledged the write.
#[derive(Clone)]
pub struct KafkaEvents {
    producer: FutureProducer,
    settings: Arc<KafkaSettings>,
}

impl KafkaEvents {
    /// A producer of events (and dead letters), checked against the events
    /// topic.
    pub async fn connect(s: &KafkaSettings) -> Result<Self, QueueError> {
        Self::connect_to(s, &s.events_topic).await
    }

    /// A producer checked against `topic`, the one its principal writes
    /// (`mailpipe enqueue`'s may see only the send topic).
    pub async fn connect_to(s: &KafkaSettings, topic: &str) -> Result<Self, QueueError> {
        let timeout = s.connect_timeout;
        let c = s.client_config(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
            ("message.timeout.ms", "30000"),
        ]);
        let producer: FutureProducer = c.create()?;
        let md = tokio::task::block_in_place(|| producer.client().fetch_metadata(Some(topic), timeout))
            .map_err(|e| s.unreachable(e))?;
        topic_ready(&md, topic, s)?;
        Ok(Self { producer, settings: Arc::new(s.clone()) })
    }

    async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), QueueError> {
        let mut rec = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        self.producer
            .send(rec, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| QueueError::Kafka(e))
    }

    /// Publishes events keyed by tenant, so one tenant's events stay in order.
    pub async fn publish(&self, events: &[Event]) -> Result<(), QueueError> {
        let json: Vec<Vec<u8>> = events.iter().map(Event::to_json).collect();
        self.publish_payloads(events.iter().zip(json.iter().map(Vec::as_slice))).await
    }

    /// Same, for events already encoded: their JSON is the record as it is.
    pub async fn publish_encoded(&self, events: &[EncodedEvent]) -> Result<(), QueueError> {
        self.publish_payloads(events.iter().map(|e| (e.event(), e.json()))).await
    }

    async fn publish_payloads<'a>(
        &self,
        rows: impl Iterator<Item = (&'a Event, &'a [u8])>,
    ) -> Result<(), QueueError> {
        // All records are enqueued before any delivery is awaited, so they
        // batch in the producer (linger.ms). Enqueuing is synchronous work:
        // yield every few hundred records, so that a batch of thousands does
        // not hold a runtime thread (the tracker's requests share it).
        let mut deliveries = Vec::new();
        for (i, (e, payload)) in rows.enumerate() {
            if i > 0 && i % 256 == 0 {
                tokio::task::yield_now().await;
            }
            let key = e.tenant_id.as_ref().map(|t| t.as_str()).unwrap_or("").as_bytes();
            let mut rec = FutureRecord::to(&self.settings.events_topic).key(key).payload(payload);
            let full_since = std::time::Instant::now();
            loop {
                match self.producer.send_result(rec) {
                    Ok(delivery) => break deliveries.push(delivery),
                    // The local queue is full: wait for deliveries to make
                    // room, as long as `send` would (30 s).
                    Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                        if full_since.elapsed() < Duration::from_secs(30) =>
                    {
                        rec = r;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => return Err(QueueError::Kafka(e)),
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(QueueError::Kafka(e)),
                Err(_) => return Err(QueueError::Closed),
            }
        }
        Ok(())
    }

    /// Copies a rejected record to the dead-letter topic with its reason.
    /// `source` names where the record came from: `topic/partition/offset`
    /// for a queue record, `retry/tenant/job` for a scheduled retry.
    pub async fn dead_letter(
        &self,
        source: &str,
        key: &[u8],
        payload: &[u8],
        reason: &str,
        detail: &str,
    ) -> Result<(), QueueError> {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "mailpipe-reason", value: Some(reason) })
            .insert(Header { key: "mailpipe-detail", value: Some(detail) })
            .insert(Header { key: "mailpipe-source", value: Some(source) });
        self.send(&self.settings.dlq_topic, key, payload, Some(headers)).await
    }

    /// Produces a send job (what a campaign scheduler does).
    pub async fn enqueue(&self, key: &str, payload: &[u8]) -> Result<(), QueueError> {
        self.send(&self.settings.send_topic, key.as_bytes(), payload, None).await
    }

    /// Waits for every queued write, bounded by `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), QueueError> {
        self.producer.flush(timeout).map_err(QueueError::from)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

    use rdkafka::mocking::MockCluster;

    use super::*;

    /// The group's committed offset of partition 0, through a second client.
    fn committed_of(brokers: &str, group: &str, topic: &str) -> Option<i64> {
        let c: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        let got = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
        match got.elements()[0].offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    /// A position the client lost after the last job of a partition was
    /// acknowledged is stored again, so the group still commits past it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_position_is_stored_again() {
        let cluster = MockCluster::new(1).unwrap();
        let brokers = cluster.bootstrap_servers();
        cluster.create_topic("jobs", 1, 1).unwrap();
        let s = KafkaSettings {
            brokers: brokers.clone(),
            group_id: "g".into(),
            send_topic: "jobs".into(),
            events_topic: "jobs".into(),
            dlq_topic: "dlq".into(),
            connect_timeout: Duration::from_secs(5),
            consumer_prefetch_kib: 8192,
            topics: crate::topics::TopicSettings {
                partitions: 1,
                replication_factor: 1,
                send_retention_hours: 1,
                events_retention_hours: 1,
                dlq_retention_hours: 1,
            },
            security: Default::default(),
            // Commits only when the test says, so that nothing races the loss.
            extra: vec![("enable.auto.commit".into(), "false".into())],
        };
        let out = KafkaEvents::connect(&s).await.unwrap();
        for i in 0..3 {
            out.enqueue("k", format!("job {i}").as_bytes()).await.unwrap();
        }
        let mut source = KafkaSource::connect(&s, Duration::from_secs(1)).await.unwrap();
        let acker = source.acker();
        for _ in 0..3 {
            let d =
                tokio::time::timeout(Duration::from_secs(10), source.recv()).await.unwrap().unwrap().unwrap();
            acker.ack(&d.id);
        }
        // The client forgets the stored position (as a failed store or a
        // reset inside librdkafka would): a commit now has nothing to commit.
        let mut forget = TopicPartitionList::new();
        forget.add_partition_offset("jobs", 0, Offset::Invalid).unwrap();
        source.consumer.store_offsets(&forget).unwrap();
        source.commit_stored().unwrap();
        assert_eq!(committed_of(&brokers, "g", "jobs"), None, "the loss is real: nothing committed");

        // No job is left to complete; waiting for the next record is enough.
        let more = tokio::time::timeout(RESTORE_EVERY * 3, source.recv()).await;
        assert!(more.is_err(), "no record beyond the three");
        source.commit_stored().unwrap();
        assert_eq!(
            committed_of(&brokers, "g", "jobs"),
            Some(3),
            "the position was stored again and committed"
        );
    }
}
