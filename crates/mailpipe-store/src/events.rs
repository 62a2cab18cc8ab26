//! The events table: every outcome and tracking event, idempotent on
//! `event_id`.

use std::collections::BTreeMap;

use mailpipe_core::{EncodedEvent, Event, EventType};

use crate::{Pool, Result, Store};

impl Store {
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
                let (timed, keyed): (Vec<_>, Vec<_>) =
                    rows.map(|(e, json)| (e, text(json))).partition(|(e, _)| id_is_per_occurrence(e.kind));
                if !timed.is_empty() {
                    insert_timed(p, &Columns::of(&timed)).await?;
                }
                if !keyed.is_empty() {
                    insert_keyed(p, keyed).await?;
                }
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
}

/// Whether an event's id is one per occurrence, so that the same id is
/// only ever stored again with the same time (a batch shipped twice): each
/// open and click has its own request id. Every other event's id is one per
/// job (or per attempt, report, or dead-lettered record), and may be
/// emitted again later, with a later `occurred_at`: a repeated unsubscribe,
/// a complaint report delivered twice, a record dead-lettered again.
///
/// On PostgreSQL `events` is partitioned by `occurred_at`, so its primary key
/// is `(event_id, occurred_at)`: it refuses the first kind's repeats, not
/// the second's, which the store looks for across partitions instead.
fn id_is_per_occurrence(kind: EventType) -> bool {
    match kind {
        EventType::Open | EventType::Click => true,
        EventType::Sent
        | EventType::Deferred
        | EventType::Bounced
        | EventType::Suppressed
        | EventType::Failed
        | EventType::DeadLettered
        | EventType::Unsubscribe
        | EventType::Complaint
        | EventType::StreamPaused
        | EventType::StreamResumed
        | EventType::WebhookDisabled => false,
    }
}

/// Event rows as the column arrays of one `UNNEST` statement.
struct Columns<'a> {
    ids: Vec<&'a str>,
    tenants: Vec<Option<&'a str>>,
    campaigns: Vec<Option<&'a str>>,
    jobs: Vec<Option<&'a str>>,
    kinds: Vec<&'static str>,
    ats: Vec<i64>,
    payloads: Vec<&'a str>,
    domains: Vec<Option<&'a str>>,
    reasons: Vec<Option<&'a str>>,
    providers: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn of(rows: &[(&'a Event, &'a str)]) -> Self {
        Columns {
            ids: rows.iter().map(|(e, _)| e.event_id.as_str()).collect(),
            tenants: rows.iter().map(|(e, _)| e.tenant_id.as_ref().map(|t| t.as_str())).collect(),
            campaigns: rows.iter().map(|(e, _)| e.campaign_id.as_ref().map(|c| c.as_str())).collect(),
            jobs: rows.iter().map(|(e, _)| e.job_id.as_ref().map(|j| j.as_str())).collect(),
            kinds: rows.iter().map(|(e, _)| e.kind.as_str()).collect(),
            ats: rows
                .iter()
                .map(|(e, _)| (e.occurred_at.unix_timestamp_nanos() / 1_000_000) as i64)
                .collect(),
            payloads: rows.iter().map(|(_, json)| *json).collect(),
            domains: rows.iter().map(|(e, _)| e.sender_domain.as_deref()).collect(),
            reasons: rows.iter().map(|(e, _)| e.reason.as_deref()).collect(),
            providers: rows.iter().map(|(e, _)| e.provider.as_deref()).collect(),
        }
    }

    fn query<'q>(
        &'q self,
        sql: &'static str,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(sql)
            .bind(&self.ids[..])
            .bind(&self.tenants[..])
            .bind(&self.campaigns[..])
            .bind(&self.jobs[..])
            .bind(&self.kinds[..])
            .bind(&self.ats[..])
            .bind(&self.payloads[..])
            .bind(&self.domains[..])
            .bind(&self.reasons[..])
            .bind(&self.providers[..])
    }
}

