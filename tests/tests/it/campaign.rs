//! Whole campaigns: every job accounted for exactly once, and a domain's
//! rate limit holding across a group of workers.

use std::collections::HashSet;
use std::time::Duration;

use mailpipe_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_over_three_domains_are_each_accounted_for_exactly_once() {
    const N: usize = 10_000;
    let env = TestEnv::setup()
        .partitions(4)
        .var("MAILPIPE__WORKER__MAX_IN_FLIGHT", 128)
        .var("MAILPIPE__SMTP__MAX_CONNECTIONS", 16)
        .start()
        .await;
    let domains = ["gmail.example", "outlook.example", "corp.example"];
    env.enqueue(&campaign_jobs(0..N, "acme", "big", &domains)).await;

    let started = std::time::Instant::now();
    let worker = env.start_worker();
    env.wait_ledger("acme", "big", "sent", N, Duration::from_secs(300)).await;
    let took = started.elapsed();
    worker.stop().await;

    // On the sink: each job once.
    let ids = env.sink().message_ids();
    let unique_ids: HashSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), unique_ids.len()), (N, N), "messages on the sink, distinct Message-IDs");
    // In the ledger: one row per job, all sent.
    let ledger = env.ledger("acme", "big").await;
    assert_eq!(ledger.values().sum::<i64>(), N as i64, "{ledger:?}");
    // In the events: one terminal event per job, in the store and on the topic.
    let mut conn = env.pg().await;
    let per_job: Vec<(i64,)> = sqlx::query_as(
        "SELECT COUNT(*) FROM events WHERE campaign_id = 'big' AND type = 'sent' GROUP BY job_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(per_job.len(), N);
    assert!(per_job.iter().all(|(n,)| *n == 1));
    let on_topic = read_topic(&env.topics.events, N, Duration::from_secs(60));
    let event_ids: HashSet<String> = on_topic
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["event_id"].to_string())
        .collect();
    assert_eq!(event_ids.len(), N, "one sent event per job on {}", env.topics.events);
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
    // 120 a minute is one per 500 ms, with no burst beyond one.
    let env = TestEnv::setup()
        .partitions(2)
        .toml("[throttle.limits]\n\"limited.example\" = \"120/m\"\n")
        .start()
        .await;
    let workers = [env.start_worker(), env.start_worker()];
    eventually("both workers in the group", Duration::from_secs(30), || async {
        group_members(&env.group) == 2
    })
    .await;

    // 16 jobs for the limited domain, keyed by it as `mailpipe enqueue` does,
    // among 200 for ten other domains spread over both partitions.
    let jobs: Vec<(String, Vec<u8>)> = (0..216)
        .map(|i| {
            let d = if i % 13 == 0 && i / 13 < 16 {
                "limited.example".to_owned()
            } else {
                format!("d{}.example", i % 10)
            };
            keyed(&job(i, "acme", "c", &d))
        })
        .collect();
    let limited = jobs.iter().filter(|(d, _)| d == "limited.example").count();
    env.enqueue(&jobs).await;
    env.wait_ledger("acme", "c", "sent", 216, Duration::from_secs(120)).await;
    assert_eq!(group_members(&env.group), 2, "both workers stayed in the group throughout");
    for w in workers {
        w.stop().await;
    }

    let times: Vec<i64> = sqlx::query_scalar(
        "SELECT updated_at FROM send_ledger WHERE recipient_domain = 'limited.example' ORDER BY updated_at",
    )
    .fetch_all(&mut env.pg().await)
    .await
    .unwrap();
    assert_eq!(times.len(), limited);
    // Never more than the limit allows in any one-second window: two at the
    // steady rate plus the burst of one.
    let worst = times.iter().map(|t| times.iter().filter(|u| **u >= *t && **u < t + 1_000).count()).max();
    assert!(worst <= Some(3), "{worst:?} sends within one second; times {times:?}");
    let span = times.last().unwrap() - times.first().unwrap();
    assert!(span >= (limited as i64 - 2) * 500, "{limited} sends over only {span} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_joining_and_leaving_mid_campaign_send_nothing_twice() {
    const N: usize = 3_000;
    // Slow enough that both rebalances happen with jobs in flight.
    let env = TestEnv::setup()
        .partitions(4)
        .toml("[throttle]\nglobal = \"9000/m\"\n")
        .var("MAILPIPE__WORKER__MAX_IN_FLIGHT", 32)
        .start()
        .await;
    let domains: Vec<String> = (0..8).map(|d| format!("d{d}.example")).collect();
    let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
    env.enqueue(&campaign_jobs(0..N, "acme", "rb", &domains)).await;
    let sent = || async { env.ledger("acme", "rb").await.get("sent").copied().unwrap_or(0) };

    let a = env.start_worker();
    eventually("a third sent", Duration::from_secs(60), || async { sent().await >= (N / 3) as i64 }).await;
    let b = env.start_worker(); // joins: partitions move from a to b
    eventually("two thirds sent", Duration::from_secs(60), || async { sent().await >= (2 * N / 3) as i64 })
        .await;
    assert!(sent().await < N as i64, "the campaign ended before the second rebalance; slow it down");
    a.stop().await; // leaves: its partitions move to b
    eventually("all sent", Duration::from_secs(120), || async { sent().await == N as i64 }).await;
    b.stop().await;

    let ids = env.sink().message_ids();
    assert_eq!(ids.len(), N, "delivered once each");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), N);
    let doubt: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE payload LIKE '%\"in_doubt\"%'")
        .fetch_one(&mut env.pg().await)
        .await
        .unwrap();
    assert_eq!(doubt, 0, "draining before handing partitions over leaves nothing in doubt");
    let committed = committed(&env.group, &env.topics.send, 4);
    assert_eq!(committed.values().sum::<i64>(), N as i64, "{committed:?}");
}
