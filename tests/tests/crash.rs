//! kill -9 the real worker binary mid-campaign, several times, then let a
//! last worker finish and stop it with SIGTERM. Every job must end with
//! exactly one outcome, nothing may be delivered twice, and the only jobs
//! missing from the sink may be ones the ledger marks as in doubt.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailpipe::app;
use mailpipe_core::TenantId;
use mailpipe_tests::*;
use sqlx::Connection;

const JOBS: usize = 3000;

/// The `mailpipe` binary that `cargo test --workspace` builds beside this test.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|deps| deps.parent()).unwrap().join("mailpipe");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace tests (cargo test --workspace) or `cargo build -p mailpipe`",
        bin.display()
    );
    bin
}

fn spawn_worker(env: &[(String, String)]) -> Child {
    let mut c = Command::new(binary());
    c.arg("worker").env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

async fn finished(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM send_ledger WHERE status IN ('sent','bounced','suppressed','failed','dead_lettered')")
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_campaign_loses_nothing_and_sends_nothing_twice() {
    let db = fresh_database().await;
    let topics = fresh_topics(3).await;
    let sink = SmtpSink::start(&[]);
    let group = unique("crash");
    let env = service_env(&db, &topics, &sink, &group);

    let cfg = mailpipe::config::Config::load(None, env.clone()).unwrap();
    let store = app::store(&cfg).await.unwrap();
    store.upsert_tenant(&TenantId::parse("acme").unwrap(), "Acme").await.unwrap();
    let domains = ["a.example", "b.example", "c.example"];
    let jobs: Vec<(String, Vec<u8>)> = (0..JOBS)
        .map(|i| {
            (domains[i % 3].to_owned(), serde_json::to_vec(&job(i, "acme", "crash", domains[i % 3])).unwrap())
        })
        .collect();
    app::enqueue(&cfg, &jobs).await.unwrap();

    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    // Three crashes, each once the campaign has made more progress.
    for (round, at) in [400i64, 1100, 1900].into_iter().enumerate() {
        let mut child = spawn_worker(&env);
        let deadline = Instant::now() + Duration::from_secs(90);
        while finished(&mut conn).await < at {
            assert!(Instant::now() < deadline, "round {round}: no progress to {at}");
            assert!(child.try_wait().unwrap().is_none(), "worker exited early");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap(); // SIGKILL: no drain, no commit, no cleanup.
        child.wait().unwrap();
    }

    // A last worker finishes the campaign and is stopped with SIGTERM.
    let mut last = spawn_worker(&env);
    let deadline = Instant::now() + Duration::from_secs(120);
    while finished(&mut conn).await < JOBS as i64 {
        assert!(
            Instant::now() < deadline,
            "campaign did not finish: {} of {JOBS}",
            finished(&mut conn).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The ledger can be complete before the last worker has re-read the
    // records a killed worker finished but never committed; stop it only
    // once it has caught up with the topic (auto-commit runs every second).
    let caught_up = Instant::now() + Duration::from_secs(60);
    while committed(&group, &topics.send, 3).values().sum::<i64>() < JOBS as i64 {
        assert!(Instant::now() < caught_up, "the last worker did not catch up with the topic");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let term = Command::new("kill").arg("-TERM").arg(last.id().to_string()).status().unwrap();
    assert!(term.success());
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = last.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < stop_deadline, "worker did not stop within its grace period");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "SIGTERM ends the worker cleanly: {status:?}");

    // Exactly one outcome per job.
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT job_id, status, message_id FROM send_ledger")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(rows.len(), JOBS);
    assert!(rows.iter().all(|r| r.1 == "sent"), "every job sent");
    let terminal_events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE type = 'sent'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(terminal_events, JOBS as i64, "one terminal event per job");

    // Nothing delivered twice; whatever is missing from the sink is in doubt.
    let on_sink = sink.message_ids();
    let unique_on_sink: HashSet<&String> = on_sink.iter().collect();
    assert_eq!(unique_on_sink.len(), on_sink.len(), "duplicate deliveries on the sink");
    let in_doubt: HashSet<String> = sqlx::query_scalar::<_, String>(
        "SELECT l.message_id FROM send_ledger l JOIN events e ON e.tenant_id = l.tenant_id AND e.job_id = l.job_id
         WHERE e.type = 'sent' AND e.payload LIKE '%\"reason\":\"in_doubt\"%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let ledger_ids: HashSet<String> = rows.iter().filter_map(|r| r.2.clone()).collect();
    let missing: HashSet<&String> = ledger_ids.iter().filter(|id| !unique_on_sink.contains(id)).collect();
    assert!(
        missing.iter().all(|id| in_doubt.contains(*id)),
        "{} jobs missing from the sink are not marked in doubt",
        missing.len()
    );
    assert!(
        unique_on_sink.iter().all(|id| ledger_ids.contains(*id)),
        "sink has a message the ledger does not know"
    );
    eprintln!(
        "crash test: {JOBS} jobs, 3 kill -9, {} on the sink, {} in doubt, {} in doubt and not delivered",
        on_sink.len(),
        in_doubt.len(),
        missing.len()
    );

    // And the offsets of all of them are committed.
    assert_eq!(committed(&group, &topics.send, 3).values().sum::<i64>(), JOBS as i64);
}
