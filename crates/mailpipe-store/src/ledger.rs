//! The send ledger: one row per job, keyed by `(tenant_id, job_id)`. It is
//! what makes a redelivered job harmless (a terminal row is never sent
//! again), what marks the window of doubt (`sending`), and, with a payload
//! and a due time, the durable retry schedule.

use std::collections::BTreeMap;
use std::str::FromStr;

use mailpipe_core::{Event, RecipientRef, SendJob, now_ms};

use crate::events::{KeyLocks, insert_event_q};
use crate::{Pool, Result, Store, StoreError};

/// A connection of either backend, for one round of a batch.
enum Conn<'c> {
    Pg(&'c mut sqlx::PgConnection),
    Lite(&'c mut sqlx::SqliteConnection),
}

/// Runs `$body` once per round of a batch, with `$c` a [`Conn`] and
/// `$round` the round's indexes, and collects what each gives. On
/// PostgreSQL a lone round is one statement on a pooled connection (its own
/// commit), and several rounds share one transaction, so that a failure
/// applies none of them; on SQLite the rounds are always one transaction.
/// With `holding_the_month`, PostgreSQL's rounds always run in a
/// transaction that first takes [`hold_the_month`].
macro_rules! in_rounds {
    ($self:expr, $rounds:expr, $c:ident, $round:ident => $body:expr) => {
        in_rounds!(@run $self, $rounds, false, $c, $round => $body)
    };
    ($self:expr, $rounds:expr, holding_the_month, $c:ident, $round:ident => $body:expr) => {
        in_rounds!(@run $self, $rounds, true, $c, $round => $body)
    };
    (@run $self:expr, $rounds:expr, $hold:expr, $c:ident, $round:ident => $body:expr) => {{
        debug_assert!($self.tenant.is_none(), "the ledger is the platform's");
        let mut results = Vec::with_capacity($rounds.len());
        match &$self.pool {
            Pool::Postgres(p) if $rounds.len() <= 1 && !$hold => {
                let mut conn = p.acquire().await?;
                for $round in $rounds.iter() {
                    let $c = Conn::Pg(&mut *conn);
                    results.push($body?);
                }
            }
            Pool::Postgres(p) => {
                let mut tx = p.begin().await?;
                if $hold {
                    hold_the_month(&mut tx).await?;
                }
                for $round in $rounds.iter() {
                    let $c = Conn::Pg(&mut *tx);
                    results.push($body?);
                }
                tx.commit().await?;
            }
            Pool::Sqlite(p) => {
                let mut tx = p.begin().await?;
                for $round in $rounds.iter() {
                    let $c = Conn::Lite(&mut *tx);
                    results.push($body?);
                }
                tx.commit().await?;
            }
        }
        results
    }};
}

/// How long the ledger writer's connections keep a plan of a batch
/// statement.
///
/// The batch statements (claims, commit-point marks, outcomes) run many
/// times a second. Parsed and planned for each batch, over the ledger's
/// monthly partitions and their indexes, they cost PostgreSQL nearly as
/// much CPU as running them: 43% of their time (measured with
/// pg_stat_statements, docs/benchmarks.md, session 33). Kept for good, a
/// plan goes stale: made while a partition is empty, unanalysed or
/// analysed empty, it joins the batch to the ledger by scanning every
/// partition (a hash join, or a nested loop over a materialised full index
/// scan even with sequential scans disabled), and it would go on scanning
/// as the month fills until the next ANALYZE.
///
/// So each statement is prepared and kept, but only for this long: its text
/// names the period it belongs to ([`batch_statement`]), and a new period
/// is a new statement, planned against the ledger's size then (the planner
/// reads a table's current size, whatever its statistics say). A stale
/// plan lives at most this long; the writer's connections plan each
/// statement about once per period, and evict old ones
/// ([`Store::bounded`]).
const PLAN_PERIOD_MS: i64 = 1_000;

/// How a batch statement goes on a connection of `store`: on the ledger
/// writer's ([`Store::bounded`]), prepared and kept for this
/// [`PLAN_PERIOD_MS`], its text the same statement with a comment that
/// makes it a different prepared statement in the next period. Elsewhere
/// (tests, one-off calls) planned each time and never kept, so that its
/// periods do not fill a general pool's statement cache.
fn batch_statement(store: &Store, sql: &'static str) -> (std::borrow::Cow<'static, str>, bool) {
    if !store.keeps_plans {
        return (sql.into(), false);
    }
    // Each process's periods begin at its own offset, so that the workers
    // of one database do not all plan again in the same instant.
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let offset = *OFFSET.get_or_init(|| i64::from(std::process::id()) % PLAN_PERIOD_MS);
    (format!("{sql}\n-- plan period {}", (now_ms() + offset).div_euclid(PLAN_PERIOD_MS)).into(), true)
}

/// Holds, to the end of the transaction, the ledger's month where it is:
/// an advisory lock taken shared here and exclusive by
/// `mailpipe_prepare_partitions` to move the month on (migration 0022). A
/// claim takes it in a statement before its own, so that its snapshot is
/// taken after any move it waited for.
async fn hold_the_month(tx: &mut sqlx::PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, 0)").bind(LEDGER_MONTH_LOCK).execute(tx).await?;
    Ok(())
}

