//! The reputation breaker's store: each stream's state, and the figures it
//! decides on (docs/deliverability.md). A stream is a tenant's mail as a
//! whole, the part of it sent as one of its sending domains, or the part
//! of it sent to one mailbox provider (its recipients' domains' group).

use std::collections::HashMap;

use mailpipe_core::TenantId;

use crate::{Pool, Result, Store, StoreError};

/// A stream: `tenant`'s mail; or only what it sends as `domain`; or only
/// what it sends to `provider`'s users. At most one of the two is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub tenant: TenantId,
    pub domain: Option<String>,
    pub provider: Option<String>,
}

impl StreamKey {
    pub fn tenant(tenant: &TenantId) -> Self {
        Self { tenant: tenant.clone(), domain: None, provider: None }
    }

    pub fn domain(tenant: &TenantId, domain: &str) -> Self {
        Self { tenant: tenant.clone(), domain: Some(domain.to_ascii_lowercase()), provider: None }
    }

    pub fn provider(tenant: &TenantId, provider: &str) -> Self {
        Self { tenant: tenant.clone(), domain: None, provider: Some(provider.to_owned()) }
    }

    /// From the `streams` columns: '' where the key has no part.
    fn from_columns(tenant: &TenantId, domain: &str, provider: &str) -> Self {
        match (domain, provider) {
            ("", "") => Self::tenant(tenant),
            ("", p) => Self::provider(tenant, p),
            (d, _) => Self::domain(tenant, d),
        }
    }

    /// Whether the stream is the tenant's whole mail.
    pub fn is_whole(&self) -> bool {
        self.domain.is_none() && self.provider.is_none()
    }
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.domain, &self.provider) {
            (Some(d), _) => write!(f, "{} (as {d})", self.tenant),
            (None, Some(p)) => write!(f, "{} (to {p})", self.tenant),
            (None, None) => write!(f, "{}", self.tenant),
        }
    }
}

/// Provider groups that are not one provider: never a stream of their own.
const NOT_A_PROVIDER: [&str; 2] = ["other", "unknown"];

/// A stream's marketing state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamState {
    pub tenant_id: String,
    /// The sending domain, or absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The mailbox provider, or absent. Neither: the tenant's whole stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// `active` or `paused`.
    pub state: String,
    /// Why it was paused.
    pub reason: Option<String>,
    pub changed_at: i64,
    /// When it was last resumed (0: never): the breaker reads no figure
    /// from before.
    pub resumed_at: i64,
}

/// What a stream's mail met since a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFigures {
    pub delivered: i64,
    pub complaints: i64,
    /// Bounces that said the address takes no mail (not a content or
    /// policy refusal of one message).
    pub hard_bounces: i64,
    /// Of those, the ones that said there is no such user: a list bought
    /// or gone stale.
    pub unknown_users: i64,
}

impl std::ops::AddAssign<&StreamFigures> for StreamFigures {
    fn add_assign(&mut self, o: &StreamFigures) {
        self.delivered += o.delivered;
        self.complaints += o.complaints;
        self.hard_bounces += o.hard_bounces;
        self.unknown_users += o.unknown_users;
    }
}

type Row = (String, String, String, String, Option<String>, i64, i64);

