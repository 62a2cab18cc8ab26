//! mailpipe as its own process, and the machine's services: the binary the
//! workspace build makes, kill -9 and SIGTERM, peak RSS, restarts.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `mailpipe` binary that `cargo test --workspace` builds beside the
/// test executables (for `crates/mailpipe/tests/cli.rs`, whose own
/// integration test it is). A test run that builds only this package, such
/// as `cargo test -p mailpipe-tests`, runs whatever binary an earlier build
/// left: `cargo build -p mailpipe` first.
pub fn mailpipe_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join("mailpipe");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace tests (cargo test --workspace) or `cargo build -p mailpipe`",
        bin.display()
    );
    bin
}

/// A `mailpipe worker` or `mailpipe tracker` process, killed when dropped so
/// that a failing test leaves none behind.
pub struct ServiceProcess(Child);

impl ServiceProcess {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// The process's peak resident set so far (VmHWM), in MB.
    pub fn peak_rss_mb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    }

    /// SIGKILL: no drain, no commit, no cleanup.
    pub fn kill_9(&mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("wait");
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.0.try_wait().expect("wait") {
            panic!("the process exited {what}: {status}");
        }
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit.
    pub async fn terminate(&mut self, grace: Duration) -> std::process::ExitStatus {
        let term = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status().expect("kill");
        assert!(term.success(), "kill -TERM failed");
        let deadline = Instant::now() + grace;
        loop {
            if let Some(s) = self.0.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "the process did not stop within {grace:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `mailpipe <command>` as its own process with `env` added.
pub(crate) fn spawn_service(command: &str, env: &[(String, String)]) -> ServiceProcess {
    let mut c = Command::new(mailpipe_binary());
    // MAILPIPE_TEST_SERVICE_LOG (a RUST_LOG filter) shows more of the
    // process when a test that spawns it needs looking into.
    let log = std::env::var("MAILPIPE_TEST_SERVICE_LOG").unwrap_or_else(|_| "warn".into());
    c.arg(command).env("RUST_LOG", log).stdout(Stdio::null()).stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    ServiceProcess(c.spawn().unwrap_or_else(|e| panic!("spawn mailpipe {command}: {e}")))
}

/// `scripts/services.sh restart-<what>` (`kafka` or `postgres`). Every test
/// shares these services, so only a test that holds them exclusively may
/// restart one ([`crate::services::exclusive`]).
pub fn restart_service(_held: &crate::services::Exclusive, what: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
    let ok =
        Command::new("bash").arg(script).arg(format!("restart-{what}")).status().expect("bash").success();
    assert!(ok, "scripts/services.sh restart-{what} failed");
}

pub(crate) fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A free loopback port, for services a test starts itself.
pub fn loopback_port() -> u16 {
    free_port()
}

/// Whether something listens on `addr`. A test's ports come from the
/// kernel's ephemeral range, and a connect to such a port that nobody
/// listens on yet can pick the same port as its own source and connect to
/// itself (TCP simultaneous open): that is not a listener, and the socket
/// would keep the port from the service about to bind it, so it is dropped
/// at once and counts as "not yet".
pub async fn listens(addr: impl tokio::net::ToSocketAddrs) -> bool {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => !is_self_connect(s.local_addr().ok(), s.peer_addr().ok()),
        Err(_) => false,
    }
}

fn is_self_connect(local: Option<std::net::SocketAddr>, peer: Option<std::net::SocketAddr>) -> bool {
    local.is_none() || local == peer
}

/// A connection to a listener on loopback `port`, never one to itself (see
/// [`listens`]).
pub(crate) fn connect_listener(port: u16) -> Option<std::net::TcpStream> {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    (!is_self_connect(s.local_addr().ok(), s.peer_addr().ok())).then_some(s)
}

/// Blocks until something listens on loopback `port`, or fails naming `what`.
pub(crate) fn wait_for_port(port: u16, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while connect_listener(port).is_none() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
