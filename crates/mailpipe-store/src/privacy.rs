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
    /// Webhook deliveries of the deleted events, sent or not.
    pub webhook_deliveries_deleted: u64,
    pub suppression_kept: bool,
    /// Whether the tables were vacuumed, so that the deleted rows' old
    /// versions left the data files now rather than at the next autovacuum.
    /// On PostgreSQL only the tables' owner may: `mailpipe erase` connects
    /// as it when `store.owner_url` is set.
    pub vacuumed: bool,
}

/// What a retention purge removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    pub events_deleted: u64,
    pub ledger_rows_deleted: u64,
    pub client_details_removed: u64,
    pub dead_letters_deleted: u64,
    pub rejected_reports_deleted: u64,
    pub webhook_deliveries_deleted: u64,
    pub template_versions_deleted: u64,
    /// Month partitions of events, dead letters and the ledger dropped
    /// whole (on PostgreSQL; their rows are not in the counts above).
    pub partitions_dropped: u64,
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
    /// Complaint and bounce reports that could not be used, kept for the
    /// operator to look into: they quote the mail, addresses included.
    pub rejected_reports_days: u32,
    /// Webhook deliveries, whatever became of them (their bodies are the
    /// events, which `events_days` keeps).
    pub webhook_deliveries_days: u32,
    /// Template versions past the upload that replaced them (the latest
    /// version of a template is kept while it is registered). Pinned jobs
    /// naming a version removed are dead-lettered `unknown_template`.
    pub template_versions_days: u32,
    /// How often `mailpipe analytics` purges (0: only `mailpipe purge`).
    /// [`Store::purge`] itself does not read it.
    pub purge_interval_hours: u64,
}

impl Retention {
    /// What a deployment must not set: a template version gone before a
    /// job scheduled against it can come due.
    pub fn problems(&self) -> Vec<String> {
        let horizon = mailpipe_core::job::MAX_SCHEDULE_AHEAD.whole_days();
        let days = i64::from(self.template_versions_days);
        if days != 0 && days <= horizon {
            return vec![format!(
                "retention.template_versions_days: 0 (forever) or more than {horizon}, send_at's horizon, so that a job scheduled against a version finds it"
            )];
        }
        Vec::new()
    }
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
    ///   text holds the address ([`Needles`]: any case, percent-encoded,
    ///   JSON-escaped, the domain in ASCII or Unicode, and only as a whole
    ///   address, so erasing `o@x.example` leaves `bo@x.example`'s data);
    /// - a suppression on the keyed hash stops all future mail.
    ///
    /// The suppression and the erasure record are committed first: from
    /// then on a new job for the person stores the hash, not the address,
    /// and a dead letter only its ids. Then the tables are searched outside
    /// any transaction (SQLite has one writer, and the workers need it),
    /// and what was found is removed in one transaction.
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
        let log = "INSERT INTO erasures (recipient_hash, scope_tenant, erased_at) VALUES ($1, $2, $3)
                   ON CONFLICT (recipient_hash, scope_tenant) DO UPDATE SET erased_at = excluded.erased_at";
        in_tx!(self, tx => {
            suppressions::insert_q(&kept, &recipient_hash, now_ms()).execute(&mut *tx).await?;
            sqlx::query(log).bind(&recipient_hash).bind(scope).bind(now_ms()).execute(&mut *tx).await?;
        });
        r.suppression_kept = true;

