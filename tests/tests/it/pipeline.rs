//! End to end against the real services: Kafka → worker → smtp-sink, with
//! outcomes in PostgreSQL and on the events topic, and offsets committed
//! only after outcomes are durable.

use std::collections::HashSet;
use std::time::Duration;

use mailpipe_core::{Event, EventType};
use mailpipe_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_flow_from_kafka_to_the_sink_the_store_and_the_events_topic_then_offsets_commit() {
    let env = TestEnv::setup().partitions(3).start().await;

    // 30 good jobs over three domains, plus two that must be dead-lettered.
    let mut jobs = campaign_jobs(0..30, "acme", "spring", &["a.example", "b.example", "c.example"]);
    jobs.push(("x.example".into(), b"{not json".to_vec()));
    let mut inj = job(99, "acme", "spring", "a.example");
    inj["to"]["name"] = "Eve\r\nBcc: all@example.com".into();
    jobs.push(keyed(&inj));
    env.enqueue(&jobs).await;

    let worker = env.start_worker();
    eventually("30 jobs sent and 2 dead-lettered", Duration::from_secs(60), || async {
        env.ledger("acme", "spring").await.get("sent") == Some(&30)
            && env.store.dead_letter_count().await.unwrap() == 2
    })
    .await;

    // The sink got each message exactly once, with the Message-IDs the ledger recorded.
    let sink = env.sink();
    let sink_ids: Vec<String> = sink.message_ids();
    assert_eq!(sink_ids.len(), 30, "messages on the sink");
    let distinct: HashSet<&String> = sink_ids.iter().collect();
    assert_eq!(distinct.len(), 30, "no duplicate deliveries");
    let mut conn = env.pg().await;
    let ledger_ids: HashSet<String> =
        sqlx::query_scalar::<_, String>("SELECT message_id FROM send_ledger WHERE status = 'sent'")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(ledger_ids, sink_ids.iter().cloned().collect::<HashSet<_>>());
    // The message is the rendered one: personalised and with tracked links.
    let one = sink
        .messages()
        .into_iter()
        .find(|m| m.contains("job-00007") || m.contains("User 7"))
        .expect("job 7 on the sink");
    assert!(one.contains("Subject: Hello User 7"), "{one}");
    assert!(one.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    assert!(!one.contains("https://shop.example/item/7"), "links are rewritten");

    // Events: one per outcome on the topic, and the same ids in the store.
    let records = read_topic(&env.topics.events, 32, Duration::from_secs(30));
    let events: Vec<Event> =
        records.iter().map(|r| serde_json::from_slice(&r.payload).expect("event json")).collect();
    let count = |k: EventType| events.iter().filter(|e| e.kind == k).count();
    assert_eq!((count(EventType::Sent), count(EventType::DeadLettered)), (30, 2), "{events:#?}");
    assert_eq!(events.iter().map(|e| &e.event_id).collect::<HashSet<_>>().len(), 32);
    assert!(
        events.iter().filter(|e| e.kind == EventType::Sent).all(|e| e.provider.as_deref() == Some("other")),
        "sent events name the provider group (none configured: other)"
    );
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(&mut conn).await.unwrap();
    assert_eq!(stored, 32);

    // Dead letters: on the DLQ topic with their reasons.
    let dlq = read_topic(&env.topics.dlq, 2, Duration::from_secs(30));
    let reasons: HashSet<&str> =
        dlq.iter().map(|r| r.headers.get("mailpipe-reason").map(String::as_str).unwrap_or("")).collect();
    assert_eq!(reasons, HashSet::from(["malformed", "header_injection"]));

    // Offsets: every record committed, once its outcome was stored.
    wait_committed("the first group", &env.group, &env.topics.send, 3, 32, Duration::from_secs(15)).await;
    worker.stop().await;

    // A second consumer group re-reads every job (as after lost offsets):
    // nothing is sent twice, and each outcome is re-published with its id.
    let group2 = unique("group");
    let worker2 = env.start_worker_with(env.config_with(&[("MAILPIPE__QUEUE__KAFKA__GROUP_ID", &group2)]));
    wait_committed("the second group", &group2, &env.topics.send, 3, 32, Duration::from_secs(60)).await;
    worker2.stop().await;
    assert_eq!(sink.message_ids().len(), 30, "redelivery sent nothing again");
    // Ask for more than should exist, so that extra records would show.
    let again = read_topic(&env.topics.events, 65, Duration::from_secs(8));
    let ids: HashSet<String> =
        again.iter().map(|r| serde_json::from_slice::<Event>(&r.payload).unwrap().event_id).collect();
    assert_eq!(again.len(), 64, "each of the 32 outcomes published once more, no other events");
    assert_eq!(ids.len(), 32, "re-published events carry the same event ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_is_stored_only_after_the_outcome_is_durable() {
    let env = TestEnv::start().await;

    // A simulated store outage for one job: recording its outcome fails.
    let mut conn = env.pg().await;
    sqlx::raw_sql(
        "CREATE FUNCTION block_job() RETURNS trigger AS $$ BEGIN
           IF NEW.job_id = 'job-00002' AND NEW.status = 'sent' THEN RAISE EXCEPTION 'simulated outage'; END IF;
           RETURN NEW; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER block BEFORE UPDATE ON send_ledger FOR EACH ROW EXECUTE FUNCTION block_job();",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    env.enqueue(&campaign_jobs(0..5, "acme", "c1", &["a.example"])).await;
    let worker = env.start_worker();

    eventually("jobs 0, 1, 3, 4 recorded", Duration::from_secs(60), || async {
        env.ledger("acme", "c1").await.get("sent") == Some(&4)
    })
    .await;
    // Job 2 was delivered but its outcome is not durable: the position must
    // stay at 2 however long we wait (auto-commit runs every second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        committed(&env.group, &env.topics.send, 1).get(&0).copied(),
        Some(2),
        "position held at the unfinished job"
    );
    assert_eq!(env.ledger("acme", "c1").await.get("sending"), Some(&1), "job 2 still in flight");

    // The outage ends: job 2's outcome is recorded (not re-sent) and the position moves past all five.
    sqlx::raw_sql("DROP TRIGGER block ON send_ledger").execute(&mut conn).await.unwrap();
    eventually("all five committed", Duration::from_secs(30), || async {
        committed(&env.group, &env.topics.send, 1).get(&0).copied() == Some(5)
    })
    .await;
    assert_eq!(env.ledger("acme", "c1").await.get("sent"), Some(&5));
    assert_eq!(
        env.sink().message_ids().len(),
        5,
        "job 2 was delivered once, its outcome retried, not its send"
    );
    worker.stop().await;
}
