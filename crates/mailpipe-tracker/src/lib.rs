//! The tracking endpoint: open pixel, click redirect, unsubscribe.
//!
//! Every path parameter is hostile until its MAC checks out: the token is
//! verified first, in constant time, and a bad token gets a 404 with no
//! event and never a redirect. The redirect target comes only from inside a
//! verified token, so the tracker cannot be used as an open redirect.
//!
//! Events go through a bounded channel to a batch writer ([`writer`]), off
//! the request path; a full channel makes handlers wait (backpressure)
//! rather than drop events, and a spool that stays full past
//! `tracker.full_spool_wait_ms` gets a 503 with `Retry-After`.
//!
//! The edges are bounded: request head size and time, whole-request time,
//! open connections, an unsubscribe body of [`MAX_UNSUBSCRIBE_BODY`] read
//! only once its token checks out, and a per-IP rate whose limiter forgets
//! idle addresses. `/metrics` is not served here but on an admin listener.
#![forbid(unsafe_code)]

mod settings;
pub mod signals;
pub mod spool;
pub mod writer;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use governor::DefaultKeyedRateLimiter;
use mailpipe_core::{Category, Event, EventType};
use mailpipe_queue::kafka::KafkaEvents;
use mailpipe_store::Store;
use mailpipe_token::{Action, Claims, Keyring};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use settings::{Cidr, TrackerSettings};
pub use signals::IpMode;
pub use spool::{Spool, SpoolOptions};
pub use writer::{EventWriter, Sent, ShipPolicy, WriterHandle};

/// A 1x1 transparent GIF.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff,
    0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
    0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// The most of a `POST /u` body read: the form is one short field.
pub const MAX_UNSUBSCRIBE_BODY: usize = 4096;

/// How often the per-IP limiter drops the addresses it no longer needs.
const FORGET_IDLE_EVERY_MS: u64 = 10_000;

/// The tracker's router and its event writer: the spool opened at
/// `settings.spool_dir`, the writer shipping from it to the store and, when
/// given, Kafka. `ip_key` keys `IpMode::Hash`.
pub fn app(
    settings: &TrackerSettings,
    keyring: Arc<Keyring>,
    ip_key: Vec<u8>,
    store: Store,
    kafka: Option<KafkaEvents>,
) -> std::io::Result<(EventWriter, Router)> {
    let spool = Spool::open_with(&settings.spool_dir, settings.spool_options()).map_err(|e| {
        std::io::Error::new(e.kind(), format!("tracker.spool_dir {}: {e}", settings.spool_dir.display()))
    })?;
    let (writer, handle) =
        EventWriter::spawn(store, kafka, Arc::new(spool), settings.event_queue, settings.ship_policy());
    let handle = handle.with_full_wait(settings.full_spool_wait);
    let state = TrackerState::new(keyring, handle, settings.clone(), ip_key);
    Ok((writer, router(state)))
}

/// What every handler shares; cloned (one reference count) per request.
#[derive(Clone)]
pub struct TrackerState(Arc<Shared>);

pub struct Shared {
    keyring: Arc<Keyring>,
    events: WriterHandle,
    settings: TrackerSettings,
    /// Key for `IpMode::Hash`.
    ip_key: Vec<u8>,
    honeypot: String,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Milliseconds after `started` of the limiter's last clean-up.
    forgot_at_ms: AtomicU64,
    started: std::time::Instant,
}

impl std::ops::Deref for TrackerState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl TrackerState {
    pub fn new(
        keyring: Arc<Keyring>,
        events: WriterHandle,
        settings: TrackerSettings,
        ip_key: Vec<u8>,
    ) -> Self {
        let honeypot = format!("{}/hp", settings.public_url.trim_end_matches('/'));
        let limiter = settings.per_ip_rate.map(|r| DefaultKeyedRateLimiter::keyed(r.quota()));
        Self(Arc::new(Shared {
            keyring,
            events,
            settings,
            ip_key,
            honeypot,
            limiter,
            forgot_at_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }))
    }

    /// Drops the limiter's state of addresses whose budget is full again
    /// (they are as good as never seen), so that a scan from many
    /// addresses does not grow it for ever. At most every
    /// [`FORGET_IDLE_EVERY_MS`]; the request that finds it due does it.
    fn forget_idle_addresses(&self) {
        let Some(limiter) = &self.limiter else { return };
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.forgot_at_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < FORGET_IDLE_EVERY_MS
            || self.forgot_at_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        forget_idle(limiter);
    }
}

/// Drops the limiter's state of every address whose budget has refilled.
fn forget_idle(limiter: &DefaultKeyedRateLimiter<IpAddr>) {
    limiter.retain_recent();
    limiter.shrink_to_fit();
    metrics::gauge!("mailpipe_tracker_limited_addresses").set(limiter.len() as f64);
}

