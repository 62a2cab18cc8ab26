//! International addresses: IDN domains go out as punycode; a UTF-8 local
//! part needs SMTPUTF8, and smtp-sink does not offer it, so such a job is
//! dead-lettered as unsendable instead of being mangled.

use std::time::Duration;

use mailpipe_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idn_domains_are_sent_as_punycode_and_utf8_mailboxes_need_smtputf8() {
    let env = TestEnv::start().await;

    let mut idn = job(1, "acme", "c", "unused.example");
    idn["to"]["email"] = "info@bücher.example".into();
    let mut utf8 = job(2, "acme", "c", "unused.example");
    utf8["to"]["email"] = "josé@example.com".into();
    let jobs = vec![
        ("xn--bcher-kva.example".to_owned(), serde_json::to_vec(&idn).unwrap()),
        ("example.com".to_owned(), serde_json::to_vec(&utf8).unwrap()),
    ];
    env.enqueue(&jobs).await;
    let worker = env.start_worker();
    eventually("both jobs finished", Duration::from_secs(60), || async {
        let l = env.ledger("acme", "c").await;
        l.get("sent") == Some(&1) && l.get("dead_lettered") == Some(&1)
    })
    .await;
    worker.stop().await;

    let msgs = env.sink().messages();
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].contains("X-Rcpt-Args: <info@xn--bcher-kva.example>"), "{}", &msgs[0][..400]);
    let (reason, job): (String, String) = sqlx::query_as("SELECT reason, job_id FROM dead_letters")
        .fetch_one(&mut env.pg().await)
        .await
        .unwrap();
    assert_eq!((reason.as_str(), job.as_str()), ("unsendable", "job-00002"));
}
