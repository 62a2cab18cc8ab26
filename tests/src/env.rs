//! [`TestEnv`]: what an integration test starts from, after zero2prod's
//! `spawn_app`. A fresh database (migrated, tenants registered), fresh
//! topics, a private smtp-sink or a relay of the test's, a consumer group,
//! and the `MAILPIPE__...` environment that points mailpipe at all of them,
//! with helpers to run the services in-process or as processes and to read
//! what they did.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use mailpipe::app;
use mailpipe::config::Config;
use mailpipe_core::TenantId;
use mailpipe_store::Store;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use crate::postgres::{TestDatabase, create_database, finished_jobs};
use crate::process::{ServiceProcess, free_port, spawn_service};
use crate::{
    SmtpSink, TEST_KEK, TEST_RECIPIENT_KEY, TEST_SENDER_DOMAIN, TEST_TOKEN_KEY, Topics, eventually,
    fresh_topics, kafka_brokers, services, unique,
};

/// How a [`TestEnv`] is made; [`TestEnv::setup`] starts one.
pub struct Setup {
    partitions: i32,
    sink: Option<Vec<String>>,
    relay_port: Option<u16>,
    vars: Vec<(String, String)>,
    toml: Option<String>,
    tenants: Vec<&'static str>,
    tracker: bool,
    exclusive: bool,
}

impl Setup {
    /// Partitions of each topic (1 unless set).
    pub fn partitions(mut self, n: i32) -> Self {
        self.partitions = n;
        self
    }

    /// A private smtp-sink with these flags (`["-r", "RCPT"]`: 4xx to RCPT)
    /// instead of a well-behaved one.
    pub fn sink(mut self, flags: &[&str]) -> Self {
        self.sink = Some(flags.iter().map(|f| f.to_string()).collect());
        self
    }

    /// Mail goes to a relay of the test's own on this loopback port, and no
    /// sink is started.
    pub fn relay(mut self, port: u16) -> Self {
        self.relay_port = Some(port);
        self
    }

    /// No relay at all (the tracker sends no mail).
    pub fn no_relay(self) -> Self {
        self.relay(1)
    }

    /// A `MAILPIPE__...` setting on top of the test defaults.
    pub fn var(mut self, key: &str, value: impl ToString) -> Self {
        self.vars.push((key.to_owned(), value.to_string()));
        self
    }

    /// Several, as [`Setup::var`].
    pub fn vars(mut self, settings: &[(&str, &str)]) -> Self {
        self.vars.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// A configuration file layered under the environment (for what
    /// variables spell badly, such as `[throttle.limits]` keyed by domain).
    pub fn toml(mut self, text: &str) -> Self {
        self.toml = Some(text.to_owned());
        self
    }

    /// The tenants registered before the test starts (`acme` unless set).
    pub fn tenants(mut self, ids: &[&'static str]) -> Self {
        self.tenants = ids.to_vec();
        self
    }

    /// The tracker on a free loopback port, with its own spool.
    pub fn tracker(mut self) -> Self {
        self.tracker = true;
        self
    }

    /// The shared services to this test alone, for one that restarts them
    /// ([`crate::restart_service`]). Waits until no other test uses them.
    pub fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }

    /// Starts the env, enqueues `jobs` and starts a worker in-process: the
    /// shape of most worker tests.
    pub async fn sending(self, jobs: &[(String, Vec<u8>)]) -> (TestEnv, Running) {
        let env = self.start().await;
        env.enqueue(jobs).await;
        let worker = env.start_worker();
        (env, worker)
    }

    pub async fn start(self) -> TestEnv {
        let (db, exclusive) = if self.exclusive {
            let held = services::exclusive().await;
            (TestDatabase::unshared(create_database().await), Some(held))
        } else {
            (crate::fresh_database().await, None)
        };
        let topics = fresh_topics(self.partitions).await;
        let sink = match (&self.sink, self.relay_port) {
            (_, Some(_)) => None,
            (Some(flags), None) => {
                Some(SmtpSink::start(&flags.iter().map(String::as_str).collect::<Vec<_>>()))
            }
            (None, None) => Some(SmtpSink::start(&[])),
        };
        let relay_port = self.relay_port.or(sink.as_ref().map(|s| s.port)).unwrap_or(1);
        let group = unique("group");
        let dir = std::env::temp_dir().join(unique("env"));
        std::fs::create_dir_all(&dir).expect("test env dir");
        let mut vars = relay_env(&db, &topics, relay_port, &group);
        let tracker_port = self.tracker.then(|| {
            let port = free_port();
            vars.extend(tracker_vars(port, &dir));
            port
        });
        vars.extend(self.vars);
        let config_file = self.toml.map(|text| {
            let f = dir.join("mailpipe.toml");
            std::fs::write(&f, text).expect("test config file");
            f
        });
        let cfg =
            Config::load(config_file.as_deref(), vars.clone()).unwrap_or_else(|e| panic!("test config: {e}"));
        app::migrate(&cfg).await.expect("migrate, as the owner");
        let store = app::store(&cfg).await.expect("store");
        let tenants: Vec<TenantId> =
            self.tenants.iter().map(|t| TenantId::parse(*t).expect("tenant id")).collect();
        for t in &tenants {
            store.upsert_tenant(t, t.as_str()).await.expect("register tenant");
            // Test tenants may send both categories; a test that needs a
            // tenant without transactional mail denies it.
            store.set_transactional_allowed(t, true).await.expect("allow transactional");
        }
        if !tenants.is_empty() {
            register_sender_domain(&cfg, &store, &tenants, TEST_SENDER_DOMAIN).await;
        }
        TestEnv {
            db,
            topics,
            group,
            sink,
            relay_port,
            tracker_port,
            vars,
            config_file,
            dir,
            store,
            exclusive,
        }
    }
}

/// A test's database, topics, relay and configuration; see the module docs.
pub struct TestEnv {
    pub topics: Topics,
    /// The workers' consumer group.
    pub group: String,
    sink: Option<SmtpSink>,
    pub relay_port: u16,
    pub tracker_port: Option<u16>,
    /// The `MAILPIPE__...` settings a service of this test runs with.
    pub vars: Vec<(String, String)>,
    config_file: Option<PathBuf>,
    dir: PathBuf,
    /// The test's store, migrated, as the services see it.
    pub store: Store,
    exclusive: Option<services::Exclusive>,
    /// Last, so that its share of the services is let go last (fields drop
    /// in order).
    pub db: TestDatabase,
}

impl TestEnv {
    pub fn setup() -> Setup {
        Setup {
            partitions: 1,
            sink: None,
            relay_port: None,
            vars: Vec::new(),
            toml: None,
            tenants: vec!["acme"],
            tracker: false,
            exclusive: false,
        }
    }

