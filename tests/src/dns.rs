//! The real DNS server of the sending-domain tests: Knot DNS, authoritative
//! for `mailpipe.test.` on loopback and open to dynamic updates from it
//! (`scripts/services.sh up`). Each test publishes under a zone of its own,
//! a fresh label below `mailpipe.test`, and removes what it published when
//! it ends. The independent checks of what mailpipe signs read the same
//! server: dkimpy resolves through it, opendkim-testkey through unbound.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::{START_HINT, unique};

/// The DNS server's address, or a panic saying how to start it.
pub fn dns_server() -> SocketAddr {
    let addr = std::env::var("MAILPIPE_TEST_DNS")
        .unwrap_or_else(|_| panic!("MAILPIPE_TEST_DNS is not set: {START_HINT}"));
    addr.parse().unwrap_or_else(|e| panic!("MAILPIPE_TEST_DNS={addr}: {e}"))
}

fn parent_zone() -> String {
    std::env::var("MAILPIPE_TEST_DNS_ZONE").unwrap_or_else(|_| "mailpipe.test".into())
}

/// A zone of the test's own, `<unique>.mailpipe.test`, whose names are
/// deleted from the server when it drops.
pub struct TestZone {
    pub origin: String,
    server: SocketAddr,
    published: Mutex<Vec<String>>,
}

impl TestZone {
    pub fn new() -> Self {
        let label = unique("z").replace('_', "-");
        Self {
            origin: format!("{label}.{}", parent_zone()),
            server: dns_server(),
            published: Mutex::default(),
        }
    }

    /// `<label>.<origin>`.
    pub fn name(&self, label: &str) -> String {
        format!("{label}.{}", self.origin)
    }

    /// Publishes a TXT record, split into strings of 255 bytes as DNS
    /// requires.
    pub fn txt(&self, name: &str, value: &str) {
        let data = value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c).replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(" ");
        self.add(name, "TXT", &data);
    }

    /// Publishes a record of any type, `data` as in a zone file.
    pub fn add(&self, name: &str, kind: &str, data: &str) {
        self.update(&format!("update add {name}. 60 IN {kind} {data}"));
        self.published.lock().unwrap_or_else(|p| p.into_inner()).push(name.to_owned());
    }

    /// Deletes every record of `kind` at `name`.
    pub fn delete(&self, name: &str, kind: &str) {
        self.update(&format!("update delete {name}. {kind}"));
    }

    fn update(&self, line: &str) {
        let script = format!(
            "server {} {}\nzone {}.\n{line}\nsend\n",
            self.server.ip(),
            self.server.port(),
            parent_zone()
        );
        let mut child = Command::new("knsupdate")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("knsupdate: {e} (install knot-dnsutils; {START_HINT})"));
        child.stdin.take().map(|mut i| i.write_all(script.as_bytes()));
        let out = child.wait_with_output().expect("knsupdate");
        assert!(
            out.status.success(),
            "DNS update {line:?} failed: {}{} (is Knot DNS up at {}? {START_HINT})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.server
        );
    }
}

impl Default for TestZone {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestZone {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.published.lock().unwrap_or_else(|p| p.into_inner()));
        for name in names {
            let script = format!(
                "server {} {}\nzone {}.\nupdate delete {name}.\nsend\n",
                self.server.ip(),
                self.server.port(),
                parent_zone()
            );
            // Best effort: a test that failed still tidies up.
            if let Ok(mut child) = Command::new("knsupdate")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                child.stdin.take().map(|mut i| i.write_all(script.as_bytes()));
                let _ = child.wait();
            }
        }
    }
}

const DKIMPY: &str = r#"
import sys
try:
    import dkim, dns.resolver
except ImportError:
    sys.exit("dkimpy or dnspython is missing: python3 -m pip install dkimpy pynacl dnspython (scripts/test.sh does this)")
host, port = sys.argv[2].rsplit(":", 1)
r = dns.resolver.Resolver(configure=False)
r.nameservers = [host]
r.port = int(port)
r.lifetime = 5
def txt(name, timeout=5):
    try:
        a = r.resolve(name.decode() if isinstance(name, bytes) else name, "TXT")
    except Exception:
        return None
    return b"".join(b"".join(rr.strings) for rr in a)
msg = open(sys.argv[1], "rb").read()
d = dkim.DKIM(msg)
ok = d.verify(dnsfunc=txt)
print(("pass" if ok else "fail") + " d=" + (d.domain or b"").decode() + " s=" + (d.selector or b"").decode())
sys.exit(0 if ok else 1)
"#;

/// dkimpy's verdict on `msg`'s signature, with the key looked up in the
/// test DNS server: `Ok("pass d=... s=...")` or `Err(its output)`.
pub fn dkimpy_verify(msg: &[u8]) -> Result<String, String> {
    let dir = std::env::temp_dir().join(unique("dkimpy"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("msg.eml");
    std::fs::write(&path, msg).expect("write message");
    let out = Command::new("python3")
        .args(["-c", DKIMPY])
        .arg(&path)
        .arg(dns_server().to_string())
        .output()
        .expect("python3");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text.trim().to_owned()) } else { Err(text) }
}

/// opendkim-testkey's verdict on the private key `pem` (PKCS#1 or PKCS#8)
/// against the record published at `selector._domainkey.domain`, resolved
/// through unbound forwarding to the test server: its output when the key
/// matches, or an error with it.
pub fn opendkim_testkey(domain: &str, selector: &str, pem: &[u8]) -> Result<String, String> {
    let dir = std::env::temp_dir().join(unique("testkey"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = write_private(&dir, pem);
    let server = dns_server();
    let unbound = dir.join("unbound.conf");
    std::fs::write(
        &unbound,
        format!(
            "server:\n  do-not-query-localhost: no\n  local-zone: \"test.\" nodefault\n  module-config: \"iterator\"\n\
             forward-zone:\n  name: \"{}\"\n  forward-addr: {}@{}\n",
            parent_zone(),
            server.ip(),
            server.port()
        ),
    )
    .expect("unbound config");
    let conf = dir.join("opendkim.conf");
    std::fs::write(&conf, format!("ResolverConfiguration {}\n", unbound.display())).expect("opendkim config");
    let out = Command::new("opendkim-testkey")
        .args(["-vvv", "-d", domain, "-s", selector, "-k"])
        .arg(&key)
        .arg("-x")
        .arg(&conf)
        .output()
        .unwrap_or_else(|e| panic!("opendkim-testkey: {e} (install opendkim-tools; {START_HINT})"));
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && text.contains("key OK") { Ok(text) } else { Err(text) }
}

/// The key, mode 600 (opendkim-testkey refuses a readable one).
fn write_private(dir: &Path, pem: &[u8]) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("key.pem");
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).expect("key file");
    f.write_all(pem).expect("write key");
    path
}
