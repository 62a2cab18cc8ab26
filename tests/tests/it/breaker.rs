//! The reputation circuit breaker: complaints over 0.3% of a tenant's
//! delivered mail (or of one of its sending domains') pause its marketing
//! stream (or that domain's), while its transactional mail, its other
//! domains and another tenant's marketing keep going; after `mailpipe
//! tenant resume`, the held jobs go out exactly once.

use std::time::Duration;

use mailpipe_core::{CampaignId, Event, EventType, JobId, TenantId};
use mailpipe_store::StreamKey;
use mailpipe_tests::*;

/// `n` delivered messages of `tenant` sent as `domain` (to `provider`'s
/// users, if given), and `complaints` complaints, as the events table
/// records them.
async fn history(
    env: &TestEnv,
    tenant: &str,
    domain: &str,
    provider: Option<&str>,
    n: usize,
    complaints: usize,
) {
    let (t, c) = (TenantId::parse(tenant).unwrap(), CampaignId::parse("last-week").unwrap());
    let mut events = Vec::new();
    for i in 0..n {
        let j = JobId::parse(format!("old-{domain}-{}-{i}", provider.unwrap_or("-"))).unwrap();
        let kinds =
            if i < complaints { &[EventType::Sent, EventType::Complaint][..] } else { &[EventType::Sent] };
        for &kind in kinds {
            let mut e = Event::for_job(kind, &t, &c, &j, "");
            e.sender_domain = Some(domain.to_owned());
            e.provider = provider.map(str::to_owned);
            events.push(e);
        }
    }
    env.store.insert_events(&events).await.unwrap();
}

/// A test env whose breaker looks every second, judges from 200 delivered
/// messages and rechecks held jobs every second.
fn quick_breaker() -> Setup {
    TestEnv::setup().vars(&[
        ("MAILPIPE__BREAKER__EVALUATE_EVERY_SECS", "1"),
        ("MAILPIPE__BREAKER__MIN_DELIVERED", "200"),
        ("MAILPIPE__BREAKER__RECHECK_SECS", "1"),
    ])
}

/// A marketing job of `tenant` sent as `domain`.
fn marketing_as(i: usize, tenant: &str, campaign: &str, domain: &str) -> (String, Vec<u8>) {
    let mut j = job(i, tenant, campaign, "a.example");
    j["from"]["email"] = format!("news@{domain}").into();
    keyed(&j)
}

fn transactional(i: usize, tenant: &str) -> (String, Vec<u8>) {
    let mut j = job(i, tenant, "receipts", "a.example");
    j["category"] = "transactional".into();
    keyed(&j)
}

