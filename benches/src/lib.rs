//! Fixtures shared by the benchmarks: a realistic job and a keyring.

use std::sync::Arc;

use mailpipe_core::SendJob;
use mailpipe_render::{Composer, TemplateLimits, TrackingLinks};
use mailpipe_token::{Keyring, RecipientHasher, SigningKey};

pub fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new(vec![SigningKey { id: 1, secret: vec![7u8; 32].into() }], 1).expect("keyring"))
}

pub fn composer() -> Composer {
    Composer::new(
        keyring(),
        RecipientHasher::new(&vec![9u8; 32].into()).expect("hasher"),
        TrackingLinks { base_url: "https://t.example.com".into(), unsubscribe_mailto: None },
        TemplateLimits::default(),
    )
}

/// About 10 KB of personalised HTML with 5 tracked links, as in issue 6.
pub fn ten_kb_job(i: usize) -> SendJob {
    let mut html = String::from("<html><body><h1>Hello {{ first_name }}</h1>");
    for l in 0..5 {
        html.push_str(&format!(
            "<p><a href=\"https://shop.example.com/product/{l}?ref={{{{ ref }}}}&amp;u={{{{ first_name | lower }}}}\">Product {l}</a></p>"
        ));
    }
    while html.len() < 10 * 1024 {
        html.push_str("<p>Spring is here, {{ first_name }}, and our outdoor range is ready for it. Tents, boots and lamps, all on sale this week.</p>");
    }
    html.push_str("<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></body></html>");
    let v = serde_json::json!({
        "job_id": format!("job-{i}"), "tenant_id": "acme", "campaign_id": "spring",
        "category": "marketing",
        "from": {"email": "news@acme.example", "name": "Acme"},
        "to": {"email": format!("user{i}@example.com"), "name": "Jane"},
        "subject": "{{ first_name }}, spring deals",
        "html": html,
        "vars": {"first_name": "Jane", "ref": "spring"}
    });
    SendJob::from_json(&serde_json::to_vec(&v).expect("json")).expect("valid job")
}