    /// The default: one partition, a well-behaved sink, tenant `acme`.
    pub async fn start() -> Self {
        Self::setup().start().await
    }

    /// Another platform domain `tenants` may send as, besides
    /// [`TEST_SENDER_DOMAIN`].
    pub async fn add_sender_domain(&self, name: &str, tenants: &[&str]) {
        let tenants: Vec<TenantId> =
            tenants.iter().map(|t| TenantId::parse(*t).expect("a tenant id")).collect();
        register_sender_domain(&self.config(), &self.store, &tenants, name).await;
    }

    /// The configuration a service of this test loads.
    pub fn config(&self) -> Config {
        self.config_with(&[])
    }

    /// Same, with settings on top (a second consumer group, say).
    pub fn config_with(&self, extra: &[(&str, &str)]) -> Config {
        let mut vars = self.vars.clone();
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::load(self.config_file.as_deref(), vars).unwrap_or_else(|e| panic!("test config: {e}"))
    }

    /// The environment of a mailpipe process of this test.
    pub fn process_vars(&self) -> Vec<(String, String)> {
        let mut vars = self.vars.clone();
        if let Some(f) = &self.config_file {
            vars.push(("MAILPIPE_CONFIG".into(), f.display().to_string()));
        }
        vars
    }

    /// Runs `mailpipe <args>` against this env's store and settings, to the end.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(crate::mailpipe_binary())
            .args(args)
            .envs(self.process_vars())
            .output()
            .expect("mailpipe")
    }

    /// The sink the setup started.
    pub fn sink(&self) -> &SmtpSink {
        self.sink.as_ref().expect("this test env has a relay of the test's, not a sink")
    }

    /// A plain connection to the test's database, for checks in SQL: as
    /// the owner, in the platform's context (it sees every tenant's rows).
    pub async fn pg(&self) -> sqlx::PgConnection {
        crate::platform_connection(&self.db).await
    }

    /// The services held exclusively, for [`crate::restart_service`].
    pub fn exclusive(&self) -> &services::Exclusive {
        self.exclusive.as_ref().expect("set up with .exclusive()")
    }

    /// Produces jobs to the send topic, as `mailpipe enqueue` does.
    pub async fn enqueue(&self, jobs: &[(String, Vec<u8>)]) {
        app::enqueue(&self.config(), jobs).await.expect("enqueue");
    }

    /// `mailpipe worker` in this process, until [`Running::stop`].
    pub fn start_worker(&self) -> Running {
        self.start_worker_with(self.config())
    }

    pub fn start_worker_with(&self, cfg: Config) -> Running {
        Running::spawn(move |stop| async move { app::run_worker(&cfg, stop, None).await })
    }

