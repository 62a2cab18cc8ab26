//! A tenant's template cannot take a worker down. Templates that build huge
//! values, write huge parts, or loop without end go to the real worker
//! binary among good jobs of another tenant: each hostile job is
//! dead-lettered with its reason, every good job is sent, the worker stays
//! up throughout, and its memory stays small (renders run in sandbox
//! processes with their own limit).

use std::collections::BTreeMap;
use std::time::Duration;

use mailpipe_tests::*;
use serde_json::json;

/// (template text, where it goes, the dead-letter reason it must get).
fn hostile() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        // Doubles a string thirty times: one instruction per step.
        (
            r#"{% set ns = namespace(s="x" * 1000000) %}{% for i in range(30) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"#,
            "text",
            "too_large",
        ),
        // A loop over a 100 MB string, made into a list of 100 million values.
        (r#"{% for c in ("x" * 100000000)|list %}{{ c }}{% endfor %}"#, "html", "too_large"),
        // indent with a huge width: one filter call, a gigabyte.
        (r#"{{ "a\nb\nc"|indent(1000000000) }}"#, "text", "too_large"),
        // 100 MB written out: stopped at the part's limit.
        (r#"{{ "x" * 100000000 }}"#, "html", "too_large"),
        // A subject of 5,000 bytes.
        (r#"{{ "x" * 5000 }}"#, "subject", "too_large"),
        // Loops without end: fuel.
        (
            r#"{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"#,
            "text",
            "template_error",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_templates_are_dead_lettered_and_the_worker_stays_up_and_small() {
    const GOOD: usize = 200;
    let env = TestEnv::setup().tenants(&["acme", "mallory"]).partitions(2).start().await;

    let mut records = Vec::new();
    let bad = hostile();
    let mut want: BTreeMap<String, &str> = BTreeMap::new();
    for (i, (template, part, reason)) in bad.iter().enumerate() {
        let mut j = job(i, "mallory", "evil", "b.example");
        j["subject"] = json!("s");
        j.as_object_mut().unwrap().remove("html");
        j["text"] = json!("plain");
        j[*part] = json!(template);
        want.insert(format!("job-{i:05}"), reason);
        records.push(keyed(&j));
    }
    // Variables past their limit never reach a template: the job does not
    // parse, so its dead letter names no tenant or job.
    let mut j = job(bad.len(), "mallory", "evil", "b.example");
    j["vars"]["blob"] = json!("x".repeat(300 * 1024));
    records.push(keyed(&j));
    // The good jobs around and after them.
    let good = campaign_jobs(0..GOOD, "acme", "good", &["a.example", "b.example"]);
    let (head, tail) = good.split_at(GOOD / 2);
    let mut all: Vec<_> = head.to_vec();
    all.extend(records);
    all.extend(tail.iter().cloned());
    env.enqueue(&all).await;

    let mut worker = env.worker_process();
    let total = (GOOD + want.len()) as i64;
    env.wait_finished(total, &mut worker, Duration::from_secs(120), "with hostile templates in the topic")
        .await;
    eventually("the unparsable job dead-lettered", Duration::from_secs(30), || async {
        env.count("SELECT COUNT(*) FROM dead_letters WHERE tenant_id IS NULL").await == 1
    })
    .await;
    worker.assert_running("after the hostile templates");
    // A sandbox that runs out of memory aborts; it must leave no core file,
    // which would hold a tenant's templates and recipients' variables.
    let sandboxes = render_sandboxes_of(worker.id());
    assert!(!sandboxes.is_empty(), "the worker keeps its sandbox pool");
    for pid in sandboxes {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
        let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap_or("");
        assert_eq!(
            core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
            ["0", "0"],
            "sandbox {pid}: {core}"
        );
    }
    let peak_rss_mb = worker.peak_rss_mb();
    let status = worker.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "the worker stops cleanly: {status:?}");

    assert_eq!(env.ledger("acme", "good").await.get("sent"), Some(&(GOOD as i64)), "every good job sent");
    assert_eq!(env.sink().message_ids_once().len(), GOOD, "and nothing else");
    let got: BTreeMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT job_id, reason FROM dead_letters WHERE tenant_id = 'mallory'",
    )
    .fetch_all(&mut env.pg().await)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let want: BTreeMap<String, String> = want.into_iter().map(|(k, v)| (k, v.to_owned())).collect();
    assert_eq!(got, want, "each hostile job dead-lettered with its reason");
    let (reason, detail): (String, String) =
        sqlx::query_as("SELECT reason, detail FROM dead_letters WHERE tenant_id IS NULL")
            .fetch_one(&mut env.pg().await)
            .await
            .unwrap();
    assert_eq!(reason, "too_large");
    assert!(detail.starts_with("vars are"), "{detail}");
    eprintln!("hostile templates: worker peak RSS {peak_rss_mb} MB (debug build)");
    // The worker alone: the sandboxes are other processes with their own
    // limit (render.memory_mb). A debug worker sending this campaign peaks
    // near 60 MB; 150 leaves room without hiding a 100 MB value.
    assert!(peak_rss_mb > 0 && peak_rss_mb < 150, "worker peak RSS {peak_rss_mb} MB");
}

/// The `mailpipe render-sandbox` children of process `parent`.
fn render_sandboxes_of(parent: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the fields after the last ')'.
            let ppid =
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains("render-sandbox")
        })
        .collect()
}

/// A template registered anew reaches a running worker without a restart:
/// the worker looks its version up again after `worker.template_recheck_ms`
/// and compiles the new one. A job pinned to a version (`template_version`)
/// renders that version after newer ones; one pinned to a version never
/// registered, or one retention has removed, is dead-lettered with a reason
/// that names it, and the running worker does not keep rendering it from
/// its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_uses_a_template_registered_anew_and_a_pinned_version() {
    let env = TestEnv::setup().var("MAILPIPE__WORKER__TEMPLATE_RECHECK_MS", "100").start().await;
    let register = |subject: &'static str| {
        let store = env.store.clone();
        async move {
            store
                .register_template("acme", "c", "welcome", subject, None, Some("Hi {{ name }}"))
                .await
                .unwrap()
        }
    };
    let registered = |i: usize, pin: Option<u32>| {
        let mut j = job(i, "acme", "c", "a.example");
        let o = j.as_object_mut().unwrap();
        o.remove("subject");
        o.remove("html");
        o.insert("template_id".into(), json!("welcome"));
        if let Some(v) = pin {
            o.insert("template_version".into(), json!(v));
        }
        keyed(&j)
    };
    let outcomes = |sent: i64, dead: i64| {
        let env = &env;
        async move {
            let l = env.ledger("acme", "c").await;
            l.get("sent") == Some(&sent) && l.get("dead_lettered").copied().unwrap_or(0) == dead
        }
    };
    assert_eq!(register("First {{ name }}").await, 1);
    let worker = env.start_worker();
    env.enqueue(&[registered(1, None)]).await;
    eventually("the first sent", Duration::from_secs(60), || outcomes(1, 0)).await;

    assert_eq!(register("Second {{ name }}").await, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.enqueue(&[registered(2, None), registered(3, Some(1)), registered(4, Some(7))]).await;
    eventually(
        "the latest and the pinned sent, the unknown version dead-lettered",
        Duration::from_secs(60),
        || outcomes(3, 1),
    )
    .await;
    let messages = env.sink().messages();
    assert!(messages.iter().any(|m| m.contains("Subject: First User 1")), "{messages:?}");
    assert!(
        messages.iter().any(|m| m.contains("Subject: Second User 2")),
        "version 2, same worker: {messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("Subject: First User 3")),
        "pinned to version 1: {messages:?}"
    );
    let dead = |job: &'static str| {
        let env = &env;
        async move {
            sqlx::query_as::<_, (String, String)>("SELECT reason, detail FROM dead_letters WHERE job_id = $1")
                .bind(job)
                .fetch_one(&mut env.pg().await)
                .await
                .unwrap()
        }
    };
    let (reason, detail) = dead("job-00004").await;
    assert_eq!(reason, "unknown_template");
    assert!(detail.contains("welcome version 7"), "{detail}");

    // Retention removes version 1 past its successor; the latest stays.
    let day = 86_400_000;
    let retention = mailpipe_store::Retention {
        events_days: 0,
        ledger_days: 0,
        client_details_days: 0,
        dead_letters_days: 0,
        rejected_reports_days: 0,
        webhook_deliveries_days: 0,
        template_versions_days: 90,
        purge_interval_hours: 0,
    };
    let now = mailpipe_core::now_ms();
    assert_eq!(
        env.store.purge(now, retention).await.unwrap().template_versions_deleted,
        0,
        "superseded today"
    );
    assert_eq!(env.store.purge(now + 91 * day, retention).await.unwrap().template_versions_deleted, 1);
    assert!(env.store.template("acme", "c", "welcome", Some(1)).await.unwrap().is_none());
    assert_eq!(
        env.store.template("acme", "c", "welcome", Some(2)).await.unwrap().unwrap().subject,
        "Second {{ name }}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.enqueue(&[registered(5, Some(1)), registered(6, Some(2))]).await;
    eventually(
        "pinned to the kept version sent, to the removed one dead-lettered",
        Duration::from_secs(60),
        || outcomes(4, 2),
    )
    .await;
    assert_eq!(dead("job-00005").await.0, "unknown_template", "not rendered from the worker's cache");
    assert!(env.sink().messages().iter().any(|m| m.contains("Subject: Second User 6")));
    worker.stop().await;
}

