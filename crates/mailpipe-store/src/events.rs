//! The events table: every outcome and tracking event, idempotent on
//! `event_id`.

use std::collections::BTreeMap;

use mailpipe_core::{EncodedEvent, Event};

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
                let (mut ids, mut tenants, mut campaigns, mut jobs, mut kinds, mut ats, mut payloads) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                let (mut domains, mut reasons, mut providers) =
                    (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
                for (e, json) in rows {
                    ids.push(e.event_id.as_str());
                    tenants.push(e.tenant_id.as_ref().map(|t| t.as_str()));
                    campaigns.push(e.campaign_id.as_ref().map(|c| c.as_str()));
                    jobs.push(e.job_id.as_ref().map(|j| j.as_str()));
                    kinds.push(e.kind.as_str());
                    ats.push((e.occurred_at.unix_timestamp_nanos() / 1_000_000) as i64);
                    payloads.push(text(json));
                    domains.push(e.sender_domain.as_deref());
                    reasons.push(e.reason.as_deref());
                    providers.push(e.provider.as_deref());
                }
                // A plain INSERT first: ON CONFLICT makes PostgreSQL search
                // the primary key for every row before inserting it, which
                // cost as much as maintaining all the table's indexes. When
                // the batch holds an event stored before (a batch shipped
                // again after a lost answer or a crash, a repeated
                // unsubscribe or complaint, whose ids are one per job), the
                // unique key refuses it whole, and it is written again with
                // ON CONFLICT, which skips the stored rows. Such batches
                // cost about twice as much; they are rare.
                let insert = |sql: &'static str| {
                    sqlx::query(sql)
                        .bind(&ids[..])
                        .bind(&tenants[..])
                        .bind(&campaigns[..])
                        .bind(&jobs[..])
                        .bind(&kinds[..])
                        .bind(&ats[..])
                        .bind(&payloads[..])
                        .bind(&domains[..])
                        .bind(&reasons[..])
                        .bind(&providers[..])
                        .execute(p)
                };
                match insert(INSERT_UNNEST).await {
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
                        metrics::counter!("mailpipe_store_event_batches_rewritten_total").increment(1);
                        insert(INSERT_UNNEST_SKIPPING).await?;
                    }
                    done => {
                        done?;
                    }
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

macro_rules! insert_unnest {
    () => {
        "INSERT INTO events (event_id, tenant_id, campaign_id, job_id, type, occurred_at, payload, sender_domain, reason, provider)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[])"
    };
}
const INSERT_UNNEST: &str = insert_unnest!();
const INSERT_UNNEST_SKIPPING: &str = concat!(insert_unnest!(), " ON CONFLICT (event_id) DO NOTHING");

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
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (event_id) DO NOTHING",
    );
    bind_event!(q, e, payload)
}
