//! `[worker]`: how the send worker runs. This type is the configuration
//! section itself (config/default.toml holds the values, docs/configuration.md
//! explains them); nothing maps it by hand.

use std::time::Duration;

use mailpipe_core::Backoff;
use mailpipe_core::units::{millis, secs};
use serde::Deserialize;

/// What to do with a job found `sending` on redelivery: its previous attempt
/// died after the SMTP transaction began, so it may have been delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InDoubtPolicy {
    /// Record it as sent (flagged in doubt) and never send again: no
    /// duplicates, at the risk of a lost message.
    AssumeDelivered,
    /// Send again: no loss, at the risk of a duplicate (same Message-ID).
    Retry,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Jobs processed at once, across all partitions.
    pub max_in_flight: usize,
    /// How long shutdown waits for in-flight jobs before giving up on them
    /// (they are then redelivered, unacknowledged, after a restart).
    #[serde(rename = "grace_period_secs", deserialize_with = "secs")]
    pub grace_period: Duration,
    pub in_doubt: InDoubtPolicy,
    /// Delivery attempts before a deferred job fails.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt, with jitter, up to `retry_max`.
    #[serde(rename = "retry_base_ms", deserialize_with = "millis")]
    pub retry_base: Duration,
    #[serde(rename = "retry_max_ms", deserialize_with = "millis")]
    pub retry_max: Duration,
    /// A deferred job older than this fails instead of retrying again.
    #[serde(rename = "max_age_secs", deserialize_with = "secs")]
    pub max_age: Duration,
    /// A job whose rate limit asks it to wait longer than this is parked on
    /// the retry schedule instead, releasing its slot for other domains.
    #[serde(rename = "park_after_ms", deserialize_with = "millis")]
    pub park_after: Duration,
    /// How long a worker uses a registered template before it looks up its
    /// version again: a new version reaches the workers within this time.
    #[serde(rename = "template_recheck_ms", deserialize_with = "millis")]
    pub template_recheck: Duration,
    /// How often the retry schedule is polled for due jobs.
    #[serde(rename = "retry_poll_ms", deserialize_with = "millis")]
    pub retry_poll: Duration,
    /// How long a worker holds a job it took from the retry schedule before
    /// another worker may take it. Must exceed the longest SMTP transaction.
    #[serde(rename = "retry_lease_secs", deserialize_with = "secs")]
    pub retry_lease: Duration,
    /// Entries the in-memory suppression filter is sized for.
    pub suppression_filter_capacity: u64,
    /// How often the filter looks for new suppressions.
    #[serde(rename = "suppression_poll_ms", deserialize_with = "millis")]
    pub suppression_poll: Duration,
    /// How often the filter is rebuilt from the whole table (dropping
    /// removed entries, and making good anything a poll could miss).
    #[serde(rename = "suppression_rebuild_secs", deserialize_with = "secs")]
    pub suppression_rebuild: Duration,
    /// Most ledger rows (claims, marks or outcomes) in one statement.
    pub ledger_batch_max: usize,
    /// How long a ledger batch waits for more rows once it has one, in
    /// microseconds; 0 takes only what is already waiting.
    pub ledger_linger_us: u64,
    /// Ledger batches of one kind written at once.
    pub ledger_batches_in_flight: usize,
    /// The longest a ledger batch's statement may run before PostgreSQL
    /// cancels it: a stuck write fails its jobs (retried, or deferred
    /// behind the ledger's fence) instead of holding them, and an SMTP
    /// transaction at its commit point, without end.
    #[serde(rename = "ledger_write_timeout_ms", deserialize_with = "millis")]
    pub ledger_write_timeout: Duration,
}

impl WorkerSettings {
    /// The retry schedule's back-off: `retry_base`, doubled per attempt.
    pub fn retry_backoff(&self) -> Backoff {
        Backoff::new(self.retry_base, self.retry_max)
    }

    /// The ledger writer's connections: one per batch in flight of each of
    /// its three kinds.
    pub fn ledger_connections(&self) -> u32 {
        3 * self.ledger_batches_in_flight.max(1) as u32
    }

    /// How the ledger writer batches.
    pub fn ledger_batches(&self) -> mailpipe_store::BatchSettings {
        mailpipe_store::BatchSettings {
            max_rows: self.ledger_batch_max.max(1),
            linger: Duration::from_micros(self.ledger_linger_us),
            in_flight: self.ledger_batches_in_flight.max(1),
        }
    }
}
