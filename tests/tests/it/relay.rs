//! Relay features smtp-sink lacks, against the test relay in
//! tests/support/smtp_relay.py: STARTTLS, AUTH and SMTPUTF8.

use std::time::Duration;

use mailpipe_tests::*;

/// A worker sending `jobs` to `relay` with `settings`, started.
async fn run(
    relay: &TestRelay,
    settings: &[(&str, &str)],
    jobs: Vec<serde_json::Value>,
) -> (TestEnv, Running) {
    TestEnv::setup()
        .relay(relay.port)
        .var("MAILPIPE__WORKER__RETRY_BASE_MS", 60000)
        .vars(settings)
        .sending(&jobs.iter().map(keyed).collect::<Vec<_>>())
        .await
}

fn jobs(n: usize) -> Vec<serde_json::Value> {
    (0..n).map(|i| job(i, "acme", "c", "a.example")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_auth_are_used_when_configured() {
    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = test_certificates(&dir);
    let (ca, cert, key) = (ca.to_str().unwrap(), cert.to_str().unwrap(), key.to_str().unwrap());
    let relay =
        TestRelay::start(&["--cert", cert, "--key", key, "--user", "mailpipe", "--password", "s3cret"]);
    let (env, worker) = run(
        &relay,
        &[
            ("MAILPIPE__SMTP__TLS", "required"),
            ("MAILPIPE__SMTP__CA_FILE", ca),
            ("MAILPIPE__SMTP__USERNAME", "mailpipe"),
            ("MAILPIPE__SMTP__PASSWORD", "s3cret"),
        ],
        jobs(3),
    )
    .await;
    env.wait_ledger("acme", "c", "sent", 3, Duration::from_secs(30)).await;
    worker.stop().await;
    let got = relay.received();
    assert_eq!(got.len(), 3);
    for m in &got {
        assert_eq!(m.session["tls"], true, "{:?}", m.session);
        assert_eq!(m.session["auth"], "mailpipe");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A relay the worker cannot use as configured is refused at start-up, with
/// the reason, before any job is consumed. (Once running, the same failures
/// defer mail: see the classifier's table for the tls and auth phases.)
async fn refused_at_start(relay: &TestRelay, settings: &[(&str, &str)]) -> String {
    let (env, worker) = run(relay, settings, jobs(2)).await;
    let err = worker.outcome(Duration::from_secs(30)).await.unwrap_err();
    assert!(relay.received().is_empty(), "nothing was sent");
    let ledger = env.ledger("acme", "c").await;
    assert!(ledger.is_empty(), "no job was consumed: {ledger:?}");
    format!("{err:#}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_refuses_a_relay_without_starttls_or_with_an_untrusted_certificate() {
    let plain = TestRelay::start(&[]);
    let err = refused_at_start(&plain, &[("MAILPIPE__SMTP__TLS", "required")]).await;
    assert!(err.contains("STARTTLS"), "{err}");

    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (_ca, cert, key) = test_certificates(&dir);
    let untrusted = TestRelay::start(&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    let err = refused_at_start(&untrusted, &[("MAILPIPE__SMTP__TLS", "required")]).await;
    assert!(err.to_lowercase().contains("certificate") || err.contains("tls"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_relay_credentials_are_refused_at_start() {
    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = test_certificates(&dir);
    let (ca, cert, key) = (ca.to_str().unwrap(), cert.to_str().unwrap(), key.to_str().unwrap());
    let relay =
        TestRelay::start(&["--cert", cert, "--key", key, "--user", "mailpipe", "--password", "right"]);
    let err = refused_at_start(
        &relay,
        &[
            ("MAILPIPE__SMTP__TLS", "required"),
            ("MAILPIPE__SMTP__CA_FILE", ca),
            ("MAILPIPE__SMTP__USERNAME", "mailpipe"),
            ("MAILPIPE__SMTP__PASSWORD", "wrong"),
        ],
    )
    .await;
    assert!(err.contains("535"), "{err}");
    assert!(!err.contains("wrong"), "the password is not echoed: {err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_utf8_mailbox_goes_out_with_smtputf8_where_the_relay_offers_it() {
    let relay = TestRelay::start(&["--smtputf8"]);
    let mut j = job(0, "acme", "c", "a.example");
    j["to"]["email"] = "jöhn@bücher.example".into();
    let (env, worker) = run(&relay, &[], vec![j]).await;
    env.wait_ledger("acme", "c", "sent", 1, Duration::from_secs(30)).await;
    worker.stop().await;
    let got = relay.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].session["smtputf8"], true, "{:?}", got[0].session);
    let rcpt = got[0].session["rcpt"][0].as_str().unwrap();
    assert!(rcpt.contains("jöhn@xn--bcher-kva.example"), "local part in UTF-8, domain in punycode: {rcpt}");
}
