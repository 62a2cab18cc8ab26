//! Raw HTTP/1.1 for tests of the tracker and the API.

use std::time::Duration;

/// An HTTP/1.1 answer, read to the end of a `Connection: close` response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one raw HTTP/1.1 request to `addr` (`host:port`) and reads the whole
/// response. Raw on purpose: tracker tests also send what no client library
/// would (oversized heads, garbage, unknown methods).
pub async fn http(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_http(addr, method, target, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {target} on {addr}: {e}"))
}

/// Same, but a connection refused, reset or cut short is an error, not a
/// panic: for tests that kill the server while requests are in flight.
pub async fn try_http(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    use std::io::{Error, ErrorKind};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| Error::new(ErrorKind::TimedOut, "no response within 10 s"))??;
    if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(Error::new(ErrorKind::UnexpectedEof, "the response was cut short"));
    }
    Ok(parse_http_response(&raw))
}

fn parse_http_response(raw: &[u8]) -> HttpResponse {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked =
        headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let len = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap_or(0);
            if len == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + len]);
            rest = &rest[nl + 2 + len + 2..];
        }
        body = out;
    }
    HttpResponse { status, headers, body }
}

/// The URLs of a message's `List-Unsubscribe` header (unfolded).
pub fn list_unsubscribe(message: &str) -> Vec<String> {
    let unfolded = message.replace("\r\n ", " ").replace("\r\n\t", " ").replace("\n ", " ");
    unfolded
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("list-unsubscribe:"))
        .map(|l| l[17..].split(',').map(|u| u.trim().trim_matches(['<', '>']).to_owned()).collect())
        .unwrap_or_default()
}

/// Writes `request` (head and whatever body) on a fresh connection and reads
/// the answer's status line, or `None` if none comes within `wait`: for
/// requests a client would not send, with a body that never comes.
pub async fn status_line(addr: &str, request: &[u8], wait: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(request).await.expect("write the request");
    let mut buf = vec![0; 256];
    match tokio::time::timeout(wait, c.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {
            Some(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned())
        }
        _ => None,
    }
}

/// Asserts that a request on a new connection waits while the server's
/// connection slots are held (no answer within 700 ms), and is answered 200
/// once `release` frees one.
pub async fn assert_served_only_after(addr: &str, release: impl FnOnce()) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut next = tokio::net::TcpStream::connect(addr).await.expect("connect");
    next.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("write the request");
    let mut buf = vec![0; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(700), next.read(&mut buf)).await.is_err(),
        "not served while every connection slot is held"
    );
    release();
    let n = tokio::time::timeout(Duration::from_secs(5), next.read(&mut buf))
        .await
        .expect("served once a slot was freed")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The tenant API (`mailpipe analytics`'s router) over `store` on a free
/// loopback port: its address, and the task serving it.
pub async fn serve_api(store: mailpipe_store::Store) -> (String, tokio::task::JoinHandle<()>) {
    let state = mailpipe_analytics::ApiState::new(store, crate::test_keys().hasher);
    let router = mailpipe_analytics::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("its address").to_string();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, task)
}

/// `GET target` on the API at `addr` with a tenant's API key, as JSON.
pub async fn api_get(addr: &str, target: &str, key: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {key}");
    let r = http(addr, "GET", target, &[("Authorization", auth.as_str())], b"").await;
    (r.status, serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null))
}

/// `tests/support/webhook_receiver.py`: a real HTTP server that logs each
/// webhook request and answers as `mode` says (`ok`, `flaky`, `down`,
/// `hang`); killed when dropped.
pub struct WebhookReceiver {
    pub port: u16,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

/// One request a [`WebhookReceiver`] got.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct WebhookRequest {
    pub n: u64,
    pub id: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    pub body: String,
    pub status: u16,
    pub hung: bool,
}

impl WebhookReceiver {
    pub fn start(mode: &str) -> Self {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("support/webhook_receiver.py");
        let dir = std::env::temp_dir().join(crate::unique("hooks"));
        std::fs::create_dir_all(&dir).expect("receiver dir");
        let mut child = std::process::Command::new("python3")
            .arg(&script)
            .arg(&dir)
            .arg(mode)
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {}: {e} (install python3)", script.display()));
        let started = std::time::Instant::now();
        let port = loop {
            if let Some(p) =
                std::fs::read_to_string(dir.join("port")).ok().and_then(|p| p.trim().parse().ok())
            {
                break p;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the webhook receiver exited at start ({status})");
            }
            assert!(started.elapsed() < Duration::from_secs(10), "the webhook receiver did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self { port, dir, child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<WebhookRequest> {
        std::fs::read_to_string(self.dir.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
