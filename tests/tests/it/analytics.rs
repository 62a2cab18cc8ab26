//! Analytics, tenants and privacy against real PostgreSQL (and SQLite):
//! idempotent aggregates, the tenant API under row-level security, the
//! dashboard in a browser, erasure, retention and suppression import.

use std::process::Command;
use std::time::Duration;

use mailpipe_analytics::complaint::complaint;
use mailpipe_core::{
    CampaignId, Category, ClientInfo, Event, EventType, JobId, Reason, Scope, SendJob, TenantId, Verdict,
    VerdictClass,
};
use mailpipe_store::{DeadLetter, LedgerStatus, Retention, Store};
use mailpipe_tests::*;
use mailpipe_token::RecipientHasher;
use sqlx::Connection;

fn ev(kind: EventType, tenant: &str, campaign: &str, job: &str, disc: &str) -> Event {
    let mut e = Event::for_job(
        kind,
        &TenantId::parse(tenant).unwrap(),
        &CampaignId::parse(campaign).unwrap(),
        &JobId::parse(job).unwrap(),
        disc,
    );
    e.provider = Some("google".into());
    e
}

fn with_verdict(mut e: Event, class: VerdictClass) -> Event {
    e.verdict = Some(Verdict { class, reason: "test".into() });
    e.client = Some(ClientInfo { ip: Some("203.0.113.0/24".into()), ua_family: "chrome".into() });
    e
}

/// A small campaign's events: 3 sent, 1 deferred, 1 bounced; 3 opens by
/// one job (2 human, 1 machine) and 1 by another; 2 human clicks on one
/// link and 1 machine click on another; an unsubscribe.
fn campaign(tenant: &str, c: &str) -> Vec<Event> {
    let mut v = vec![
        ev(EventType::Sent, tenant, c, "j1", ""),
        ev(EventType::Sent, tenant, c, "j2", ""),
        ev(EventType::Sent, tenant, c, "j3", ""),
        ev(EventType::Deferred, tenant, c, "j4", "1"),
        // Refused at once on the second attempt (not a bounce that came
        // back later: it has an attempt).
        {
            let mut b = ev(EventType::Bounced, tenant, c, "j4", "");
            b.attempt = Some(2);
            b
        },
        with_verdict(ev(EventType::Open, tenant, c, "j1", "a"), VerdictClass::Human),
        with_verdict(ev(EventType::Open, tenant, c, "j1", "b"), VerdictClass::Human),
        with_verdict(ev(EventType::Open, tenant, c, "j1", "c"), VerdictClass::Machine),
        with_verdict(ev(EventType::Open, tenant, c, "j2", "a"), VerdictClass::Human),
        ev(EventType::Unsubscribe, tenant, c, "j3", ""),
    ];
    for (job, disc, url, class) in [
        ("j1", "x", "https://shop.example/a", VerdictClass::Human),
        ("j2", "y", "https://shop.example/a", VerdictClass::Human),
        ("j2", "z", "https://shop.example/b", VerdictClass::Machine),
    ] {
        let mut e = with_verdict(ev(EventType::Click, tenant, c, job, disc), class);
        e.url = Some(url.into());
        v.push(e);
    }
    v
}

async fn sqlite_store() -> (Store, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("{}.db", unique("analytics")));
    let store = Store::connect(&format!("sqlite:{}", path.display()), 4).await.unwrap();
    store.migrate().await.unwrap();
    (store, path)
}

