//! The worker paces sends to a rate-limited domain, and other domains are
//! not held up by it.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::sync::Arc;
use std::time::Duration;

use mailpipe::app;
use mailpipe_core::TenantId;
use mailpipe_tests::*;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_limit_paces_that_domain_only() {
    let db = fresh_database().await;
    let topics = fresh_topics(2).await;
    let sink = SmtpSink::start(&[]);
    let dir = std::env::temp_dir().join(unique("throttle"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("throttle.toml");
    // 120/m = one every 500 ms for slow.example; fast.example is unlimited.
    std::fs::write(&file, "[throttle.limits]\n\"slow.example\" = \"120/m\"\n").unwrap();
    let env = service_env(&db, &topics, &sink, &unique("group"));
    let cfg = Arc::new(mailpipe::config::Config::load(Some(&file), env).unwrap());

    let store = app::store(&cfg).await.unwrap();
    store.upsert_tenant(&TenantId::parse("acme").unwrap(), "Acme").await.unwrap();
    let mut jobs = Vec::new();
    for i in 0..7 {
        jobs.push((
            "slow.example".to_owned(),
            serde_json::to_vec(&job(i, "acme", "c", "slow.example")).unwrap(),
        ));
    }
    for i in 100..150 {
        jobs.push((
            "fast.example".to_owned(),
            serde_json::to_vec(&job(i, "acme", "c", "fast.example")).unwrap(),
        ));
    }
    app::enqueue(&cfg, &jobs).await.unwrap();
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let (cfg, stop) = (cfg.clone(), stop.clone());
        async move { app::run_worker(&cfg, stop, None).await }
    });
    eventually("all 57 sent", Duration::from_secs(60), || async {
        store.ledger_counts("acme", "c").await.unwrap().get("sent") == Some(&57)
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();

    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let span = |domain: &'static str| {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT MIN(updated_at), MAX(updated_at) FROM send_ledger WHERE recipient_domain = $1",
        )
        .bind(domain)
    };
    let (a, b) = span("slow.example").fetch_one(&mut conn).await.unwrap();
    // 7 sends at one per 500 ms take at least 3 s from first to last.
    assert!(b - a >= 2_900, "slow.example went out over {} ms", b - a);
    let (c, d) = span("fast.example").fetch_one(&mut conn).await.unwrap();
    assert!(d - c < 2_900, "fast.example was held up: {} ms for 50 messages", d - c);
    let _ = std::fs::remove_dir_all(dir);
}
