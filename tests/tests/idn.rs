//! International addresses: IDN domains go out as punycode; a UTF-8 local
//! part needs SMTPUTF8, and smtp-sink does not offer it, so such a job is
//! dead-lettered as unsendable instead of being mangled.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::sync::Arc;
use std::time::Duration;

use mailpipe::app;
use mailpipe_core::TenantId;
use mailpipe_tests::*;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idn_domains_are_sent_as_punycode_and_utf8_mailboxes_need_smtputf8() {
    let db = fresh_database().await;
    let topics = fresh_topics(1).await;
    let sink = SmtpSink::start(&[]);
    let cfg = Arc::new(config(&db, &topics, &sink, &[]));
    let store = app::store(&cfg).await.unwrap();
    store.upsert_tenant(&TenantId::parse("acme").unwrap(), "Acme").await.unwrap();

    let mut idn = job(1, "acme", "c", "unused.example");
    idn["to"]["email"] = "info@bücher.example".into();
    let mut utf8 = job(2, "acme", "c", "unused.example");
    utf8["to"]["email"] = "josé@example.com".into();
    let jobs = vec![
        ("xn--bcher-kva.example".to_owned(), serde_json::to_vec(&idn).unwrap()),
        ("example.com".to_owned(), serde_json::to_vec(&utf8).unwrap()),
    ];
    app::enqueue(&cfg, &jobs).await.unwrap();
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let (cfg, stop) = (cfg.clone(), stop.clone());
        async move { app::run_worker(&cfg, stop, None).await }
    });
    eventually("both jobs finished", Duration::from_secs(60), || async {
        let l = store.ledger_counts("acme", "c").await.unwrap();
        l.get("sent") == Some(&1) && l.get("dead_lettered") == Some(&1)
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();

    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].contains("X-Rcpt-Args: <info@xn--bcher-kva.example>"), "{}", &msgs[0][..400]);
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let (reason, job): (String, String) =
        sqlx::query_as("SELECT reason, job_id FROM dead_letters").fetch_one(&mut conn).await.unwrap();
    assert_eq!((reason.as_str(), job.as_str()), ("unsendable", "job-00002"));
}
