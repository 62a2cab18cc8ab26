//! Storage for mailpipe: PostgreSQL beyond one machine, SQLite embedded.
//!
//! Both backends run the same SQL (positional `$N` parameters, unix
//! millisecond timestamps, `ON CONFLICT` upserts); [`Store`] picks the pool
//! by URL. Migrations live in `migrations/{postgres,sqlite}` and are embedded
//! in the binary.
//!
//! Invariant: a job's ledger row and its outcome event are written in one
//! transaction ([`Store::finish`]), so "the outcome is durable" means both.
//!
//! Invariant (PostgreSQL): every table that holds a tenant's rows has
//! row-level security FORCEd (migration 0012), so a connection sees nothing
//! until it says whose rows it works on. A [`Store`] from [`Store::connect`]
//! works for the platform (the session sets `mailpipe.scope = 'platform'`);
//! one from [`Store::for_tenant`] runs each statement in a transaction as
//! role `mailpipe_api` with `mailpipe.tenant` set, and sees that tenant's
//! rows only, whatever its SQL says. See [`context`].
//!
//! One module per concern: `ledger` (claims, outcomes, the retry schedule,
//! dead letters), `events`, `suppressions` (and `filter`, the in-memory
//! filter in front of them), `tenants` (and API keys), `templates`,
//! `privacy` (erasure, retention), `feedback` (complaint reports),
//! `domains` (sending domains and their sealed DKIM keys), `queue` (the
//! single-node mode's send queue, on SQLite) and `aggregates`
//! (analytics counters and tenant reads).
#![forbid(unsafe_code)]

// First: every module below uses them.
#[macro_use]
mod macros;

mod aggregates;
pub mod context;
mod domains;
mod events;
mod feedback;
mod filter;
mod ledger;
mod privacy;
mod queue;
mod streams;
mod suppressions;
mod templates;
mod tenants;
mod warmup;
mod webhooks;
mod writer;

pub use aggregates::{CampaignRates, CampaignStats, DailyVolume, Overview, Progress};
pub use domains::{Added, CheckRecord, Owner, SendingDomain, StoredKey};
pub use filter::{Bloom, SuppressionFilter, Verdict};
pub use ledger::{Claim, ClaimRequest, DeadLetter, DueRetry, LedgerStatus, OutcomeRecord, SendingMark};
pub use privacy::{ErasureReport, PurgeReport, Retention};
pub use queue::QueuedJob;
pub use streams::{StreamFigures, StreamKey, StreamState};
pub use suppressions::{IMPORT_BATCH, Removal, SuppressionCursor};
pub use templates::{StoredTemplate, TemplateVersion};
pub use tenants::TenantPolicy;
pub use warmup::{RampView, Take, WarmupDomain, WarmupRow};
pub use webhooks::{
    Attempted, WebhookDelivery, WebhookEndpoint, WebhookTarget, webhook_message_id, webhook_payload,
};
pub use writer::{BatchSettings, BatchStats, LedgerWriter};

use std::str::FromStr;
use std::time::Duration;

