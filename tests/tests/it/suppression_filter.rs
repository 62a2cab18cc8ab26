//! No suppression is missed by the workers' in-memory filter. It used to
//! follow the table by `created_at` with a 10 s overlap, so a row stamped an
//! hour back, or written by a transaction that stayed open past the
//! overlap, was never read, and the person was mailed. It now follows a
//! cursor PostgreSQL assigns in commit order.

use std::time::Duration;

use mailpipe_core::Scope;
use mailpipe_tests::*;

/// A platform-wide marketing unsubscribe of `address`, stamped `created_at`.
async fn insert(conn: &mut sqlx::PgConnection, address: &str, created_at: i64) {
    let hash = test_keys().hasher.hash(address).to_hex();
    sqlx::query(
        "INSERT INTO suppressions (scope_tenant, recipient_hash, reason, applies_to, source_tenant, created_at)
         VALUES ($1, $2, 'unsubscribe', 'marketing', 'acme', $3)",
    )
    .bind(Scope::Platform.key())
    .bind(hash)
    .bind(created_at)
    .execute(conn)
    .await
    .unwrap();
}

fn now_ms() -> i64 {
    mailpipe_core::now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressions_stamped_an_hour_back_or_committed_late_stop_sends_within_seconds() {
    let env = TestEnv::setup().start().await;
    let worker = env.start_worker();
    // The worker is up and its filter loaded: a first job goes out.
    env.enqueue(&campaign_jobs(0..1, "acme", "warm", &["a.example"])).await;
    eventually("the first job sent", Duration::from_secs(30), || async {
        env.ledger("acme", "warm").await.get("sent") == Some(&1)
    })
    .await;

    let mut conn = env.pg().await;
    insert(&mut conn, "fresh0@x.example", now_ms()).await;
    // (A poll reads it: a filter that followed created_at would now look
    // back from here.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Stamped by a host whose clock is an hour behind.
    insert(&mut conn, "user1@a.example", now_ms() - 3_600_000).await;

    // Written at once, committed 20 s later (a long import, say), while
    // other suppressions keep arriving.
    let mut late = env.pg().await;
    sqlx::query("BEGIN").execute(&mut late).await.unwrap();
    insert(&mut late, "user2@a.example", now_ms()).await;
    for i in 1..=10 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        insert(&mut conn, &format!("fresh{i}@x.example"), now_ms()).await;
    }
    sqlx::query("COMMIT").execute(&mut late).await.unwrap();

    // Within seconds of the commit: two polls of the filter.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    env.enqueue(&campaign_jobs(1..4, "acme", "after", &["a.example"])).await;
    eventually("the three jobs finished", Duration::from_secs(30), || async {
        let l = env.ledger("acme", "after").await;
        l.get("sent").unwrap_or(&0) + l.get("suppressed").unwrap_or(&0) == 3
    })
    .await;
    worker.stop().await;

    let status: Vec<(String, String)> =
        sqlx::query_as("SELECT job_id, status FROM send_ledger WHERE campaign_id = 'after' ORDER BY job_id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let status: Vec<(&str, &str)> = status.iter().map(|(j, s)| (j.as_str(), s.as_str())).collect();
    assert_eq!(
        status,
        [("job-00001", "suppressed"), ("job-00002", "suppressed"), ("job-00003", "sent")],
        "the back-dated and the late suppression both stop their sends; others go out"
    );
}