        // Find. Text that could hold an address has an `@` or a `%40`; the
        // rest is matched here, in Rust.
        let jobs_sql = "SELECT tenant_id, job_id FROM send_ledger
                        WHERE (recipient_hash = $1 OR (recipient_hash IS NULL AND lower(recipient) = $2)) AND ($4 OR tenant_id = $3)";
        let (events_page, links_page, vacuums): (&str, &str, &[&str]) = match self.pool {
            Pool::Postgres(_) => (
                "SELECT event_id, payload FROM events WHERE event_id > $1 AND ($3 OR tenant_id = $2)
                 AND (strpos(payload, '@') > 0 OR strpos(payload, '%40') > 0) ORDER BY event_id LIMIT 500",
                "SELECT tenant_id, campaign_id, url FROM campaign_links WHERE (tenant_id, campaign_id, url) > ($1, $2, $3)
                 AND ($5 OR tenant_id = $4) AND (strpos(url, '@') > 0 OR strpos(url, '%40') > 0)
                 ORDER BY tenant_id, campaign_id, url LIMIT 500",
                &["VACUUM send_ledger", "VACUUM events", "VACUUM dead_letters", "VACUUM campaign_links", "VACUUM rejected_reports"],
            ),
            // In WAL mode VACUUM's rewrite lands in the WAL first: checkpoint
            // and truncate it so that neither file keeps the old pages.
            Pool::Sqlite(_) => (
                "SELECT event_id, payload FROM events WHERE event_id > $1 AND ($3 OR tenant_id = $2)
                 AND (instr(payload, '@') > 0 OR instr(payload, '%40') > 0) ORDER BY event_id LIMIT 500",
                "SELECT tenant_id, campaign_id, url FROM campaign_links WHERE (tenant_id, campaign_id, url) > ($1, $2, $3)
                 AND ($5 OR tenant_id = $4) AND (instr(url, '@') > 0 OR instr(url, '%40') > 0)
                 ORDER BY tenant_id, campaign_id, url LIMIT 500",
                &["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"],
            ),
        };
        let dead_letters_page = "SELECT id, detail, payload FROM dead_letters WHERE id > $1 AND ($3 OR tenant_id = $2) ORDER BY id LIMIT 256";
        let reports_page =
            "SELECT id, reason, report FROM rejected_reports WHERE id > $1 ORDER BY id LIMIT 256";
        let (mut events, mut links, mut dead_letters, mut reports) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let jobs: Vec<(String, String)> = on_pool!(self, p => {
            let jobs = sqlx::query_as(jobs_sql)
                .bind(&recipient_hash)
                .bind(address.canonical())
                .bind(scope)
                .bind(everywhere)
                .fetch_all(p)
                .await?;
            let mut after = String::new();
            loop {
                let page: Vec<(String, String)> =
                    sqlx::query_as(events_page).bind(&after).bind(scope).bind(everywhere).fetch_all(p).await?;
                let Some(last) = page.last() else { break };
                after = last.0.clone();
                events.extend(page.into_iter().filter(|(_, text)| needles.in_text(text)).map(|(id, _)| id));
            }
            let mut after = (String::new(), String::new(), String::new());
            loop {
                let page: Vec<(String, String, String)> = sqlx::query_as(links_page)
                    .bind(&after.0).bind(&after.1).bind(&after.2).bind(scope).bind(everywhere)
                    .fetch_all(p).await?;
                let Some(last) = page.last() else { break };
                after = last.clone();
                links.extend(page.into_iter().filter(|(_, _, url)| needles.in_text(url)));
            }
            let mut after = 0_i64;
            loop {
                let page: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(dead_letters_page)
                    .bind(after).bind(scope).bind(everywhere).fetch_all(p).await?;
                let Some(last) = page.last() else { break };
                after = last.0;
                dead_letters.extend(page.iter().filter(|(_, d, b)| needles.in_text(d) || needles.in_bytes(b)).map(|x| x.0));
            }
            let mut after = 0_i64;
            loop {
                let page: Vec<(i64, String, Vec<u8>)> =
                    sqlx::query_as(reports_page).bind(after).fetch_all(p).await?;
                let Some(last) = page.last() else { break };
                after = last.0;
                reports.extend(page.iter().filter(|(_, d, b)| needles.in_text(d) || needles.in_bytes(b)).map(|x| x.0));
            }
            jobs
        });

