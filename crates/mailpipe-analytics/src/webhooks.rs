//! `/api/v1/webhooks`: a tenant's webhook endpoints (docs/api.md,
//! "Webhooks"). Registering one checks its URL as a delivery will (https,
//! a host that resolves only to public addresses, unless the operator
//! allows more), makes its secret and shows it once; the secret is kept
//! sealed under the key-encryption key. Every statement runs in the
//! tenant's context.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mailpipe_core::{EventType, TenantId, now_ms};
use mailpipe_domains::Sealer;
use mailpipe_webhooks::{Secret, WebhookSettings, WebhookUrl, sealing_context};
use serde::Deserialize;

use crate::api::{ApiState, MAX_JSON_BODY, err, internal, json, read_body, tenant};

/// What the webhook routes need: the sealer for secrets and the settings.
pub struct WebhooksApi {
    pub sealer: Arc<Sealer>,
    pub settings: WebhookSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEndpoint {
    url: String,
    /// Event types to receive; absent or empty: every type.
    #[serde(default)]
    events: Vec<String>,
}

/// Every event type a webhook can receive, by name.
fn event_type(name: &str) -> Option<EventType> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

/// The caller's tenant, from its key (401 without one), and the webhook
/// settings (503 when webhooks are off): what every route starts from.
async fn caller<'a>(s: &'a ApiState, headers: &HeaderMap) -> Result<(TenantId, &'a WebhooksApi), Response> {
    let tenant = tenant(s, headers, None).await?;
    let api = s.webhooks.as_deref().ok_or_else(|| {
        err(StatusCode::SERVICE_UNAVAILABLE, "webhooks are not enabled on this server (webhooks.enabled)")
    })?;
    Ok((tenant, api))
}

fn seal(api: &WebhooksApi, endpoint_id: &str, secret: &Secret) -> Option<Vec<u8>> {
    api.sealer
        .seal(secret.bytes(), &sealing_context(endpoint_id))
        .map_err(|e| tracing::warn!(error = %e, "cannot seal a webhook secret"))
        .ok()
}

pub(crate) async fn add(State(s): State<ApiState>, headers: HeaderMap, body: Body) -> Response {
    let (tenant, api) = match caller(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let bytes = match read_body(body, MAX_JSON_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let new: NewEndpoint = match serde_json::from_slice(&bytes) {
        Ok(n) => n,
        Err(e) => return err(StatusCode::BAD_REQUEST, &format!("not a webhook endpoint: {e}")),
    };
    let mut events: Vec<String> = Vec::new();
    for name in &new.events {
        match event_type(name) {
            Some(t) if !events.iter().any(|e| e == t.as_str()) => events.push(t.as_str().to_owned()),
            Some(_) => {}
            None => {
                return err(
                    StatusCode::BAD_REQUEST,
                    &format!("events: {name:?} is not an event type (docs/schemas.md)"),
                );
            }
        }
    }
    let policy = api.settings.policy();
    let url = match WebhookUrl::parse(&new.url, &policy) {
        Ok(u) => u,
        Err(e) => return err(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    // Checked now as every delivery will be: a tenant hears at once that a
    // URL points where webhooks may not go.
    match tokio::time::timeout(api.settings.timeout, url.resolve(&policy)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return err(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(_) => return err(StatusCode::BAD_REQUEST, &format!("url: {} did not resolve in time", url.host)),
    }
    let store = s.store.for_tenant(&tenant);
    match store.webhooks(tenant.as_str()).await {
        Ok(existing) if existing.len() >= api.settings.max_endpoints_per_tenant => {
            return err(
                StatusCode::CONFLICT,
                &format!(
                    "at most {} webhook endpoints per tenant; remove one first",
                    api.settings.max_endpoints_per_tenant
                ),
            );
        }
        Ok(_) => {}
        Err(e) => return internal(e),
    }
    let id = format!("wh_{:016x}", rand::random::<u64>());
    let secret = Secret::generate();
    let Some(sealed) = seal(api, &id, &secret) else { return internal("sealing failed") };
    if let Err(e) = store.add_webhook(tenant.as_str(), &id, &url.to_string(), &events, &sealed).await {
        return internal(e);
    }
    let body = serde_json::json!({
        "id": id, "url": url.to_string(), "events": events, "secret": secret.to_whsec(),
    });
    (StatusCode::CREATED, json(&body)).into_response()
}

pub(crate) async fn list(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let tenant = match caller(&s, &headers).await {
        Ok((t, _)) => t,
        Err(r) => return r,
    };
    let store = s.store.for_tenant(&tenant);
    let endpoints = match store.webhooks(tenant.as_str()).await {
        Ok(e) => e,
        Err(e) => return internal(e),
    };
    let mut out = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let counts = match store.webhook_delivery_counts(tenant.as_str(), &e.endpoint_id).await {
            Ok(c) => c,
            Err(e) => return internal(e),
        };
        let deliveries: serde_json::Map<String, serde_json::Value> =
            counts.into_iter().map(|(k, v)| (k, v.into())).collect();
        out.push(serde_json::json!({
            "id": e.endpoint_id, "url": e.url, "events": e.event_types, "created_at": e.created_at,
            "last_success_at": e.last_success_at, "disabled_at": e.disabled_at,
            "disabled_reason": e.disabled_reason, "deliveries": deliveries,
        }));
    }
    json(&serde_json::json!({ "webhooks": out }))
}

pub(crate) async fn remove(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let tenant = match caller(&s, &headers).await {
        Ok((t, _)) => t,
        Err(r) => return r,
    };
    match s.store.for_tenant(&tenant).remove_webhook(tenant.as_str(), &id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => err(StatusCode::NOT_FOUND, "no such webhook endpoint"),
        Err(e) => internal(e),
    }
}

pub(crate) async fn rotate(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (tenant, api) = match caller(&s, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let secret = Secret::generate();
    let Some(sealed) = seal(api, &id, &secret) else { return internal("sealing failed") };
    let until = now_ms() + (api.settings.secret_overlap_hours as i64) * 3_600_000;
    match s.store.for_tenant(&tenant).rotate_webhook_secret(tenant.as_str(), &id, &sealed, until).await {
        Ok(true) => json(&serde_json::json!({
            "id": id, "secret": secret.to_whsec(), "previous_secret_valid_until": until,
        })),
        Ok(false) => err(StatusCode::NOT_FOUND, "no such webhook endpoint"),
        Err(e) => internal(e),
    }
}

pub(crate) async fn enable(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let tenant = match caller(&s, &headers).await {
        Ok((t, _)) => t,
        Err(r) => return r,
    };
    match s.store.for_tenant(&tenant).enable_webhook(tenant.as_str(), &id).await {
        Ok(true) => json(&serde_json::json!({ "id": id, "enabled": true })),
        Ok(false) => err(StatusCode::NOT_FOUND, "no such webhook endpoint"),
        Err(e) => internal(e),
    }
}