    /// `mailpipe inbound` in this process with `cfg`; returns once it
    /// listens on `addr`, and fails at once with its error if it stops
    /// before.
    pub async fn start_inbound(&self, cfg: Config, addr: std::net::SocketAddr) -> Running {
        let running = Running::spawn(move |stop| async move { app::run_inbound(&cfg, stop, None).await });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !crate::process::listens(addr).await {
            if running.task.is_finished() {
                let e = running.task.await.expect("inbound task").expect_err("stopped before listening");
                panic!("inbound did not start: {e:#}");
            }
            assert!(std::time::Instant::now() < deadline, "inbound did not listen on {addr} within 20s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running
    }

    /// `mailpipe analytics` (the API) in this process, on its configured
    /// `analytics.listen`; returns once `/healthz` answers, and fails at
    /// once with its error if it stops before.
    pub async fn start_analytics(&self) -> Running {
        let cfg = self.config();
        let addr = cfg.analytics.listen.to_string();
        let running = Running::spawn(move |stop| async move { app::run_analytics(&cfg, stop).await });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if crate::try_http(&addr, "GET", "/healthz", &[], b"").await.is_ok_and(|r| r.status == 200) {
                return running;
            }
            if running.task.is_finished() {
                let e = running.task.await.expect("analytics task").expect_err("stopped before serving");
                panic!("analytics did not start: {e:#}");
            }
            assert!(std::time::Instant::now() < deadline, "analytics did not answer on {addr} within 30s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `mailpipe tracker` in this process; returns once it listens, and
    /// fails at once with its error if it stops before.
    pub async fn start_tracker(&self) -> Running {
        let cfg = self.config();
        let addr = self.tracker_addr();
        let running = Running::spawn(move |stop| async move { app::run_tracker(&cfg, stop, None).await });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !crate::process::listens(&addr).await {
            if running.task.is_finished() {
                panic!("the tracker stopped before it listened: {:?}", running.task.await);
            }
            assert!(std::time::Instant::now() < deadline, "the tracker did not listen on {addr} within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running
    }

    /// `mailpipe worker` as its own process.
    pub fn worker_process(&self) -> ServiceProcess {
        spawn_service("worker", &self.process_vars())
    }

    /// `mailpipe tracker` as its own process.
    pub fn tracker_process(&self) -> ServiceProcess {
        self.tracker_process_with(&[])
    }

    /// Same, with settings on top.
    pub fn tracker_process_with(&self, extra: &[(&str, &str)]) -> ServiceProcess {
        self.service_process("tracker", extra)
    }

    /// `mailpipe <command>` as its own process, with settings on top.
    pub fn service_process(&self, command: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let mut vars = self.process_vars();
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        spawn_service(command, &vars)
    }

    /// Where the tracker listens: `127.0.0.1:port`.
    pub fn tracker_addr(&self) -> String {
        format!("127.0.0.1:{}", self.tracker_port.expect("set up with .tracker()"))
    }

    /// Ledger rows by status for one campaign.
    pub async fn ledger(&self, tenant: &str, campaign: &str) -> BTreeMap<String, i64> {
        self.store.ledger_counts(tenant, campaign).await.expect("ledger counts")
    }

    /// Stored events by type for one campaign.
    pub async fn events(&self, tenant: &str, campaign: &str) -> BTreeMap<String, i64> {
        self.store.event_counts(tenant, campaign).await.expect("event counts")
    }

    /// Waits until `n` jobs have their final outcome, failing if `worker`
    /// exits first (`what` says when) or `timeout` passes. A failed query
    /// connects again, so PostgreSQL may restart meanwhile.
    pub async fn wait_finished(&self, n: i64, worker: &mut ServiceProcess, timeout: Duration, what: &str) {
        let deadline = std::time::Instant::now() + timeout;
        let mut conn: Option<sqlx::PgConnection> = None;
        loop {
            if conn.is_none()
                && let Ok(mut c) = sqlx::PgConnection::connect(&self.db).await
            {
                conn = sqlx::query("SET mailpipe.scope = 'platform'").execute(&mut c).await.ok().map(|_| c);
            }
            if let Some(c) = conn.as_mut() {
                match finished_jobs(c).await {
                    Ok(done) if done >= n => return,
                    Ok(_) => {}
                    Err(_) => conn = None,
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {n} finished jobs ({what})"
            );
            worker.assert_running(what);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The one number a query returns (`SELECT COUNT(*) ...`).
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&mut self.pg().await).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// When the first and the last job to `domain` got their outcome (unix ms).
    pub async fn send_span(&self, domain: &str) -> (i64, i64) {
        sqlx::query_as("SELECT MIN(updated_at), MAX(updated_at) FROM send_ledger WHERE recipient_domain = $1")
            .bind(domain)
            .fetch_one(&mut self.pg().await)
            .await
            .expect("send span")
    }

    /// Waits until `n` of the campaign's jobs have ledger status `status`.
    pub async fn wait_ledger(&self, tenant: &str, campaign: &str, status: &str, n: usize, timeout: Duration) {
        let what = format!("{n} jobs of {tenant}/{campaign} {status}");
        eventually(&what, timeout, || async {
            self.ledger(tenant, campaign).await.get(status) == Some(&(n as i64))
        })
        .await;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A service running in the test's process.
pub struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(stop.clone()));
        Self { stop, task }
    }

    /// Shuts it down as SIGTERM would, and fails the test if it did not
    /// stop cleanly.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("service task").expect("service stops cleanly");
    }

    /// Its result, if it ends by itself within `timeout` (a service that
    /// refuses to start).
    pub async fn outcome(self, timeout: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(timeout, self.task)
            .await
            .expect("the service kept running")
            .expect("service task")
    }
}

/// The `MAILPIPE__...` environment that points mailpipe at the real
/// services, `topics`, a relay on loopback `smtp_port`, and consumer group
/// `group`.
fn relay_env(db: &str, topics: &Topics, smtp_port: u16, group: &str) -> Vec<(String, String)> {
    [
        ("MAILPIPE__STORE__URL", crate::service_url(db).as_str()),
        ("MAILPIPE__STORE__OWNER_URL", db),
        ("MAILPIPE__QUEUE__KIND", "kafka"),
        ("MAILPIPE__QUEUE__KAFKA__BROKERS", &kafka_brokers()),
        ("MAILPIPE__QUEUE__KAFKA__GROUP_ID", group),
        ("MAILPIPE__QUEUE__KAFKA__SEND_TOPIC", &topics.send),
        ("MAILPIPE__QUEUE__KAFKA__EVENTS_TOPIC", &topics.events),
        ("MAILPIPE__QUEUE__KAFKA__DLQ_TOPIC", &topics.dlq),
        ("MAILPIPE__SMTP__KIND", "smtp"),
        ("MAILPIPE__SMTP__PORT", &smtp_port.to_string()),
        // Published in this repository: accepted only because we say so.
        ("MAILPIPE__TOKENS__ALLOW_PUBLISHED_KEYS", "true"),
        ("MAILPIPE__TOKENS__KEYS__1", TEST_TOKEN_KEY),
        ("MAILPIPE__TOKENS__RECIPIENT_KEY", TEST_RECIPIENT_KEY),
        ("MAILPIPE__DOMAINS__KEYS__1", TEST_KEK),
        ("MAILPIPE__DOMAINS__REFRESH_MS", "200"),
        // Providers by MX through the test's DNS server, which refuses the
        // names it does not serve at once: no test waits on a resolver.
        ("MAILPIPE__PROVIDERS__NAMESERVERS", &format!("[\"{}\"]", crate::dns::dns_server())),
        ("MAILPIPE__METRICS__LISTEN", "127.0.0.1:0"),
        ("MAILPIPE__TRACKER__METRICS_LISTEN", "127.0.0.1:0"),
        ("MAILPIPE__WORKER__GRACE_PERIOD_SECS", "20"),
        // Workers run in the test process too, whose executable is not mailpipe.
        ("MAILPIPE__RENDER__SANDBOX_EXE", &crate::mailpipe_binary().display().to_string()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `name` (at start, [`TEST_SENDER_DOMAIN`]), a platform domain the
/// operator attests, for `tenants`: what lets their jobs be sent as it and
/// signed.
pub(crate) async fn register_sender_domain(cfg: &Config, store: &Store, tenants: &[TenantId], name: &str) {
    use mailpipe_domains::{KeySource, onboard};
    let sealer = app::sealer(cfg).expect("test key-encryption key");
    let domain = mailpipe_core::Domain::parse(name).expect("test sender domain");
    let source = KeySource::Generate(mailpipe_core::DkimAlgorithm::Ed25519Sha256);
    onboard::add(
        store,
        &sealer,
        &cfg.domains,
        &domain,
        &mailpipe_store::Owner::Platform,
        tenants,
        true,
        source,
    )
    .await
    .expect("register a test sender domain");
}

/// The tracker on loopback `port`, spooling under `dir`.
fn tracker_vars(port: u16, dir: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("MAILPIPE__TRACKER__LISTEN".into(), format!("127.0.0.1:{port}")),
        ("MAILPIPE__TRACKER__PUBLIC_URL".into(), format!("http://127.0.0.1:{port}")),
        ("MAILPIPE__TRACKER__SPOOL_DIR".into(), dir.join("spool").display().to_string()),
    ]
}
