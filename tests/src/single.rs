//! [`SingleNode`]: `mailpipe serve`, the single-node mode, as a user runs
//! it: one process on a SQLite file of its own with the durable queue in
//! it, sending to a private smtp-sink, with the tracker and the API on
//! free loopback ports. No Kafka, no PostgreSQL.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use mailpipe::app;
use mailpipe::config::Config;
use mailpipe_core::TenantId;
use mailpipe_store::Store;

use crate::process::{ServiceProcess, free_port, spawn_service};
use crate::{SmtpSink, TEST_KEK, TEST_RECIPIENT_KEY, TEST_SENDER_DOMAIN, TEST_TOKEN_KEY, unique};

pub struct SingleNode {
    pub dir: PathBuf,
    vars: Vec<(String, String)>,
    /// The node's SQLite store, as the process sees it.
    pub store: Store,
    /// The same file, for checks in SQL.
    db: sqlx::SqlitePool,
    sink: SmtpSink,
    /// `127.0.0.1:port` of the API (and dashboard).
    pub api: String,
    /// `127.0.0.1:port` of the tracker.
    pub tracker: String,
}

impl SingleNode {
    /// A fresh node's files and settings, its schema applied and `tenants`
    /// registered, each allowed to send as [`TEST_SENDER_DOMAIN`].
    pub async fn setup(tenants: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique("single"));
        std::fs::create_dir_all(&dir).expect("single-node dir");
        let sink = SmtpSink::start(&[]);
        let (api, tracker) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let vars: Vec<(String, String)> = [
            ("MAILPIPE__STORE__URL", format!("sqlite:{}/mailpipe.db", dir.display())),
            ("MAILPIPE__QUEUE__KIND", "store".into()),
            ("MAILPIPE__QUEUE__POLL_MS", "50".into()),
            ("MAILPIPE__SMTP__KIND", "smtp".into()),
            ("MAILPIPE__SMTP__PORT", sink.port.to_string()),
            ("MAILPIPE__TOKENS__ALLOW_PUBLISHED_KEYS", "true".into()),
            ("MAILPIPE__TOKENS__KEYS__1", TEST_TOKEN_KEY.into()),
            ("MAILPIPE__TOKENS__RECIPIENT_KEY", TEST_RECIPIENT_KEY.into()),
            ("MAILPIPE__DOMAINS__KEYS__1", TEST_KEK.into()),
            ("MAILPIPE__PROVIDERS__NAMESERVERS", format!("[\"{}\"]", crate::dns::dns_server())),
            ("MAILPIPE__METRICS__LISTEN", "127.0.0.1:0".into()),
            ("MAILPIPE__TRACKER__LISTEN", tracker.clone()),
            ("MAILPIPE__TRACKER__PUBLIC_URL", format!("http://{tracker}")),
            ("MAILPIPE__TRACKER__SPOOL_DIR", dir.join("spool").display().to_string()),
            ("MAILPIPE__ANALYTICS__LISTEN", api.clone()),
            ("MAILPIPE__WORKER__GRACE_PERIOD_SECS", "20".into()),
            ("MAILPIPE__WORKER__SUPPRESSION_POLL_MS", "100".into()),
            // The test's webhook receivers listen on loopback, over http.
            ("MAILPIPE__WEBHOOKS__ALLOWED_NETWORKS", "[\"127.0.0.0/8\"]".into()),
            ("MAILPIPE__WEBHOOKS__ALLOW_HTTP", "true".into()),
            ("MAILPIPE__WEBHOOKS__POLL_MS", "100".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let cfg = Config::load(None, vars.clone()).unwrap_or_else(|e| panic!("single-node config: {e}"));
        let store = app::store(&cfg).await.expect("the node's SQLite store");
        let ids: Vec<TenantId> = tenants.iter().map(|t| TenantId::parse(*t).expect("tenant id")).collect();
        for t in &ids {
            store.upsert_tenant(t, t.as_str()).await.expect("register tenant");
            store.set_transactional_allowed(t, true).await.expect("allow transactional");
        }
        crate::env::register_sender_domain(&cfg, &store, &ids, TEST_SENDER_DOMAIN).await;
        let db = sqlx::SqlitePool::connect(&format!("sqlite:{}/mailpipe.db", dir.display()))
            .await
            .expect("the node's SQLite file");
        Self { dir, vars, store, db, sink, api, tracker }
    }

    /// `mailpipe serve` as its own process.
    pub fn serve(&self) -> ServiceProcess {
        spawn_service("serve", &self.vars)
    }

    /// Runs `mailpipe <args>` on this node's files, to the end.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(crate::mailpipe_binary())
            .args(args)
            .envs(self.vars.iter().cloned())
            .output()
            .expect("mailpipe")
    }

    pub fn sink(&self) -> &SmtpSink {
        &self.sink
    }

    /// Ledger rows by status for one campaign.
    pub async fn ledger(&self, tenant: &str, campaign: &str) -> BTreeMap<String, i64> {
        self.store.ledger_counts(tenant, campaign).await.expect("ledger counts")
    }

    /// The rows a query returns.
    pub async fn rows<T>(&self, sql: &str) -> Vec<T>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
    {
        sqlx::query_as(sql).fetch_all(&self.db).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The one number a query returns.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.db).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Waits until `n` jobs have their final outcome, failing if `node`
    /// exits first (`what` says when) or `timeout` passes.
    pub async fn wait_finished(&self, n: i64, node: &mut ServiceProcess, timeout: Duration, what: &str) {
        let deadline = std::time::Instant::now() + timeout;
        let sql = "SELECT COUNT(*) FROM send_ledger WHERE status IN ('sent','bounced','suppressed','failed','dead_lettered')";
        loop {
            // SQLite may be busy while the node writes: try again.
            if sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.db).await.is_ok_and(|done| done >= n) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {n} finished jobs ({what})"
            );
            node.assert_running(what);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SingleNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
