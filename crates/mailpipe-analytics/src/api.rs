//! The tenant-facing HTTP API and dashboard.
//!
//! Every request names its tenant only through its API key
//! (`Authorization: Bearer mp_...`, or for dashboard pages the sign-in
//! cookie of [`crate::session`]; never a URL): the
//! key's SHA-256 is looked up, and a missing, unknown or revoked key gets a
//! 401. Reads then run as that tenant, under PostgreSQL row-level security,
//! so a campaign of another tenant is indistinguishable from one that does
//! not exist: 404, never 403.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use mailpipe_core::{AppliesTo, Category, EmailAddress, Reason, Scope, Suppression, TenantId};
use mailpipe_store::Store;
use mailpipe_token::RecipientHasher;
use serde::Deserialize;
use tracing::warn;

use crate::csv::{ImportError, export_csv};
use crate::domains::{self, DomainsApi};
use crate::send::{self, JobSink};
use crate::{dashboard, session, templates, warmup, webhooks};

#[derive(Clone)]
pub struct ApiState {
    pub(crate) store: Store,
    hasher: Arc<RecipientHasher>,
    /// Adding and checking sending domains; without it those answer 503.
    pub(crate) domains: Option<Arc<DomainsApi>>,
    /// Whether the dashboard's cookie is marked `Secure` (served over HTTPS).
    pub(crate) secure_cookie: bool,
    /// Where `POST /api/v1/messages` queues jobs; without it, 503.
    pub(crate) sink: Option<Arc<dyn JobSink>>,
    /// Send requests whose bodies may be in memory at once: each may be
    /// [`crate::send::MAX_SEND_BODY`], and a client may open many
    /// connections. The rest wait their turn.
    pub(crate) send_permits: Arc<tokio::sync::Semaphore>,
    /// Send requests in progress per tenant (`send::PER_TENANT_AT_ONCE`).
    pub(crate) send_by_tenant: send::TenantSlots,
    /// Webhook endpoints; without it those routes answer 503.
    pub(crate) webhooks: Option<Arc<crate::webhooks::WebhooksApi>>,
    /// The warm-up ramp, to show where a tenant's domains stand on it.
    pub(crate) warmup: Arc<mailpipe_core::WarmupSettings>,
}

/// Send requests read at once (see [`ApiState`]'s `send_permits`).
const SEND_REQUESTS_AT_ONCE: usize = 8;

impl ApiState {
    pub fn new(store: Store, hasher: RecipientHasher) -> Self {
        Self {
            store,
            hasher: Arc::new(hasher),
            domains: None,
            secure_cookie: false,
            sink: None,
            send_permits: Arc::new(tokio::sync::Semaphore::new(SEND_REQUESTS_AT_ONCE)),
            send_by_tenant: send::TenantSlots::default(),
            webhooks: None,
            warmup: Arc::default(),
        }
    }

    /// The warm-up ramp the workers apply (the default curve otherwise).
    pub fn with_warmup(mut self, warmup: mailpipe_core::WarmupSettings) -> Self {
        self.warmup = Arc::new(warmup);
        self
    }

