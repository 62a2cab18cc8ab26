//! The worker binary's Prometheus endpoint: outcomes by provider group,
//! in-flight and in-doubt figures, consumer lag and the send histogram,
//! all with low-cardinality labels.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use mailpipe::app;
use mailpipe::config::Config;
use mailpipe_core::TenantId;
use mailpipe_tests::*;

fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|deps| deps.parent()).unwrap().join("mailpipe");
    assert!(bin.exists(), "{} is missing: run the workspace tests (cargo test --workspace)", bin.display());
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_exports_outcomes_lag_and_latency() {
    const N: usize = 40;
    let db = fresh_database().await;
    let topics = fresh_topics(2).await;
    let sink = SmtpSink::start(&[]);
    let port = loopback_port();
    let mut env = service_env(&db, &topics, &sink, &unique("group"));
    env.retain(|(k, _)| k != "MAILPIPE__METRICS__LISTEN");
    env.push(("MAILPIPE__METRICS__LISTEN".into(), format!("127.0.0.1:{port}")));
    let dir = std::env::temp_dir().join(unique("metrics"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("groups.toml");
    std::fs::write(&file, "[throttle.groups]\ngoogle = [\"gmail.example\"]\n").unwrap();
    env.push(("MAILPIPE_CONFIG".into(), file.display().to_string()));
    let cfg = Config::load(Some(&file), env.clone()).unwrap();
    let store = app::store(&cfg).await.unwrap();
    store.upsert_tenant(&TenantId::parse("acme").unwrap(), "Acme").await.unwrap();
    let jobs: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            let d = if i % 2 == 0 { "gmail.example" } else { "other.example" };
            (d.to_owned(), serde_json::to_vec(&job(i, "acme", "c", d)).unwrap())
        })
        .collect();
    app::enqueue(&cfg, &jobs).await.unwrap();

    let mut cmd = Command::new(binary());
    cmd.arg("worker").env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::inherit());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    eventually("all sent", Duration::from_secs(60), || async {
        store.ledger_counts("acme", "c").await.unwrap().get("sent") == Some(&(N as i64))
    })
    .await;
    // librdkafka reports statistics every 5 s.
    let addr = format!("127.0.0.1:{port}");
    eventually("consumer lag exported", Duration::from_secs(20), || async {
        http(&addr, "GET", "/metrics", &[], b"").await.text().contains("mailpipe_consumer_lag{")
    })
    .await;
    let text = http(&addr, "GET", "/metrics", &[], b"").await.text();
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);

    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing from:\n{text}"))
    };
    assert_eq!(value(r#"mailpipe_jobs_total{outcome="sent",provider="google"}"#), (N / 2) as f64);
    assert_eq!(value(r#"mailpipe_jobs_total{outcome="sent",provider="other"}"#), (N / 2) as f64);
    assert_eq!(value(&format!(r#"mailpipe_consumer_lag{{topic="{}"}}"#, topics.send)), 0.0);
    assert_eq!(value("mailpipe_jobs_in_flight"), 0.0);
    assert!(value("mailpipe_send_duration_seconds_count") >= N as f64);
    // No label may carry a recipient, tenant or campaign.
    for l in text.lines().filter(|l| l.starts_with("mailpipe_")) {
        assert!(
            !l.contains("acme") && !l.contains("@") && !l.contains("user1"),
            "high-cardinality label: {l}"
        );
    }
}
