//! The harness for mailpipe's integration tests: real PostgreSQL, real
//! Apache Kafka and Postfix's smtp-sink, as started by `scripts/services.sh up`.
//!
//! Each test gets its own database, its own topics and consumer group, and
//! its own smtp-sink process on a free port, so tests run in parallel and
//! leave nothing behind that the next one could trip on. A missing service
//! fails the test with the command that starts it; nothing is skipped.
//!
//! * [`env`]: [`TestEnv`], where a test starts: all of the above, set up.
//! * [`postgres`], [`kafka`], [`smtp`]: the services one by one.
//! * [`process`]: mailpipe as its own process; restarting a service.
//! * [`single`]: [`SingleNode`], `mailpipe serve` on a SQLite file of its own.
//! * [`dns`]: Knot DNS, a zone per test, and the independent DKIM checks.
//! * [`http`]: raw HTTP/1.1, for what no client library would send.
//! * [`services`]: who may use the services while one restarts.

pub mod dns;
pub mod env;
pub mod exim;
pub mod http;
pub mod kafka;
pub mod openapi;
pub mod postfix;
pub mod postgres;
pub mod process;
pub mod services;
pub mod single;
pub mod smtp;
pub mod tls;

use std::path::Path;
use std::time::{Duration, Instant};

pub use env::{Running, Setup, TestEnv};
pub use exim::EximRelay;
pub use http::{
    HttpResponse, WebhookReceiver, WebhookRequest, api_get, assert_served_only_after, http, list_unsubscribe,
    serve_api, status_line, try_http,
};
pub use kafka::{
    Record, Topics, committed, end_offsets, fresh_topics, group_members, kafka_brokers, read_event_ids,
    read_topic, wait_committed,
};
pub use postfix::PostfixRelay;
pub use postgres::{
    SqliteStore, TestDatabase, TestStore, counter_reaches, database_url, fresh_database, fresh_sqlite_store,
    fresh_store, migrate_postgres_before, platform_connection, service_url,
};
pub use process::{ServiceProcess, listens, loopback_port, mailpipe_binary, restart_service};
pub use single::SingleNode;
pub use smtp::{Relayed, SmtpSink, TestRelay, test_certificates};

pub const START_HINT: &str =
    "start the test services with `scripts/services.sh up` (the README's test command does this)";

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

/// For a name made by [`unique`] (`<prefix>_<pid>_<8 hex digits>`) whose
/// process has ended, the part before the pid. `None` for other names, and
/// for a process still running.
pub(crate) fn finished_run(name: &str) -> Option<&str> {
    let (head, tag) = name.rsplit_once('_')?;
    let (head, pid) = head.rsplit_once('_')?;
    let pid: u32 = pid.parse().ok()?;
    let ours = tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit());
    (ours && !Path::new(&format!("/proc/{pid}")).exists()).then_some(head)
}

pub const TEST_TOKEN_KEY: &str = "dGVzdC10b2tlbi1rZXktdGhhdC1pcy1hdC1sZWFzdC0zMi1ieXRlcw==";

pub const TEST_RECIPIENT_KEY: &str = "dGVzdC1yZWNpcGllbnQta2V5LXRoYXQtaXMtMzItYnl0ZXMtbG9uZw==";

/// The key-encryption key DKIM keys are sealed under in tests.
pub const TEST_KEK: &str = "dGVzdC1rZXktZW5jcnlwdGlvbi1rZXktb2YtMzItYnl0ZXMh";

/// The platform domain every [`TestEnv`]'s tenants send as (attested, with
/// an Ed25519 key), the From domain of [`job`].
pub const TEST_SENDER_DOMAIN: &str = "sender.example";

/// A second platform domain a test may let its tenants send as
/// ([`TestEnv::add_sender_domain`]), for what differs per sending domain.
pub const TEST_OTHER_SENDER_DOMAIN: &str = "other-sender.example";

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

/// The keys of [`TEST_TOKEN_KEY`] and [`TEST_RECIPIENT_KEY`], as the
/// services of a [`TestEnv`] hold them.
pub fn test_keys() -> mailpipe::app::Keys {
    let vars = [
        ("MAILPIPE__TOKENS__ALLOW_PUBLISHED_KEYS", "true"),
        ("MAILPIPE__TOKENS__KEYS__1", TEST_TOKEN_KEY),
        ("MAILPIPE__TOKENS__RECIPIENT_KEY", TEST_RECIPIENT_KEY),
    ];
    let cfg =
        mailpipe::Config::load(None, vars.map(|(k, v)| (k.to_owned(), v.to_owned()))).expect("test keys");
    mailpipe::app::keys(&cfg).expect("test keys")
}

/// Claims `job` in `store` as a worker with the test keys does: with the
/// keyed hash of its canonical address.
pub async fn claim(store: &mailpipe_store::Store, job: &mailpipe_core::SendJob) -> mailpipe_store::Claim {
    let recipient = test_keys().hasher.hash(&job.to.email.canonical());
    store.claim_job(job, &recipient, None).await.expect("claim")
}

/// A job keyed as `mailpipe enqueue` keys it: by its recipient's domain.
pub fn keyed(job: &serde_json::Value) -> (String, Vec<u8>) {
    let to = job["to"]["email"].as_str().expect("a job with a recipient");
    let domain = to.rsplit_once('@').map_or(to, |(_, d)| d).to_owned();
    (domain, serde_json::to_vec(job).expect("job json"))
}

/// Jobs `range` of `tenant`'s `campaign`, job `i` to `domains[i % len]`, keyed.
pub fn campaign_jobs(
    range: std::ops::Range<usize>,
    tenant: &str,
    campaign: &str,
    domains: &[&str],
) -> Vec<(String, Vec<u8>)> {
    range.map(|i| keyed(&job(i, tenant, campaign, domains[i % domains.len()]))).collect()
}

/// What a crash test checks of the sink against the ledger: every message
/// on the sink is one the ledger knows, and every sent message missing from
/// the sink is marked in doubt. Returns how many are missing (in doubt and
/// not delivered). Duplicates are `SmtpSink::message_ids_once`'s to catch.
pub fn missing_only_in_doubt(
    on_sink: &std::collections::HashSet<String>,
    ledger_ids: &std::collections::HashSet<String>,
    in_doubt: &std::collections::HashSet<String>,
) -> usize {
    let missing: Vec<&String> = ledger_ids.iter().filter(|id| !on_sink.contains(*id)).collect();
    assert!(
        missing.iter().all(|id| in_doubt.contains(*id)),
        "{} jobs missing from the sink are not marked in doubt",
        missing.iter().filter(|id| !in_doubt.contains(**id)).count()
    );
    assert!(
        on_sink.iter().all(|id| ledger_ids.contains(id)),
        "the sink has a message the ledger does not know"
    );
    missing.len()
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
