//! `POST /api/v1/templates` and `GET /api/v1/templates`: a tenant registers
//! the templates its jobs name by `template_id` (docs/api.md, "Templates"),
//! and reads them back, any kept version, with
//! `GET /api/v1/templates/{campaign_id}/{template_id}[?version=N]` and
//! `.../versions`.
//!
//! A template is compiled before it is kept, by the same engine and limits
//! the worker renders with, so a syntax error comes back now, with its part
//! and line, instead of dead-lettering every job that names the template.
//! Each upload is the next version; the workers use it within
//! `worker.template_recheck_ms`, without a restart. Earlier versions are
//! kept, unchanged, for the jobs pinned to them (`template_version`).

use std::num::NonZeroU32;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mailpipe_core::job::MAX_TEMPLATE_BYTES;
use mailpipe_core::{CampaignId, TemplateId};
use mailpipe_render::{CompiledTemplates, TemplateLimits, TemplateSet};
use serde::Deserialize;

use crate::api::{ApiState, err, internal, json, read_body, tenant};

/// Three parts of at most [`MAX_TEMPLATE_BYTES`] each, as JSON strings
/// (escaping can double a part), and the rest of the body.
const MAX_UPLOAD: usize = 6 * MAX_TEMPLATE_BYTES + 4096;

/// A template to register, as the API takes it and `mailpipe template put`
/// makes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    pub campaign_id: String,
    pub template_id: String,
    pub subject: String,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

/// What is wrong with an upload, as the answer says it.
#[derive(Debug)]
pub enum Refused {
    BadRequest(String),
    TooLarge(&'static str),
    /// Does not compile: the message, its part and, if known, the line.
    Compile {
        message: String,
        part: &'static str,
        line: Option<usize>,
    },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::BadRequest(m) => f.write_str(m),
            Refused::TooLarge(part) => write!(f, "{part} is over {MAX_TEMPLATE_BYTES} bytes"),
            Refused::Compile { message, part, line: Some(line) } => {
                write!(f, "{part}, line {line}: {message}")
            }
            Refused::Compile { message, part, line: None } => write!(f, "{part}: {message}"),
        }
    }
}

impl Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::BadRequest(m) => err(StatusCode::BAD_REQUEST, &m),
            Refused::TooLarge(part) => {
                err(StatusCode::PAYLOAD_TOO_LARGE, &format!("{part} is over {MAX_TEMPLATE_BYTES} bytes"))
            }
            Refused::Compile { message, part, line } => {
                let mut body = serde_json::json!({ "error": message, "part": part });
                if let Some(line) = line {
                    body["line"] = line.into();
                }
                (StatusCode::UNPROCESSABLE_ENTITY, json(&body)).into_response()
            }
        }
    }
}

/// The upload, checked and compiled (and dropped: the worker compiles what
/// it renders): its ids, or what is wrong.
pub fn check(u: &Upload) -> Result<(CampaignId, TemplateId), Refused> {
    let campaign = CampaignId::parse(u.campaign_id.clone())
        .map_err(|e| Refused::BadRequest(format!("campaign_id: {e}")))?;
    let template = TemplateId::parse(u.template_id.clone())
        .map_err(|e| Refused::BadRequest(format!("template_id: {e}")))?;
    for (part, text) in [("subject", Some(&u.subject)), ("html", u.html.as_ref()), ("text", u.text.as_ref())]
    {
        if text.is_some_and(|t| t.len() > MAX_TEMPLATE_BYTES) {
            return Err(Refused::TooLarge(part));
        }
    }
    if u.html.is_none() && u.text.is_none() {
        return Err(Refused::BadRequest("html or text is required".into()));
    }
    let set = TemplateSet { subject: u.subject.clone(), html: u.html.clone(), text: u.text.clone() };
    CompiledTemplates::compile(&set, &TemplateLimits::default()).map_err(|e| {
        let (part, line) = e.template_location().unwrap_or(("template", None));
        Refused::Compile { message: e.to_string(), part, line }
    })?;
    Ok((campaign, template))
}