use mailpipe_core::TenantId;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL must start with postgres:// or sqlite: (got {0:?})")]
    UnsupportedUrl(String),
    #[error("cannot reach the {backend} database: {source}")]
    Connect {
        backend: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("ledger holds an unknown status {0:?}")]
    BadStatus(String),
    #[error("suppression list holds an unreadable row: {0}")]
    BadSuppression(#[from] mailpipe_core::SuppressionError),
    #[error("unreadable row: {0}")]
    BadRow(String),
    #[error("ledger batch failed: {0}")]
    Batch(String),
    #[error("the ledger writer has stopped")]
    WriterGone,
    #[error("not on this backend: {0}")]
    Unsupported(&'static str),
    #[error("cannot create the SQLite directory {0}")]
    Directory(std::path::PathBuf, #[source] std::io::Error),
}

impl StoreError {
    /// The database refused a row's values: a constraint (SQLSTATE class
    /// 23, or SQLite's constraint errors) or a value it cannot store (class
    /// 22, such as a NUL byte in text). Writing a batch's rows in smaller
    /// parts can then tell the bad row from the rest. Not a deadlock, a
    /// timeout, a shutdown or a full connection table: those are the
    /// database's state, not a row's, and the whole batch is retried.
    pub fn is_statement_error(&self) -> bool {
        let StoreError::Db(sqlx::Error::Database(db)) = self else { return false };
        let class = db.code().filter(|c| c.len() == 5).map(|c| c[..2].to_owned());
        matches!(class.as_deref(), Some("22" | "23")) || !matches!(db.kind(), sqlx::error::ErrorKind::Other)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    /// Set by [`Store::for_tenant`]: whose rows this handle works on.
    tenant: Option<TenantId>,
    /// Set by [`Store::bounded`], the ledger writer's pool: its connections
    /// keep the ledger's batch statements prepared for a plan period
    /// (`PLAN_PERIOD_MS`, ledger.rs). Elsewhere they are planned each time.
    keeps_plans: bool,
}

impl Store {
    /// Connects to `postgres://...` or `sqlite:PATH` (file and directory
    /// created if missing).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)
                .map_err(|source| StoreError::Connect { backend: "PostgreSQL", source })?
                // Short statements only: JIT compiling one costs far more than
                // running it. A claim batch over a new, unanalysed month was
                // estimated dear enough to be compiled each time: 650 ms of
                // the server's CPU for a statement that runs in 1 ms.
                .options([("jit", "off")]);
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .after_connect(|conn, _| Box::pin(context::platform(conn)))
                .connect_with(options)
                .await
                .map_err(|source| StoreError::Connect { backend: "PostgreSQL", source })?;
            Ok(Self { pool: Pool::Postgres(pool), tenant: None, keeps_plans: false })
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|source| StoreError::Connect { backend: "SQLite", source })?;
            // SQLite creates the file but not its directory.
            if let Some(dir) = opts.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Directory(dir.to_owned(), e))?;
            }
            let opts = opts
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL + NORMAL is durable against process crashes (kill -9),
                // which is what the ledger needs; power loss may drop the last
                // transactions, as documented for the embedded default.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .connect_with(opts)
                .await
                .map_err(|source| StoreError::Connect { backend: "SQLite", source })?;
            Ok(Self { pool: Pool::Sqlite(pool), tenant: None, keeps_plans: false })
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// Another handle on the same database, whose statements the server
    /// cancels after `timeout` (PostgreSQL's `statement_timeout`, set on
    /// each of its connections), in a pool of its own of up to
    /// `max_connections`, opened as needed. For writes a caller must not
    /// wait on without end, such as the commit-point mark an open SMTP
    /// transaction waits for: the server ends the statement and the
    /// connection stays usable, where dropping the query's future would
    /// leave it running and its connection held (sqlx waits for it before
    /// reusing the connection). On SQLite, this same store: its writes wait
    /// at most `busy_timeout` for the file's lock.
    ///
    /// It is the ledger writer's pool: its connections keep the ledger's
    /// batch statements, each prepared anew once per `PLAN_PERIOD_MS`
    /// (ledger.rs), use the generic plan from the first execution (not five
    /// custom plans first, PostgreSQL's default) for every statement run
    /// on it, and keep few statements, so that the periods gone are closed
    /// on the server instead of holding their plans' memory. A statement
    /// that needs a plan for its parameters' values (pruning partitions by
    /// time, say) does not belong on it.
    pub fn bounded(&self, timeout: Duration, max_connections: u32) -> Store {
        match &self.pool {
            Pool::Postgres(p) => {
                let ms = timeout.as_millis().max(1);
                let options = (*p.connect_options())
                    .clone()
                    .options([
                        ("statement_timeout", format!("{ms}ms")),
                        ("plan_cache_mode", "force_generic_plan".to_owned()),
                    ])
                    .statement_cache_capacity(8);
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(|conn, _| Box::pin(context::platform(conn)))
                    .connect_lazy_with(options);
                Store { pool: Pool::Postgres(pool), tenant: self.tenant.clone(), keeps_plans: true }
            }
            Pool::Sqlite(_) => self.clone(),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Postgres(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// A handle that works on `tenant`'s rows only (see [`context`]). On
    /// SQLite, which has no roles or row-level security, it is the same
    /// store: the SQL's own `WHERE` clauses are the only fence there.
    pub fn for_tenant(&self, tenant: &TenantId) -> Store {
        Store { pool: self.pool.clone(), tenant: Some(tenant.clone()), keeps_plans: self.keeps_plans }
    }

    /// Applies the embedded migrations of this backend. On PostgreSQL this
    /// is the owner's work: the services' role may not change the schema.
    pub async fn migrate(&self) -> Result<()> {
        match &self.pool {
            Pool::Postgres(p) => {
                migrations::postgres().run(p).await?;
                // This month's partitions and the next two's, as of now
                // (the migration made them as of its own run).
                prepare_partitions(p, mailpipe_core::now_ms()).await?;
            }
            Pool::Sqlite(p) => migrations::sqlite().run(p).await?,
        }
        Ok(())
    }

    /// The embedded migrations the database has not applied yet (their
    /// versions), so that a service can refuse to run on an old schema
    /// instead of failing on its first query.
    pub async fn pending_migrations(&self) -> Result<Vec<i64>> {
        let sql = "SELECT version FROM _sqlx_migrations WHERE success";
        let done = applied(on_pool!(self, p => sqlx::query_scalar::<_, i64>(sql).fetch_all(p).await))?;
        let migrator = match &self.pool {
            Pool::Postgres(_) => migrations::postgres(),
            Pool::Sqlite(_) => migrations::sqlite(),
        };
        Ok(migrator.iter().map(|m| m.version).filter(|v| !done.contains(v)).collect())
    }

    /// Whether this connection's role owns the schema's tables, or may
    /// ignore row-level security (a superuser, or `BYPASSRLS`): a service
    /// that connects so holds more than it needs. Always false on SQLite.
    pub async fn owns_tables(&self) -> Result<bool> {
        match &self.pool {
            Pool::Postgres(p) => {
                let sql = "SELECT r.rolsuper OR r.rolbypassrls OR EXISTS (
                               SELECT 1 FROM pg_tables t WHERE t.schemaname = current_schema()
                               AND t.tablename = 'send_ledger' AND pg_has_role(t.tableowner, 'USAGE'))
                           FROM pg_roles r WHERE r.rolname = current_user";
                Ok(sqlx::query_scalar(sql).fetch_one(p).await?)
            }
            Pool::Sqlite(_) => Ok(false),
        }
    }

    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

/// Makes the month partitions of events and dead letters that `now_ms`
/// calls for on PostgreSQL (migration 0021): its month and the next two.
pub(crate) async fn prepare_partitions(p: &sqlx::PgPool, now_ms: i64) -> Result<()> {
    sqlx::query("SELECT mailpipe_prepare_partitions($1)").bind(now_ms).execute(p).await?;
    Ok(())
}

mod migrations {
    use sqlx::migrate::Migrator;

    pub(crate) fn postgres() -> Migrator {
        sqlx::migrate!("./migrations/postgres")
    }

    pub(crate) fn sqlite() -> Migrator {
        sqlx::migrate!("./migrations/sqlite")
    }
}

/// How a query for the applied migrations ended, as the versions applied:
/// none when the database was never migrated (no table yet).
fn applied(rows: std::result::Result<Vec<i64>, sqlx::Error>) -> Result<Vec<i64>> {
    match rows {
        Ok(v) => Ok(v),
        // PostgreSQL's undefined_table, or SQLite's "no such table"; not a
        // denied read, which is an error to report as it is.
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some("42P01") || e.message().starts_with("no such table") =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e.into()),
    }
}
