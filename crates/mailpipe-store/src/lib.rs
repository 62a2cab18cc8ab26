//! Storage for mailpipe: PostgreSQL beyond one machine, SQLite embedded.
//!
//! Both backends run the same SQL (positional `$N` parameters, unix
//! millisecond timestamps, `ON CONFLICT` upserts); [`Store`] picks the pool
//! by URL. Migrations live in `migrations/{postgres,sqlite}` and are embedded
//! in the binary.
//!
//! Invariant: a job's ledger row and its outcome event are written in one
//! transaction ([`Store::finish`]), so "the outcome is durable" means both.
#![forbid(unsafe_code)]

mod filter;

pub use analytics::{CampaignStats, ErasureReport, Progress, PurgeReport, Retention, SuppressionRow};
pub use filter::{Bloom, SuppressionFilter, Verdict};

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use mailpipe_core::{Category, EncodedEvent, Event, SendJob, TenantId, now_ms};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL must start with postgres:// or sqlite: (got {0:?})")]
    UnsupportedUrl(String),
    #[error("cannot reach the {backend} database: {source}")]
    Connect {
        backend: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("ledger holds an unknown status {0:?}")]
    BadStatus(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

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

/// A registered template set as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTemplate {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    pub version: i64,
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

/// Which suppression stops a send, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub reason: String,
    pub platform_wide: bool,
}

#[derive(Clone, Debug)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
}

/// Runs the same expression against whichever pool this store has: the SQL is
/// shared, only the driver type differs.
macro_rules! on_pool {
    ($self:expr, $p:ident => $body:expr) => {
        match &$self.pool {
            Pool::Postgres($p) => $body,
            Pool::Sqlite($p) => $body,
        }
    };
}

/// Same, for an open transaction.
macro_rules! in_tx {
    ($self:expr, $tx:ident => $body:block) => {
        match &$self.pool {
            Pool::Postgres(p) => {
                let mut $tx = p.begin().await?;
                $body
                $tx.commit().await?;
            }
            Pool::Sqlite(p) => {
                let mut $tx = p.begin().await?;
                $body
                $tx.commit().await?;
            }
        }
    };
}

/// Binds a new ledger row's values, in column order: tenant, job,
/// campaign, category, recipient, recipient domain, created/updated at.
macro_rules! bind_new_row {
    ($q:expr, $job:expr, $now:expr) => {
        $q.bind($job.tenant_id.as_str())
            .bind($job.job_id.as_str())
            .bind($job.campaign_id.as_str())
            .bind($job.category.as_str())
            .bind($job.to.email.as_str())
            .bind($job.to.email.domain())
            .bind($now)
    };
}

/// Binds an event row's values, in column order: event id, tenant,
/// campaign, job, type, occurred at (ms), JSON payload.
macro_rules! bind_event {
    ($q:expr, $e:expr, $payload:expr) => {
        $q.bind($e.event_id.as_str())
            .bind($e.tenant_id.as_ref().map(|t| t.as_str()))
            .bind($e.campaign_id.as_ref().map(|c| c.as_str()))
            .bind($e.job_id.as_ref().map(|j| j.as_str()))
            .bind($e.kind.as_str())
            .bind(($e.occurred_at.unix_timestamp_nanos() / 1_000_000) as i64)
            .bind($payload)
    };
}

// After the macros, which it uses.
pub mod analytics;

