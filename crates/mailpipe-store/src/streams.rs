//! The reputation breaker's store: each tenant's stream state, and the
//! figures it decides on (docs/deliverability.md).

use mailpipe_core::TenantId;

use crate::{Result, Store, StoreError};

/// A tenant's marketing stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamState {
    pub tenant_id: String,
    /// `active` or `paused`.
    pub state: String,
    /// Why it was paused.
    pub reason: Option<String>,
    pub changed_at: i64,
    /// When it was last resumed (0: never): the breaker reads no figure
    /// from before.
    pub resumed_at: i64,
}

/// What a tenant's mail met since a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFigures {
    pub delivered: i64,
    pub complaints: i64,
    /// Bounces that said the address is bad (not a content or policy
    /// refusal of one message).
    pub hard_bounces: i64,
}

type Row = (String, String, Option<String>, i64, i64);

impl Store {
    /// Each tenant's figures since `since` (unix ms), or since its last
    /// resume if that is later; tenants with none are absent.
    pub async fn stream_figures(&self, since: i64) -> Result<Vec<(TenantId, StreamFigures)>> {
        // `rejected` is the worker's synchronous refusal of one message
        // (content, policy): not a bad address.
        let sql = r#"SELECT e.tenant_id, e.type,
                        SUM(CASE WHEN e.type = 'bounced' AND e.payload LIKE '%"reason":"rejected"%' THEN 0 ELSE 1 END)
                     FROM events e LEFT JOIN streams s ON s.tenant_id = e.tenant_id
                     WHERE e.tenant_id IS NOT NULL AND e.type IN ('sent', 'bounced', 'complaint')
                       AND e.occurred_at >= CASE WHEN COALESCE(s.resumed_at, 0) > $1 THEN s.resumed_at ELSE $1 END
                     GROUP BY e.tenant_id, e.type"#;
        let rows: Vec<(String, String, i64)> =
            on_pool!(self, p => sqlx::query_as(sql).bind(since).fetch_all(p).await)?;
        let mut out: std::collections::HashMap<TenantId, StreamFigures> = std::collections::HashMap::new();
        for (tenant, kind, n) in rows {
            let tenant = TenantId::parse(&tenant)
                .map_err(|e| StoreError::BadRow(format!("tenant {tenant:?}: {e}")))?;
            let f = out.entry(tenant).or_default();
            match kind.as_str() {
                "sent" => f.delivered = n,
                "complaint" => f.complaints = n,
                _ => f.hard_bounces = n,
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Pauses `tenant`'s stream; `false` if it was paused already.
    pub async fn pause_stream(&self, tenant: &TenantId, reason: &str, now: i64) -> Result<bool> {
        let sql = "INSERT INTO streams (tenant_id, state, reason, changed_at) VALUES ($1, 'paused', $2, $3)
                   ON CONFLICT (tenant_id) DO UPDATE SET state = 'paused', reason = excluded.reason, changed_at = excluded.changed_at
                   WHERE streams.state = 'active'";
        let n = on_pool!(self, p => sqlx::query(sql).bind(tenant.as_str()).bind(reason).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Resumes `tenant`'s stream; `false` if it was not paused.
    pub async fn resume_stream(&self, tenant: &TenantId, now: i64) -> Result<bool> {
        let sql = "UPDATE streams SET state = 'active', reason = NULL, changed_at = $2, resumed_at = $2
                   WHERE tenant_id = $1 AND state = 'paused'";
        let n = on_pool!(self, p => sqlx::query(sql).bind(tenant.as_str()).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// The tenants whose streams are paused.
    pub async fn paused_streams(&self) -> Result<Vec<TenantId>> {
        let sql = "SELECT tenant_id FROM streams WHERE state = 'paused'";
        let rows: Vec<String> = on_pool!(self, p => sqlx::query_scalar(sql).fetch_all(p).await)?;
        Ok(rows.into_iter().filter_map(|t| TenantId::parse(t).ok()).collect())
    }

    /// Every stream with a state, or `tenant`'s only (read in the tenant's
    /// context on a [`Store::for_tenant`] handle).
    pub async fn streams(&self, tenant: Option<&TenantId>) -> Result<Vec<StreamState>> {
        let sql = "SELECT tenant_id, state, reason, changed_at, resumed_at FROM streams
                   WHERE $1 = '' OR tenant_id = $1 ORDER BY tenant_id";
        let key = tenant.map_or("", TenantId::as_str);
        let rows: Vec<Row> = scoped!(self, p => sqlx::query_as(sql).bind(key).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .map(|(tenant_id, state, reason, changed_at, resumed_at)| StreamState {
                tenant_id,
                state,
                reason,
                changed_at,
                resumed_at,
            })
            .collect())
    }
}
