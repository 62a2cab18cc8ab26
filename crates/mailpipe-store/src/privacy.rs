//! What the privacy promises need from the store: erasure on request,
//! deletion past retention, and which jobs' recipients were erased.

use mailpipe_core::{EmailAddress, RecipientRef, Scope, Suppression, now_ms};

use crate::{Pool, Result, Store, suppressions};

/// What `erase` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ErasureReport {
    pub ledger_rows_anonymised: u64,
    pub events_deleted: u64,
    pub dead_letters_deleted: u64,
    /// Personalised URLs in the click tables.
    pub campaign_links_deleted: u64,
    pub rejected_reports_deleted: u64,
    pub suppression_kept: bool,
}

/// What a retention purge removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    pub events_deleted: u64,
    pub ledger_rows_deleted: u64,
    pub client_details_removed: u64,
    pub dead_letters_deleted: u64,
}

/// Retention per data class, in days (0 keeps forever): the `[retention]`
/// section of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Retention {
    pub events_days: u32,
    pub ledger_days: u32,
    /// IP (truncated or hashed) and user-agent family on open and click events.
    pub client_details_days: u32,
    pub dead_letters_days: u32,
    /// How often `mailpipe analytics` purges (0: only `mailpipe purge`).
    /// [`Store::purge`] itself does not read it.
    pub purge_interval_hours: u64,
}

