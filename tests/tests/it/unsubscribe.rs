//! An unsubscribe on the tracker reaches the workers within seconds, stops
//! marketing mail from every tenant, and leaves transactional mail alone.

use std::time::{Duration, Instant};

use mailpipe_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_click_unsubscribe_reaches_the_workers_within_seconds_for_every_tenant() {
    let env = TestEnv::setup().partitions(2).tracker().tenants(&["acme", "globex"]).start().await;
    let sink = env.sink();
    let worker = env.start_worker();
    let tracker = env.start_tracker().await;

    // Acme mails user7 once; the message carries its one-click URL.
    let first = job(7, "acme", "spring", "a.example");
    env.enqueue(&[keyed(&first)]).await;
    // Sent, by the ledger: the relay accepted the whole message. smtp-sink
    // writes its file as the content comes in, so a file alone may still
    // be half of it (this test once read one without its List-Unsubscribe).
    eventually("the first message sent", Duration::from_secs(30), || async {
        env.ledger("acme", "spring").await.get("sent") == Some(&1)
    })
    .await;
    let message = sink.messages().remove(0);
    let url = list_unsubscribe(&message)
        .into_iter()
        .find(|u| u.starts_with("http"))
        .unwrap_or_else(|| panic!("an https link in the List-Unsubscribe of:\n{message}"));
    let addr = env.tracker_addr();
    let target = url.strip_prefix(&format!("http://{addr}")).unwrap().to_owned();

    // The recipient's mail client does the RFC 8058 POST.
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
    env.enqueue(&[keyed(&promo), keyed(&receipt)]).await;
    eventually("globex's promo suppressed", Duration::from_secs(30), || async {
        env.ledger("globex", "promo").await.get("suppressed") == Some(&1)
    })
    .await;
    eventually("globex's receipt sent", Duration::from_secs(30), || async {
        env.ledger("globex", "receipts").await.get("sent") == Some(&1)
    })
    .await;
    assert_eq!(sink.messages().len(), 2, "the first message and the receipt, nothing else");
    println!("unsubscribe took effect for a job enqueued {:?} later", unsubscribed_at.elapsed());

    worker.stop().await;
    tracker.stop().await;
}
