//! A real Exim relay on loopback, one instance per test, beside
//! [`crate::PostfixRelay`]: Debian's Exim 4 generates its own bounces, in
//! its own format, after it accepted a message. The relay takes the
//! worker's mail and delivers it on the routes the test gives (domain →
//! loopback port), its bounces included; mail to any other domain fails.
//!
//! Debian's exim4 package conflicts with Postfix, so `scripts/services.sh
//! up` unpacks it into its state directory instead of installing it
//! (`MAILPIPE_TEST_EXIM`), without the setuid bit, and adds the
//! `Debian-exim` user it delivers as. Needs root, as Postfix does.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::START_HINT;
use crate::process::{free_port, is_root};

pub struct EximRelay {
    /// Where it listens for SMTP on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl EximRelay {
    /// Starts an instance that relays mail for each `(domain, port)` to
    /// `127.0.0.1:port`, and returns once it greets.
    pub fn start(routes: &[(&str, u16)]) -> Self {
        let home = PathBuf::from(
            std::env::var("MAILPIPE_TEST_EXIM")
                .unwrap_or_else(|_| panic!("MAILPIPE_TEST_EXIM is not set: {START_HINT}")),
        );
        let exim = home.join("exim4");
        assert!(
            exim.exists(),
            "{} is missing: `scripts/services.sh up` (as root) unpacks Exim there",
            exim.display()
        );
        assert!(is_root(), "an Exim instance needs root to start; run the tests as root");
        let port = free_port();
        let dir = std::env::temp_dir().join(crate::unique("exim"));
        for sub in ["spool", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("exim dir");
            let chown = Command::new("chown").arg("Debian-exim:Debian-exim").arg(dir.join(sub)).status();
            assert!(chown.is_ok_and(|s| s.success()), "chown Debian-exim {}", dir.join(sub).display());
        }
        // Deliveries run as Debian-exim, which must reach the config.
        let chmod = Command::new("chmod").arg("755").arg(&dir).status();
        assert!(chmod.is_ok_and(|s| s.success()), "chmod {}", dir.display());
        let mut routers = String::new();
        let mut transports = String::new();
        for (i, (domain, to)) in routes.iter().enumerate() {
            routers.push_str(&format!(
                "route_{i}:\n  driver = manualroute\n  domains = {domain}\n  transport = smtp_{i}\n  route_list = * 127.0.0.1\n  self = send\n\n"
            ));
            transports.push_str(&format!(
                "smtp_{i}:\n  driver = smtp\n  port = {to}\n  allow_localhost\n  hosts_avoid_tls = *\n\n"
            ));
        }
        let config = format!(
            "exim_path = {exim}
spool_directory = {dir}/spool
log_file_path = {dir}/log/%slog
pid_file_path = {dir}/exim.pid
keep_environment = LD_LIBRARY_PATH
primary_hostname = exim.mailpipe.test
qualify_domain = mailpipe.test
daemon_smtp_ports = {port}
local_interfaces = <; 127.0.0.1
disable_ipv6 = true
domainlist local_domains =
hostlist relay_from_hosts = <; 127.0.0.1
acl_smtp_rcpt = acl_check_rcpt
host_lookup =
rfc1413_hosts =
rfc1413_query_timeout = 0s
tls_advertise_hosts =
smtputf8_advertise_hosts =
prdr_enable = false
delay_warning = 0s
ignore_bounce_errors_after = 0s
timeout_frozen_after = 1h

begin acl

acl_check_rcpt:
  accept  hosts = : +relay_from_hosts
  deny    message = relay not permitted

begin routers

{routers}unrouted:
  driver = redirect
  data = :fail: no route in this test relay
  allow_fail

begin transports

{transports}begin retry

*  *  F,1h,1s
",
            exim = exim.display(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("exim.conf"), config).expect("exim.conf");
        let libs = home.join("root/usr/lib/x86_64-linux-gnu");
        // In the foreground (-bdf), retrying every second (-q1s); its
        // stderr carries one expected panic-log line per delivery (a -C
        // config loses privileges), so it goes to a file, not a pipe.
        let stderr = std::fs::File::create(dir.join("stderr")).expect("exim stderr");
        let child = Command::new(&exim)
            .env("LD_LIBRARY_PATH", libs)
            .arg("-C")
            .arg(dir.join("exim.conf"))
            .args(["-bdf", "-q1s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", exim.display()));
        let relay = Self { port, dir, child };
        relay.wait_for_greeting(Duration::from_secs(20));
        relay
    }

    /// Exim opens its port before it can greet: wait for the 220.
    fn wait_for_greeting(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(stream) = crate::process::connect_listener(self.port) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_ok() && line.starts_with("220") {
                    let _ = (&stream).write_all(b"QUIT\r\n");
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Exim did not greet on :{} within {timeout:?}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its main log and stderr so far, for a failing test's message.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("log/mainlog"), read("stderr"))
    }
}

impl Drop for EximRelay {
    fn drop(&mut self) {
        // SIGTERM: the daemon exits; deliveries in flight finish by themselves.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
