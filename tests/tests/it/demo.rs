//! The embedded default, in process: SQLite, the in-process queue, .eml
//! files and the tracker, over the built-in sample campaign.

use std::time::Duration;

use mailpipe::commands::demo::{DemoOptions, send_sample};
use mailpipe::config::Config;
use mailpipe_tests::{mailpipe_binary, unique};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_accounts_for_every_job() {
    let dir = std::env::temp_dir().join(unique("demo"));
    let env = vec![
        ("MAILPIPE__STORE__URL".to_string(), format!("sqlite:{}/mailpipe.db", dir.display())),
        ("MAILPIPE__SMTP__DIR".to_string(), format!("{}/mail", dir.display())),
        ("MAILPIPE__TRACKER__LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("MAILPIPE__TRACKER__SPOOL_DIR".to_string(), format!("{}/spool", dir.display())),
        ("MAILPIPE__RENDER__SANDBOX_EXE".to_string(), mailpipe_binary().display().to_string()),
    ];
    let cfg = Config::load(None, env).unwrap();
    let opts = DemoOptions { messages: 1000, serve_for: Some(Duration::ZERO), progress: false };
    let s = send_sample(&cfg, opts, CancellationToken::new()).await.unwrap();

    assert_eq!(s.enqueued, 1000);
    assert_eq!(s.accounted(), 1000, "{s:?}");
    assert_eq!((s.sent, s.suppressed, s.dead_lettered, s.replayed), (986, 10, 4, 0), "{s:?}");
    assert_eq!(s.eml_files, Some(986), "one .eml per sent message");
    // Two dead letters (bad JSON, a CR/LF in a name) fail to parse, so they
    // have no tenant and no ledger row: their events are stored tenant-less.
    // The other two (a template error, Acme sending as Globex's domain)
    // parsed, so they have both.
    assert_eq!(s.ledger_total, 986 + 10 + 2);
    assert_eq!(s.events_total, 986 + 10 + 2);
    // Each tenant's mail is signed as its own domain, with its own key.
    let (mut acme, mut globex) = (0, 0);
    for f in std::fs::read_dir(dir.join("mail")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        let from_acme = text.contains("From: \"Acme Outdoor\" <news@acme.example>");
        let unfolded = text.replace("\r\n", "\n").replace("\n\t", " ").replace("\n ", " ");
        let sig =
            unfolded.lines().find(|l| l.starts_with("DKIM-Signature:")).expect("every message is signed");
        if from_acme {
            assert!(sig.contains("d=acme.example") && sig.contains("a=rsa-sha256"), "{sig}");
            acme += 1;
        } else {
            assert!(sig.contains("d=globex.example") && sig.contains("a=ed25519-sha256"), "{sig}");
            globex += 1;
        }
    }
    // Globex: a receipt for every tenth job and for jobs 65, 165, ...
    assert_eq!((acme, globex), (986 - 110, 110));
    assert!(s.sample_click.contains("/c/"));
    let _ = std::fs::remove_dir_all(dir);
}
