//! Templates registered for a campaign. Each upload is the next version
//! ([`Store::register_template`]); every version is kept, unchanged, until
//! retention removes it past its successor, so that a job pinned to one
//! (`template_version`) renders what it was written for.
//! `campaign_templates` holds the latest of each, which unpinned jobs use;
//! `campaign_template_versions` holds them all, kept by the database's
//! triggers from every write of the first, and unchangeable.

use mailpipe_core::now_ms;

use crate::{Result, Store};

/// A registered template set as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTemplate {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    pub version: i64,
    /// When this version was registered (unix ms).
    pub registered_at: i64,
}

/// One kept version of a template: when it was registered, and when the
/// next one replaced it (none for the latest).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TemplateVersion {
    pub version: i64,
    pub registered_at: i64,
    pub superseded_at: Option<i64>,
}

type Row = (String, Option<String>, Option<String>, i64, i64);

fn stored((subject, html, text, version, registered_at): Row) -> StoredTemplate {
    StoredTemplate { subject, html, text, version, registered_at }
}

impl Store {
    /// Registers a template for a campaign as the next version (1 when new)
    /// and returns it: the latest for unpinned jobs. The database keeps it
    /// as that version too, and marks the one it replaces superseded, in
    /// the same statement's trigger (migration 0028), so that every writer
    /// keeps the versions, an older release's included. Concurrent uploads
    /// get consecutive versions (the latest row's lock orders them). Run
    /// through [`Store::for_tenant`], the database holds the statement to
    /// the tenant's own rows.
    pub async fn register_template(
        &self,
        tenant: &str,
        campaign: &str,
        template: &str,
        subject: &str,
        html: Option<&str>,
        text: Option<&str>,
    ) -> Result<i64> {
        let sql = "INSERT INTO campaign_templates (tenant_id, campaign_id, template_id, subject, html, text, version, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6, 1, $7)
                   ON CONFLICT (tenant_id, campaign_id, template_id) DO UPDATE
                   SET subject = excluded.subject, html = excluded.html, text = excluded.text,
                       version = campaign_templates.version + 1, created_at = excluded.created_at
                   RETURNING version";
        let version: i64 = scoped!(self, p => sqlx::query_scalar(sql)
            .bind(tenant).bind(campaign).bind(template).bind(subject).bind(html).bind(text).bind(now_ms())
            .fetch_one(p).await)?;
        Ok(version)
    }

    /// A tenant's registered templates: (campaign, template, version,
    /// registered at ms), by campaign and template.
    pub async fn list_templates(&self, tenant: &str) -> Result<Vec<(String, String, i64, i64)>> {
        let sql = "SELECT campaign_id, template_id, version, created_at FROM campaign_templates
                   WHERE tenant_id = $1 ORDER BY campaign_id, template_id";
        let rows = scoped!(self, p => sqlx::query_as(sql).bind(tenant).fetch_all(p).await)?;
        Ok(rows)
    }

    /// The kept versions of one template, oldest first; empty when the
    /// template is not registered.
    pub async fn template_versions(
        &self,
        tenant: &str,
        campaign: &str,
        template: &str,
    ) -> Result<Vec<TemplateVersion>> {
        let sql = "SELECT version, created_at AS registered_at, superseded_at FROM campaign_template_versions
                   WHERE tenant_id = $1 AND campaign_id = $2 AND template_id = $3 ORDER BY version";
        let rows = scoped!(self, p => sqlx::query_as(sql).bind(tenant).bind(campaign).bind(template).fetch_all(p).await)?;
        Ok(rows)
    }

    /// The template's latest version, or with `version` that version, if
    /// it is kept.
    pub async fn template(
        &self,
        tenant: &str,
        campaign: &str,
        template: &str,
        version: Option<i64>,
    ) -> Result<Option<StoredTemplate>> {
        let latest = "SELECT subject, html, text, version, created_at FROM campaign_templates
                   WHERE tenant_id = $1 AND campaign_id = $2 AND template_id = $3";
        let pinned = "SELECT subject, html, text, version, created_at FROM campaign_template_versions
                   WHERE tenant_id = $1 AND campaign_id = $2 AND template_id = $3 AND version = $4";
        let row: Option<Row> = match version {
            None => scoped!(self, p => sqlx::query_as(latest)
                .bind(tenant).bind(campaign).bind(template).fetch_optional(p).await)?,
            Some(v) => scoped!(self, p => sqlx::query_as(pinned)
                .bind(tenant).bind(campaign).bind(template).bind(v).fetch_optional(p).await)?,
        };
        Ok(row.map(stored))
    }
}
