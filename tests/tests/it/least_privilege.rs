//! Least privilege in the database: the services connect as a role that
//! owns nothing, may not change the schema, and sees no tenant's row until
//! it says whose rows it works on; a tenant's context sees that tenant's
//! rows only, whatever the SQL asks for.

use mailpipe_core::{
    AppliesTo, CampaignId, Event, EventType, JobId, Reason, Scope, SendJob, Suppression, TenantId,
};
use mailpipe_store::{DeadLetter, LedgerStatus};
use mailpipe_tests::*;
use sqlx::Connection;

/// Every table that holds a tenant's rows, with the column that says whose.
const TENANT_TABLES: [(&str, &str); 20] = [
    ("tenants", "tenant_id"),
    ("campaign_templates", "tenant_id"),
    ("campaign_template_versions", "tenant_id"),
    ("send_ledger", "tenant_id"),
    ("suppressions", "scope_tenant"),
    ("events", "tenant_id"),
    ("dead_letters", "tenant_id"),
    ("campaign_counters", "tenant_id"),
    ("campaign_links", "tenant_id"),
    ("analytics_unique", "tenant_id"),
    ("api_keys", "tenant_id"),
    ("erasures", "scope_tenant"),
    ("sending_domain_tenants", "tenant_id"),
    ("sending_domains", "owner"),
    ("dkim_keys", "domain"),
    ("streams", "tenant_id"),
    ("sender_volume", "tenant_id"),
    ("webhook_endpoints", "tenant_id"),
    ("webhook_deliveries", "tenant_id"),
    ("warmup", "domain"),
];

fn event(kind: EventType, tenant: &str, job: &str, disc: &str) -> Event {
    let (t, c, j) =
        (TenantId::parse(tenant).unwrap(), CampaignId::parse("spring").unwrap(), JobId::parse(job).unwrap());
    let mut e = Event::for_job(kind, &t, &c, &j, disc);
    e.provider = Some("other".into());
    e
}

/// A row in every tenant table for each of `acme` and `globex`, through
/// the store's own paths (the env registered both, with a shared sending
/// domain and its DKIM key).
async fn seed(env: &TestEnv) {
    let store = &env.store;
    for tenant in ["acme", "globex"] {
        let t = TenantId::parse(tenant).unwrap();
        store.create_api_key(&t, "k").await.unwrap();
        // An endpoint first: the events counted below are queued to it.
        let url = format!("https://hooks.{tenant}.example/");
        store.add_webhook(tenant, &format!("wh_{tenant}"), &url, &[], b"sealed").await.unwrap();
        store.register_template(tenant, "spring", "welcome", "Hi", None, Some("Hi")).await.unwrap();
        let mut j = job(1, tenant, "spring", "example.com");
        j["to"]["email"] = format!("someone@{tenant}.example").into();
        claim(store, &SendJob::from_json(&serde_json::to_vec(&j).unwrap()).unwrap()).await;
        let mut sent = event(EventType::Sent, tenant, "job-00001", "");
        sent.sender_domain = Some(format!("news.{tenant}.example"));
        store.finish(tenant, "job-00001", LedgerStatus::Sent, Some("250 ok"), &sent).await.unwrap();
        store.apply_events(std::slice::from_ref(&sent)).await.unwrap();
        let click = event(EventType::Click, tenant, "job-00001", "c");
        let mut click = click;
        click.url = Some(format!("https://{tenant}.example/"));
        store.insert_events(std::slice::from_ref(&click)).await.unwrap();
        store.apply_events(&[click]).await.unwrap();
        let dl = DeadLetter {
            source: format!("send/0/{tenant}"),
            reason: "invalid_job".into(),
            detail: "test".into(),
            tenant_id: Some(tenant.into()),
            job_id: Some("job-00002".into()),
            payload: b"{}".to_vec(),
        };
        store.dead_letter(&dl, &event(EventType::DeadLettered, tenant, "job-00002", "")).await.unwrap();
        let manual = Suppression::new(
            Scope::Tenant(t.clone()),
            test_keys().hasher.hash(&format!("manual@{tenant}.example")),
            Reason::Manual,
            AppliesTo::Marketing,
        )
        .from_tenant(&t);
        store.add_suppression(&manual).await.unwrap();
        // One platform-wide entry from this tenant's mail: its row names the
        // tenant, so no tenant's context may read it.
        let unsubscribed = Suppression::new(
            Scope::Platform,
            test_keys().hasher.hash(&format!("left@{tenant}.example")),
            Reason::Unsubscribe,
            AppliesTo::Marketing,
        )
        .from_tenant(&t);
        store.add_suppression(&unsubscribed).await.unwrap();
        store.pause_stream(&mailpipe_store::StreamKey::tenant(&t), "test", 1).await.unwrap();
        let gone = mailpipe_core::EmailAddress::parse(&format!("gone@{tenant}.example")).unwrap();
        mailpipe_analytics::privacy::erase(store, &test_keys().hasher, &gone, &Scope::Tenant(t))
            .await
            .unwrap();
    }
}

