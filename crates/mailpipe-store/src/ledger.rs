//! The send ledger: one row per job, keyed by `(tenant_id, job_id)`. It is
//! what makes a redelivered job harmless (a terminal row is never sent
//! again), what marks the window of doubt (`sending`), and, with a payload
//! and a due time, the durable retry schedule.

use std::collections::BTreeMap;
use std::str::FromStr;

use mailpipe_core::{Event, RecipientRef, SendJob, now_ms};

use crate::events::insert_event_q;
use crate::{Pool, Result, Store, StoreError};

/// Where a job stands in the send ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerStatus {
    Pending,
    /// An SMTP transaction was under way. Seen on redelivery, it means the
    /// previous attempt died mid-send: the job is in doubt.
    Sending,
    Deferred,
    Sent,
    Bounced,
    Suppressed,
    Failed,
    DeadLettered,
}

impl LedgerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerStatus::Pending => "pending",
            LedgerStatus::Sending => "sending",
            LedgerStatus::Deferred => "deferred",
            LedgerStatus::Sent => "sent",
            LedgerStatus::Bounced => "bounced",
            LedgerStatus::Suppressed => "suppressed",
            LedgerStatus::Failed => "failed",
            LedgerStatus::DeadLettered => "dead_lettered",
        }
    }

    pub fn is_terminal(self) -> bool {
        match self {
            LedgerStatus::Pending | LedgerStatus::Sending | LedgerStatus::Deferred => false,
            LedgerStatus::Sent
            | LedgerStatus::Bounced
            | LedgerStatus::Suppressed
            | LedgerStatus::Failed
            | LedgerStatus::DeadLettered => true,
        }
    }
}

impl FromStr for LedgerStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => LedgerStatus::Pending,
            "sending" => LedgerStatus::Sending,
            "deferred" => LedgerStatus::Deferred,
            "sent" => LedgerStatus::Sent,
            "bounced" => LedgerStatus::Bounced,
            "suppressed" => LedgerStatus::Suppressed,
            "failed" => LedgerStatus::Failed,
            "dead_lettered" => LedgerStatus::DeadLettered,
            other => return Err(StoreError::BadStatus(other.to_owned())),
        })
    }
}

/// The ledger row as the worker sees it after claiming a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub status: LedgerStatus,
    /// Attempts made before this one.
    pub attempts: i32,
    pub message_id: Option<String>,
    /// When the job was first claimed (unix ms): its age bounds its retries.
    pub created_at_ms: i64,
    /// The job is on the retry schedule, which owns it from then on: a
    /// redelivered queue record for it is acknowledged without sending.
    pub scheduled: bool,
    /// The return-path tag the job was first claimed with, which every
    /// attempt sends with; `None` for a job claimed without return paths.
    pub return_tag: Option<String>,
}

/// A job taken from the retry schedule.
#[derive(Debug, Clone)]
pub struct DueRetry {
    pub tenant_id: String,
    pub job_id: String,
    /// The queue partition it came from.
    pub shard: i32,
    /// The send job as first received.
    pub payload: Vec<u8>,
}

/// A queue record the worker could not accept.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Where it came from, unique per record: `topic/partition/offset`.
    pub source: String,
    pub reason: String,
    pub detail: String,
    pub tenant_id: Option<String>,
    pub job_id: Option<String>,
    pub payload: Vec<u8>,
}

