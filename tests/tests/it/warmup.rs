//! Warm-up schedules: a warming domain sends each provider group at most
//! its ramp's cap per window; over it, marketing is parked for a later
//! window and never dropped, transactional mail goes and counts (up to
//! twice the cap); a window that used half its cap moves the ramp on unless
//! the domain's figures are unhealthy.
//! Weeks of it on an injected clock against both stores, then once with a
//! real worker, broker, database and SMTP server.

use std::time::Duration;

use mailpipe_core::{CampaignId, Category, Domain, Event, EventType, JobId, TenantId, WarmupSettings};
use mailpipe_store::{Owner, RampView, Store, StoredKey};
use mailpipe_tests::*;
use mailpipe_worker::breaker::BreakerSettings;
use mailpipe_worker::warmup::{Gate, Warmup};

const DAY: i64 = 86_400_000;
/// Day 0 of the injected clock: a UTC midnight.
const DAY0: i64 = 20_000 * DAY;

fn thresholds() -> BreakerSettings {
    BreakerSettings {
        enabled: true,
        evaluate_every: Duration::from_secs(60),
        min_delivered: 1000,
        complaint_warn: 0.001,
        complaint_pause: 0.003,
        hard_bounce_warn: 0.02,
        hard_bounce_pause: 0.05,
        unknown_user_warn: 0.01,
        unknown_user_pause: 0.03,
        recheck: Duration::from_secs(300),
    }
}

/// A tenant's new domain, warming up as `mailpipe domain add` makes it.
async fn warming_domain(store: &Store, name: &str) {
    let t = TenantId::parse("acme").unwrap();
    let key = StoredKey {
        selector: mailpipe_core::Selector::parse("s1").unwrap(),
        algorithm: mailpipe_core::DkimAlgorithm::Ed25519Sha256,
        state: mailpipe_core::KeyState::Active,
        public_key: "AAAA".into(),
        sealed_key: vec![1, 2, 3],
        created_at: 0,
    };
    let d = Domain::parse(name).unwrap();
    store.add_sending_domain(&d, &Owner::Tenant(t.clone()), &[t], false, &key, 0, true).await.unwrap();
    assert!(store.sending_domain(&d).await.unwrap().unwrap().warmup_from.is_some());
}

/// `n` events of `kind` of mail sent as `domain` at `at`.
async fn record(store: &Store, kind: EventType, domain: &str, at: i64, n: usize, tag: &str) {
    let (t, c) = (TenantId::parse("acme").unwrap(), CampaignId::parse("ramp").unwrap());
    let events: Vec<Event> = (0..n)
        .map(|i| {
            let j = JobId::parse(format!("{tag}-{at}-{i}")).unwrap();
            let mut e = Event::for_job(kind, &t, &c, &j, "");
            e.sender_domain = Some(domain.to_owned());
            e.occurred_at =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000).unwrap();
            e
        })
        .collect();
    store.insert_events(&events).await.unwrap();
}

/// One day of sending at `at`: `transactional` receipts first, then
/// `marketing` newsletters, to Google's users. Returns how many of each went
/// and when the first parked one is due; what went is recorded as sent.
async fn day(
    gate: &Warmup,
    store: &Store,
    domain: &str,
    at: i64,
    transactional: usize,
    marketing: usize,
) -> (usize, usize, Option<i64>) {
    let (mut tx, mut mk, mut first_due) = (0, 0, None);
    for (category, n) in [(Category::Transactional, transactional), (Category::Marketing, marketing)] {
        for _ in 0..n {
            match gate.admit(store, domain, "google", category, at).await.unwrap() {
                Gate::Go if category == Category::Transactional => tx += 1,
                Gate::Go => mk += 1,
                Gate::ParkUntil(due) => {
                    assert_eq!(category, Category::Marketing, "transactional mail is never held");
                    first_due.get_or_insert(due);
                }
            }
        }
    }
    record(store, EventType::Sent, domain, at, tx + mk, "sent").await;
    (tx, mk, first_due)
}

async fn ramp_of(store: &Store, domain: &str, s: &WarmupSettings, now: i64) -> RampView {
    let all = store.warmups(None).await.unwrap();
    let d = all.iter().find(|d| d.domain == domain).unwrap_or_else(|| panic!("{domain} warming: {all:?}"));
    d.providers[0].view(s, now)
}

