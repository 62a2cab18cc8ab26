//! Kafka restarts, then PostgreSQL restarts, while the worker binary is
//! sending a campaign. The worker rides both out: jobs wait (backpressure)
//! instead of being dropped, failed or sent twice, and once the services are
//! back every job has exactly one outcome, one event in the store and on
//! the topic, one delivery on the sink, and a committed offset.
//! It holds the shared services alone, since it restarts them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mailpipe_tests::*;

const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_then_postgres_restart_during_sending_loses_nothing_and_sends_nothing_twice() {
    let jobs_total = chaos_size("OUTAGE_JOBS", 3000);
    // A step that fails mid-transaction (say, marking a job `sending` as
    // PostgreSQL goes away) abandons the attempt and schedules a retry;
    // keep that retry within the test's patience.
    let env = TestEnv::setup()
        .partitions(PARTITIONS)
        .var("MAILPIPE__WORKER__RETRY_BASE_MS", 1000)
        .exclusive()
        .start()
        .await;
    env.enqueue(&campaign_jobs(0..jobs_total, "acme", "outage", &["a.example", "b.example", "c.example"]))
        .await;

    let mut worker = env.worker_process();
    let started = Instant::now();
    env.wait_finished(jobs_total as i64 / 6, &mut worker, Duration::from_secs(120), "before the outages")
        .await;
    tokio::task::block_in_place(|| restart_service(env.exclusive(), "kafka"));
    let after_kafka = Instant::now();
    env.wait_finished(jobs_total as i64 / 2, &mut worker, Duration::from_secs(120), "during an outage").await;
    tokio::task::block_in_place(|| restart_service(env.exclusive(), "postgres"));
    let after_postgres = Instant::now();

    let patience = Duration::from_secs(60) + Duration::from_millis(20 * jobs_total as u64);
    env.wait_finished(jobs_total as i64, &mut worker, patience, "after the outages").await;
    let mut conn = env.pg().await;
    wait_committed(
        "offsets after the restarts",
        &env.group,
        &env.topics.send,
        PARTITIONS,
        jobs_total as i64,
        Duration::from_secs(60),
    )
    .await;
    let status = worker.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "SIGTERM ends the worker cleanly after both outages: {status:?}");

    // Exactly one outcome per job, all delivered, none twice, none in doubt.
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT status, message_id FROM send_ledger").fetch_all(&mut conn).await.unwrap();
    assert_eq!(rows.len(), jobs_total);
    let not_sent: Vec<&String> = rows.iter().map(|r| &r.0).filter(|s| *s != "sent").collect();
    assert!(not_sent.is_empty(), "jobs not sent: {not_sent:?}");
    let in_doubt: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE type = 'sent' AND payload LIKE '%\"reason\":\"in_doubt\"%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(in_doubt, 0, "an outage is not a crash: no job should be left in doubt");
    let sent_events = env.count("SELECT COUNT(*) FROM events WHERE type = 'sent'").await;
    assert_eq!(sent_events, jobs_total as i64, "one terminal event per job in the store");

    let unique_on_sink = env.sink().message_ids_once();
    let ledger_ids: HashSet<String> = rows.into_iter().filter_map(|r| r.1).collect();
    assert_eq!(unique_on_sink.len(), jobs_total, "every job delivered");
    assert!(
        unique_on_sink.iter().all(|id| ledger_ids.contains(id)),
        "the sink has a message the ledger does not know"
    );

    // The events topic has every job's event (redeliveries share event_id).
    let dlq = read_topic(&env.topics.dlq, 1, Duration::from_secs(2));
    assert!(dlq.is_empty(), "nothing is dead-lettered by an outage: {} records", dlq.len());
    let stored: HashSet<String> = sqlx::query_scalar("SELECT event_id FROM events")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let all_events = read_event_ids(&env.topics.events, stored.len(), Duration::from_secs(30));
    assert!(
        stored.is_subset(&all_events),
        "{} stored events are missing from the topic",
        stored.difference(&all_events).count()
    );
    println!(
        "send outage: {jobs_total} jobs; Kafka restarted at {:.1} s, PostgreSQL at {:.1} s; all sent once, none in doubt",
        (after_kafka - started).as_secs_f64(),
        (after_postgres - started).as_secs_f64()
    );
}
