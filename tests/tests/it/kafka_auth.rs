//! Authenticated producers: every Kafka client of mailpipe can speak TLS
//! and SASL/SCRAM, and a broker's ACLs then hold each service to its own
//! topics. Against the test broker's SASL_SSL listener (scripts/services.sh:
//! a principal per service, prefixed ACLs on the three topics).

use std::time::Duration;

use mailpipe::Config;
use mailpipe_tests::*;

fn sasl_brokers() -> String {
    std::env::var("MAILPIPE_TEST_KAFKA_SASL_BROKERS").unwrap_or_else(|_| "127.0.0.1:59094".into())
}

fn test_ca() -> String {
    std::env::var("MAILPIPE_TEST_KAFKA_CA")
        .unwrap_or_else(|_| "/var/tmp/mailpipe-services/kafka/tls/ca.pem".into())
}

/// This env's configuration, on the SASL_SSL listener as `user` (with
/// `password`), trusting the test CA.
///
/// A client that is let in gets 30 s to connect: a TLS handshake and a
/// SCRAM exchange with a broker on two cores busy with the whole suite took
/// more than 5 s once in CI (the worker then failed with a timeout instead
/// of the authorisation error under test). A client meant to be refused
/// gets 5 s ([`refused_principal`]), since it waits out its timeout.
fn as_principal(env: &TestEnv, group: &str, user: &str, password: &str) -> Config {
    principal_with_timeout(env, group, user, password, "30")
}

/// As [`as_principal`], for a client the broker refuses: it fails after 5 s.
fn refused_principal(env: &TestEnv, group: &str, user: &str, password: &str) -> Config {
    principal_with_timeout(env, group, user, password, "5")
}

fn principal_with_timeout(
    env: &TestEnv,
    group: &str,
    user: &str,
    password: &str,
    timeout_secs: &str,
) -> Config {
    let (brokers, ca) = (sasl_brokers(), test_ca());
    assert!(std::path::Path::new(&ca).is_file(), "the test broker's CA {ca} is missing\n{START_HINT}");
    env.config_with(&[
        ("MAILPIPE__QUEUE__KAFKA__BROKERS", &brokers),
        ("MAILPIPE__QUEUE__KAFKA__GROUP_ID", group),
        ("MAILPIPE__QUEUE__KAFKA__CONNECT_TIMEOUT_SECS", timeout_secs),
        ("MAILPIPE__QUEUE__KAFKA__SECURITY__PROTOCOL", "sasl_ssl"),
        ("MAILPIPE__QUEUE__KAFKA__SECURITY__USERNAME", user),
        ("MAILPIPE__QUEUE__KAFKA__SECURITY__PASSWORD", password),
        ("MAILPIPE__QUEUE__KAFKA__SECURITY__CA_FILE", &ca),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_reaches_kafka_over_tls_as_its_own_principal_and_only_its_topics() {
    let env = TestEnv::start().await;
    // The ACLs give the worker's principal its groups by prefix.
    let group = unique("mailpipe-worker");
    let principal = |user: &str| as_principal(&env, &group, user, &format!("{user}-secret"));
    let jobs = campaign_jobs(0..20, "acme", "spring", &["example.com"]);

    // The producer's principal writes jobs; the worker's reads them, sends,
    // and writes the outcomes to the events topic.
    let n = mailpipe::app::enqueue(&principal("mailpipe-producer"), &jobs).await.unwrap();
    assert_eq!(n, 20);
    let worker = env.start_worker_with(principal("mailpipe-worker"));
    eventually("20 jobs sent through the SASL_SSL listener", Duration::from_secs(60), || async {
        env.ledger("acme", "spring").await.get("sent") == Some(&20)
    })
    .await;
    assert_eq!(env.sink().messages().len(), 20);
    assert_eq!(
        read_event_ids(&env.topics.events, 20, Duration::from_secs(20)).len(),
        20,
        "outcomes on the events topic"
    );
    worker.stop().await;

    // The tracker's principal may write events, not jobs.
    let e = mailpipe::app::enqueue(&principal("mailpipe-tracker"), &jobs[..1]).await.unwrap_err();
    assert!(format!("{e:#}").to_lowercase().contains("authoriz"), "{e:#}");

    // A wrong password, and a client with TLS but no credentials at all,
    // are refused before they see a topic.
    let wrong = refused_principal(&env, &group, "mailpipe-producer", "not-the-secret");
    let e = mailpipe::app::enqueue(&wrong, &jobs[..1]).await.unwrap_err();
    assert!(format!("{e:#}").contains("is Kafka running?"), "refused at connect: {e:#}");
    let anonymous = env.config_with(&[
        ("MAILPIPE__QUEUE__KAFKA__BROKERS", &sasl_brokers()),
        ("MAILPIPE__QUEUE__KAFKA__CONNECT_TIMEOUT_SECS", "5"),
        ("MAILPIPE__QUEUE__KAFKA__SECURITY__PROTOCOL", "ssl"),
        ("MAILPIPE__QUEUE__KAFKA__SECURITY__CA_FILE", &test_ca()),
    ]);
    let e = mailpipe::app::enqueue(&anonymous, &jobs[..1]).await.unwrap_err();
    assert!(format!("{e:#}").contains("is Kafka running?"), "refused at connect: {e:#}");

    // Nothing those three tried reached the send topic.
    let end: i64 = end_offsets(&env.topics.send, 1).values().sum();
    assert_eq!(end, 20, "only the producer's 20 jobs are on the send topic");

    // The analytics service's principal writes jobs too: the send API
    // (POST /api/v1/messages) queues them.
    let n = mailpipe::app::enqueue(&principal("mailpipe-analytics"), &jobs[..1]).await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(end_offsets(&env.topics.send, 1).values().sum::<i64>(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_without_read_on_the_send_topic_cannot_consume_it() {
    let env = TestEnv::start().await;
    env.enqueue(&campaign_jobs(0..3, "acme", "spring", &["example.com"])).await;
    // The tracker's principal, in a group it would be allowed, still may not
    // read jobs: a worker configured with it fails instead of sending.
    let cfg = as_principal(&env, &unique("mailpipe-worker"), "mailpipe-tracker", "mailpipe-tracker-secret");
    let worker = env.start_worker_with(cfg);
    let outcome = worker.outcome(Duration::from_secs(60)).await;
    let e = outcome.expect_err("a worker without read access stops");
    assert!(format!("{e:#}").to_lowercase().contains("authoriz"), "{e:#}");
    assert!(env.sink().messages().is_empty(), "nothing was sent");
}
