//! kill -9 the real worker binary mid-campaign, several times, then let a
//! last worker finish and stop it with SIGTERM. Every job must end with
//! exactly one outcome, nothing may be delivered twice, and the only jobs
//! missing from the sink may be ones the ledger marks as in doubt.

use std::collections::HashSet;
use std::time::Duration;

use mailpipe_tests::*;

/// Both sizes grow in the long run of `scripts/chaos.sh`.
fn sizes() -> (usize, usize) {
    (chaos_size("JOBS", 3000), chaos_size("KILLS", 3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_campaign_loses_nothing_and_sends_nothing_twice() {
    let (jobs_total, kills) = sizes();
    let env = TestEnv::setup().partitions(3).start().await;
    env.enqueue(&campaign_jobs(0..jobs_total, "acme", "crash", &["a.example", "b.example", "c.example"]))
        .await;

    // The crashes are spread over the first ~65% of the campaign.
    let kill_points: Vec<i64> = (1..=kills).map(|k| (jobs_total * 13 * k / (20 * kills)) as i64).collect();
    let mut peak_rss_mb = 0;
    for (round, &at) in kill_points.iter().enumerate() {
        let mut child = env.worker_process();
        env.wait_finished(at, &mut child, Duration::from_secs(90), &format!("in round {round}")).await;
        peak_rss_mb = peak_rss_mb.max(child.peak_rss_mb());
        child.kill_9();
    }

    // A last worker finishes the campaign and is stopped with SIGTERM.
    let mut last = env.worker_process();
    let patience = Duration::from_secs(60) + Duration::from_millis(20 * jobs_total as u64);
    env.wait_finished(jobs_total as i64, &mut last, patience, "before the campaign finished").await;
    // The ledger can be complete before the last worker has re-read the
    // records a killed worker finished but never committed; stop it only
    // once it has caught up with the topic (auto-commit runs every second).
    wait_committed(
        "the last worker to catch up",
        &env.group,
        &env.topics.send,
        3,
        jobs_total as i64,
        Duration::from_secs(60),
    )
    .await;
    peak_rss_mb = peak_rss_mb.max(last.peak_rss_mb());
    let status = last.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "SIGTERM ends the worker cleanly: {status:?}");

    // Exactly one outcome per job.
    let mut conn = env.pg().await;
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT job_id, status, message_id FROM send_ledger")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(rows.len(), jobs_total);
    assert!(rows.iter().all(|r| r.1 == "sent"), "every job sent");
    let terminal_events = env.count("SELECT COUNT(*) FROM events WHERE type = 'sent'").await;
    assert_eq!(terminal_events, jobs_total as i64, "one terminal event per job");

    // Nothing delivered twice; whatever is missing from the sink is in doubt.
    let unique_on_sink = env.sink().message_ids_once();
    let in_doubt: HashSet<String> = sqlx::query_scalar::<_, String>(
        "SELECT l.message_id FROM send_ledger l JOIN events e ON e.tenant_id = l.tenant_id AND e.job_id = l.job_id
         WHERE e.type = 'sent' AND e.payload LIKE '%\"reason\":\"in_doubt\"%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let ledger_ids: HashSet<String> = rows.iter().filter_map(|r| r.2.clone()).collect();
    let missing = missing_only_in_doubt(&unique_on_sink, &ledger_ids, &in_doubt);
    eprintln!(
        "crash test: {jobs_total} jobs, {kills} kill -9, {} on the sink, {} in doubt, {missing} in doubt and not delivered; worker peak RSS {peak_rss_mb} MB (debug build)",
        unique_on_sink.len(),
        in_doubt.len(),
    );
    assert!(peak_rss_mb > 0, "the workers' peak RSS could not be read from /proc");

    // And the offsets of all of them are committed.
    assert_eq!(committed(&env.group, &env.topics.send, 3).values().sum::<i64>(), jobs_total as i64);
}

/// A worker died after it had recorded a dead letter (the `dead_letters`
/// row, its event and the ledger's `dead_lettered`, one transaction) but
/// before it published to the dead-letter topic: the state is set up here
/// exactly as that crash leaves it. The redelivered record finds the
/// outcome and must publish what the first attempt owed: the dead letter,
/// not only the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_recorded_before_a_crash_still_reaches_the_topic() {
    let env = TestEnv::setup().start().await;
    let jobs = campaign_jobs(0..1, "acme", "dlcrash", &["a.example"]);
    let job = mailpipe_core::SendJob::from_json(&jobs[0].1).unwrap();
    claim(&env.store, &job).await;
    let mut ev = mailpipe_core::Event::for_job(
        mailpipe_core::EventType::DeadLettered,
        &job.tenant_id,
        &job.campaign_id,
        &job.job_id,
        "",
    );
    ev.reason = Some("unknown_template".into());
    ev.detail = Some("template welcome-v9 is not registered".into());
    let dl = mailpipe_store::DeadLetter {
        source: format!("{}/0/0", env.topics.send),
        reason: "unknown_template".into(),
        detail: "template welcome-v9 is not registered".into(),
        tenant_id: Some("acme".into()),
        job_id: Some(job.job_id.to_string()),
        payload: jobs[0].1.clone(),
    };
    env.store.dead_letter(&dl, &ev).await.unwrap();
    assert_eq!(
        env.ledger("acme", "dlcrash").await.get("dead_lettered"),
        Some(&1),
        "one transaction ends the row"
    );

    env.enqueue(&jobs).await;
    let worker = env.start_worker();
    let dlq = read_topic(&env.topics.dlq, 1, Duration::from_secs(30));
    wait_committed("the redelivered record", &env.group, &env.topics.send, 1, 1, Duration::from_secs(30))
        .await;
    worker.stop().await;

    assert_eq!(dlq.len(), 1, "the replay publishes the dead letter the crash cut off");
    let r = &dlq[0];
    assert_eq!(r.payload, jobs[0].1, "the record, unchanged");
    assert_eq!(r.key.as_deref(), Some(jobs[0].0.as_str()), "under its own key");
    assert_eq!(r.headers.get("mailpipe-reason").map(String::as_str), Some("unknown_template"));
    assert_eq!(r.headers.get("mailpipe-source"), Some(&dl.source));
    assert!(read_event_ids(&env.topics.events, 1, Duration::from_secs(10)).contains(&ev.event_id));
    assert!(env.sink().message_ids_once().is_empty(), "nothing sent");
    assert_eq!(env.count("SELECT COUNT(*) FROM dead_letters").await, 1, "kept once");
}