async fn events_of(env: &TestEnv, kind: &str, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE type = $1 AND tenant_id = $2")
        .bind(kind)
        .bind(tenant)
        .fetch_one(&mut env.pg().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complaints_over_the_limit_pause_only_that_tenants_marketing_until_resumed() {
    let env = quick_breaker().tenants(&["acme", "globex"]).start().await;
    // acme: 2 complaints in 400 delivered (0.5%); globex: none in 400.
    history(&env, "acme", TEST_SENDER_DOMAIN, None, 400, 2).await;
    history(&env, "globex", TEST_SENDER_DOMAIN, None, 400, 0).await;
    let worker = env.start_worker();
    let acme = TenantId::parse("acme").unwrap();
    eventually("acme's stream paused", Duration::from_secs(30), || async {
        env.store.paused_streams().await.unwrap() == [StreamKey::tenant(&acme)]
    })
    .await;
    let streams = env.store.streams(None).await.unwrap();
    assert!(streams[0].reason.as_deref().unwrap().contains("complaint rate 0.50% over 24h"), "{streams:?}");
    assert_eq!(streams.len(), 1, "its one domain is held with it, not paused on top: {streams:?}");

    let mut jobs = campaign_jobs(0..3, "acme", "spring", &["a.example"]);
    jobs.extend([transactional(10, "acme"), transactional(11, "acme")]);
    jobs.extend(campaign_jobs(20..22, "globex", "spring", &["a.example"]));
    env.enqueue(&jobs).await;
    eventually("acme's receipts and globex's marketing sent", Duration::from_secs(60), || async {
        env.ledger("acme", "receipts").await.get("sent") == Some(&2)
            && env.ledger("globex", "spring").await.get("sent") == Some(&2)
    })
    .await;
    // Held, several rechecks later: nothing of acme's marketing went out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.ledger("acme", "spring").await.get("sent"), None, "paused marketing is held");
    assert_eq!(env.sink().messages().len(), 4);

    // The operator resumes it: each held job goes out, once.
    let out = env.cli(&["tenant", "resume", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("acme's marketing sent after the resume", Duration::from_secs(60), || async {
        env.ledger("acme", "spring").await.get("sent") == Some(&3)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.sink().messages().len(), 7, "every job exactly once");
    assert!(env.store.paused_streams().await.unwrap().is_empty(), "the old complaints do not pause it again");
    assert_eq!(events_of(&env, "stream_paused", "acme").await, 1, "one pause, however many workers looked");
    assert_eq!(events_of(&env, "stream_resumed", "acme").await, 1);
    assert_eq!(events_of(&env, "stream_paused", "globex").await, 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complaints_on_one_sending_domain_pause_only_that_domains_marketing() {
    let env = quick_breaker().start().await;
    env.add_sender_domain(TEST_OTHER_SENDER_DOMAIN, &["acme"]).await;
    // acme as sender.example: 2 complaints in 400 (0.5%); as the other
    // domain none in 400. acme as a whole: 0.25%, under the limit.
    history(&env, "acme", TEST_SENDER_DOMAIN, None, 400, 2).await;
    history(&env, "acme", TEST_OTHER_SENDER_DOMAIN, None, 400, 0).await;
    let worker = env.start_worker();
    let acme = TenantId::parse("acme").unwrap();
    eventually("sender.example's stream paused", Duration::from_secs(30), || async {
        env.store.paused_streams().await.unwrap() == [StreamKey::domain(&acme, TEST_SENDER_DOMAIN)]
    })
    .await;

    let mut jobs: Vec<_> = (0..3).map(|i| marketing_as(i, "acme", "spring", TEST_SENDER_DOMAIN)).collect();
    jobs.extend((10..12).map(|i| marketing_as(i, "acme", "summer", TEST_OTHER_SENDER_DOMAIN)));
    jobs.push(transactional(20, "acme"));
    env.enqueue(&jobs).await;
    eventually("the other domain's marketing and the receipt sent", Duration::from_secs(60), || async {
        env.ledger("acme", "summer").await.get("sent") == Some(&2)
            && env.ledger("acme", "receipts").await.get("sent") == Some(&1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.ledger("acme", "spring").await.get("sent"), None, "the paused domain's marketing is held");
    assert_eq!(env.store.paused_streams().await.unwrap().len(), 1, "acme as a whole is not paused");

    // What the tenant sees.
    let key = env.store.create_api_key(&acme, "test").await.unwrap();
    let (api, server) = serve_api(env.store.clone()).await;
    let (status, body) = api_get(&api, "/api/v1/stream", &key).await;
    server.abort();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "active", "{body}");
    assert_eq!(body["domains"][0]["domain"], TEST_SENDER_DOMAIN, "{body}");
    assert_eq!(body["domains"][0]["state"], "paused", "{body}");

    let out = env.cli(&["tenant", "resume", "acme", "--domain", TEST_SENDER_DOMAIN]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the held marketing sent after the resume", Duration::from_secs(60), || async {
        env.ledger("acme", "spring").await.get("sent") == Some(&3)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.sink().messages().len(), 6, "every job exactly once");
    assert!(env.store.paused_streams().await.unwrap().is_empty());
    let paused: (i64, Option<String>) =
        sqlx::query_as("SELECT COUNT(*), MAX(sender_domain) FROM events WHERE type = 'stream_paused'")
            .fetch_one(&mut env.pg().await)
            .await
            .unwrap();
    assert_eq!(paused, (1, Some(TEST_SENDER_DOMAIN.to_owned())), "one pause, of the domain's stream");
    assert_eq!(events_of(&env, "stream_resumed", "acme").await, 1);
    worker.stop().await;
}

/// The figures per stream, alike on both stores: a tenant's sums its
/// domains' (and events that name none); an unknown user is a hard bounce
/// too; a refusal of one message is neither; a resume bounds what is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_figures_per_tenant_and_domain_on_postgres_and_sqlite() {
    let pg = fresh_store().await;
    let path = std::env::temp_dir().join(format!("{}.db", unique("figures")));
    let lite = mailpipe_store::Store::connect(&format!("sqlite:{}", path.display()), 4).await.unwrap();
    lite.migrate().await.unwrap();
    let (t, c) = (TenantId::parse("acme").unwrap(), CampaignId::parse("spring").unwrap());
    let event = |kind, i: usize, domain: Option<&str>, reason: Option<&str>| {
        let mut e = Event::for_job(kind, &t, &c, &JobId::parse(format!("j{i}")).unwrap(), "");
        e.sender_domain = domain.map(str::to_owned);
        e.reason = reason.map(str::to_owned);
        e
    };
    let (a, b) = (Some("a.example"), Some("b.example"));
    let mut events = [
        event(EventType::Sent, 1, a, None),
        event(EventType::Sent, 2, a, None),
        event(EventType::Sent, 3, b, None),
        event(EventType::Sent, 4, None, None),
        event(EventType::Bounced, 5, a, Some("user_unknown")),
        event(EventType::Bounced, 6, b, Some("hard_bounce")),
        event(EventType::Bounced, 7, b, Some("rejected")),
        event(EventType::Complaint, 1, a, Some("arf")),
    ];
    // Two sends and the complaint went to Google's users; one to a domain
    // of no provider ("other" is not a stream).
    for i in [0, 1, 7] {
        events[i].provider = Some("google".into());
    }
    events[2].provider = Some("other".into());
    for store in [pg.store.clone(), lite] {
        store.insert_events(&events).await.unwrap();
        let figures = store.stream_figures(0).await.unwrap();
        let f =
            |k: StreamKey| figures.iter().find(|(s, _)| *s == k).map(|(_, f)| f.clone()).unwrap_or_default();
        let whole = f(StreamKey::tenant(&t));
        let (on_a, on_b) = (f(StreamKey::domain(&t, "a.example")), f(StreamKey::domain(&t, "b.example")));
        let got =
            |x: &mailpipe_store::StreamFigures| [x.delivered, x.complaints, x.hard_bounces, x.unknown_users];
        assert_eq!(got(&whole), [4, 1, 2, 1], "{}", store.backend());
        assert_eq!(got(&on_a), [2, 1, 1, 1], "{}", store.backend());
        assert_eq!(got(&on_b), [1, 0, 1, 0], "{}", store.backend());
        assert_eq!(got(&f(StreamKey::provider(&t, "google"))), [2, 1, 0, 0], "{}", store.backend());
        assert_eq!(figures.len(), 4, "{}: tenant, two domains, google: {figures:?}", store.backend());

        // a.example paused and resumed: its figures start again; b's and
        // the tenant's (for what a.example no longer carries) go on.
        let later = mailpipe_core::now_ms() + 1;
        assert!(store.pause_stream(&StreamKey::domain(&t, "a.example"), "test", 1).await.unwrap());
        assert!(!store.pause_stream(&StreamKey::domain(&t, "a.example"), "again", 2).await.unwrap());
        let resumed = store.resume_streams(&t, Some("a.example"), None, later).await.unwrap();
        assert_eq!(resumed, [StreamKey::domain(&t, "a.example")]);
        assert!(
            !store
                .pause_stream(&StreamKey::domain(&t, "a.example"), "read before the resume", later - 1)
                .await
                .unwrap(),
            "figures read before a resume do not undo it"
        );
        let figures = store.stream_figures(0).await.unwrap();
        assert!(figures.iter().all(|(s, _)| s.domain.as_deref() != Some("a.example")), "{figures:?}");
        assert!(
            figures.iter().all(|(s, _)| s.provider.is_none()),
            "google's events were all a.example's, read no more: {figures:?}"
        );
        let whole = figures.iter().find(|(s, _)| s.domain.is_none()).unwrap().1.clone();
        assert_eq!(whole.delivered, 2, "{}", store.backend());
        assert!(store.resume_streams(&t, None, None, later).await.unwrap().is_empty(), "nothing left paused");
    }
    let _ = std::fs::remove_file(path);
}

/// Complaints from one provider's users (its 0.5%, though 0.25% overall)
/// pause the tenant's marketing to that provider only: a company domain
/// whose MX is Google's is held with it; a domain of no provider is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complaints_at_one_provider_pause_only_marketing_to_its_users() {
    let zone = mailpipe_tests::dns::TestZone::new();
    let hosted = zone.name("hosted");
    zone.add(&hosted, "MX", "10 aspmx.l.google.com.");
    let env = quick_breaker().start().await;
    history(&env, "acme", TEST_SENDER_DOMAIN, Some("google"), 400, 2).await;
    history(&env, "acme", TEST_SENDER_DOMAIN, Some("other"), 400, 0).await;
    let worker = env.start_worker();
    let acme = TenantId::parse("acme").unwrap();
    eventually("acme's stream to google paused", Duration::from_secs(30), || async {
        env.store.paused_streams().await.unwrap() == [StreamKey::provider(&acme, "google")]
    })
    .await;
    let mut jobs = campaign_jobs(0..3, "acme", "to-google", &[hosted.as_str()]);
    jobs.extend(campaign_jobs(10..12, "acme", "elsewhere", &["a.example"]));
    env.enqueue(&jobs).await;
    eventually("marketing to a domain of no provider sent", Duration::from_secs(60), || async {
        env.ledger("acme", "elsewhere").await.get("sent") == Some(&2)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        env.ledger("acme", "to-google").await.get("sent"),
        None,
        "marketing to Google's users is held"
    );

    let out = env.cli(&["tenant", "resume", "acme", "--provider", "google"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the held marketing sent after the resume", Duration::from_secs(60), || async {
        env.ledger("acme", "to-google").await.get("sent") == Some(&3)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.sink().messages().len(), 5, "every job exactly once");
    let paused: (i64, Option<String>) =
        sqlx::query_as("SELECT COUNT(*), MAX(provider) FROM events WHERE type = 'stream_paused'")
            .fetch_one(&mut env.pg().await)
            .await
            .unwrap();
    assert_eq!(paused, (1, Some("google".to_owned())), "one pause, of the provider's stream");
    worker.stop().await;
}