/// A domain only globex may send as, with a key, warming up, and the
/// shared domain's warm-up too: as the platform, in SQL (onboarding it
/// properly would need DNS).
async fn seed_globex_domain(platform: &mut sqlx::PgConnection) {
    for sql in [
        "INSERT INTO sending_domains (domain, owner, status, created_at, updated_at) VALUES ('globex.example', 'globex', 'pending', 0, 0)",
        "INSERT INTO sending_domain_tenants (domain, tenant_id) VALUES ('globex.example', 'globex')",
        "INSERT INTO dkim_keys (domain, selector, algorithm, state, public_key, sealed_key, created_at, updated_at)
         VALUES ('globex.example', 's1', 'ed25519-sha256', 'pending', 'pk', '\\x00', 0, 0)",
        "INSERT INTO warmup (domain, provider, step, window_start, cap, started_at, updated_at)
         VALUES ('globex.example', 'google', 0, 0, 50, 0, 0), ('sender.example', 'google', 0, 0, 50, 0, 0)",
    ] {
        sqlx::query(sql).execute(&mut *platform).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Enters `tenant`'s context in `tx` as the store does (`context::enter`).
async fn enter(tx: &mut sqlx::PgConnection, tenant: &str) {
    sqlx::query(
        "SELECT set_config('role', 'mailpipe_api', true), set_config('mailpipe.scope', 'tenant', true),
                set_config('mailpipe.tenant', $1, true)",
    )
    .bind(tenant)
    .execute(tx)
    .await
    .unwrap();
}

async fn count(conn: &mut sqlx::PgConnection, table: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(conn).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_role_reads_no_tenant_row_without_a_tenant_context() {
    let env = TestEnv::setup().tenants(&["acme", "globex"]).start().await;
    seed(&env).await;
    let mut platform = env.pg().await;
    seed_globex_domain(&mut platform).await;

    // The list above is every table that says whose its rows are, and each
    // has row-level security FORCEd (the owner is held to it too).
    let tables: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND EXISTS (
           SELECT 1 FROM information_schema.columns k WHERE k.table_schema = 'public' AND k.table_name = c.relname
           AND k.column_name IN ('tenant_id', 'scope_tenant', 'source_tenant', 'owner', 'domain'))
         ORDER BY 1",
    )
    .fetch_all(&mut platform)
    .await
    .unwrap();
    let mut expected: Vec<&str> = TENANT_TABLES.iter().map(|(t, _)| *t).collect();
    expected.sort_unstable();
    assert_eq!(tables.iter().map(|(t, _, _)| t.as_str()).collect::<Vec<_>>(), expected);
    for &(ref t, enabled, forced) in &tables {
        assert!(enabled && forced, "{t}: row-level security enabled {enabled}, forced {forced}");
    }
    // The month partitions of events and dead letters (migration 0021):
    // no grant to either role (they go through the parent), and the
    // parent's policies FORCEd, for the owner.
    let parts: Vec<(String, bool, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relrowsecurity AND c.relforcerowsecurity,
                has_table_privilege('mailpipe_service', c.oid, 'SELECT, INSERT, UPDATE, DELETE'),
                has_table_privilege('mailpipe_api', c.oid, 'SELECT')
         FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relispartition ORDER BY 1",
    )
    .fetch_all(&mut platform)
    .await
    .unwrap();
    assert!(parts.iter().any(|p| p.0 == "events_default") && parts.len() >= 4, "{parts:?}");
    for p in &parts {
        assert!(
            p.1 && !p.2 && !p.3,
            "partition {}: policies forced {}, service grant {}, api grant {}",
            p.0,
            p.1,
            p.2,
            p.3
        );
    }

    // Seeded: the platform's context sees rows in every one.
    for (table, _) in TENANT_TABLES {
        assert!(count(&mut platform, table).await.unwrap() > 0, "{table} was seeded");
    }

    // The services' role, in no context: nothing, and it can write nothing.
    let service = service_url(&env.db);
    let mut bare = sqlx::PgConnection::connect(&service).await.unwrap();
    for (table, _) in TENANT_TABLES {
        assert_eq!(count(&mut bare, table).await.unwrap(), 0, "{table} as the services' role, no context");
    }
    let e = sqlx::query(
        "INSERT INTO suppressions (scope_tenant, recipient_hash, reason, applies_to, created_at)
         VALUES ('acme', 'ab', 'manual', 'marketing', 0)",
    )
    .execute(&mut bare)
    .await
    .unwrap_err();
    assert!(e.to_string().contains("row-level security"), "{e}");

    // The owner too, until it says whose rows.
    let mut owner = sqlx::PgConnection::connect(&env.db).await.unwrap();
    assert_eq!(count(&mut owner, "send_ledger").await.unwrap(), 0, "FORCEd: the owner sees nothing either");

    // In acme's context (what the tenant API runs in), a query that names
    // no tenant, or names globex, sees acme's rows only: even on a session
    // in the platform's scope, as the services' pooled connections are.
    sqlx::query("SET mailpipe.scope = 'platform'").execute(&mut bare).await.unwrap();
    let mut tx = bare.begin().await.unwrap();
    enter(&mut tx, "acme").await;
    let mut readable = 0;
    for (table, column) in TENANT_TABLES {
        let grant = format!("SELECT has_any_column_privilege('mailpipe_api', '{table}', 'SELECT')");
        if !sqlx::query_scalar::<_, bool>(&grant).fetch_one(&mut *tx).await.unwrap() {
            continue;
        }
        readable += 1;
        let owners: Vec<String> = sqlx::query_scalar(&format!("SELECT DISTINCT {column}::text FROM {table}"))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        let allowed: &[&str] = match table {
            // The shared domain acme may send as, and its key; not globex's.
            "sending_domains" => &[""],
            "dkim_keys" | "warmup" => &[TEST_SENDER_DOMAIN],
            _ => &["acme"],
        };
        assert!(!owners.is_empty(), "{table}: acme sees its own rows");
        assert!(owners.iter().all(|o| allowed.contains(&o.as_str())), "{table}: acme sees {owners:?}");
        let theirs =
            format!("SELECT count(*) FROM {table} WHERE {column}::text IN ('globex', 'globex.example')");
        assert_eq!(sqlx::query_scalar::<_, i64>(&theirs).fetch_one(&mut *tx).await.unwrap(), 0, "{table}");
    }
    // 11 since migration 0024: campaign_templates, which tenants register
    // their templates in (POST /api/v1/templates); 13 since 0025, their
    // webhook endpoints and deliveries; 14 since 0027, the warm-up of the
    // domains it may send as; 15 since 0028, its templates' kept versions.
    assert_eq!(readable, 15, "the tenant role reads the tables the API serves, dkim_keys by column");
    tx.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_role_cannot_change_the_schema_and_waits_for_the_owner_to_migrate() {
    let env = TestEnv::setup().tenants(&["acme"]).start().await;
    let mut conn = sqlx::PgConnection::connect(&service_url(&env.db)).await.unwrap();
    for ddl in [
        "CREATE TABLE mine (x int)",
        "ALTER TABLE send_ledger DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE send_ledger NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY platform ON events",
        "TRUNCATE events",
        "DELETE FROM _sqlx_migrations",
        "SET ROLE mailpipe",
    ] {
        let e = sqlx::query(ddl).execute(&mut conn).await.expect_err(ddl).to_string();
        assert!(e.contains("permission denied") || e.contains("must be owner"), "{ddl}: {e}");
    }
    assert!(
        !env.store.owns_tables().await.unwrap(),
        "the env's services connect as a role that owns nothing"
    );

    // A service on a schema the owner has not migrated says what to do
    // instead of failing on its first query; `migrate` as the owner fixes it.
    let fresh = fresh_database().await;
    let vars = vec![
        ("MAILPIPE__STORE__URL".to_string(), service_url(&fresh)),
        ("MAILPIPE__STORE__OWNER_URL".to_string(), fresh.url.clone()),
        ("MAILPIPE__QUEUE__KIND".to_string(), "kafka".to_string()),
    ];
    let cfg = mailpipe::Config::load(None, vars).unwrap();
    let e = mailpipe::app::store(&cfg).await.unwrap_err().to_string();
    assert!(e.contains("run `mailpipe migrate`"), "{e}");
    mailpipe::app::migrate(&cfg).await.unwrap();
    let store = mailpipe::app::store(&cfg).await.unwrap();
    assert_eq!(store.pending_migrations().await.unwrap(), Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_context_cannot_write_into_another_tenant() {
    let env = TestEnv::setup().tenants(&["acme", "globex"]).start().await;
    let (acme, globex) = (TenantId::parse("acme").unwrap(), TenantId::parse("globex").unwrap());
    let theirs = Suppression::new(
        Scope::Tenant(globex.clone()),
        test_keys().hasher.hash("x@globex.example"),
        Reason::Manual,
        AppliesTo::Marketing,
    );
    let as_acme = env.store.for_tenant(&acme);
    let e = as_acme.add_suppression(&theirs).await.unwrap_err().to_string();
    assert!(e.contains("row-level security"), "{e}");
    // Templates (migration 0024): its own, never in another's name.
    assert_eq!(as_acme.register_template("acme", "c", "t", "s", Some("h"), None).await.unwrap(), 1);
    let e =
        as_acme.register_template("globex", "c", "t", "s", Some("h"), None).await.unwrap_err().to_string();
    assert!(e.contains("row-level security"), "{e}");
    // Their kept versions (0028): acme's upload kept its own; in acme's
    // context no statement writes another's version, changes one, or
    // deletes one.
    assert_eq!(as_acme.template_versions("acme", "c", "t").await.unwrap().len(), 1);
    let mut conn = sqlx::PgConnection::connect(&service_url(&env.db)).await.unwrap();
    for (sql, want) in [
        (
            "INSERT INTO campaign_template_versions (tenant_id, campaign_id, template_id, version, subject, created_at)
             VALUES ('globex', 'c', 't', 7, 's', 0)",
            "row-level security",
        ),
        ("UPDATE campaign_template_versions SET subject = 'changed'", "permission denied"),
        ("DELETE FROM campaign_template_versions", "permission denied"),
    ] {
        let mut tx = conn.begin().await.unwrap();
        enter(&mut tx, "acme").await;
        let e = sqlx::query(sql).execute(&mut *tx).await.expect_err(sql).to_string();
        assert!(e.contains(want), "{sql}: {e}");
    }
    env.store.add_suppression(&theirs).await.unwrap();
    assert_eq!(as_acme.list_suppressions(&Scope::Tenant(globex.clone())).await.unwrap(), vec![]);
    let removal =
        as_acme.remove_suppression(&Scope::Tenant(globex.clone()), &theirs.recipient).await.unwrap();
    assert_eq!(removal.removed, 0);
    assert_eq!(
        env.store.list_suppressions(&Scope::Tenant(globex.clone())).await.unwrap().len(),
        1,
        "still there"
    );

    // In its own scope, acme's context may add its list (an imported
    // unsubscribe included) but never an erasure, and may remove only what
    // it added, even with SQL that forgets the rule.
    let entry = |who: &str, reason| {
        Suppression::new(Scope::Tenant(acme.clone()), test_keys().hasher.hash(who), reason, AppliesTo::All)
    };
    as_acme.add_suppression(&entry("a@x.example", Reason::Unsubscribe)).await.unwrap();
    as_acme.add_suppression(&entry("b@x.example", Reason::Manual).from_tenant(&acme)).await.unwrap();
    let e = as_acme.add_suppression(&entry("c@x.example", Reason::Erasure)).await.unwrap_err().to_string();
    assert!(e.contains("row-level security"), "{e}");
    let e = as_acme.add_suppression(&entry("d@x.example", Reason::Manual).from_tenant(&globex)).await;
    assert!(e.unwrap_err().to_string().contains("row-level security"), "not in another tenant's name");
    let mut conn = sqlx::PgConnection::connect(&service_url(&env.db)).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    enter(&mut tx, "acme").await;
    let deleted = sqlx::query("DELETE FROM suppressions").execute(&mut *tx).await.unwrap().rows_affected();
    tx.commit().await.unwrap();
    assert_eq!(deleted, 1, "only the manual entry");
    let left = env.store.list_suppressions(&Scope::Tenant(acme)).await.unwrap();
    assert_eq!(left.iter().map(|s| s.reason).collect::<Vec<_>>(), [Reason::Unsubscribe]);
}