pub fn router(state: TrackerState) -> Router {
    Router::new()
        .route("/o/{token}", get(open))
        .route("/c/{token}", get(click))
        .route("/u/{token}", get(unsubscribe_page).post(unsubscribe))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Limits checked before routing: path length, header size, and the
/// per-IP request rate. Each refusal is a plain 4xx with no event.
async fn guard(State(s): State<TrackerState>, req: Request, next: Next) -> Response {
    let path_len = req.uri().path().len() + req.uri().query().map_or(0, |q| q.len() + 1);
    if path_len > s.settings.max_path_bytes {
        metrics::counter!("mailpipe_tracker_refused_total", "reason" => "uri_too_long").increment(1);
        return (StatusCode::URI_TOO_LONG, "request target too long\n").into_response();
    }
    let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if header_bytes > s.settings.max_header_bytes {
        metrics::counter!("mailpipe_tracker_refused_total", "reason" => "headers_too_large").increment(1);
        return (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers too large\n").into_response();
    }
    s.forget_idle_addresses();
    if let Some(limiter) = &s.limiter
        && let Some(ip) = client_addr(&s, req.headers(), req.extensions().get::<ConnectInfo<SocketAddr>>())
        && limiter.check_key(&ip).is_err()
    {
        metrics::counter!("mailpipe_tracker_refused_total", "reason" => "rate_limited").increment(1);
        return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")], "slow down\n").into_response();
    }
    next.run(req).await
}

/// The client's address: the connection's peer, unless the peer is a
/// trusted proxy; then the right-most `X-Forwarded-For` entry that is not
/// one (what the first untrusted hop connected from). Entries to its left
/// were written by the client and are not believed.
fn client_addr(
    s: &TrackerState,
    headers: &HeaderMap,
    conn: Option<&ConnectInfo<SocketAddr>>,
) -> Option<IpAddr> {
    let peer = conn.map(|c| c.0.ip());
    client_behind(&s.settings.trusted_proxies, peer, headers)
}

fn client_behind(trusted: &[Cidr], peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let peer = peer?;
    if !is_trusted(peer) {
        return Some(peer);
    }
    let chain: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(|v| v.trim().parse().ok())
        .collect();
    // Right to left: the first hop our proxies did not add is the client.
    // (Our proxies write parseable addresses; anything else, or a chain of
    // proxies only, leaves the nearest proxy as the best we know.)
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) if is_trusted(*ip) => client = *ip,
            Some(ip) => return Some(*ip),
            None => break,
        }
    }
    Some(client)
}

/// Serves until `shutdown` fires, then drains: within the limits of
/// [`mailpipe_http::serve`] that `settings` gives.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: &TrackerSettings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    mailpipe_http::serve(listener, app, settings.limits(), "tracker", shutdown).await
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
        T::Retired => "retired",
        T::Expired => "expired",
        T::Revoked => "revoked",
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

fn seconds_since(sent_at: u32) -> Option<i64> {
    (sent_at > 0).then(|| mailpipe_core::now_ms() / 1000 - i64::from(sent_at))
}

/// The verdict and client details of an open or click.
fn judge(s: &TrackerState, e: &mut Event, c: &Claims, req: &Request, click: Option<bool>) {
    let (method, headers) = (req.method(), req.headers());
    let conn = req.extensions().get::<ConnectInfo<SocketAddr>>();
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ua_family = signals::ua_family(ua);
    e.verdict = Some(signals::verdict(&signals::Signals {
        method,
        ua_family,
        since_sent: seconds_since(c.sent_at),
        honeypot: click == Some(true),
        machine_click_secs: s.settings.machine_click_secs,
        is_click: click.is_some(),
    }));
    let ip = client_addr(s, headers, conn);
    e.client = signals::client_info(ip, headers, ua_family, s.settings.ip, &s.ip_key);
}

/// `None` when the event is durable; else the answer that says why not.
fn recorded(sent: Sent) -> Option<Response> {
    let (retry_after, why) = match sent {
        Sent::Durable => return None,
        Sent::Busy => ("5", "busy, try again\n"),
        Sent::Closed => ("1", "shutting down\n"),
    };
    Some((StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, retry_after)], why).into_response())
}

/// Open and click handlers read the method, headers and peer from the
/// request itself: extracting them would clone each per request.
async fn open(State(s): State<TrackerState>, Path(token): Path<String>, req: Request) -> Response {
    let Some(c) = verify(&s, &token) else { return not_found() };
    if c.action != Action::Open {
        return not_found();
    }
    let mut e = event(&c, EventType::Open, &request_id());
    judge(&s, &mut e, &c, &req, None);
    if let Some(refused) = recorded(s.events.send(e).await) {
        return refused;
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/gif")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache, must-revalidate, private")),
        ],
        Bytes::from_static(&PIXEL_GIF),
    )
        .into_response()
}