    /// Lets tenants send through `POST /api/v1/messages`, into `sink`.
    pub fn with_sink(mut self, sink: Arc<dyn JobSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Marks the dashboard's sign-in cookie `Secure`: set it when the API
    /// is served over HTTPS, as it should be beyond one machine.
    pub fn with_secure_cookie(mut self, secure: bool) -> Self {
        self.secure_cookie = secure;
        self
    }

    /// Lets tenants manage webhook endpoints.
    pub fn with_webhooks(mut self, webhooks: crate::webhooks::WebhooksApi) -> Self {
        self.webhooks = Some(Arc::new(webhooks));
        self
    }

    pub fn with_domains(mut self, domains: DomainsApi) -> Self {
        self.domains = Some(Arc::new(domains));
        self
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/campaigns", get(campaigns))
        .route("/api/v1/campaigns/{id}/stats", get(stats))
        .route("/api/v1/stream", get(stream))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/suppressions", get(list_suppressions).post(add_suppression))
        .route("/api/v1/suppressions/{email}", axum::routing::delete(remove_suppression))
        .route("/api/v1/suppressions.csv", get(export_suppressions).post(import_suppressions))
        .route("/api/v1/domains", get(domains::list).post(domains::add))
        .route("/api/v1/domains/{domain}/check", axum::routing::post(domains::check))
        .route("/api/v1/warmup", get(warmup::list))
        .route("/api/v1/messages", axum::routing::post(send::post_messages))
        .route("/api/v1/templates", get(templates::list).post(templates::upload))
        .route("/api/v1/templates/{campaign_id}/{template_id}", get(templates::show))
        .route("/api/v1/templates/{campaign_id}/{template_id}/versions", get(templates::versions))
        .route("/api/v1/webhooks", get(webhooks::list).post(webhooks::add))
        .route("/api/v1/webhooks/{id}", axum::routing::delete(webhooks::remove))
        .route("/api/v1/webhooks/{id}/rotate", axum::routing::post(webhooks::rotate))
        .route("/api/v1/webhooks/{id}/enable", axum::routing::post(webhooks::enable))
        .route("/dashboard/login", get(session::form).post(session::login))
        .route("/dashboard/logout", axum::routing::post(session::logout))
        .route("/dashboard/campaigns/{id}", get(dashboard))
        .route("/dashboard/overview", get(overview_page))
        .route("/dashboard/domains", get(domains::page))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

/// The most of a JSON request body read (one suppression, one domain).
pub(crate) const MAX_JSON_BODY: usize = 16 * 1024;
/// The most of a suppression CSV read in one import.
pub(crate) const MAX_CSV_BODY: usize = 8 * 1024 * 1024;

/// A request body, read only once the caller's key has checked out, and at
/// most `limit` bytes (413 beyond): an unauthenticated client costs a
/// header read, not a body.
pub(crate) async fn read_body(body: axum::body::Body, limit: usize) -> Result<axum::body::Bytes, Response> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        err(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is over its {limit}-byte limit, or broken"),
        )
    })
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")],
        serde_json::to_string(v).unwrap_or_default(),
    )
        .into_response()
}

pub(crate) fn err(status: StatusCode, msg: &str) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], json_body(msg)).into_response()
}

fn json_body(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Response {
    warn!(error = %e, "api request failed");
    err(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable")
}

/// The caller's tenant, from its API key; `Err` is the 401 to return.
pub(crate) async fn tenant(
    s: &ApiState,
    headers: &HeaderMap,
    cookie_key: Option<&str>,
) -> Result<TenantId, Response> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(key) = bearer.or(cookie_key) else {
        return Err(err(StatusCode::UNAUTHORIZED, "missing API key"));
    };
    match s.store.tenant_for_api_key(key).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => {
            metrics::counter!("mailpipe_api_unauthorized_total").increment(1);
            Err(err(StatusCode::UNAUTHORIZED, "unknown or revoked API key"))
        }
        Err(e) => Err(internal(e)),
    }
}

async fn campaigns(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // Everything after the key check runs in the tenant's context.
    let store = s.store.for_tenant(&t);
    match store.campaigns(&t).await {
        Ok(c) => json(&serde_json::json!({ "campaigns": c })),
        Err(e) => internal(e),
    }
}

