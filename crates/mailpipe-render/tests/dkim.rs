//! DKIM signatures made by mailpipe verify with an independent verifier:
//! dkimpy (Python), with the DNS answer injected. A tampered message fails.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use mailpipe_core::SendJob;
use mailpipe_render::{Composer, DkimAlgorithm, DkimKey, TemplateLimits, TrackingLinks};
use mailpipe_token::{Keyring, RecipientHasher, SigningKey};
use time::macros::datetime;

const VERIFY: &str = r#"
import sys
try:
    import dkim
except ImportError:
    sys.exit("dkimpy is missing: python3 -m pip install dkimpy pynacl (scripts/test.sh does this)")
msg = open(sys.argv[1], "rb").read()
rec = open(sys.argv[2], "rb").read()
ok = dkim.verify(msg, dnsfunc=lambda name, timeout=5: rec)
print("pass" if ok else "fail")
sys.exit(0 if ok else 1)
"#;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
    .join("tests/fixtures")
    .join(name)
}

fn composer() -> Composer {
    Composer::new(
        Arc::new(Keyring::new(vec![SigningKey { id: 1, secret: vec![3u8; 32].into() }], 1).unwrap()),
        RecipientHasher::new(&vec![4u8; 32].into()).unwrap(),
        TrackingLinks { base_url: "https://t.example".into(), unsubscribe_mailto: None },
        TemplateLimits::default(),
    )
}

