//! Signed webhooks (issue 17, item 3), against real HTTP receivers that
//! fail, hang and answer slowly, with the real broker, PostgreSQL and
//! smtp-sink: every event reaches its tenant's endpoints at least once,
//! signed as Standard Webhooks do, with the same id on every retry; a
//! tenant's hanging endpoint does not hold another tenant's deliveries; an
//! endpoint that fails its whole retry schedule is disabled and its tenant
//! told; a rotated secret signs beside the new one; and a URL into the
//! platform's own network is refused.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use mailpipe_core::TenantId;
use mailpipe_tests::*;
use mailpipe_webhooks::Secret;
use serde_json::{Value, json};

async fn post(addr: &str, key: &str, path: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let headers = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
    let r = http(addr, "POST", path, &headers, &serde_json::to_vec(body).unwrap()).await;
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

/// The requests' verdicts against `secret`: each verifies, its timestamp
/// is now, and its body is the tenant's event.
fn check_signed(requests: &[WebhookRequest], secret: &Secret, tenant: &str) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for r in requests {
        let (id, ts, sig) =
            (r.id.as_deref().unwrap(), r.timestamp.as_deref().unwrap(), r.signature.as_deref().unwrap());
        let ts: i64 = ts.parse().unwrap();
        assert!((now - ts).abs() < 300, "webhook-timestamp {ts} is now");
        assert!(secret.verifies(sig, id, ts, r.body.as_bytes()), "request {} verifies: {sig}", r.n);
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["data"]["tenant_id"], tenant, "only {tenant}'s events: {}", r.body);
        assert_eq!(
            format!("msg_{}", body["data"]["event_id"].as_str().unwrap()),
            id,
            "the id is the event's"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_each_tenants_endpoints_signed_at_least_once_and_a_hanging_one_holds_no_other() {
    let port = loopback_port();
    let addr = format!("127.0.0.1:{port}");
    let env = TestEnv::setup()
        .tenants(&["acme", "globex"])
        .vars(&[
            ("MAILPIPE__ANALYTICS__LISTEN", addr.as_str()),
            ("MAILPIPE__WEBHOOKS__ALLOWED_NETWORKS", "[\"127.0.0.0/8\"]"),
            ("MAILPIPE__WEBHOOKS__ALLOW_HTTP", "true"),
            ("MAILPIPE__WEBHOOKS__TIMEOUT_SECS", "2"),
            ("MAILPIPE__WEBHOOKS__RETRY_SCHEDULE_SECS", "[1, 1, 2]"),
            ("MAILPIPE__WEBHOOKS__POLL_MS", "100"),
            ("MAILPIPE__WEBHOOKS__PER_ENDPOINT_IN_FLIGHT", "2"),
        ])
        .var("MAILPIPE__ANALYTICS__GROUP_ID", unique("analytics"))
        .start()
        .await;
    let analytics = env.start_analytics().await;
    let acme_key = env.store.create_api_key(&TenantId::parse("acme").unwrap(), "hooks").await.unwrap();
    let globex_key = env.store.create_api_key(&TenantId::parse("globex").unwrap(), "hooks").await.unwrap();

    let (flaky, down, hang) =
        (WebhookReceiver::start("flaky"), WebhookReceiver::start("down"), WebhookReceiver::start("hang"));
    let api = mailpipe_tests::openapi::OpenApi::load();
    let (status, flaky_ep) =
        post(&addr, &acme_key, "/api/v1/webhooks", &json!({"url": flaky.url("/acme")})).await;
    assert_eq!(status, 201, "{flaky_ep}");
    api.assert_answer("POST", "/api/v1/webhooks", 201, &flaky_ep);
    let flaky_secret = Secret::parse_whsec(flaky_ep["secret"].as_str().unwrap()).unwrap();
    let (status, down_ep) =
        post(&addr, &acme_key, "/api/v1/webhooks", &json!({"url": down.url("/"), "events": ["sent"]})).await;
    assert_eq!(status, 201, "{down_ep}");
    let (status, hang_ep) =
        post(&addr, &globex_key, "/api/v1/webhooks", &json!({"url": hang.url("/")})).await;
    assert_eq!(status, 201, "{hang_ep}");

    // Globex sends first: its events' deliveries hang at its endpoint.
    let mut jobs = campaign_jobs(0..20, "globex", "g", &["a.example"]);
    jobs.extend(campaign_jobs(100..120, "acme", "a", &["b.example"]));
    env.enqueue(&jobs).await;
    let worker = env.start_worker();
    env.wait_ledger("acme", "a", "sent", 20, Duration::from_secs(60)).await;

    // Every acme event reaches its endpoint, though the first attempts fail
    // or hang and globex's endpoint hangs on every request.
    let want: HashSet<String> = {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT 'msg_' || event_id FROM events WHERE tenant_id = 'acme'")
                .fetch_all(&mut env.pg().await)
                .await
                .unwrap();
        ids.into_iter().collect()
    };
    assert_eq!(want.len(), 20, "one sent event per acme job");
    eventually("acme's 20 events delivered", Duration::from_secs(45), || async {
        let ok: HashSet<String> = flaky
            .requests()
            .into_iter()
            .filter(|r| r.status == 200 && !r.hung)
            .filter_map(|r| r.id)
            .collect();
        want.is_subset(&ok)
    })
    .await;
    let got = flaky.requests();
    check_signed(&got, &flaky_secret, "acme");
    // The failed and hung attempts were retried under the same id.
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *per_id.entry(r.id.clone().unwrap()).or_default() += 1;
    }
    let retried: Vec<&WebhookRequest> = got.iter().filter(|r| r.n <= 3).collect();
    for r in &retried {
        let id = r.id.as_ref().unwrap();
        assert!(per_id[id] >= 2, "{id} failed at first and was tried again under the same id");
    }
    // Globex's receiver got its own events only, and hangs still.
    assert!(!hang.requests().is_empty(), "globex's endpoint was tried");
    for r in hang.requests() {
        assert!(!r.body.contains("\"tenant_id\":\"acme\""), "no acme event at globex's endpoint");
    }

    // The endpoint that always fails: disabled after its schedule, and
    // acme's other endpoint is told.
    let down_id = down_ep["id"].as_str().unwrap().to_owned();
    eventually("the failing endpoint disabled", Duration::from_secs(60), || async {
        let (status, list) = api_get(&addr, "/api/v1/webhooks", &acme_key).await;
        api.assert_answer("GET", "/api/v1/webhooks", status, &list);
        status == 200
            && list["webhooks"].as_array().unwrap().iter().any(|w| {
                // Disabled, its other deliveries closed with it.
                w["id"] == down_id.as_str()
                    && w["disabled_reason"] == "persistent_failure"
                    && w["deliveries"]["pending"].is_null()
                    && w["deliveries"]["failed"].as_i64() == Some(20)
            })
    })
    .await;
    eventually("acme told of it by webhook", Duration::from_secs(30), || async {
        flaky
            .requests()
            .iter()
            .any(|r| r.body.contains("\"type\":\"webhook_disabled\"") && r.body.contains(&down_id))
    })
    .await;
    assert!(down.requests().len() >= 4, "the first attempt and three retries: {}", down.requests().len());

    // A rotation: both secrets sign for the overlap.
    let flaky_id = flaky_ep["id"].as_str().unwrap();
    let (status, rotated) =
        post(&addr, &acme_key, &format!("/api/v1/webhooks/{flaky_id}/rotate"), &json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    api.assert_answer("POST", "/api/v1/webhooks/{id}/rotate", 200, &rotated);
    let new_secret = Secret::parse_whsec(rotated["secret"].as_str().unwrap()).unwrap();
    let before = flaky.requests().len();
    env.enqueue(&campaign_jobs(200..201, "acme", "after", &["b.example"])).await;
    eventually("the next event delivered", Duration::from_secs(60), || async {
        flaky
            .requests()
            .iter()
            .skip(before)
            .any(|r| r.status == 200 && r.body.contains("\"campaign_id\":\"after\""))
    })
    .await;
    let next = flaky
        .requests()
        .into_iter()
        .skip(before)
        .find(|r| r.body.contains("\"campaign_id\":\"after\""))
        .unwrap();
    check_signed(std::slice::from_ref(&next), &new_secret, "acme");
    check_signed(std::slice::from_ref(&next), &flaky_secret, "acme");
    assert_eq!(
        next.signature.as_deref().unwrap().split(' ').count(),
        2,
        "two signatures while the old one overlaps"
    );

    // Another tenant's endpoint cannot be touched.
    let r = http(
        &addr,
        "DELETE",
        &format!("/api/v1/webhooks/{flaky_id}"),
        &[("Authorization", format!("Bearer {globex_key}").as_str())],
        b"",
    )
    .await;
    assert_eq!(r.status, 404, "globex cannot remove acme's endpoint");

    worker.stop().await;
    analytics.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_url_into_the_platforms_network_or_malformed_is_refused() {
    let port = loopback_port();
    let addr = format!("127.0.0.1:{port}");
    let env = TestEnv::setup()
        .vars(&[
            ("MAILPIPE__ANALYTICS__LISTEN", addr.as_str()),
            ("MAILPIPE__WEBHOOKS__MAX_ENDPOINTS_PER_TENANT", "1"),
        ])
        .var("MAILPIPE__ANALYTICS__GROUP_ID", unique("analytics"))
        .start()
        .await;
    let analytics = env.start_analytics().await;
    let key = env.store.create_api_key(&TenantId::parse("acme").unwrap(), "hooks").await.unwrap();
    let api = mailpipe_tests::openapi::OpenApi::load();
    for (body, want) in [
        (json!({"url": "http://hooks.example.com/"}), "must be https"),
        (json!({"url": "https://127.0.0.1/"}), "link-local or reserved"),
        (json!({"url": "https://localhost:8443/"}), "link-local or reserved"),
        (json!({"url": "https://169.254.169.254/latest/meta-data"}), "link-local or reserved"),
        (json!({"url": "https://[::1]/"}), "link-local or reserved"),
        (json!({"url": "https://10.0.0.7/"}), "link-local or reserved"),
        (json!({"url": "https://user:pw@hooks.example.com/"}), "credentials"),
        (json!({"url": "ftp://hooks.example.com/"}), "not an absolute http(s) URL"),
        (json!({"url": "https://93.184.215.14/", "events": ["sent", "teleported"]}), "not an event type"),
        (json!({"url": "https://93.184.215.14/", "secret": "mine"}), "unknown field"),
    ] {
        let (status, answer) = post(&addr, &key, "/api/v1/webhooks", &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        api.assert_answer("POST", "/api/v1/webhooks", 400, &answer);
        assert!(answer["error"].as_str().unwrap_or_default().contains(want), "{body}: {answer}");
    }
    let count = || async {
        let (_, list) = api_get(&addr, "/api/v1/webhooks", &key).await;
        list["webhooks"].as_array().map_or(usize::MAX, Vec::len)
    };
    assert_eq!(count().await, 0, "nothing refused was kept");
    // A public address literal needs no DNS: accepted, up to the cap.
    let (status, answer) =
        post(&addr, &key, "/api/v1/webhooks", &json!({"url": "https://93.184.215.14/hook"})).await;
    assert_eq!(status, 201, "{answer}");
    assert!(answer["secret"].as_str().unwrap().starts_with("whsec_"));
    let (status, answer) =
        post(&addr, &key, "/api/v1/webhooks", &json!({"url": "https://93.184.215.15/hook"})).await;
    assert_eq!(status, 409, "{answer}");
    api.assert_answer("POST", "/api/v1/webhooks", 409, &answer);
    let r = http(&addr, "GET", "/api/v1/webhooks", &[], b"").await;
    assert_eq!(r.status, 401, "a key is needed");
    analytics.stop().await;
}