/// The first key of the advisory lock of [`hold_the_month`] ("ledg" in
/// ASCII), as in migration 0022.
const LEDGER_MONTH_LOCK: i32 = 0x6c65_6467;

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
    /// When the job was first claimed (unix ms).
    pub created_at_ms: i64,
    /// When its first SMTP attempt was recorded (unix ms: its commit-point
    /// mark, or its deferral if refused before DATA), from which its age
    /// bounds its retries; `None` before the first attempt (or for a job
    /// last attempted before migration 0030).
    pub first_attempt_ms: Option<i64>,
    /// The job is on the retry schedule, which owns it from then on: a
    /// redelivered queue record for it is acknowledged without sending.
    pub scheduled: bool,
    /// The return-path tag the job was first claimed with, which every
    /// attempt sends with; `None` for a job claimed without return paths.
    pub return_tag: Option<String>,
}

/// A claim to take, as [`Store::claim_jobs`] and the ledger writer take
/// it: the new row's values, owned, so that it can wait in a batch.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    tenant_id: String,
    job_id: String,
    campaign_id: String,
    category: &'static str,
    recipient: String,
    recipient_domain: String,
    recipient_hash: String,
    return_tag: Option<String>,
}

impl ClaimRequest {
    pub fn new(job: &SendJob, recipient: &RecipientRef, return_tag: Option<&str>) -> Self {
        Self {
            tenant_id: job.tenant_id.as_str().to_owned(),
            job_id: job.job_id.as_str().to_owned(),
            campaign_id: job.campaign_id.as_str().to_owned(),
            category: job.category.as_str(),
            recipient: job.to.email.as_str().to_owned(),
            recipient_domain: job.to.email.domain().to_owned(),
            recipient_hash: recipient.to_hex(),
            return_tag: return_tag.map(str::to_owned),
        }
    }
}

/// The commit point of one attempt, fenced by what its claim read.
#[derive(Debug, Clone)]
pub struct SendingMark {
    pub tenant_id: String,
    pub job_id: String,
    pub message_id: String,
    pub status: LedgerStatus,
    pub attempts: i32,
}

/// A terminal outcome to record, with its event.
#[derive(Debug, Clone)]
pub struct OutcomeRecord {
    tenant_id: String,
    job_id: String,
    status: LedgerStatus,
    last_reply: Option<String>,
    event: Event,
    /// The event's JSON, as stored.
    payload: String,
}

impl OutcomeRecord {
    pub fn new(
        tenant: &str,
        job_id: &str,
        status: LedgerStatus,
        last_reply: Option<&str>,
        event: Event,
    ) -> Self {
        debug_assert!(status.is_terminal(), "an outcome is terminal; use defer");
        // Event JSON comes from serde_json, so it is UTF-8.
        let payload = String::from_utf8(event.to_json()).unwrap_or_default();
        Self {
            tenant_id: tenant.to_owned(),
            job_id: job_id.to_owned(),
            status,
            last_reply: last_reply.map(str::to_owned),
            event,
            payload,
        }
    }
}

