//! A real browser against a rendered message: headless Chromium, driven over
//! the DevTools protocol by tests/support/browser.mjs, loads the message
//! (and so its pixel), clicks a link through the tracker's redirect, and
//! confirms the unsubscribe page. The events must say so, with the right
//! verdicts.

use std::process::Command;
use std::time::Duration;

use mailpipe::app;
use mailpipe_core::SendJob;
use mailpipe_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `/message.html` and `/landing` until the task is dropped.
async fn serve_pages(listener: tokio::net::TcpListener, message_html: String) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let html = message_html.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split(' ').nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/message.html" => ("200 OK", html),
                "/landing" => {
                    ("200 OK", "<!doctype html><title>Shop</title><p>Landing page of the shop</p>".to_owned())
                }
                _ => ("404 Not Found", "not found".to_owned()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opens_clicks_and_unsubscribes_and_each_is_recorded() {
    let chromium = Command::new("chromium").arg("--version").output();
    assert!(
        chromium.is_ok_and(|o| o.status.success()),
        "chromium is missing: apt-get install chromium (scripts/test.sh installs it)"
    );
    // The message is rendered a moment before the click.
    let env = TestEnv::setup()
        .no_relay()
        .tracker()
        .tenants(&[])
        .var("MAILPIPE__TRACKER__MACHINE_CLICK_SECS", 0)
        .start()
        .await;
    let cfg = env.config();
    let keys = app::keys(&cfg).unwrap();
    let tracker = env.start_tracker().await;

    // Render a real message, with the worker's composer, linking to a
    // local landing page.
    let pages = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pages_addr = pages.local_addr().unwrap();
    let landing = format!("http://{pages_addr}/landing");
    let mut j = job(1, "acme", "spring", "a.example");
    j["html"] = format!(
        "<html><body><h1>Spring sale</h1><p><a class=\"shop\" href=\"{landing}\">Shop now</a></p>\
         <p><a class=\"unsubscribe\" href=\"{{{{ unsubscribe_url }}}}\">Unsubscribe</a></p></body></html>"
    )
    .into();
    let send_job = SendJob::from_json(&serde_json::to_vec(&j).unwrap()).unwrap();
    let composer = app::composer(&cfg, keys.ring, keys.hasher).await.unwrap();
    let composed =
        composer.compose_job(&send_job, None, time::OffsetDateTime::now_utc(), None).await.unwrap();
    let parsed = mail_parser::MessageParser::default().parse(&composed.bytes).unwrap();
    let html = parsed.body_html(0).unwrap().into_owned();
    assert!(html.contains(&format!("http://{}/c/", env.tracker_addr())), "links are tracked: {html}");
    let server = tokio::spawn(serve_pages(pages, html));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/support/browser.mjs");
    let message_url = format!("http://{pages_addr}/message.html");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node").args(["--experimental-websocket", script, &message_url]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "browser driver failed: {}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["pixelLoaded"], true, "{seen}");
    assert_eq!(seen["afterClick"], landing.as_str(), "the click landed on the bound URL: {seen}");
    assert!(seen["landingText"].as_str().unwrap().contains("Landing page"));
    assert!(seen["unsubscribePage"].as_str().unwrap().contains("Stop receiving"), "{seen}");
    assert!(seen["afterConfirm"].as_str().unwrap().contains("You are unsubscribed"), "{seen}");

    let events = || async {
        let mut conn = env.pg().await;
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT payload FROM events").fetch_all(&mut conn).await.unwrap();
        rows.iter().map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap()).collect::<Vec<_>>()
    };
    eventually("three events", Duration::from_secs(20), || async { events().await.len() >= 3 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let evs = events().await;
    let of = |t: &str| evs.iter().filter(|e| e["type"] == t).collect::<Vec<_>>();
    let (opens, clicks, unsubs) = (of("open"), of("click"), of("unsubscribe"));
    assert_eq!((opens.len(), clicks.len(), unsubs.len()), (1, 1, 1), "{evs:?}");
    assert_eq!(opens[0]["verdict"]["class"], "human", "{:?}", opens[0]);
    assert_eq!(opens[0]["client"]["ua_family"], "chrome");
    assert_eq!(clicks[0]["verdict"]["class"], "human", "{:?}", clicks[0]);
    assert_eq!(clicks[0]["url"], landing.as_str(), "the honeypot link was not followed");
    assert_eq!(unsubs[0]["reason"], "form");
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM suppressions").fetch_one(&mut env.pg().await).await.unwrap();
    assert_eq!(n, 1);

    server.abort();
    tracker.stop().await;
}
