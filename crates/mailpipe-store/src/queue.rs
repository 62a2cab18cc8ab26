//! The single-node mode's durable send queue (`queue.kind = "store"`): a
//! table in the SQLite store that stands in for the Kafka send topic. Jobs
//! are appended in one transaction per batch ([`Store::enqueue_jobs`]), read
//! in `seq` order ([`Store::queued_after`]) and deleted once their outcome
//! is durable ([`Store::dequeue`]), as a consumer group commits offsets.
//!
//! SQLite only: one process consumes it (more would each read every row,
//! the ledger keeping them from sending any job twice). Beyond one machine
//! the queue is Kafka's, with its consumer groups.

use mailpipe_core::now_ms;

use crate::{Pool, Result, Store, StoreError};

/// One queued record: its offset, its key (the rate-limit key, as on the
/// send topic) and the job's bytes, unparsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub seq: i64,
    pub key: String,
    pub payload: Vec<u8>,
}

/// Rows per statement: two parameters each, well under SQLite's limit.
const ROWS_PER_STATEMENT: usize = 300;

impl Store {
    fn queue_pool(&self) -> Result<&sqlx::SqlitePool> {
        match &self.pool {
            Pool::Sqlite(p) => Ok(p),
            Pool::Postgres(_) => Err(StoreError::Unsupported(
                "the store's send queue is the single-node mode's, on SQLite; with PostgreSQL, jobs go through Kafka (queue.kind = \"kafka\")",
            )),
        }
    }

    /// Appends `(key, payload)` records in order, all or none (one
    /// transaction); returns the last one's offset.
    pub async fn enqueue_jobs(&self, jobs: &[(String, Vec<u8>)]) -> Result<i64> {
        let pool = self.queue_pool()?;
        let now = now_ms();
        let mut tx = pool.begin().await?;
        let mut last = 0;
        for chunk in jobs.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::from("INSERT INTO send_queue (queue_key, payload, enqueued_at) VALUES ");
            for i in 0..chunk.len() {
                let n = i * 2;
                sql.push_str(&format!("{}(${}, ${}, {now})", if i == 0 { "" } else { ", " }, n + 1, n + 2));
            }
            sql.push_str(" RETURNING seq");
            let mut q = sqlx::query_scalar::<_, i64>(&sql);
            for (key, payload) in chunk {
                q = q.bind(key.as_str()).bind(payload.as_slice());
            }
            last = q.fetch_all(&mut *tx).await?.into_iter().max().unwrap_or(last);
        }
        tx.commit().await?;
        Ok(last)
    }

    /// Up to `limit` records after offset `after`, oldest first.
    pub async fn queued_after(&self, after: i64, limit: i64) -> Result<Vec<QueuedJob>> {
        let pool = self.queue_pool()?;
        let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, queue_key, payload FROM send_queue WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().map(|(seq, key, payload)| QueuedJob { seq, key, payload }).collect())
    }

    /// Deletes the records at these offsets (done with); returns how many
    /// were still there.
    pub async fn dequeue(&self, seqs: &[i64]) -> Result<u64> {
        let pool = self.queue_pool()?;
        let mut gone = 0;
        for chunk in seqs.chunks(ROWS_PER_STATEMENT * 3) {
            let list = chunk.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            let sql = format!("DELETE FROM send_queue WHERE seq IN ({list})");
            gone += sqlx::query(&sql).execute(pool).await?.rows_affected();
        }
        Ok(gone)
    }

    /// How many records wait in the queue (taken or not), at most: the
    /// span from the oldest to the newest, which two lookups of the key
    /// give without counting rows.
    pub async fn queue_depth(&self) -> Result<i64> {
        let pool = self.queue_pool()?;
        let sql = "SELECT COALESCE(MAX(seq) - MIN(seq) + 1, 0) FROM send_queue";
        Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
    }
}