impl Store {
    /// Claims a job in the ledger: inserts it as `pending` if new, and
    /// returns its row either way. The caller decides from the status whether
    /// to send (new, pending, deferred), resolve an in-doubt attempt
    /// (sending), or only re-announce a finished outcome (terminal).
    /// `recipient` is the keyed hash of the job's canonical address, by which
    /// an erasure finds the row; a job for someone already erased (in the
    /// job's tenant or everywhere) stores the hash in place of the address.
    pub async fn claim_job(
        &self,
        job: &SendJob,
        recipient: &RecipientRef,
        return_tag: Option<&str>,
    ) -> Result<Claim> {
        let now = now_ms();
        let insert = "INSERT INTO send_ledger (tenant_id, job_id, campaign_id, category, recipient, recipient_domain, status, attempts, created_at, updated_at, recipient_hash, return_tag)
                      VALUES ($1, $2, $3, $4, CASE WHEN EXISTS (SELECT 1 FROM erasures WHERE recipient_hash = $8 AND scope_tenant IN ('', $1)) THEN 'erased:' || $8 ELSE $5 END, $6, 'pending', 0, $7, $7, $8, $9)
                      ON CONFLICT (tenant_id, job_id) DO NOTHING";
        let select = "SELECT status, attempts, message_id, created_at, payload IS NOT NULL, return_tag
                      FROM send_ledger WHERE tenant_id = $1 AND job_id = $2";
        let row: (String, i32, Option<String>, i64, bool, Option<String>) = match &self.pool {
            // One round trip: the insert, or else the row that is there.
            // The outer SELECT reads the statement's snapshot, which cannot
            // see a row that a concurrent claim committed after it began;
            // then neither branch returns a row and the plain SELECT, a new
            // statement with a new snapshot, reads it.
            Pool::Postgres(p) => {
                let claim = "WITH ins AS (
                                 INSERT INTO send_ledger (tenant_id, job_id, campaign_id, category, recipient, recipient_domain, status, attempts, created_at, updated_at, recipient_hash, return_tag)
                                 VALUES ($1, $2, $3, $4, CASE WHEN EXISTS (SELECT 1 FROM erasures WHERE recipient_hash = $8 AND scope_tenant IN ('', $1)) THEN 'erased:' || $8 ELSE $5 END, $6, 'pending', 0, $7, $7, $8, $9)
                                 ON CONFLICT (tenant_id, job_id) DO NOTHING
                                 RETURNING status, attempts, message_id, created_at, payload IS NOT NULL, return_tag)
                             SELECT * FROM ins
                             UNION ALL
                             SELECT status, attempts, message_id, created_at, payload IS NOT NULL, return_tag
                             FROM send_ledger WHERE tenant_id = $1 AND job_id = $2 AND NOT EXISTS (SELECT 1 FROM ins)";
                let got = bind_new_row!(sqlx::query_as(claim), job, recipient, now, return_tag)
                    .fetch_optional(p)
                    .await?;
                match got {
                    Some(row) => row,
                    None => {
                        sqlx::query_as(select)
                            .bind(job.tenant_id.as_str())
                            .bind(job.job_id.as_str())
                            .fetch_one(p)
                            .await?
                    }
                }
            }
            Pool::Sqlite(p) => {
                bind_new_row!(sqlx::query(insert), job, recipient, now, return_tag).execute(p).await?;
                sqlx::query_as(select)
                    .bind(job.tenant_id.as_str())
                    .bind(job.job_id.as_str())
                    .fetch_one(p)
                    .await?
            }
        };
        Ok(Claim {
            status: row.0.parse()?,
            attempts: row.1,
            message_id: row.2,
            created_at_ms: row.3,
            scheduled: row.4,
            return_tag: row.5,
        })
    }

    /// Marks the start of an SMTP transaction. If the process dies before
    /// [`Store::finish`], the row stays `sending` and the job is in doubt.
    ///
    /// Only from what the attempt's claim read (its status and attempt
    /// count, which every mark moves on, so it fences): if another attempt
    /// of the job (a second record of it) got there first, nothing changes,
    /// this returns false, and the caller must not send.
    pub async fn mark_sending(
        &self,
        tenant: &str,
        job_id: &str,
        message_id: &str,
        claim: &Claim,
    ) -> Result<bool> {
        let sql = "UPDATE send_ledger SET status = 'sending', message_id = $3, attempts = attempts + 1, updated_at = $4
                   WHERE tenant_id = $1 AND job_id = $2 AND status = $5 AND attempts = $6";
        let n = on_pool!(self, p => sqlx::query(sql).bind(tenant).bind(job_id).bind(message_id).bind(now_ms())
            .bind(claim.status.as_str()).bind(claim.attempts).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Records a terminal outcome: the ledger status and its event, in one
    /// transaction, if the job has no outcome yet; returns whether it did.
    /// A job that already has one keeps it, and gets no second terminal
    /// event (another record of it, or a stale attempt, finished first).
    /// Clears the job's retry payload. The event insert is idempotent on
    /// `event_id`.
    pub async fn finish(
        &self,
        tenant: &str,
        job_id: &str,
        status: LedgerStatus,
        last_reply: Option<&str>,
        event: &Event,
    ) -> Result<bool> {
        debug_assert!(status.is_terminal(), "finish records terminal outcomes; use defer");
        let update = "UPDATE send_ledger SET status = $3, last_reply = $4, next_attempt_at = NULL, payload = NULL, updated_at = $5
                      WHERE tenant_id = $1 AND job_id = $2
                        AND status NOT IN ('sent', 'bounced', 'suppressed', 'failed', 'dead_lettered')";
        let payload = String::from_utf8(event.to_json()).unwrap_or_default();
        match &self.pool {
            // One statement, so one round trip and still atomic: a
            // data-modifying WITH runs to completion with the statement
            // that carries it, or not at all.
            Pool::Postgres(p) => {
                let sql = "WITH outcome AS (
                               UPDATE send_ledger SET status = $3, last_reply = $4, next_attempt_at = NULL, payload = NULL, updated_at = $5
                               WHERE tenant_id = $1 AND job_id = $2
                                 AND status NOT IN ('sent', 'bounced', 'suppressed', 'failed', 'dead_lettered')
                               RETURNING 1),
                           ev AS (
                               INSERT INTO events (event_id, tenant_id, campaign_id, job_id, type, occurred_at, payload, sender_domain, reason, provider)
                               SELECT $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 WHERE EXISTS (SELECT 1 FROM outcome)
                               ON CONFLICT (event_id) DO NOTHING)
                           SELECT COUNT(*) FROM outcome";
                let q = sqlx::query_scalar::<_, i64>(sql)
                    .bind(tenant)
                    .bind(job_id)
                    .bind(status.as_str())
                    .bind(last_reply)
                    .bind(now_ms());
                Ok(bind_event!(q, event, &payload).fetch_one(p).await? > 0)
            }
            Pool::Sqlite(p) => {
                let mut tx = p.begin().await?;
                let n = sqlx::query(update)
                    .bind(tenant)
                    .bind(job_id)
                    .bind(status.as_str())
                    .bind(last_reply)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n > 0 {
                    insert_event_q(event, &payload).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(n > 0)
            }
        }
    }

    /// Puts a job on the durable retry schedule: status `deferred`, due at
    /// `due_at_ms`, with the send-job `payload` kept so that any worker can
    /// run it again after its queue record has been acknowledged. `event` is
    /// the `deferred` event of a failed attempt, stored in the same
    /// transaction; a job parked by our own rate limit has none.
    /// `attempts` is the number of delivery attempts made so far, whether or
    /// not they reached DATA.
    /// `shard` is the queue partition the job came from: only its owner
    /// takes the job from the schedule.
    #[allow(clippy::too_many_arguments)]
    pub async fn defer(
        &self,
        tenant: &str,
        job_id: &str,
        shard: i32,
        attempts: u32,
        last_reply: Option<&str>,
        due_at_ms: i64,
        payload: &[u8],
        event: Option<&Event>,
    ) -> Result<()> {
        let update = "UPDATE send_ledger SET status = 'deferred', attempts = $3, last_reply = COALESCE($4, last_reply), next_attempt_at = $5, payload = $6, updated_at = $7, shard = $8
                      WHERE tenant_id = $1 AND job_id = $2";
        let ev = event.map(|e| (e, String::from_utf8(e.to_json()).unwrap_or_default()));
        in_tx!(self, tx => {
            sqlx::query(update)
                .bind(tenant).bind(job_id).bind(attempts as i32).bind(last_reply).bind(due_at_ms).bind(payload).bind(now_ms()).bind(shard)
                .execute(&mut *tx).await?;
            if let Some((e, p)) = &ev {
                insert_event_q(e, p).execute(&mut *tx).await?;
            }
        });
        Ok(())
    }

    /// Takes up to `limit` jobs whose retry is due at `now_ms`, leasing each
    /// until `lease_until_ms` (by moving its due time there), so that no other
    /// worker takes them meanwhile. A worker that dies holding a lease only
    /// delays the job: it falls due again when the lease runs out. With
    /// `shards`, only jobs from those queue partitions are taken.
    pub async fn take_due_retries(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
        shards: Option<&[i32]>,
    ) -> Result<Vec<DueRetry>> {
        // PostgreSQL: SKIP LOCKED lets workers take disjoint batches at once.
        // SQLite has one writer, so the plain subquery is already exclusive.
        let pg = "UPDATE send_ledger SET next_attempt_at = $2
                  WHERE (tenant_id, job_id) IN (
                      SELECT tenant_id, job_id FROM send_ledger
                      WHERE payload IS NOT NULL AND next_attempt_at <= $1
                        AND ($4 OR shard = ANY($5))
                      ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
                  RETURNING tenant_id, job_id, shard, payload";
        let lite = "UPDATE send_ledger SET next_attempt_at = $2
                    WHERE (tenant_id, job_id) IN (
                        SELECT tenant_id, job_id FROM send_ledger
                        WHERE payload IS NOT NULL AND next_attempt_at <= $1
                        ORDER BY next_attempt_at LIMIT $3)
                    RETURNING tenant_id, job_id, shard, payload";
        let rows: Vec<(String, String, i32, Vec<u8>)> = match &self.pool {
            Pool::Postgres(p) => {
                sqlx::query_as(pg)
                    .bind(now_ms)
                    .bind(lease_until_ms)
                    .bind(limit)
                    .bind(shards.is_none())
                    .bind(shards.unwrap_or_default().to_vec())
                    .fetch_all(p)
                    .await?
            }
            // The embedded default has a single worker, which owns every shard.
            Pool::Sqlite(p) => {
                sqlx::query_as(lite).bind(now_ms).bind(lease_until_ms).bind(limit).fetch_all(p).await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(tenant_id, job_id, shard, payload)| DueRetry { tenant_id, job_id, shard, payload })
            .collect())
    }

    /// Jobs on the retry schedule (deferred, or leased by a worker), and when
    /// the next one falls due.
    pub async fn retry_backlog(&self) -> Result<(i64, Option<i64>)> {
        let sql = "SELECT COUNT(*), MIN(next_attempt_at) FROM send_ledger WHERE payload IS NOT NULL";
        Ok(on_pool!(self, p => sqlx::query_as(sql).fetch_one(p).await)?)
    }

    /// Ledger rows by status for one campaign.
    pub async fn ledger_counts(&self, tenant: &str, campaign: &str) -> Result<BTreeMap<String, i64>> {
        let sql = "SELECT status, COUNT(*) FROM send_ledger WHERE tenant_id = $1 AND campaign_id = $2 GROUP BY status";
        let rows: Vec<(String, i64)> =
            on_pool!(self, p => sqlx::query_as(sql).bind(tenant).bind(campaign).fetch_all(p).await)?;
        Ok(rows.into_iter().collect())
    }

    /// Records a dead letter, its event and, for a job with a ledger row
    /// that has no outcome yet, the row's end (`dead_lettered`), all in one
    /// transaction: a crash leaves either none of them or all, so a
    /// redelivered record either is dead-lettered afresh or replays the
    /// outcome. A job whose row already has an outcome keeps it and nothing
    /// is recorded (returns false). The dead letter is kept once per source
    /// record.
    pub async fn dead_letter(&self, dl: &DeadLetter, event: &Event) -> Result<bool> {
        let sql = "INSERT INTO dead_letters (received_at, source, reason, detail, tenant_id, job_id, payload)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (source) DO NOTHING";
        let end = "UPDATE send_ledger SET status = 'dead_lettered', last_reply = $3, next_attempt_at = NULL, payload = NULL, updated_at = $4
                   WHERE tenant_id = $1 AND job_id = $2
                     AND status NOT IN ('sent', 'bounced', 'suppressed', 'failed', 'dead_lettered')";
        let row = "SELECT COUNT(*) FROM send_ledger WHERE tenant_id = $1 AND job_id = $2";
        let payload = String::from_utf8(event.to_json()).unwrap_or_default();
        let now = now_ms();
        let mut applied = true;
        in_tx!(self, tx => {
            if let (Some(tenant), Some(job)) = (&dl.tenant_id, &dl.job_id) {
                let ended = sqlx::query(end).bind(tenant).bind(job).bind(&dl.detail).bind(now)
                    .execute(&mut *tx).await?.rows_affected();
                if ended == 0 {
                    // No row (a job refused before its claim) or a finished one.
                    let rows: i64 = sqlx::query_scalar(row).bind(tenant).bind(job).fetch_one(&mut *tx).await?;
                    applied = rows == 0;
                }
            }
            if applied {
                sqlx::query(sql)
                    .bind(now).bind(&dl.source).bind(&dl.reason).bind(&dl.detail)
                    .bind(&dl.tenant_id).bind(&dl.job_id).bind(&dl.payload)
                    .execute(&mut *tx).await?;
                insert_event_q(event, &payload).execute(&mut *tx).await?;
            }
        });
        Ok(applied)
    }

    /// Number of dead letters recorded.
    pub async fn dead_letter_count(&self) -> Result<i64> {
        Ok(on_pool!(self, p => sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters").fetch_one(p).await)?)
    }
}
