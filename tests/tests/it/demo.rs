//! The embedded default, in process: SQLite, the in-process queue, .eml
//! files and the tracker, over the built-in sample campaign.

use std::time::Duration;

use mailpipe::commands::demo::{DemoOptions, send_sample};
use mailpipe::config::Config;
use mailpipe_tests::unique;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_accounts_for_every_job() {
    let dir = std::env::temp_dir().join(unique("demo"));
    let env = vec![
        ("MAILPIPE__STORE__URL".to_string(), format!("sqlite:{}/mailpipe.db", dir.display())),
        ("MAILPIPE__SMTP__DIR".to_string(), format!("{}/mail", dir.display())),
        ("MAILPIPE__TRACKER__LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("MAILPIPE__TRACKER__SPOOL_DIR".to_string(), format!("{}/spool", dir.display())),
    ];
    let cfg = Config::load(None, env).unwrap();
    let opts = DemoOptions { messages: 1000, serve_for: Some(Duration::ZERO), progress: false };
    let s = send_sample(&cfg, opts, CancellationToken::new()).await.unwrap();

    assert_eq!(s.enqueued, 1000);
    assert_eq!(s.accounted(), 1000, "{s:?}");
    assert_eq!((s.sent, s.suppressed, s.dead_lettered, s.replayed), (987, 10, 3, 0), "{s:?}");
    assert_eq!(s.eml_files, Some(987), "one .eml per sent message");
    // Two dead letters (bad JSON, a CR/LF in a name) fail to parse, so they
    // have no tenant and no ledger row: their events are stored tenant-less.
    // The third (a template error) parsed, so it has both.
    assert_eq!(s.ledger_total, 987 + 10 + 1);
    assert_eq!(s.events_total, 987 + 10 + 1);
    assert!(s.sample_click.contains("/c/"));
    let _ = std::fs::remove_dir_all(dir);
}