/// The recipient hasher of the test keys.
fn hasher() -> RecipientHasher {
    test_keys().hasher
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_count_each_event_once_on_postgres_and_sqlite() {
    let pg = fresh_store().await;
    let (lite, path) = sqlite_store().await;
    for store in [pg.store.clone(), lite] {
        let acme = TenantId::parse("acme").unwrap();
        let events = campaign("acme", "spring");
        assert_eq!(store.apply_events(&events).await.unwrap(), events.len());
        // Redelivered: nothing counts twice.
        assert_eq!(store.apply_events(&events).await.unwrap(), 0, "{}", store.backend());
        let s = store.campaign_stats(&acme, "spring").await.unwrap().unwrap();
        let m = |k: &str| s.totals.get(k).copied().unwrap_or(0);
        let got = [
            m("sent"),
            m("deferred"),
            m("bounced"),
            m("opens"),
            m("opens_human"),
            m("unique_opens"),
            m("clicks"),
            m("clicks_human"),
            m("unique_clicks"),
            m("unsubscribes"),
            m("provider:google:sent"),
        ];
        assert_eq!(got, [3, 1, 1, 4, 3, 2, 3, 2, 2, 1, 3], "{}: {:?}", store.backend(), s.totals);
        assert_eq!(s.links[0], ("https://shop.example/a".to_owned(), 2, 2));
        assert_eq!(s.hourly.values().map(|h| h.get("opens").copied().unwrap_or(0)).sum::<i64>(), 4);
    }
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_only_its_own_data_enforced_by_the_database_too() {
    let TestStore { store, db } = fresh_store().await;
    let (acme, globex) = (TenantId::parse("acme").unwrap(), TenantId::parse("globex").unwrap());
    for t in [&acme, &globex] {
        store.upsert_tenant(t, t.as_str()).await.unwrap();
    }
    store.apply_events(&campaign("acme", "spring")).await.unwrap();
    store.apply_events(&campaign("globex", "secret-launch")).await.unwrap();
    let acme_key = store.create_api_key(&acme, "test").await.unwrap();
    let revoked = store.create_api_key(&acme, "old").await.unwrap();
    assert!(store.revoke_api_key(&revoked).await.unwrap());
    let (addr, server) = serve_api(store.clone()).await;
    let get = |path: &str, key: Option<&str>| {
        let (addr, path, key) = (addr.clone(), path.to_owned(), key.map(|k| format!("Bearer {k}")));
        async move {
            let h: Vec<(&str, &str)> = key.as_deref().map(|k| vec![("Authorization", k)]).unwrap_or_default();
            http(&addr, "GET", &path, &h, b"").await
        }
    };

    assert_eq!(get("/api/v1/campaigns", None).await.status, 401);
    assert_eq!(get("/api/v1/campaigns", Some("mp_nonsense")).await.status, 401);
    assert_eq!(get("/api/v1/campaigns", Some(&revoked)).await.status, 401, "a revoked key");
    let r = get("/api/v1/campaigns", Some(&acme_key)).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("spring") && !r.text().contains("secret-launch"), "{}", r.text());
    let r = get("/api/v1/campaigns/spring/stats", Some(&acme_key)).await;
    assert_eq!(r.status, 200);
    let stats: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(stats["totals"]["sent"], 3);
    // Another tenant's campaign is as absent as a missing one.
    let theirs = get("/api/v1/campaigns/secret-launch/stats", Some(&acme_key)).await;
    let missing = get("/api/v1/campaigns/no-such-thing/stats", Some(&acme_key)).await;
    assert_eq!((theirs.status, theirs.body.clone()), (404, missing.body.clone()));

    // The database enforces it even for a query that forgets the tenant,
    // on a connection of the services' role.
    let mut conn = sqlx::PgConnection::connect(&service_url(&db)).await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query("SET LOCAL ROLE mailpipe_api").execute(&mut *tx).await.unwrap();
    sqlx::query("SELECT set_config('mailpipe.tenant', 'acme', true)").execute(&mut *tx).await.unwrap();
    let tenants: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM campaign_counters")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenants, ["acme"], "row-level security hides globex's rows");
    let links: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM campaign_links").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(links, 2, "acme's two links only");
    tx.rollback().await.unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_in_a_browser_with_the_api_figures() {
    let TestStore { store, db: _db } = fresh_store().await;
    let acme = TenantId::parse("acme").unwrap();
    store.upsert_tenant(&acme, "Acme").await.unwrap();
    store.apply_events(&campaign("acme", "spring")).await.unwrap();
    let key = store.create_api_key(&acme, "dash").await.unwrap();
    let (addr, server) = serve_api(store.clone()).await;
    let bearer = format!("Bearer {key}");
    let page = http(&addr, "GET", "/dashboard/campaigns/spring", &[("Authorization", &bearer)], b"").await;
    assert_eq!(page.status, 200);
    let html = page.text();
    let stats = store.campaign_stats(&acme, "spring").await.unwrap().unwrap();
    for (k, v) in &stats.totals {
        if !k.contains(':') && html.contains(&format!("id=\"m-{k}\"")) {
            assert!(html.contains(&format!("id=\"m-{k}\">{v}<")), "{k} = {v} on the page");
        }
    }
    assert!(html.matches("<svg").count() >= 5, "funnel, time series, verdicts, providers, links");
    // The key is never taken from a URL: that is the sign-in form, 401.
    let by_url = http(&addr, "GET", &format!("/dashboard/campaigns/spring?key={key}"), &[], b"").await;
    assert_eq!(by_url.status, 401);
    assert!(by_url.text().contains("action=/dashboard/login") && !by_url.text().contains("m-sent"));
    // A wrong key is refused with the form again; no cookie.
    let wrong = http(
        &addr,
        "POST",
        "/dashboard/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"key=mp_wrong&next=/dashboard/campaigns/spring",
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.header("set-cookie"), None);
    // Another site's page cannot sign a visitor in.
    let forged = http(
        &addr,
        "POST",
        "/dashboard/login",
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Origin", "https://evil.example")],
        format!("key={key}").as_bytes(),
    )
    .await;
    assert_eq!(forged.status, 403);
    assert_eq!(forged.header("set-cookie"), None);
    // Signing in elsewhere than the dashboard is not possible.
    let body = format!("key={key}&next=https://evil.example/");
    let ok = http(
        &addr,
        "POST",
        "/dashboard/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(ok.status, 303);
    assert_eq!(ok.header("location"), Some("/dashboard/overview"));
    let cookie = ok.header("set-cookie").unwrap_or_default();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(cookie.contains(attr), "{cookie}");
    }

    // A real browser signs in through the form and sees the page.
    let dir = std::path::PathBuf::from(
        std::env::var("MAILPIPE_ARTIFACTS").unwrap_or_else(|_| "/var/tmp/mailpipe-artifacts".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/support/dashboard.mjs");
    let page_url = format!("http://{addr}/dashboard/campaigns/spring");
    let out = tokio::task::spawn_blocking({
        let (shot, key, page_url) = (shot.clone(), key.to_string(), page_url.clone());
        move || {
            Command::new("node")
                .args(["--experimental-websocket", script, &page_url, &key])
                .arg(&shot)
                .output()
        }
    })
    .await
    .unwrap()
    .expect("node runs (apt-get install nodejs)");
    assert!(out.status.success(), "browser driver failed: {}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(seen["before"].as_str().unwrap().contains("Sign in"), "{seen}");
    assert_eq!(seen["url"], page_url.as_str(), "back on the page asked for: {seen}");
    assert_eq!(seen["cookieSeenByScripts"], "", "the key is out of page scripts' reach: {seen}");
    assert!(seen["svgs"].as_u64().unwrap() >= 5, "{seen}");
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 20_000, "a real rendering, not a blank page: {} bytes", png.len());
    println!("dashboard screenshot: {}", shot.display());
    server.abort();
}

/// Runs one job through the real store path, leaving the address in the
/// ledger, an open event with client details, and a dead letter.
async fn seed_personal_data(store: &Store, address: &str) {
    let acme = TenantId::parse("acme").unwrap();
    store.upsert_tenant(&acme, "Acme").await.unwrap();
    let mut j = job(1, "acme", "spring", "example.com");
    j["to"]["email"] = address.into();
    let payload = serde_json::to_vec(&j).unwrap();
    let sj = SendJob::from_json(&payload).unwrap();
    claim(store, &sj).await;
    let sent = ev(EventType::Sent, "acme", "spring", "job-00001", "");
    store.finish("acme", "job-00001", LedgerStatus::Sent, Some("250 ok"), &sent).await.unwrap();
    let open = with_verdict(ev(EventType::Open, "acme", "spring", "job-00001", "o"), VerdictClass::Human);
    store.insert_events(&[open]).await.unwrap();
    let dl = DeadLetter {
        source: "mailpipe.send.v1/0/9".into(),
        reason: "header_injection".into(),
        detail: "x".into(),
        tenant_id: Some("acme".into()),
        job_id: Some("job-00002".into()),
        payload,
    };
    store.dead_letter(&dl, &ev(EventType::DeadLettered, "acme", "spring", "job-00002", "")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_old_events_client_details_and_ledger_rows() {
    let TestStore { store, db } = fresh_store().await;
    let now = mailpipe_core::now_ms();
    let day = 86_400_000;
    let mut old = with_verdict(ev(EventType::Open, "acme", "c", "j1", "old"), VerdictClass::Human);
    old.occurred_at = time::OffsetDateTime::from_unix_timestamp((now - 40 * day) / 1000).unwrap();
    let mut mid = with_verdict(ev(EventType::Open, "acme", "c", "j1", "mid"), VerdictClass::Human);
    mid.occurred_at = time::OffsetDateTime::from_unix_timestamp((now - 10 * day) / 1000).unwrap();
    let fresh = with_verdict(ev(EventType::Open, "acme", "c", "j1", "new"), VerdictClass::Human);
    store.insert_events(&[old, mid, fresh]).await.unwrap();
    let r = Retention {
        events_days: 30,
        ledger_days: 90,
        client_details_days: 7,
        dead_letters_days: 30,
        rejected_reports_days: 30,
        webhook_deliveries_days: 7,
        template_versions_days: 90,
        purge_interval_hours: 0,
    };
    store.reject_report("not_arf", b"To: someone@example.com\r\n").await.unwrap();
    let rep = store.purge(now, r).await.unwrap();
    assert_eq!((rep.events_deleted, rep.client_details_removed), (1, 2), "{rep:?}");
    assert_eq!(rep.rejected_reports_deleted, 0, "a fresh rejected report is kept");
    let mut conn = platform_connection(&db).await;
    let left: Vec<String> = sqlx::query_scalar("SELECT payload FROM events ORDER BY occurred_at")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(left.len(), 2);
    assert!(!left[0].contains("\"client\""), "10 days old: client details gone: {}", left[0]);
    assert!(left[1].contains("\"client\""), "today: kept");
    let again = store.purge(now, r).await.unwrap();
    assert_eq!((again.events_deleted, again.client_details_removed), (0, 0), "idempotent");
    let later = store.purge(now + 31 * day, r).await.unwrap();
    assert_eq!(later.rejected_reports_deleted, 1, "a rejected report goes past its retention: {later:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_csv_import_names_its_lines_and_a_tenant_lifts_only_what_it_added() {
    let TestStore { store, db: _db } = fresh_store().await;
    let acme = Scope::Tenant(TenantId::parse("acme").unwrap());
    let import = |text: &'static str| {
        let (store, acme) = (store.clone(), acme.clone());
        async move { mailpipe_analytics::csv::import(&store, &hasher(), text, &acme).await }
    };
    let bad = "email,reason,applies_to\na@example.com,manual,all\nnope,manual,all\nb@example.com,manual,sometimes\n";
    match import(bad).await {
        Err(mailpipe_analytics::csv::ImportError::BadLines(lines)) => {
            assert_eq!(lines.iter().map(|l| l.line).collect::<Vec<_>>(), [3, 4]);
        }
        other => panic!("a bad CSV must name its bad lines: {other:?}"),
    }
    assert!(store.list_suppressions(&acme).await.unwrap().is_empty());
    assert_eq!(import("a@example.com,manual,all\nb@example.com,unsubscribe,marketing\n").await.unwrap(), 2);
    assert_eq!(store.list_suppressions(&acme).await.unwrap().len(), 2);

    // The same over the API, into the caller's scope only.
    let globex = TenantId::parse("globex").unwrap();
    store.upsert_tenant(&globex, "Globex").await.unwrap();
    let key = store.create_api_key(&globex, "csv").await.unwrap();
    let auth = format!("Bearer {key}");
    let (addr, server) = serve_api(store.clone()).await;
    let r = http(
        &addr,
        "POST",
        "/api/v1/suppressions.csv",
        &[("Authorization", &auth)],
        b"c@example.com,manual,all\nbroken\n",
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(r.text().contains("\"line\":2"), "{}", r.text());
    assert!(
        store.list_suppressions(&Scope::Tenant(globex.clone())).await.unwrap().is_empty(),
        "nothing partial"
    );
    let r = http(
        &addr,
        "POST",
        "/api/v1/suppressions.csv",
        &[("Authorization", &auth)],
        b"c@example.com,manual,all\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let export = http(&addr, "GET", "/api/v1/suppressions.csv", &[("Authorization", &auth)], b"").await;
    let lines: Vec<&str> = std::str::from_utf8(&export.body).unwrap().lines().collect();
    assert_eq!(lines.len(), 2, "header and globex's one row, none of acme's: {lines:?}");
    assert!(lines[1].starts_with("globex,") && !lines[1].contains("c@example.com"));
    let del =
        http(&addr, "DELETE", "/api/v1/suppressions/c@example.com", &[("Authorization", &auth)], b"").await;
    assert_eq!(del.status, 204);

    // What a recipient asked for is not the tenant's to lift: an unsubscribe
    // on its own list (even one it imported), or any platform-wide entry.
    let r = http(
        &addr,
        "POST",
        "/api/v1/suppressions.csv",
        &[("Authorization", &auth)],
        b"d@example.com,unsubscribe,marketing
",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = hasher().hash("e@example.com");
    store.add_suppression(&mailpipe_core::Suppression::unsubscribe(&acme_id(), e)).await.unwrap();
    store
        .add_suppression(&mailpipe_core::Suppression::hard_bounce(&acme_id(), hasher().hash("f@example.com")))
        .await
        .unwrap();
    for (address, reason) in [("d", "unsubscribe"), ("e", "unsubscribe"), ("f", "hard_bounce")] {
        let path = format!("/api/v1/suppressions/{address}@example.com");
        let del = http(&addr, "DELETE", &path, &[("Authorization", &auth)], b"").await;
        assert_eq!(del.status, 403, "{address}: {}", del.text());
        assert!(del.text().contains(reason), "{}", del.text());
    }
    let g = hasher().hash("d@example.com");
    assert!(store.suppression(&g, &globex, Category::Marketing).await.unwrap().is_some(), "still suppressed");
    assert!(store.suppression(&e, &globex, Category::Marketing).await.unwrap().is_some(), "still suppressed");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_kafka_become_campaign_stats_end_to_end() {
    let env = TestEnv::setup()
        .partitions(2)
        .var("MAILPIPE__ANALYTICS__LISTEN", format!("127.0.0.1:{}", loopback_port()))
        .var("MAILPIPE__ANALYTICS__GROUP_ID", unique("analytics"))
        .start()
        .await;
    let acme = TenantId::parse("acme").unwrap();
    env.enqueue(&campaign_jobs(0..20, "acme", "c", &["a.example"])).await;
    let worker = env.start_worker();
    let cfg = env.config();
    let stop = tokio_util::sync::CancellationToken::new();
    let analytics = tokio::spawn({
        let stop = stop.clone();
        async move { mailpipe::app::run_analytics(&cfg, stop).await }
    });
    eventually("20 sent in the aggregates", Duration::from_secs(60), || async {
        env.store.campaign_stats(&acme, "c").await.unwrap().is_some_and(|s| s.totals.get("sent") == Some(&20))
    })
    .await;
    worker.stop().await;
    stop.cancel();
    analytics.await.unwrap().unwrap();
}

fn arf(reference: &str, with_feedback_part: bool) -> Vec<u8> {
    let feedback = if with_feedback_part {
        "--b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: isp-fbl/1.0\r\nVersion: 1\r\n\r\n"
    } else {
        ""
    };
    format!(
        "From: fbl@isp.example\r\nTo: fbl@platform.example\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n\
         {feedback}--b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: news@sender.example\r\n\
         X-Mailpipe-Ref: {reference}\r\nFeedback-ID: spring:acme:marketing:mailpipe\r\n\r\n--b--\r\n"
    )
    .into_bytes()
}

/// The signed reference of a job, as the worker writes it.
fn signed(tenant: &str, job: &str) -> String {
    hasher().references().sign(&TenantId::parse(tenant).unwrap(), &mailpipe_core::JobId::parse(job).unwrap())
}

/// A report whose free text quotes a valid reference while its original
/// message (the headers part) carries none: a reader that searched the
/// whole report would take it.
fn arf_quoting_in_text(reference: &str) -> Vec<u8> {
    format!(
        "From: fbl@isp.example\r\nTo: fbl@platform.example\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nX-Mailpipe-Ref: {reference}\r\n\
         --b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\n\r\n\
         --b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: news@sender.example\r\n\r\n--b--\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arf_complaint_suppresses_marketing_everywhere_and_bad_reports_are_kept() {
    let TestStore { store, db } = fresh_store().await;
    let address = "complainer@example.com";
    seed_personal_data(&store, address).await;
    let (tenant, job) =
        complaint(&store, &hasher(), None, &arf(&signed("acme", "job-00001"), true)).await.unwrap();
    assert_eq!((tenant.as_str(), job.as_str()), ("acme", "job-00001"));
    let globex = TenantId::parse("globex").unwrap();
    let s = store.suppression(&hasher().hash(address), &globex, Category::Marketing).await.unwrap().unwrap();
    assert_eq!((s.reason, s.scope), (Reason::Complaint, Scope::Platform), "marketing, for every tenant");
    assert_eq!(
        store.suppression(&hasher().hash(address), &globex, Category::Transactional).await.unwrap(),
        None,
        "a complaint, as an unsubscribe, leaves receipts and account notices"
    );
    assert_eq!(store.event_counts("acme", "spring").await.unwrap().get("complaint"), Some(&1));

    // A second recipient, whom forged reports try to have suppressed.
    let victim = "victim@example.com";
    let mut j = mailpipe_tests::job(2, "acme", "spring", "example.com");
    j["to"]["email"] = victim.into();
    claim(&store, &SendJob::from_json(&serde_json::to_vec(&j).unwrap()).unwrap()).await;
    let stolen_tag = signed("acme", "job-00001").rsplit('/').next().unwrap().to_owned();
    for (report, reason) in [
        (arf(&signed("acme", "job-00001"), false), "not_arf"),
        (arf(&signed("acme", "no-such-job"), true), "unknown_message"),
        (arf("not a reference", true), "bad_reference"),
        // The unsigned form of before, and a tag moved to another job.
        (arf("acme/job-00002", true), "bad_reference"),
        (arf(&format!("acme/job-00002/{stolen_tag}"), true), "forged_reference"),
        (arf_quoting_in_text(&signed("acme", "job-00002")), "no_reference"),
    ] {
        let e = complaint(&store, &hasher(), None, &report).await.unwrap_err().to_string();
        assert!(e.contains(reason), "{e}");
    }
    assert_eq!(
        store.suppression(&hasher().hash(victim), &globex, Category::Marketing).await.unwrap(),
        None,
        "no forged report suppresses anyone"
    );
    assert_eq!(store.event_counts("acme", "spring").await.unwrap().get("complaint"), Some(&1));
    let mut conn = platform_connection(&db).await;
    let kept: Vec<String> = sqlx::query_scalar("SELECT reason FROM rejected_reports ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        kept,
        ["not_arf", "unknown_message", "bad_reference", "bad_reference", "forged_reference", "no_reference"]
    );
}

fn acme_id() -> TenantId {
    TenantId::parse("acme").unwrap()
}

/// The tenant API is on the internet too: a request must be done within
/// its timeout, and connections are capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_times_out_slow_requests_and_caps_connections() {
    let env = TestEnv::setup().no_relay().start().await;
    let addr = format!("127.0.0.1:{}", loopback_port());
    let mut api = env.service_process(
        "analytics",
        &[
            ("MAILPIPE__ANALYTICS__LISTEN", &addr),
            ("MAILPIPE__ANALYTICS__GROUP_ID", &unique("analytics")),
            ("MAILPIPE__ANALYTICS__REQUEST_TIMEOUT_SECS", "1"),
            ("MAILPIPE__ANALYTICS__HEADER_READ_TIMEOUT_SECS", "30"),
            ("MAILPIPE__ANALYTICS__MAX_CONNECTIONS", "1"),
        ],
    );
    eventually("the API is up", Duration::from_secs(30), || async {
        try_http(&addr, "GET", "/healthz", &[], b"").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    // A tenant's body that never arrives in full: 408 after the request timeout.
    let key = env.store.create_api_key(&TenantId::parse("acme").unwrap(), "slow").await.unwrap();
    let head = format!(
        "POST /api/v1/suppressions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {key}\r\nContent-Length: 100\r\n\r\n{{\"email\""
    );
    let status = status_line(&addr, head.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 408 Request Timeout"));
    // Without a key, the body is never waited for: 401 at once.
    let nokey = b"POST /api/v1/suppressions.csv HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n";
    let status = status_line(&addr, nokey, Duration::from_millis(800)).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 401 Unauthorized"), "answered before the request timeout");
    // One silent client holds the only connection; the next waits for it.
    let idle = eventually_connected(&addr).await;
    assert_served_only_after(&addr, || drop(idle)).await;
    assert!(api.terminate(Duration::from_secs(20)).await.success());
}

/// A connection the server has accepted: a request on it is answered.
async fn eventually_connected(addr: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The 408's connection frees its slot when the server closes it; a
    // keep-alive request shows this one holds the slot now.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = vec![0; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.expect("served").unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    c
}

/// The tenant overview, in the API and on the dashboard alike: each
/// campaign's rates (all and human side by side), its streams' breaker
/// state with the reason, and the daily volume per organisational From
/// domain (subdomains counted together, days apart), on both stores; no
/// figure of another tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_rates_streams_and_daily_volume_per_organisational_domain() {
    let TestStore { store, db: _db } = fresh_store().await;
    let (lite, path) = sqlite_store().await;
    let acme = TenantId::parse("acme").unwrap();
    let day_ms = 86_400_000;
    let today = mailpipe_core::now_ms() / day_ms * day_ms;
    let sent_as = |job: &str, domain: &str, days_ago: i64, tenant: &str| {
        let mut e = ev(EventType::Sent, tenant, "volume", job, "");
        e.sender_domain = Some(domain.to_owned());
        e.occurred_at =
            time::OffsetDateTime::from_unix_timestamp((today - days_ago * day_ms) / 1000 + 60).unwrap();
        e
    };
    let mut events = campaign("acme", "spring");
    // A third recipient opened, by machine only: all opens rise, human do not.
    events.push(with_verdict(ev(EventType::Open, "acme", "spring", "j3", "m"), VerdictClass::Machine));
    events.extend([
        sent_as("v1", "news.acme.example", 0, "acme"),
        sent_as("v2", "shop.acme.example", 0, "acme"),
        sent_as("v3", "acme.example", 0, "acme"),
        sent_as("v4", "news.acme.example", 1, "acme"),
        sent_as("v5", "mail.acme-offers.co.uk", 0, "acme"),
        sent_as("v6", "news.acme.example", 40, "acme"),
        sent_as("g1", "globex.example", 0, "globex"),
        // v1's recipient bounced after the relay accepted it.
        ev(EventType::Bounced, "acme", "volume", "v1", "async"),
    ]);
    events.extend(campaign("globex", "secret"));
    for s in [&store, &lite] {
        s.upsert_tenant(&acme, "Acme").await.unwrap();
        s.apply_events(&events).await.unwrap();
        let o = s.overview(&acme, 30, mailpipe_core::now_ms()).await.unwrap();
        let volume: Vec<(i64, &str, i64)> = o
            .daily_volume
            .iter()
            .map(|v| ((today - v.day) / day_ms, v.org_domain.as_str(), v.sent))
            .collect();
        assert_eq!(
            volume,
            [(0, "acme-offers.co.uk", 1), (0, "acme.example", 3), (1, "acme.example", 1)],
            "{}: newest day first; 40 days ago is outside 30; globex's are not acme's",
            s.backend()
        );
    }
    let _ = std::fs::remove_file(path);
    store
        .pause_stream(
            &mailpipe_store::StreamKey::domain(&acme, "news.acme.example"),
            "complaint rate 0.50% over 24h",
            1,
        )
        .await
        .unwrap();

    let key = store.create_api_key(&acme, "overview").await.unwrap();
    let (addr, server) = serve_api(store.clone()).await;
    let (status, o) = api_get(&addr, "/api/v1/overview", &key).await;
    assert_eq!(status, 200, "{o}");
    let campaigns = o["campaigns"].as_array().unwrap();
    assert_eq!(campaigns.len(), 2, "spring and volume, not globex's: {o}");
    let spring = campaigns.iter().find(|c| c["campaign_id"] == "spring").unwrap();
    assert_eq!(spring["delivered"], 3);
    assert_eq!(spring["bounce_rate"], 0.25, "1 bounce in 4 attempts");
    let volume = campaigns.iter().find(|c| c["campaign_id"] == "volume").unwrap();
    assert!(
        (volume["bounce_rate"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-9,
        "a bounce that came back later is one of the 6 delivered, not a 7th attempt: {volume}"
    );
    assert_eq!((spring["unique_opens"].as_i64(), spring["unique_opens_human"].as_i64()), (Some(3), Some(2)));
    assert_eq!(spring["open_rate"], 1.0);
    assert!((spring["open_rate_human"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(spring["complaint_rate"], 0.0);
    assert_eq!(o["streams"][0]["domain"], "news.acme.example");
    assert_eq!(o["streams"][0]["state"], "paused");
    assert!(!o.to_string().contains("globex"), "nothing of another tenant: {o}");
    assert_eq!(api_get(&addr, "/api/v1/overview?days=0", &key).await.0, 400);
    let (_, week) = api_get(&addr, "/api/v1/overview?days=1", &key).await;
    assert_eq!(week["daily_volume"].as_array().unwrap().len(), 2, "today only: {week}");

    let bearer = format!("Bearer {key}");
    let page = http(&addr, "GET", "/dashboard/overview", &[("Authorization", &bearer)], b"").await;
    assert_eq!(page.status, 200);
    let html = page.text();
    for (id, text) in [
        ("c-spring-delivered", "3"),
        ("c-spring-bounce_rate", "25.0% (1)"),
        ("c-spring-open_rate", "100.0% (3)"),
        ("c-spring-open_rate_human", "66.7% (2)"),
        ("c-spring-unsubscribe_rate", "33.3% (1)"),
        ("stream-news.acme.example", "paused"),
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id} on the page");
        assert!(html.contains(&format!(">{text}<")), "{id} = {text} on the page");
    }
    assert!(html.contains("complaint rate 0.50% over 24h"), "the reason is shown");
    let today_s = time::OffsetDateTime::from_unix_timestamp(today / 1000).unwrap().date().to_string();
    assert!(html.contains(&format!("id=\"v-{today_s}-acme.example\">3<")), "the day's volume");
    assert!(!html.contains("globex"));
    assert_eq!(http(&addr, "GET", "/dashboard/overview", &[], b"").await.status, 401, "signed in only");
    server.abort();
}