        // Remove, in one transaction.
        let del_events = "DELETE FROM events WHERE tenant_id = $1 AND job_id = $2";
        let anon_sql =
            "UPDATE send_ledger SET recipient = $3, recipient_hash = $4, payload = NULL, last_reply = NULL
                        WHERE tenant_id = $1 AND job_id = $2";
        // A delivery's body is its event: the job's, by its id in the body.
        let del_job_hooks =
            "DELETE FROM webhook_deliveries WHERE tenant_id = $1 AND payload LIKE $2 ESCAPE '\\'";
        in_tx!(self, tx => {
            for (tid, jid) in &jobs {
                r.events_deleted +=
                    sqlx::query(del_events).bind(tid).bind(jid).execute(&mut *tx).await?.rows_affected();
                let escaped = jid.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                r.webhook_deliveries_deleted += sqlx::query(del_job_hooks)
                    .bind(tid).bind(format!("%\"job_id\":\"{escaped}\"%")).execute(&mut *tx).await?.rows_affected();
                r.ledger_rows_anonymised += sqlx::query(anon_sql)
                    .bind(tid)
                    .bind(jid)
                    .bind(&anon)
                    .bind(&recipient_hash)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            for id in &events {
                r.events_deleted +=
                    sqlx::query("DELETE FROM events WHERE event_id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
                r.webhook_deliveries_deleted += sqlx::query("DELETE FROM webhook_deliveries WHERE message_id = $1")
                    .bind(format!("msg_{id}")).execute(&mut *tx).await?.rows_affected();
            }
            for (t, c, u) in &links {
                r.campaign_links_deleted += sqlx::query("DELETE FROM campaign_links WHERE tenant_id = $1 AND campaign_id = $2 AND url = $3")
                    .bind(t).bind(c).bind(u).execute(&mut *tx).await?.rows_affected();
            }
            for id in &dead_letters {
                r.dead_letters_deleted +=
                    sqlx::query("DELETE FROM dead_letters WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
            }
            for id in &reports {
                r.rejected_reports_deleted += sqlx::query("DELETE FROM rejected_reports WHERE id = $1")
                    .bind(id).execute(&mut *tx).await?.rows_affected();
            }
        });
        // A role that does not own a table gets a warning from VACUUM, not
        // an error, and nothing done: ask first, and say so in the report.
        r.vacuumed = match &self.pool {
            Pool::Postgres(_) => self.owns_tables().await?,
            Pool::Sqlite(_) => true,
        };
        if r.vacuumed {
            on_pool!(self, p => {
                for v in vacuums {
                    sqlx::query(v).execute(p).await?;
                }
            });
        }
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
            sqlx::query("DELETE FROM analytics_seen WHERE seen_at < $1").bind(cutoff(r.events_days)).execute(p).await?;
            // Soft bounces count within days; older ones are events' age.
            sqlx::query("DELETE FROM soft_bounces WHERE at < $1").bind(cutoff(r.events_days)).execute(p).await?;
            out.rejected_reports_deleted = sqlx::query("DELETE FROM rejected_reports WHERE received_at < $1").bind(cutoff(r.rejected_reports_days)).execute(p).await?.rows_affected();
            // Pending ones too: older than their retention, they are past
            // any retry schedule (their endpoint disabled, or no dispatcher).
            out.webhook_deliveries_deleted = sqlx::query("DELETE FROM webhook_deliveries WHERE created_at < $1")
                .bind(cutoff(r.webhook_deliveries_days)).execute(p).await?.rows_affected();
            out.template_versions_deleted = sqlx::query("DELETE FROM campaign_template_versions WHERE superseded_at < $1")
                .bind(cutoff(r.template_versions_days)).execute(p).await?.rows_affected();
        });
        match &self.pool {
            // Whole months: a row is kept at least its retention and at most
            // a month more (docs/privacy.md). The next months' partitions are
            // made first, so that new rows find theirs.
            Pool::Postgres(p) => {
                crate::prepare_partitions(p, now).await?;
                let expire =
                    "SELECT partitions_dropped::int8, rows_deleted FROM mailpipe_expire_partitions($1, $2)";
                // Only finished jobs: a job still on the retry schedule keeps
                // its row (migration 0022 says how a month goes whole).
                let expire_ledger =
                    "SELECT partitions_dropped::int8, rows_deleted FROM mailpipe_expire_ledger($1)";
                // Each table on its own: one that cannot be dropped from now
                // (its lock not had in time) does not hold the others up.
                let mut failed = None;
                for (table, days, deleted) in [
                    ("events", r.events_days, &mut out.events_deleted),
                    ("dead_letters", r.dead_letters_days, &mut out.dead_letters_deleted),
                    ("send_ledger", r.ledger_days, &mut out.ledger_rows_deleted),
                ] {
                    let q = match table {
                        "send_ledger" => sqlx::query_as::<_, (i64, i64)>(expire_ledger),
                        _ => sqlx::query_as(expire).bind(table),
                    };
                    match q.bind(cutoff(days)).fetch_one(p).await {
                        Ok((dropped, rows)) => {
                            out.partitions_dropped += dropped as u64;
                            *deleted = rows as u64;
                        }
                        Err(e) => failed = failed.or(Some(e)),
                    }
                }
                if let Some(e) = failed {
                    return Err(e.into());
                }
            }
            Pool::Sqlite(p) => {
                out.ledger_rows_deleted = sqlx::query(
                    "DELETE FROM send_ledger WHERE updated_at < $1 AND payload IS NULL AND status NOT IN ('pending', 'sending', 'deferred')",
                )
                .bind(cutoff(r.ledger_days))
                .execute(p)
                .await?
                .rows_affected();
                out.events_deleted = sqlx::query("DELETE FROM events WHERE occurred_at < $1")
                    .bind(cutoff(r.events_days))
                    .execute(p)
                    .await?
                    .rows_affected();
                // Feed rows no reader will count (no analytics runs on this
                // file, or their events are gone).
                sqlx::query("DELETE FROM events_feed WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = events_feed.event_id)")
                    .execute(p)
                    .await?;
                out.dead_letters_deleted = sqlx::query("DELETE FROM dead_letters WHERE received_at < $1")
                    .bind(cutoff(r.dead_letters_days))
                    .execute(p)
                    .await?
                    .rows_affected();
            }
        }
        Ok(out)
    }