pub(crate) async fn upload(State(s): State<ApiState>, headers: HeaderMap, body: Body) -> Response {
    let tenant = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let bytes = match read_body(body, MAX_UPLOAD).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let u: Upload = match serde_json::from_slice(&bytes) {
        Ok(u) => u,
        Err(e) => return err(StatusCode::BAD_REQUEST, &format!("not a template: {e}")),
    };
    let (campaign, template) = match check(&u) {
        Ok(ids) => ids,
        Err(r) => return r.into_response(),
    };
    let registered = s
        .store
        .for_tenant(&tenant)
        .register_template(
            tenant.as_str(),
            campaign.as_str(),
            template.as_str(),
            &u.subject,
            u.html.as_deref(),
            u.text.as_deref(),
        )
        .await;
    match registered {
        Ok(version) => (
            StatusCode::CREATED,
            json(&serde_json::json!({
                "campaign_id": campaign.as_str(), "template_id": template.as_str(), "version": version
            })),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

pub(crate) async fn list(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let tenant = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match s.store.for_tenant(&tenant).list_templates(tenant.as_str()).await {
        Ok(rows) => {
            let templates: Vec<_> = rows
                .into_iter()
                .map(|(campaign_id, template_id, version, registered_at)| {
                    serde_json::json!({
                        "campaign_id": campaign_id, "template_id": template_id,
                        "version": version, "registered_at": registered_at
                    })
                })
                .collect();
            json(&serde_json::json!({ "templates": templates }))
        }
        Err(e) => internal(e),
    }
}

/// Which version `GET /api/v1/templates/{campaign_id}/{template_id}` shows.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VersionQuery {
    version: Option<NonZeroU32>,
}

/// The path's ids, parsed, or what the 400 says: the one outside the id
/// grammar.
fn ids(campaign: String, template: String) -> Result<(CampaignId, TemplateId), String> {
    let campaign = CampaignId::parse(campaign).map_err(|e| format!("campaign_id: {e}"))?;
    let template = TemplateId::parse(template).map_err(|e| format!("template_id: {e}"))?;
    Ok((campaign, template))
}

pub(crate) async fn show(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((campaign, template)): Path<(String, String)>,
    query: Result<Query<VersionQuery>, QueryRejection>,
) -> Response {
    let tenant = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                &format!("the query takes `version`, from 1: {}", e.body_text()),
            );
        }
    };
    let (campaign, template) = match ids(campaign, template) {
        Ok(ids) => ids,
        Err(m) => return err(StatusCode::BAD_REQUEST, &m),
    };
    let pinned = q.version.map(|v| i64::from(v.get()));
    let found = s
        .store
        .for_tenant(&tenant)
        .template(tenant.as_str(), campaign.as_str(), template.as_str(), pinned)
        .await;
    match found {
        Ok(Some(t)) => json(&serde_json::json!({
            "campaign_id": campaign.as_str(), "template_id": template.as_str(),
            "version": t.version, "registered_at": t.registered_at,
            "subject": t.subject, "html": t.html, "text": t.text
        })),
        Ok(None) => err(
            StatusCode::NOT_FOUND,
            match q.version {
                Some(_) => "no such template, or that version is not kept",
                None => "no such template",
            },
        ),
        Err(e) => internal(e),
    }
}

pub(crate) async fn versions(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((campaign, template)): Path<(String, String)>,
) -> Response {
    let tenant = match tenant(&s, &headers, None).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let (campaign, template) = match ids(campaign, template) {
        Ok(ids) => ids,
        Err(m) => return err(StatusCode::BAD_REQUEST, &m),
    };
    let kept = s
        .store
        .for_tenant(&tenant)
        .template_versions(tenant.as_str(), campaign.as_str(), template.as_str())
        .await;
    match kept {
        Ok(v) if v.is_empty() => err(StatusCode::NOT_FOUND, "no such template"),
        Ok(v) => {
            let versions: Vec<_> = v
                .into_iter()
                .map(|v| {
                    let mut o = serde_json::json!({ "version": v.version, "registered_at": v.registered_at });
                    if let Some(at) = v.superseded_at {
                        o["superseded_at"] = at.into();
                    }
                    o
                })
                .collect();
            json(&serde_json::json!({
                "campaign_id": campaign.as_str(), "template_id": template.as_str(), "versions": versions
            }))
        }
        Err(e) => internal(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

    use super::*;

    fn upload(html: &str) -> Upload {
        Upload {
            campaign_id: "spring".into(),
            template_id: "welcome".into(),
            subject: "Hi {{ name }}".into(),
            html: Some(html.into()),
            text: None,
        }
    }

    #[test]
    fn a_template_that_does_not_compile_is_refused_with_its_part_and_line() {
        assert!(check(&upload("<p>{{ name }}</p>")).is_ok());
        match check(&upload("<p>\n{{ name }}\n{% if %}</p>")) {
            Err(Refused::Compile { part, line, .. }) => assert_eq!((part, line), ("html", Some(3))),
            _ => panic!("a syntax error on line 3 of the html"),
        }
        assert!(matches!(check(&Upload { html: None, ..upload("") }), Err(Refused::BadRequest(_))));
        let big = "x".repeat(MAX_TEMPLATE_BYTES + 1);
        assert!(matches!(check(&upload(&big)), Err(Refused::TooLarge("html"))));
        let bad_id = Upload { template_id: "no spaces".into(), ..upload("x") };
        assert!(matches!(check(&bad_id), Err(Refused::BadRequest(_))));
    }
}
