//! Warm-up through the tenant API and dashboard: where each of the
//! tenant's warming domains stands on its ramp, per provider group. Read
//! as the tenant (row-level security): another tenant's ramps are absent.

use std::fmt::Write;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use mailpipe_core::{TenantId, WarmupSettings};
use mailpipe_store::{StoreError, WarmupDomain};

use crate::api::{ApiState, internal, json, tenant};

/// The tenant's warming domains.
pub(crate) async fn of_tenant(s: &ApiState, t: &TenantId) -> Result<Vec<WarmupDomain>, StoreError> {
    s.store.for_tenant(t).warmups(Some(t)).await
}

fn to_json(domains: &[WarmupDomain], settings: &WarmupSettings, now: i64) -> serde_json::Value {
    let domains: Vec<_> = domains
        .iter()
        .map(|d| {
            serde_json::json!({
                "domain": d.domain,
                "since": d.since,
                "providers": d.providers.iter().map(|r| r.view(settings, now)).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "window_secs": settings.window.as_secs(), "days": settings.steps(), "domains": domains })
}

/// `GET /api/v1/warmup`.
pub(crate) async fn list(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match of_tenant(&s, &t).await {
        Ok(ds) => json(&to_json(&ds, &s.warmup, mailpipe_core::now_ms())),
        Err(e) => internal(e),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The dashboard's part for one domain: its ramps, or nothing if it is not
/// warming up.
pub(crate) fn section(domain: &str, warming: &[WarmupDomain], settings: &WarmupSettings, now: i64) -> String {
    let Some(d) = warming.iter().find(|d| d.domain == domain) else {
        return String::new();
    };
    let name = esc(domain);
    let mut html = format!(
        "<h3>Warm-up</h3><p>New domains build their reputation slowly: each mailbox provider gets at most the day's cap, \
         from {} on day 1 to no cap after day {}. Mail over the cap waits for the next day; nothing is dropped.</p>",
        settings.cap(0).unwrap_or(0),
        settings.steps()
    );
    if d.providers.is_empty() {
        html.push_str("<p>Nothing sent yet: every provider starts at day 1.</p>");
        return html;
    }
    let _ = write!(
        html,
        "<table id=\"w-{name}\"><tr><th>provider</th><th>state</th><th>day</th><th>today's cap</th><th>sent today</th><th>waiting for tomorrow</th><th>why it holds</th></tr>"
    );
    for r in d.providers.iter().map(|r| r.view(settings, now)) {
        let _ = write!(
            html,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{} of {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.state,
            esc(&r.provider),
            r.state,
            r.day,
            r.days,
            r.cap.map_or("none".to_owned(), |c| c.to_string()),
            r.sent,
            r.parked,
            esc(r.held.as_deref().unwrap_or(""))
        );
    }
    html.push_str("</table>");
    html
}