    /// Whether `recipient` was erased in `tenant`'s scope or everywhere.
    pub async fn is_erased(
        &self,
        recipient: &RecipientRef,
        tenant: &mailpipe_core::TenantId,
    ) -> Result<bool> {
        let sql = "SELECT COUNT(*) FROM erasures WHERE recipient_hash = $1 AND scope_tenant IN ('', $2)";
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(sql).bind(recipient.to_hex()).bind(tenant.as_str()).fetch_one(p).await)?;
        Ok(n > 0)
    }

    /// Of the given (tenant, job) pairs, those whose recipient was erased.
    /// The tracker strips client details from their events, so an erased
    /// person's old links produce no new identifying data.
    ///
    /// One probe of the ledger's key per distinct pair and month of the
    /// ledger (a near-empty month may be read whole instead, which costs
    /// about as little). Asking by `tenant_id = ANY(..) AND job_id =
    /// ANY(..)` instead made the index probe every tenant of the batch with
    /// every job of it, or the planner read the month whole: a shipping
    /// batch of 4,096 events over 500 tenants would have been two million
    /// probes per month of the ledger.
    pub async fn erased_jobs(
        &self,
        jobs: &[(String, String)],
    ) -> Result<std::collections::HashSet<(String, String)>> {
        let pairs: std::collections::BTreeSet<(&str, &str)> =
            jobs.iter().map(|(t, j)| (t.as_str(), j.as_str())).collect();
        if pairs.is_empty() {
            return Ok(Default::default());
        }
        let rows: Vec<(String, String)> = match &self.pool {
            Pool::Postgres(p) => {
                let (tenants, ids): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
                // OFFSET 0 keeps the subquery from being flattened into a
                // join the planner could hash over the whole ledger: a nested
                // loop over the pairs, each a probe of the key.
                sqlx::query_as(
                    "SELECT k.tenant_id, k.job_id FROM UNNEST($1::text[], $2::text[]) AS k(tenant_id, job_id)
                     CROSS JOIN LATERAL (SELECT 1 FROM send_ledger l
                                         WHERE l.tenant_id = k.tenant_id AND l.job_id = k.job_id
                                           AND l.recipient LIKE 'erased:%' OFFSET 0) e",
                )
                .bind(tenants)
                .bind(ids)
                .fetch_all(p)
                .await?
            }
            Pool::Sqlite(p) => {
                let pairs = serde_json::to_string(&pairs).unwrap_or_default();
                sqlx::query_as(
                    "SELECT l.tenant_id, l.job_id FROM json_each($1) AS k
                     JOIN send_ledger l ON l.tenant_id = json_extract(k.value, '$[0]') AND l.job_id = json_extract(k.value, '$[1]')
                     WHERE l.recipient LIKE 'erased:%'",
                )
                .bind(pairs)
                .fetch_all(p)
                .await?
            }
        };
        Ok(rows.into_iter().collect())
    }
}

/// How an erasure recognises an address in stored text: any of the
/// address's [`EmailAddress::search_forms`], in any case, in the text as it
/// is or percent-decoded, and only as a whole address (not the tail of a
/// longer local part, nor the head of a longer domain).
struct Needles {
    forms: Vec<String>,
}