/// Splits a batch's indexes into rounds in which each job appears once,
/// keeping their order: the second request for a job goes in the second
/// round, and so on. One statement per round then applies the requests as
/// if one after the other (a second mark of a job sees the first one's
/// fence), and no statement meets the same row twice.
pub(crate) fn rounds<K: Eq + std::hash::Hash>(keys: impl Iterator<Item = K>) -> Vec<Vec<usize>> {
    let mut seen: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, key) in keys.enumerate() {
        let n = seen.entry(key).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(i);
        *n += 1;
    }
    rounds
}

/// A claimed row as read: status, attempts, message id, created at,
/// scheduled, return tag, first attempt at.
type ClaimRow = (String, i32, Option<String>, i64, bool, Option<String>, Option<i64>);

/// A claimed row with its place in the batch (`ord`) in front.
type OrdClaimRow = (i32, String, i32, Option<String>, i64, bool, Option<String>, Option<i64>);

impl TryFrom<ClaimRow> for Claim {
    type Error = StoreError;
    fn try_from(row: ClaimRow) -> Result<Self> {
        Ok(Claim {
            status: row.0.parse()?,
            attempts: row.1,
            message_id: row.2,
            created_at_ms: row.3,
            scheduled: row.4,
            return_tag: row.5,
            first_attempt_ms: row.6,
        })
    }
}

