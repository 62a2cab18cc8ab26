//! DKIM keys come from the configuration, and bad ones are named.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use mailpipe::config::Config;

fn fixture(name: &str) -> String {
    format!(
        "{}/../mailpipe-render/tests/fixtures/{name}",
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
    )
}

fn load(toml: &str) -> Result<Config, mailpipe::ConfigErrors> {
    let dir = std::env::temp_dir().join(format!("mailpipe-dkimcfg-{}-{}", std::process::id(), toml.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("c.toml");
    std::fs::write(&f, toml).unwrap();
    Config::load(Some(&f), Vec::new())
}

#[test]
fn keys_load_from_files_and_tenants_map_to_them() {
    let cfg = load(&format!(
        "[dkim.domains.\"acme.example\"]\nselector = \"s1\"\nalgorithm = \"rsa-sha256\"\nprivate_key_file = \"{}\"\n\
         [dkim.domains.\"globex.example\"]\nselector = \"ed\"\nalgorithm = \"ed25519-sha256\"\nprivate_key_file = \"{}\"\n\
         [dkim.tenants]\nacme = \"acme.example\"\n",
        fixture("rsa2048.pem"),
        fixture("ed25519.pem")
    ))
    .unwrap();
    let keys = cfg.dkim_keys().unwrap();
    let h = keys
        .sign("acme", "acme.example", b"From: a@acme.example\r\nSubject: x\r\n\r\nbody\r\n")
        .unwrap()
        .unwrap();
    assert!(h.starts_with("DKIM-Signature:") && h.contains("s=s1") && h.contains("d=acme.example"), "{h}");
    let h = keys.sign("acme", "mail.acme-other.example", b"From: a@x\r\n\r\nb\r\n").unwrap().unwrap();
    assert!(h.contains("d=acme.example"), "tenant default: {h}");
    let h = keys.sign("globex", "globex.example", b"From: a@x\r\n\r\nb\r\n").unwrap().unwrap();
    assert!(h.contains("a=ed25519-sha256"), "{h}");
    assert!(keys.sign("initech", "initech.example", b"From: a@x\r\n\r\nb\r\n").unwrap().is_none());
}

#[test]
fn every_bad_key_is_named() {
    let cfg = load(&format!(
        "[dkim.domains.\"a.example\"]\nselector = \"s\"\nalgorithm = \"rsa-sha256\"\nprivate_key_file = \"/nonexistent/key.pem\"\n\
         [dkim.domains.\"b.example\"]\nselector = \"s\"\nalgorithm = \"ed25519-sha256\"\nprivate_key_file = \"{}\"\n",
        fixture("rsa2048.pem")
    ))
    .unwrap();
    let e = cfg.dkim_keys().unwrap_err().to_string();
    assert!(
        e.contains("dkim.domains.\"a.example\".private_key_file") && e.contains("dkim.domains.\"b.example\""),
        "{e}"
    );

    let e = load("[dkim.domains.\"c.example\"]\nselector = \"s\"\nalgorithm = \"rsa-sha256\"\n[dkim.tenants]\nt = \"d.example\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("exactly one of private_key and private_key_file") && e.contains("dkim.tenants.t"),
        "{e}"
    );
    let e = load(
        "[dkim.domains.\"c.example\"]\nselector = \"s\"\nalgorithm = \"rsa-sha1\"\nprivate_key = \"x\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("dkim"), "{e}");
}
