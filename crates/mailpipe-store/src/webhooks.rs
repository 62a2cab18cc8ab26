//! Signed webhooks' storage: a tenant's endpoints (managed through
//! [`Store::for_tenant`], so on PostgreSQL a tenant touches only its own),
//! and the deliveries, one row per (endpoint, event), made when an event is
//! counted ([`Store::apply_events`] calls `fan_out`) and worked by the
//! dispatcher (`mailpipe-webhooks`), which leases due rows by moving their
//! due time, as the retry schedule does.

use mailpipe_core::{Event, now_ms};

use crate::{Result, Store};

/// An endpoint as its tenant sees it (no secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebhookEndpoint {
    pub endpoint_id: String,
    pub url: String,
    /// Empty: every type.
    pub event_types: Vec<String>,
    pub created_at: i64,
    pub last_success_at: Option<i64>,
    pub disabled_at: Option<i64>,
    pub disabled_reason: Option<String>,
}

/// An endpoint as the dispatcher needs it: where, whose, and its sealed
/// secrets.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub endpoint_id: String,
    pub tenant_id: String,
    pub url: String,
    pub secret: Vec<u8>,
    /// The secret before the last rotation, and until when it signs too.
    pub previous: Option<(Vec<u8>, i64)>,
    pub disabled: bool,
    pub last_success_at: Option<i64>,
}

/// One delivery taken for an attempt.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub endpoint_id: String,
    pub message_id: String,
    pub tenant_id: String,
    pub event_type: String,
    pub payload: String,
    pub created_at: i64,
    /// Attempts made before this one.
    pub attempts: i64,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempted {
    Delivered,
    /// Try again at this time (unix ms).
    Retry {
        at: i64,
        error: String,
    },
    /// No more tries.
    Failed {
        error: String,
    },
}

/// The body of a delivery: the event as the events topic carries it, in
/// the Standard Webhooks envelope.
pub fn webhook_payload(e: &Event) -> String {
    let ts = e.occurred_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    serde_json::json!({ "type": e.kind.as_str(), "timestamp": ts, "data": e }).to_string()
}

/// The `webhook-id` of an event's deliveries: the same on every retry.
pub fn webhook_message_id(e: &Event) -> String {
    format!("msg_{}", e.event_id)
}

/// Inserts the deliveries of one event for its tenant's enabled endpoints
/// that take its type; an existing (endpoint, message) is left alone.
pub(crate) const FAN_OUT: &str = "INSERT INTO webhook_deliveries
        (endpoint_id, message_id, tenant_id, event_type, payload, created_at, next_attempt_at)
    SELECT endpoint_id, $1, tenant_id, $2, $3, $4, $4 FROM webhook_endpoints
    WHERE tenant_id = $5 AND disabled_at IS NULL
      AND (event_types = '' OR (',' || event_types || ',') LIKE ('%,' || $2 || ',%'))
    ON CONFLICT (endpoint_id, message_id) DO NOTHING";

/// The tenants with an enabled endpoint: only their events fan out.
pub(crate) const HOOKED: &str = "SELECT DISTINCT tenant_id FROM webhook_endpoints WHERE disabled_at IS NULL";

type EndpointRow = (String, String, String, i64, Option<i64>, Option<i64>, Option<String>);

fn endpoint(r: EndpointRow) -> WebhookEndpoint {
    let (endpoint_id, url, types, created_at, last_success_at, disabled_at, disabled_reason) = r;
    WebhookEndpoint {
        endpoint_id,
        url,
        event_types: types.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect(),
        created_at,
        last_success_at,
        disabled_at,
        disabled_reason,
    }
}