impl Store {
    /// Erases a recipient, wherever the address is held in any case:
    ///
    /// - the ledger keeps its rows (so a redelivered job is still recognised
    ///   and not resent), found by the keyed hash of the canonical address
    ///   (or, for rows older than the hash, the lower-cased address), with
    ///   the address replaced by the hash, the payload and last reply dropped;
    /// - those jobs' events are deleted, and so is any other event, campaign
    ///   link (a personalised URL), dead letter or rejected report whose
    ///   text holds the address, plain or percent-encoded;
    /// - a suppression on the keyed hash stops all future mail.
    ///
    /// Within a tenant's `scope`, only that tenant's data, except rejected
    /// reports, which belong to no tenant and are deleted in every scope.
    pub async fn erase(
        &self,
        address: &EmailAddress,
        recipient: RecipientRef,
        scope: &Scope,
    ) -> Result<ErasureReport> {
        let kept = Suppression::erasure(scope.clone(), recipient);
        let recipient_hash = recipient.to_hex();
        let needles = Needles::of(address);
        let everywhere = scope.is_platform();
        let scope = scope.key();
        let anon = format!("erased:{recipient_hash}");
        let mut r = ErasureReport::default();
        let jobs_sql = "SELECT tenant_id, job_id FROM send_ledger
                        WHERE (recipient_hash = $1 OR (recipient_hash IS NULL AND lower(recipient) = $2)) AND ($4 OR tenant_id = $3)";
        let del_events = "DELETE FROM events WHERE tenant_id = $1 AND job_id = $2";
        let anon_sql =
            "UPDATE send_ledger SET recipient = $3, recipient_hash = $4, payload = NULL, last_reply = NULL
                        WHERE tenant_id = $1 AND job_id = $2";
        let log = "INSERT INTO erasures (recipient_hash, scope_tenant, erased_at) VALUES ($1, $2, $3)
                   ON CONFLICT (recipient_hash, scope_tenant) DO UPDATE SET erased_at = excluded.erased_at";
        // The only dialect differences: finding a substring, and how to
        // reclaim the deleted rows' space (PostgreSQL: the dead row versions
        // of the touched tables; SQLite: the whole file, so no free page
        // keeps the address). `lower` folds ASCII in SQLite, Unicode in
        // PostgreSQL; the needles are lower-cased already.
        let (del_text, vacuums): ([&str; 2], &[&str]) = match self.pool {
            Pool::Postgres(_) => (
                [
                    "DELETE FROM events WHERE ($3 OR tenant_id = $2) AND (strpos(lower(payload), $1) > 0 OR strpos(lower(payload), $4) > 0)",
                    "DELETE FROM campaign_links WHERE ($3 OR tenant_id = $2) AND (strpos(lower(url), $1) > 0 OR strpos(lower(url), $4) > 0)",
                ],
                &[
                    "VACUUM send_ledger",
                    "VACUUM events",
                    "VACUUM dead_letters",
                    "VACUUM campaign_links",
                    "VACUUM rejected_reports",
                ],
            ),
            // In WAL mode VACUUM's rewrite lands in the WAL first: checkpoint
            // and truncate it so that neither file keeps the old pages.
            Pool::Sqlite(_) => (
                [
                    "DELETE FROM events WHERE ($3 OR tenant_id = $2) AND (instr(lower(payload), $1) > 0 OR instr(lower(payload), $4) > 0)",
                    "DELETE FROM campaign_links WHERE ($3 OR tenant_id = $2) AND (instr(lower(url), $1) > 0 OR instr(lower(url), $4) > 0)",
                ],
                &["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"],
            ),
        };
        let dead_letters_page = "SELECT id, detail, payload FROM dead_letters WHERE id > $1 AND ($3 OR tenant_id = $2) ORDER BY id LIMIT 256";
        let reports_page =
            "SELECT id, reason, report FROM rejected_reports WHERE id > $1 ORDER BY id LIMIT 256";
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let jobs: Vec<(String, String)> = sqlx::query_as(jobs_sql)
                .bind(&recipient_hash)
                .bind(&needles.plain)
                .bind(scope)
                .bind(everywhere)
                .fetch_all(&mut *tx)
                .await?;
            for (tid, jid) in &jobs {
                r.events_deleted +=
                    sqlx::query(del_events).bind(tid).bind(jid).execute(&mut *tx).await?.rows_affected();
                r.ledger_rows_anonymised += sqlx::query(anon_sql)
                    .bind(tid)
                    .bind(jid)
                    .bind(&anon)
                    .bind(&recipient_hash)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            let [events, links] = del_text;
            r.events_deleted += sqlx::query(events)
                .bind(&needles.plain).bind(scope).bind(everywhere).bind(&needles.encoded)
                .execute(&mut *tx).await?.rows_affected();
            r.campaign_links_deleted = sqlx::query(links)
                .bind(&needles.plain).bind(scope).bind(everywhere).bind(&needles.encoded)
                .execute(&mut *tx).await?.rows_affected();
            // Blobs are searched here rather than in SQL: a payload may be
            // any bytes, and JSON may escape the address's characters.
            let (mut holding, mut after) = (Vec::new(), 0_i64);
            loop {
                let page: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(dead_letters_page)
                    .bind(after).bind(scope).bind(everywhere).fetch_all(&mut *tx).await?;
                let Some(last) = page.last() else { break };
                after = last.0;
                holding.extend(page.iter().filter(|(_, d, b)| needles.in_text(d) || needles.in_bytes(b)).map(|x| x.0));
            }
            for id in holding {
                r.dead_letters_deleted +=
                    sqlx::query("DELETE FROM dead_letters WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
            }
            let (mut holding, mut after) = (Vec::new(), 0_i64);
            loop {
                let page: Vec<(i64, String, Vec<u8>)> =
                    sqlx::query_as(reports_page).bind(after).fetch_all(&mut *tx).await?;
                let Some(last) = page.last() else { break };
                after = last.0;
                holding.extend(page.iter().filter(|(_, d, b)| needles.in_text(d) || needles.in_bytes(b)).map(|x| x.0));
            }
            for id in holding {
                r.rejected_reports_deleted += sqlx::query("DELETE FROM rejected_reports WHERE id = $1")
                    .bind(id).execute(&mut *tx).await?.rows_affected();
            }
            suppressions::insert_q(&kept, &recipient_hash, now_ms()).execute(&mut *tx).await?;
            sqlx::query(log).bind(&recipient_hash).bind(scope).bind(now_ms()).execute(&mut *tx).await?;
            tx.commit().await?;
            for v in vacuums {
                sqlx::query(v).execute(p).await?;
            }
        });
        r.suppression_kept = true;
        Ok(r)
    }

