//! Sending domains against a real DNS server (Knot, `scripts/services.sh
//! up`): the preflight reads what is published and says what to fix; a
//! tenant sends only as its own verified domains, signed with their keys,
//! which dkimpy and opendkim-testkey verify through the same DNS; keys
//! rotate without a gap; private keys are stored only sealed.

use std::collections::HashSet;
use std::process::Output;
use std::time::Duration;

use mailpipe_core::{DkimAlgorithm, Domain, DomainStatus, KeyState, TenantId};
use mailpipe_domains::check::Checked;
use mailpipe_domains::onboard::{self, KeySource};
use mailpipe_domains::preflight::Check;
use mailpipe_domains::records::dkim_name;
use mailpipe_domains::{Dns, DomainError, Outcome, Permit};
use mailpipe_store::Owner;
use mailpipe_tests::dns::{TestZone, dkimpy_verify, dns_server, opendkim_testkey};
use mailpipe_tests::*;
use sqlx::Connection;

/// `[domains]` as the tests run it: this DNS server, and a platform with
/// an SPF include, a DMARC report address and a bounce host.
fn domains_toml() -> String {
    format!(
        "[domains]\nnameservers = [\"{}\"]\ndns_timeout_ms = 2000\nspf_include = \"_spf.mailpipe.test\"\n\
         dmarc_rua = \"dmarc@mailpipe.test\"\nreturn_path = \"bounces.mailpipe.test\"\n",
        dns_server()
    )
}

