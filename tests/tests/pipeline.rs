//! End to end against the real services: Kafka → worker → smtp-sink, with
//! outcomes in PostgreSQL and on the events topic, and offsets committed
//! only after outcomes are durable.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mailpipe::app;
use mailpipe_core::{Event, EventType, TenantId};
use mailpipe_store::Store;
use mailpipe_tests::*;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

fn spawn_worker(
    cfg: Arc<mailpipe::Config>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move { app::run_worker(&cfg, stop, None).await })
}

async fn ledger(store: &Store, tenant: &str, campaign: &str) -> BTreeMap<String, i64> {
    store.ledger_counts(tenant, campaign).await.expect("ledger counts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_flow_from_kafka_to_the_sink_the_store_and_the_events_topic_then_offsets_commit() {
    let db = fresh_database().await;
    let topics = fresh_topics(3).await;
    let sink = SmtpSink::start(&[]);
    let cfg = Arc::new(config(&db, &topics, &sink, &[]));
    let store = app::store(&cfg).await.expect("store");
    store.upsert_tenant(&TenantId::parse("acme").unwrap(), "Acme").await.unwrap();

    // 30 good jobs over three domains, plus two that must be dead-lettered.
    let domains = ["a.example", "b.example", "c.example"];
    let mut jobs: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| {
            let d = domains[i % 3];
            (d.to_owned(), serde_json::to_vec(&job(i, "acme", "spring", d)).unwrap())
        })
        .collect();
    jobs.push(("x.example".into(), b"{not json".to_vec()));
    let mut inj = job(99, "acme", "spring", "a.example");
    inj["to"]["name"] = "Eve\r\nBcc: all@example.com".into();
    jobs.push(("a.example".into(), serde_json::to_vec(&inj).unwrap()));
    assert_eq!(app::enqueue(&cfg, &jobs).await.expect("enqueue"), 32);

    let stop = CancellationToken::new();
    let worker = spawn_worker(cfg.clone(), stop.clone());

    eventually("30 jobs sent and 2 dead-lettered", Duration::from_secs(60), || async {
        ledger(&store, "acme", "spring").await.get("sent") == Some(&30)
            && store.dead_letter_count().await.unwrap() == 2
    })
    .await;

    // The sink got each message exactly once, with the Message-IDs the ledger recorded.
    let sink_ids: Vec<String> = sink.message_ids();
    assert_eq!(sink_ids.len(), 30, "messages on the sink");
    let unique: HashSet<&String> = sink_ids.iter().collect();
    assert_eq!(unique.len(), 30, "no duplicate deliveries");
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
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
    let records = read_topic(&topics.events, 32, Duration::from_secs(30));
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
    let dlq = read_topic(&topics.dlq, 2, Duration::from_secs(30));
    let reasons: HashSet<&str> =
        dlq.iter().map(|r| r.headers.get("mailpipe-reason").map(String::as_str).unwrap_or("")).collect();
    assert_eq!(reasons, HashSet::from(["malformed", "header_injection"]));

    // Offsets: every record committed, once its outcome was stored.
    let group = cfg.queue.kafka.group_id.clone();
    wait_committed("the first group", &group, &topics.send, 3, 32, Duration::from_secs(15)).await;

    stop.cancel();
    worker.await.unwrap().expect("worker stops cleanly");

    // A second consumer group re-reads every job (as after lost offsets):
    // nothing is sent twice, and each outcome is re-published with its id.
    let cfg2 = Arc::new(config(&db, &topics, &sink, &[]));
    let stop2 = CancellationToken::new();
    let worker2 = spawn_worker(cfg2.clone(), stop2.clone());
    let group2 = cfg2.queue.kafka.group_id.clone();
    wait_committed("the second group", &group2, &topics.send, 3, 32, Duration::from_secs(60)).await;
    stop2.cancel();
    worker2.await.unwrap().expect("second worker stops cleanly");
    assert_eq!(sink.message_ids().len(), 30, "redelivery sent nothing again");
    // Ask for more than should exist, so that extra records would show.
    let again = read_topic(&topics.events, 65, Duration::from_secs(8));
    let ids: HashSet<String> =
        again.iter().map(|r| serde_json::from_slice::<Event>(&r.payload).unwrap().event_id).collect();
    assert_eq!(again.len(), 64, "each of the 32 outcomes published once more, no other events");
    assert_eq!(ids.len(), 32, "re-published events carry the same event ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_is_stored_only_after_the_outcome_is_durable() {
    let db = fresh_database().await;
    let topics = fresh_topics(1).await;
    let sink = SmtpSink::start(&[]);
    let cfg = Arc::new(config(&db, &topics, &sink, &[]));
    let store = app::store(&cfg).await.expect("store");
    store.upsert_tenant(&TenantId::parse("acme").unwrap(), "Acme").await.unwrap();

    // A simulated store outage for one job: recording its outcome fails.
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION block_job() RETURNS trigger AS $$ BEGIN
           IF NEW.job_id = 'job-00002' AND NEW.status = 'sent' THEN RAISE EXCEPTION 'simulated outage'; END IF;
           RETURN NEW; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER block BEFORE UPDATE ON send_ledger FOR EACH ROW EXECUTE FUNCTION block_job();",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let jobs: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| ("a.example".to_owned(), serde_json::to_vec(&job(i, "acme", "c1", "a.example")).unwrap()))
        .collect();
    app::enqueue(&cfg, &jobs).await.expect("enqueue");
    let stop = CancellationToken::new();
    let worker = spawn_worker(cfg.clone(), stop.clone());

    eventually("jobs 0, 1, 3, 4 recorded", Duration::from_secs(60), || async {
        ledger(&store, "acme", "c1").await.get("sent") == Some(&4)
    })
    .await;
    // Job 2 was delivered but its outcome is not durable: the position must
    // stay at 2 however long we wait (auto-commit runs every second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let group = cfg.queue.kafka.group_id.clone();
    assert_eq!(
        committed(&group, &topics.send, 1).get(&0).copied(),
        Some(2),
        "position held at the unfinished job"
    );
    assert_eq!(ledger(&store, "acme", "c1").await.get("sending"), Some(&1), "job 2 still in flight");

    // The outage ends: job 2's outcome is recorded (not re-sent) and the position moves past all five.
    sqlx::raw_sql("DROP TRIGGER block ON send_ledger").execute(&mut conn).await.unwrap();
    eventually("all five committed", Duration::from_secs(30), || async {
        committed(&group, &topics.send, 1).get(&0).copied() == Some(5)
    })
    .await;
    assert_eq!(ledger(&store, "acme", "c1").await.get("sent"), Some(&5));
    assert_eq!(sink.message_ids().len(), 5, "job 2 was delivered once, its outcome retried, not its send");

    stop.cancel();
    worker.await.unwrap().expect("worker stops cleanly");
}
