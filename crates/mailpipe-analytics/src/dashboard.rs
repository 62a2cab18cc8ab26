//! The campaign dashboard: one server-rendered page, charts as inline SVG,
//! no scripts. Every figure is also printed as text (with an `id`), so the
//! page reads without the charts and tests can compare it to the API.

use std::fmt::Write;

use mailpipe_core::TenantId;
use mailpipe_store::{CampaignStats, Overview, Progress};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Horizontal bars, one per (label, value, colour).
fn bars(title: &str, rows: &[(String, i64, &str)]) -> String {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let (w, row_h) = (560.0, 26.0);
    let h = row_h * rows.len().max(1) as f64 + 8.0;
    let mut s = format!(
        r#"<figure><figcaption>{}</figcaption><svg role="img" aria-label="{}" width="{w}" height="{h}" viewBox="0 0 {w} {h}">"#,
        esc(title),
        esc(title)
    );
    for (i, (label, v, colour)) in rows.iter().enumerate() {
        let y = 4.0 + i as f64 * row_h;
        let bw = (*v as f64 / max as f64) * 330.0;
        let _ = write!(
            s,
            r#"<text x="0" y="{ty}" font-size="13">{label}</text><rect x="170" y="{y}" width="{bw:.1}" height="18" fill="{colour}"/><text x="{tx:.1}" y="{ty}" font-size="13">{v}</text>"#,
            ty = y + 14.0,
            label = esc(&truncate(label, 24)),
            tx = 176.0 + bw,
        );
    }
    s.push_str("</svg></figure>");
    s
}

