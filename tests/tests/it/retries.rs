//! The durable retry schedule: deferred jobs leave the partition, survive a
//! worker restart, and are delivered once the relay recovers; rate-limited
//! backlogs are parked instead of holding slots; a provider that says
//! "slow down" is slowed down.

use std::collections::HashSet;
use std::time::Duration;

use mailpipe_core::TenantId;
use mailpipe_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_jobs_free_the_partition_survive_a_restart_and_go_out_when_the_relay_recovers() {
    const N: usize = 20;
    let failing = SmtpSink::start(&["-r", "RCPT"]);
    let port = failing.port;
    let env = TestEnv::setup()
        .relay(port)
        .var("MAILPIPE__WORKER__RETRY_BASE_MS", 1500)
        .var("MAILPIPE__WORKER__MAX_ATTEMPTS", 20)
        .var("MAILPIPE__WORKER__RETRY_POLL_MS", 100)
        .start()
        .await;
    env.enqueue(&campaign_jobs(0..N, "acme", "c", &["a.example"])).await;

    let worker = env.start_worker();
    eventually("every job deferred at least once", Duration::from_secs(30), || async {
        env.events("acme", "c").await.get("deferred").copied().unwrap_or(0) >= N as i64
    })
    .await;
    // The partition is released although nothing was delivered: every
    // record's offset is committed because its deferral is durable.
    wait_committed(
        "offsets past all deferred jobs",
        &env.group,
        &env.topics.send,
        1,
        N as i64,
        Duration::from_secs(20),
    )
    .await;
    let (pending, _) = env.store.retry_backlog().await.unwrap();
    assert_eq!(pending, N as i64, "all jobs wait on the retry schedule, none counted complete");
    assert_eq!(env.ledger("acme", "c").await.get("sent"), None);
    worker.stop().await;

    // The relay recovers; a new worker (nothing new on the topic) takes the
    // jobs from the durable schedule.
    drop(failing);
    let healthy = SmtpSink::start_on(port, &[]);
    let worker = env.start_worker();
    env.wait_ledger("acme", "c", "sent", N, Duration::from_secs(60)).await;
    worker.stop().await;

    let ids = healthy.message_ids();
    assert_eq!(ids.len(), N, "each job delivered once");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), N);
    assert_eq!(env.store.retry_backlog().await.unwrap().0, 0);
    let ev = env.events("acme", "c").await;
    assert_eq!(ev.get("sent"), Some(&(N as i64)), "{ev:?}");
    let kept = env.count("SELECT COUNT(*) FROM send_ledger WHERE payload IS NOT NULL").await;
    assert_eq!(kept, 0, "finished jobs keep no copy of their payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_backlog_larger_than_the_concurrency_bound_does_not_block_other_domains() {
    // Two per second for slow.example; 4 jobs at a time in all.
    let env = TestEnv::setup()
        .toml("[throttle.limits]\n\"slow.example\" = \"120/m\"\n")
        .var("MAILPIPE__WORKER__MAX_IN_FLIGHT", 4)
        .var("MAILPIPE__WORKER__RETRY_POLL_MS", 100)
        .start()
        .await;
    // The slow domain's backlog comes first on the one partition.
    let mut jobs = campaign_jobs(0..12, "acme", "c", &["slow.example"]);
    jobs.extend(campaign_jobs(100..140, "acme", "c", &["fast.example"]));
    env.enqueue(&jobs).await;

    let worker = env.start_worker();
    env.wait_ledger("acme", "c", "sent", 52, Duration::from_secs(60)).await;
    worker.stop().await;

    let (slow_first, slow_last) = env.send_span("slow.example").await;
    let (_, fast_last) = env.send_span("fast.example").await;
    // 12 sends at two per second take at least 5.5 s...
    assert!(slow_last - slow_first >= 5_000, "slow.example went out over {} ms", slow_last - slow_first);
    // ...and the 40 fast ones, behind them on the partition, did not wait for that.
    assert!(
        fast_last < slow_first + 3_000,
        "fast.example finished {} ms after slow.example began",
        fast_last - slow_first
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_says_slow_down_is_paused_instead_of_hammered() {
    const N: usize = 5;
    let env = TestEnv::setup()
        .sink(&["-r", "RCPT", "-b", "451 4.7.1 Too many messages, slow down"])
        .var("MAILPIPE__WORKER__RETRY_BASE_MS", 50)
        .var("MAILPIPE__WORKER__MAX_ATTEMPTS", 50)
        .var("MAILPIPE__WORKER__RETRY_POLL_MS", 100)
        .var("MAILPIPE__WORKER__MAX_IN_FLIGHT", 1)
        .start()
        .await;
    env.enqueue(&campaign_jobs(0..N, "acme", "c", &["a.example"])).await;

    let worker = env.start_worker();
    eventually("a first deferral", Duration::from_secs(30), || async {
        env.events("acme", "c").await.contains_key("deferred")
    })
    .await;
    // Retries are due every ~50 ms, but the provider asked us to slow down:
    // it is paused for 30 s, so the other jobs are parked, not sent.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let deferred = env.events("acme", "c").await.get("deferred").copied().unwrap_or(0);
    assert_eq!(deferred, 1, "only the attempt that was told to slow down was made");
    let later: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM send_ledger WHERE status = 'deferred' AND next_attempt_at > $1",
    )
    .bind(mailpipe_core::now_ms() + 20_000)
    .fetch_one(&mut env.pg().await)
    .await
    .unwrap();
    assert_eq!(later, (N - 1) as i64, "the other jobs are parked until the pause ends");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_recipients_deferred_is_delivered_after_retries_and_the_campaign_is_not_complete_before() {
    const N: usize = 300;
    // About 30% of recipients get 451 4.2.1 on their first RCPT.
    let relay = TestRelay::start(&["--defer-percent", "30"]);
    let env = TestEnv::setup()
        .partitions(2)
        .relay(relay.port)
        .var("MAILPIPE__WORKER__RETRY_BASE_MS", 2000)
        .var("MAILPIPE__WORKER__MAX_ATTEMPTS", 5)
        .var("MAILPIPE__WORKER__RETRY_POLL_MS", 100)
        .start()
        .await;
    let mut jobs = campaign_jobs(0..100, "acme", "c", &["a.example"]);
    jobs.extend(campaign_jobs(100..200, "acme", "c", &["b.example"]));
    jobs.extend(campaign_jobs(200..N, "acme", "c", &["c.example"]));
    env.enqueue(&jobs).await;
    let acme = TenantId::parse("acme").unwrap();

    let worker = env.start_worker();
    // Sample the campaign's progress until it says complete. It may only
    // say so once every message is on the relay, and while the deferred
    // share waits for its retry it must say how many are outstanding.
    let mut seen_waiting_on_deferrals = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        assert!(std::time::Instant::now() < deadline, "the campaign never completed");
        let progress =
            env.store.campaign_stats(&acme, "c").await.unwrap().map(|s| s.progress).unwrap_or_default();
        let delivered = relay.received().len();
        if progress.complete {
            assert_eq!(delivered, N, "counted complete with {} of {N} delivered", delivered);
            break;
        }
        let sent = env.ledger("acme", "c").await.get("sent").copied().unwrap_or(0);
        if progress.accepted == N as i64 && progress.outstanding > 0 && sent > 0 {
            seen_waiting_on_deferrals = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;

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
    let ev = env.events("acme", "c").await;
    assert_eq!(ev.get("deferred"), Some(&(deferred.len() as i64)), "{ev:?}");
    assert_eq!(ev.get("sent"), Some(&(N as i64)), "{ev:?}");
    println!("deferrals: {N} jobs, {} deferred once, all delivered once after retries", deferred.len());
}

/// `worker.max_age_secs` bounds a job's retries from its first attempt, not
/// from its claim: a job held longer than that before it was first tried
/// (here by its `send_at`; a warm-up cap or a paused stream alike) is still
/// retried after a deferral, and then fails on its age like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_held_past_max_age_before_its_first_attempt_is_still_retried() {
    let failing = SmtpSink::start(&["-r", "RCPT"]);
    let env = TestEnv::setup()
        .relay(failing.port)
        .var("MAILPIPE__WORKER__RETRY_BASE_MS", 400)
        .var("MAILPIPE__WORKER__MAX_ATTEMPTS", 50)
        .var("MAILPIPE__WORKER__RETRY_POLL_MS", 100)
        .var("MAILPIPE__WORKER__MAX_AGE_SECS", 3)
        .start()
        .await;
    // The worker running first (its control job tried once), so that the
    // held job is claimed at once, well before its send_at.
    env.enqueue(&[keyed(&job(2, "acme", "c", "a.example"))]).await;
    let worker = env.start_worker();
    eventually("the control job tried", Duration::from_secs(30), || async {
        env.events("acme", "c").await.get("deferred").copied().unwrap_or(0) >= 1
    })
    .await;
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);
    let mut held = job(1, "acme", "c", "a.example");
    held["send_at"] = at.format(&time::format_description::well_known::Rfc3339).unwrap().into();
    env.enqueue(&[keyed(&held)]).await;
    eventually("both jobs failed on their age", Duration::from_secs(60), || async {
        env.ledger("acme", "c").await.get("failed") == Some(&2)
    })
    .await;
    worker.stop().await;
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT job_id, attempts, first_attempt_at - created_at FROM send_ledger WHERE tenant_id = 'acme' ORDER BY job_id",
    )
    .fetch_all(&mut env.pg().await)
    .await
    .unwrap();
    let (held, control) = (&rows[0], &rows[1]);
    assert!(held.2 > 3_000, "held longer than max_age before its first attempt: {rows:?}");
    assert!(held.1 >= 2, "retried after its first deferral, not failed at once: {rows:?}");
    assert!(control.1 >= 2 && control.2 < 4_000, "{rows:?}");
    assert!(rows.iter().all(|r| r.1 < 50), "failed on their age, not their attempts: {rows:?}");
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM events WHERE tenant_id = 'acme' AND type = 'failed'")
            .fetch_all(&mut env.pg().await)
            .await
            .unwrap();
    assert_eq!(reasons, ["max_age", "max_age"]);
}
