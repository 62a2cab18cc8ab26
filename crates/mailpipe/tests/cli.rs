//! The binary's contract on bad input: configuration errors exit 2 and name
//! every bad key; an unreachable service is a clear error, not a hang.
//!
//! This test is also why `cargo test --workspace` builds `mailpipe`
//! itself: cargo builds a package's binaries for its integration tests, and
//! the tests in `tests/` run that same binary as a process.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn mailpipe(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mailpipe"));
    c.args(args).env_remove("RUST_LOG");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("MAILPIPE__")) {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_explains_every_subcommand() {
    let o = mailpipe(&["--help"], &[]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for cmd in ["demo", "worker", "tracker", "enqueue", "migrate", "tenant", "check-config", "--config"] {
        assert!(out.contains(cmd), "--help lacks {cmd}:\n{out}");
    }
}

#[test]
fn unknown_keys_and_bad_values_exit_2_and_are_all_named() {
    let dir = std::env::temp_dir().join(format!("mailpipe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(&f, "[worker]\nmax_inflight = 3\n[smtp]\nmax_connections = 0\n").unwrap();
    let o = mailpipe(
        &["--config", f.to_str().unwrap(), "check-config"],
        &[("MAILPIPE__STORE__URL", "mysql://x")],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("worker.max_inflight: unknown key"), "{e}");
    // Value errors of other sections are reported only once every section parses;
    // this file has an unknown key, which is a parse-level problem, so check both separately.
    std::fs::write(&f, "[smtp]\nmax_connections = 0\n").unwrap();
    let o = mailpipe(
        &["--config", f.to_str().unwrap(), "check-config"],
        &[("MAILPIPE__STORE__URL", "mysql://x")],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("smtp.max_connections") && e.contains("store.url"), "{e}");
}

#[test]
fn a_missing_secret_exits_2_and_names_the_key() {
    let o = mailpipe(&["tracker"], &[("MAILPIPE__STORE__URL", "sqlite::memory:")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("tokens.keys") && e.contains("tokens.recipient_key"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn an_unreachable_database_is_a_clear_error_not_a_hang() {
    let started = Instant::now();
    let o = mailpipe(&["migrate"], &[("MAILPIPE__STORE__URL", "postgres://u:secretpw@127.0.0.1:1/db")]);
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("PostgreSQL") && e.contains("scripts/services.sh up"), "{e}");
    assert!(!e.contains("secretpw"), "the password must not be printed: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn an_unreachable_broker_is_a_clear_error_not_a_hang() {
    let started = Instant::now();
    let db = std::env::temp_dir().join(format!("mailpipe-cli-{}.db", std::process::id()));
    let o = mailpipe(
        &["worker"],
        &[
            ("MAILPIPE__STORE__URL", &format!("sqlite:{}", db.display())),
            ("MAILPIPE__QUEUE__KIND", "kafka"),
            ("MAILPIPE__QUEUE__KAFKA__BROKERS", "127.0.0.1:1"),
            ("MAILPIPE__QUEUE__KAFKA__CONNECT_TIMEOUT_SECS", "2"),
            ("MAILPIPE__TOKENS__KEYS__1", "dGVzdC10b2tlbi1rZXktdGhhdC1pcy1hdC1sZWFzdC0zMi1ieXRlcw=="),
            ("MAILPIPE__TOKENS__RECIPIENT_KEY", "dGVzdC1yZWNpcGllbnQta2V5LXRoYXQtaXMtMzItYnl0ZXMtbG9uZw=="),
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("Kafka") && e.contains("scripts/services.sh up"), "{e}");
    let _ = std::fs::remove_file(db);
}

#[test]
fn enqueue_reports_invalid_lines_by_number_and_sends_nothing() {
    let dir = std::env::temp_dir().join(format!("mailpipe-enq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("jobs.jsonl");
    let good = r#"{"job_id":"a","tenant_id":"t","campaign_id":"c","category":"marketing","from":{"email":"f@x.example"},"to":{"email":"r@y.example"},"subject":"s","text":"t"}"#;
    std::fs::write(&f, format!("{good}\n{{oops\n\n{}\n", good.replace("r@y.example", "not-an-address")))
        .unwrap();
    // The broker address is unreachable on purpose: validation comes first.
    let o =
        mailpipe(&["enqueue", f.to_str().unwrap()], &[("MAILPIPE__QUEUE__KAFKA__BROKERS", "127.0.0.1:1")]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("jobs.jsonl:2:") && e.contains("jobs.jsonl:4:"), "{e}");
    assert!(e.contains("nothing was sent"), "{e}");
    assert!(!e.contains("jobs.jsonl:1:"), "{e}");
}
