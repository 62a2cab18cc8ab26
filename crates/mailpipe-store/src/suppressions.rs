//! The suppression list: rows of [`Suppression`], keyed by
//! `(scope_tenant, recipient_hash, applies_to)`. Only keyed hashes are
//! stored, never addresses.

use mailpipe_core::{AppliesTo, Category, RecipientRef, Scope, Suppressed, Suppression, TenantId, now_ms};

use crate::{Result, Store, StoreError};

/// A row as stored: scope key, recipient hash, reason, applies_to,
/// source tenant, created at.
type Row = (String, String, String, String, Option<String>, i64);

fn parse_row((scope, hash, reason, applies_to, source, created_at): Row) -> Result<Suppression> {
    let source_tenant = match source {
        Some(t) => {
            Some(TenantId::parse(&t).map_err(|e| StoreError::BadRow(format!("source_tenant {t:?}: {e}")))?)
        }
        None => None,
    };
    Ok(Suppression {
        scope: Scope::from_key(&scope)?,
        recipient: hash.parse()?,
        reason: reason.parse()?,
        applies_to: applies_to.parse()?,
        source_tenant,
        created_at,
    })
}

/// The insert every path shares (one entry, an import, an erasure), so that
/// a suppression is written the same way whoever adds it. `created_at` is
/// the time of this insert for a single entry, never when the value was
/// built: the workers' filter follows the table by `created_at`, and an
/// entry retried through a store outage must not arrive already old.
pub(crate) fn insert_q<'q, DB: sqlx::Database>(
    s: &'q Suppression,
    recipient: &'q str,
    created_at: i64,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(
        "INSERT INTO suppressions (scope_tenant, recipient_hash, reason, applies_to, source_tenant, created_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope_tenant, recipient_hash, applies_to) DO NOTHING",
    )
    .bind(s.scope.key())
    .bind(recipient)
    .bind(s.reason.as_str())
    .bind(s.applies_to.as_str())
    .bind(s.source_tenant.as_ref().map(TenantId::as_str))
    .bind(created_at)
}

impl Store {
    /// Adds a suppression, stamped now; an entry already there for the same
    /// scope, recipient and category is kept as it is.
    pub async fn add_suppression(&self, s: &Suppression) -> Result<()> {
        let hash = s.recipient.to_hex();
        on_pool!(self, p => insert_q(s, &hash, now_ms()).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// The suppression that stops a send of `category` to `recipient` for
    /// `tenant`, if any: platform-wide entries first, then the tenant's own;
    /// only entries whose [`AppliesTo`] stops the category count.
    pub async fn suppression(
        &self,
        recipient: &RecipientRef,
        tenant: &TenantId,
        category: Category,
    ) -> Result<Option<Suppressed>> {
        let sql = "SELECT reason, scope_tenant FROM suppressions
                   WHERE recipient_hash = $1 AND scope_tenant IN ($5, $2) AND applies_to IN ($3, $4)
                   ORDER BY scope_tenant LIMIT 1";
        // The policy is AppliesTo::stops; SQL only gets its answer.
        let mut stopping = [AppliesTo::Marketing, AppliesTo::All].into_iter().filter(|a| a.stops(category));
        let first = stopping.next().unwrap_or(AppliesTo::All);
        let second = stopping.next().unwrap_or(first);
        let row: Option<(String, String)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(recipient.to_hex()).bind(tenant.as_str()).bind(first.as_str()).bind(second.as_str())
            .bind(Scope::Platform.key())
            .fetch_optional(p).await)?;
        row.map(|(reason, scope)| Ok(Suppressed { reason: reason.parse()?, scope: Scope::from_key(&scope)? }))
            .transpose()
    }

    /// Calls `f(recipient, created_at)` for every suppression created at or
    /// after `since_ms`, streaming rather than loading them all. A row whose
    /// hash does not parse is passed over: it can stop no send.
    pub async fn scan_suppressions(&self, since_ms: i64, mut f: impl FnMut(RecipientRef, i64)) -> Result<()> {
        use futures::TryStreamExt;
        let sql = "SELECT recipient_hash, created_at FROM suppressions WHERE created_at >= $1";
        on_pool!(self, p => {
            let mut rows = sqlx::query_as::<_, (String, i64)>(sql).bind(since_ms).fetch(p);
            while let Some((hash, created_at)) = rows.try_next().await? {
                if let Ok(r) = hash.parse() {
                    f(r, created_at);
                }
            }
        });
        Ok(())
    }

    /// The suppressions of one scope, oldest first.
    pub async fn list_suppressions(&self, scope: &Scope) -> Result<Vec<Suppression>> {
        let sql = "SELECT scope_tenant, recipient_hash, reason, applies_to, source_tenant, created_at FROM suppressions
                   WHERE scope_tenant = $1 ORDER BY created_at, recipient_hash";
        let rows: Vec<Row> = on_pool!(self, p => sqlx::query_as(sql).bind(scope.key()).fetch_all(p).await)?;
        rows.into_iter().map(parse_row).collect()
    }

    /// Removes a recipient's suppressions in one scope. Returns how many.
    pub async fn remove_suppression(&self, scope: &Scope, recipient: &RecipientRef) -> Result<u64> {
        let sql = "DELETE FROM suppressions WHERE scope_tenant = $1 AND recipient_hash = $2";
        Ok(
            on_pool!(self, p => sqlx::query(sql).bind(scope.key()).bind(recipient.to_hex()).execute(p).await?.rows_affected()),
        )
    }

    /// Adds many suppressions in one transaction: all or none, each with the
    /// `created_at` it has. Returns how many were new.
    pub async fn import_suppressions(&self, entries: &[Suppression]) -> Result<u64> {
        let hashes: Vec<String> = entries.iter().map(|s| s.recipient.to_hex()).collect();
        let mut n = 0;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for (s, hash) in entries.iter().zip(&hashes) {
                n += insert_q(s, hash, s.created_at).execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
        });
        Ok(n)
    }
}
