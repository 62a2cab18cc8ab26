//! The reputation circuit breaker: complaints over 0.3% of a tenant's
//! delivered mail pause its marketing stream, while its transactional mail
//! and another tenant's marketing keep going; after `mailpipe tenant
//! resume`, the held jobs go out exactly once.

use std::time::Duration;

use mailpipe_core::{CampaignId, Event, EventType, JobId, TenantId};
use mailpipe_tests::*;

/// `n` delivered messages of `tenant`, and `complaints` complaints, as the
/// events table records them.
async fn history(env: &TestEnv, tenant: &str, n: usize, complaints: usize) {
    let (t, c) = (TenantId::parse(tenant).unwrap(), CampaignId::parse("last-week").unwrap());
    let mut events = Vec::new();
    for i in 0..n {
        let j = JobId::parse(format!("old-{i}")).unwrap();
        events.push(Event::for_job(EventType::Sent, &t, &c, &j, ""));
        if i < complaints {
            events.push(Event::for_job(EventType::Complaint, &t, &c, &j, ""));
        }
    }
    env.store.insert_events(&events).await.unwrap();
}

fn transactional(i: usize, tenant: &str) -> (String, Vec<u8>) {
    let mut j = job(i, tenant, "receipts", "a.example");
    j["category"] = "transactional".into();
    keyed(&j)
}

async fn events_of(env: &TestEnv, kind: &str, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE type = $1 AND tenant_id = $2")
        .bind(kind)
        .bind(tenant)
        .fetch_one(&mut env.pg().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complaints_over_the_limit_pause_only_that_tenants_marketing_until_resumed() {
    let env = TestEnv::setup()
        .tenants(&["acme", "globex"])
        .vars(&[
            ("MAILPIPE__BREAKER__EVALUATE_EVERY_SECS", "1"),
            ("MAILPIPE__BREAKER__MIN_DELIVERED", "200"),
            ("MAILPIPE__BREAKER__RECHECK_SECS", "1"),
        ])
        .start()
        .await;
    // acme: 2 complaints in 400 delivered (0.5%); globex: none in 400.
    history(&env, "acme", 400, 2).await;
    history(&env, "globex", 400, 0).await;
    let worker = env.start_worker();
    let acme = TenantId::parse("acme").unwrap();
    eventually("acme's stream paused", Duration::from_secs(30), || async {
        env.store.paused_streams().await.unwrap() == [acme.clone()]
    })
    .await;
    let streams = env.store.streams(None).await.unwrap();
    assert!(streams[0].reason.as_deref().unwrap().contains("complaint rate 0.50% over 24h"), "{streams:?}");

    let mut jobs = campaign_jobs(0..3, "acme", "spring", &["a.example"]);
    jobs.extend([transactional(10, "acme"), transactional(11, "acme")]);
    jobs.extend(campaign_jobs(20..22, "globex", "spring", &["a.example"]));
    env.enqueue(&jobs).await;
    eventually("acme's receipts and globex's marketing sent", Duration::from_secs(60), || async {
        env.ledger("acme", "receipts").await.get("sent") == Some(&2)
            && env.ledger("globex", "spring").await.get("sent") == Some(&2)
    })
    .await;
    // Held, several rechecks later: nothing of acme's marketing went out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.ledger("acme", "spring").await.get("sent"), None, "paused marketing is held");
    assert_eq!(env.sink().messages().len(), 4);

    // The operator resumes it: each held job goes out, once.
    let out = env.cli(&["tenant", "resume", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("acme's marketing sent after the resume", Duration::from_secs(60), || async {
        env.ledger("acme", "spring").await.get("sent") == Some(&3)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.sink().messages().len(), 7, "every job exactly once");
    assert!(env.store.paused_streams().await.unwrap().is_empty(), "the old complaints do not pause it again");
    assert_eq!(events_of(&env, "stream_paused", "acme").await, 1, "one pause, however many workers looked");
    assert_eq!(events_of(&env, "stream_resumed", "acme").await, 1);
    assert_eq!(events_of(&env, "stream_paused", "globex").await, 0);
    worker.stop().await;
}