impl Store {
    /// Connects to `postgres://...` or `sqlite:PATH` (created if missing).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(|source| StoreError::Connect { backend: "PostgreSQL", source })?;
            Ok(Self { pool: Pool::Postgres(pool) })
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|source| StoreError::Connect { backend: "SQLite", source })?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL + NORMAL is durable against process crashes (kill -9),
                // which is what the ledger needs; power loss may drop the last
                // transactions, as documented for the embedded default.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .connect_with(opts)
                .await
                .map_err(|source| StoreError::Connect { backend: "SQLite", source })?;
            Ok(Self { pool: Pool::Sqlite(pool) })
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Postgres(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<()> {
        match &self.pool {
            Pool::Postgres(p) => sqlx::migrate!("./migrations/postgres").run(p).await?,
            Pool::Sqlite(p) => sqlx::migrate!("./migrations/sqlite").run(p).await?,
        }
        Ok(())
    }

    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }

    pub async fn upsert_tenant(&self, tenant: &TenantId, name: &str) -> Result<()> {
        let sql = "INSERT INTO tenants (tenant_id, name, created_at) VALUES ($1, $2, $3)
                   ON CONFLICT (tenant_id) DO UPDATE SET name = excluded.name";
        on_pool!(self, p => sqlx::query(sql).bind(tenant.as_str()).bind(name).bind(now_ms()).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Whether the tenant is registered.
    pub async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool> {
        let sql = "SELECT COUNT(*) FROM tenants WHERE tenant_id = $1";
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(sql).bind(tenant.as_str()).fetch_one(p).await)?;
        Ok(n > 0)
    }

    pub async fn put_template(
        &self,
        tenant: &str,
        campaign: &str,
        template: &str,
        t: &StoredTemplate,
    ) -> Result<()> {
        let sql = "INSERT INTO campaign_templates (tenant_id, campaign_id, template_id, subject, html, text, version, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                   ON CONFLICT (tenant_id, campaign_id, template_id) DO UPDATE
                   SET subject = excluded.subject, html = excluded.html, text = excluded.text, version = excluded.version";
        on_pool!(self, p => sqlx::query(sql)
            .bind(tenant).bind(campaign).bind(template)
            .bind(&t.subject).bind(&t.html).bind(&t.text).bind(t.version).bind(now_ms())
            .execute(p).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn template(
        &self,
        tenant: &str,
        campaign: &str,
        template: &str,
    ) -> Result<Option<StoredTemplate>> {
        let sql = "SELECT subject, html, text, version FROM campaign_templates
                   WHERE tenant_id = $1 AND campaign_id = $2 AND template_id = $3";
        let row: Option<(String, Option<String>, Option<String>, i64)> = on_pool!(self, p =>
            sqlx::query_as(sql).bind(tenant).bind(campaign).bind(template).fetch_optional(p).await)?;
        Ok(row.map(|(subject, html, text, version)| StoredTemplate { subject, html, text, version }))
    }

    /// Claims a job in the ledger: inserts it as `pending` if new, and
    /// returns its row either way. The caller decides from the status whether
    /// to send (new, pending, deferred), resolve an in-doubt attempt
    /// (sending), or only re-announce a finished outcome (terminal).
    pub async fn claim_job(&self, job: &SendJob) -> Result<Claim> {
        let now = now_ms();
        let insert = "INSERT INTO send_ledger (tenant_id, job_id, campaign_id, category, recipient, recipient_domain, status, attempts, created_at, updated_at)
                      VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7)
                      ON CONFLICT (tenant_id, job_id) DO NOTHING";
        let select = "SELECT status, attempts, message_id, created_at, payload IS NOT NULL
                      FROM send_ledger WHERE tenant_id = $1 AND job_id = $2";
        let row: (String, i32, Option<String>, i64, bool) = match &self.pool {
            // One round trip: the insert, or else the row that is there.
            // The outer SELECT reads the statement's snapshot, which cannot
            // see a row that a concurrent claim committed after it began;
            // then neither branch returns a row and the plain SELECT, a new
            // statement with a new snapshot, reads it.
            Pool::Postgres(p) => {
                let claim = "WITH ins AS (
                                 INSERT INTO send_ledger (tenant_id, job_id, campaign_id, category, recipient, recipient_domain, status, attempts, created_at, updated_at)
                                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7)
                                 ON CONFLICT (tenant_id, job_id) DO NOTHING
                                 RETURNING status, attempts, message_id, created_at, payload IS NOT NULL)
                             SELECT * FROM ins
                             UNION ALL
                             SELECT status, attempts, message_id, created_at, payload IS NOT NULL
                             FROM send_ledger WHERE tenant_id = $1 AND job_id = $2 AND NOT EXISTS (SELECT 1 FROM ins)";
                let got = bind_new_row!(sqlx::query_as(claim), job, now).fetch_optional(p).await?;
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
                bind_new_row!(sqlx::query(insert), job, now).execute(p).await?;
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
        })
    }

    /// Marks the start of an SMTP transaction. If the process dies before
    /// [`Store::finish`], the row stays `sending` and the job is in doubt.
    pub async fn mark_sending(&self, tenant: &str, job_id: &str, message_id: &str) -> Result<()> {
        let sql = "UPDATE send_ledger SET status = 'sending', message_id = $3, attempts = attempts + 1, updated_at = $4
                   WHERE tenant_id = $1 AND job_id = $2";
        on_pool!(self, p => sqlx::query(sql).bind(tenant).bind(job_id).bind(message_id).bind(now_ms()).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Records a terminal outcome: the ledger status and its event, in one
    /// transaction. Clears the job's retry payload. The event insert is
    /// idempotent on `event_id`.
    pub async fn finish(
        &self,
        tenant: &str,
        job_id: &str,
        status: LedgerStatus,
        last_reply: Option<&str>,
        event: &Event,
    ) -> Result<()> {
        debug_assert!(status.is_terminal(), "finish records terminal outcomes; use defer");
        let update = "UPDATE send_ledger SET status = $3, last_reply = $4, next_attempt_at = NULL, payload = NULL, updated_at = $5
                      WHERE tenant_id = $1 AND job_id = $2";
        let payload = String::from_utf8(event.to_json()).unwrap_or_default();
        match &self.pool {
            // One statement, so one round trip and still atomic: a
            // data-modifying WITH runs to completion with the statement
            // that carries it, or not at all.
            Pool::Postgres(p) => {
                let sql = "WITH outcome AS (
                               UPDATE send_ledger SET status = $3, last_reply = $4, next_attempt_at = NULL, payload = NULL, updated_at = $5
                               WHERE tenant_id = $1 AND job_id = $2)
                           INSERT INTO events (event_id, tenant_id, campaign_id, job_id, type, occurred_at, payload)
                           VALUES ($6, $7, $8, $9, $10, $11, $12) ON CONFLICT (event_id) DO NOTHING";
                let q = sqlx::query(sql)
                    .bind(tenant)
                    .bind(job_id)
                    .bind(status.as_str())
                    .bind(last_reply)
                    .bind(now_ms());
                bind_event!(q, event, &payload).execute(p).await?;
            }
            Pool::Sqlite(p) => {
                let mut tx = p.begin().await?;
                sqlx::query(update)
                    .bind(tenant)
                    .bind(job_id)
                    .bind(status.as_str())
                    .bind(last_reply)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                insert_event_q(event, &payload).execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
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

    /// Stores events, ignoring any whose `event_id` is already stored. On
    /// PostgreSQL one statement per batch (`UNNEST` of column arrays); on
    /// SQLite one transaction.
    pub async fn insert_events(&self, events: &[Event]) -> Result<()> {
        let json: Vec<Vec<u8>> = events.iter().map(Event::to_json).collect();
        self.insert_payloads(events.iter().zip(json.iter().map(Vec::as_slice))).await
    }

    /// Same, for events already encoded: their JSON is stored as it is.
    pub async fn insert_encoded_events(&self, events: &[EncodedEvent]) -> Result<()> {
        self.insert_payloads(events.iter().map(|e| (e.event(), e.json()))).await
    }

    async fn insert_payloads<'a>(
        &self,
        rows: impl ExactSizeIterator<Item = (&'a Event, &'a [u8])>,
    ) -> Result<()> {
        let n = rows.len();
        if n == 0 {
            return Ok(());
        }
        // Event JSON comes from serde_json, so it is UTF-8.
        let text = |json: &'a [u8]| std::str::from_utf8(json).unwrap_or_default();
        match &self.pool {
            Pool::Postgres(p) => {
                let (mut ids, mut tenants, mut campaigns, mut jobs, mut kinds, mut ats, mut payloads) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                for (e, json) in rows {
                    ids.push(e.event_id.as_str());
                    tenants.push(e.tenant_id.as_ref().map(|t| t.as_str()));
                    campaigns.push(e.campaign_id.as_ref().map(|c| c.as_str()));
                    jobs.push(e.job_id.as_ref().map(|j| j.as_str()));
                    kinds.push(e.kind.as_str());
                    ats.push((e.occurred_at.unix_timestamp_nanos() / 1_000_000) as i64);
                    payloads.push(text(json));
                }
                sqlx::query(
                    "INSERT INTO events (event_id, tenant_id, campaign_id, job_id, type, occurred_at, payload)
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[])
                     ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(ids)
                .bind(tenants)
                .bind(campaigns)
                .bind(jobs)
                .bind(kinds)
                .bind(ats)
                .bind(payloads)
                .execute(p)
                .await?;
            }
            Pool::Sqlite(p) => {
                let mut tx = p.begin().await?;
                for (e, json) in rows {
                    insert_event_q(e, text(json)).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Whether a marketing unsubscribe from this tenant's mail applies to
    /// every tenant (the platform default) rather than to it alone.
    pub async fn unsubscribe_scope_is_platform(&self, tenant: &TenantId) -> Result<bool> {
        let sql = "SELECT unsubscribe_scope FROM tenants WHERE tenant_id = $1";
        let scope: Option<String> =
            on_pool!(self, p => sqlx::query_scalar(sql).bind(tenant.as_str()).fetch_optional(p).await)?;
        Ok(scope.as_deref() != Some("tenant"))
    }

    /// Sets a tenant's unsubscribe scope: `platform` (default) or `tenant`.
    pub async fn set_unsubscribe_scope(&self, tenant: &TenantId, platform: bool) -> Result<()> {
        let sql = "UPDATE tenants SET unsubscribe_scope = $2 WHERE tenant_id = $1";
        let scope = if platform { "platform" } else { "tenant" };
        on_pool!(self, p => sqlx::query(sql).bind(tenant.as_str()).bind(scope).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Records a dead letter and, if given, its event, once per source record.
    pub async fn dead_letter(&self, dl: &DeadLetter, event: &Event) -> Result<()> {
        let sql = "INSERT INTO dead_letters (received_at, source, reason, detail, tenant_id, job_id, payload)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (source) DO NOTHING";
        let payload = String::from_utf8(event.to_json()).unwrap_or_default();
        in_tx!(self, tx => {
            sqlx::query(sql)
                .bind(now_ms()).bind(&dl.source).bind(&dl.reason).bind(&dl.detail)
                .bind(&dl.tenant_id).bind(&dl.job_id).bind(&dl.payload)
                .execute(&mut *tx).await?;
            insert_event_q(event, &payload).execute(&mut *tx).await?;
        });
        Ok(())
    }

    /// Adds a suppression. `scope_tenant` is `None` for platform-wide.
    pub async fn add_suppression(
        &self,
        scope_tenant: Option<&str>,
        recipient_hash: &str,
        reason: &str,
        applies_to: Category,
        source_tenant: Option<&str>,
    ) -> Result<()> {
        let applies = match applies_to {
            Category::Marketing => "marketing",
            Category::Transactional => "all",
        };
        let sql = "INSERT INTO suppressions (scope_tenant, recipient_hash, reason, applies_to, source_tenant, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope_tenant, recipient_hash, applies_to) DO NOTHING";
        on_pool!(self, p => sqlx::query(sql)
            .bind(scope_tenant.unwrap_or("")).bind(recipient_hash).bind(reason).bind(applies)
            .bind(source_tenant).bind(now_ms())
            .execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// The suppression that stops a send of `category` to `recipient_hash` for
    /// `tenant`, if any: platform-wide entries and the tenant's own; marketing
    /// entries only stop marketing mail.
    pub async fn suppression(
        &self,
        recipient_hash: &str,
        tenant: &str,
        category: Category,
    ) -> Result<Option<Suppressed>> {
        let sql = "SELECT reason, scope_tenant FROM suppressions
                   WHERE recipient_hash = $1 AND scope_tenant IN ('', $2)
                     AND (applies_to = 'all' OR $3 = 'marketing')
                   ORDER BY scope_tenant LIMIT 1";
        let row: Option<(String, String)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(recipient_hash).bind(tenant).bind(category.as_str())
            .fetch_optional(p).await)?;
        Ok(row.map(|(reason, scope)| Suppressed { reason, platform_wide: scope.is_empty() }))
    }

    /// Calls `f(recipient_hash, created_at)` for every suppression created at
    /// or after `since_ms`, streaming rather than loading them all.
    pub async fn scan_suppressions(&self, since_ms: i64, mut f: impl FnMut(&str, i64)) -> Result<()> {
        use futures::TryStreamExt;
        let sql = "SELECT recipient_hash, created_at FROM suppressions WHERE created_at >= $1";
        on_pool!(self, p => {
            let mut rows = sqlx::query_as::<_, (String, i64)>(sql).bind(since_ms).fetch(p);
            while let Some((hash, created_at)) = rows.try_next().await? {
                f(&hash, created_at);
            }
        });
        Ok(())
    }

    /// The stored terminal event of a job, if it has one: re-published when a
    /// finished job is redelivered, in case the first publish never happened.
    pub async fn terminal_event(&self, tenant: &str, job_id: &str) -> Result<Option<Event>> {
        let sql = "SELECT payload FROM events WHERE tenant_id = $1 AND job_id = $2
                   AND type IN ('sent', 'bounced', 'suppressed', 'failed', 'dead_lettered') LIMIT 1";
        let row: Option<String> =
            on_pool!(self, p => sqlx::query_scalar(sql).bind(tenant).bind(job_id).fetch_optional(p).await)?;
        Ok(row.and_then(|p| serde_json::from_str(&p).ok()))
    }

    /// Event counts by type for one campaign.
    pub async fn event_counts(&self, tenant: &str, campaign: &str) -> Result<BTreeMap<String, i64>> {
        let sql = "SELECT type, COUNT(*) FROM events WHERE tenant_id = $1 AND campaign_id = $2 GROUP BY type";
        let rows: Vec<(String, i64)> =
            on_pool!(self, p => sqlx::query_as(sql).bind(tenant).bind(campaign).fetch_all(p).await)?;
        Ok(rows.into_iter().collect())
    }

    /// Ledger rows by status for one campaign.
    pub async fn ledger_counts(&self, tenant: &str, campaign: &str) -> Result<BTreeMap<String, i64>> {
        let sql = "SELECT status, COUNT(*) FROM send_ledger WHERE tenant_id = $1 AND campaign_id = $2 GROUP BY status";
        let rows: Vec<(String, i64)> =
            on_pool!(self, p => sqlx::query_as(sql).bind(tenant).bind(campaign).fetch_all(p).await)?;
        Ok(rows.into_iter().collect())
    }

    /// Number of dead letters recorded.
    pub async fn dead_letter_count(&self) -> Result<i64> {
        Ok(on_pool!(self, p => sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters").fetch_one(p).await)?)
    }
}

fn insert_event_q<'q, DB: sqlx::Database>(
    e: &'q Event,
    payload: &'q str,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let q = sqlx::query(
        "INSERT INTO events (event_id, tenant_id, campaign_id, job_id, type, occurred_at, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING",
    );
    bind_event!(q, e, payload)
}
