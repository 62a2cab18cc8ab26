//! Build-then-parse: every message we build is read back with an independent
//! parser (mail-parser) and checked header by header.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::sync::Arc;

use mail_parser::{MessageParser, MimeHeaders};
use mailpipe_core::SendJob;
use mailpipe_render::{CompiledTemplates, Composer, TemplateLimits, TemplateSet, TrackingLinks};
use mailpipe_token::{Action, Keyring, RecipientHasher, SigningKey};
use time::macros::datetime;

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new(vec![SigningKey { id: 1, secret: vec![3u8; 32].into() }], 1).unwrap())
}

fn hasher() -> RecipientHasher {
    RecipientHasher::new(&vec![4u8; 32].into()).unwrap()
}

fn composer() -> Composer {
    Composer::new(
        keyring(),
        hasher(),
        TrackingLinks {
            base_url: "https://t.example/".into(),
            unsubscribe_mailto: Some("unsub@t.example".into()),
        },
        TemplateLimits::default(),
    )
}

fn job(category: &str) -> SendJob {
    SendJob::from_json(
        serde_json::json!({
            "job_id": "job-1", "tenant_id": "acme", "campaign_id": "spring",
            "category": category,
            "from": {"email": "news@acme.example", "name": "Acme News"},
            "to": {"email": "jane@example.com", "name": "Jane Doe"},
            "subject": "Spring deals for {{ first }}",
            "html": "<html><body><p>Hi {{ first }}</p><a href=\"https://acme.example/sale\">Sale</a> <a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></body></html>",
            "vars": {"first": "Jane"},
            "headers": {"X-Campaign-Ref": "Q2 ünïcode"}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

#[test]
fn marketing_message_parses_back_with_every_header() {
    let c = composer();
    let out = c.compose(&job("marketing"), None, datetime!(2026-11-29 12:00 UTC), None).unwrap();
    assert_eq!(out.tracked_links, 1);
    let msg = MessageParser::default().parse(&out.bytes).unwrap();

    assert_eq!(msg.subject(), Some("Spring deals for Jane"));
    assert_eq!(msg.message_id(), Some(out.message_id.as_str()));
    assert!(out.message_id.ends_with("@acme.example"));
    assert_eq!(msg.date().unwrap().to_timestamp(), datetime!(2026-11-29 12:00 UTC).unix_timestamp());
    let from = msg.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some("news@acme.example"));
    assert_eq!(from.name(), Some("Acme News"));
    assert_eq!(msg.to().unwrap().first().unwrap().address(), Some("jane@example.com"));
    assert_eq!(msg.header_raw("Feedback-ID").map(str::trim), Some("spring:acme:marketing:mailpipe"));
    // tenant/job and a tag that checks out under the platform's key.
    let reference = msg.header_raw("X-Mailpipe-Ref").unwrap().trim();
    assert!(reference.starts_with("acme/job-1/"), "{reference}");
    let (t, j) = hasher().references().verify(reference).unwrap();
    assert_eq!((t.as_str(), j.as_str()), ("acme", "job-1"));
    assert_eq!(msg.header_raw("List-Unsubscribe-Post").map(str::trim), Some("List-Unsubscribe=One-Click"));
    // Non-ASCII custom header values are RFC 2047 encoded; decode them the way
    // a mail client would, by parsing the raw value as a Subject.
    let raw = msg.header_raw("X-Campaign-Ref").unwrap().trim();
    assert!(raw.starts_with("=?utf-8?"), "{raw}");
    let probe = format!("Subject: {raw}\r\n\r\n");
    assert_eq!(MessageParser::default().parse(probe.as_bytes()).unwrap().subject(), Some("Q2 ünïcode"));

    // List-Unsubscribe carries the https one-click URL and the mailto.
    let lu = msg.header_raw("List-Unsubscribe").unwrap();
    assert!(lu.contains("<https://t.example/u/"), "{lu}");
    assert!(lu.contains("<mailto:unsub@t.example?subject=unsubscribe>"), "{lu}");

    // The unsubscribe token in the header verifies and names the recipient.
    let token = lu.split("/u/").nth(1).unwrap().split('>').next().unwrap();
    let claims = keyring().verify(token).unwrap();
    let want = hasher().hash("jane@example.com");
    assert_eq!(claims.action, Action::Unsubscribe { recipient: want });

    // Bodies: the html link is tracked, the unsubscribe link is not rewritten,
    // the pixel is there, and a text part was derived.
    let html = msg.body_html(0).unwrap();
    assert!(!html.contains("https://acme.example/sale"));
    assert!(html.contains("https://t.example/c/"));
    assert!(html.contains("https://t.example/u/"));
    assert!(html.contains("https://t.example/o/"));
    let text = msg.body_text(0).unwrap();
    assert!(text.contains("Hi Jane"), "{text}");
    assert!(text.contains("Sale (https://t.example/c/"), "{text}");

    // The click token binds the exact target.
    let click = html.split("https://t.example/c/").nth(1).unwrap().split('"').next().unwrap();
    assert_eq!(
        keyring().verify(click).unwrap().action,
        Action::Click { url: "https://acme.example/sale".into() }
    );
}

#[test]
fn transactional_mail_has_no_list_unsubscribe() {
    let out = composer().compose(&job("transactional"), None, datetime!(2026-11-29 12:00 UTC), None).unwrap();
    let msg = MessageParser::default().parse(&out.bytes).unwrap();
    assert!(msg.header_raw("List-Unsubscribe").is_none());
    assert!(msg.header_raw("List-Unsubscribe-Post").is_none());
    assert!(msg.header_raw("Feedback-ID").unwrap().contains(":transactional:"));
}

#[test]
fn message_ids_are_deterministic_per_job() {
    let c = composer();
    let a = c.compose(&job("marketing"), None, datetime!(2026-11-29 12:00 UTC), None).unwrap();
    let b = c.compose(&job("marketing"), None, datetime!(2026-11-29 13:00 UTC), None).unwrap();
    assert_eq!(a.message_id, b.message_id);
}

#[test]
fn registered_templates_are_used_and_required() {
    let mut j = job("marketing");
    j.content = mailpipe_core::Content::Registered {
        id: mailpipe_core::TemplateId::parse("welcome").unwrap(),
        version: None,
    };
    let c = composer();
    let err = c.compose(&j, None, datetime!(2026-11-29 12:00 UTC), None).unwrap_err();
    assert_eq!(err.reason(), "unknown_template");
    let set = TemplateSet {
        subject: "Welcome {{ first }}".into(),
        html: None,
        text: Some("Hello {{ first }}, see https://acme.example/x".into()),
    };
    let compiled = CompiledTemplates::compile(&set, &TemplateLimits::default()).unwrap();
    let out = c.compose(&j, Some(&compiled), datetime!(2026-11-29 12:00 UTC), None).unwrap();
    let msg = MessageParser::default().parse(&out.bytes).unwrap();
    assert_eq!(msg.subject(), Some("Welcome Jane"));
    let ct = msg.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("text", Some("plain")), "text-only job, text-only message");
    let text = msg.body_text(0).unwrap();
    assert!(text.starts_with("Hello Jane, see https://t.example/c/"), "{text}");
}

#[test]
fn a_subject_that_renders_a_newline_is_refused() {
    let mut j = job("marketing");
    j.vars.insert("first".into(), serde_json::json!("x\r\nBcc: victim@example.com"));
    let err = composer().compose(&j, None, datetime!(2026-11-29 12:00 UTC), None).unwrap_err();
    assert_eq!(err.reason(), "header_injection");
}

#[test]
fn a_message_of_more_links_than_the_limit_is_refused_and_one_within_it_is_tracked() {
    let links = |n: usize| -> String {
        (0..n).map(|i| format!("<a href=\"https://acme.example/{i}\">x</a>")).collect()
    };
    let with = |html: String| {
        let mut j = job("marketing");
        j.content = mailpipe_core::Content::Inline { subject: "s".into(), html: Some(html), text: None };
        j
    };
    let c = composer();
    let out = c.compose(&with(links(900)), None, datetime!(2026-11-29 12:00 UTC), None).unwrap();
    assert_eq!(out.tracked_links, 900);
    let err = c.compose(&with(links(5000)), None, datetime!(2026-11-29 12:00 UTC), None).unwrap_err();
    assert_eq!(err.reason(), "too_large", "{err}");
    assert!(err.to_string().contains("links"), "{err}");
}
