//! The harness for mailpipe's integration tests: real PostgreSQL, real
//! Apache Kafka and Postfix's smtp-sink, as started by `scripts/services.sh up`.
//!
//! Each test gets its own database, its own topics and consumer group, and
//! its own smtp-sink process on a free port, so tests run in parallel and
//! leave nothing behind that the next one could trip on. A missing service
//! fails the test with the command that starts it; nothing is skipped.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailpipe::config::Config;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use sqlx::Connection;

pub const START_HINT: &str =
    "start the test services with `scripts/services.sh up` (the README's test command does this)";

pub fn database_url() -> String {
    std::env::var("MAILPIPE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://mailpipe:mailpipe@127.0.0.1:55432/mailpipe".into())
}

pub fn kafka_brokers() -> String {
    std::env::var("MAILPIPE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:59092".into())
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{:08x}", std::process::id(), rand::random::<u32>())
}

/// Logs of the services a test runs in-process, through the test harness's
/// capture: shown with a failing test's output, hidden otherwise.
/// `MAILPIPE_TEST_LOG` (a RUST_LOG filter) shows more.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("MAILPIPE_TEST_LOG").unwrap_or_else(|_| "warn,mailpipe_queue=info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

/// A fresh, empty PostgreSQL database; returns its URL.
pub async fn fresh_database() -> String {
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

/// For a name made by [`unique`] (`<prefix>_<pid>_<8 hex digits>`) whose
/// process has ended, the part before the pid. `None` for other names, and
/// for a process still running.
fn finished_run(name: &str) -> Option<&str> {
    let (head, tag) = name.rsplit_once('_')?;
    let (head, pid) = head.rsplit_once('_')?;
    let pid: u32 = pid.parse().ok()?;
    let ours = tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit());
    (ours && !Path::new(&format!("/proc/{pid}")).exists()).then_some(head)
}

/// The three topics of wire contract v1, with a unique suffix.
pub struct Topics {
    pub send: String,
    pub events: String,
    pub dlq: String,
}

pub async fn fresh_topics(partitions: i32) -> Topics {
    let brokers = kafka_brokers();
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("admin client");
    prune_topics_of_finished_runs(&admin).await;
    let suffix = unique("t");
    let t = Topics {
        send: format!("mailpipe.send.v1.{suffix}"),
        events: format!("mailpipe.events.v1.{suffix}"),
        dlq: format!("mailpipe.send.dlq.v1.{suffix}"),
    };
    let new: Vec<NewTopic<'_>> = [&t.send, &t.events, &t.dlq]
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let res = tokio::time::timeout(Duration::from_secs(20), admin.create_topics(&new, &opts))
        .await
        .unwrap_or_else(|_| panic!("Kafka at {brokers} did not answer within 20s\n{START_HINT}"))
        .unwrap_or_else(|e| panic!("Kafka at {brokers} refused to create topics: {e}\n{START_HINT}"));
    for r in res {
        if let Err((name, e)) = r {
            panic!("creating topic {name}: {e}\n{START_HINT}");
        }
    }
    // A broker answers metadata for a topic it has just created with "no
    // leader" for a moment; a service started on it then finds no topic and
    // refuses to start. Hand the topics over only once every partition has
    // a leader.
    let names = [t.send.clone(), t.events.clone(), t.dlq.clone()];
    let ready = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().ok()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let led = |name: &String| {
                c.fetch_metadata(Some(name), Duration::from_secs(5)).is_ok_and(|md| {
                    md.topics().iter().any(|m| {
                        m.error().is_none()
                            && m.partitions().len() == partitions as usize
                            && m.partitions().iter().all(|p| p.error().is_none() && p.leader() >= 0)
                    })
                })
            };
            if names.iter().all(led) {
                return Some(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    });
    assert!(
        matches!(ready.await, Ok(Some(()))),
        "Kafka at {brokers} created the topics but gave them no leader within 20s\n{START_HINT}"
    );
    t
}