    /// Deletes what is older than its retention, as of `now_ms`.
    pub async fn purge(&self, now: i64, r: Retention) -> Result<PurgeReport> {
        let cutoff = |days: u32| if days == 0 { i64::MIN } else { now - i64::from(days) * 86_400_000 };
        let mut out = PurgeReport::default();
        let strip_pg = "UPDATE events SET payload = (payload::jsonb - 'client')::text WHERE occurred_at < $1 AND payload LIKE '%\"client\"%'";
        let strip_lite = "UPDATE events SET payload = json_remove(payload, '$.client') WHERE occurred_at < $1 AND payload LIKE '%\"client\"%'";
        let strip = match self.pool {
            Pool::Postgres(_) => strip_pg,
            Pool::Sqlite(_) => strip_lite,
        };
        on_pool!(self, p => {
            out.client_details_removed = sqlx::query(strip).bind(cutoff(r.client_details_days)).execute(p).await?.rows_affected();
            out.events_deleted = sqlx::query("DELETE FROM events WHERE occurred_at < $1").bind(cutoff(r.events_days)).execute(p).await?.rows_affected();
            sqlx::query("DELETE FROM analytics_seen WHERE seen_at < $1").bind(cutoff(r.events_days)).execute(p).await?;
            // Only finished jobs: a job still on the retry schedule keeps its row.
            out.ledger_rows_deleted = sqlx::query("DELETE FROM send_ledger WHERE updated_at < $1 AND payload IS NULL AND status NOT IN ('pending', 'sending', 'deferred')")
                .bind(cutoff(r.ledger_days)).execute(p).await?.rows_affected();
            out.dead_letters_deleted = sqlx::query("DELETE FROM dead_letters WHERE received_at < $1").bind(cutoff(r.dead_letters_days)).execute(p).await?.rows_affected();
        });
        Ok(out)
    }

    /// Of the given (tenant, job) pairs, those whose recipient was erased.
    /// The tracker strips client details from their events, so an erased
    /// person's old links produce no new identifying data.
    pub async fn erased_jobs(
        &self,
        jobs: &[(String, String)],
    ) -> Result<std::collections::HashSet<(String, String)>> {
        if jobs.is_empty() {
            return Ok(Default::default());
        }
        let tenants: Vec<&str> = jobs.iter().map(|(t, _)| t.as_str()).collect();
        let ids: Vec<&str> = jobs.iter().map(|(_, j)| j.as_str()).collect();
        // A superset (any tenant × any job of the batch), narrowed below.
        let rows: Vec<(String, String)> = match &self.pool {
            Pool::Postgres(p) => {
                sqlx::query_as("SELECT tenant_id, job_id FROM send_ledger WHERE recipient LIKE 'erased:%' AND tenant_id = ANY($1) AND job_id = ANY($2)")
                    .bind(tenants)
                    .bind(ids)
                    .fetch_all(p)
                    .await?
            }
            Pool::Sqlite(p) => {
                let (t, j) = (serde_json::to_string(&tenants).unwrap_or_default(), serde_json::to_string(&ids).unwrap_or_default());
                sqlx::query_as("SELECT tenant_id, job_id FROM send_ledger WHERE recipient LIKE 'erased:%' AND tenant_id IN (SELECT value FROM json_each($1)) AND job_id IN (SELECT value FROM json_each($2))")
                    .bind(t)
                    .bind(j)
                    .fetch_all(p)
                    .await?
            }
        };
        let wanted: std::collections::HashSet<&(String, String)> = jobs.iter().collect();
        Ok(rows.into_iter().filter(|r| wanted.contains(r)).collect())
    }
}

/// The forms an address takes in stored text, lower-cased: as written, and
/// percent-encoded in a URL.
struct Needles {
    plain: String,
    encoded: String,
}

impl Needles {
    fn of(address: &EmailAddress) -> Self {
        let plain = address.canonical();
        let encoded = plain.replace('@', "%40");
        Self { plain, encoded }
    }

    fn in_text(&self, text: &str) -> bool {
        let text = text.to_lowercase();
        text.contains(&self.plain) || text.contains(&self.encoded)
    }

    /// In any bytes: as text (lossily decoded), and, if they are JSON, in
    /// their unescaped form (`"j\u0040x.example"` is the address too).
    fn in_bytes(&self, bytes: &[u8]) -> bool {
        if self.in_text(&String::from_utf8_lossy(bytes)) {
            return true;
        }
        serde_json::from_slice::<serde_json::Value>(bytes).ok().is_some_and(|v| self.in_text(&v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_found_in_any_case_encoding_or_json_escape() {
        let n = Needles::of(&EmailAddress::parse("Jane.Doe@Example.com").unwrap());
        assert!(n.in_text("550 <JANE.DOE@EXAMPLE.COM> unknown"));
        assert!(n.in_text("https://shop.example/?u=jane.doe%40example.com"));
        assert!(n.in_bytes(br#"{"to":{"email":"Jane.Doe\u0040Example.com"}}"#));
        assert!(n.in_bytes(b"\xff\x00 jane.doe@example.com \xfe"));
        assert!(!n.in_text("jane.doe@example.org"));
        assert!(!n.in_bytes(br#"{"to":{"email":"john@example.com"}}"#));
    }
}
