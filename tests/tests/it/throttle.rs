//! The worker paces sends to a rate-limited domain, and other domains are
//! not held up by it.

use std::time::Duration;

use mailpipe_tests::dns::{TestZone, dns_server};
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

/// Company domains hosted by one provider (their MX hosts under
/// `google.com`, published in the real DNS server) share that provider's
/// limit, as gmail.com would; a domain with MX hosts of its own does not.
/// Their events name the provider found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_hosted_by_one_provider_share_its_limit_found_by_mx() {
    let zone = TestZone::new();
    let (c1, c2, own) = (zone.name("c1"), zone.name("c2"), zone.name("own"));
    zone.add(&c1, "MX", "10 aspmx.l.google.com.");
    zone.add(&c2, "MX", "5 alt2.aspmx.l.google.com.");
    zone.add(&own, "MX", &format!("10 mx.{own}."));
    let env = TestEnv::setup().toml("[throttle.limits]\ngoogle = \"1/h\"\n").start().await;
    let mut jobs = campaign_jobs(0..4, "acme", "hosted", &[c1.as_str(), c2.as_str()]);
    jobs.extend(campaign_jobs(10..13, "acme", "own", &[own.as_str()]));
    env.enqueue(&jobs).await;
    let worker = env.start_worker();
    env.wait_ledger("acme", "own", "sent", 3, Duration::from_secs(60)).await;
    env.wait_ledger("acme", "hosted", "deferred", 3, Duration::from_secs(60)).await;
    assert_eq!(
        env.ledger("acme", "hosted").await.get("sent"),
        Some(&1),
        "one send an hour for google, shared"
    );
    worker.stop().await;

    let providers: Vec<(String, String)> = sqlx::query_as(
        "SELECT campaign_id, payload::jsonb->>'provider' FROM events WHERE type = 'sent' ORDER BY campaign_id",
    )
    .fetch_all(&mut env.pg().await)
    .await
    .unwrap();
    let want = |c: &str, p: &str| (c.to_owned(), p.to_owned());
    assert_eq!(
        providers,
        [want("hosted", "google"), want("own", "other"), want("own", "other"), want("own", "other")]
    );
}

/// The answer is kept for its TTL (clamped to `max_ttl_secs`), not asked
/// again per message, and asked again once it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_found_by_mx_is_cached_for_its_ttl() {
    let zone = TestZone::new();
    let moved = zone.name("moved");
    zone.add(&moved, "MX", "10 aspmx.l.google.com.");
    let dns = format!("[\"{}\"]", dns_server());
    let vars = [("MAILPIPE__PROVIDERS__NAMESERVERS".to_owned(), dns)];
    let mut settings = mailpipe::Config::load(None, vars).unwrap().providers;
    settings.max_ttl = Duration::from_secs(2);
    settings.min_ttl = Duration::from_secs(1);
    let providers = mailpipe_domains::Providers::new(&settings, &Default::default()).unwrap();
    assert_eq!(providers.group(&moved).await.as_deref(), Some("google"));
    assert_eq!(providers.known(&moved).as_deref(), Some("google"));
    // The domain moves to Microsoft 365: within the TTL the cached answer
    // holds, after it the new one is found.
    zone.delete(&moved, "MX");
    zone.add(&moved, "MX", "10 moved.mail.protection.outlook.com.");
    assert_eq!(providers.group(&moved).await.as_deref(), Some("google"), "cached");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(providers.known(&moved), None, "expired");
    assert_eq!(providers.group(&moved).await.as_deref(), Some("microsoft"));
    // A name without MX, and one the server will not answer for: no group.
    assert_eq!(providers.group(&zone.name("nothing")).await, None);
    assert_eq!(providers.group("gmail.com").await, None, "REFUSED by the test server: no group, no wait");
}
