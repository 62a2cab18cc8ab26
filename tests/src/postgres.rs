//! PostgreSQL for tests: a fresh database per test, dropped by a later run
//! once the process that made it is gone.

use sqlx::Connection;

use crate::{START_HINT, capture_logs, finished_run, services, unique};

/// The owner's URL: it creates the tests' databases and migrates them.
pub fn database_url() -> String {
    std::env::var("MAILPIPE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://mailpipe:mailpipe@127.0.0.1:55432/mailpipe".into())
}

/// `db` (an owner's URL) as the services connect to it: as the login role
/// that owns nothing (`scripts/services.sh` makes it), with
/// `MAILPIPE_TEST_SERVICE_CREDENTIALS` (`user:password`).
pub fn service_url(db: &str) -> String {
    let creds = std::env::var("MAILPIPE_TEST_SERVICE_CREDENTIALS")
        .unwrap_or_else(|_| "mailpipe_app:mailpipe_app".into());
    let (scheme, rest) = db.split_once("://").expect("database URL has a scheme");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{creds}@{host}")
}

/// A plain connection to `url`, in the platform's context, so that it sees
/// every tenant's rows (row-level security is FORCEd on them, owner
/// included): for tests' checks in SQL.
pub async fn platform_connection(url: &str) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}\n{START_HINT}"));
    sqlx::query("SET mailpipe.scope = 'platform'")
        .execute(&mut conn)
        .await
        .expect("enter the platform's context");
    conn
}

/// Waits until `sql` (a sum over the statistics views, such as
/// `pg_stat_user_tables`) reaches `at_least`: a server process reports its
/// counters at the end of a transaction, at most once a second, and they
/// are readable soon after.
pub async fn counter_reaches(c: &mut sqlx::PgConnection, sql: &str, at_least: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut *c).await.expect("read the statistics views");
        if n >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "counters never reached {at_least}: {n} after 30 s of {sql}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A test's own database. Holds a share of the services ([`services`]) for
/// as long as it lives, so that no test restarts PostgreSQL under it.
/// Derefs to its URL.
pub struct TestDatabase {
    pub url: String,
    _services: Option<services::Shared>,
}

impl std::ops::Deref for TestDatabase {
    type Target = str;
    fn deref(&self) -> &str {
        &self.url
    }
}

impl std::fmt::Display for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl TestDatabase {
    /// A database of a test that holds the services exclusively already.
    pub(crate) fn unshared(url: String) -> Self {
        Self { url, _services: None }
    }
}

/// Migrates `url`'s database, as the owner, with the PostgreSQL migrations
/// numbered before `before` only (e.g. "0028"): a deployment of an earlier
/// release, for upgrade tests.
pub async fn migrate_postgres_before(url: &str, before: &str) {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/mailpipe-store/migrations/postgres");
    let dir = std::env::temp_dir().join(unique(&format!("migrations-before-{before}")));
    std::fs::create_dir_all(&dir).expect("a directory for the earlier migrations");
    for f in std::fs::read_dir(&src).expect("the PostgreSQL migrations") {
        let f = f.expect("a migration").path();
        let name = f.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.as_str() < before {
            std::fs::copy(&f, dir.join(&name)).expect("copy a migration");
        }
    }
    let mut owner = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}\n{START_HINT}"));
    let run = sqlx::migrate::Migrator::new(dir.as_path())
        .await
        .expect("the earlier migrations")
        .run(&mut owner)
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    run.unwrap_or_else(|e| panic!("migrations before {before}: {e}"));
}

/// A fresh, empty PostgreSQL database.
pub async fn fresh_database() -> TestDatabase {
    let shared = services::shared().await;
    TestDatabase { url: create_database().await, _services: Some(shared) }
}

/// A store on a fresh database, migrated: for tests of the store itself.
/// Holds its database (and so its share of the services) for as long as it
/// lives.
pub struct TestStore {
    pub store: mailpipe_store::Store,
    pub db: TestDatabase,
}

impl std::ops::Deref for TestStore {
    type Target = mailpipe_store::Store;
    fn deref(&self) -> &mailpipe_store::Store {
        &self.store
    }
}

/// A migrated SQLite store in a directory of its own, removed on drop: the
/// embedded default's side of a both-backends test.
pub struct SqliteStore {
    pub store: mailpipe_store::Store,
    dir: std::path::PathBuf,
}

impl std::ops::Deref for SqliteStore {
    type Target = mailpipe_store::Store;
    fn deref(&self) -> &mailpipe_store::Store {
        &self.store
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn fresh_sqlite_store() -> SqliteStore {
    let dir = std::env::temp_dir().join(crate::unique("sqlite-store"));
    std::fs::create_dir_all(&dir).expect("sqlite store directory");
    let store = mailpipe_store::Store::connect(&format!("sqlite:{}/t.db", dir.display()), 4)
        .await
        .expect("open the SQLite store");
    store.migrate().await.expect("migrate the SQLite store");
    SqliteStore { store, dir }
}

/// Migrated by the owner; the store connects as the services do.
pub async fn fresh_store() -> TestStore {
    let db = fresh_database().await;
    let owner = mailpipe_store::Store::connect(&db, 1).await.expect("connect to the test database");
    owner.migrate().await.expect("migrate the test database");
    owner.close().await;
    let store =
        mailpipe_store::Store::connect(&service_url(&db), 4).await.expect("connect as the services' role");
    TestStore { store, db }
}

/// A fresh database, for a test that holds the services exclusively already.
pub(crate) async fn create_database() -> String {
    capture_logs();
    let admin = database_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {admin}: {e}\n{START_HINT}"));
    drop_databases_of_finished_runs(&mut conn).await;
    let name = unique("mailpipe_test");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
    let (base, _) = admin.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

/// Drops the databases that earlier test processes made, once per process
/// (see [`finished_run`]). Every test makes one; without this a developer's
/// disk fills up over many runs. Best effort: nothing here fails a test.
async fn drop_databases_of_finished_runs(conn: &mut sqlx::PgConnection) {
    static DROPPED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DROPPED
        .get_or_init(|| async {
            let sql = r"SELECT datname FROM pg_database WHERE datname LIKE 'mailpipe\_test\_%'";
            let names: Vec<String> = sqlx::query_scalar(sql).fetch_all(&mut *conn).await.unwrap_or_default();
            for name in names.iter().filter(|n| finished_run(n) == Some("mailpipe_test")) {
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = sqlx::query(&drop).execute(&mut *conn).await;
            }
        })
        .await;
}

/// Jobs in the ledger with their final outcome.
pub(crate) async fn finished_jobs(conn: &mut sqlx::PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM send_ledger WHERE status IN ('sent','bounced','suppressed','failed','dead_lettered')",
    )
    .fetch_one(conn)
    .await
}
