//! The suppression list: rows of [`Suppression`], keyed by
//! `(scope_tenant, recipient_hash, applies_to)`. Only keyed hashes are
//! stored, never addresses.

use mailpipe_core::{
    AppliesTo, Category, Reason, RecipientRef, Scope, Suppressed, Suppression, TenantId, now_ms,
};

use crate::{Result, Store, StoreError};

/// Where a follower of the suppression table has read to
/// ([`Store::scan_suppressions`]). Opaque: only the store makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuppressionCursor(i64);

/// What [`Store::remove_suppression`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removal {
    pub removed: u64,
    /// Reasons of the entries that stay: a recipient's own choice, or
    /// another's entry, is not the remover's to lift.
    pub kept: Vec<Reason>,
}

/// Suppressions an import writes per transaction.
pub const IMPORT_BATCH: usize = 5000;

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

/// The insert: a second entry for the same scope, recipient and category
/// replaces the first only if its reason weighs more ([`Reason::weight`]),
/// so that, say, an erasure is not lost under a tenant's manual entry that
/// the tenant could then remove.
static INSERT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let weight = |column: &str| {
        let arms: String =
            Reason::ALL.iter().map(|r| format!(" WHEN '{}' THEN {}", r.as_str(), r.weight())).collect();
        format!("(CASE {column}{arms} ELSE 0 END)")
    };
    format!(
        "INSERT INTO suppressions (scope_tenant, recipient_hash, reason, applies_to, source_tenant, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (scope_tenant, recipient_hash, applies_to) DO UPDATE
         SET reason = excluded.reason, source_tenant = excluded.source_tenant, created_at = excluded.created_at
         WHERE {} > {}",
        weight("excluded.reason"),
        weight("suppressions.reason")
    )
});

/// The insert every path shares (one entry, an import, an erasure), so that
/// a suppression is written the same way whoever adds it. `created_at` is
/// the time of this insert, never when the value was built. (The workers'
/// filter follows the table by a cursor the database assigns, not by
/// `created_at`, so a late or back-dated stamp cannot hide a row from it.)
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
    sqlx::query(&INSERT_SQL)
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
        // Stamped when the entry was made, so that it reads back as written
        // (the filter follows the table by a database cursor, not this).
        scoped!(self, p => insert_q(s, &hash, s.created_at).execute(p).await.map(|_| ()))?;
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
        let row: Option<(String, String)> = scoped!(self, p => sqlx::query_as(sql)
            .bind(recipient.to_hex()).bind(tenant.as_str()).bind(first.as_str()).bind(second.as_str())
            .bind(Scope::Platform.key())
            .fetch_optional(p).await)?;
        row.map(|(reason, scope)| Ok(Suppressed { reason: reason.parse()?, scope: Scope::from_key(&scope)? }))
            .transpose()
    }

    /// Calls `f(recipient, created_at)` for every suppression written at or after
    /// `cursor` (every one, without), and returns the cursor to pass next
    /// time. The cursor is assigned by the database in commit order, not by
    /// a clock: on PostgreSQL the oldest transaction still running when the
    /// rows were read (so rows of a transaction that was open are read again
    /// once it commits), on SQLite the last sequence number read. A row may
    /// be passed to `f` more than once; none written after an earlier
    /// cursor is ever skipped.
    pub async fn scan_suppressions(
        &self,
        cursor: Option<SuppressionCursor>,
        mut f: impl FnMut(RecipientRef, i64),
    ) -> Result<SuppressionCursor> {
        use futures::TryStreamExt;
        let from = cursor.map(|c| c.0);
        let mut next = from.unwrap_or(0);
        match &self.pool {
            crate::Pool::Postgres(p) => {
                // One statement, so one snapshot: the horizon and the rows
                // agree. The LEFT JOIN yields the horizon with no rows too.
                let sql = "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS x)
                           SELECT h.x, s.recipient_hash, s.created_at FROM h
                           LEFT JOIN suppressions s ON ($1::bigint IS NULL OR s.txid >= $1::bigint::text::xid8)";
                let mut rows =
                    sqlx::query_as::<_, (i64, Option<String>, Option<i64>)>(sql).bind(from).fetch(p);
                while let Some((horizon, hash, created_at)) = rows.try_next().await? {
                    next = horizon;
                    if let Some(r) = hash.and_then(|h| h.parse().ok()) {
                        f(r, created_at.unwrap_or_default());
                    }
                }
            }
            crate::Pool::Sqlite(p) => {
                let sql = "SELECT COALESCE(seq, 0), recipient_hash, created_at FROM suppressions WHERE $1 IS NULL OR seq > $1";
                let mut rows = sqlx::query_as::<_, (i64, String, i64)>(sql).bind(from).fetch(p);
                while let Some((seq, hash, created_at)) = rows.try_next().await? {
                    next = next.max(seq);
                    if let Ok(r) = hash.parse() {
                        f(r, created_at);
                    }
                }
            }
        }
        Ok(SuppressionCursor(next))
    }

    /// The suppressions of one scope, oldest first.
    pub async fn list_suppressions(&self, scope: &Scope) -> Result<Vec<Suppression>> {
        let sql = "SELECT scope_tenant, recipient_hash, reason, applies_to, source_tenant, created_at FROM suppressions
                   WHERE scope_tenant = $1 ORDER BY created_at, recipient_hash";
        let rows: Vec<Row> = scoped!(self, p => sqlx::query_as(sql).bind(scope.key()).fetch_all(p).await)?;
        rows.into_iter().map(parse_row).collect()
    }

    /// Removes a recipient's suppressions in one scope, those whose reason
    /// [`Reason::removable_from`] allows; the others stay, and are named in
    /// the answer.
    pub async fn remove_suppression(&self, scope: &Scope, recipient: &RecipientRef) -> Result<Removal> {
        let select = "SELECT reason FROM suppressions WHERE scope_tenant = $1 AND recipient_hash = $2";
        let delete =
            "DELETE FROM suppressions WHERE scope_tenant = $1 AND recipient_hash = $2 AND reason = $3";
        let hash = recipient.to_hex();
        let mut out = Removal::default();
        in_tx!(self, tx => {
            let reasons: Vec<String> =
                sqlx::query_scalar(select).bind(scope.key()).bind(&hash).fetch_all(&mut *tx).await?;
            for r in reasons {
                let reason: Reason = r.parse()?;
                if reason.removable_from(scope) {
                    out.removed += sqlx::query(delete).bind(scope.key()).bind(&hash).bind(reason.as_str())
                        .execute(&mut *tx).await?.rows_affected();
                } else if !out.kept.contains(&reason) {
                    out.kept.push(reason);
                }
            }
        });
        Ok(out)
    }

    /// Adds many suppressions, [`IMPORT_BATCH`] to a transaction, each batch
    /// stamped when it is written: no transaction stays open for the whole
    /// of a large file, holding back the workers' filters. A failure part
    /// way leaves the batches before it; the insert skips entries already
    /// there, so the same import can simply be run again. Returns how many
    /// were new.
    pub async fn import_suppressions(&self, entries: &[Suppression]) -> Result<u64> {
        let mut n = 0;
        for batch in entries.chunks(IMPORT_BATCH) {
            let hashes: Vec<String> = batch.iter().map(|s| s.recipient.to_hex()).collect();
            in_tx!(self, tx => {
                let now = now_ms();
                for (s, hash) in batch.iter().zip(&hashes) {
                    n += insert_q(s, hash, now).execute(&mut *tx).await?.rows_affected();
                }
            });
        }
        Ok(n)
    }
}
