//! Sending domains through the tenant API: a tenant lists the domains it
//! may send as, adds its own (a key made, the records to publish returned),
//! and asks for a check; the dashboard shows each domain's state and what
//! to fix. Reads run as the tenant, under row-level security, and never see
//! a private key, sealed or not.

use std::fmt::Write;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use mailpipe_core::{DkimAlgorithm, Domain, TenantId};
use mailpipe_domains::onboard::{self, KeySource};
use mailpipe_domains::{Dns, DomainError, DomainSettings, Finding, Sealer};
use mailpipe_store::{Owner, SendingDomain};
use serde::Deserialize;

use crate::api::{ApiState, err, internal, json, tenant};

/// What the API needs to add and check domains.
pub struct DomainsApi {
    sealer: Sealer,
    settings: DomainSettings,
}

impl DomainsApi {
    pub fn new(sealer: Sealer, settings: DomainSettings) -> Self {
        Self { sealer, settings }
    }
}

fn unconfigured() -> Response {
    err(StatusCode::SERVICE_UNAVAILABLE, "sending domains are not configured on this server")
}

/// A domain as the API shows it.
fn domain_json(d: &SendingDomain, settings: Option<&DomainSettings>) -> serde_json::Value {
    let findings: Vec<Finding> =
        d.findings.as_deref().and_then(|f| serde_json::from_str(f).ok()).unwrap_or_default();
    let keys: Vec<_> = d
        .keys
        .iter()
        .map(|k| serde_json::json!({ "selector": k.selector.as_str(), "algorithm": k.algorithm.as_str(), "state": k.state.as_str() }))
        .collect();
    let records = settings.map(|s| onboard::to_publish(d, s)).unwrap_or_default();
    serde_json::json!({
        "domain": d.domain.as_str(),
        "status": d.status.as_str(),
        "owner": match d.owner { Owner::Tenant(_) => "tenant", Owner::Platform => "platform" },
        "keys": keys,
        "records": records,
        "findings": findings,
        "checked_at": d.checked_at,
        // On the warm-up ramp (GET /api/v1/warmup says where).
        "warming": d.warmup_from.is_some(),
    })
}