impl Store {
    /// Registers an endpoint (through [`Store::for_tenant`]).
    pub async fn add_webhook(
        &self,
        tenant: &str,
        endpoint_id: &str,
        url: &str,
        event_types: &[String],
        sealed_secret: &[u8],
    ) -> Result<()> {
        let sql =
            "INSERT INTO webhook_endpoints (endpoint_id, tenant_id, url, event_types, secret, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6)";
        scoped!(self, p => sqlx::query(sql)
            .bind(endpoint_id).bind(tenant).bind(url).bind(event_types.join(",")).bind(sealed_secret).bind(now_ms())
            .execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// The tenant's endpoints, oldest first.
    pub async fn webhooks(&self, tenant: &str) -> Result<Vec<WebhookEndpoint>> {
        let sql =
            "SELECT endpoint_id, url, event_types, created_at, last_success_at, disabled_at, disabled_reason
                   FROM webhook_endpoints WHERE tenant_id = $1 ORDER BY created_at, endpoint_id";
        let rows: Vec<EndpointRow> = scoped!(self, p => sqlx::query_as(sql).bind(tenant).fetch_all(p).await)?;
        Ok(rows.into_iter().map(endpoint).collect())
    }

    /// Removes an endpoint and its deliveries; false if the tenant has none
    /// by that id.
    pub async fn remove_webhook(&self, tenant: &str, endpoint_id: &str) -> Result<bool> {
        let deliveries = "DELETE FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2";
        scoped!(self, p => sqlx::query(deliveries).bind(tenant).bind(endpoint_id).execute(p).await.map(|_| ()))?;
        let sql = "DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND endpoint_id = $2";
        let n = scoped!(self, p => sqlx::query(sql).bind(tenant).bind(endpoint_id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Makes `sealed_secret` the endpoint's secret; the one it replaces
    /// keeps signing until `previous_until` (unix ms).
    pub async fn rotate_webhook_secret(
        &self,
        tenant: &str,
        endpoint_id: &str,
        sealed_secret: &[u8],
        previous_until: i64,
    ) -> Result<bool> {
        let sql = "UPDATE webhook_endpoints SET previous_secret = secret, previous_until = $3, secret = $4
                   WHERE tenant_id = $1 AND endpoint_id = $2";
        let n = scoped!(self, p => sqlx::query(sql)
            .bind(tenant).bind(endpoint_id).bind(previous_until).bind(sealed_secret).execute(p).await
            .map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Enables a disabled endpoint again: events from now on reach it.
    pub async fn enable_webhook(&self, tenant: &str, endpoint_id: &str) -> Result<bool> {
        let sql = "UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL
                   WHERE tenant_id = $1 AND endpoint_id = $2";
        let n = scoped!(self, p => sqlx::query(sql).bind(tenant).bind(endpoint_id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Delivery counts of one endpoint by status.
    pub async fn webhook_delivery_counts(
        &self,
        tenant: &str,
        endpoint_id: &str,
    ) -> Result<Vec<(String, i64)>> {
        let sql = "SELECT status, COUNT(*) FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2
                   GROUP BY status ORDER BY status";
        Ok(scoped!(self, p => sqlx::query_as(sql).bind(tenant).bind(endpoint_id).fetch_all(p).await)?)
    }

    /// The endpoint the dispatcher delivers to, if it still exists.
    pub async fn webhook_target(&self, endpoint_id: &str) -> Result<Option<WebhookTarget>> {
        let sql = "SELECT endpoint_id, tenant_id, url, secret, previous_secret, previous_until, disabled_at, last_success_at
                   FROM webhook_endpoints WHERE endpoint_id = $1";
        type Row = (String, String, String, Vec<u8>, Option<Vec<u8>>, Option<i64>, Option<i64>, Option<i64>);
        let row: Option<Row> =
            on_pool!(self, p => sqlx::query_as(sql).bind(endpoint_id).fetch_optional(p).await)?;
        Ok(row.map(|(endpoint_id, tenant_id, url, secret, prev, until, disabled, last_success_at)| {
            WebhookTarget {
                endpoint_id,
                tenant_id,
                url,
                secret,
                previous: prev.zip(until),
                disabled: disabled.is_some(),
                last_success_at,
            }
        }))
    }

    /// Endpoints with a delivery due at `now`.
    pub async fn due_webhook_endpoints(&self, now: i64) -> Result<Vec<String>> {
        let sql = "SELECT DISTINCT endpoint_id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1";
        Ok(on_pool!(self, p => sqlx::query_scalar(sql).bind(now).fetch_all(p).await)?)
    }

    /// Takes up to `limit` of an endpoint's due deliveries, oldest first,
    /// leasing each until `lease_until`: if the attempt's outcome is never
    /// recorded (a crash), the delivery is due again then.
    pub async fn take_due_webhooks(
        &self,
        endpoint_id: &str,
        now: i64,
        limit: i64,
        lease_until: i64,
    ) -> Result<Vec<WebhookDelivery>> {
        // The outer conditions again: on PostgreSQL a row another
        // dispatcher leased meanwhile is re-checked after its lock, and its
        // new due time no longer qualifies.
        let sql = "UPDATE webhook_deliveries SET next_attempt_at = $4
                   WHERE endpoint_id = $1 AND status = 'pending' AND next_attempt_at <= $2 AND message_id IN (
                       SELECT message_id FROM webhook_deliveries
                       WHERE endpoint_id = $1 AND status = 'pending' AND next_attempt_at <= $2
                       ORDER BY next_attempt_at LIMIT $3)
                   RETURNING message_id, tenant_id, event_type, payload, created_at, attempts";
        type Row = (String, String, String, String, i64, i64);
        let rows: Vec<Row> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(endpoint_id).bind(now).bind(limit).bind(lease_until).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .map(|(message_id, tenant_id, event_type, payload, created_at, attempts)| WebhookDelivery {
                endpoint_id: endpoint_id.to_owned(),
                message_id,
                tenant_id,
                event_type,
                payload,
                created_at,
                attempts,
            })
            .collect())
    }

    /// Records an attempt's outcome, if the delivery is still as the
    /// attempt took it (pending, after as many attempts): an attempt that
    /// outlived its lease and was taken again records nothing. Returns
    /// whether it recorded.
    pub async fn webhook_attempted(&self, d: &WebhookDelivery, outcome: &Attempted) -> Result<bool> {
        let now = now_ms();
        let (status, next, error) = match outcome {
            Attempted::Delivered => ("delivered", None, None),
            Attempted::Retry { at, error } => ("pending", Some(*at), Some(error.as_str())),
            Attempted::Failed { error } => ("failed", None, Some(error.as_str())),
        };
        let sql = "UPDATE webhook_deliveries SET status = $3, next_attempt_at = $4, last_error = $5, attempts = attempts + 1
                   WHERE endpoint_id = $1 AND message_id = $2 AND status = 'pending' AND attempts = $6";
        let success = "UPDATE webhook_endpoints SET last_success_at = $2 WHERE endpoint_id = $1";
        let recorded: bool;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            recorded = sqlx::query(sql).bind(&d.endpoint_id).bind(&d.message_id).bind(status).bind(next).bind(error)
                .bind(d.attempts).execute(&mut *tx).await?.rows_affected() > 0;
            if recorded && *outcome == Attempted::Delivered {
                sqlx::query(success).bind(&d.endpoint_id).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(recorded)
    }

    /// Disables an endpoint after persistent failure, closes its pending
    /// deliveries as failed (enabled again, it gets the events from then on,
    /// not a backlog), and records `event` (`webhook_disabled`), fanned out
    /// to the tenant's other endpoints. False if it was disabled already.
    pub async fn disable_webhook(&self, endpoint_id: &str, reason: &str, event: &Event) -> Result<bool> {
        let sql = "UPDATE webhook_endpoints SET disabled_at = $2, disabled_reason = $3
                   WHERE endpoint_id = $1 AND disabled_at IS NULL";
        let close = "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, last_error = 'endpoint disabled'
                     WHERE endpoint_id = $1 AND status = 'pending'";
        let n: u64;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            n = sqlx::query(sql).bind(endpoint_id).bind(now_ms()).bind(reason).execute(&mut *tx).await?.rows_affected();
            if n > 0 {
                sqlx::query(close).bind(endpoint_id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        if n == 0 {
            return Ok(false);
        }
        self.insert_events(std::slice::from_ref(event)).await?;
        self.fan_out_webhooks(std::slice::from_ref(event)).await?;
        Ok(true)
    }

    /// Queues `events`' deliveries to their tenants' endpoints.
    pub async fn fan_out_webhooks(&self, events: &[Event]) -> Result<()> {
        let now = now_ms();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for e in events {
                let Some(t) = &e.tenant_id else { continue };
                sqlx::query(FAN_OUT)
                    .bind(webhook_message_id(e)).bind(e.kind.as_str()).bind(webhook_payload(e)).bind(now).bind(t.as_str())
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Drops the deliveries of an endpoint that no longer exists.
    pub async fn drop_webhook_deliveries(&self, endpoint_id: &str) -> Result<u64> {
        let sql = "DELETE FROM webhook_deliveries WHERE endpoint_id = $1";
        Ok(
            on_pool!(self, p => sqlx::query(sql).bind(endpoint_id).execute(p).await.map(|r| r.rows_affected()))?,
        )
    }
}
