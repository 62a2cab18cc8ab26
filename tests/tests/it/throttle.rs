//! The worker paces sends to a rate-limited domain, and other domains are
//! not held up by it.

use std::time::Duration;

use mailpipe_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_limit_paces_that_domain_only() {
    // 120/m = one every 500 ms for slow.example; fast.example is unlimited.
    let env = TestEnv::setup()
        .partitions(2)
        .toml("[throttle.limits]\n\"slow.example\" = \"120/m\"\n")
        .start()
        .await;
    let mut jobs = campaign_jobs(0..7, "acme", "c", &["slow.example"]);
    jobs.extend(campaign_jobs(100..150, "acme", "c", &["fast.example"]));
    env.enqueue(&jobs).await;
    let worker = env.start_worker();
    env.wait_ledger("acme", "c", "sent", 57, Duration::from_secs(60)).await;
    worker.stop().await;

    let (a, b) = env.send_span("slow.example").await;
    // 7 sends at one per 500 ms take at least 3 s from first to last.
    assert!(b - a >= 2_900, "slow.example went out over {} ms", b - a);
    let (c, d) = env.send_span("fast.example").await;
    assert!(d - c < 2_900, "fast.example was held up: {} ms for 50 messages", d - c);
}
