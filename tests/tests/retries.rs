//! The durable retry schedule: deferred jobs leave the partition, survive a
//! worker restart, and are delivered once the relay recovers; rate-limited
//! backlogs are parked instead of holding slots; a provider that says
//! "slow down" is slowed down.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use mailpipe::app;
use mailpipe::config::Config;
use mailpipe_core::TenantId;
use mailpipe_store::Store;
use mailpipe_tests::*;
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn start_worker(cfg: &Arc<Config>) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let (cfg, stop) = (cfg.clone(), stop.clone());
        async move { app::run_worker(&cfg, stop, None).await }
    });
    (stop, handle)
}

async fn enqueue(cfg: &Config, store: &Store, domains: &[(&str, std::ops::Range<usize>)]) {
    store.upsert_tenant(&TenantId::parse("acme").unwrap(), "Acme").await.unwrap();
    let mut jobs = Vec::new();
    for (domain, range) in domains {
        for i in range.clone() {
            jobs.push((domain.to_string(), serde_json::to_vec(&job(i, "acme", "c", domain)).unwrap()));
        }
    }
    app::enqueue(cfg, &jobs).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_jobs_free_the_partition_survive_a_restart_and_go_out_when_the_relay_recovers() {
    const N: usize = 20;
    let db = fresh_database().await;
    let topics = fresh_topics(1).await;
    let failing = SmtpSink::start(&["-r", "RCPT"]);
    let port = failing.port;
    let mut env = service_env(&db, &topics, &failing, &unique("group"));
    for (k, v) in [
        ("MAILPIPE__WORKER__RETRY_BASE_MS", "1500"),
        ("MAILPIPE__WORKER__MAX_ATTEMPTS", "20"),
        ("MAILPIPE__WORKER__RETRY_POLL_MS", "100"),
    ] {
        env.push((k.into(), v.into()));
    }
    let cfg = Arc::new(Config::load(None, env).unwrap());
    let store = app::store(&cfg).await.unwrap();
    enqueue(&cfg, &store, &[("a.example", 0..N)]).await;

    let (stop, worker) = start_worker(&cfg);
    eventually("every job deferred at least once", Duration::from_secs(30), || async {
        store.event_counts("acme", "c").await.unwrap().get("deferred").copied().unwrap_or(0) >= N as i64
    })
    .await;
    // The partition is released although nothing was delivered: every
    // record's offset is committed because its deferral is durable.
    let group = &cfg.queue.kafka.group_id;
    wait_committed(
        "offsets past all deferred jobs",
        group,
        &topics.send,
        1,
        N as i64,
        Duration::from_secs(20),
    )
    .await;
    let (pending, _) = store.retry_backlog().await.unwrap();
    assert_eq!(pending, N as i64, "all jobs wait on the retry schedule, none counted complete");
    assert_eq!(store.ledger_counts("acme", "c").await.unwrap().get("sent"), None);
    stop.cancel();
    worker.await.unwrap().unwrap();

    // The relay recovers; a new worker (nothing new on the topic) takes the
    // jobs from the durable schedule.
    drop(failing);
    let healthy = SmtpSink::start_on(port, &[]);
    let (stop, worker) = start_worker(&cfg);
    eventually("all delivered after the restart", Duration::from_secs(60), || async {
        store.ledger_counts("acme", "c").await.unwrap().get("sent") == Some(&(N as i64))
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();

    let ids = healthy.message_ids();
    assert_eq!(ids.len(), N, "each job delivered once");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), N);
    assert_eq!(store.retry_backlog().await.unwrap().0, 0);
    let ev = store.event_counts("acme", "c").await.unwrap();
    assert_eq!(ev.get("sent"), Some(&(N as i64)), "{ev:?}");
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM send_ledger WHERE payload IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 0, "finished jobs keep no copy of their payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_backlog_larger_than_the_concurrency_bound_does_not_block_other_domains() {
    let db = fresh_database().await;
    let topics = fresh_topics(1).await;
    let sink = SmtpSink::start(&[]);
    let dir = std::env::temp_dir().join(unique("park"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("throttle.toml");
    // Two per second for slow.example; 4 jobs at a time in all.
    std::fs::write(&file, "[throttle.limits]\n\"slow.example\" = \"120/m\"\n").unwrap();
    let mut env = service_env(&db, &topics, &sink, &unique("group"));
    env.push(("MAILPIPE__WORKER__MAX_IN_FLIGHT".into(), "4".into()));
    env.push(("MAILPIPE__WORKER__RETRY_POLL_MS".into(), "100".into()));
    let cfg = Arc::new(Config::load(Some(&file), env).unwrap());
    let store = app::store(&cfg).await.unwrap();
    // The slow domain's backlog comes first on the one partition.
    enqueue(&cfg, &store, &[("slow.example", 0..12), ("fast.example", 100..140)]).await;

    let (stop, worker) = start_worker(&cfg);
    eventually("all 52 sent", Duration::from_secs(60), || async {
        store.ledger_counts("acme", "c").await.unwrap().get("sent") == Some(&52)
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
    let (slow_first, slow_last) = span("slow.example").fetch_one(&mut conn).await.unwrap();
    let (_, fast_last) = span("fast.example").fetch_one(&mut conn).await.unwrap();
    // 12 sends at two per second take at least 5.5 s...
    assert!(slow_last - slow_first >= 5_000, "slow.example went out over {} ms", slow_last - slow_first);
    // ...and the 40 fast ones, behind them on the partition, did not wait for that.
    assert!(
        fast_last < slow_first + 3_000,
        "fast.example finished {} ms after slow.example began",
        fast_last - slow_first
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_says_slow_down_is_paused_instead_of_hammered() {
    const N: usize = 5;
    let db = fresh_database().await;
    let topics = fresh_topics(1).await;
    let sink = SmtpSink::start(&["-r", "RCPT", "-b", "451 4.7.1 Too many messages, slow down"]);
    let mut env = service_env(&db, &topics, &sink, &unique("group"));
    for (k, v) in [
        ("MAILPIPE__WORKER__RETRY_BASE_MS", "50"),
        ("MAILPIPE__WORKER__MAX_ATTEMPTS", "50"),
        ("MAILPIPE__WORKER__RETRY_POLL_MS", "100"),
        ("MAILPIPE__WORKER__MAX_IN_FLIGHT", "1"),
    ] {
        env.push((k.into(), v.into()));
    }
    let cfg = Arc::new(Config::load(None, env).unwrap());
    let store = app::store(&cfg).await.unwrap();
    enqueue(&cfg, &store, &[("a.example", 0..N)]).await;

    let (stop, worker) = start_worker(&cfg);
    eventually("a first deferral", Duration::from_secs(30), || async {
        store.event_counts("acme", "c").await.unwrap().contains_key("deferred")
    })
    .await;
    // Retries are due every ~50 ms, but the provider asked us to slow down:
    // it is paused for 30 s, so the other jobs are parked, not sent.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let deferred = store.event_counts("acme", "c").await.unwrap().get("deferred").copied().unwrap_or(0);
    assert_eq!(deferred, 1, "only the attempt that was told to slow down was made");
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let later: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM send_ledger WHERE status = 'deferred' AND next_attempt_at > $1",
    )
    .bind(mailpipe_core::now_ms() + 20_000)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(later, (N - 1) as i64, "the other jobs are parked until the pause ends");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_recipients_deferred_is_delivered_after_retries_and_the_campaign_is_not_complete_before() {
    const N: usize = 300;
    let db = fresh_database().await;
    let topics = fresh_topics(2).await;
    // About 30% of recipients get 451 4.2.1 on their first RCPT.
    let relay = TestRelay::start(&["--defer-percent", "30"]);
    let mut env = relay_env(&db, &topics, relay.port, &unique("group"));
    for (k, v) in [
        ("MAILPIPE__WORKER__RETRY_BASE_MS", "2000"),
        ("MAILPIPE__WORKER__MAX_ATTEMPTS", "5"),
        ("MAILPIPE__WORKER__RETRY_POLL_MS", "100"),
    ] {
        env.push((k.into(), v.into()));
    }
    let cfg = Arc::new(Config::load(None, env).unwrap());
    let store = app::store(&cfg).await.unwrap();
    enqueue(&cfg, &store, &[("a.example", 0..100), ("b.example", 100..200), ("c.example", 200..300)]).await;
    let acme = TenantId::parse("acme").unwrap();

    let (stop, worker) = start_worker(&cfg);
    // Sample the campaign's progress until it says complete. It may only
    // say so once every message is on the relay, and while the deferred
    // share waits for its retry it must say how many are outstanding.
    let mut seen_waiting_on_deferrals = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        assert!(std::time::Instant::now() < deadline, "the campaign never completed");
        let progress =
            store.campaign_stats(&acme, "c").await.unwrap().map(|s| s.progress).unwrap_or_default();
        let delivered = relay.received().len();
        if progress.complete {
            assert_eq!(delivered, N, "counted complete with {} of {N} delivered", delivered);
            break;
        }
        let sent = store.ledger_counts("acme", "c").await.unwrap().get("sent").copied().unwrap_or(0);
        if progress.accepted == N as i64 && progress.outstanding > 0 && sent > 0 {
            seen_waiting_on_deferrals = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    worker.await.unwrap().unwrap();

    let deferred = relay.deferred();
    assert!(
        (40..=140).contains(&deferred.len()),
        "{} recipients deferred, about 90 expected",
        deferred.len()
    );
    assert!(seen_waiting_on_deferrals, "never saw the campaign incomplete while its deferrals waited");
    let ids: Vec<String> = relay
        .received()
        .iter()
        .filter_map(|m| m.message.lines().find_map(|l| l.strip_prefix("Message-ID: ").map(str::to_owned)))
        .collect();
    assert_eq!(ids.len(), N, "every message has a Message-ID");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), N, "each recipient delivered exactly once");
    let ev = store.event_counts("acme", "c").await.unwrap();
    assert_eq!(ev.get("deferred"), Some(&(deferred.len() as i64)), "{ev:?}");
    assert_eq!(ev.get("sent"), Some(&(N as i64)), "{ev:?}");
    println!("deferrals: {N} jobs, {} deferred once, all delivered once after retries", deferred.len());
}