/// Opens and clicks per hour, as paired columns.
fn timeline(st: &CampaignStats) -> String {
    let hours: Vec<(&i64, i64, i64)> = st
        .hourly
        .iter()
        .map(|(h, m)| (h, m.get("opens").copied().unwrap_or(0), m.get("clicks").copied().unwrap_or(0)))
        .filter(|(_, o, c)| o + c > 0)
        .collect();
    let max = hours.iter().map(|(_, o, c)| (*o).max(*c)).max().unwrap_or(0).max(1);
    let (w, h) = (560.0, 180.0);
    let col = if hours.is_empty() { 0.0 } else { ((w - 20.0) / hours.len() as f64).min(60.0) };
    let mut s = format!(
        r##"<figure><figcaption>Opens and clicks per hour (UTC)</figcaption><svg role="img" aria-label="opens and clicks per hour" width="{w}" height="{h}" viewBox="0 0 {w} {h}"><line x1="10" y1="150" x2="{w}" y2="150" stroke="#999"/>"##
    );
    for (i, (hour, o, c)) in hours.iter().enumerate() {
        let x = 10.0 + i as f64 * col;
        let oh = *o as f64 / max as f64 * 130.0;
        let ch = *c as f64 / max as f64 * 130.0;
        let label = (**hour / 3_600_000) % 24;
        let _ = write!(
            s,
            r##"<rect x="{x:.1}" y="{oy:.1}" width="{bw:.1}" height="{oh:.1}" fill="#4e79a7"/><rect x="{cx:.1}" y="{cy:.1}" width="{bw:.1}" height="{ch:.1}" fill="#f28e2b"/><text x="{x:.1}" y="166" font-size="11">{label:02}h</text>"##,
            oy = 150.0 - oh,
            cx = x + col * 0.45,
            cy = 150.0 - ch,
            bw = col * 0.4,
        );
    }
    s.push_str(r##"<rect x="380" y="4" width="10" height="10" fill="#4e79a7"/><text x="394" y="13" font-size="11">opens</text><rect x="440" y="4" width="10" height="10" fill="#f28e2b"/><text x="454" y="13" font-size="11">clicks</text></svg></figure>"##);
    s
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

fn progress_line(p: &Progress) -> String {
    if p.accepted == 0 {
        // Counted events but no ledger rows: the jobs are not taken in yet,
        // or retention has purged their ledger rows.
        "No jobs of this campaign are in the send ledger.".to_owned()
    } else if p.complete {
        format!("Complete: all {} jobs have their final outcome.", p.accepted)
    } else {
        format!("In progress: {} of {} jobs still await their final outcome.", p.outstanding, p.accepted)
    }
}

pub fn page(tenant: &TenantId, st: &CampaignStats) -> String {
    let m = |k: &str| st.totals.get(k).copied().unwrap_or(0);
    let funnel = [
        // Every delivery attempt that ended: delivered, bounced or failed.
        ("attempted".to_owned(), m("sent") + m("bounced") + m("failed"), "#4e79a7"),
        ("delivered".to_owned(), m("sent"), "#59a14f"),
        ("opened (unique)".to_owned(), m("unique_opens"), "#edc948"),
        ("clicked (unique)".to_owned(), m("unique_clicks"), "#f28e2b"),
    ];
    let verdicts = [
        ("opens: human".to_owned(), m("opens_human"), "#59a14f"),
        ("opens: machine".to_owned(), m("opens_machine"), "#bab0ac"),
        ("opens: unknown".to_owned(), m("opens_unknown"), "#d4d4d4"),
        ("clicks: human".to_owned(), m("clicks_human"), "#59a14f"),
        ("clicks: machine".to_owned(), m("clicks_machine"), "#bab0ac"),
        ("clicks: unknown".to_owned(), m("clicks_unknown"), "#d4d4d4"),
    ];
    let providers: Vec<(String, i64, &str)> = st
        .totals
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("provider:")
                .and_then(|r| r.strip_suffix(":sent"))
                .map(|p| (p.to_owned(), *v, "#76b7b2"))
        })
        .collect();
    let links: Vec<(String, i64, &str)> =
        st.links.iter().map(|(u, c, _)| (u.clone(), *c, "#f28e2b")).collect();
    let mut figures = String::new();
    for k in [
        "sent",
        "deferred",
        "bounced",
        "suppressed",
        "dead_lettered",
        "failed",
        "opens",
        "unique_opens",
        "opens_human",
        "clicks",
        "unique_clicks",
        "clicks_human",
        "unsubscribes",
        "complaints",
    ] {
        let _ = write!(figures, r#"<tr><th>{k}</th><td id="m-{k}">{}</td></tr>"#, m(k));
    }
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{c} · mailpipe</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1240px}}main{{display:grid;grid-template-columns:1fr 1fr;gap:16px}}figure{{margin:0;padding:12px;border:1px solid #ddd;border-radius:6px}}figcaption{{font-weight:600;margin-bottom:8px}}table{{border-collapse:collapse}}th,td{{text-align:left;padding:2px 12px 2px 0}}td{{font-variant-numeric:tabular-nums}}</style></head>
<body><nav><a href="/dashboard/overview">Overview</a> · <a href="/dashboard/domains">Sending domains</a></nav><h1>Campaign {c}</h1><p id="progress">{progress}</p><p>Tenant {t}. Raw figures count every event; human figures count only those with a human verdict.</p>
<main>{funnel}{timeline}{verdicts}{providers}{links}<figure><figcaption>All figures</figcaption><table>{figures}</table></figure></main></body></html>
"#,
        c = esc(&st.campaign_id),
        t = esc(tenant.as_str()),
        progress = progress_line(&st.progress),
        funnel = bars("Funnel", &funnel),
        timeline = timeline(st),
        verdicts = bars("Human and machine", &verdicts),
        providers = bars("Sent by provider group", &providers),
        links = bars("Top links (clicks)", &links),
    )
}

/// A rate as people read it, and its count: `12.5% (125)`; `–` with
/// nothing to divide by.
fn percent(rate: Option<f64>, count: i64) -> String {
    match rate {
        Some(r) => format!("{:.1}% ({count})", r * 100.0),
        None => "–".to_owned(),
    }
}

