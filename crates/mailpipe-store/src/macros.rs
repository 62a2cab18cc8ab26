//! The macros every module of this crate uses. Declared first in `lib.rs`
//! (`#[macro_use]`), so that module order never matters.

/// Runs the same expression against whichever pool this store has: the SQL is
/// shared, only the driver type differs.
macro_rules! on_pool {
    ($self:expr, $p:ident => $body:expr) => {{
        // The platform's: a tenant's handle must use `scoped!` or `in_tx!`,
        // or it would run with the platform's scope.
        debug_assert!($self.tenant.is_none(), "a platform query on a tenant's store");
        match &$self.pool {
            $crate::Pool::Postgres($p) => $body,
            $crate::Pool::Sqlite($p) => $body,
        }
    }};
}

/// Same, for an open transaction; on PostgreSQL, in the tenant's context
/// when the store is [`crate::Store::for_tenant`]'s.
macro_rules! in_tx {
    ($self:expr, $tx:ident => $body:block) => {
        match &$self.pool {
            $crate::Pool::Postgres(p) => {
                let mut $tx = p.begin().await?;
                if let Some(t) = &$self.tenant {
                    $crate::context::enter(&mut $tx, t).await?;
                }
                $body
                $tx.commit().await?;
            }
            $crate::Pool::Sqlite(p) => {
                let mut $tx = p.begin().await?;
                $body
                $tx.commit().await?;
            }
        }
    };
}

/// Runs one statement, `$body` with `$p` its executor, in this store's
/// context: on the pool itself for the platform, or on PostgreSQL for
/// [`crate::Store::for_tenant`] in a transaction that entered the tenant's
/// context first. `$body` must use `$p` once and give a `sqlx` result.
macro_rules! scoped {
    ($self:expr, $p:ident => $body:expr) => {
        match (&$self.pool, &$self.tenant) {
            ($crate::Pool::Postgres(pool), Some(t)) => {
                let mut tx = pool.begin().await?;
                $crate::context::enter(&mut tx, t).await?;
                let out = {
                    let $p = &mut *tx;
                    $body
                };
                if out.is_ok() {
                    tx.commit().await?;
                }
                out
            }
            ($crate::Pool::Postgres($p), None) => $body,
            ($crate::Pool::Sqlite($p), _) => $body,
        }
    };
}

/// Binds an event row's values, in column order: event id, tenant,
/// campaign, job, type, occurred at (ms), JSON payload, sender domain,
/// reason, provider.
macro_rules! bind_event {
    ($q:expr, $e:expr, $payload:expr) => {
        $q.bind($e.event_id.as_str())
            .bind($e.tenant_id.as_ref().map(|t| t.as_str()))
            .bind($e.campaign_id.as_ref().map(|c| c.as_str()))
            .bind($e.job_id.as_ref().map(|j| j.as_str()))
            .bind($e.kind.as_str())
            .bind(($e.occurred_at.unix_timestamp_nanos() / 1_000_000) as i64)
            .bind($payload)
            .bind($e.sender_domain.as_deref())
            .bind($e.reason.as_deref())
            .bind($e.provider.as_deref())
    };
}
