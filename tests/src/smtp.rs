//! SMTP peers for tests: a private smtp-sink per test (with its fault
//! flags), and the Python test relay for STARTTLS, AUTH and SMTPUTF8.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, is_root, wait_for_port};
use crate::{START_HINT, unique};

/// A private smtp-sink that dumps every message to a directory.
pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl SmtpSink {
    /// `extra` are smtp-sink flags, e.g. `["-r", "RCPT"]` for 4xx to RCPT.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// Same, on a given port: to replace a sink by one that behaves
    /// differently, as a relay that recovers from an outage would.
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let bin = Path::new("/usr/sbin/smtp-sink");
        assert!(
            bin.exists(),
            "/usr/sbin/smtp-sink is missing: install Debian's postfix package\n{START_HINT}"
        );
        let dir = std::env::temp_dir().join(unique("sink"));
        std::fs::create_dir_all(&dir).expect("sink dir");
        // smtp-sink drops privileges to `nobody` when run as root.
        let _ = Command::new("chmod").arg("777").arg(&dir).status();
        let mut cmd = Command::new(bin);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .args(extra)
            .arg("-d")
            .arg(format!("{}/", dir.display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn smtp-sink");
        wait_for_port(port, Duration::from_secs(5), "smtp-sink");
        Self { port, dir, child }
    }

    /// The messages received so far, as text.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path()) {
                    out.push(s);
                }
            }
        }
        out
    }

    /// The Message-IDs received, failing the test if any came twice.
    pub fn message_ids_once(&self) -> std::collections::HashSet<String> {
        let ids = self.message_ids();
        let distinct: std::collections::HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(distinct.len(), ids.len(), "duplicate deliveries on the sink");
        distinct
    }

    /// Message-ID header values of the messages received.
    pub fn message_ids(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter_map(|m| {
                m.lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
                    .map(|l| l[11..].trim().trim_matches(['<', '>']).to_owned())
            })
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test relay in `tests/support/smtp_relay.py`, for what smtp-sink cannot
/// do: STARTTLS, AUTH and SMTPUTF8.
pub struct TestRelay {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

/// A received message and its session, as the test relay recorded them.
#[derive(Debug)]
pub struct Relayed {
    pub message: String,
    pub session: serde_json::Value,
}

impl TestRelay {
    pub fn start(args: &[&str]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/smtp_relay.py");
        let dir = std::env::temp_dir().join(unique("relay"));
        std::fs::create_dir_all(&dir).expect("relay dir");
        // The relay binds port 0 and writes the port it got: choosing one
        // here and passing it on raced with other tests' listeners.
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--port", "0", "--dir"])
            .arg(&dir)
            .args(args)
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {}: {e} (install python3)", script.display()));
        let started = std::time::Instant::now();
        let port = loop {
            if let Some(port) =
                std::fs::read_to_string(dir.join("port")).ok().and_then(|p| p.trim().parse().ok())
            {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the test relay exited at start ({status}); see its output above");
            }
            assert!(started.elapsed() < Duration::from_secs(10), "the test relay did not start within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self { port, dir, child }
    }

    pub fn received(&self) -> Vec<Relayed> {
        let mut out = Vec::new();
        for n in 0.. {
            let eml = self.dir.join(format!("{n}.eml"));
            let meta = self.dir.join(format!("{n}.json"));
            let (Ok(message), Ok(meta)) = (std::fs::read_to_string(&eml), std::fs::read_to_string(&meta))
            else {
                break;
            };
            out.push(Relayed { message, session: serde_json::from_str(&meta).expect("session json") });
        }
        out
    }
}

impl TestRelay {
    /// The addresses the relay deferred once (`--defer-percent`).
    pub fn deferred(&self) -> Vec<String> {
        self.log("deferred.log")
    }

    /// The addresses whose first message the relay cut off mid-content
    /// (`--drop-mid-data-percent`).
    pub fn dropped(&self) -> Vec<String> {
        self.log("dropped.log")
    }

    fn log(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(name))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test CA and a certificate it issued for 127.0.0.1, made with openssl:
/// (ca_cert, cert, key).
pub fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let ext = p("leaf.ext");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
        .expect("ext");
    let steps: [Vec<String>; 3] = [
        vec!["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=mailpipe test CA"]
            .into_iter()
            .map(String::from)
            .chain([
                "-keyout".into(),
                p("ca.key").display().to_string(),
                "-out".into(),
                p("ca.pem").display().to_string(),
            ])
            .collect(),
        vec!["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"]
            .into_iter()
            .map(String::from)
            .chain([
                "-keyout".into(),
                p("key.pem").display().to_string(),
                "-out".into(),
                p("leaf.csr").display().to_string(),
            ])
            .collect(),
        vec!["x509", "-req", "-days", "1", "-CAcreateserial"]
            .into_iter()
            .map(String::from)
            .chain(
                [
                    ("-in", "leaf.csr"),
                    ("-CA", "ca.pem"),
                    ("-CAkey", "ca.key"),
                    ("-out", "cert.pem"),
                    ("-extfile", "leaf.ext"),
                ]
                .into_iter()
                .flat_map(|(f, n)| [f.to_owned(), p(n).display().to_string()]),
            )
            .collect(),
    ];
    for args in steps {
        let ok = Command::new("openssl")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "openssl {args:?} failed (apt-get install openssl)");
    }
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}