/// One round of claims on PostgreSQL, in one statement: the inserts, or
/// else the rows that are there. The rows come back in the round's order.
async fn claim_round_pg(
    store: &Store,
    p: &mut sqlx::PgConnection,
    reqs: &[ClaimRequest],
    round: &[usize],
    now: i64,
) -> Result<Vec<ClaimRow>> {
    // Rows in key order, so that two workers claiming overlapping jobs
    // (a rebalance) take their locks in the same order and never deadlock.
    let mut order = round.to_vec();
    order.sort_by(|&a, &b| (&reqs[a].tenant_id, &reqs[a].job_id).cmp(&(&reqs[b].tenant_id, &reqs[b].job_id)));
    let pick = |f: fn(&ClaimRequest) -> &str| order.iter().map(|&i| f(&reqs[i])).collect::<Vec<_>>();
    // The rows go to the current month's partition (migration 0022), where
    // two claims of a job meet on the primary key; a job claimed in an
    // earlier month is found there, committed before the month moved on
    // (the caller holds the lock that move waits for).
    // Each lookup of a job is an index probe per month, whatever the
    // statistics say: `OFFSET 0` keeps the planner from turning a lookup
    // into a join, which it would make by hashing the whole month while the
    // month is new and unanalysed (measured: a claim batch 100 times slower).
    // The second SELECT reads the statement's snapshot, which cannot see a
    // row that a concurrent claim committed after it began; then neither
    // branch returns that job, and the fallback below (a new statement with
    // a new snapshot) reads it.
    let sql = "WITH i AS (
                   SELECT * FROM UNNEST($1::int4[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
                       AS i(ord, tenant_id, job_id, campaign_id, category, recipient, recipient_domain, recipient_hash, return_tag)),
               ins AS (
                   INSERT INTO send_ledger (tenant_id, job_id, campaign_id, category, recipient, recipient_domain, status, attempts, created_at, updated_at, recipient_hash, return_tag, part)
                   SELECT tenant_id, job_id, campaign_id, category,
                          CASE WHEN EXISTS (SELECT 1 FROM erasures e WHERE e.recipient_hash = i.recipient_hash AND e.scope_tenant IN ('', i.tenant_id))
                               THEN 'erased:' || i.recipient_hash ELSE i.recipient END,
                          recipient_domain, 'pending', 0, $10, $10, recipient_hash, return_tag,
                          (SELECT part FROM send_ledger_current)
                   FROM i
                   WHERE NOT EXISTS (SELECT 1 FROM send_ledger o
                                     WHERE o.tenant_id = i.tenant_id AND o.job_id = i.job_id
                                       AND o.part <> (SELECT part FROM send_ledger_current)
                                     OFFSET 0)
                   ORDER BY ord
                   ON CONFLICT (tenant_id, job_id, part) DO NOTHING
                   RETURNING tenant_id, job_id, status, attempts, message_id, created_at, payload IS NOT NULL AS scheduled, return_tag, first_attempt_at)
               SELECT i.ord, ins.status, ins.attempts, ins.message_id, ins.created_at, ins.scheduled, ins.return_tag, ins.first_attempt_at
               FROM ins JOIN i ON i.tenant_id = ins.tenant_id AND i.job_id = ins.job_id
               UNION ALL
               SELECT i.ord, l.status, l.attempts, l.message_id, l.created_at, l.payload IS NOT NULL, l.return_tag, l.first_attempt_at
               FROM i CROSS JOIN LATERAL (SELECT * FROM send_ledger l
                                          WHERE l.tenant_id = i.tenant_id AND l.job_id = i.job_id OFFSET 0) l
               WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.tenant_id = i.tenant_id AND ins.job_id = i.job_id)";
    let (sql, keep) = batch_statement(store, sql);
    let got: Vec<OrdClaimRow> = sqlx::query_as(&sql)
        .persistent(keep)
        .bind((0..order.len() as i32).collect::<Vec<_>>())
        .bind(pick(|r| &r.tenant_id))
        .bind(pick(|r| &r.job_id))
        .bind(pick(|r| &r.campaign_id))
        .bind(pick(|r| r.category))
        .bind(pick(|r| &r.recipient))
        .bind(pick(|r| &r.recipient_domain))
        .bind(pick(|r| &r.recipient_hash))
        .bind(order.iter().map(|&i| reqs[i].return_tag.as_deref()).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(&mut *p)
        .await?;
    let mut rows: Vec<Option<ClaimRow>> = vec![None; order.len()];
    for (ord, status, attempts, mid, created, scheduled, tag, first) in got {
        rows[ord as usize] = Some((status, attempts, mid, created, scheduled, tag, first));
    }
    let missing: Vec<usize> = (0..order.len()).filter(|&k| rows[k].is_none()).collect();
    if !missing.is_empty() {
        let sql = "SELECT i.ord, l.status, l.attempts, l.message_id, l.created_at, l.payload IS NOT NULL, l.return_tag, l.first_attempt_at
                   FROM UNNEST($1::int4[], $2::text[], $3::text[]) AS i(ord, tenant_id, job_id)
                   CROSS JOIN LATERAL (SELECT * FROM send_ledger l
                                       WHERE l.tenant_id = i.tenant_id AND l.job_id = i.job_id OFFSET 0) l";
        // Rare (a job claimed by another transaction meanwhile): planned
        // each time, never kept.
        let again: Vec<OrdClaimRow> = sqlx::query_as(sql)
            .persistent(false)
            .bind(missing.iter().map(|&k| k as i32).collect::<Vec<_>>())
            .bind(missing.iter().map(|&k| reqs[order[k]].tenant_id.as_str()).collect::<Vec<_>>())
            .bind(missing.iter().map(|&k| reqs[order[k]].job_id.as_str()).collect::<Vec<_>>())
            .fetch_all(&mut *p)
            .await?;
        for (ord, status, attempts, mid, created, scheduled, tag, first) in again {
            rows[ord as usize] = Some((status, attempts, mid, created, scheduled, tag, first));
        }
    }
    // Back from key order to the round's order.
    let mut by_index: std::collections::HashMap<usize, ClaimRow> = std::collections::HashMap::new();
    for (k, row) in rows.into_iter().enumerate() {
        let row =
            row.ok_or_else(|| StoreError::BadRow(format!("claim of {} left no row", reqs[order[k]].job_id)))?;
        by_index.insert(order[k], row);
    }
    Ok(round.iter().map(|i| by_index.remove(i).expect("one row per index")).collect())
}

/// One round of claims on SQLite: insert and read back each, in one
/// transaction (SQLite has one writer, so nothing commits in between).
async fn claim_round_lite(
    tx: &mut sqlx::SqliteConnection,
    reqs: &[ClaimRequest],
    round: &[usize],
    now: i64,
) -> Result<Vec<ClaimRow>> {
    let insert = "INSERT INTO send_ledger (tenant_id, job_id, campaign_id, category, recipient, recipient_domain, status, attempts, created_at, updated_at, recipient_hash, return_tag)
                  VALUES ($1, $2, $3, $4, CASE WHEN EXISTS (SELECT 1 FROM erasures WHERE recipient_hash = $8 AND scope_tenant IN ('', $1)) THEN 'erased:' || $8 ELSE $5 END, $6, 'pending', 0, $7, $7, $8, $9)
                  ON CONFLICT (tenant_id, job_id) DO NOTHING";
    let select =
        "SELECT status, attempts, message_id, created_at, payload IS NOT NULL, return_tag, first_attempt_at
                  FROM send_ledger WHERE tenant_id = $1 AND job_id = $2";
    let mut rows = Vec::with_capacity(round.len());
    for &i in round {
        let r = &reqs[i];
        sqlx::query(insert)
            .bind(&r.tenant_id)
            .bind(&r.job_id)
            .bind(&r.campaign_id)
            .bind(r.category)
            .bind(&r.recipient)
            .bind(&r.recipient_domain)
            .bind(now)
            .bind(&r.recipient_hash)
            .bind(&r.return_tag)
            .execute(&mut *tx)
            .await?;
        rows.push(sqlx::query_as(select).bind(&r.tenant_id).bind(&r.job_id).fetch_one(&mut *tx).await?);
    }
    Ok(rows)
}

/// One round of commit-point marks on PostgreSQL, in one statement.
/// Returns the indexes that applied.
async fn mark_round_pg(
    store: &Store,
    p: &mut sqlx::PgConnection,
    marks: &[SendingMark],
    round: &[usize],
    now: i64,
) -> Result<Vec<usize>> {
    // In key order, as the claims: two workers' batches over the same jobs
    // then lock their rows in the same order.
    let mut round = round.to_vec();
    round.sort_by(|&a, &b| {
        (&marks[a].tenant_id, &marks[a].job_id).cmp(&(&marks[b].tenant_id, &marks[b].job_id))
    });
    let sql = "UPDATE send_ledger l SET status = 'sending', message_id = i.message_id, attempts = l.attempts + 1, updated_at = $1,
                   first_attempt_at = COALESCE(l.first_attempt_at, CASE WHEN l.attempts > 0 THEN l.created_at ELSE $1 END)
               FROM UNNEST($2::int4[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[])
                    AS i(ord, tenant_id, job_id, message_id, status, attempts)
               WHERE l.tenant_id = i.tenant_id AND l.job_id = i.job_id
                 AND l.status = i.status AND l.attempts = i.attempts
               RETURNING i.ord";
    let pick = |f: fn(&SendingMark) -> &str| round.iter().map(|&i| f(&marks[i])).collect::<Vec<_>>();
    let (sql, keep) = batch_statement(store, sql);
    let applied: Vec<i32> = sqlx::query_scalar(&sql)
        .persistent(keep)
        .bind(now)
        .bind((0..round.len() as i32).collect::<Vec<_>>())
        .bind(pick(|m| &m.tenant_id))
        .bind(pick(|m| &m.job_id))
        .bind(pick(|m| &m.message_id))
        .bind(pick(|m| m.status.as_str()))
        .bind(round.iter().map(|&i| marks[i].attempts).collect::<Vec<_>>())
        .fetch_all(p)
        .await?;
    Ok(applied.into_iter().map(|k| round[k as usize]).collect())
}

/// One round of commit-point marks on SQLite.
async fn mark_round_lite(
    tx: &mut sqlx::SqliteConnection,
    marks: &[SendingMark],
    round: &[usize],
    now: i64,
) -> Result<Vec<usize>> {
    let sql =
        "UPDATE send_ledger SET status = 'sending', message_id = $3, attempts = attempts + 1, updated_at = $4,
                   first_attempt_at = COALESCE(first_attempt_at, CASE WHEN attempts > 0 THEN created_at ELSE $4 END)
               WHERE tenant_id = $1 AND job_id = $2 AND status = $5 AND attempts = $6";
    let mut applied = Vec::new();
    for &i in round {
        let m = &marks[i];
        let n = sqlx::query(sql)
            .bind(&m.tenant_id)
            .bind(&m.job_id)
            .bind(&m.message_id)
            .bind(now)
            .bind(m.status.as_str())
            .bind(m.attempts)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n > 0 {
            applied.push(i);
        }
    }
    Ok(applied)
}

/// One round of outcomes on PostgreSQL: one statement, so one round trip
/// and still atomic (a data-modifying WITH runs to completion with the
/// statement that carries it, or not at all). Returns the indexes that
/// applied.
async fn finish_round_pg(
    store: &Store,
    p: &mut sqlx::PgConnection,
    outs: &[OutcomeRecord],
    round: &[usize],
    now: i64,
) -> Result<Vec<usize>> {
    let mut round = round.to_vec();
    round.sort_by(|&a, &b| (&outs[a].tenant_id, &outs[a].job_id).cmp(&(&outs[b].tenant_id, &outs[b].job_id)));
    let sql = "WITH i AS (
                   SELECT * FROM UNNEST($1::int4[], $2::text[], $3::text[], $4::text[], $5::text[],
                                        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[], $13::text[], $14::text[], $15::text[])
                       AS i(ord, tenant_id, job_id, status, last_reply,
                            event_id, ev_tenant, ev_campaign, ev_job, type, occurred_at, payload, sender_domain, reason, provider)),
               outcome AS (
                   UPDATE send_ledger l SET status = i.status, last_reply = i.last_reply, next_attempt_at = NULL, payload = NULL, updated_at = $16
                   FROM i
                   WHERE l.tenant_id = i.tenant_id AND l.job_id = i.job_id
                     AND l.status NOT IN ('sent', 'bounced', 'suppressed', 'failed', 'dead_lettered')
                   RETURNING i.ord),
               ev AS (
                   INSERT INTO events (event_id, tenant_id, campaign_id, job_id, type, occurred_at, payload, sender_domain, reason, provider)
                   SELECT i.event_id, i.ev_tenant, i.ev_campaign, i.ev_job, i.type, i.occurred_at, i.payload, i.sender_domain, i.reason, i.provider
                   FROM i JOIN outcome o ON o.ord = i.ord
                   ON CONFLICT DO NOTHING)
               SELECT ord FROM outcome";
    let o = |i: usize| &outs[round[i]];
    let n = round.len();
    let col = |f: &dyn Fn(&OutcomeRecord) -> Option<&str>| (0..n).map(|i| f(o(i))).collect::<Vec<_>>();
    let (sql, keep) = batch_statement(store, sql);
    let applied: Vec<i32> = sqlx::query_scalar(&sql)
        .persistent(keep)
        .bind((0..n as i32).collect::<Vec<_>>())
        .bind(col(&|r| Some(&r.tenant_id)))
        .bind(col(&|r| Some(&r.job_id)))
        .bind(col(&|r| Some(r.status.as_str())))
        .bind(col(&|r| r.last_reply.as_deref()))
        .bind(col(&|r| Some(r.event.event_id.as_str())))
        .bind(col(&|r| r.event.tenant_id.as_ref().map(|t| t.as_str())))
        .bind(col(&|r| r.event.campaign_id.as_ref().map(|c| c.as_str())))
        .bind(col(&|r| r.event.job_id.as_ref().map(|j| j.as_str())))
        .bind(col(&|r| Some(r.event.kind.as_str())))
        .bind(
            (0..n)
                .map(|i| (o(i).event.occurred_at.unix_timestamp_nanos() / 1_000_000) as i64)
                .collect::<Vec<_>>(),
        )
        .bind(col(&|r| Some(&r.payload)))
        .bind(col(&|r| r.event.sender_domain.as_deref()))
        .bind(col(&|r| r.event.reason.as_deref()))
        .bind(col(&|r| r.event.provider.as_deref()))
        .bind(now)
        .fetch_all(p)
        .await?;
    Ok(applied.into_iter().map(|k| round[k as usize]).collect())
}

/// One round of outcomes on SQLite, in one transaction.
async fn finish_round_lite(
    tx: &mut sqlx::SqliteConnection,
    outs: &[OutcomeRecord],
    round: &[usize],
    now: i64,
) -> Result<Vec<usize>> {
    let update = "UPDATE send_ledger SET status = $3, last_reply = $4, next_attempt_at = NULL, payload = NULL, updated_at = $5
                  WHERE tenant_id = $1 AND job_id = $2
                    AND status NOT IN ('sent', 'bounced', 'suppressed', 'failed', 'dead_lettered')";
    let mut applied = Vec::new();
    for &i in round {
        let r = &outs[i];
        let n = sqlx::query(update)
            .bind(&r.tenant_id)
            .bind(&r.job_id)
            .bind(r.status.as_str())
            .bind(&r.last_reply)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n > 0 {
            insert_event_q(&r.event, &r.payload).execute(&mut *tx).await?;
            applied.push(i);
        }
    }
    Ok(applied)
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
        let mut claims = self.claim_jobs(&[ClaimRequest::new(job, recipient, return_tag)]).await?;
        Ok(claims.remove(0))
    }

    /// [`Store::claim_job`] for many jobs at once: one statement and one
    /// commit per round (see [`rounds`]), the claims in the order asked.
    pub async fn claim_jobs(&self, reqs: &[ClaimRequest]) -> Result<Vec<Claim>> {
        let now = now_ms();
        let rounds = rounds(reqs.iter().map(|r| (&r.tenant_id, &r.job_id)));
        let rows = in_rounds!(self, &rounds, holding_the_month, c, round => match c {
            Conn::Pg(c) => claim_round_pg(self, c, reqs, round, now).await,
            Conn::Lite(c) => claim_round_lite(c, reqs, round, now).await,
        });
        let mut out: Vec<Option<Claim>> = vec![None; reqs.len()];
        for (round, rows) in rounds.iter().zip(rows) {
            for (&i, row) in round.iter().zip(rows) {
                out[i] = Some(row.try_into()?);
            }
        }
        Ok(out.into_iter().map(|c| c.expect("every claim answered")).collect())
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
        let mark = SendingMark {
            tenant_id: tenant.to_owned(),
            job_id: job_id.to_owned(),
            message_id: message_id.to_owned(),
            status: claim.status,
            attempts: claim.attempts,
        };
        Ok(self.mark_sending_many(std::slice::from_ref(&mark)).await?[0])
    }

    /// [`Store::mark_sending`] for many attempts at once: one statement and
    /// one commit per round. Two marks of one job in the same call apply in
    /// the order given, so the first one's fence holds the second off.
    pub async fn mark_sending_many(&self, marks: &[SendingMark]) -> Result<Vec<bool>> {
        let now = now_ms();
        let rounds = rounds(marks.iter().map(|m| (&m.tenant_id, &m.job_id)));
        let applied = in_rounds!(self, &rounds, c, round => match c {
            Conn::Pg(c) => mark_round_pg(self, c, marks, round, now).await,
            Conn::Lite(c) => mark_round_lite(c, marks, round, now).await,
        });
        let mut out = vec![false; marks.len()];
        for i in applied.into_iter().flatten() {
            out[i] = true;
        }
        Ok(out)
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
        let outcome = OutcomeRecord::new(tenant, job_id, status, last_reply, event.clone());
        Ok(self.finish_many(std::slice::from_ref(&outcome)).await?[0])
    }

    /// [`Store::finish`] for many jobs at once: one statement (PostgreSQL)
    /// or transaction (SQLite) and one commit per round; what applied, in
    /// the order given.
    pub async fn finish_many(&self, outcomes: &[OutcomeRecord]) -> Result<Vec<bool>> {
        let now = now_ms();
        let rounds = rounds(outcomes.iter().map(|o| (&o.tenant_id, &o.job_id)));
        let applied = in_rounds!(self, &rounds, c, round => match c {
            Conn::Pg(c) => finish_round_pg(self, c, outcomes, round, now).await,
            Conn::Lite(c) => finish_round_lite(c, outcomes, round, now).await,
        });
        let mut out = vec![false; outcomes.len()];
        for i in applied.into_iter().flatten() {
            out[i] = true;
        }
        Ok(out)
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
        self.defer_attempt(tenant, job_id, shard, attempts, last_reply, due_at_ms, payload, event, None)
            .await?;
        Ok(())
    }

    /// [`Store::defer`] for a delivery attempt, fenced by `expect`: only
    /// while the row is in one of those (status, attempts) states (one or
    /// two), those the attempt may have left it in: as its claim read it if
    /// its `sending` mark was never written, `sending` with the attempt's
    /// number if it applied, either if the mark's write failed (it may have
    /// committed). `None`: unfenced, as [`Store::defer`]. Returns whether it
    /// applied; if not, another attempt of the job has moved the row on
    /// (marked it, sent it, recorded its outcome), and a deferral would put
    /// a job that attempt may have sent back on the schedule. Writing the
    /// same deferral again (same attempts and due time) applies, so that a
    /// retry after a lost answer is not taken for another attempt.
    #[allow(clippy::too_many_arguments)]
    pub async fn defer_attempt(
        &self,
        tenant: &str,
        job_id: &str,
        shard: i32,
        attempts: u32,
        last_reply: Option<&str>,
        due_at_ms: i64,
        payload: &[u8],
        event: Option<&Event>,
        expect: Option<&[(LedgerStatus, i32)]>,
    ) -> Result<bool> {
        // A deferral after an attempt (a 4xx before DATA never marks the
        // row `sending`) dates the first attempt, if nothing did; a hold
        // (no attempt yet) leaves it unset. A row attempted before
        // migration 0030 takes its claim's time, as settle judged it.
        let update = "UPDATE send_ledger SET status = 'deferred', attempts = $3, last_reply = COALESCE($4, last_reply), next_attempt_at = $5, payload = $6, updated_at = $7, shard = $8,
                             first_attempt_at = CASE WHEN $3 > 0
                                 THEN COALESCE(first_attempt_at, CASE WHEN attempts > 0 THEN created_at ELSE $7 END)
                                 ELSE first_attempt_at END
                      WHERE tenant_id = $1 AND job_id = $2
                        AND ($9 OR (status = $10 AND attempts = $11) OR (status = $12 AND attempts = $13)
                             -- this deferral, already written: a retry after its commit's answer was lost
                             OR (status = 'deferred' AND attempts = $3 AND next_attempt_at = $5))";
        // One or two states; a missing second repeats the first. An empty
        // fence admits no state (it never applies); more than two is a bug.
        debug_assert!(expect.is_none_or(|e| e.len() <= 2), "at most two fenced states");
        let (unfenced, first, second) = match expect {
            None => (true, ("", 0), ("", 0)),
            Some([]) => (false, ("", -1), ("", -1)),
            Some([one]) => (false, (one.0.as_str(), one.1), (one.0.as_str(), one.1)),
            Some([one, two, ..]) => (false, (one.0.as_str(), one.1), (two.0.as_str(), two.1)),
        };
        let ev = event.map(|e| (e, String::from_utf8(e.to_json()).unwrap_or_default()));
        let applied;
        in_tx!(self, tx => {
            applied = sqlx::query(update)
                .bind(tenant).bind(job_id).bind(attempts as i32).bind(last_reply).bind(due_at_ms).bind(payload).bind(now_ms()).bind(shard)
                .bind(unfenced).bind(first.0).bind(first.1).bind(second.0).bind(second.1)
                .execute(&mut *tx).await?.rows_affected() > 0;
            if let (true, Some((e, p))) = (applied, &ev) {
                insert_event_q(e, p).execute(&mut *tx).await?;
            }
        });
        Ok(applied)
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
        // Once per source: on PostgreSQL the table is partitioned by time, so
        // no unique key can say so; the check runs under the lock below.
        let sql = "INSERT INTO dead_letters (received_at, source, reason, detail, tenant_id, job_id, payload)
                   SELECT $1, $2, $3, $4, $5, $6, $7
                   WHERE NOT EXISTS (SELECT 1 FROM dead_letters WHERE source = $2)";
        let end = "UPDATE send_ledger SET status = 'dead_lettered', last_reply = $3, next_attempt_at = NULL, payload = NULL, updated_at = $4
                   WHERE tenant_id = $1 AND job_id = $2
                     AND status NOT IN ('sent', 'bounced', 'suppressed', 'failed', 'dead_lettered')";
        let row = "SELECT COUNT(*) FROM send_ledger WHERE tenant_id = $1 AND job_id = $2";
        let payload = String::from_utf8(event.to_json()).unwrap_or_default();
        let now = now_ms();
        let mut applied = true;
        in_tx!(self, tx => {
            // Two workers given the same record (or two records of one job)
            // at once: one finds the other's dead letter and event.
            tx.lock_keys([dl.source.as_str(), event.event_id.as_str()]).await?;
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

#[cfg(test)]
mod tests {
    use super::rounds;

    #[test]
    fn rounds_put_each_job_once_per_round_in_order() {
        assert_eq!(rounds(["a", "b", "c"].iter()), vec![vec![0, 1, 2]]);
        assert_eq!(rounds(["a", "b", "a", "c", "a", "b"].iter()), vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
        assert!(rounds(std::iter::empty::<&str>()).is_empty());
    }
}
