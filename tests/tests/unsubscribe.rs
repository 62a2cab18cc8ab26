//! An unsubscribe on the tracker reaches the workers within seconds, stops
//! marketing mail from every tenant, and leaves transactional mail alone.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpipe::app;
use mailpipe::config::Config;
use mailpipe_core::TenantId;
use mailpipe_tests::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_click_unsubscribe_reaches_the_workers_within_seconds_for_every_tenant() {
    let db = fresh_database().await;
    let topics = fresh_topics(2).await;
    let sink = SmtpSink::start(&[]);
    let port = loopback_port();
    let mut env = service_env(&db, &topics, &sink, &unique("group"));
    with_tracker(&mut env, port);
    let cfg = Arc::new(Config::load(None, env).unwrap());
    let store = app::store(&cfg).await.unwrap();
    for t in ["acme", "globex"] {
        store.upsert_tenant(&TenantId::parse(t).unwrap(), t).await.unwrap();
    }
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let (cfg, stop) = (cfg.clone(), stop.clone());
        async move { app::run_worker(&cfg, stop, None).await }
    });
    let tracker = tokio::spawn({
        let (cfg, stop) = (cfg.clone(), stop.clone());
        async move { app::run_tracker(&cfg, stop, None).await }
    });

    // Acme mails user7 once; the message carries its one-click URL.
    let first = job(7, "acme", "spring", "a.example");
    app::enqueue(&cfg, &[("a.example".into(), serde_json::to_vec(&first).unwrap())]).await.unwrap();
    eventually("the first message on the sink", Duration::from_secs(30), || async {
        !sink.messages().is_empty()
    })
    .await;
    let message = sink.messages().remove(0);
    let url = list_unsubscribe(&message).into_iter().find(|u| u.starts_with("http")).expect("an https link");
    let target = url.strip_prefix(&format!("http://127.0.0.1:{port}")).unwrap().to_owned();

    // The recipient's mail client does the RFC 8058 POST.
    let addr = format!("127.0.0.1:{port}");
    let r = http(
        &addr,
        "POST",
        &target,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let unsubscribed_at = Instant::now();

    // Within seconds, globex's marketing mail to the same person is
    // suppressed by the workers, and its receipt still goes out.
    let mut promo = job(7, "globex", "promo", "a.example");
    promo["job_id"] = "promo-1".into();
    let mut receipt = job(7, "globex", "receipts", "a.example");
    receipt["job_id"] = "receipt-1".into();
    receipt["category"] = "transactional".into();
    tokio::time::sleep(Duration::from_secs(3)).await;
    app::enqueue(
        &cfg,
        &[
            ("a.example".into(), serde_json::to_vec(&promo).unwrap()),
            ("a.example".into(), serde_json::to_vec(&receipt).unwrap()),
        ],
    )
    .await
    .unwrap();
    eventually("globex's promo suppressed", Duration::from_secs(30), || async {
        store.ledger_counts("globex", "promo").await.unwrap().get("suppressed") == Some(&1)
    })
    .await;
    eventually("globex's receipt sent", Duration::from_secs(30), || async {
        store.ledger_counts("globex", "receipts").await.unwrap().get("sent") == Some(&1)
    })
    .await;
    assert_eq!(sink.messages().len(), 2, "the first message and the receipt, nothing else");
    println!("unsubscribe took effect for a job enqueued {:?} later", unsubscribed_at.elapsed());

    stop.cancel();
    worker.await.unwrap().unwrap();
    tracker.await.unwrap().unwrap();
}