async fn click(State(s): State<TrackerState>, Path(token): Path<String>, req: Request) -> Response {
    let Some(c) = verify(&s, &token) else { return not_found() };
    let Action::Click { url } = &c.action else { return not_found() };
    let honeypot = **url == *s.honeypot;
    // Defence in depth: only http(s) targets, and only ones a header can carry.
    let lower = url.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    let location = match HeaderValue::from_str(url) {
        Ok(v) if lower.starts_with("http://") || lower.starts_with("https://") => v,
        _ => return not_found(),
    };
    let mut e = event(&c, EventType::Click, &request_id());
    e.url = Some(url.clone());
    judge(&s, &mut e, &c, &req, Some(honeypot));
    if let Some(refused) = recorded(s.events.send(e).await) {
        return refused;
    }
    if honeypot {
        // Recorded, and nowhere to go.
        return ([(header::CACHE_CONTROL, "no-store")], Html("<!doctype html><title>OK</title>\n"))
            .into_response();
    }
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
    // The token is base64url: safe inside an attribute as is.
    let page = format!(
        "<!doctype html><html><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\"><title>Unsubscribe</title></head>\
         <body><h1>Unsubscribe</h1><p>Stop receiving marketing email at this address?</p>\
         <form method=post action=\"/u/{token}\"><input type=hidden name=confirm value=yes><button id=confirm type=submit>Unsubscribe</button></form></body></html>\n"
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

/// RFC 8058 one-click (`List-Unsubscribe=One-Click`) or the page's form.
/// The body is read only once the token checks out, and only its first
/// [`MAX_UNSUBSCRIBE_BODY`] bytes: anything longer is refused.
async fn unsubscribe(State(s): State<TrackerState>, Path(token): Path<String>, req: Request) -> Response {
    let Some(c) = verify(&s, &token) else { return not_found() };
    let Action::Unsubscribe { recipient } = c.action else { return not_found() };
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_UNSUBSCRIBE_BODY).await else {
        metrics::counter!("mailpipe_tracker_refused_total", "reason" => "body_too_large").increment(1);
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    };
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
    if let Some(refused) = recorded(s.events.send(e).await) {
        return refused;
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html("<!doctype html><title>Unsubscribed</title><p id=done>You are unsubscribed. You will not receive marketing email at this address again.</p>\n"),
    )
        .into_response()
}

async fn ready(State(s): State<TrackerState>) -> Response {
    if s.events.ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "event spool full\n").into_response()
    }
}

#[cfg(test)]
mod forwarded_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_per_ip_limiter_forgets_addresses_that_went_quiet() {
        let spec: mailpipe_throttle::RateSpec = "100/s, burst=2".parse().unwrap();
        let limiter = DefaultKeyedRateLimiter::<IpAddr>::keyed(spec.quota());
        for i in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(limiter.check_key(&ip).is_ok());
        }
        assert_eq!(limiter.len(), 1000);
        // Long enough for every one-request budget to refill (10 ms each).
        std::thread::sleep(Duration::from_millis(50));
        let busy = IpAddr::from([192, 0, 2, 1]);
        let _ = limiter.check_key(&busy);
        let _ = limiter.check_key(&busy);
        forget_idle(&limiter);
        assert_eq!(limiter.len(), 1, "only the address still inside its budget is kept");
    }

    fn client(trusted: &[&str], peer: &str, xff: &[&str]) -> String {
        let trusted: Vec<Cidr> = trusted.iter().map(|c| c.parse().unwrap()).collect();
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        client_behind(&trusted, Some(peer.parse().unwrap()), &h).unwrap().to_string()
    }

    #[test]
    fn the_client_is_the_right_most_hop_no_trusted_proxy_added() {
        let lb = ["10.0.0.0/8"];
        // No proxies trusted: the peer, whatever the header says.
        assert_eq!(client(&[], "198.51.100.7", &["203.0.113.9"]), "198.51.100.7");
        // A peer that is not a trusted proxy cannot speak for anyone.
        assert_eq!(client(&lb, "198.51.100.7", &["203.0.113.9"]), "198.51.100.7");
        // Behind the balancer: the hop it saw, not what the client wrote.
        assert_eq!(client(&lb, "10.0.0.5", &["1.2.3.4, 203.0.113.9"]), "203.0.113.9");
        assert_eq!(client(&lb, "10.0.0.5", &["1.2.3.4", "203.0.113.9, 10.1.1.1"]), "203.0.113.9");
        assert_eq!(client(&lb, "10.0.0.5", &["garbage, 203.0.113.9"]), "203.0.113.9");
        // Nothing forwarded, or only proxies: the nearest proxy.
        assert_eq!(client(&lb, "10.0.0.5", &[]), "10.0.0.5");
        assert_eq!(client(&lb, "10.0.0.5", &["10.2.2.2"]), "10.2.2.2");
        assert_eq!(client(&lb, "::ffff:10.0.0.5", &["2001:db8::1"]), "2001:db8::1");
    }

    #[test]
    fn address_blocks_parse_and_contain() {
        let c: Cidr = "192.0.2.0/24".parse().unwrap();
        assert!(c.contains("192.0.2.200".parse().unwrap()) && !c.contains("192.0.3.1".parse().unwrap()));
        let one: Cidr = "2001:db8::1".parse().unwrap();
        assert!(
            one.contains("2001:db8::1".parse().unwrap()) && !one.contains("2001:db8::2".parse().unwrap())
        );
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("203.0.113.1".parse().unwrap()));
        assert!("192.0.2.0/33".parse::<Cidr>().is_err() && "nope".parse::<Cidr>().is_err());
    }
}
