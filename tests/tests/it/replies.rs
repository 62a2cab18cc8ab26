//! The reply classifier end to end: smtp-sink injects 5xx, 4xx and
//! disconnects, and the worker records what each means.

use std::collections::BTreeMap;
use std::time::Duration;

use mailpipe_tests::*;

const N: usize = 6;

/// `N` jobs to a.example, sent by a worker to a sink with `flags`.
async fn run(flags: &[&str], settings: &[(&str, &str)]) -> (TestEnv, Running) {
    TestEnv::setup()
        .sink(flags)
        .vars(settings)
        .sending(&campaign_jobs(0..N, "acme", "c", &["a.example"]))
        .await
}

async fn wait_for(env: &TestEnv, status: &str) {
    env.wait_ledger("acme", "c", status, N, Duration::from_secs(60)).await;
}

const FAST_RETRIES: [(&str, &str); 2] =
    [("MAILPIPE__WORKER__MAX_ATTEMPTS", "2"), ("MAILPIPE__WORKER__RETRY_BASE_MS", "50")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_bounce_and_are_suppressed_for_every_category() {
    let (env, worker) =
        run(&["-f", "RCPT", "-B", "550 5.1.1 Recipient address rejected: User unknown"], &[]).await;
    wait_for(&env, "bounced").await;
    assert_eq!(env.events("acme", "c").await.get("bounced"), Some(&(N as i64)));
    let mut conn = env.pg().await;
    let supp: Vec<(String, String, String)> =
        sqlx::query_as("SELECT scope_tenant, reason, applies_to FROM suppressions")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(supp.len(), N);
    assert!(
        supp.iter()
            .all(|(scope, reason, applies)| scope.is_empty() && reason == "hard_bounce" && applies == "all")
    );
    assert!(env.sink().message_ids().is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_rejections_of_content_bounce_without_suppressing() {
    let (env, worker) = run(&["-f", ".", "-B", "554 5.7.1 Message rejected as spam"], &[]).await;
    wait_for(&env, "bounced").await;
    let mut conn = env.pg().await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM suppressions").fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 0, "a content rejection says nothing about the address");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failures_are_retried_then_fail() {
    let (env, worker) = run(&["-r", "RCPT"], &FAST_RETRIES).await;
    wait_for(&env, "failed").await;
    let ev = env.events("acme", "c").await;
    assert_eq!((ev.get("deferred"), ev.get("failed")), (Some(&(N as i64)), Some(&(N as i64))), "{ev:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_before_the_content_is_a_deferral_not_a_doubt() {
    let (env, worker) = run(&["-q", "DATA"], &FAST_RETRIES).await;
    wait_for(&env, "failed").await;
    let mut conn = env.pg().await;
    let doubt: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE payload LIKE '%in_doubt%'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(doubt, 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_after_the_final_dot_is_in_doubt_and_not_resent() {
    let (env, worker) = run(&["-q", "."], &[]).await;
    wait_for(&env, "sent").await;
    let mut conn = env.pg().await;
    let doubt: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE type = 'sent' AND payload LIKE '%\"reason\":\"in_doubt\"%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(doubt, N as i64, "every job in doubt, recorded as sent under the default policy");
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT attempts FROM send_ledger").fetch_all(&mut conn).await.unwrap();
    assert!(attempts.iter().all(|&a| a == 1), "never sent twice: {attempts:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_in_the_middle_of_data_is_in_doubt_and_under_the_retry_policy_sent_once() {
    const JOBS: usize = 40;
    // The test relay cuts the connection half way through the content of
    // the first message to ~40% of recipients: no reply, nothing kept.
    let relay = TestRelay::start(&["--drop-mid-data-percent", "40"]);
    let (env, worker) = TestEnv::setup()
        .relay(relay.port)
        .vars(&[
            ("MAILPIPE__WORKER__IN_DOUBT", "retry"),
            ("MAILPIPE__WORKER__RETRY_BASE_MS", "200"),
            ("MAILPIPE__WORKER__MAX_ATTEMPTS", "5"),
            ("MAILPIPE__WORKER__RETRY_POLL_MS", "100"),
        ])
        .sending(&campaign_jobs(0..JOBS, "acme", "c", &["a.example"]))
        .await;
    eventually("every job sent", Duration::from_secs(60), || async {
        env.ledger("acme", "c").await.get("sent") == Some(&(JOBS as i64))
    })
    .await;

    let dropped = relay.dropped();
    assert!(!dropped.is_empty() && dropped.len() < JOBS, "{} of {JOBS} cut off mid-content", dropped.len());
    // Every recipient has exactly one message on the relay: the cut-off
    // attempts were never accepted, and each was tried again once.
    let mut per_rcpt: BTreeMap<String, usize> = BTreeMap::new();
    for m in relay.received() {
        for rcpt in m.session["rcpt"].as_array().unwrap() {
            *per_rcpt.entry(rcpt.as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(per_rcpt.len(), JOBS, "every recipient reached");
    assert!(per_rcpt.values().all(|&n| n == 1), "a recipient got two messages: {per_rcpt:?}");
    // The cut-off attempts were counted in doubt and retried, not lost.
    let ev = env.events("acme", "c").await;
    assert_eq!(ev.get("deferred"), Some(&(dropped.len() as i64)), "{ev:?}");
    assert_eq!(ev.get("sent"), Some(&(JOBS as i64)), "{ev:?}");
    let mut conn = env.pg().await;
    let twice: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM send_ledger WHERE attempts = 2")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(twice, dropped.len() as i64, "exactly the cut-off jobs took a second attempt");
    worker.stop().await;
}