impl Store {
    /// Each stream's figures since `since` (unix ms), or since its last
    /// resume (or its tenant's) if that is later: every tenant with events,
    /// each of its sending domains and each provider it sent to. Streams
    /// with none are absent.
    pub async fn stream_figures(&self, since: i64) -> Result<Vec<(StreamKey, StreamFigures)>> {
        // `rejected` is the worker's synchronous refusal of one message
        // (content, policy): not a bad address.
        let sql = "SELECT e.tenant_id, COALESCE(e.sender_domain, ''), COALESCE(e.provider, ''),
                        SUM(CASE WHEN e.type = 'sent' THEN 1 ELSE 0 END),
                        SUM(CASE WHEN e.type = 'complaint' THEN 1 ELSE 0 END),
                        SUM(CASE WHEN e.type = 'bounced' AND COALESCE(e.reason, '') <> 'rejected' THEN 1 ELSE 0 END),
                        SUM(CASE WHEN e.type = 'bounced' AND e.reason = 'user_unknown' THEN 1 ELSE 0 END)
                     FROM events e
                     LEFT JOIN streams s ON s.tenant_id = e.tenant_id AND s.domain = '' AND s.provider = ''
                     LEFT JOIN streams d ON d.tenant_id = e.tenant_id AND d.domain = e.sender_domain AND d.provider = ''
                     LEFT JOIN streams p ON p.tenant_id = e.tenant_id AND p.domain = '' AND p.provider = e.provider
                     WHERE e.tenant_id IS NOT NULL AND e.type IN ('sent', 'bounced', 'complaint')
                       AND e.occurred_at >= $1
                       AND e.occurred_at >= COALESCE(s.resumed_at, 0)
                       AND e.occurred_at >= COALESCE(d.resumed_at, 0)
                       AND e.occurred_at >= COALESCE(p.resumed_at, 0)
                     GROUP BY e.tenant_id, COALESCE(e.sender_domain, ''), COALESCE(e.provider, '')";
        let rows: Vec<(String, String, String, i64, i64, i64, i64)> = match &self.pool {
            // SUM over BIGINT is NUMERIC on PostgreSQL.
            Pool::Postgres(p) => {
                let sql = sql.replace("ELSE 0 END)", "ELSE 0 END)::BIGINT");
                sqlx::query_as(&sql).bind(since).fetch_all(p).await?
            }
            Pool::Sqlite(p) => sqlx::query_as(sql).bind(since).fetch_all(p).await?,
        };
        let mut out: HashMap<StreamKey, StreamFigures> = HashMap::new();
        for (tenant, domain, provider, delivered, complaints, hard_bounces, unknown_users) in rows {
            let tenant = TenantId::parse(&tenant)
                .map_err(|e| StoreError::BadRow(format!("tenant {tenant:?}: {e}")))?;
            let f = StreamFigures { delivered, complaints, hard_bounces, unknown_users };
            *out.entry(StreamKey::tenant(&tenant)).or_default() += &f;
            if !domain.is_empty() {
                *out.entry(StreamKey::domain(&tenant, &domain)).or_default() += &f;
            }
            if !provider.is_empty() && !NOT_A_PROVIDER.contains(&provider.as_str()) {
                *out.entry(StreamKey::provider(&tenant, &provider)).or_default() += &f;
            }
        }
        let mut out: Vec<_> = out.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Pauses a stream on figures read at `now` (taken before they were
    /// read); `false` if it was paused already, or resumed since `now`, so
    /// that a resume between reading and pausing is not undone by the
    /// figures it was meant to clear.
    pub async fn pause_stream(&self, key: &StreamKey, reason: &str, now: i64) -> Result<bool> {
        let sql = "INSERT INTO streams (tenant_id, domain, provider, state, reason, changed_at) VALUES ($1, $2, $3, 'paused', $4, $5)
                   ON CONFLICT (tenant_id, domain, provider) DO UPDATE SET state = 'paused', reason = excluded.reason, changed_at = excluded.changed_at
                   WHERE streams.state = 'active' AND streams.resumed_at <= excluded.changed_at";
        let (domain, provider) = (key.domain.as_deref().unwrap_or(""), key.provider.as_deref().unwrap_or(""));
        let n = on_pool!(self, p => sqlx::query(sql).bind(key.tenant.as_str()).bind(domain).bind(provider).bind(reason).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Resumes `tenant`'s paused streams: only `domain`'s and `provider`'s
    /// if given, else every one. Returns those it resumed.
    pub async fn resume_streams(
        &self,
        tenant: &TenantId,
        domain: Option<&str>,
        provider: Option<&str>,
        now: i64,
    ) -> Result<Vec<StreamKey>> {
        let sql = "UPDATE streams SET state = 'active', reason = NULL, changed_at = $4, resumed_at = $4
                   WHERE tenant_id = $1 AND state = 'paused' AND ($2 IS NULL OR domain = $2) AND ($3 IS NULL OR provider = $3)
                   RETURNING domain, provider";
        let domain = domain.map(str::to_ascii_lowercase);
        let rows: Vec<(String, String)> = on_pool!(self, p => sqlx::query_as(sql).bind(tenant.as_str()).bind(domain.as_deref()).bind(provider).bind(now).fetch_all(p).await)?;
        let mut out: Vec<StreamKey> =
            rows.into_iter().map(|(d, p)| StreamKey::from_columns(tenant, &d, &p)).collect();
        out.sort();
        Ok(out)
    }

    /// The paused streams.
    pub async fn paused_streams(&self) -> Result<Vec<StreamKey>> {
        let sql = "SELECT tenant_id, domain, provider FROM streams WHERE state = 'paused'
                   ORDER BY tenant_id, domain, provider";
        let rows: Vec<(String, String, String)> =
            on_pool!(self, p => sqlx::query_as(sql).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(t, d, p)| Some(StreamKey::from_columns(&TenantId::parse(t).ok()?, &d, &p)))
            .collect())
    }

    /// Every stream with a state, or `tenant`'s only (read in the tenant's
    /// context on a [`Store::for_tenant`] handle).
    pub async fn streams(&self, tenant: Option<&TenantId>) -> Result<Vec<StreamState>> {
        let sql = "SELECT tenant_id, domain, provider, state, reason, changed_at, resumed_at FROM streams
                   WHERE $1 = '' OR tenant_id = $1 ORDER BY tenant_id, domain, provider";
        let key = tenant.map_or("", TenantId::as_str);
        let rows: Vec<Row> = scoped!(self, p => sqlx::query_as(sql).bind(key).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .map(|(tenant_id, domain, provider, state, reason, changed_at, resumed_at)| StreamState {
                tenant_id,
                domain: (!domain.is_empty()).then_some(domain),
                provider: (!provider.is_empty()).then_some(provider),
                state,
                reason,
                changed_at,
                resumed_at,
            })
            .collect())
    }

    /// The domain a job was sent as and the provider it went to, from its
    /// `sent` event (for what comes back about it later: a bounce, a
    /// complaint).
    pub async fn send_origin(&self, tenant: &str, job_id: &str) -> Result<(Option<String>, Option<String>)> {
        let sql = "SELECT sender_domain, provider FROM events WHERE tenant_id = $1 AND job_id = $2
                   AND type = 'sent' LIMIT 1";
        let row: Option<(Option<String>, Option<String>)> =
            on_pool!(self, p => sqlx::query_as(sql).bind(tenant).bind(job_id).fetch_optional(p).await)?;
        Ok(row.unwrap_or_default())
    }
}
