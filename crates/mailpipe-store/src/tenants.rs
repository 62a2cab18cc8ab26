//! Tenants, their settings and their API keys.

use mailpipe_core::{TenantId, now_ms};
use sha2::{Digest, Sha256};

use crate::{Result, Store};

/// What the operator allows a tenant beyond sending marketing mail as its
/// verified domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantPolicy {
    /// May send the transactional category, which marketing unsubscribes
    /// do not stop.
    pub transactional: bool,
}

impl Store {
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

    /// What the operator allows the tenant, if it is registered.
    pub async fn tenant_policy(&self, tenant: &TenantId) -> Result<Option<TenantPolicy>> {
        let sql = "SELECT transactional_allowed FROM tenants WHERE tenant_id = $1";
        let row: Option<bool> =
            on_pool!(self, p => sqlx::query_scalar(sql).bind(tenant.as_str()).fetch_optional(p).await)?;
        Ok(row.map(|transactional| TenantPolicy { transactional }))
    }

    /// Every tenant whose links were ever revoked, with its current link
    /// generation (the rest are at 0).
    pub async fn link_generations(&self) -> Result<std::collections::HashMap<String, u16>> {
        let sql = "SELECT tenant_id, link_generation FROM tenants WHERE link_generation > 0";
        let rows: Vec<(String, i32)> = on_pool!(self, p => sqlx::query_as(sql).fetch_all(p).await)?;
        Ok(rows.into_iter().map(|(t, g)| (t, u16::try_from(g).unwrap_or(u16::MAX))).collect())
    }

    /// Revokes the tenant's tracked links so far (its unsubscribe links
    /// excepted): raises its link generation and returns the new one, or
    /// `None` if the tenant is not registered.
    pub async fn revoke_links(&self, tenant: &TenantId) -> Result<Option<u16>> {
        let sql = "UPDATE tenants SET link_generation = link_generation + 1
                   WHERE tenant_id = $1 AND link_generation < 65535 RETURNING link_generation";
        let g: Option<i32> =
            on_pool!(self, p => sqlx::query_scalar(sql).bind(tenant.as_str()).fetch_optional(p).await)?;
        Ok(g.map(|g| u16::try_from(g).unwrap_or(u16::MAX)))
    }

    /// Allows or denies the tenant transactional mail. False if the tenant
    /// is not registered.
    pub async fn set_transactional_allowed(&self, tenant: &TenantId, allowed: bool) -> Result<bool> {
        let sql = "UPDATE tenants SET transactional_allowed = $2 WHERE tenant_id = $1";
        let n = on_pool!(self, p => sqlx::query(sql).bind(tenant.as_str()).bind(allowed).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Records which token key ids exist when a tenant is registered:
    /// references for operators, never the secrets themselves.
    pub async fn set_tenant_key_refs(&self, tenant: &TenantId, token_key_ids: &str) -> Result<()> {
        let sql = "UPDATE tenants SET token_key_ids = $2 WHERE tenant_id = $1";
        on_pool!(self, p => sqlx::query(sql).bind(tenant.as_str()).bind(token_key_ids).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Creates an API key for `tenant` and returns it; only its hash is kept.
    pub async fn create_api_key(&self, tenant: &TenantId, label: &str) -> Result<String> {
        let mut raw = [0u8; 24];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
        let key = format!("mp_{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let sql = "INSERT INTO api_keys (key_hash, tenant_id, label, created_at) VALUES ($1, $2, $3, $4)";
        on_pool!(self, p => sqlx::query(sql).bind(key_hash(&key)).bind(tenant.as_str()).bind(label).bind(now_ms()).execute(p).await.map(|_| ()))?;
        Ok(key)
    }

    /// The tenant an API key belongs to, if it exists and is not revoked.
    pub async fn tenant_for_api_key(&self, key: &str) -> Result<Option<TenantId>> {
        let sql = "SELECT tenant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL";
        let t: Option<String> =
            on_pool!(self, p => sqlx::query_scalar(sql).bind(key_hash(key)).fetch_optional(p).await)?;
        Ok(t.and_then(|t| TenantId::parse(t).ok()))
    }

    /// Revokes an API key. True if it existed.
    pub async fn revoke_api_key(&self, key: &str) -> Result<bool> {
        let sql = "UPDATE api_keys SET revoked_at = $2 WHERE key_hash = $1 AND revoked_at IS NULL";
        let n = on_pool!(self, p => sqlx::query(sql).bind(key_hash(key)).bind(now_ms()).execute(p).await?.rows_affected());
        Ok(n > 0)
    }
}

/// API keys are stored as their SHA-256: a leaked table grants nothing.
fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}