/// Deletes the topics that earlier test processes made, once per process.
/// Each test's topics are named after its process (`unique`); those of a
/// process that is gone can go. Without this a developer's broker collects
/// thousands of partitions over many runs, then starts slowly and times out
/// creating topics. Best effort: nothing here fails a test.
async fn prune_topics_of_finished_runs(admin: &AdminClient<DefaultClientContext>) {
    static PRUNED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    PRUNED
        .get_or_init(|| async {
            let listed = tokio::task::spawn_blocking(|| {
                let c: BaseConsumer =
                    ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().ok()?;
                let md = c.fetch_metadata(None, Duration::from_secs(10)).ok()?;
                Some(md.topics().iter().map(|t| t.name().to_owned()).collect::<Vec<_>>())
            });
            let Ok(Some(names)) = listed.await else { return };
            let stale: Vec<String> = names
                .into_iter()
                .filter(|name| {
                    finished_run(name).is_some_and(|h| h.starts_with("mailpipe.") && h.ends_with(".t"))
                })
                .collect();
            // Wait for the controller to finish each batch: a broker busy
            // deleting hundreds of topics is slow to show a new one, and the
            // test's first produce would race that.
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            for chunk in stale.chunks(200) {
                let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
                let _ =
                    tokio::time::timeout(Duration::from_secs(40), admin.delete_topics(&names, &opts)).await;
            }
        })
        .await;
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A private smtp-sink that dumps every message to a directory.
pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl SmtpSink {
    /// `extra` are smtp-sink flags, e.g. `["-r", "RCPT"]` for 4xx to RCPT.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// Same, on a given port: to replace a sink by one that behaves
    /// differently, as a relay that recovers from an outage would.
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let bin = Path::new("/usr/sbin/smtp-sink");
        assert!(
            bin.exists(),
            "/usr/sbin/smtp-sink is missing: install Debian's postfix package\n{START_HINT}"
        );
        let dir = std::env::temp_dir().join(unique("sink"));
        std::fs::create_dir_all(&dir).expect("sink dir");
        // smtp-sink drops privileges to `nobody` when run as root.
        let _ = Command::new("chmod").arg("777").arg(&dir).status();
        let mut cmd = Command::new(bin);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .args(extra)
            .arg("-d")
            .arg(format!("{}/", dir.display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn smtp-sink");
        wait_for_port(port, Duration::from_secs(5), "smtp-sink");
        Self { port, dir, child }
    }

    /// The messages received so far, as text.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path()) {
                    out.push(s);
                }
            }
        }
        out
    }

    /// Message-ID header values of the messages received.
    pub fn message_ids(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter_map(|m| {
                m.lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
                    .map(|l| l[11..].trim().trim_matches(['<', '>']).to_owned())
            })
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

pub const TEST_TOKEN_KEY: &str = "dGVzdC10b2tlbi1rZXktdGhhdC1pcy1hdC1sZWFzdC0zMi1ieXRlcw==";
pub const TEST_RECIPIENT_KEY: &str = "dGVzdC1yZWNpcGllbnQta2V5LXRoYXQtaXMtMzItYnl0ZXMtbG9uZw==";

/// The `MAILPIPE__...` environment that points mailpipe at the real
/// services, this test's topics and sink, and consumer group `group`.
pub fn service_env(db: &str, topics: &Topics, sink: &SmtpSink, group: &str) -> Vec<(String, String)> {
    relay_env(db, topics, sink.port, group)
}

/// Same, for a relay on `smtp_port` of loopback.
pub fn relay_env(db: &str, topics: &Topics, smtp_port: u16, group: &str) -> Vec<(String, String)> {
    [
        ("MAILPIPE__STORE__URL", db),
        ("MAILPIPE__QUEUE__KIND", "kafka"),
        ("MAILPIPE__QUEUE__KAFKA__BROKERS", &kafka_brokers()),
        ("MAILPIPE__QUEUE__KAFKA__GROUP_ID", group),
        ("MAILPIPE__QUEUE__KAFKA__SEND_TOPIC", &topics.send),
        ("MAILPIPE__QUEUE__KAFKA__EVENTS_TOPIC", &topics.events),
        ("MAILPIPE__QUEUE__KAFKA__DLQ_TOPIC", &topics.dlq),
        ("MAILPIPE__SMTP__KIND", "smtp"),
        ("MAILPIPE__SMTP__PORT", &smtp_port.to_string()),
        ("MAILPIPE__TOKENS__KEYS__1", TEST_TOKEN_KEY),
        ("MAILPIPE__TOKENS__RECIPIENT_KEY", TEST_RECIPIENT_KEY),
        ("MAILPIPE__METRICS__LISTEN", "127.0.0.1:0"),
        ("MAILPIPE__WORKER__GRACE_PERIOD_SECS", "20"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A configuration for the real services, built the way an operator would:
/// the defaults plus `MAILPIPE__...` overrides, with a fresh consumer group.
pub fn config(db: &str, topics: &Topics, sink: &SmtpSink, extra: &[(&str, &str)]) -> Config {
    let mut env = service_env(db, topics, sink, &unique("group"));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::load(None, env).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// A send job for tests, as JSON.
pub fn job(i: usize, tenant: &str, campaign: &str, domain: &str) -> serde_json::Value {
    serde_json::json!({
        "job_id": format!("job-{i:05}"),
        "tenant_id": tenant,
        "campaign_id": campaign,
        "category": "marketing",
        "from": {"email": "news@sender.example", "name": "Sender"},
        "to": {"email": format!("user{i}@{domain}"), "name": format!("User {i}")},
        "subject": "Hello {{ name }}",
        "html": "<p>Hi {{ name }}</p><a href=\"https://shop.example/item/{{ n }}\">Item</a>",
        "vars": {"name": format!("User {i}"), "n": i}
    })
}

/// A record read back from a topic.
#[derive(Debug)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning until `want` records arrived or `timeout`.
pub fn read_topic(topic: &str, want: usize, timeout: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for hd in h.iter() {
                    headers.insert(
                        hd.key.to_owned(),
                        String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push(Record {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    out
}

/// The distinct `event_id`s on `topic`, read until `want` of them arrived or
/// `timeout`: events are at least once, so a record may repeat.
pub fn read_event_ids(topic: &str, want: usize, timeout: Duration) -> std::collections::HashSet<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut ids = std::collections::HashSet::new();
    let deadline = Instant::now() + timeout;
    while ids.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200))
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or_default())
        {
            ids.insert(v["event_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    ids
}

/// The group's committed positions, by partition.
pub fn committed(group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", group)
        .create()
        .expect("offset reader");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Waits until `group` has committed `total` offsets of `topic` in all (a
/// group that read every record of a topic holding `total`). On timeout it
/// fails with what was committed against each partition's end.
pub async fn wait_committed(
    what: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    total: i64,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let at = committed(group, topic, partitions);
        if at.values().sum::<i64>() >= total {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what} ({total} offsets committed); \
             committed {at:?}, partition ends {:?}",
            end_offsets(topic, partitions)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each partition's end (high watermark), for messages about lag.
pub fn end_offsets(topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().expect("watermark reader");
    (0..partitions)
        .map(|p| {
            let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
            (p, high)
        })
        .collect()
}

/// The `mailpipe` binary that `cargo test --workspace` builds beside the
/// test executables.
pub fn mailpipe_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join("mailpipe");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace tests (cargo test --workspace) or `cargo build -p mailpipe`",
        bin.display()
    );
    bin
}

/// A `mailpipe worker` or `mailpipe tracker` process, killed when dropped so
/// that a failing test leaves none behind.
pub struct ServiceProcess(Child);

impl ServiceProcess {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// The process's peak resident set so far (VmHWM), in MB.
    pub fn peak_rss_mb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    }

    /// SIGKILL: no drain, no commit, no cleanup.
    pub fn kill_9(&mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("wait");
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.0.try_wait().expect("wait") {
            panic!("the process exited {what}: {status}");
        }
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit.
    pub async fn terminate(&mut self, grace: Duration) -> std::process::ExitStatus {
        let term = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status().expect("kill");
        assert!(term.success(), "kill -TERM failed");
        let deadline = Instant::now() + grace;
        loop {
            if let Some(s) = self.0.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "the process did not stop within {grace:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `mailpipe worker` as its own process with `env` added.
pub fn spawn_worker(env: &[(String, String)]) -> ServiceProcess {
    spawn_service("worker", env)
}

/// Starts `mailpipe tracker` as its own process with `env` added.
pub fn spawn_tracker(env: &[(String, String)]) -> ServiceProcess {
    spawn_service("tracker", env)
}

fn spawn_service(command: &str, env: &[(String, String)]) -> ServiceProcess {
    let mut c = Command::new(mailpipe_binary());
    // MAILPIPE_TEST_SERVICE_LOG (a RUST_LOG filter) shows more of the
    // process when a test that spawns it needs looking into.
    let log = std::env::var("MAILPIPE_TEST_SERVICE_LOG").unwrap_or_else(|_| "warn".into());
    c.arg(command).env("RUST_LOG", log).stdout(Stdio::null()).stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    ServiceProcess(c.spawn().unwrap_or_else(|e| panic!("spawn mailpipe {command}: {e}")))
}

/// Jobs in the ledger with their final outcome.
pub async fn finished_jobs(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM send_ledger WHERE status IN ('sent','bounced','suppressed','failed','dead_lettered')",
    )
    .fetch_one(conn)
    .await
    .expect("count finished jobs")
}

/// `scripts/services.sh restart-<what>` (`kafka` or `postgres`). Only for
/// tests alone in their binary: every test binary shares these services.
pub fn restart_service(what: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
    let ok =
        Command::new("bash").arg(script).arg(format!("restart-{what}")).status().expect("bash").success();
    assert!(ok, "scripts/services.sh restart-{what} failed");
}

/// A size for a chaos case: `MAILPIPE_CHAOS_<NAME>` if set (the long runs
/// of `scripts/chaos.sh`), else the short default of the test command.
pub fn chaos_size(name: &str, default: usize) -> usize {
    std::env::var(format!("MAILPIPE_CHAOS_{name}")).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Polls `f` every 100 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP/1.1 answer, read to the end of a `Connection: close` response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one raw HTTP/1.1 request to `addr` (`host:port`) and reads the whole
/// response. Raw on purpose: tracker tests also send what no client library
/// would (oversized heads, garbage, unknown methods).
pub async fn http(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_http(addr, method, target, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {target} on {addr}: {e}"))
}

/// Same, but a connection refused, reset or cut short is an error, not a
/// panic: for tests that kill the server while requests are in flight.
pub async fn try_http(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    use std::io::{Error, ErrorKind};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| Error::new(ErrorKind::TimedOut, "no response within 10 s"))??;
    if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(Error::new(ErrorKind::UnexpectedEof, "the response was cut short"));
    }
    Ok(parse_http_response(&raw))
}

fn parse_http_response(raw: &[u8]) -> HttpResponse {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked =
        headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let len = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap_or(0);
            if len == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + len]);
            rest = &rest[nl + 2 + len + 2..];
        }
        body = out;
    }
    HttpResponse { status, headers, body }
}

/// The URLs of a message's `List-Unsubscribe` header (unfolded).
pub fn list_unsubscribe(message: &str) -> Vec<String> {
    let unfolded = message.replace("\r\n ", " ").replace("\r\n\t", " ").replace("\n ", " ");
    unfolded
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("list-unsubscribe:"))
        .map(|l| l[17..].split(',').map(|u| u.trim().trim_matches(['<', '>']).to_owned()).collect())
        .unwrap_or_default()
}

/// Blocks until something listens on loopback `port`, or fails naming `what`.
fn wait_for_port(port: u16, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Points the tracker of a test configuration at loopback `port`, with its
/// own spool directory.
pub fn with_tracker(env: &mut Vec<(String, String)>, port: u16) {
    for (k, v) in [
        ("MAILPIPE__TRACKER__LISTEN", format!("127.0.0.1:{port}")),
        ("MAILPIPE__TRACKER__PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("MAILPIPE__TRACKER__SPOOL_DIR", std::env::temp_dir().join(unique("spool")).display().to_string()),
    ] {
        env.push((k.into(), v));
    }
}

/// Where a tracker test starts: a fresh database and topics, and the
/// service environment with the tracker on a free loopback port and its own
/// spool. Returns the database URL, the topics, the port and the environment.
pub async fn tracker_env() -> (String, Topics, u16, Vec<(String, String)>) {
    let db = fresh_database().await;
    let topics = fresh_topics(1).await;
    let port = loopback_port();
    // The tracker sends no mail, so no relay listens on this port.
    let mut env = relay_env(&db, &topics, 1, &unique("group"));
    with_tracker(&mut env, port);
    (db, topics, port, env)
}

/// A free loopback port, for services a test starts itself.
pub fn loopback_port() -> u16 {
    free_port()
}

/// How many consumers are members of `group` right now.
pub fn group_members(group: &str) -> usize {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().expect("admin consumer");
    let list = consumer.fetch_group_list(Some(group), Duration::from_secs(10)).expect("group list");
    list.groups().iter().find(|g| g.name() == group).map_or(0, |g| g.members().len())
}

/// The test relay in `tests/support/smtp_relay.py`, for what smtp-sink cannot
/// do: STARTTLS, AUTH and SMTPUTF8.
pub struct TestRelay {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

/// A received message and its session, as the test relay recorded them.
#[derive(Debug)]
pub struct Relayed {
    pub message: String,
    pub session: serde_json::Value,
}

impl TestRelay {
    pub fn start(args: &[&str]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/smtp_relay.py");
        let dir = std::env::temp_dir().join(unique("relay"));
        std::fs::create_dir_all(&dir).expect("relay dir");
        // The relay binds port 0 and writes the port it got: choosing one
        // here and passing it on raced with other tests' listeners.
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--port", "0", "--dir"])
            .arg(&dir)
            .args(args)
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {}: {e} (install python3)", script.display()));
        let started = std::time::Instant::now();
        let port = loop {
            if let Some(port) =
                std::fs::read_to_string(dir.join("port")).ok().and_then(|p| p.trim().parse().ok())
            {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the test relay exited at start ({status}); see its output above");
            }
            assert!(started.elapsed() < Duration::from_secs(10), "the test relay did not start within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self { port, dir, child }
    }

    pub fn received(&self) -> Vec<Relayed> {
        let mut out = Vec::new();
        for n in 0.. {
            let eml = self.dir.join(format!("{n}.eml"));
            let meta = self.dir.join(format!("{n}.json"));
            let (Ok(message), Ok(meta)) = (std::fs::read_to_string(&eml), std::fs::read_to_string(&meta))
            else {
                break;
            };
            out.push(Relayed { message, session: serde_json::from_str(&meta).expect("session json") });
        }
        out
    }
}

impl TestRelay {
    /// The addresses the relay deferred once (`--defer-percent`).
    pub fn deferred(&self) -> Vec<String> {
        self.log("deferred.log")
    }

    /// The addresses whose first message the relay cut off mid-content
    /// (`--drop-mid-data-percent`).
    pub fn dropped(&self) -> Vec<String> {
        self.log("dropped.log")
    }

    fn log(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(name))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test CA and a certificate it issued for 127.0.0.1, made with openssl:
/// (ca_cert, cert, key).
pub fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let ext = p("leaf.ext");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
        .expect("ext");
    let steps: [Vec<String>; 3] = [
        vec!["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=mailpipe test CA"]
            .into_iter()
            .map(String::from)
            .chain([
                "-keyout".into(),
                p("ca.key").display().to_string(),
                "-out".into(),
                p("ca.pem").display().to_string(),
            ])
            .collect(),
        vec!["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"]
            .into_iter()
            .map(String::from)
            .chain([
                "-keyout".into(),
                p("key.pem").display().to_string(),
                "-out".into(),
                p("leaf.csr").display().to_string(),
            ])
            .collect(),
        vec!["x509", "-req", "-days", "1", "-CAcreateserial"]
            .into_iter()
            .map(String::from)
            .chain(
                [
                    ("-in", "leaf.csr"),
                    ("-CA", "ca.pem"),
                    ("-CAkey", "ca.key"),
                    ("-out", "cert.pem"),
                    ("-extfile", "leaf.ext"),
                ]
                .into_iter()
                .flat_map(|(f, n)| [f.to_owned(), p(n).display().to_string()]),
            )
            .collect(),
    ];
    for args in steps {
        let ok = Command::new("openssl")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "openssl {args:?} failed (apt-get install openssl)");
    }
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_made_by_unique_for_an_ended_process_are_finished_runs() {
        // No process has pid 0, so /proc/0 does not exist.
        assert_eq!(finished_run("mailpipe.send.v1.t_0_0a1b2c3d"), Some("mailpipe.send.v1.t"));
        assert_eq!(finished_run("mailpipe_test_0_ffffffff"), Some("mailpipe_test"));
        let running = std::process::id();
        assert_eq!(finished_run(&format!("mailpipe_test_{running}_0a1b2c3d")), None, "this process runs");
        for other in
            ["mailpipe.send.v1", "mailpipe_test_0_xyz", "mailpipe_test_x_0a1b2c3d", "bench.send.plain.17959"]
        {
            assert_eq!(finished_run(other), None, "{other}");
        }
    }
}