/// Versions on both backends: consecutive, each kept as registered, the one
/// replaced marked superseded, concurrent uploads each their own version;
/// an unknown version is none; and no statement, whoever runs it, changes
/// a kept version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_is_kept_unchanged_on_postgres_and_sqlite() {
    use sqlx::Connection;
    let pg = fresh_store().await;
    let path = std::env::temp_dir().join(format!("{}.db", unique("template-versions")));
    let lite = mailpipe_store::Store::connect(&format!("sqlite:{}", path.display()), 4).await.unwrap();
    lite.migrate().await.unwrap();
    for store in [pg.store.clone(), lite] {
        let b = store.backend();
        for (n, subject) in ["one", "two", "three"].into_iter().enumerate() {
            let v = store.register_template("acme", "c", "t", subject, Some("<p>x</p>"), None).await.unwrap();
            assert_eq!(v, n as i64 + 1, "{b}");
        }
        assert_eq!(store.register_template("globex", "c", "t", "theirs", None, Some("x")).await.unwrap(), 1);
        let versions = store.template_versions("acme", "c", "t").await.unwrap();
        assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3], "{b}");
        assert!(versions[..2].iter().all(|v| v.superseded_at.is_some()), "{b}: {versions:?}");
        assert_eq!(versions[2].superseded_at, None, "{b}: the latest");
        for (version, subject) in [(Some(1), "one"), (Some(2), "two"), (Some(3), "three"), (None, "three")] {
            let t = store.template("acme", "c", "t", version).await.unwrap().unwrap();
            assert_eq!(t.subject, subject, "{b}: {version:?}");
        }
        assert!(store.template("acme", "c", "t", Some(4)).await.unwrap().is_none());
        assert!(store.template("globex", "c", "t", Some(2)).await.unwrap().is_none());
        assert!(store.template_versions("acme", "c", "nope").await.unwrap().is_empty());

        // Eight uploads at once: versions 4 to 11, one each, one latest.
        let uploads = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .register_template("acme", "c", "t", &format!("at once {i}"), None, Some("x"))
                    .await
                    .unwrap()
            })
        });
        let mut got: Vec<i64> =
            futures::future::join_all(uploads).await.into_iter().map(Result::unwrap).collect();
        got.sort_unstable();
        assert_eq!(got, (4..=11).collect::<Vec<_>>(), "{b}");
        let versions = store.template_versions("acme", "c", "t").await.unwrap();
        assert_eq!(versions.len(), 11, "{b}");
        let current: Vec<_> = versions.iter().filter(|v| v.superseded_at.is_none()).collect();
        assert_eq!(current.iter().map(|v| v.version).collect::<Vec<_>>(), [11], "{b}: {versions:?}");
        let latest = store.template("acme", "c", "t", None).await.unwrap().unwrap();
        let kept = store.template("acme", "c", "t", Some(11)).await.unwrap().unwrap();
        assert_eq!((latest.version, &latest.subject), (11, &kept.subject), "{b}");
    }

    // Whoever asks, a kept version does not change: not its content, not
    // a superseded_at once set (the latest's may be set, once).
    let refused = [
        "UPDATE campaign_template_versions SET subject = 'changed' WHERE tenant_id = 'acme' AND version = 1",
        "UPDATE campaign_template_versions SET version = 99 WHERE tenant_id = 'acme' AND version = 1",
        "UPDATE campaign_template_versions SET superseded_at = NULL WHERE tenant_id = 'acme' AND version = 1",
    ];
    let mut owner = platform_connection(&pg.db).await;
    let mut lite = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display())).await.unwrap();
    for sql in refused {
        let e = sqlx::query(sql).execute(&mut owner).await.expect_err(sql).to_string();
        assert!(e.contains("never changes"), "postgres: {sql}: {e}");
        let e = sqlx::query(sql).execute(&mut lite).await.expect_err(sql).to_string();
        assert!(e.contains("never changes"), "sqlite: {sql}: {e}");
    }
    let one: String = sqlx::query_scalar(
        "SELECT subject FROM campaign_template_versions WHERE tenant_id = 'acme' AND version = 1",
    )
    .fetch_one(&mut owner)
    .await
    .unwrap();
    assert_eq!(one, "one");
    drop(lite);
    let _ = std::fs::remove_file(path);
}

