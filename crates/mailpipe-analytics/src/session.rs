//! Signing in to the dashboard without putting the API key in a URL (where
//! it would land in browser history, proxy logs and `Referer` headers): a
//! login form posts the key once, and the browser keeps it in an
//! `HttpOnly`, `SameSite=Strict` cookie scoped to `/dashboard`, which page
//! scripts cannot read and other sites' requests do not carry. Every page
//! looks the key up again, so a revoked key stops working at once.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use mailpipe_core::TenantId;
use serde::Deserialize;

use crate::api::{ApiState, tenant};

/// The cookie that holds the key.
pub(crate) const COOKIE: &str = "mailpipe_key";
/// How long a sign-in lasts.
const MAX_AGE_SECS: u32 = 8 * 3600;

/// The key a browser sent in the dashboard's cookie, if any.
pub(crate) fn cookie_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The tenant of a dashboard page's caller (a bearer key, or the sign-in
/// cookie); without one, the sign-in form, which returns to `path`.
pub(crate) async fn dashboard_tenant(
    s: &ApiState,
    headers: &HeaderMap,
    path: &str,
) -> Result<TenantId, Response> {
    match tenant(s, headers, cookie_key(headers)).await {
        Ok(t) => Ok(t),
        Err(r) if r.status() == StatusCode::UNAUTHORIZED => {
            let why = cookie_key(headers).map(|_| "That key is unknown or was revoked.");
            Err(login_page(path, why))
        }
        Err(r) => Err(r),
    }
}

/// Where a sign-in may return to: a dashboard page, never elsewhere.
fn return_path(next: &str) -> &str {
    let safe = next.starts_with("/dashboard/")
        && !next.contains("//")
        && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\' && b != b'"' && b != b'<' && b != b'>');
    if safe { next } else { "/dashboard/overview" }
}

fn login_page(next: &str, message: Option<&str>) -> Response {
    let message = message.map(|m| format!("<p class=error>{m}</p>")).unwrap_or_default();
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>Sign in · mailpipe</title>\
         <style>body{{font-family:sans-serif;margin:2em}}.error{{color:#cf222e}}input{{width:32em}}</style></head>\
         <body><h1>Sign in</h1>{message}\
         <form method=post action=/dashboard/login>\
         <p><label>API key <input name=key type=password autocomplete=off required></label></p>\
         <input type=hidden name=next value=\"{next}\">\
         <p><button type=submit>Sign in</button></p></form></body></html>",
        next = return_path(next),
    );
    (StatusCode::UNAUTHORIZED, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    key: String,
    #[serde(default)]
    next: String,
}

/// Whether a form post comes from a page of this site: a browser says
/// where a request comes from (`Sec-Fetch-Site`, `Origin`); another site's
/// page must not sign a visitor in (to the attacker's tenant) or out.
/// Clients that are not browsers send neither, and are let through.
fn same_site(headers: &HeaderMap) -> bool {
    let header = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (header("origin"), header("host")) {
        (Some(origin), Some(host)) => origin.split_once("://").is_some_and(|(_, h)| h == host),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

fn cross_site() -> Response {
    (StatusCode::FORBIDDEN, [(header::CACHE_CONTROL, "no-store")], "cross-site form posts are refused\n")
        .into_response()
}

/// `POST /dashboard/login`: a known key sets the cookie and returns to the
/// page asked for; any other gets the form again, 401.
pub(crate) async fn login(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !same_site(&headers) {
        return cross_site();
    }
    let key = f.key.trim();
    // A key is printable ASCII; anything else could not be a cookie value.
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b',') {
        return login_page(&f.next, Some("That is not an API key."));
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}")) {
        headers.insert(header::AUTHORIZATION, v);
    }
    match tenant(&s, &headers, None).await {
        Ok(_) => {
            let secure = if s.secure_cookie { "; Secure" } else { "" };
            let cookie = format!(
                "{COOKIE}={key}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={MAX_AGE_SECS}{secure}"
            );
            let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, return_path(&f.next))]).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(r) if r.status() == StatusCode::UNAUTHORIZED => {
            login_page(&f.next, Some("That key is unknown or was revoked."))
        }
        Err(r) => r,
    }
}

/// `POST /dashboard/logout`: forgets the cookie.
pub(crate) async fn logout(headers: HeaderMap) -> Response {
    if !same_site(&headers) {
        return cross_site();
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/dashboard/login"),
            (header::SET_COOKIE, "mailpipe_key=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0"),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response()
}

/// `GET /dashboard/login`: the form.
pub(crate) async fn form() -> Response {
    login_page("/dashboard/overview", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_a_sign_in_returns_only_to_the_dashboard() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; mailpipe_key=mp_abc ; b=2"));
        assert_eq!(cookie_key(&h), Some("mp_abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("mailpipe_key="));
        assert_eq!(cookie_key(&h), None);
        assert_eq!(return_path("/dashboard/campaigns/spring"), "/dashboard/campaigns/spring");
        for hostile in [
            "https://evil.example/",
            "//evil.example",
            "/dashboard//evil",
            "/dashboard/\"><script>",
            "/api/v1/x",
        ] {
            assert_eq!(return_path(hostile), "/dashboard/overview", "{hostile}");
        }
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_site(&headers(&[])), "curl and other non-browsers");
        assert!(same_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(same_site(&headers(&[("origin", "https://api.example:8091"), ("host", "api.example:8091")])));
        assert!(!same_site(&headers(&[("sec-fetch-site", "cross-site"), ("origin", "https://api.example")])));
        assert!(!same_site(&headers(&[("origin", "https://evil.example"), ("host", "api.example")])));
        assert!(!same_site(&headers(&[("origin", "null"), ("host", "api.example")])));
    }
}
