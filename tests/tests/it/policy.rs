//! Unsubscribes and suppressions mean what the privacy policy says:
//! transactional mail (exempt from marketing unsubscribes) is for tenants
//! the operator allows, not a tenant's own say-so; and what a recipient
//! asked for cannot be lifted through the CLI by a tenant's hand.

use std::time::Duration;

use mailpipe_core::{Suppression, TenantId};
use mailpipe_tests::*;

fn transactional(i: usize, tenant: &str) -> (String, Vec<u8>) {
    let mut j = job(i, tenant, "receipts", "a.example");
    j["category"] = "transactional".into();
    keyed(&j)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tenants_the_operator_allows_send_transactional_mail() {
    let env = TestEnv::setup().tenants(&["acme", "mallory"]).start().await;
    let mallory = TenantId::parse("mallory").unwrap();
    assert!(env.store.set_transactional_allowed(&mallory, false).await.unwrap());
    let mut marketing = job(2, "mallory", "news", "a.example");
    marketing["job_id"] = "m-2".into();
    env.enqueue(&[transactional(0, "acme"), transactional(1, "mallory"), keyed(&marketing)]).await;

    let worker = env.start_worker();
    eventually("three outcomes", Duration::from_secs(30), || async {
        env.ledger("acme", "receipts").await.get("sent") == Some(&1)
            && env.ledger("mallory", "receipts").await.get("dead_lettered") == Some(&1)
            && env.ledger("mallory", "news").await.get("sent") == Some(&1)
    })
    .await;
    let (reason, detail): (String, String) =
        sqlx::query_as("SELECT reason, detail FROM dead_letters WHERE tenant_id = 'mallory'")
            .fetch_one(&mut env.pg().await)
            .await
            .unwrap();
    assert_eq!(reason, "category_not_allowed", "{detail}");

    // The operator allows it: the running worker applies it within seconds.
    let o = env.cli(&["tenant", "transactional", "mallory", "allow"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tokio::time::sleep(Duration::from_secs(6)).await;
    env.enqueue(&[transactional(3, "mallory")]).await;
    eventually("the allowed receipt sent", Duration::from_secs(30), || async {
        env.ledger("mallory", "receipts").await.get("sent") == Some(&1)
    })
    .await;
    worker.stop().await;
    assert_eq!(env.sink().message_ids_once().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lifts_only_what_a_sender_added() {
    let env = TestEnv::setup().start().await;
    let acme = TenantId::parse("acme").unwrap();
    let hash = |a: &str| test_keys().hasher.hash(a);
    // A recipient's unsubscribe and complaint, platform-wide, and a hard bounce.
    env.store.add_suppression(&Suppression::unsubscribe(&acme, hash("u@example.com"))).await.unwrap();
    env.store.add_suppression(&Suppression::complaint(&acme, hash("c@example.com"))).await.unwrap();
    env.store.add_suppression(&Suppression::hard_bounce(&acme, hash("b@example.com"))).await.unwrap();
    // acme's own list: an entry it added by hand, and an unsubscribe.
    for (address, reason) in [("m@example.com", "manual"), ("t@example.com", "unsubscribe")] {
        let o = env.cli(&["suppress", "add", address, "--tenant", "acme", "--reason", reason]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    let refused = |address: &str, tenant: Option<&str>| {
        let mut args = vec!["suppress", "remove", address];
        args.extend(tenant.iter().flat_map(|t| ["--tenant", t]));
        let o = env.cli(&args);
        assert!(!o.status.success(), "{address}: removing it must fail");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(err.contains("kept"), "{address}: {err}");
    };
    refused("u@example.com", None);
    refused("c@example.com", None);
    refused("t@example.com", Some("acme"));
    // Removable: what acme added by hand, and (by the operator) a hard bounce.
    for (address, tenant) in [("m@example.com", Some("acme")), ("b@example.com", None)] {
        let mut args = vec!["suppress", "remove", address];
        args.extend(tenant.iter().flat_map(|t| ["--tenant", *t]));
        let o = env.cli(&args);
        assert!(o.status.success(), "{address}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("removed 1"), "{address}");
    }
    let left: Vec<(String, String)> =
        sqlx::query_as("SELECT scope_tenant, reason FROM suppressions ORDER BY reason, scope_tenant")
            .fetch_all(&mut env.pg().await)
            .await
            .unwrap();
    let reasons: Vec<&str> = left.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(reasons, ["complaint", "unsubscribe", "unsubscribe"], "{left:?}");
}