/// The tenant's marketing stream: `active`, or `paused` by the reputation
/// breaker with its reason (docs/deliverability.md), and under `domains` and
/// `providers` each of its sending domains' and mailbox providers' streams
/// that has a state. Resuming is the
/// operator's (`mailpipe tenant resume`).
async fn stream(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match s.store.for_tenant(&t).streams(Some(&t)).await {
        Ok(rows) => {
            let (parts, whole): (Vec<_>, Vec<_>) =
                rows.into_iter().partition(|st| st.domain.is_some() || st.provider.is_some());
            let (domains, providers): (Vec<_>, Vec<_>) =
                parts.into_iter().partition(|st| st.domain.is_some());
            let mut out = match whole.into_iter().next() {
                Some(st) => serde_json::json!(st),
                None => serde_json::json!({ "tenant_id": t.as_str(), "state": "active", "reason": null }),
            };
            out["domains"] = serde_json::json!(domains);
            out["providers"] = serde_json::json!(providers);
            json(&out)
        }
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct OverviewQuery {
    /// Days of daily volume, today included: 1 to 90, default 30.
    days: Option<i64>,
}

/// The tenant at a glance: each campaign with its rates, its streams'
/// breaker state, and the daily volume per organisational From domain.
async fn overview(State(s): State<ApiState>, headers: HeaderMap, Query(q): Query<OverviewQuery>) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let days = q.days.unwrap_or(30);
    if !(1..=90).contains(&days) {
        return err(StatusCode::BAD_REQUEST, "days: 1 to 90");
    }
    match s.store.for_tenant(&t).overview(&t, days, mailpipe_core::now_ms()).await {
        Ok(o) => json(&o),
        Err(e) => internal(e),
    }
}

/// The dashboard's first page: [`overview`] as HTML.
async fn overview_page(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let t = match session::dashboard_tenant(&s, &headers, "/dashboard/overview").await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match s.store.for_tenant(&t).overview(&t, 30, mailpipe_core::now_ms()).await {
        Ok(o) => ([(header::CACHE_CONTROL, "no-store")], Html(dashboard::overview(&o))).into_response(),
        Err(e) => internal(e),
    }
}

async fn stats(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // Everything after the key check runs in the tenant's context.
    let store = s.store.for_tenant(&t);
    match store.campaign_stats(&t, &id).await {
        Ok(Some(st)) => json(&st),
        Ok(None) => err(StatusCode::NOT_FOUND, "no such campaign"),
        Err(e) => internal(e),
    }
}

async fn dashboard(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let t = match session::dashboard_tenant(&s, &headers, &format!("/dashboard/campaigns/{id}")).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match s.store.for_tenant(&t).campaign_stats(&t, &id).await {
        Ok(Some(st)) => {
            ([(header::CACHE_CONTROL, "no-store")], Html(dashboard::page(&t, &st))).into_response()
        }
        Ok(None) => err(StatusCode::NOT_FOUND, "no such campaign"),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct NewSuppression {
    email: String,
    /// Stops marketing only (`marketing`, the default) or every category (`all`).
    #[serde(default)]
    applies_to: Option<String>,
}

/// A suppression as the API shows it: a keyed hash, never an address.
fn suppression_json(s: &Suppression) -> serde_json::Value {
    serde_json::json!({
        "scope_tenant": s.scope.key(),
        "recipient_hash": s.recipient.to_hex(),
        "reason": s.reason.as_str(),
        "applies_to": s.applies_to.as_str(),
        "created_at": s.created_at,
    })
}

async fn list_suppressions(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // Everything after the key check runs in the tenant's context.
    let store = s.store.for_tenant(&t);
    match store.list_suppressions(&Scope::Tenant(t)).await {
        Ok(rows) => json(
            &serde_json::json!({ "suppressions": rows.iter().map(suppression_json).collect::<Vec<_>>() }),
        ),
        Err(e) => internal(e),
    }
}

async fn add_suppression(State(s): State<ApiState>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // Everything after the key check runs in the tenant's context.
    let store = s.store.for_tenant(&t);
    let body = match read_body(body, MAX_JSON_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(req) = serde_json::from_slice::<NewSuppression>(&body) else {
        return err(
            StatusCode::BAD_REQUEST,
            "expected {\"email\": ..., \"applies_to\": \"marketing\"|\"all\"}",
        );
    };
    let Ok(addr) = EmailAddress::parse(&req.email) else {
        return err(StatusCode::BAD_REQUEST, "invalid email address");
    };
    let applies_to = match req.applies_to.as_deref().map(str::parse::<AppliesTo>).transpose() {
        Ok(a) => a.unwrap_or(AppliesTo::Marketing),
        Err(_) => return err(StatusCode::BAD_REQUEST, "applies_to must be marketing or all"),
    };
    let recipient = s.hasher.hash(&addr.canonical());
    let entry =
        Suppression::new(Scope::Tenant(t.clone()), recipient, Reason::Manual, applies_to).from_tenant(&t);
    match store.add_suppression(&entry).await {
        Ok(()) => (StatusCode::CREATED, json(&serde_json::json!({ "recipient_hash": recipient.to_hex() })))
            .into_response(),
        Err(e) => internal(e),
    }
}

async fn remove_suppression(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(email): Path<String>,
) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // Everything after the key check runs in the tenant's context.
    let store = s.store.for_tenant(&t);
    let Ok(addr) = EmailAddress::parse(&email) else {
        return err(StatusCode::BAD_REQUEST, "invalid email address");
    };
    let recipient = s.hasher.hash(&addr.canonical());
    let forbidden = |kept: Vec<&str>, removed: u64, why: &str| {
        let body = serde_json::json!({ "error": why, "kept": kept, "removed": removed });
        (StatusCode::FORBIDDEN, json(&body)).into_response()
    };
    // What the recipient asked for, or what the platform recorded, is not
    // the tenant's to lift.
    match store.remove_suppression(&Scope::Tenant(t.clone()), &recipient).await {
        Ok(r) if !r.kept.is_empty() => forbidden(
            r.kept.iter().map(|k| k.as_str()).collect(),
            r.removed,
            "only suppressions the tenant added (manual, import) can be removed",
        ),
        Ok(r) if r.removed > 0 => StatusCode::NO_CONTENT.into_response(),
        // Why not: a platform-wide entry, which the tenant's context cannot
        // read (it names other tenants); the platform answers with just the
        // reason.
        Ok(_) => match s.store.suppression(&recipient, &t, Category::Marketing).await {
            Ok(Some(p)) => {
                forbidden(vec![p.reason.as_str()], 0, "suppressed platform-wide; a tenant cannot remove it")
            }
            Ok(None) => err(StatusCode::NOT_FOUND, "not suppressed for this tenant"),
            Err(e) => internal(e),
        },
        Err(e) => internal(e),
    }
}

async fn export_suppressions(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // Everything after the key check runs in the tenant's context.
    let store = s.store.for_tenant(&t);
    match store.list_suppressions(&Scope::Tenant(t)).await {
        Ok(rows) => {
            ([(header::CONTENT_TYPE, "text/csv"), (header::CACHE_CONTROL, "no-store")], export_csv(&rows))
                .into_response()
        }
        Err(e) => internal(e),
    }
}

/// A CSV of `email,reason,applies_to` into the tenant's scope: every line
/// or none; a bad file gets a 422 naming each bad line.
async fn import_suppressions(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let body = match read_body(body, MAX_CSV_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return err(StatusCode::BAD_REQUEST, "the CSV must be UTF-8");
    };
    let store = s.store.for_tenant(&t);
    match crate::csv::import(&store, &s.hasher, text, &Scope::Tenant(t)).await {
        Ok(n) => json(&serde_json::json!({ "imported": n })),
        Err(ImportError::BadLines(errors)) => {
            let lines: Vec<_> =
                errors.iter().map(|e| serde_json::json!({ "line": e.line, "error": e.error })).collect();
            let body = serde_json::json!({ "error": "nothing was imported", "lines": lines });
            (StatusCode::UNPROCESSABLE_ENTITY, json(&body)).into_response()
        }
        Err(ImportError::Store(e)) => internal(e),
    }
}
