//! The worker binary's Prometheus endpoint: outcomes by provider group,
//! in-flight and in-doubt figures, consumer lag and the send histogram,
//! all with low-cardinality labels.

use std::time::Duration;

use mailpipe_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_exports_outcomes_lag_and_latency() {
    const N: usize = 40;
    let addr = format!("127.0.0.1:{}", loopback_port());
    let env = TestEnv::setup()
        .partitions(2)
        .var("MAILPIPE__METRICS__LISTEN", &addr)
        .toml("[throttle.groups]\ngoogle = [\"gmail.example\"]\n")
        .start()
        .await;
    env.enqueue(&campaign_jobs(0..N, "acme", "c", &["gmail.example", "other.example"])).await;

    let mut worker = env.worker_process();
    env.wait_ledger("acme", "c", "sent", N, Duration::from_secs(60)).await;
    // Two unsubscribes while it runs: the worker times how long until its
    // filter holds each (the bulk-sender rule is 2 days; this is seconds).
    let acme = mailpipe_core::TenantId::parse("acme").unwrap();
    for who in ["left1@example.com", "left2@example.com"] {
        let entry = mailpipe_core::Suppression::unsubscribe(&acme, test_keys().hasher.hash(who));
        env.store.add_suppression(&entry).await.unwrap();
    }
    // librdkafka reports statistics every 5 s.
    eventually("consumer lag and suppression propagation exported", Duration::from_secs(20), || async {
        let text = http(&addr, "GET", "/metrics", &[], b"").await.text();
        text.contains("mailpipe_consumer_lag{")
            && text.contains("mailpipe_suppression_propagation_seconds_count 2")
    })
    .await;
    let text = http(&addr, "GET", "/metrics", &[], b"").await.text();
    let status = worker.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");

    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing from:\n{text}"))
    };
    assert_eq!(value(r#"mailpipe_jobs_total{outcome="sent",provider="google"}"#), (N / 2) as f64);
    assert_eq!(value(r#"mailpipe_jobs_total{outcome="sent",provider="other"}"#), (N / 2) as f64);
    assert_eq!(value(&format!(r#"mailpipe_consumer_lag{{topic="{}"}}"#, env.topics.send)), 0.0);
    assert_eq!(value("mailpipe_jobs_in_flight"), 0.0);
    assert!(value("mailpipe_send_duration_seconds_count") >= N as f64);
    // Where a job's time goes, step by step (every message here is signed).
    for step in ["claim", "pace", "render", "sign", "smtp", "settle"] {
        let n = value(&format!(r#"mailpipe_step_seconds_count{{step="{step}"}}"#));
        assert!(n >= N as f64, "{step}: {n} observations for {N} jobs");
    }
    let propagation = value("mailpipe_suppression_propagation_seconds_sum") / 2.0;
    assert!(propagation < 10.0, "an unsubscribe reached the worker in {propagation} s on average");
    // No label may carry a recipient, tenant or campaign.
    for l in text.lines().filter(|l| l.starts_with("mailpipe_")) {
        assert!(
            !l.contains("acme") && !l.contains("@") && !l.contains("user1"),
            "high-cardinality label: {l}"
        );
    }
}