fn outcome(c: &Checked, check: Check) -> (Outcome, String) {
    let f = c
        .findings
        .iter()
        .find(|f| f.check == check)
        .unwrap_or_else(|| panic!("no {check:?} finding: {c:#?}"));
    (f.outcome, format!("{} / fix: {}", f.detail, f.fix.as_deref().unwrap_or("")))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Publishes every record line `mailpipe domain add` printed, as a zone file
/// has them: Knot parses what the operator would paste.
fn publish_printed(zone: &TestZone, printed: &str) -> usize {
    let mut n = 0;
    for line in printed.lines().filter(|l| !l.starts_with(';') && !l.trim().is_empty()) {
        let mut parts = line.splitn(5, ' ');
        let (name, _ttl, _class, kind, data) =
            (parts.next().unwrap(), parts.next(), parts.next(), parts.next().unwrap(), parts.next().unwrap());
        zone.add(name.trim_end_matches('.'), kind, data);
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preflight_reads_real_dns_and_says_what_to_fix() {
    let zone = TestZone::new();
    let env = TestEnv::setup().no_relay().toml(&domains_toml()).start().await;
    let cfg = env.config();
    let settings = &cfg.domains;
    let store = &env.store;
    let domain = Domain::parse(&zone.origin).unwrap();
    let sealer = mailpipe::app::sealer(&cfg).unwrap();
    let acme = Owner::Tenant(TenantId::parse("acme").unwrap());
    let records = onboard::add(
        store,
        &sealer,
        settings,
        &domain,
        &acme,
        &[],
        false,
        KeySource::Generate(DkimAlgorithm::Ed25519Sha256),
    )
    .await
    .unwrap();
    let dns = Dns::new(&settings.nameservers, settings.dns_timeout).unwrap();
    let check = || async {
        let d = store.sending_domain(&domain).await.unwrap().unwrap();
        mailpipe_domains::check(store, &dns, settings, &d).await.unwrap()
    };

    // Nothing published: pending, and each finding says what to publish.
    let c = check().await;
    assert_eq!(c.status, DomainStatus::Pending);
    let (o, text) = outcome(&c, Check::Dkim);
    assert_eq!(o, Outcome::Fail, "{text}");
    assert!(text.contains("no DKIM record") && text.contains("v=DKIM1; k=ed25519; p="), "{text}");
    assert_eq!(outcome(&c, Check::Spf).0, Outcome::Fail);
    assert!(outcome(&c, Check::Spf).1.contains("include:_spf.mailpipe.test"));
    assert_eq!(outcome(&c, Check::Dmarc).0, Outcome::Warn, "no DMARC record is a warning");
    assert_eq!(outcome(&c, Check::ReturnPath).0, Outcome::Fail);

    // Someone else's key at the selector: not verified, and told so.
    let dkim = &records[0];
    assert_eq!(dkim.kind, "TXT");
    zone.txt(&dkim.name, "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
    let c = check().await;
    assert_eq!(c.status, DomainStatus::Pending);
    assert!(
        outcome(&c, Check::Dkim).1.contains("publishes a different key"),
        "{:?}",
        outcome(&c, Check::Dkim)
    );

    // The right key, an SPF record without the platform, DMARC p=none.
    zone.delete(&dkim.name, "TXT");
    zone.txt(&dkim.name, &dkim.value);
    zone.txt(&zone.origin, "v=spf1 mx ~all");
    zone.txt(&format!("_dmarc.{}", zone.origin), "v=DMARC1; p=none; rua=mailto:d@example.org");
    let c = check().await;
    assert_eq!(c.status, DomainStatus::Verified, "{c:#?}");
    assert_eq!(outcome(&c, Check::Dkim).0, Outcome::Pass);
    let (o, text) = outcome(&c, Check::Spf);
    assert!(o == Outcome::Fail && text.contains("add include:_spf.mailpipe.test"), "{text}");
    let (o, text) = outcome(&c, Check::Dmarc);
    assert!(o == Outcome::Warn && text.contains("p=none"), "{text}");

    // Everything as it should be.
    zone.delete(&zone.origin, "TXT");
    zone.txt(&zone.origin, "v=spf1 include:_spf.mailpipe.test ~all");
    zone.delete(&format!("_dmarc.{}", zone.origin), "TXT");
    zone.txt(&format!("_dmarc.{}", zone.origin), "v=DMARC1; p=reject; adkim=s");
    zone.add(&format!("bounces.{}", zone.origin), "CNAME", "bounces.mailpipe.test.");
    let c = check().await;
    assert!(c.findings.iter().all(|f| f.outcome == Outcome::Pass), "{c:#?}");
    assert!(outcome(&c, Check::Dmarc).1.contains("DKIM strict"));

    // A DMARC record receivers would reject.
    zone.delete(&format!("_dmarc.{}", zone.origin), "TXT");
    zone.txt(&format!("_dmarc.{}", zone.origin), "v=DMARC1; p=sometimes");
    let c = check().await;
    let (o, text) = outcome(&c, Check::Dmarc);
    assert!(o == Outcome::Fail && text.contains("p=sometimes is not none, quarantine or reject"), "{text}");

    // The DKIM record goes: failing (still sending) until the grace is
    // over, then disabled.
    zone.delete(&dkim.name, "TXT");
    let c = check().await;
    assert_eq!(c.status, DomainStatus::Failing);
    assert!(c.status.may_send());
    let mut no_grace = settings.clone();
    no_grace.failing_grace = Duration::ZERO;
    let d = store.sending_domain(&domain).await.unwrap().unwrap();
    let c = mailpipe_domains::check(store, &dns, &no_grace, &d).await.unwrap();
    assert_eq!(c.status, DomainStatus::Disabled);
    assert!(!c.status.may_send());
    // Published again: verified again.
    zone.txt(&dkim.name, &dkim.value);
    assert_eq!(check().await.status, DomainStatus::Verified);
}

/// A DNS server on loopback that answers every query with SERVFAIL (a
/// broken upstream, which Knot cannot be made to play). Lives as long as
/// the test process.
fn servfail_server() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            // Header, then the question: labels up to the root, type, class.
            let mut end = 12;
            while end < n && buf[end] != 0 {
                end += 1 + buf[end] as usize;
            }
            let end = (end + 5).min(n);
            let mut reply = buf[..end].to_vec();
            reply[2] = 0x80 | (buf[2] & 0x79); // QR, the query's opcode and RD
            reply[3] = 0x82; // RA, RCODE 2 (SERVFAIL)
            reply[6..12].fill(0); // no answer, authority or additional records
            let _ = socket.send_to(&reply, peer);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_that_does_not_answer_is_reported_and_decides_nothing() {
    let zone = TestZone::new();
    let env = TestEnv::setup().no_relay().toml(&domains_toml()).start().await;
    let cfg = env.config();
    let sealer = mailpipe::app::sealer(&cfg).unwrap();
    let acme = Owner::Tenant(TenantId::parse("acme").unwrap());
    let domain = Domain::parse(&zone.origin).unwrap();
    let source = KeySource::Generate(DkimAlgorithm::Ed25519Sha256);
    let records =
        onboard::add(&env.store, &sealer, &cfg.domains, &domain, &acme, &[], false, source).await.unwrap();
    zone.txt(&records[0].name, &records[0].value);
    let real = Dns::new(&cfg.domains.nameservers, cfg.domains.dns_timeout).unwrap();
    let d = env.store.sending_domain(&domain).await.unwrap().unwrap();
    assert_eq!(
        mailpipe_domains::check(&env.store, &real, &cfg.domains, &d).await.unwrap().status,
        DomainStatus::Verified
    );

    // A server that never answers (a bound socket nobody reads): every
    // finding says DNS did not answer, and the domain stays verified.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = Dns::new(&[silent.local_addr().unwrap()], Duration::from_millis(300)).unwrap();
    let d = env.store.sending_domain(&domain).await.unwrap().unwrap();
    let c = mailpipe_domains::check(&env.store, &dead, &cfg.domains, &d).await.unwrap();
    // Nothing proven either way: failing, so it still sends through its
    // grace, and goes on failing (then disabled) if DNS stays silent.
    assert_eq!(c.status, DomainStatus::Failing, "{c:#?}");
    let (o, text) = outcome(&c, Check::Dkim);
    assert!(o == Outcome::Fail && text.contains("DNS did not answer"), "{text}");

    // A server that answers SERVFAIL to everything: the same.
    let servfail = servfail_server();
    let broken = Dns::new(&[servfail], Duration::from_millis(2000)).unwrap();
    let d = env.store.sending_domain(&domain).await.unwrap().unwrap();
    let c = mailpipe_domains::check(&env.store, &broken, &cfg.domains, &d).await.unwrap();
    assert_eq!(c.status, DomainStatus::Failing, "{c:#?}");
    let (o, text) = outcome(&c, Check::Dkim);
    assert!(o == Outcome::Fail && text.contains("DNS did not answer"), "{text}");
    assert!(c.findings.iter().all(|f| f.outcome == Outcome::Fail), "no pass from a failed server: {c:#?}");
    // DNS answers again: verified again.
    let d = env.store.sending_domain(&domain).await.unwrap().unwrap();
    assert_eq!(
        mailpipe_domains::check(&env.store, &real, &cfg.domains, &d).await.unwrap().status,
        DomainStatus::Verified
    );

    // A name the server is not authoritative for: Knot refuses it, which is
    // a failure to answer, not an absent record.
    let elsewhere = Domain::parse("mailpipe-elsewhere.example").unwrap();
    let source = KeySource::Generate(DkimAlgorithm::Ed25519Sha256);
    onboard::add(&env.store, &sealer, &cfg.domains, &elsewhere, &acme, &[], false, source).await.unwrap();
    let d = env.store.sending_domain(&elsewhere).await.unwrap().unwrap();
    let c = mailpipe_domains::check(&env.store, &real, &cfg.domains, &d).await.unwrap();
    assert_eq!(c.status, DomainStatus::Pending);
    let (o, text) = outcome(&c, Check::Dkim);
    assert!(o == Outcome::Fail && text.contains("DNS did not answer"), "{text}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sends_only_as_its_own_verified_domains_signed_with_their_keys() {
    let zone = TestZone::new();
    let env = TestEnv::setup().tenants(&["acme", "globex"]).toml(&domains_toml()).start().await;
    let globex_domain = zone.origin.clone();

    // Globex brings its own RSA key, made by OpenSSL.
    let dir = std::env::temp_dir().join(unique("byok"));
    std::fs::create_dir_all(&dir).unwrap();
    let pem_path = dir.join("globex.pem");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&pem_path)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let pem = std::fs::read(&pem_path).unwrap();
    let key_file = pem_path.display().to_string();
    let o = env.cli(&[
        "domain",
        "add",
        "globex",
        &globex_domain,
        "--algorithm",
        "rsa-sha256",
        "--key-file",
        &key_file,
        "--selector",
        "s2026",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    let printed = stdout(&o);
    assert!(
        printed.contains(&format!("s2026._domainkey.{globex_domain}. 3600 IN TXT \"v=DKIM1; k=rsa; p=")),
        "{printed}"
    );
    // Acme may not claim it.
    let o = env.cli(&["domain", "add", "acme", &globex_domain]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("held by another tenant"));

    // A worker that would not look for changes for an hour: what lets the
    // newly verified domain send at once is that a refused job looks first.
    let worker = env.start_worker_with(env.config_with(&[("MAILPIPE__DOMAINS__REFRESH_MS", "3600000")]));
    let job_from = |i: usize, tenant: &str, from: &str| {
        let mut j = job(i, tenant, "domains", "example.com");
        j["from"]["email"] = from.into();
        keyed(&j)
    };
    // Not verified yet: refused, nothing signed, nothing sent.
    env.enqueue(&[job_from(1, "globex", &format!("news@{globex_domain}"))]).await;
    eventually("the unverified domain's job is refused", Duration::from_secs(30), || async {
        env.ledger("globex", "domains").await.get("dead_lettered") == Some(&1)
    })
    .await;

    // Published as printed, checked: verified, and the key is the one
    // OpenSSL made, by opendkim's own test.
    assert_eq!(publish_printed(&zone, &printed), 4, "DKIM, SPF, DMARC, return path");
    let o = env.cli(&["domain", "check", &globex_domain]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).starts_with(&format!("{globex_domain}: verified")), "{}", stdout(&o));
    let testkey =
        opendkim_testkey(&globex_domain, "s2026", &pem).unwrap_or_else(|e| panic!("opendkim-testkey: {e}"));
    assert!(testkey.contains("key OK"), "{testkey}");

    // The running worker takes the new domain up for the next job. Acme's
    // job from Globex's domain, and from a domain nobody holds, are refused.
    env.enqueue(&[
        job_from(2, "globex", &format!("news@{globex_domain}")),
        job_from(3, "acme", &format!("news@{globex_domain}")),
        job_from(4, "acme", "news@unregistered.example"),
        job_from(5, "acme", &format!("news@{TEST_SENDER_DOMAIN}")),
    ])
    .await;
    eventually("two sent, three refused", Duration::from_secs(30), || async {
        env.ledger("globex", "domains").await.get("sent") == Some(&1)
            && env.ledger("acme", "domains").await.get("sent") == Some(&1)
            && env.ledger("acme", "domains").await.get("dead_lettered") == Some(&2)
    })
    .await;
    let dlq = read_topic(&env.topics.dlq, 3, Duration::from_secs(30));
    let reasons: HashSet<&str> =
        dlq.iter().map(|r| r.headers.get("mailpipe-reason").map(String::as_str).unwrap_or("")).collect();
    assert_eq!(reasons, HashSet::from(["sender_domain_not_verified"]));

    // On the wire: Globex's message signed d=its domain with its key,
    // Acme's with the platform domain's; dkimpy verifies both through DNS
    // for the first, and the platform key is not in DNS (attested), so only
    // its d= is checked.
    let messages = env.sink().messages();
    assert_eq!(messages.len(), 2, "nothing else reached the relay");
    let globex_msg =
        messages.iter().find(|m| m.contains(&format!("From: \"Sender\" <news@{globex_domain}>"))).unwrap();
    let verdict = dkimpy_verify(globex_msg.as_bytes()).unwrap_or_else(|e| panic!("dkimpy: {e}"));
    assert_eq!(verdict, format!("pass d={globex_domain} s=s2026"));
    let acme_msg = messages.iter().find(|m| m.contains(&format!("<news@{TEST_SENDER_DOMAIN}>"))).unwrap();
    assert!(acme_msg.contains(&format!("d={TEST_SENDER_DOMAIN};")), "{acme_msg}");

    // A tampered message fails the same verification.
    let tampered = globex_msg.replace("Subject: Hello", "Subject: Hullo");
    assert!(dkimpy_verify(tampered.as_bytes()).is_err());

    // Removed: a running worker refuses its mail again once it looks for
    // changes (every domains.refresh_ms, 200 here).
    worker.stop().await;
    let worker = env.start_worker();
    let o = env.cli(&["domain", "remove", &globex_domain]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // One job at a time, each waited for, until one is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for i in 10.. {
        assert!(std::time::Instant::now() < deadline, "the removed domain still sends");
        let before = env.ledger("globex", "domains").await;
        env.enqueue(&[job_from(i, "globex", &format!("news@{globex_domain}"))]).await;
        let total = before.values().sum::<i64>() + 1;
        eventually("the probe's outcome", Duration::from_secs(30), || async {
            env.ledger("globex", "domains").await.values().sum::<i64>() == total
        })
        .await;
        let after = env.ledger("globex", "domains").await;
        if after.get("dead_lettered") > before.get("dead_lettered") {
            break;
        }
    }
    worker.stop().await;

    // The key Globex brought is stored sealed: no 16 bytes of its DER form
    // appear in the store's row. (Removed above, so re-added to look.)
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-outform", "DER", "-in"])
        .arg(&pem_path)
        .output()
        .expect("openssl");
    assert!(der.status.success() && der.stdout.len() > 1000);
    let o =
        env.cli(&["domain", "add", "globex", &globex_domain, "--key-file", &key_file, "--selector", "s2026"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut conn = env.pg().await;
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT sealed_key FROM dkim_keys WHERE domain = $1")
        .bind(&globex_domain)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        der.stdout.windows(16).all(|w| !sealed.windows(16).any(|s| s == w)),
        "the private key is stored in the clear"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Sends job `i` from `from` as acme and returns the message the sink got.
async fn send_one(env: &TestEnv, i: usize, from: &str) -> String {
    let mut j = job(i, "acme", "rotation", "example.com");
    j["from"]["email"] = from.into();
    env.enqueue(&[keyed(&j)]).await;
    let marker = format!("X-Mailpipe-Ref: acme/job-{i:05}");
    eventually(&format!("job {i} on the sink"), Duration::from_secs(30), || async {
        env.sink().messages().iter().any(|m| m.contains(&marker))
    })
    .await;
    env.sink().messages().into_iter().find(|m| m.contains(&marker)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotates_without_a_gap_and_private_keys_are_stored_only_sealed() {
    let zone = TestZone::new();
    let env = TestEnv::setup().toml(&domains_toml()).start().await;
    let domain = zone.origin.clone();
    let from = format!("news@{domain}");
    // A selector with characters DNS labels cannot have is refused up front.
    let o = env.cli(&["domain", "add", "acme", &domain, "--key-file", "/dev/null", "--selector", "bad_sel!"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("selector"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = env.cli(&["domain", "add", "acme", &domain, "--algorithm", "ed25519-sha256"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    publish_printed(&zone, &stdout(&o));
    assert!(env.cli(&["domain", "check", &domain]).status.success());
    let worker = env.start_worker();
    let before = send_one(&env, 1, &from).await;

    // Rotate: a new pending key; the old one signs until the new record is
    // seen.
    let o = env.cli(&["domain", "rotate", &domain, "--algorithm", "rsa-sha256"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = env.store.sending_domain(&Domain::parse(&domain).unwrap()).await.unwrap().unwrap();
    let states: Vec<KeyState> = d.keys.iter().map(|k| k.state).collect();
    assert_eq!(states, [KeyState::Active, KeyState::Pending]);
    let (old, new) = (d.keys[0].selector.clone(), d.keys[1].selector.clone());
    // Checked before the new record is out: still verified, the rotation
    // waits (a warning, not a failure), and mail is still signed the old way.
    let o = env.cli(&["domain", "check", &domain]);
    let new_name = dkim_name(&new, &Domain::parse(&domain).unwrap());
    let waiting = stdout(&o).lines().find(|l| l.contains(&new_name)).map(str::to_owned).unwrap_or_default();
    assert!(o.status.success() && waiting.starts_with("warn"), "{}", stdout(&o));
    assert!(env.cli(&["domain", "rotate", &domain]).status.code() == Some(1), "one rotation at a time");
    let during = send_one(&env, 2, &from).await;
    assert_eq!(dkimpy_verify(during.as_bytes()), Ok(format!("pass d={domain} s={old}")));

    let o = env.cli(&["domain", "records", &domain]);
    let new_line = stdout(&o)
        .lines()
        .find(|l| l.starts_with(&dkim_name(&new, &Domain::parse(&domain).unwrap())))
        .unwrap()
        .to_owned();
    publish_printed(&zone, &new_line);
    let o = env.cli(&["domain", "check", &domain]);
    assert!(
        stdout(&o).contains(&format!("rotation complete: selector {new} signs from now on")),
        "{}",
        stdout(&o)
    );
    let d = env.store.sending_domain(&Domain::parse(&domain).unwrap()).await.unwrap().unwrap();
    assert_eq!(d.active_key().unwrap().selector, new);
    assert_eq!(d.status, DomainStatus::Verified);

    // The running worker moves to the new key within its refresh (200 ms
    // here): mail one job at a time until one carries the new selector; from
    // then on every one does, and each verifies through DNS.
    let mut i = 3;
    let after = loop {
        assert!(i < 200, "the worker never moved to the new key");
        let m = send_one(&env, i, &from).await;
        i += 1;
        match dkimpy_verify(m.as_bytes()) {
            Ok(v) if v == format!("pass d={domain} s={new}") => break m,
            Ok(v) if v == format!("pass d={domain} s={old}") => continue,
            other => panic!("job {}: {other:?}", i - 1),
        }
    };
    assert!(after.contains("a=rsa-sha256"), "the new key is the RSA one");
    let next = send_one(&env, i, &from).await;
    assert_eq!(dkimpy_verify(next.as_bytes()), Ok(format!("pass d={domain} s={new}")));
    // Mail signed before the rotation still verifies: the old record stays
    // published until its key is retired.
    assert_eq!(dkimpy_verify(before.as_bytes()), Ok(format!("pass d={domain} s={old}")));
    worker.stop().await;

    // The old key stays until retired; only a replaced key can be.
    assert!(!env.cli(&["domain", "retire", &domain, new.as_str()]).status.success());
    assert!(env.cli(&["domain", "retire", &domain, old.as_str()]).status.success());

    // The key-encryption key rotates: with key 2 added and active, reseal
    // moves every key to it; then key 1 can go, and every key still opens.
    let o = std::process::Command::new(mailpipe_binary())
        .args(["domain", "reseal"])
        .envs(env.process_vars())
        .envs([
            ("MAILPIPE__DOMAINS__KEYS__2", "c2Vjb25kLWtleS1lbmNyeXB0aW9uLWtleS1vZi0zMi1ieXRlcyE="),
            ("MAILPIPE__DOMAINS__ACTIVE_KEY", "2"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).starts_with("resealed 2 keys under key-encryption key 2"), "{}", stdout(&o));
    let only_two = env.config_with(&[
        ("MAILPIPE__DOMAINS__KEYS__1", "c2Vjb25kLWtleS1lbmNyeXB0aW9uLWtleS1vZi0zMi1ieXRlcyE="),
        ("MAILPIPE__DOMAINS__ACTIVE_KEY", "1"),
    ]);
    // (Key 2's secret under id 1 opens nothing: the sealed form names id 2.)
    let renamed =
        mailpipe_domains::Senders::load(&env.store, mailpipe::app::sealer(&only_two).unwrap()).await.unwrap();
    // Its mail waits rather than being refused: the key is there, this
    // worker just cannot open it.
    assert!(matches!(renamed.permit(&TenantId::parse("acme").unwrap(), &domain), Permit::KeyUnavailable));
    let mut vars: Vec<(String, String)> =
        env.vars.iter().filter(|(k, _)| k != "MAILPIPE__DOMAINS__KEYS__1").cloned().collect();
    vars.push((
        "MAILPIPE__DOMAINS__KEYS__2".into(),
        "c2Vjb25kLWtleS1lbmNyeXB0aW9uLWtleS1vZi0zMi1ieXRlcyE=".into(),
    ));
    vars.push(("MAILPIPE__DOMAINS__ACTIVE_KEY".into(), "2".into()));
    let cfg2 = mailpipe::Config::load(None, vars).unwrap();
    let senders =
        mailpipe_domains::Senders::load(&env.store, mailpipe::app::sealer(&cfg2).unwrap()).await.unwrap();
    let Permit::Sign(key) = senders.permit(&TenantId::parse("acme").unwrap(), &domain) else {
        panic!("the key does not open under key 2 alone");
    };
    assert_eq!(key.selector(), new.as_str());

    // At rest: sealed (version 1, key-encryption key 2), never PEM.
    let mut conn = env.pg().await;
    let sealed: Vec<Vec<u8>> = sqlx::query_scalar("SELECT sealed_key FROM dkim_keys WHERE domain = $1")
        .bind(&domain)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(sealed.len(), 1, "the retired key is gone");
    assert_eq!(sealed[0][..3], [1, 0, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_api_a_tenant_adds_and_checks_only_its_own_domains() {
    let zone = TestZone::new();
    let mut settings_toml = domains_toml();
    settings_toml.push_str("tenant_domain_limit = 3\n");
    let env = TestEnv::setup().no_relay().tenants(&["acme", "globex"]).toml(&settings_toml).start().await;
    let cfg = env.config();
    let (acme, globex) = (TenantId::parse("acme").unwrap(), TenantId::parse("globex").unwrap());
    let acme_key = format!("Bearer {}", env.store.create_api_key(&acme, "t").await.unwrap());
    let globex_key = format!("Bearer {}", env.store.create_api_key(&globex, "t").await.unwrap());
    let api = mailpipe_analytics::DomainsApi::new(mailpipe::app::sealer(&cfg).unwrap(), cfg.domains.clone());
    let keys = mailpipe::app::keys(&cfg).unwrap();
    let state = mailpipe_analytics::ApiState::new(env.store.clone(), keys.hasher).with_domains(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, mailpipe_analytics::router(state)).await;
    });
    let call = |method: &'static str, path: String, key: &str, body: String| {
        let (addr, key) = (addr.clone(), key.to_owned());
        async move {
            let r = http(
                &addr,
                method,
                &path,
                &[("Authorization", key.as_str()), ("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await;
            let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            (r.status, json)
        }
    };
    let domain = zone.origin.clone();

    let (status, added) = call(
        "POST",
        "/api/v1/domains".into(),
        &acme_key,
        format!("{{\"domain\": \"{domain}\", \"algorithm\": \"ed25519-sha256\"}}"),
    )
    .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!((added["status"].as_str(), added["owner"].as_str()), (Some("pending"), Some("tenant")));
    let dkim = added["records"][0].clone();
    assert_eq!(dkim["purpose"], "dkim");
    assert!(!added.to_string().contains("sealed"), "{added}");
    // Again: the same domain and records, nothing new.
    let (status, again) =
        call("POST", "/api/v1/domains".into(), &acme_key, format!("{{\"domain\": \"{domain}\"}}")).await;
    assert_eq!((status, &again["records"][0]), (201, &dkim));

    // Bad input: a clear 400, nothing stored.
    for body in [
        "{\"domain\": \"not a domain!\"}",
        "{\"domain\": \"x.example\", \"algorithm\": \"dsa\"}",
        "{nope",
        "{\"domain\": \"a..example\"}",
    ] {
        let (status, e) = call("POST", "/api/v1/domains".into(), &acme_key, body.into()).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    // An internationalised name is held as its A-label.
    let idn = format!("bücher.{domain}");
    let (status, d) = call(
        "POST",
        "/api/v1/domains".into(),
        &acme_key,
        format!("{{\"domain\": \"{idn}\", \"algorithm\": \"ed25519-sha256\"}}"),
    )
    .await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(d["domain"].as_str(), Some(format!("xn--bcher-kva.{domain}").as_str()));

    // Globex cannot take it, see it, or check it; its 404 is a missing one's.
    let (status, _) =
        call("POST", "/api/v1/domains".into(), &globex_key, format!("{{\"domain\": \"{domain}\"}}")).await;
    assert_eq!(status, 409);
    let (_, list) = call("GET", "/api/v1/domains".into(), &globex_key, String::new()).await;
    let names: Vec<&str> =
        list["domains"].as_array().unwrap().iter().filter_map(|d| d["domain"].as_str()).collect();
    assert_eq!(names, [TEST_SENDER_DOMAIN], "globex sees only the platform domain it may use");
    let theirs = call("POST", format!("/api/v1/domains/{domain}/check"), &globex_key, String::new()).await;
    let missing =
        call("POST", "/api/v1/domains/nothing.example/check".into(), &globex_key, String::new()).await;
    assert_eq!((theirs.0, &theirs.1), (404, &missing.1));

    // A limit on how many a tenant holds (3 here: two added, one more).
    let (status, _) = call(
        "POST",
        "/api/v1/domains".into(),
        &acme_key,
        format!("{{\"domain\": \"c.{domain}\", \"algorithm\": \"ed25519-sha256\"}}"),
    )
    .await;
    assert_eq!(status, 201);
    let (status, e) =
        call("POST", "/api/v1/domains".into(), &acme_key, format!("{{\"domain\": \"d.{domain}\"}}")).await;
    assert_eq!(status, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("at most 3"), "{e}");

    // Published and checked through the API: verified.
    zone.txt(dkim["name"].as_str().unwrap(), dkim["value"].as_str().unwrap());
    let (status, c) = call("POST", format!("/api/v1/domains/{domain}/check"), &acme_key, String::new()).await;
    assert_eq!((status, c["status"].as_str()), (200, Some("verified")), "{c}");
    let page = http(&addr, "GET", "/dashboard/domains", &[("Authorization", acme_key.as_str())], b"").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains(&format!("id=\"s-{domain}\">verified")), "{}", page.text());
    assert!(
        page.text().contains("Nothing sent yet: every provider starts at day 1."),
        "a tenant's new domain warms up"
    );

    // Under row-level security, as the API's role on a connection of the
    // services' role: globex's view has none of acme's rows, and the sealed
    // keys are not readable at all.
    let mut conn = sqlx::PgConnection::connect(&service_url(&env.db)).await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query("SET LOCAL ROLE mailpipe_api").execute(&mut *tx).await.unwrap();
    sqlx::query("SELECT set_config('mailpipe.tenant', 'globex', true)").execute(&mut *tx).await.unwrap();
    let seen: Vec<String> =
        sqlx::query_scalar("SELECT domain FROM sending_domains").fetch_all(&mut *tx).await.unwrap();
    assert_eq!(seen, [TEST_SENDER_DOMAIN]);
    let public: Vec<String> =
        sqlx::query_scalar("SELECT public_key FROM dkim_keys").fetch_all(&mut *tx).await.unwrap();
    assert_eq!(public.len(), 1, "the platform domain's public key only");
    tx.rollback().await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query("SET LOCAL ROLE mailpipe_api").execute(&mut *tx).await.unwrap();
    let denied = sqlx::query("SELECT sealed_key FROM dkim_keys").fetch_all(&mut *tx).await.unwrap_err();
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    tx.rollback().await.unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unproven_claim_expires_and_a_check_of_an_old_claim_proves_nothing_for_a_new_one() {
    let zone = TestZone::new();
    let env = TestEnv::setup().no_relay().tenants(&["acme", "globex"]).toml(&domains_toml()).start().await;
    let cfg = env.config();
    let sealer = mailpipe::app::sealer(&cfg).unwrap();
    let (acme, globex) =
        (Owner::Tenant(TenantId::parse("acme").unwrap()), Owner::Tenant(TenantId::parse("globex").unwrap()));
    let domain = Domain::parse(&zone.origin).unwrap();
    let ed = || KeySource::Generate(DkimAlgorithm::Ed25519Sha256);
    let dns = Dns::new(&cfg.domains.nameservers, cfg.domains.dns_timeout).unwrap();

    // Acme claims the domain and publishes its key; within the claim's
    // expiry Globex cannot take it.
    let acme_records =
        onboard::add(&env.store, &sealer, &cfg.domains, &domain, &acme, &[], false, ed()).await.unwrap();
    zone.txt(&acme_records[0].name, &acme_records[0].value);
    let held = onboard::add(&env.store, &sealer, &cfg.domains, &domain, &globex, &[], false, ed()).await;
    assert!(matches!(held, Err(DomainError::HeldByAnother(_))), "{held:?}");

    // A check starts from acme's claim; meanwhile the claim expires (here at
    // once) and Globex takes the domain over with a key of its own.
    let acme_claim = env.store.sending_domain(&domain).await.unwrap().unwrap();
    let mut expired = cfg.domains.clone();
    expired.claim_expiry = Duration::ZERO;
    tokio::time::sleep(Duration::from_millis(5)).await;
    onboard::add(&env.store, &sealer, &expired, &domain, &globex, &[], false, ed()).await.unwrap();
    let taken = env.store.sending_domain(&domain).await.unwrap().unwrap();
    assert_eq!(taken.owner, globex);
    assert_eq!(taken.tenants, [TenantId::parse("globex").unwrap()]);
    assert_ne!(taken.keys[0].public_key, acme_claim.keys[0].public_key);

    // Acme's record is published, so the old check finds it: that proves
    // nothing for Globex's claim, and is not recorded on it.
    let stale = mailpipe_domains::check(&env.store, &dns, &cfg.domains, &acme_claim).await;
    assert!(matches!(stale, Err(DomainError::Changed(_))), "{stale:?}");
    let now = env.store.sending_domain(&domain).await.unwrap().unwrap();
    assert_eq!(now.status, DomainStatus::Pending, "Globex's claim was verified by Acme's record");
    let c = mailpipe_domains::check(&env.store, &dns, &cfg.domains, &now).await.unwrap();
    assert_eq!(c.status, DomainStatus::Pending);
    // (Its key has a selector of its own, which nothing is published at.)
    assert_eq!(outcome(&c, Check::Dkim).0, Outcome::Fail, "{:?}", outcome(&c, Check::Dkim));

    // Once Globex's own key is published it verifies, and then no expiry
    // lets anyone take it.
    let globex_dkim = onboard::to_publish(&now, &cfg.domains).remove(0);
    zone.txt(&globex_dkim.name, &globex_dkim.value);
    let d = env.store.sending_domain(&domain).await.unwrap().unwrap();
    assert_eq!(
        mailpipe_domains::check(&env.store, &dns, &cfg.domains, &d).await.unwrap().status,
        DomainStatus::Verified
    );
    let held = onboard::add(&env.store, &sealer, &expired, &domain, &acme, &[], false, ed()).await;
    assert!(matches!(held, Err(DomainError::HeldByAnother(_))), "{held:?}");
}
