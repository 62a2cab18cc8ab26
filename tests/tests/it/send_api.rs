//! The send API (issue 17, item 1): `POST /api/v1/messages` answers a
//! tenant's batch item by item, in the worker's own words, queues what
//! passes on the send topic keyed by rate-limit key, and the worker sends
//! each job once however often the batch comes, and a job with `send_at`
//! not before its time. Against the real broker,
//! PostgreSQL and smtp-sink, with `mailpipe analytics` serving.

use std::time::Duration;

use mailpipe_core::TenantId;
use mailpipe_tests::*;
use serde_json::{Value, json};

const PATH: &str = "/api/v1/messages";

async fn post(addr: &str, key: Option<&str>, body: &[u8]) -> (u16, Value, String) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let r = http(addr, "POST", PATH, &headers, body).await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_answered_item_by_item_queued_by_rate_limit_key_and_sent_once() {
    let port = loopback_port();
    let addr = format!("127.0.0.1:{port}");
    let env = TestEnv::setup()
        .tenants(&["acme", "globex"])
        .partitions(1)
        .var("MAILPIPE__ANALYTICS__LISTEN", addr.clone())
        .var("MAILPIPE__ANALYTICS__GROUP_ID", unique("analytics"))
        .start()
        .await;
    let analytics = env.start_analytics().await;
    let key = env.store.create_api_key(&TenantId::parse("acme").unwrap(), "send").await.unwrap();

    let good: Vec<Value> = (0..5).map(|i| job(i, "acme", "api", "a.example")).collect();
    let mut unknown_field = job(5, "acme", "api", "a.example");
    unknown_field["subjet"] = json!("typo");
    let mut injection = job(6, "acme", "api", "a.example");
    injection["headers"] = json!({"X-Note": "hi\r\nBcc: someone@evil.example"});
    let other_tenant = job(7, "globex", "api", "a.example");
    let mut items = good.clone();
    items.extend([unknown_field, injection, other_tenant, good[0].clone(), json!("not a job")]);
    let batch = serde_json::to_vec(&json!({ "messages": items })).unwrap();

    let api = mailpipe_tests::openapi::OpenApi::load();
    let (status, body, text) = post(&addr, Some(&key), &batch).await;
    assert_eq!(status, 202, "{text}");
    api.assert_answer("POST", PATH, 202, &body);
    assert_eq!((body["accepted"].as_u64(), body["rejected"].as_u64()), (Some(5), Some(5)), "{text}");
    let results = body["results"].as_array().unwrap();
    let got: Vec<(u64, &str, &str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["job_id"].as_str().unwrap_or("-"),
                r["status"].as_str().unwrap(),
                r["reason"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    let mut want: Vec<(u64, &str, &str, &str)> = vec![
        (0, "job-00000", "accepted", "-"),
        (1, "job-00001", "accepted", "-"),
        (2, "job-00002", "accepted", "-"),
        (3, "job-00003", "accepted", "-"),
        (4, "job-00004", "accepted", "-"),
    ];
    want.extend([
        (5, "job-00005", "rejected", "malformed"),
        (6, "job-00006", "rejected", "header_injection"),
        (7, "job-00007", "rejected", "tenant_mismatch"),
        (8, "job-00000", "rejected", "duplicate_job_id"),
        (9, "-", "rejected", "malformed"),
    ]);
    assert_eq!(got, want, "{text}");
    assert!(results[5]["detail"].as_str().unwrap().contains("subjet"), "{text}");
    assert!(
        !text.contains("@evil.example") && !text.contains("@a.example"),
        "no address in the answer: {text}"
    );

    // On the send topic: the five, byte for byte, keyed by their rate-limit
    // key (the recipient domain: no provider groups configured).
    let records = read_topic(&env.topics.send, 5, Duration::from_secs(20));
    let mut queued: Vec<Value> = records
        .iter()
        .map(|r| {
            assert_eq!(r.key.as_deref(), Some("a.example"));
            serde_json::from_slice(&r.payload).unwrap()
        })
        .collect();
    queued.sort_by_key(|v| v["job_id"].as_str().unwrap_or_default().to_owned());
    assert_eq!(queued, good, "each accepted job once, as it was sent");

    // The worker sends them; the same batch again (a client that lost the
    // answer) is accepted again and sends nothing more.
    let worker = env.start_worker();
    eventually("5 sent", Duration::from_secs(60), || async {
        env.ledger("acme", "api").await.get("sent") == Some(&5)
    })
    .await;
    let (status, body, text) = post(&addr, Some(&key), &batch).await;
    assert_eq!((status, body["accepted"].as_u64()), (202, Some(5)), "{text}");
    wait_committed("the repeats consumed", &env.group, &env.topics.send, 1, 10, Duration::from_secs(60))
        .await;
    assert_eq!(env.ledger("acme", "api").await.get("sent"), Some(&5));
    assert_eq!(env.sink().messages().len(), 5, "each job sent once");

    // A job for later waits on the retry schedule, and goes at its time.
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let mut later = job(20, "acme", "later", "a.example");
    later["send_at"] = json!(at.format(&time::format_description::well_known::Rfc3339).unwrap());
    let (status, body, text) =
        post(&addr, Some(&key), &serde_json::to_vec(&json!({"messages": [later]})).unwrap()).await;
    assert_eq!((status, body["accepted"].as_u64()), (202, Some(1)), "{text}");
    eventually("held, then sent", Duration::from_secs(30), || async {
        env.ledger("acme", "later").await.get("sent") == Some(&1)
    })
    .await;
    let sent_at: i64 = sqlx::query_scalar("SELECT updated_at FROM send_ledger WHERE job_id = 'job-00020'")
        .fetch_one(&mut platform_connection(&env.db.url).await)
        .await
        .unwrap();
    let at_ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap();
    assert!(sent_at >= at_ms, "sent {} ms before its send_at", at_ms - sent_at);
    assert_eq!(env.sink().messages().len(), 6);
    worker.stop().await;

    // Bad requests: a 4xx as documented, and nothing queued.
    let extra = serde_json::to_vec(&json!({"messages": [good[1]], "priority": "high"})).unwrap();
    let many: Vec<Value> = (0..1001).map(|i| job(100 + i, "acme", "api", "a.example")).collect();
    let many = serde_json::to_vec(&json!({ "messages": many })).unwrap();
    let bad: [(Option<&str>, &[u8], u16); 6] = [
        (None, &batch, 401),
        (Some("mp_not_a_key"), &batch, 401),
        (Some(&key), b"{not json", 400),
        (Some(&key), br#"{"messages": []}"#, 400),
        (Some(&key), &extra, 400), // an unknown field in the envelope
        (Some(&key), &many, 413),
    ];
    for (k, body, want) in bad {
        let (status, answer, text) = post(&addr, k, body).await;
        assert_eq!(status, want, "{text}");
        api.assert_answer("POST", PATH, status, &answer);
    }
    let end: i64 = end_offsets(&env.topics.send, 1).values().sum();
    assert_eq!(end, 11, "only the accepted batches are on the send topic");

    analytics.stop().await;
}