/// Opens and clicks: a plain INSERT first. ON CONFLICT makes PostgreSQL
/// search the primary key for every row before inserting it, which cost as
/// much as maintaining all the table's indexes. When the batch holds an
/// event stored before (a batch shipped again after a lost answer or a
/// crash), the unique key refuses it whole, and it is written again with ON
/// CONFLICT, which skips the stored rows. Such batches cost about twice as
/// much; they are rare.
async fn insert_timed(p: &sqlx::PgPool, cols: &Columns<'_>) -> Result<()> {
    match cols.query(INSERT_UNNEST).execute(p).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            metrics::counter!("mailpipe_store_event_batches_rewritten_total").increment(1);
            cols.query(INSERT_UNNEST_SKIPPING).execute(p).await?;
        }
        done => {
            done?;
        }
    }
    Ok(())
}

/// Events whose id may come again with a later time: each is inserted
/// unless its id is stored in any partition, under a lock on its id's stripe
/// ([`KeyLocks`]) so that
/// two writers of the same event (two trackers given the same unsubscribe)
/// do not both find it missing. The first of a batch's repeats is kept.
async fn insert_keyed<'a>(p: &sqlx::PgPool, mut rows: Vec<(&'a Event, &'a str)>) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    rows.retain(|(e, _)| seen.insert(e.event_id.as_str()));
    let mut tx = p.begin().await?;
    tx.lock_keys(rows.iter().map(|(e, _)| e.event_id.as_str())).await?;
    Columns::of(&rows).query(INSERT_UNNEST_KEYED).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Holds, until the transaction ends, a lock for each key, guarding a check
/// across partitions that no unique key can make.
pub(crate) trait KeyLocks {
    async fn lock_keys<'k>(&mut self, keys: impl IntoIterator<Item = &'k str>) -> Result<()>;
}

impl KeyLocks for sqlx::PgConnection {
    /// A PostgreSQL advisory lock per stripe of the keys' hashes (at most
    /// 256 a transaction, however many keys: a tracker batch of thousands
    /// of unsubscribes must not fill the server's lock table), taken in
    /// order so that two holders of overlapping stripes cannot deadlock.
    /// The two-key form, in a space of its own.
    async fn lock_keys<'k>(&mut self, keys: impl IntoIterator<Item = &'k str>) -> Result<()> {
        let keys: Vec<&str> = keys.into_iter().collect();
        sqlx::query(
            "SELECT pg_advisory_xact_lock($1, s)
             FROM (SELECT DISTINCT hashtext(k) & 255 AS s FROM UNNEST($2::text[]) AS k ORDER BY 1) stripes",
        )
        .bind(KEY_LOCK_SPACE)
        .bind(&keys[..])
        .execute(self)
        .await?;
        Ok(())
    }
}

/// The first key of [`KeyLocks`]' advisory locks ("mail" in ASCII).
const KEY_LOCK_SPACE: i32 = 0x6d61_696c;

impl KeyLocks for sqlx::SqliteConnection {
    /// Nothing to take: SQLite runs one writing transaction at a time.
    async fn lock_keys<'k>(&mut self, _keys: impl IntoIterator<Item = &'k str>) -> Result<()> {
        Ok(())
    }
}

macro_rules! insert_unnest {
    () => {
        "INSERT INTO events (event_id, tenant_id, campaign_id, job_id, type, occurred_at, payload, sender_domain, reason, provider)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[])"
    };
}
const INSERT_UNNEST: &str = insert_unnest!();
const INSERT_UNNEST_SKIPPING: &str = concat!(insert_unnest!(), " ON CONFLICT DO NOTHING");
const INSERT_UNNEST_KEYED: &str = concat!(
    insert_unnest!(),
    " AS x (event_id, tenant_id, campaign_id, job_id, type, occurred_at, payload, sender_domain, reason, provider)
     WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = x.event_id)
     ON CONFLICT DO NOTHING"
);

/// One event, inserted unless its id is stored already (at any time: see
/// [`id_is_per_occurrence`]). On PostgreSQL the caller holds what keeps a
/// concurrent writer of the same id out: the job's ledger row, locked by
/// the update the event goes with, or [`KeyLocks`].
pub(crate) fn insert_event_q<'q, DB: sqlx::Database>(
    e: &'q Event,
    payload: &'q str,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let q = sqlx::query(
        "INSERT INTO events (event_id, tenant_id, campaign_id, job_id, type, occurred_at, payload, sender_domain, reason, provider)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10
         WHERE NOT EXISTS (SELECT 1 FROM events WHERE event_id = $1)",
    );
    bind_event!(q, e, payload)
}
