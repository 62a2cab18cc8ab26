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
    // The keys below are published here: the tests may use them.
    c.env("MAILPIPE__TOKENS__ALLOW_PUBLISHED_KEYS", "true");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn keys_published_in_the_repository_are_refused_outside_development() {
    // The local compose stack's keys, as a deployment that copied them has them.
    let compose =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docker/docker-compose.yml"))
            .unwrap();
    let value = |name: &str| -> String {
        let line = compose.lines().find(|l| l.trim_start().starts_with(name)).unwrap();
        line.split_once(':').unwrap().1.trim().to_owned()
    };
    let env = [
        ("MAILPIPE__TOKENS__KEYS__1", value("MAILPIPE__TOKENS__KEYS__1")),
        ("MAILPIPE__TOKENS__RECIPIENT_KEY", value("MAILPIPE__TOKENS__RECIPIENT_KEY")),
        ("MAILPIPE__DOMAINS__KEYS__1", value("MAILPIPE__DOMAINS__KEYS__1")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut refused = env.clone();
    refused.push(("MAILPIPE__TOKENS__ALLOW_PUBLISHED_KEYS", "false"));
    let o = mailpipe(&["check-config"], &refused);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    for setting in ["tokens.keys.1", "tokens.recipient_key", "domains.keys.1"] {
        assert!(e.contains(&format!("{setting}: this key is published")), "{setting}: {e}");
    }
    // With the development switch (the tests' and the compose stack's), accepted.
    let o = mailpipe(&["check-config"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
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
    let o = mailpipe(
        &["migrate"],
        &[
            ("MAILPIPE__STORE__URL", "postgres://u:secretpw@127.0.0.1:1/db"),
            ("MAILPIPE__QUEUE__KIND", "kafka"),
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("PostgreSQL") && e.contains("scripts/services.sh up"), "{e}");
    assert!(!e.contains("secretpw"), "the password must not be printed: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn an_unreachable_broker_is_a_clear_error_not_a_hang() {
    let db = std::env::temp_dir().join(format!("mailpipe-cli-{}.db", std::process::id()));
    let url = format!("sqlite:{}", db.display());
    let mut env = vec![
        ("MAILPIPE__STORE__URL", url.as_str()),
        ("MAILPIPE__QUEUE__KIND", "kafka"),
        ("MAILPIPE__QUEUE__KAFKA__BROKERS", "127.0.0.1:1"),
        ("MAILPIPE__QUEUE__KAFKA__CONNECT_TIMEOUT_SECS", "2"),
        ("MAILPIPE__TOKENS__KEYS__1", "dGVzdC10b2tlbi1rZXktdGhhdC1pcy1hdC1sZWFzdC0zMi1ieXRlcw=="),
        ("MAILPIPE__TOKENS__RECIPIENT_KEY", "dGVzdC1yZWNpcGllbnQta2V5LXRoYXQtaXMtMzItYnl0ZXMtbG9uZw=="),
    ];
    // Without a key-encryption key the worker cannot open a DKIM key: a
    // configuration error, before any service is contacted.
    let o = mailpipe(&["worker"], &env);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("MAILPIPE__DOMAINS__KEYS__1"), "{}", stderr(&o));
    env.push(("MAILPIPE__DOMAINS__KEYS__1", "dGVzdC1rZXktZW5jcnlwdGlvbi1rZXktb2YtMzItYnl0ZXMh"));
    let started = Instant::now();
    let o = mailpipe(&["worker"], &env);
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
    let o = mailpipe(
        &["enqueue", f.to_str().unwrap()],
        &[("MAILPIPE__QUEUE__KIND", "kafka"), ("MAILPIPE__QUEUE__KAFKA__BROKERS", "127.0.0.1:1")],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("jobs.jsonl:2:") && e.contains("jobs.jsonl:4:"), "{e}");
    assert!(e.contains("nothing was sent"), "{e}");
    assert!(!e.contains("jobs.jsonl:1:"), "{e}");
}

const TOKEN_KEY: &str = "dGVzdC10b2tlbi1rZXktdGhhdC1pcy1hdC1sZWFzdC0zMi1ieXRlcw==";
const RECIPIENT_KEY: &str = "dGVzdC1yZWNpcGllbnQta2V5LXRoYXQtaXMtMzItYnl0ZXMtbG9uZw==";

/// A scratch directory and the settings of an embedded store in it.
fn embedded(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("mailpipe-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}/store/mailpipe.db", dir.display());
    (dir, url)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn suppressions_are_imported_whole_or_not_at_all_listed_by_hash_and_removed() {
    let (dir, url) = embedded("suppress");
    let keys = [("MAILPIPE__TOKENS__KEYS__1", TOKEN_KEY), ("MAILPIPE__TOKENS__RECIPIENT_KEY", RECIPIENT_KEY)];
    let env = |with_keys: bool| {
        let mut e = vec![("MAILPIPE__STORE__URL", url.as_str())];
        if with_keys {
            e.extend(keys);
        }
        e
    };
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "email,reason,applies_to\na@example.com,manual,all\nnope,manual,all\nb@example.com,manual,sometimes\n")
        .unwrap();
    let o = mailpipe(&["suppress", "import", bad.to_str().unwrap(), "--tenant", "acme"], &env(true));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("line 3") && e.contains("line 4") && e.contains("nothing was imported"), "{e}");
    assert!(!e.contains("line 2"), "{e}");
    // Listing needs no secrets, and shows that nothing was imported.
    let o = mailpipe(&["suppress", "list", "--tenant", "acme"], &env(false));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1, "the header only: {}", stdout(&o));

    let good = dir.join("good.csv");
    std::fs::write(&good, "a@example.com,manual,all\nb@example.com,unsubscribe,marketing\n").unwrap();
    let o = mailpipe(&["suppress", "import", good.to_str().unwrap(), "--tenant", "acme"], &env(true));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("imported 2 suppression(s)"), "{}", stdout(&o));
    let list = stdout(&mailpipe(&["suppress", "list", "--tenant", "acme"], &env(false)));
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{list}");
    assert!(rows.iter().all(|r| r.starts_with("acme,")), "{list}");
    assert!(list.contains(",manual,all,") && list.contains(",unsubscribe,marketing,"), "{list}");
    assert!(!list.contains("@example.com"), "hashes, never addresses: {list}");

    // An erasure is recorded only by `mailpipe erase`.
    let o = mailpipe(&["suppress", "add", "c@example.com", "--reason", "erasure"], &env(true));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("manual") && stderr(&o).contains("import"), "{}", stderr(&o));

    let o = mailpipe(&["suppress", "remove", "a@example.com", "--tenant", "acme"], &env(true));
    assert!(stdout(&o).contains("removed 1 suppression(s)"), "{}{}", stdout(&o), stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn erase_keeps_a_keyed_hash_and_an_unusable_complaint_report_is_kept_with_its_reason() {
    let (dir, url) = embedded("erase");
    let env = [
        ("MAILPIPE__STORE__URL", url.as_str()),
        ("MAILPIPE__TOKENS__KEYS__1", TOKEN_KEY),
        ("MAILPIPE__TOKENS__RECIPIENT_KEY", RECIPIENT_KEY),
    ];
    let o = mailpipe(&["erase", "--email", "gone@example.com"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("a keyed hash stays on the suppression list"), "{}", stdout(&o));
    let list = stdout(&mailpipe(&["suppress", "list"], &env));
    assert!(list.lines().any(|l| l.starts_with("platform,") && l.contains(",erasure,all,")), "{list}");
    let o = mailpipe(&["erase", "--email", "x@example.com", "--tenant", "not a tenant"], &env);
    assert!(stderr(&o).contains("--tenant"), "{}", stderr(&o));

    // A report that is not ARF is rejected and kept, even without the keys
    // that a usable one would need.
    let report = dir.join("report.eml");
    std::fs::write(&report, "From: a@example.net\r\nSubject: hi\r\n\r\nnot a report\r\n").unwrap();
    let o = mailpipe(&["complaint", report.to_str().unwrap()], &[("MAILPIPE__STORE__URL", url.as_str())]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("not_arf") && e.contains("stored for inspection"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bounce_parse_prints_a_json_line_per_recipient_and_names_only_sends_it_can_verify() {
    let keys = [("MAILPIPE__TOKENS__KEYS__1", TOKEN_KEY), ("MAILPIPE__TOKENS__RECIPIENT_KEY", RECIPIENT_KEY)];
    let vars = keys
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("MAILPIPE__TOKENS__ALLOW_PUBLISHED_KEYS".to_string(), "true".to_string())]);
    let cfg = mailpipe::Config::load(None, vars).unwrap();
    let reference = mailpipe::app::keys(&cfg).unwrap().hasher.references().sign(
        &mailpipe_core::TenantId::parse("acme").unwrap(),
        &mailpipe_core::JobId::parse("job-7").unwrap(),
    );
    let dsn = |rcpt: &str, reference: &str| {
        format!(
            "From: MAILER-DAEMON@mx.example\r\nTo: b@bounces.example\r\nSubject: Undelivered Mail Returned to Sender\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n\
             Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 unknown\r\n\r\n\
             --b\r\nContent-Type: text/rfc822-headers\r\n\r\nX-Mailpipe-Ref: {reference}\r\n\r\n--b--\r\n"
        )
    };
    let dir = std::env::temp_dir().join(format!("mailpipe-bounce-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ours, forged) = (dir.join("ours.eml"), dir.join("forged.eml"));
    std::fs::write(&ours, dsn("Gone@Example.com", &reference)).unwrap();
    std::fs::write(&forged, dsn("other@example.com", "acme/job-8/AAAAAAAAAAAAAAAAAAAAAA")).unwrap();
    let out =
        mailpipe(&["bounce", "parse", "--json", ours.to_str().unwrap(), forged.to_str().unwrap()], &keys);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> =
        stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for (line, file) in lines.iter().zip([&ours, &forged]) {
        assert_eq!(line["file"], file.display().to_string());
        assert_eq!((&line["status"], &line["reply_code"]), (&"5.1.1".into(), &550.into()));
        assert_eq!((&line["kind"], &line["reason"]), (&"hard_bounce".into(), &"user_unknown".into()));
    }
    assert_eq!(lines[0]["recipient"], "gone@example.com");
    assert_eq!(lines[0]["job"], "acme/job-7", "a reference whose MAC checks out names its send");
    assert_eq!(lines[1]["job"], serde_json::Value::Null, "a forged one names none");
    let missing = mailpipe(&["bounce", "parse", dir.join("nope.eml").to_str().unwrap()], &keys);
    assert!(!missing.status.success(), "a file that cannot be read fails the command");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn templates_are_compiled_before_they_are_registered_each_upload_the_next_version() {
    let (dir, url) = embedded("template");
    let env = [("MAILPIPE__STORE__URL", url.as_str())];
    let bad = dir.join("bad.html");
    std::fs::write(&bad, "<p>Hi\n{% if %}</p>").unwrap();
    let put = |html: &std::path::Path| {
        let html = html.to_str().unwrap().to_owned();
        mailpipe(
            &[
                "template",
                "put",
                "acme",
                "--campaign",
                "spring",
                "--id",
                "welcome",
                "--subject",
                "Hi {{ name }}",
                "--html",
                &html,
            ],
            &env,
        )
    };
    let o = put(&bad);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("html, line 2"), "{}", stderr(&o));
    let good = dir.join("good.html");
    std::fs::write(&good, "<p>Hi {{ name }}</p>").unwrap();
    for version in [1, 2] {
        let o = put(&good);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains(&format!("version {version}")), "{}", stdout(&o));
    }
    let list = stdout(&mailpipe(&["template", "list", "acme"], &env));
    assert!(list.contains("spring\twelcome\t2"), "{list}");
    assert_eq!(
        stdout(&mailpipe(&["template", "list", "globex"], &env)).lines().count(),
        1,
        "the header only"
    );
    let show =
        stdout(&mailpipe(&["template", "show", "acme", "--campaign", "spring", "--id", "welcome"], &env));
    assert!(show.contains("\"version\": 2") && show.contains("Hi {{ name }}</p>"), "{show}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_and_enqueue_refuse_the_demos_memory_queue_and_serve_needs_its_keys() {
    let (dir, url) = embedded("serve");
    let jobs = dir.join("jobs.jsonl");
    std::fs::write(&jobs, "").unwrap();
    let memory = [("MAILPIPE__STORE__URL", url.as_str()), ("MAILPIPE__QUEUE__KIND", "memory")];
    let o = mailpipe(&["serve"], &memory);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("set queue.kind = \"store\""), "{}", stderr(&o));
    let o = mailpipe(&["enqueue", jobs.to_str().unwrap()], &memory);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("the in-process \"memory\" queue is the demo's"), "{}", stderr(&o));
    // On the default store queue, nothing starts without the keys.
    let o = mailpipe(&["serve"], &[("MAILPIPE__STORE__URL", url.as_str())]);
    assert_eq!(o.status.code(), Some(2), "a configuration error: {}", stderr(&o));
    assert!(stderr(&o).contains("MAILPIPE__TOKENS__KEYS__1"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}