/// `YYYY-MM-DD` of a UTC day given as unix ms.
fn day(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// The tenant overview (`/dashboard/overview`): its streams and their
/// breaker state, each campaign's rates (raw beside human), and the daily
/// volume per organisational From domain. Every figure has an `id`.
pub fn overview(o: &Overview) -> String {
    let t = esc(&o.tenant_id);
    let mut streams = String::new();
    if o.streams.iter().all(|s| s.state == "active") {
        streams.push_str(r#"<p id="streams-healthy">Every stream is active: the reputation breaker has paused nothing.</p>"#);
    }
    if !o.streams.is_empty() {
        streams.push_str("<table><tr><th>Stream</th><th>State</th><th>Why</th><th>Since</th></tr>");
        for s in &o.streams {
            let (name, id) = match (&s.domain, &s.provider) {
                (Some(d), _) => (format!("sent as {d}"), d.clone()),
                (None, Some(p)) => (format!("to {p}'s users"), format!("to-{p}")),
                (None, None) => ("all mail".to_owned(), "all".to_owned()),
            };
            let _ = write!(
                streams,
                r#"<tr><td>{}</td><td id="stream-{}" class="{}">{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&name),
                esc(&id),
                esc(&s.state),
                esc(&s.state),
                esc(s.reason.as_deref().unwrap_or("")),
                day(s.changed_at),
            );
        }
        streams.push_str("</table>");
    }
    let mut campaigns = String::from(
        "<table><tr><th>Campaign</th><th>Delivered</th><th>Bounces</th><th>Complaints</th>\
         <th>Opens: all</th><th>Opens: human</th><th>Clicks: all</th><th>Clicks: human</th><th>Unsubscribes</th></tr>",
    );
    for c in &o.campaigns {
        let id = esc(&c.campaign_id);
        let cell = |k: &str, v: String| format!(r#"<td id="c-{id}-{k}">{}</td>"#, esc(&v));
        let _ = write!(
            campaigns,
            r#"<tr><td><a href="/dashboard/campaigns/{id}">{id}</a></td>{}{}{}{}{}{}{}{}</tr>"#,
            cell("delivered", c.delivered.to_string()),
            cell("bounce_rate", percent(c.bounce_rate, c.bounced)),
            cell("complaint_rate", percent(c.complaint_rate, c.complaints)),
            cell("open_rate", percent(c.open_rate, c.unique_opens)),
            cell("open_rate_human", percent(c.open_rate_human, c.unique_opens_human)),
            cell("click_rate", percent(c.click_rate, c.unique_clicks)),
            cell("click_rate_human", percent(c.click_rate_human, c.unique_clicks_human)),
            cell("unsubscribe_rate", percent(c.unsubscribe_rate, c.unsubscribes)),
        );
    }
    campaigns.push_str("</table>");
    let mut by_domain: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    let mut volume = String::from("<table><tr><th>Day (UTC)</th><th>From domain</th><th>Sent</th></tr>");
    for v in &o.daily_volume {
        *by_domain.entry(&v.org_domain).or_default() += v.sent;
        let _ = write!(
            volume,
            r#"<tr><td>{d}</td><td>{o}</td><td id="v-{d}-{o}">{n}</td></tr>"#,
            d = day(v.day),
            o = esc(&v.org_domain),
            n = v.sent
        );
    }
    volume.push_str("</table>");
    let totals: Vec<(String, i64, &str)> =
        by_domain.into_iter().map(|(d, n)| (d.to_owned(), n, "#4e79a7")).collect();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{t} · mailpipe</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1240px}}section{{margin-bottom:24px}}figure{{margin:0;padding:12px;border:1px solid #ddd;border-radius:6px}}figcaption{{font-weight:600;margin-bottom:8px}}table{{border-collapse:collapse}}th,td{{text-align:left;padding:2px 12px 2px 0}}td{{font-variant-numeric:tabular-nums}}.paused{{color:#cf222e;font-weight:600}}.active{{color:#1a7f37}}</style></head>
<body><nav><a href="/dashboard/overview">Overview</a> · <a href="/dashboard/domains">Sending domains</a></nav><h1>{t} at a glance</h1>
<section><h2>Streams</h2><p>The reputation breaker pauses a stream's marketing when its complaint, hard-bounce or unknown-user rate passes its limit; transactional mail goes on. Ask the platform's operator to resume it once the cause is fixed.</p>{streams}</section>
<section><h2>Campaigns</h2><p>Rates are over delivered messages (bounces: over delivery attempts), each with its count. "All" counts every recipient with an open or click; "human" only those with a human's, since privacy proxies and link scanners open and click too.</p>{campaigns}</section>
<section><h2>Daily volume per From domain</h2><p>By organisational domain, as mailbox providers count bulk senders (Gmail: 5,000 a day makes one).</p>{chart}{volume}</section>
</body></html>
"#,
        chart = bars("Sent per From domain, these days", &totals),
    )
}