/// Three weeks of a short ramp (5, 10, 20, 40, then warm) on an injected
/// clock, alike on PostgreSQL and SQLite: each day's cap holds, receipts
/// go past it but count, an idle day is not a day of sending, complaints
/// hold the ramp for as long as they are in the last seven days' figures,
/// and two workers together never pass the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_over_weeks_on_an_injected_clock_on_postgres_and_sqlite() {
    let pg = fresh_store().await;
    let path = std::env::temp_dir().join(format!("{}.db", unique("warmup")));
    let lite = Store::connect(&format!("sqlite:{}", path.display()), 4).await.unwrap();
    lite.migrate().await.unwrap();
    let s = WarmupSettings { ramp: vec![5, 10, 20, 40], min_delivered: 20, ..WarmupSettings::default() };
    for store in [pg.store.clone(), lite] {
        let b = store.backend();
        let domain = "news.acme.example";
        warming_domain(&store, domain).await;
        let gate = Warmup::new(s.clone(), &thresholds());
        let noon = |d: i64| DAY0 + d * DAY + DAY / 2;

        // Day 0: cap 5, two of them receipts; 48 newsletters wait, the
        // first due at the start of day 1.
        assert_eq!(day(&gate, &store, domain, noon(0), 2, 50).await, (2, 3, Some(DAY0 + DAY)), "{b}");
        let v = ramp_of(&store, domain, &s, noon(0)).await;
        assert_eq!((v.state, v.day, v.cap, v.sent, v.parked), ("ramping", 1, Some(5), 5, 47), "{b}: {v:?}");
        // Past the cap, receipts still go (and count), up to twice the cap
        // (the 6th to the 10th); the next one waits as a newsletter does: a
        // flood labelled transactional does not skip the ramp.
        assert_eq!(day(&gate, &store, domain, noon(0) + 1, 5, 0).await.0, 5, "{b}");
        let flood = gate.admit(&store, domain, "google", Category::Transactional, noon(0) + 2).await.unwrap();
        assert!(matches!(flood, Gate::ParkUntil(due) if due >= DAY0 + DAY), "{b}: {flood:?}");
        // Day 1 idle. Day 2: one step on (cap 10), not two. Day 3: cap 20,
        // but a trickle (4): not a day of sending, so day 4 is at 20 again.
        assert_eq!(day(&gate, &store, domain, noon(2), 0, 50).await.1, 10, "{b}");
        assert_eq!(day(&gate, &store, domain, noon(3), 0, 4).await.1, 4, "{b}");
        assert_eq!(day(&gate, &store, domain, noon(4), 0, 50).await.1, 20, "{b}: the trickle held the ramp");
        assert_eq!(ramp_of(&store, domain, &s, noon(4)).await.day, 3, "{b}");
        // Then five complaints (of 44 delivered so far).
        record(&store, EventType::Complaint, domain, noon(4) + 1, 5, "complaint").await;
        // Days 5 to 11: the complaints are in the last seven windows'
        // figures: the ramp holds at 20, and says why.
        for d in 5..=11 {
            assert_eq!(day(&gate, &store, domain, noon(d), 0, 50).await.1, 20, "{b}: day {d} holds");
            let v = ramp_of(&store, domain, &s, noon(d)).await;
            assert_eq!((v.state, v.day), ("holding", 3), "{b}: day {d}: {v:?}");
            assert!(v.held.as_deref().unwrap().contains("complaint rate"), "{b}: {v:?}");
        }
        // Day 12: day 4's complaints are out of the figures: 40.
        assert_eq!(day(&gate, &store, domain, noon(12), 0, 50).await.1, 40, "{b}");
        assert_eq!(ramp_of(&store, domain, &s, noon(12)).await.state, "ramping", "{b}");
        // Day 13: two workers at once (two gates, one store). The ramp is
        // over: warm, everything goes.
        let (w1, w2) = (Warmup::new(s.clone(), &thresholds()), Warmup::new(s.clone(), &thresholds()));
        let (a, c) = tokio::join!(
            day(&w1, &store, domain, noon(13), 0, 60),
            day(&w2, &store, domain, noon(13), 0, 60)
        );
        assert_eq!(a.1 + c.1, 120, "{b}: warm, no cap");
        let v = ramp_of(&store, domain, &s, noon(13)).await;
        assert_eq!((v.state, v.cap), ("warm", None), "{b}: {v:?}");

        // A second domain, two workers on day 0: 5 between them, never more.
        let other = "shop.acme.example";
        warming_domain(&store, other).await;
        let (a, c) =
            tokio::join!(day(&w1, &store, other, noon(0), 0, 40), day(&w2, &store, other, noon(0), 0, 40));
        assert_eq!(a.1 + c.1, 5, "{b}: two workers together keep the cap");
        let v = ramp_of(&store, other, &s, noon(0)).await;
        assert_eq!((v.sent, v.parked), (5, 75), "{b}: {v:?}");

        // Skipped: established, no ramp; started again: day 1.
        let d = Domain::parse(other).unwrap();
        assert!(store.skip_warmup(&d).await.unwrap());
        assert!(store.warmups(None).await.unwrap().iter().all(|w| w.domain != other), "{b}");
        assert!(store.start_warmup(&d, noon(1)).await.unwrap());
        let fresh = Warmup::new(s.clone(), &thresholds());
        assert_eq!(day(&fresh, &store, other, noon(1), 0, 10).await.1, 5, "{b}: back to day 1");
    }
    let _ = std::fs::remove_file(path);
}