pub(crate) async fn list(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let settings = s.domains.as_ref().map(|d| &d.settings);
    match s.store.sending_domains_as_tenant(&t).await {
        Ok(ds) => json(
            &serde_json::json!({ "domains": ds.iter().map(|d| domain_json(d, settings)).collect::<Vec<_>>() }),
        ),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
pub(crate) struct NewDomain {
    domain: String,
    #[serde(default)]
    algorithm: Option<String>,
}

pub(crate) async fn add(State(s): State<ApiState>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let body = match crate::api::read_body(body, crate::api::MAX_JSON_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(api) = s.domains.clone() else {
        return unconfigured();
    };
    let Ok(req) = serde_json::from_slice::<NewDomain>(&body) else {
        return err(
            StatusCode::BAD_REQUEST,
            "expected {\"domain\": ..., \"algorithm\": \"rsa-sha256\"|\"ed25519-sha256\"}",
        );
    };
    let domain = match Domain::parse(&req.domain) {
        Ok(d) => d,
        Err(e) => return err(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let algorithm = match req.algorithm.as_deref().map(str::parse::<DkimAlgorithm>).transpose() {
        Ok(a) => a.unwrap_or(api.settings.default_algorithm),
        Err(e) => return err(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let owner = Owner::Tenant(t.clone());
    let source = KeySource::Generate(algorithm);
    match onboard::add(&s.store, &api.sealer, &api.settings, &domain, &owner, &[], false, source).await {
        Ok(_) => match own(&s, &t, domain.as_str()).await {
            Ok(d) => (StatusCode::CREATED, json(&domain_json(&d, Some(&api.settings)))).into_response(),
            Err(r) => r,
        },
        Err(DomainError::HeldByAnother(_)) => {
            err(StatusCode::CONFLICT, "this domain is held by another tenant")
        }
        Err(e @ DomainError::TooMany(_)) => err(StatusCode::FORBIDDEN, &e.to_string()),
        Err(e) => internal(e),
    }
}

/// The tenant's own view of one domain, read as the tenant (row-level
/// security; no sealed key), or the 404 to return: another tenant's domain
/// is as absent as a missing one.
async fn own(s: &ApiState, t: &TenantId, name: &str) -> Result<SendingDomain, Response> {
    let missing = || err(StatusCode::NOT_FOUND, "no such sending domain");
    let domain = Domain::parse(name).map_err(|_| missing())?;
    let mine = s.store.sending_domains_as_tenant(t).await.map_err(internal)?;
    mine.into_iter().find(|d| d.domain == domain).ok_or_else(missing)
}

/// A domain checked this recently answers with its last check: asking
/// again and again makes no more DNS traffic.
const RECHECK_AFTER_MS: i64 = 30_000;

pub(crate) async fn check(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let t = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Some(api) = s.domains.clone() else {
        return unconfigured();
    };
    let d = match own(&s, &t, &name).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    if d.checked_at.is_some_and(|at| mailpipe_core::now_ms() - at < RECHECK_AFTER_MS) {
        let findings: Vec<Finding> =
            d.findings.as_deref().and_then(|f| serde_json::from_str(f).ok()).unwrap_or_default();
        return json(&serde_json::json!({
            "domain": d.domain.as_str(),
            "status": d.status.as_str(),
            "findings": findings,
            "promoted": null,
            "checked_at": d.checked_at,
        }));
    }
    let dns = match Dns::new(&api.settings.nameservers, api.settings.dns_timeout) {
        Ok(dns) => dns,
        Err(e) => return internal(e),
    };
    match mailpipe_domains::check(&s.store, &dns, &api.settings, &d).await {
        Ok(c) => json(&serde_json::json!({
            "domain": d.domain.as_str(),
            "status": c.status.as_str(),
            "findings": c.findings,
            "promoted": c.promoted.map(|p| p.to_string()),
        })),
        Err(DomainError::Changed(_)) => {
            err(StatusCode::CONFLICT, "the domain changed while it was checked; try again")
        }
        Err(e) => internal(e),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The dashboard's domains page: each domain's state, the records to
/// publish, and each finding with its fix.
pub(crate) async fn page(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let t = match crate::session::dashboard_tenant(&s, &headers, "/dashboard/domains").await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let domains = match s.store.sending_domains_as_tenant(&t).await {
        Ok(d) => d,
        Err(e) => return internal(e),
    };
    let settings = s.domains.as_ref().map(|d| &d.settings);
    let warming = match crate::warmup::of_tenant(&s, &t).await {
        Ok(w) => w,
        Err(e) => return internal(e),
    };
    let now = mailpipe_core::now_ms();
    let mut html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>Sending domains · {t}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 8px;text-align:left;vertical-align:top}}\
         .pass{{color:#1a7f37}}.warn{{color:#9a6700}}.fail{{color:#cf222e}}code{{word-break:break-all}}</style></head>\
         <body><h1>Sending domains of {t}</h1>",
        t = esc(t.as_str())
    );
    if domains.is_empty() {
        html.push_str("<p id=none>No sending domains yet. Add one with POST /api/v1/domains.</p>");
    }
    for d in &domains {
        let name = esc(d.domain.as_str());
        let _ = write!(
            html,
            "<section id=\"d-{name}\"><h2>{name} <span class=status id=\"s-{name}\">{}</span></h2>",
            d.status.as_str()
        );
        let findings: Vec<Finding> =
            d.findings.as_deref().and_then(|f| serde_json::from_str(f).ok()).unwrap_or_default();
        if findings.is_empty() {
            html.push_str("<p>Not checked yet.</p>");
        } else {
            html.push_str("<table><tr><th>check</th><th>result</th><th>found</th><th>to fix</th></tr>");
            for f in &findings {
                let outcome = serde_json::to_value(f.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let check = serde_json::to_value(f.check)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let _ = write!(
                    html,
                    "<tr><td>{check}</td><td class={outcome}>{outcome}</td><td>{}</td><td>{}</td></tr>",
                    esc(&f.detail),
                    esc(f.fix.as_deref().unwrap_or(""))
                );
            }
            html.push_str("</table>");
        }
        if let Some(settings) = settings {
            html.push_str("<h3>Records to publish</h3><pre>");
            for r in onboard::to_publish(d, settings) {
                let _ = writeln!(html, "{}", esc(&r.zone_line()));
            }
            html.push_str("</pre>");
        }
        html.push_str(&crate::warmup::section(d.domain.as_str(), &warming, &s.warmup, now));
        html.push_str("</section>");
    }
    html.push_str("</body></html>\n");
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}