fn job(tenant: &str, from: &str) -> SendJob {
    SendJob::from_json(
        serde_json::json!({
            "job_id": "j1", "tenant_id": tenant, "campaign_id": "c", "category": "marketing",
            "from": {"email": from, "name": "Sender Ünïcode"},
            "to": {"email": "jane@example.com"},
            "subject": "Hello {{ n }} — ünïcode",
            "html": "<p>Hi {{ n }}</p><a href=\"https://shop.example/x\">x</a>",
            "vars": {"n": "Jane"}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

/// Runs dkimpy on `msg` with `record` as the DNS TXT answer.
fn dkimpy(msg: &[u8], record: &str) -> bool {
    let dir = std::env::temp_dir().join(format!("mailpipe-dkim-{}-{:x}", std::process::id(), rand_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (m, r) = (dir.join("msg.eml"), dir.join("record.txt"));
    std::fs::write(&m, msg).unwrap();
    std::fs::write(&r, record).unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(VERIFY)
        .arg(&m)
        .arg(&r)
        .output()
        .expect("python3 is needed for the independent DKIM verifier");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("pass") || stdout.contains("fail"), "dkimpy did not run: {stderr}");
    let _ = std::fs::remove_dir_all(dir);
    out.status.success()
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

fn signed(alg: DkimAlgorithm, key: &str) -> Vec<u8> {
    let key = DkimKey::from_pem("acme.example", "s1", alg, &std::fs::read(fixture(key)).unwrap()).unwrap();
    let out = composer()
        .compose(&job("acme", "news@acme.example"), None, datetime!(2026-11-29 12:00 UTC), Some(&key))
        .unwrap();
    assert!(out.bytes.starts_with(b"DKIM-Signature: "), "signature first");
    out.bytes
}

fn tamper(msg: &[u8]) -> Vec<u8> {
    let s = String::from_utf8(msg.to_vec()).unwrap();
    let i = s.find("\r\nSubject: ").unwrap() + 11;
    let mut t = s.clone();
    t.insert(i, 'X');
    t.into_bytes()
}

/// The message with `header` added just below the signature, above the
/// headers it signed: what a replay that wants to show another sender or
/// subject does.
fn add_header(msg: &[u8], header: &str) -> Vec<u8> {
    let s = String::from_utf8(msg.to_vec()).unwrap();
    // The end of the (folded) DKIM-Signature header: the first line break
    // not followed by white space.
    let end =
        s.match_indices("\r\n").map(|(i, _)| i + 2).find(|&i| !s[i..].starts_with([' ', '\t'])).unwrap();
    format!("{}{header}\r\n{}", &s[..end], &s[end..]).into_bytes()
}

#[test]
fn added_headers_break_the_signature_for_dkimpy() {
    let rec = format!(
        "v=DKIM1; k=ed25519; p={}",
        std::fs::read_to_string(fixture("ed25519.pub.b64")).unwrap().trim()
    );
    let msg = signed(DkimAlgorithm::Ed25519Sha256, "ed25519.pem");
    assert!(dkimpy(&msg, &rec), "valid signature");
    let h = String::from_utf8_lossy(&msg)
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .replace([' ', '\t', '\r', '\n'], "");
    assert_eq!(h.to_ascii_lowercase().matches("from").count(), 2, "From over-signed: h={h}");
    for added in [
        "From: Acme Billing <billing@acme.example>",
        "Subject: Your account is locked",
        "To: someone-else@example.com",
        "Date: Sat, 1 Jan 2000 00:00:00 +0000",
        "Message-ID: <replayed@acme.example>",
        "Reply-To: attacker@evil.example",
        "Cc: more@evil.example",
        "List-Unsubscribe: <https://evil.example/u>",
    ] {
        assert!(!dkimpy(&add_header(&msg, added), &rec), "adding {added:?} must break the signature");
    }
}

#[test]
fn rsa_sha256_signatures_verify_with_dkimpy() {
    let rec =
        format!("v=DKIM1; k=rsa; p={}", std::fs::read_to_string(fixture("rsa2048.pub.b64")).unwrap().trim());
    let msg = signed(DkimAlgorithm::RsaSha256, "rsa2048.pem");
    assert!(String::from_utf8_lossy(&msg).contains("a=rsa-sha256"));
    assert!(dkimpy(&msg, &rec), "valid signature");
    assert!(!dkimpy(&tamper(&msg), &rec), "tampered subject must fail");
}

#[test]
fn ed25519_signatures_verify_with_dkimpy() {
    let rec = format!(
        "v=DKIM1; k=ed25519; p={}",
        std::fs::read_to_string(fixture("ed25519.pub.b64")).unwrap().trim()
    );
    let msg = signed(DkimAlgorithm::Ed25519Sha256, "ed25519.pem");
    assert!(String::from_utf8_lossy(&msg).contains("a=ed25519-sha256"));
    assert!(dkimpy(&msg, &rec), "valid signature");
    assert!(!dkimpy(&tamper(&msg), &rec), "tampered subject must fail");
}

#[test]
fn a_key_signs_as_its_own_domain_and_no_key_means_no_signature() {
    let key = DkimKey::from_pem(
        "acme.example",
        "s1",
        DkimAlgorithm::Ed25519Sha256,
        &std::fs::read(fixture("ed25519.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!((key.domain(), key.selector()), ("acme.example", "s1"));
    let msg = signed(DkimAlgorithm::Ed25519Sha256, "ed25519.pem");
    let text = String::from_utf8_lossy(&msg);
    assert!(text.contains("d=acme.example;") && text.contains("s=s1;"), "{text}");
    let out = composer()
        .compose(&job("globex", "news@globex.example"), None, datetime!(2026-11-29 12:00 UTC), None)
        .unwrap();
    assert!(!out.bytes.starts_with(b"DKIM-Signature"), "unsigned without a key");
}

#[test]
fn bad_keys_are_refused_with_the_domain_named() {
    let e = DkimKey::from_pem("acme.example", "s1", DkimAlgorithm::RsaSha256, b"not a key").unwrap_err();
    assert!(e.to_string().contains("acme.example"), "{e}");
    let rsa = std::fs::read(fixture("rsa2048.pem")).unwrap();
    let e = DkimKey::from_pem("acme.example", "s1", DkimAlgorithm::Ed25519Sha256, &rsa).unwrap_err();
    assert!(e.to_string().contains("acme.example"), "{e}");
}