/// Against the real services: a worker on Kafka and PostgreSQL sends a
/// warming domain's first day cap (3) to the SMTP server, parks the other
/// newsletters for the next window and lets a receipt through; on the next
/// day (the store's clock moved back a day) 5 go; after a complaint the
/// ramp holds at 5; every job is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warming_domain_sends_its_days_cap_and_the_rest_on_later_days() {
    let port = loopback_port();
    let addr = format!("127.0.0.1:{port}");
    let env = TestEnv::setup()
        .tenants(&["acme", "initech"])
        .vars(&[
            ("MAILPIPE__ANALYTICS__LISTEN", addr.as_str()),
            ("MAILPIPE__WARMUP__RAMP", "[3, 5, 8]"),
            ("MAILPIPE__WARMUP__MIN_DELIVERED", "1"),
            ("MAILPIPE__WORKER__RETRY_POLL_MS", "200"),
        ])
        .var("MAILPIPE__ANALYTICS__GROUP_ID", unique("analytics"))
        .start()
        .await;
    // Only acme may send as the warming domain.
    let acme = TenantId::parse("acme").unwrap();
    env.store.set_domain_tenants(&Domain::parse(TEST_SENDER_DOMAIN).unwrap(), &[acme]).await.unwrap();
    let out = env.cli(&["warmup", "start", TEST_SENDER_DOMAIN]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The ramp's windows are real UTC days: a run that crossed midnight
    // would see its window roll for real. Near one, start after it.
    let left = DAY - mailpipe_core::now_ms().rem_euclid(DAY);
    if left < 180_000 {
        tokio::time::sleep(Duration::from_millis(u64::try_from(left).unwrap() + 1_000)).await;
    }
    let mut jobs = campaign_jobs(0..10, "acme", "launch", &["a.example"]);
    let mut receipt = job(100, "acme", "receipts", "a.example");
    receipt["category"] = "transactional".into();
    jobs.push(keyed(&receipt));
    env.enqueue(&jobs).await;
    let worker = env.start_worker();

    // Day 1: three of the day's cap, one of them possibly the receipt,
    // which goes whatever the cap; the rest wait for the next window.
    eventually("day 1's cap sent, the rest parked", Duration::from_secs(60), || async {
        let l = env.ledger("acme", "launch").await;
        let sent = l.get("sent").copied().unwrap_or(0);
        env.ledger("acme", "receipts").await.get("sent") == Some(&1)
            && sent > 0
            && l.get("deferred") == Some(&(10 - sent))
    })
    .await;
    let sent_day1 = env.ledger("acme", "launch").await.get("sent").copied().unwrap_or(0);
    assert!((2..=3).contains(&sent_day1), "3 in the cap, the receipt among them or not: {sent_day1}");
    let next_window = (mailpipe_core::now_ms() / DAY + 1) * DAY;
    let due: Vec<i64> = sqlx::query_scalar(
        "SELECT next_attempt_at FROM send_ledger WHERE status = 'deferred' AND tenant_id = 'acme'",
    )
    .fetch_all(&mut env.pg().await)
    .await
    .unwrap();
    assert!(due.iter().all(|d| *d >= next_window), "parked for the next window: {due:?} < {next_window}");
    let status = warmup_status(&env);
    // One provider group (whichever a.example's MX makes it).
    let ramp = &status["domains"][0]["providers"][0];
    assert_eq!(status["domains"][0]["providers"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(ramp["day"], 1, "{status}");
    assert_eq!(ramp["cap"], 3, "{status}");
    assert_eq!(ramp["sent"].as_i64().unwrap(), sent_day1 + 1, "the receipt counts: {status}");
    assert_eq!(ramp["parked"].as_i64().unwrap(), 10 - sent_day1, "{status}");

    // The tenant API says the same, as docs/openapi.json describes it; a
    // tenant that may not send as the domain sees no ramp.
    let analytics = env.start_analytics().await;
    let acme_key = env.store.create_api_key(&TenantId::parse("acme").unwrap(), "k").await.unwrap();
    let initech_key = env.store.create_api_key(&TenantId::parse("initech").unwrap(), "k").await.unwrap();
    let (code, body) = api_get(&addr, "/api/v1/warmup", &acme_key).await;
    assert_eq!(code, 200, "{body}");
    mailpipe_tests::openapi::OpenApi::load().assert_answer("GET", "/api/v1/warmup", 200, &body);
    assert_eq!(body["domains"][0]["domain"], TEST_SENDER_DOMAIN, "{body}");
    assert_eq!(body["domains"][0]["providers"], status["domains"][0]["providers"], "{body}");
    assert_eq!(body["days"], 3, "{body}");
    let bearer = format!("Bearer {acme_key}");
    let page = http(&addr, "GET", "/dashboard/domains", &[("Authorization", bearer.as_str())], b"").await;
    let text = page.text();
    let table =
        text.split(&format!("id=\"w-{TEST_SENDER_DOMAIN}\"")).nth(1).unwrap_or_else(|| panic!("{text}"));
    assert!(table.contains("<td>ramping</td><td>1 of 3</td><td>3</td>"), "the dashboard's ramp: {text}");
    let (code, body) = api_get(&addr, "/api/v1/warmup", &initech_key).await;
    assert_eq!((code, body["domains"].as_array().map(Vec::len)), (200, Some(0)), "{body}");
    analytics.stop().await;

    // The next day: the window and the parked jobs' due times a day back.
    next_day(&env).await;
    eventually("day 2's cap of 5 sent", Duration::from_secs(60), || async {
        env.ledger("acme", "launch").await.get("sent") == Some(&(sent_day1 + 5))
    })
    .await;
    let status = warmup_status(&env);
    assert_eq!(status["domains"][0]["providers"][0]["day"], 2, "{status}");
    assert_eq!(status["domains"][0]["providers"][0]["state"], "ramping", "{status}");

    // A complaint about the domain's mail: the next day holds at 5.
    let left = 10 - sent_day1 - 5;
    assert!(left > 0);
    let (t, c) = (mailpipe_core::TenantId::parse("acme").unwrap(), CampaignId::parse("launch").unwrap());
    let mut e = Event::for_job(EventType::Complaint, &t, &c, &JobId::parse("job-00000").unwrap(), "arf");
    e.sender_domain = Some(TEST_SENDER_DOMAIN.into());
    env.store.insert_events(&[e]).await.unwrap();
    next_day(&env).await;
    eventually("the rest sent on day 3, at day 2's cap", Duration::from_secs(60), || async {
        env.ledger("acme", "launch").await.get("sent") == Some(&10)
    })
    .await;
    let status = warmup_status(&env);
    let ramp = &status["domains"][0]["providers"][0];
    assert_eq!(ramp["day"], 2, "held: {status}");
    assert_eq!(ramp["state"], "holding", "{status}");
    assert!(ramp["held"].as_str().unwrap().contains("complaint rate"), "{status}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.sink().messages().len(), 11, "every job once");
    assert_eq!(env.sink().message_ids_once().len(), 11, "none twice");
    worker.stop().await;
}

/// `mailpipe warmup status --json`.
fn warmup_status(env: &TestEnv) -> serde_json::Value {
    let out = env.cli(&["warmup", "status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Moves the store a day on, as far as warm-up can tell: the ramp's window
/// and the parked jobs' due times a day back.
async fn next_day(env: &TestEnv) {
    let mut db = env.pg().await;
    sqlx::query("UPDATE warmup SET window_start = window_start - $1")
        .bind(DAY)
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE send_ledger SET next_attempt_at = $1 WHERE status = 'deferred'")
        .bind(mailpipe_core::now_ms())
        .execute(&mut db)
        .await
        .unwrap();
}