/// A tenant registers its templates through the API: compiled at upload (a
/// syntax error comes back with its part and line), each upload the next
/// version, each tenant's its own (row-level security on the tenant's
/// context), every answer as docs/openapi.json says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_registers_its_templates_through_the_api() {
    use mailpipe_core::TenantId;
    let env = TestEnv::setup().tenants(&["acme", "globex"]).start().await;
    let (addr, server) = serve_api(env.store.clone()).await;
    let api = mailpipe_tests::openapi::OpenApi::load();
    let key = |t: &'static str| {
        let store = env.store.clone();
        async move { store.create_api_key(&TenantId::parse(t).unwrap(), "templates").await.unwrap() }
    };
    let (acme, globex) = (key("acme").await, key("globex").await);
    let post = |key: String, body: serde_json::Value| {
        let addr = addr.clone();
        async move {
            let auth = format!("Bearer {key}");
            let r = http(
                &addr,
                "POST",
                "/api/v1/templates",
                &[("Authorization", auth.as_str())],
                body.to_string().as_bytes(),
            )
            .await;
            (r.status, serde_json::from_slice::<serde_json::Value>(&r.body).unwrap_or_default())
        }
    };
    let upload = |html: &str| json!({"campaign_id": "spring", "template_id": "welcome", "subject": "Hi {{ name }}", "html": html});

    let (status, body) = post(acme.clone(), upload("<p>\n{{ name }}\n{% if %}</p>")).await;
    assert_eq!(
        (status, body["part"].as_str(), body["line"].as_u64()),
        (422, Some("html"), Some(3)),
        "{body}"
    );
    api.assert_answer("POST", "/api/v1/templates", 422, &body);
    for want in [1, 2] {
        let (status, body) = post(acme.clone(), upload(&format!("<p>v{want} {{{{ name }}}}</p>"))).await;
        assert_eq!((status, body["version"].as_i64()), (201, Some(want)), "{body}");
        api.assert_answer("POST", "/api/v1/templates", 201, &body);
    }
    let (status, body) = post(globex.clone(), upload("<p>theirs</p>")).await;
    assert_eq!((status, body["version"].as_i64()), (201, Some(1)), "another tenant's own: {body}");
    let (status, body) = post(
        acme.clone(),
        json!({"campaign_id": "spring", "template_id": "x", "subject": "s", "html": "h", "css": "no"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    api.assert_answer("POST", "/api/v1/templates", 400, &body);

    for (k, version) in [(&acme, 2), (&globex, 1)] {
        let (status, body) = api_get(&addr, "/api/v1/templates", k).await;
        assert_eq!(status, 200);
        api.assert_answer("GET", "/api/v1/templates", 200, &body);
        let t = body["templates"].as_array().unwrap();
        assert_eq!(t.len(), 1, "{body}");
        assert_eq!(t[0]["version"].as_i64(), Some(version), "{body}");
    }
    let kept = env.store.template("acme", "spring", "welcome", None).await.unwrap().unwrap();
    assert_eq!((kept.version, kept.html.as_deref()), (2, Some("<p>v2 {{ name }}</p>")));

    // Every version is kept and can be read back, the latest by default.
    let one = "/api/v1/templates/{campaign_id}/{template_id}";
    for (target, version, html) in [
        ("/api/v1/templates/spring/welcome", 2, "<p>v2 {{ name }}</p>"),
        ("/api/v1/templates/spring/welcome?version=1", 1, "<p>v1 {{ name }}</p>"),
    ] {
        let (status, body) = api_get(&addr, target, &acme).await;
        assert_eq!(
            (status, body["version"].as_i64(), body["html"].as_str()),
            (200, Some(version), Some(html))
        );
        api.assert_answer("GET", one, 200, &body);
    }
    let (status, body) = api_get(&addr, "/api/v1/templates/spring/welcome/versions", &acme).await;
    assert_eq!(status, 200, "{body}");
    api.assert_answer("GET", "/api/v1/templates/{campaign_id}/{template_id}/versions", 200, &body);
    let v = body["versions"].as_array().unwrap();
    assert_eq!(v.iter().map(|v| v["version"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2], "{body}");
    assert!(v[0]["superseded_at"].as_i64() >= v[1]["registered_at"].as_i64(), "v1 replaced by v2: {body}");
    assert!(v[1].get("superseded_at").is_none(), "the latest is current: {body}");
    // globex has its own spring/welcome at version 1 only: acme's second
    // version is not there for it, by either path.
    let (status, body) = api_get(&addr, "/api/v1/templates/spring/welcome?version=2", &globex).await;
    assert_eq!(status, 404, "{body}");
    api.assert_answer("GET", one, 404, &body);
    let (status, body) = api_get(&addr, "/api/v1/templates/spring/welcome", &globex).await;
    assert_eq!((status, body["html"].as_str()), (200, Some("<p>theirs</p>")), "{body}");
    let (status, body) = api_get(&addr, "/api/v1/templates/spring/nope/versions", &acme).await;
    assert_eq!(status, 404, "{body}");
    for bad in ["/api/v1/templates/spring/welcome?version=0", "/api/v1/templates/spring/welcome?v=1"] {
        let (status, body) = api_get(&addr, bad, &acme).await;
        assert_eq!(status, 400, "{bad}: {body}");
        api.assert_answer("GET", one, 400, &body);
    }
    let (status, _) = api_get(&addr, "/api/v1/templates", "mp_nobody").await;
    assert_eq!(status, 401);
    server.abort();
}

/// A deployment upgrading to 0028 keeps what it had registered as each
/// template's first kept version, though the table's FORCEd policies hide
/// every tenant's rows from the owner that migrates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_database_keeps_its_templates_as_versions() {
    use sqlx::Connection;
    let db = fresh_database().await;
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/mailpipe-store/migrations/postgres");
    migrate_postgres_before(&db.url, "0028").await;
    let mut owner = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO campaign_templates (tenant_id, campaign_id, template_id, subject, html, text, version, created_at)
         VALUES ('acme', 'c', 't', 'Third', NULL, 'x', 3, 1000), ('globex', 'c', 't', 'First', '<p>x</p>', NULL, 1, 2000)",
    )
    .execute(&mut platform_connection(&db.url).await)
    .await
    .unwrap();

    sqlx::migrate::Migrator::new(src.as_path())
        .await
        .unwrap()
        .run(&mut owner)
        .await
        .expect("0028 over templates");
    let store = mailpipe_store::Store::connect(&db.url, 2).await.unwrap();
    for (tenant, version, subject) in [("acme", 3, "Third"), ("globex", 1, "First")] {
        let kept = store.template(tenant, "c", "t", Some(version)).await.unwrap();
        assert_eq!(kept.map(|t| t.subject), Some(subject.to_owned()), "{tenant}");
    }
    assert_eq!(store.register_template("acme", "c", "t", "Fourth", None, Some("x")).await.unwrap(), 4);
    let versions = store.template_versions("acme", "c", "t").await.unwrap();
    assert_eq!(
        versions.iter().map(|v| (v.version, v.superseded_at.is_some())).collect::<Vec<_>>(),
        [(3, true), (4, false)]
    );
}