impl Needles {
    fn of(address: &EmailAddress) -> Self {
        Self { forms: address.search_forms() }
    }

    fn in_text(&self, text: &str) -> bool {
        let lower = text.to_lowercase();
        if self.whole_in(&lower) {
            return true;
        }
        lower.contains('%') && self.whole_in(&percent_decoded(&lower).to_lowercase())
    }

    /// In any bytes: as text (lossily decoded), and, if they are JSON, in
    /// their unescaped form (`"j\u0040x.example"` is the address too).
    fn in_bytes(&self, bytes: &[u8]) -> bool {
        if self.in_text(&String::from_utf8_lossy(bytes)) {
            return true;
        }
        serde_json::from_slice::<serde_json::Value>(bytes).ok().is_some_and(|v| self.in_text(&v.to_string()))
    }

    fn whole_in(&self, haystack: &str) -> bool {
        // A character that would make the match part of a longer address.
        let extends_local = |c: char| c.is_alphanumeric() || matches!(c, '.' | '+' | '-' | '_');
        let extends_domain = |c: char| c.is_alphanumeric() || c == '-';
        self.forms.iter().any(|form| {
            haystack.match_indices(form.as_str()).any(|(at, m)| {
                let before = haystack[..at].chars().next_back();
                let mut after = haystack[at + m.len()..].chars();
                let next = after.next();
                // `x.example.org` continues the domain; `x.example.` ends a sentence.
                let longer_domain = match next {
                    Some('.') => after.next().is_some_and(extends_domain),
                    Some(c) => extends_domain(c),
                    None => false,
                };
                !before.is_some_and(extends_local) && !longer_domain
            })
        })
    }
}

/// `%XX` sequences decoded (invalid UTF-8 replaced); everything else as is.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) =
                (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_versions_outlive_the_schedule_horizon() {
        let r = |days| Retention {
            events_days: 395,
            ledger_days: 90,
            client_details_days: 30,
            dead_letters_days: 30,
            rejected_reports_days: 30,
            webhook_deliveries_days: 7,
            template_versions_days: days,
            purge_interval_hours: 24,
        };
        assert!(r(0).problems().is_empty(), "forever");
        assert!(r(90).problems().is_empty());
        assert!(r(31).problems().is_empty());
        let p = r(30).problems();
        assert!(p.len() == 1 && p[0].starts_with("retention.template_versions_days"), "{p:?}");
        assert_eq!(r(1).problems().len(), 1);
    }

    #[test]
    fn an_address_is_found_in_any_case_encoding_or_json_escape_and_only_whole() {
        let n = Needles::of(&EmailAddress::parse("Jane.Doe+news@Example.com").unwrap());
        assert!(n.in_text("550 <JANE.DOE+NEWS@EXAMPLE.COM> unknown"));
        assert!(n.in_text("https://shop.example/?u=jane.doe%2Bnews%40example.com&x=1"));
        assert!(n.in_text("mail jane.doe+news@example.com."), "a sentence's full stop");
        assert!(n.in_bytes(br#"{"to":{"email":"Jane.Doe+news\u0040Example.com"}}"#));
        assert!(n.in_bytes(b"\xff\x00 jane.doe+news@example.com \xfe"));
        assert!(!n.in_text("jane.doe+news@example.org"));
        assert!(!n.in_text("xjane.doe+news@example.com"), "a longer local part is someone else");
        assert!(!n.in_text("jane.doe+news@example.com.evil"), "so is a longer domain");
        assert!(!n.in_bytes(br#"{"to":{"email":"john@example.com"}}"#));
        let idn = Needles::of(&EmailAddress::parse("ÉMILE@Bücher.example").unwrap());
        assert!(idn.in_text("to émile@bücher.example"), "Unicode domain, Unicode case folding");
        assert!(idn.in_text("to Émile@xn--bcher-kva.example"), "ASCII domain");
        assert!(idn.in_text("u=%C3%A9mile%40b%C3%BCcher.example"), "percent-encoded UTF-8");
        let short = Needles::of(&EmailAddress::parse("o@x.example").unwrap());
        assert!(!short.in_text("bo@x.example") && !short.in_text("b.o@x.example"));
        assert!(short.in_text("u=o@x.example") && short.in_text("<o@x.example>"));
    }
}
