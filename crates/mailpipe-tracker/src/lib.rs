//! The tracking endpoint: open pixel, click redirect, unsubscribe.
//!
//! Every path parameter is hostile until its MAC checks out: the token is
//! verified first, in constant time, and a bad token gets a 404 with no
//! event and never a redirect. The redirect target comes only from inside a
//! verified token, so the tracker cannot be used as an open redirect.
//!
//! Events go through a bounded channel to a batch writer ([`writer`]), off
//! the request path; a full channel makes handlers wait (backpressure)
//! rather than drop events.
#![forbid(unsafe_code)]

pub mod writer;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use mailpipe_core::{Category, Event, EventType, Verdict, VerdictClass};
use mailpipe_token::{Action, Claims, Keyring};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use writer::{EventWriter, WriterHandle};

/// A 1x1 transparent GIF.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff,
    0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
    0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Renders the Prometheus exposition, if the process has a recorder.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
pub struct TrackerState {
    keyring: Arc<Keyring>,
    events: WriterHandle,
    metrics: Option<MetricsRender>,
}

impl TrackerState {
    pub fn new(keyring: Arc<Keyring>, events: WriterHandle, metrics: Option<MetricsRender>) -> Self {
        Self { keyring, events, metrics }
    }
}

pub fn router(state: TrackerState) -> Router {
    Router::new()
        .route("/o/{token}", get(open))
        .route("/c/{token}", get(click))
        .route("/u/{token}", get(unsubscribe_page).post(unsubscribe))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves until `shutdown` fires, then stops accepting and finishes the
/// requests in flight.
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, "no-store")],
        Html("<!doctype html><title>Not found</title><p>This link is not valid.</p>\n"),
    )
        .into_response()
}

fn verify(state: &TrackerState, token: &str) -> Option<Claims> {
    match state.keyring.verify(token) {
        Ok(c) => Some(c),
        Err(e) => {
            metrics::counter!("mailpipe_tracker_bad_tokens_total", "reason" => token_reason(e)).increment(1);
            None
        }
    }
}

fn token_reason(e: mailpipe_token::TokenError) -> &'static str {
    use mailpipe_token::TokenError as T;
    match e {
        T::TooLong => "too_long",
        T::Encoding => "encoding",
        T::Truncated => "truncated",
        T::Version => "version",
        T::UnknownKey => "unknown_key",
        T::BadSignature => "bad_signature",
        T::Malformed => "malformed",
        T::UrlTooLong => "url_too_long",
    }
}

fn event(c: &Claims, kind: EventType, discriminator: &str) -> Event {
    let mut e = Event::for_job(kind, &c.tenant_id, &c.campaign_id, &c.job_id, discriminator);
    e.category = Some(c.category);
    e
}

/// A per-request discriminator: each open or click is its own event.
fn request_id() -> String {
    format!("{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process from the OS; mixing in a counter
    // makes every call distinct without a RNG dependency.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}

/// A first verdict from the request alone; issue 4 extends the signals.
fn verdict(method: &Method, headers: &HeaderMap) -> Verdict {
    if method == Method::HEAD {
        return Verdict { class: VerdictClass::Machine, reason: "head_request".into() };
    }
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ua.is_empty() {
        return Verdict { class: VerdictClass::Machine, reason: "no_user_agent".into() };
    }
    Verdict { class: VerdictClass::Unknown, reason: "no_signal".into() }
}

async fn open(
    State(s): State<TrackerState>,
    method: Method,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let Some(c) = verify(&s, &token) else { return not_found() };
    if c.action != Action::Open {
        return not_found();
    }
    let mut e = event(&c, EventType::Open, &request_id());
    e.verdict = Some(verdict(&method, &headers));
    s.events.send(e).await;
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/gif")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache, must-revalidate, private")),
        ],
        Bytes::from_static(&PIXEL_GIF),
    )
        .into_response()
}

async fn click(
    State(s): State<TrackerState>,
    method: Method,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let Some(c) = verify(&s, &token) else { return not_found() };
    let Action::Click { url } = &c.action else { return not_found() };
    // Defence in depth: only http(s) targets, and only ones a header can carry.
    let lower = url.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    let location = match HeaderValue::from_str(url) {
        Ok(v) if lower.starts_with("http://") || lower.starts_with("https://") => v,
        _ => return not_found(),
    };
    let mut e = event(&c, EventType::Click, &request_id());
    e.url = Some(url.clone());
    e.verdict = Some(verdict(&method, &headers));
    s.events.send(e).await;
    (
        StatusCode::FOUND,
        [(header::LOCATION, location), (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
        .into_response()
}

/// GET never changes state: scanners fetch every link in a message.
async fn unsubscribe_page(State(s): State<TrackerState>, Path(token): Path<String>) -> Response {
    let Some(c) = verify(&s, &token) else { return not_found() };
    if !matches!(c.action, Action::Unsubscribe { .. }) {
        return not_found();
    }
    let page = format!(
        "<!doctype html><html><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\"><title>Unsubscribe</title></head>\
         <body><h1>Unsubscribe</h1><p>Stop receiving marketing email at this address?</p>\
         <form method=post action=\"/u/{token}\"><input type=hidden name=confirm value=yes><button type=submit>Unsubscribe</button></form></body></html>\n"
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

/// RFC 8058 one-click (`List-Unsubscribe=One-Click`) or the page's form.
async fn unsubscribe(State(s): State<TrackerState>, Path(token): Path<String>, body: Bytes) -> Response {
    let Some(c) = verify(&s, &token) else { return not_found() };
    let Action::Unsubscribe { recipient } = c.action else { return not_found() };
    let body = std::str::from_utf8(&body).unwrap_or("");
    let one_click = body.split('&').any(|kv| kv == "List-Unsubscribe=One-Click");
    let form = body.split('&').any(|kv| kv == "confirm=yes");
    if !one_click && !form {
        return (StatusCode::BAD_REQUEST, "expected List-Unsubscribe=One-Click\n").into_response();
    }
    // One event per job: repeated POSTs are idempotent (same event_id).
    let mut e = event(&c, EventType::Unsubscribe, "");
    e.recipient_ref = Some(recipient.to_hex());
    e.reason = Some(if one_click { "one_click" } else { "form" }.into());
    if c.category == Category::Transactional {
        // Transactional mail has no List-Unsubscribe; a template may still
        // link here. The suppression it creates only ever stops marketing.
        warn!(tenant = %c.tenant_id, "unsubscribe from a transactional message; applies to marketing mail only");
    }
    s.events.send(e).await;
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html("<!doctype html><title>Unsubscribed</title><p>You are unsubscribed. You will not receive marketing email at this address again.</p>\n"),
    )
        .into_response()
}

async fn metrics(State(s): State<TrackerState>) -> Response {
    match &s.metrics {
        Some(render) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render()).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}
