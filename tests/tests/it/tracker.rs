//! The tracker against real PostgreSQL and Kafka: each endpoint, the
//! verdicts and privacy controls, bad input, and exactly one event per
//! answered request.

use std::sync::Arc;
use std::time::Duration;

use mailpipe_core::{CampaignId, Category, JobId, Scope, TenantId};
use mailpipe_tests::*;
use mailpipe_token::{Action, Claims, Keyring, RecipientRef, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHROME: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

struct Tracker {
    env: TestEnv,
    addr: String,
    ring: Arc<Keyring>,
    running: Running,
}

async fn start(extra: &[(&str, &str)]) -> Tracker {
    let mut setup = TestEnv::setup().no_relay().tracker().tenants(&[]);
    for (k, v) in extra {
        setup = setup.var(k, v);
    }
    let env = setup.start().await;
    let ring = mailpipe::app::keys(&env.config()).unwrap().ring;
    let running = env.start_tracker().await;
    Tracker { addr: env.tracker_addr(), env, ring, running }
}

fn claims(tenant: &str, job: &str, sent_secs_ago: u32, action: Action) -> Claims {
    Claims {
        tenant_id: TenantId::parse(tenant).unwrap(),
        campaign_id: CampaignId::parse("spring").unwrap(),
        job_id: JobId::parse(job).unwrap(),
        category: Category::Marketing,
        sent_at: (mailpipe_core::now_ms() / 1000) as u32 - sent_secs_ago,
        action,
    }
}

impl Tracker {
    fn token(&self, c: &Claims) -> String {
        self.ring.sign(c).unwrap()
    }
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http(&self.addr, "GET", path, headers, b"").await
    }
    async fn events(&self) -> Vec<serde_json::Value> {
        let mut conn = self.env.pg().await;
        let rows: Vec<String> = sqlx::query_scalar("SELECT payload FROM events ORDER BY occurred_at")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        rows.iter().map(|r| serde_json::from_str(r).unwrap()).collect()
    }
    async fn wait_events(&self, n: usize) -> Vec<serde_json::Value> {
        eventually(&format!("{n} events stored"), Duration::from_secs(20), || async {
            self.events().await.len() >= n
        })
        .await;
        // Nothing more arrives than was answered.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.events().await
    }
    async fn stop(self) {
        self.running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pixel_click_and_unsubscribe_record_one_event_each_with_verdicts() {
    let t = start(&[]).await;
    // Open: a GIF that is never cached.
    let open = t.token(&claims("acme", "j1", 3600, Action::Open));
    let r = t.get(&format!("/o/{open}"), &[("User-Agent", CHROME)]).await;
    assert_eq!((r.status, r.header("content-type")), (200, Some("image/gif")));
    assert!(r.header("cache-control").unwrap().contains("no-store"));
    assert_eq!(&r.body[..6], b"GIF89a");
    // Apple's privacy proxy, HEAD, and an opted-out client.
    t.get(&format!("/o/{open}"), &[("User-Agent", "Mozilla/5.0")]).await;
    let head = http(&t.addr, "HEAD", &format!("/o/{open}"), &[("User-Agent", CHROME)], b"").await;
    assert_eq!(head.status, 200);
    t.get(&format!("/o/{open}"), &[("User-Agent", CHROME), ("Sec-GPC", "1")]).await;

    // Click: a 302 to exactly the bound URL.
    let url = "https://shop.example/item/7?utm=a&b=%20c";
    let click = t.token(&claims("acme", "j1", 3600, Action::Click { url: url.into() }));
    let r = t.get(&format!("/c/{click}"), &[("User-Agent", CHROME)]).await;
    assert_eq!((r.status, r.header("location")), (302, Some(url)));
    // A click two seconds after sending is a scanner's.
    let fast = t.token(&claims("acme", "j2", 2, Action::Click { url: url.into() }));
    assert_eq!(t.get(&format!("/c/{fast}"), &[("User-Agent", CHROME)]).await.status, 302);
    // The hidden honeypot link: recorded, and no redirect.
    let hp = t.token(&claims("acme", "j1", 3600, Action::Click { url: format!("http://{}/hp", t.addr) }));
    let r = t.get(&format!("/c/{hp}"), &[("User-Agent", CHROME)]).await;
    assert_eq!((r.status, r.header("location")), (200, None));

    // Unsubscribe: GET only shows the page; POST (twice) unsubscribes once.
    let rref = RecipientRef([7; 16]);
    let unsub = t.token(&claims("acme", "j1", 3600, Action::Unsubscribe { recipient: rref }));
    let page = t.get(&format!("/u/{unsub}"), &[("User-Agent", "Mimecast link checker")]).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<form method=post"), "{}", page.text());
    for _ in 0..2 {
        let r = http(
            &t.addr,
            "POST",
            &format!("/u/{unsub}"),
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"List-Unsubscribe=One-Click",
        )
        .await;
        assert_eq!(r.status, 200);
    }

    let events = t.wait_events(8).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
    assert_eq!((count("open"), count("click"), count("unsubscribe")), (4, 3, 1), "{kinds:?}");
    let verdict = |e: &serde_json::Value| {
        (
            e["verdict"]["class"].as_str().unwrap_or("").to_owned(),
            e["verdict"]["reason"].as_str().unwrap_or("").to_owned(),
        )
    };
    let mut verdicts: Vec<(String, String)> =
        events.iter().filter(|e| e["type"] != "unsubscribe").map(verdict).collect();
    verdicts.sort();
    let want = [
        ("human", "mail_client_or_browser"),
        ("human", "mail_client_or_browser"),
        ("human", "mail_client_or_browser"),
        ("machine", "apple_mail_privacy_protection"),
        ("machine", "click_seconds_after_delivery"),
        ("machine", "head_request"),
        ("machine", "honeypot_link"),
    ];
    assert_eq!(verdicts, want.map(|(a, b)| (a.to_owned(), b.to_owned())));
    // Privacy: the address is truncated, the agent reduced, and opted-out
    // requests keep neither.
    let with_client: Vec<_> = events.iter().filter(|e| e.get("client").is_some()).collect();
    assert_eq!(with_client.len(), 6, "every open and click but the Sec-GPC one");
    for e in &with_client {
        assert_eq!(e["client"]["ip"], "127.0.0.0/24");
        assert!(!e.to_string().contains("Chrome/126"), "no raw user agent stored");
    }
    // The unsubscribe became a platform-wide marketing suppression.
    let mut conn = t.env.pg().await;
    let supp: Vec<(String, String)> = sqlx::query_as("SELECT scope_tenant, applies_to FROM suppressions")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(supp, [(String::new(), "marketing".to_owned())]);
    // And every event is on the events topic too.
    let on_topic = read_topic(&t.env.topics.events, events.len(), Duration::from_secs(20));
    assert_eq!(on_topic.len(), events.len());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_a_4xx_no_event_and_never_a_redirect() {
    let t = start(&[("MAILPIPE__TRACKER__HEADER_READ_TIMEOUT_SECS", "1")]).await;
    let url = "https://shop.example/";
    let good = t.token(&claims("acme", "j1", 3600, Action::Click { url: url.into() }));
    // A key the tracker does not hold (a retired key, or another deployment's).
    let other = Keyring::new(vec![SigningKey { id: 9, secret: vec![9u8; 32].into() }], 9).unwrap();
    let retired = other.sign(&claims("acme", "j1", 3600, Action::Click { url: url.into() })).unwrap();
    let mut tampered = good.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let open = t.token(&claims("acme", "j1", 3600, Action::Open));
    for path in [
        format!("/c/{tampered}"),
        format!("/c/{}", &good[..good.len() - 3]),
        format!("/c/{retired}"),
        "/c/%2F%2Fevil.example".to_owned(),
        "/c/".to_owned() + &"A".repeat(1500),
        format!("/c/{open}"), // an open token is not a click token
        format!("/o/{good}"),
        format!("/u/{good}"),
    ] {
        let r = t.get(&path, &[("User-Agent", CHROME)]).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.header("location"), None);
    }
    assert_eq!(t.get(&format!("/c/{}", "A".repeat(3000)), &[]).await.status, 414);
    let big = "x".repeat(9000);
    assert_eq!(t.get(&format!("/o/{open}"), &[("X-Junk", &big)]).await.status, 431);
    assert_eq!(http(&t.addr, "DELETE", &format!("/o/{open}"), &[], b"").await.status, 405);
    let r = http(
        &t.addr,
        "POST",
        &format!(
            "/u/{}",
            t.token(&claims("acme", "j1", 1, Action::Unsubscribe { recipient: RecipientRef([1; 16]) }))
        ),
        &[],
        b"nothing",
    )
    .await;
    assert_eq!(r.status, 400, "a POST without the one-click body changes nothing");

    // Garbage on the wire gets a 400; a client that never finishes its
    // request head is cut off.
    let mut s = tokio::net::TcpStream::connect(&t.addr).await.unwrap();
    s.write_all(b"\x16\x03\x01garbage\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&buf));
    let mut slow = tokio::net::TcpStream::connect(&t.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a slow client is disconnected after the header timeout");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(t.events().await.is_empty(), "no event for any of it");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unsubscribe_is_platform_wide_and_per_ip_limits_apply() {
    let t = start(&[("MAILPIPE__TRACKER__PER_IP_RATE", "60/m, burst=5")]).await;
    let store = &t.env.store;
    let globex = TenantId::parse("globex").unwrap();
    store.upsert_tenant(&globex, "Globex").await.unwrap();
    let unsub =
        t.token(&claims("globex", "j1", 3600, Action::Unsubscribe { recipient: RecipientRef([3; 16]) }));
    let r = http(&t.addr, "POST", &format!("/u/{unsub}"), &[], b"confirm=yes").await;
    assert_eq!(r.status, 200);
    // There is no tenant-scoped unsubscribe: the page's promise ("you will
    // not receive marketing email at this address again") holds for every
    // tenant's mail.
    assert!(
        String::from_utf8_lossy(&r.body)
            .contains("You will not receive marketing email at this address again")
    );
    eventually("the suppression", Duration::from_secs(20), || async {
        let mut conn = t.env.pg().await;
        let rows: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT scope_tenant, applies_to, source_tenant FROM suppressions")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        rows == [(Scope::Platform.key().to_owned(), "marketing".to_owned(), Some("globex".to_owned()))]
    })
    .await;
    // The burst of 5 is used up (one went on the POST); then 429s.
    let open = t.token(&claims("acme", "j1", 3600, Action::Open));
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(t.get(&format!("/o/{open}"), &[("User-Agent", CHROME)]).await.status);
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 4, "{codes:?}");
    assert!(codes[4..].iter().all(|c| *c == 429), "{codes:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_recipients_old_links_store_no_client_details() {
    let t = start(&[]).await;
    let store = &t.env.store;
    // A job sent to someone who was then erased.
    let mut j = job(9, "acme", "spring", "example.com");
    j["job_id"] = "j9".into();
    let sj = mailpipe_core::SendJob::from_json(&serde_json::to_vec(&j).unwrap()).unwrap();
    claim(store, &sj).await;
    let address = mailpipe_core::EmailAddress::parse("user9@example.com").unwrap();
    let recipient = test_keys().hasher.hash(&address.canonical());
    store.erase(&address, recipient, &Scope::Platform).await.unwrap();

    let erased = t.token(&claims("acme", "j9", 3600, Action::Open));
    let other = t.token(&claims("acme", "j1", 3600, Action::Open));
    for tok in [&erased, &other] {
        assert_eq!(t.get(&format!("/o/{tok}"), &[("User-Agent", CHROME)]).await.status, 200);
    }
    // A personalised link in their old mail still redirects, and what is
    // stored of the click does not name them.
    let url = "https://shop.example/welcome?u=user9%40example.com";
    let click = t.token(&claims("acme", "j9", 3600, Action::Click { url: url.into() }));
    assert_eq!(t.get(&format!("/c/{click}"), &[("Sec-GPC", "1")]).await.status, 302);
    let events = t.wait_events(3).await;
    let by_job = |job: &str, kind: &str| {
        events.iter().find(|e| e["job_id"] == job && e["type"] == kind).unwrap().clone()
    };
    assert!(by_job("j9", "open").get("client").is_none(), "the erased person's open keeps no client details");
    assert!(by_job("j1", "open").get("client").is_some(), "others' opens do");
    assert!(by_job("j9", "click").get("url").is_none(), "nor their click its personalised URL");
    assert!(!events.iter().any(|e| e.to_string().contains("user9")), "{events:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_body_is_read_only_after_the_token_checks_out_and_only_a_few_kb() {
    let t = start(&[("MAILPIPE__TRACKER__REQUEST_TIMEOUT_SECS", "2")]).await;
    let unsub =
        t.token(&claims("acme", "j1", 3600, Action::Unsubscribe { recipient: RecipientRef([7; 16]) }));
    // A forged token announcing 100 MB: refused at once, the body never awaited.
    let forged = format!("{}x", &unsub[..unsub.len() - 1]);
    let head = |tok: &str, len: usize| {
        format!(
            "POST /u/{tok} HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    let status = status_line(&t.addr, head(&forged, 100 << 20).as_bytes(), Duration::from_secs(1)).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 404 Not Found"), "answered before any body");
    // A valid token with a 10 KB body: too large, and nothing recorded.
    let mut big = b"List-Unsubscribe=One-Click&pad=".to_vec();
    big.resize(10 << 10, b'x');
    let status =
        status_line(&t.addr, &[head(&unsub, big.len()).as_bytes(), &big].concat(), Duration::from_secs(5))
            .await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 413 Payload Too Large"));
    // A body that never arrives in full: the whole-request timeout ends it.
    let started = std::time::Instant::now();
    let status =
        status_line(&t.addr, format!("{}List-Unsub", head(&unsub, 100)).as_bytes(), Duration::from_secs(10))
            .await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 408 Request Timeout"));
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    // The real one-click form still works.
    let ok = http(&t.addr, "POST", &format!("/u/{unsub}"), &[], b"List-Unsubscribe=One-Click").await;
    assert_eq!(ok.status, 200);
    let events = t.wait_events(1).await;
    assert_eq!(events.len(), 1, "only the accepted unsubscribe is recorded: {events:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_capped_and_the_rest_wait_to_be_accepted() {
    let t = start(&[
        ("MAILPIPE__TRACKER__MAX_CONNECTIONS", "2"),
        ("MAILPIPE__TRACKER__HEADER_READ_TIMEOUT_SECS", "30"),
    ])
    .await;
    // Two clients that connect and say nothing hold both connections.
    let idle1 = tokio::net::TcpStream::connect(&t.addr).await.unwrap();
    let _idle2 = tokio::net::TcpStream::connect(&t.addr).await.unwrap();
    assert_served_only_after(&t.addr, || drop(idle1)).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_says_nothing_is_disconnected_and_frees_its_slot() {
    let t = start(&[
        ("MAILPIPE__TRACKER__MAX_CONNECTIONS", "1"),
        ("MAILPIPE__TRACKER__HEADER_READ_TIMEOUT_SECS", "1"),
    ])
    .await;
    let mut silent = tokio::net::TcpStream::connect(&t.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0; 256];
    // Closed by the server (EOF, or a 408 and then EOF), not left open.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a silent connection was kept past the head timeout");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    // Its slot (the only one) is free again.
    assert_eq!(t.get("/healthz", &[]).await.status, 200);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_the_admin_listener_not_the_public_one() {
    let env = TestEnv::setup().no_relay().tracker().tenants(&[]).start().await;
    let admin = format!("127.0.0.1:{}", loopback_port());
    let mut tracker = env.tracker_process_with(&[("MAILPIPE__TRACKER__METRICS_LISTEN", &admin)]);
    let public = env.tracker_addr();
    eventually("the tracker is up", Duration::from_secs(20), || async {
        try_http(&public, "GET", "/healthz", &[], b"").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    assert_eq!(http(&public, "GET", "/o/not-a-token", &[], b"").await.status, 404);
    assert_eq!(http(&public, "GET", "/metrics", &[], b"").await.status, 404, "not on the public listener");
    let m = http(&admin, "GET", "/metrics", &[], b"").await;
    assert_eq!(m.status, 200);
    assert!(m.text().contains("mailpipe_tracker_bad_tokens_total"), "{}", m.text());
    assert!(tracker.terminate(Duration::from_secs(20)).await.success());
}

/// Old mail stays in inboxes: after its key is retired, a message's
/// unsubscribe link keeps working for the grace, its opens and clicks stop;
/// click links may expire on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_keys_unsubscribe_links_work_for_the_grace_and_clicks_expire() {
    use base64::Engine as _;
    let yesterday = (time::OffsetDateTime::now_utc() - time::Duration::days(1)).date().to_string();
    let long_ago = (time::OffsetDateTime::now_utc() - time::Duration::days(61)).date().to_string();
    let new_key = "bmV3LWtleS1uZXcta2V5LW5ldy1rZXktbmV3LWtleS1uZXc=";
    let t = start(&[
        ("MAILPIPE__TOKENS__KEYS__2", new_key),
        ("MAILPIPE__TOKENS__KEYS__3", "dGhpcmQta2V5LXRoaXJkLWtleS10aGlyZC1rZXktdGhpcmQ="),
        ("MAILPIPE__TOKENS__ACTIVE_KEY", "2"),
        ("MAILPIPE__TOKENS__RETIRED__1", &yesterday),
        ("MAILPIPE__TOKENS__RETIRED__3", &long_ago),
        ("MAILPIPE__TOKENS__CLICK_TTL_DAYS", "1"),
    ])
    .await;
    let signed_by = |id: u16, secret: &str| {
        let secret = base64::engine::general_purpose::STANDARD.decode(secret).unwrap();
        Keyring::new(vec![SigningKey { id, secret: secret.into() }], id).unwrap()
    };
    let old = signed_by(1, TEST_TOKEN_KEY);
    let older = signed_by(3, "dGhpcmQta2V5LXRoaXJkLWtleS10aGlyZC1rZXktdGhpcmQ=");
    let unsub = |ring: &Keyring, job: &str| {
        ring.sign(&claims("acme", job, 3600, Action::Unsubscribe { recipient: RecipientRef([5; 16]) }))
            .unwrap()
    };
    let addr = t.addr.clone();
    let one_click = |tok: String| {
        let addr = addr.clone();
        async move { http(&addr, "POST", &format!("/u/{tok}"), &[], b"List-Unsubscribe=One-Click").await.status }
    };
    assert_eq!(one_click(unsub(&old, "j1")).await, 200, "within the grace");
    assert_eq!(one_click(unsub(&older, "j2")).await, 404, "past the grace");
    let open = old.sign(&claims("acme", "j3", 3600, Action::Open)).unwrap();
    assert_eq!(
        t.get(&format!("/o/{open}"), &[]).await.status,
        404,
        "a retired key's open is refused at once"
    );
    // Clicks by the live key: a day old is expired, an hour old is not.
    let click = |secs_ago| {
        t.token(&claims("acme", "j4", secs_ago, Action::Click { url: "https://shop.example/".into() }))
    };
    assert_eq!(t.get(&format!("/c/{}", click(3600)), &[]).await.status, 302);
    assert_eq!(t.get(&format!("/c/{}", click(86_400 + 60)), &[]).await.status, 404, "expired");
    let events = t.wait_events(2).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "unsubscribe").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "click").count(), 1, "{kinds:?}");
    t.stop().await;
}

/// `mailpipe tenant revoke-links` refuses one tenant's older opens and
/// clicks on a running tracker; its unsubscribe links and every other
/// tenant's links keep working, and links signed after it work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_one_tenants_links_leaves_its_unsubscribes_and_other_tenants_alone() {
    let t = start(&[("MAILPIPE__TOKENS__GENERATION_REFRESH_SECS", "1")]).await;
    for tenant in ["acme", "globex"] {
        let o = t.env.cli(&["tenant", "add", tenant]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let click = |tenant: &str| {
        t.token(&claims(tenant, "j1", 3600, Action::Click { url: "https://shop.example/".into() }))
    };
    let (acme_click, globex_click) = (click("acme"), click("globex"));
    let acme_unsub =
        t.token(&claims("acme", "j2", 3600, Action::Unsubscribe { recipient: RecipientRef([4; 16]) }));
    assert_eq!(t.get(&format!("/c/{acme_click}"), &[]).await.status, 302);

    let o = t.env.cli(&["tenant", "revoke-links", "acme"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("generation 1"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    eventually("the tracker refuses acme's old click", Duration::from_secs(10), || async {
        t.get(&format!("/c/{acme_click}"), &[]).await.status == 404
    })
    .await;
    assert_eq!(t.get(&format!("/c/{globex_click}"), &[]).await.status, 302, "globex untouched");
    let unsub = http(&t.addr, "POST", &format!("/u/{acme_unsub}"), &[], b"List-Unsubscribe=One-Click").await;
    assert_eq!(unsub.status, 200, "an old unsubscribe link still works");
    // A worker that has read the new generation signs links that work.
    let generations = Arc::new(mailpipe_token::LinkGenerations::default());
    generations.set_all([("acme".to_owned(), 1)].into());
    let ring = mailpipe::app::keys(&t.env.config()).unwrap().ring;
    let signer = Arc::try_unwrap(ring).unwrap().with_generations(generations);
    let fresh = signer
        .sign(&claims("acme", "j3", 60, Action::Click { url: "https://shop.example/".into() }))
        .unwrap();
    assert_eq!(t.get(&format!("/c/{fresh}"), &[]).await.status, 302);
    assert!(!t.env.cli(&["tenant", "revoke-links", "nobody"]).status.success());
    t.stop().await;
}
