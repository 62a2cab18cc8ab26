//! Where send jobs come from and where events go.
//!
//! * [`JobSource`]: the Kafka consumer group ([`kafka::KafkaSource`]), the
//!   single-node mode's durable queue in the SQLite store
//!   ([`stored::StoredSource`]), or the demo's in-process queue
//!   ([`memory::memory_queue`]).
//! * [`Acker`]: told when a job's outcome is durable; for Kafka it stores the
//!   lowest contiguous finished offset per partition ([`OffsetTracker`]).
//! * [`kafka::KafkaEvents`]: publishes events and dead letters, awaiting the
//!   broker's acknowledgement.
#![forbid(unsafe_code)]

pub mod kafka;
pub mod memory;
mod offsets;
pub mod security;
pub mod stored;
pub mod topics;

use std::future::Future;
use std::sync::Arc;

pub use offsets::OffsetTracker;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot reach Kafka at {brokers}: {detail}")]
    Unreachable { brokers: String, detail: String },
    #[error("kafka refused to {action}: {code}")]
    Refused { action: String, code: rdkafka::error::RDKafkaErrorCode },
    #[error("the store's queue: {0}")]
    Store(#[from] mailpipe_store::StoreError),
    #[error("queue closed")]
    Closed,
}

/// Identifies one queue record; `topic/partition/offset` is unique.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordId {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// One job as received, not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub payload: Vec<u8>,
    pub key: Option<Vec<u8>>,
    pub id: RecordId,
}

/// Acknowledges records whose outcome is durable.
pub trait Acker: Send + Sync + 'static {
    /// Called exactly once per delivered record, after its outcome is stored.
    fn ack(&self, id: &RecordId);
}

/// The queue partitions this consumer owns right now, or `None` for "all"
/// (a single-consumer source).
pub type Shards = Arc<dyn Fn() -> Option<Vec<i32>> + Send + Sync>;

pub trait JobSource: Send {
    /// The next job, or `None` when the source is exhausted.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Delivery>, QueueError>> + Send;
    /// A handle the worker's tasks use to acknowledge.
    fn acker(&self) -> Arc<dyn Acker>;
    /// A handle telling which partitions this consumer owns now.
    fn shards(&self) -> Shards {
        Arc::new(|| None)
    }
}
