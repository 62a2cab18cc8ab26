//! The single-node mode (issue 17, item 5): `mailpipe serve`, one process
//! on one SQLite file with the durable queue in it, no Kafka and no
//! PostgreSQL. `enqueue` and the send API queue to it; the worker, the
//! tracker and analytics all run in it; and kill -9 mid-campaign loses
//! nothing and sends nothing twice, as on the Kafka path.

use std::collections::HashSet;
use std::time::Duration;

use mailpipe_core::TenantId;
use mailpipe_tests::*;
use serde_json::{Value, json};

fn write_jobs(node: &SingleNode, name: &str, jobs: &[(String, Vec<u8>)]) -> String {
    let path = node.dir.join(name);
    let mut text = Vec::new();
    for (_, payload) in jobs {
        text.extend_from_slice(payload);
        text.push(b'\n');
    }
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn up(what: &str, addr: &str) {
    eventually(what, Duration::from_secs(30), || async {
        try_http(addr, "GET", "/healthz", &[], b"").await.is_ok_and(|r| r.status == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sends_what_enqueue_and_the_send_api_queue_tracks_and_counts_on_one_file() {
    let node = SingleNode::setup(&["acme"]).await;
    // Queued before the node runs: a scheduler needs no running server.
    let file =
        write_jobs(&node, "jobs.jsonl", &campaign_jobs(0..100, "acme", "cli", &["a.example", "b.example"]));
    let out = node.cli(&["enqueue", &file]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("enqueued 100 job(s) to the store's queue"));
    assert_eq!(node.count("SELECT COUNT(*) FROM send_queue").await, 100, "durable before anything runs");

    let mut serve = node.serve();
    up("the API", &node.api).await;
    up("the tracker", &node.tracker).await;
    node.wait_finished(100, &mut serve, Duration::from_secs(60), "sending the enqueued jobs").await;

    // The send API on the same queue, with a job for later; and a webhook
    // endpoint for the events from now on.
    let key = node.store.create_api_key(&TenantId::parse("acme").unwrap(), "send").await.unwrap();
    let auth = format!("Bearer {key}");
    let receiver = WebhookReceiver::start("ok");
    let hook = serde_json::to_vec(&json!({"url": receiver.url("/"), "events": ["sent"]})).unwrap();
    let headers = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
    let r = http(&node.api, "POST", "/api/v1/webhooks", &headers, &hook).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Job ids are per tenant: these are not the enqueued ones.
    let mut items: Vec<Value> = (200..220).map(|i| job(i, "acme", "api", "c.example")).collect();
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let mut later = job(250, "acme", "later", "c.example");
    later["send_at"] = json!(at.format(&time::format_description::well_known::Rfc3339).unwrap());
    items.push(later);
    let body = serde_json::to_vec(&json!({ "messages": items })).unwrap();
    let r = http(&node.api, "POST", "/api/v1/messages", &headers, &body).await;
    let answer: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert_eq!((r.status, answer["accepted"].as_u64()), (202, Some(21)), "{}", r.text());
    node.wait_finished(121, &mut serve, Duration::from_secs(60), "sending the API's jobs").await;
    let sent_at: Vec<(i64,)> =
        node.rows("SELECT updated_at FROM send_ledger WHERE campaign_id = 'later'").await;
    let at_ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap();
    assert!(sent_at[0].0 >= at_ms, "sent {} ms before its send_at", at_ms - sent_at[0].0);
    for (campaign, n) in [("cli", 100), ("api", 20), ("later", 1)] {
        assert_eq!(node.ledger("acme", campaign).await.get("sent"), Some(&n), "{campaign}");
    }
    assert_eq!(node.sink().message_ids_once().len(), 121, "each job once");
    // Their sent events came by webhook too, from the same process.
    let want: HashSet<String> = node
        .rows::<(String,)>(
            "SELECT 'msg_' || event_id FROM events WHERE type = 'sent' AND campaign_id IN ('api', 'later')",
        )
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(want.len(), 21);
    eventually("the 21 sent events by webhook", Duration::from_secs(30), || async {
        let ids: HashSet<String> = receiver.requests().into_iter().filter_map(|r| r.id).collect();
        want.is_subset(&ids)
    })
    .await;
    eventually("the finished jobs leave the queue", Duration::from_secs(10), || async {
        node.count("SELECT COUNT(*) FROM send_queue").await == 0
    })
    .await;

    // The tracker in the same process: a one-click unsubscribe (RFC 8058)
    // is stored, and the worker suppresses that recipient's next mail.
    let message = node
        .sink()
        .messages()
        .into_iter()
        .find(|m| m.contains("user207@c.example"))
        .expect("the message to user207");
    let url = list_unsubscribe(&message).into_iter().find(|u| u.starts_with("http")).expect("an http link");
    let target = url.strip_prefix(&format!("http://{}", node.tracker)).unwrap().to_owned();
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = http(&node.tracker, "POST", &target, &form, b"List-Unsubscribe=One-Click").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The worker's filter follows the store (every 100 ms here): a job for
    // the recipient at a time, until one is suppressed.
    let mut tries = 0;
    eventually("a job after the unsubscribe is suppressed", Duration::from_secs(30), || {
        tries += 1;
        let mut again = job(207, "acme", "again", "c.example");
        again["job_id"] = json!(format!("again-{tries}"));
        let body = serde_json::to_vec(&json!({ "messages": [again] })).unwrap();
        let (node, headers) = (&node, &headers);
        async move {
            let r = http(&node.api, "POST", "/api/v1/messages", headers, &body).await;
            assert_eq!(r.status, 202, "{}", r.text());
            tokio::time::sleep(Duration::from_millis(300)).await;
            node.ledger("acme", "again").await.contains_key("suppressed")
        }
    })
    .await;
    // And once suppressed, every later job to them is.
    let mut last = job(207, "acme", "again", "c.example");
    last["job_id"] = json!("again-last");
    let body = serde_json::to_vec(&json!({ "messages": [last] })).unwrap();
    let r = http(&node.api, "POST", "/api/v1/messages", &headers, &body).await;
    assert_eq!(r.status, 202, "{}", r.text());
    eventually("the last job suppressed", Duration::from_secs(30), || async {
        node.count("SELECT COUNT(*) FROM send_ledger WHERE job_id = 'again-last' AND status = 'suppressed'")
            .await
            == 1
    })
    .await;

    // One consumer per file: a second worker on it refuses to start.
    let second = node.cli(&["worker"]);
    assert_eq!(second.status.code(), Some(1), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("run one per file"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // Analytics in the same process counted the stored events.
    eventually("the campaigns counted", Duration::from_secs(30), || async {
        let (status, v) = api_get(&node.api, "/api/v1/campaigns/cli/stats", &key).await;
        status == 200 && v["totals"]["sent"].as_i64() == Some(100)
    })
    .await;

    let status = serve.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "SIGTERM ends serve cleanly: {status:?}");
}

/// Kafka-free chaos: kill -9 `mailpipe serve` several times during a
/// campaign queued in its SQLite file, then let a last run finish it. The
/// same invariants as `crash.rs` on the Kafka path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_mid_campaign_loses_nothing_and_sends_nothing_twice() {
    let (jobs_total, kills) = (chaos_size("JOBS", 1500), chaos_size("KILLS", 3));
    let node = SingleNode::setup(&["acme"]).await;
    let jobs = campaign_jobs(0..jobs_total, "acme", "crash", &["a.example", "b.example", "c.example"]);
    let out = node.cli(&["enqueue", &write_jobs(&node, "crash.jsonl", &jobs)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let kill_points: Vec<i64> = (1..=kills).map(|k| (jobs_total * 13 * k / (20 * kills)) as i64).collect();
    for (round, &at) in kill_points.iter().enumerate() {
        let mut serve = node.serve();
        node.wait_finished(at, &mut serve, Duration::from_secs(120), &format!("in round {round}")).await;
        serve.kill_9();
    }
    let mut last = node.serve();
    let patience = Duration::from_secs(60) + Duration::from_millis(20 * jobs_total as u64);
    node.wait_finished(jobs_total as i64, &mut last, patience, "before the campaign finished").await;
    // The last run reads what the killed ones left in the queue (replays)
    // and removes it; then it stops cleanly.
    eventually("the queue empties", Duration::from_secs(60), || async {
        node.count("SELECT COUNT(*) FROM send_queue").await == 0
    })
    .await;
    let status = last.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "SIGTERM ends serve cleanly: {status:?}");

    let rows: Vec<(String, String, Option<String>)> =
        node.rows("SELECT job_id, status, message_id FROM send_ledger").await;
    assert_eq!(rows.len(), jobs_total);
    assert!(rows.iter().all(|r| r.1 == "sent"), "every job sent");
    assert_eq!(
        node.count("SELECT COUNT(*) FROM events WHERE type = 'sent'").await,
        jobs_total as i64,
        "one terminal event per job"
    );
    let unique_on_sink = node.sink().message_ids_once();
    let in_doubt: HashSet<String> = node
        .rows::<(String,)>(
            "SELECT l.message_id FROM send_ledger l JOIN events e ON e.tenant_id = l.tenant_id AND e.job_id = l.job_id
             WHERE e.type = 'sent' AND e.payload LIKE '%\"reason\":\"in_doubt\"%'",
        )
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    let ledger_ids: HashSet<String> = rows.iter().filter_map(|r| r.2.clone()).collect();
    let missing = missing_only_in_doubt(&unique_on_sink, &ledger_ids, &in_doubt);
    eprintln!(
        "single-node crash test: {jobs_total} jobs, {kills} kill -9, {} on the sink, {} in doubt, {missing} in doubt and not delivered",
        unique_on_sink.len(),
        in_doubt.len(),
    );
}
