//! A producer's retry can leave two records of one job back to back on the
//! send topic. Each job is still sent once: the second record waits for
//! the first's outcome (in one worker), and the ledger's commit point fences
//! off a second attempt (across workers).

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use mailpipe_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_record_arrives_twice_at_once_is_sent_once() {
    const JOBS: usize = 300;
    let env = TestEnv::setup().partitions(2).start().await;

    // Every record twice in a row, with the same key, by kcat: a client of
    // its own, as a retrying producer would leave them.
    let mut lines = String::new();
    for (key, payload) in campaign_jobs(0..JOBS, "acme", "twice", &["a.example", "b.example", "c.example"]) {
        let line = format!("{key}\t{}\n", String::from_utf8(payload).unwrap());
        lines.push_str(&line);
        lines.push_str(&line);
    }
    let mut kcat = Command::new("kcat")
        .args(["-b", &kafka_brokers(), "-t", &env.topics.send, "-P", "-K", "\t", "-X", "linger.ms=50"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("kcat: {e} (install kcat; {START_HINT})"));
    kcat.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    let out = kcat.wait_with_output().unwrap();
    assert!(out.status.success(), "kcat: {}", String::from_utf8_lossy(&out.stderr));

    let worker = env.start_worker();
    eventually("every job sent", Duration::from_secs(90), || async {
        env.ledger("acme", "twice").await.get("sent") == Some(&(JOBS as i64))
    })
    .await;
    // Both records of every job are acknowledged: the second one answered
    // by the first's outcome.
    wait_committed(
        "both records of every job",
        &env.group,
        &env.topics.send,
        2,
        2 * JOBS as i64,
        Duration::from_secs(60),
    )
    .await;
    worker.stop().await;

    let ids = env.sink().message_ids_once();
    assert_eq!(ids.len(), JOBS, "each job delivered exactly once");
    let ledger = env.ledger("acme", "twice").await;
    assert_eq!(ledger.values().sum::<i64>(), JOBS as i64, "{ledger:?}");
    assert_eq!(env.count("SELECT COUNT(*) FROM events WHERE type = 'sent'").await, JOBS as i64);
    // Each job's sent event is on the topic, re-published with the same id
    // for its second record.
    let stored: HashSet<String> = sqlx::query_scalar("SELECT event_id FROM events")
        .fetch_all(&mut env.pg().await)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(read_event_ids(&env.topics.events, JOBS, Duration::from_secs(30)), stored);
    assert!(read_topic(&env.topics.dlq, 1, Duration::from_secs(1)).is_empty(), "nothing dead-lettered");
}
