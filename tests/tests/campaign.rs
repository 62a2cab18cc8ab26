//! Whole campaigns: every job accounted for exactly once, and a domain's
//! rate limit holding across a group of workers.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use mailpipe::app;
use mailpipe::config::Config;
use mailpipe_core::TenantId;
use mailpipe_tests::*;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_over_three_domains_are_each_accounted_for_exactly_once() {
    const N: usize = 10_000;
    let db = fresh_database().await;
    let topics = fresh_topics(4).await;
    let sink = SmtpSink::start(&[]);
    let mut env = service_env(&db, &topics, &sink, &unique("group"));
    env.push(("MAILPIPE__WORKER__MAX_IN_FLIGHT".into(), "128".into()));
    env.push(("MAILPIPE__SMTP__MAX_CONNECTIONS".into(), "16".into()));
    let cfg = Arc::new(Config::load(None, env).unwrap());
    let store = app::store(&cfg).await.unwrap();
    store.upsert_tenant(&TenantId::parse("acme").unwrap(), "Acme").await.unwrap();
    let domains = ["gmail.example", "outlook.example", "corp.example"];
    let jobs: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            let d = domains[i % 3];
            (d.to_owned(), serde_json::to_vec(&job(i, "acme", "big", d)).unwrap())
        })
        .collect();
    app::enqueue(&cfg, &jobs).await.unwrap();

    let stop = CancellationToken::new();
    let started = std::time::Instant::now();
    let worker = tokio::spawn({
        let (cfg, stop) = (cfg.clone(), stop.clone());
        async move { app::run_worker(&cfg, stop, None).await }
    });
    eventually("10,000 jobs sent", Duration::from_secs(300), || async {
        store.ledger_counts("acme", "big").await.unwrap().get("sent") == Some(&(N as i64))
    })
    .await;
    let took = started.elapsed();
    stop.cancel();
    worker.await.unwrap().unwrap();

    // On the sink: each job once.
    let ids = sink.message_ids();
    let unique_ids: HashSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), unique_ids.len()), (N, N), "messages on the sink, distinct Message-IDs");
    // In the ledger: one row per job, all sent.
    let ledger = store.ledger_counts("acme", "big").await.unwrap();
    assert_eq!(ledger.values().sum::<i64>(), N as i64, "{ledger:?}");
    // In the events: one terminal event per job, in the store and on the topic.
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let per_job: Vec<(i64,)> = sqlx::query_as(
        "SELECT COUNT(*) FROM events WHERE campaign_id = 'big' AND type = 'sent' GROUP BY job_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(per_job.len(), N);
    assert!(per_job.iter().all(|(n,)| *n == 1));
    let on_topic = read_topic(&topics.events, N, Duration::from_secs(60));
    let event_ids: HashSet<String> = on_topic
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["event_id"].to_string())
        .collect();
    assert_eq!(event_ids.len(), N, "one sent event per job on {}", topics.events);
    for d in domains {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM send_ledger WHERE recipient_domain = $1")
            .bind(d)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(n >= 3_333, "{d}: {n}");
    }
    println!("10,000 jobs in {took:?} (debug build, one worker)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_together_keep_a_domain_under_its_limit() {
    let db = fresh_database().await;
    let topics = fresh_topics(2).await;
    let sink = SmtpSink::start(&[]);
    let dir = std::env::temp_dir().join(unique("limit"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("limits.toml");
    // 120 a minute is one per 500 ms, with no burst beyond one.
    std::fs::write(&file, "[throttle.limits]\n\"limited.example\" = \"120/m\"\n").unwrap();
    let group = unique("group");
    let env = service_env(&db, &topics, &sink, &group);
    let cfg = Arc::new(Config::load(Some(&file), env).unwrap());
    let store = app::store(&cfg).await.unwrap();
    store.upsert_tenant(&TenantId::parse("acme").unwrap(), "Acme").await.unwrap();

    let stop = CancellationToken::new();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (cfg, stop) = (cfg.clone(), stop.clone());
            tokio::spawn(async move { app::run_worker(&cfg, stop, None).await })
        })
        .collect();
    eventually("both workers in the group", Duration::from_secs(30), || async { group_members(&group) == 2 })
        .await;

    // 16 jobs for the limited domain, keyed by it as `mailpipe enqueue` does,
    // among 200 for ten other domains spread over both partitions.
    let mut jobs = Vec::new();
    for i in 0..216 {
        let d = if i % 13 == 0 && i / 13 < 16 {
            "limited.example".to_owned()
        } else {
            format!("d{}.example", i % 10)
        };
        jobs.push((d.clone(), serde_json::to_vec(&job(i, "acme", "c", &d)).unwrap()));
    }
    let limited = jobs.iter().filter(|(d, _)| d == "limited.example").count();
    app::enqueue(&cfg, &jobs).await.unwrap();
    eventually("all sent", Duration::from_secs(120), || async {
        store.ledger_counts("acme", "c").await.unwrap().get("sent") == Some(&216)
    })
    .await;
    assert_eq!(group_members(&group), 2, "both workers stayed in the group throughout");
    stop.cancel();
    for w in workers {
        w.await.unwrap().unwrap();
    }

    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let times: Vec<i64> = sqlx::query_scalar(
        "SELECT updated_at FROM send_ledger WHERE recipient_domain = 'limited.example' ORDER BY updated_at",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(times.len(), limited);
    // Never more than the limit allows in any one-second window: two at the
    // steady rate plus the burst of one.
    let worst = times.iter().map(|t| times.iter().filter(|u| **u >= *t && **u < t + 1_000).count()).max();
    assert!(worst <= Some(3), "{worst:?} sends within one second; times {times:?}");
    let span = times.last().unwrap() - times.first().unwrap();
    assert!(span >= (limited as i64 - 2) * 500, "{limited} sends over only {span} ms");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_joining_and_leaving_mid_campaign_send_nothing_twice() {
    const N: usize = 3_000;
    let db = fresh_database().await;
    let topics = fresh_topics(4).await;
    let sink = SmtpSink::start(&[]);
    let group = unique("group");
    let mut env = service_env(&db, &topics, &sink, &group);
    // Slow enough that both rebalances happen with jobs in flight.
    std::fs::create_dir_all(std::env::temp_dir().join(&group)).unwrap();
    let file = std::env::temp_dir().join(&group).join("limits.toml");
    std::fs::write(&file, "[throttle]\nglobal = \"9000/m\"\n").unwrap();
    env.push(("MAILPIPE__WORKER__MAX_IN_FLIGHT".into(), "32".into()));
    let cfg = Arc::new(Config::load(Some(&file), env).unwrap());
    let store = app::store(&cfg).await.unwrap();
    store.upsert_tenant(&TenantId::parse("acme").unwrap(), "Acme").await.unwrap();
    let jobs: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            let d = format!("d{}.example", i % 8);
            (d.clone(), serde_json::to_vec(&job(i, "acme", "rb", &d)).unwrap())
        })
        .collect();
    app::enqueue(&cfg, &jobs).await.unwrap();
    let sent =
        || async { store.ledger_counts("acme", "rb").await.unwrap().get("sent").copied().unwrap_or(0) };
    let start = |stop: &CancellationToken| {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        tokio::spawn(async move { app::run_worker(&cfg, stop, None).await })
    };

    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let a = start(&stop_a);
    eventually("a third sent", Duration::from_secs(60), || async { sent().await >= (N / 3) as i64 }).await;
    let b = start(&stop_b); // joins: partitions move from a to b
    eventually("two thirds sent", Duration::from_secs(60), || async { sent().await >= (2 * N / 3) as i64 })
        .await;
    assert!(sent().await < N as i64, "the campaign ended before the second rebalance; slow it down");
    stop_a.cancel(); // leaves: its partitions move to b
    a.await.unwrap().unwrap();
    eventually("all sent", Duration::from_secs(120), || async { sent().await == N as i64 }).await;
    stop_b.cancel();
    b.await.unwrap().unwrap();

    let ids = sink.message_ids();
    assert_eq!(ids.len(), N, "delivered once each");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), N);
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let doubt: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE payload LIKE '%\"in_doubt\"%'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(doubt, 0, "draining before handing partitions over leaves nothing in doubt");
    let committed = committed(&group, &topics.send, 4);
    assert_eq!(committed.values().sum::<i64>(), N as i64, "{committed:?}");
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&group));
}
