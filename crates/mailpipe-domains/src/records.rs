//! The DNS records a tenant publishes for a sending domain, and their zone
//! file lines. The platform's side (which SPF include, where DMARC reports
//! go, the bounce host) comes from `[domains]`.

use mailpipe_core::{DkimAlgorithm, Domain, Selector};

use crate::DomainSettings;

/// What a record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Dkim,
    Spf,
    Dmarc,
    ReturnPath,
}

/// One record to publish.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    pub purpose: Purpose,
    /// The owner name, without the trailing dot.
    pub name: String,
    /// `TXT` or `CNAME`.
    pub kind: &'static str,
    /// The record's data, unquoted.
    pub value: String,
}

impl Record {
    /// The record as a zone file line. TXT data longer than 255 bytes is
    /// split into several strings, as DNS requires (RFC 1035 §3.3).
    pub fn zone_line(&self) -> String {
        let data = match self.kind {
            "TXT" => txt_strings(&self.value),
            _ => format!("{}.", self.value.trim_end_matches('.')),
        };
        format!("{}. 3600 IN {} {data}", self.name, self.kind)
    }
}

fn txt_strings(value: &str) -> String {
    value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `<selector>._domainkey.<domain>`, where a DKIM key is published.
pub fn dkim_name(selector: &Selector, domain: &Domain) -> String {
    format!("{selector}._domainkey.{}", domain.as_str())
}

/// The DKIM key record's data.
pub fn dkim_value(algorithm: DkimAlgorithm, public_b64: &str) -> String {
    format!("v=DKIM1; k={}; p={public_b64}", algorithm.key_type())
}

/// The SPF mechanisms that authorise the platform's relays, if configured.
pub fn platform_spf(settings: &DomainSettings) -> Vec<String> {
    let mut m: Vec<String> = settings.spf_include.iter().map(|i| format!("include:{i}")).collect();
    m.extend(settings.spf_addresses.iter().cloned());
    m
}

/// Everything to publish for a domain signing with `selector`.
pub fn to_publish(
    domain: &Domain,
    selector: &Selector,
    algorithm: DkimAlgorithm,
    public_b64: &str,
    settings: &DomainSettings,
) -> Vec<Record> {
    let mut out = vec![Record {
        purpose: Purpose::Dkim,
        name: dkim_name(selector, domain),
        kind: "TXT",
        value: dkim_value(algorithm, public_b64),
    }];
    let spf = platform_spf(settings);
    if !spf.is_empty() {
        out.push(Record {
            purpose: Purpose::Spf,
            name: domain.as_str().to_owned(),
            kind: "TXT",
            value: format!("v=spf1 {} ~all", spf.join(" ")),
        });
    }
    let rua = settings.dmarc_rua.as_deref().map(|r| format!(" rua=mailto:{r};")).unwrap_or_default();
    out.push(Record {
        purpose: Purpose::Dmarc,
        name: format!("_dmarc.{}", domain.as_str()),
        kind: "TXT",
        value: format!("v=DMARC1; p=none;{rua} adkim=r; aspf=r"),
    });
    if let Some(host) = &settings.return_path {
        out.push(Record {
            purpose: Purpose::ReturnPath,
            name: format!("{}.{}", settings.return_path_label, domain.as_str()),
            kind: "CNAME",
            value: host.trim_end_matches('.').to_owned(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::settings;

    #[test]
    fn every_record_a_domain_needs_is_listed_and_long_txt_data_is_split() {
        let d = Domain::parse("news.acme.example").unwrap();
        let s = Selector::parse("mp1").unwrap();
        let long = "A".repeat(392);
        let records = to_publish(&d, &s, DkimAlgorithm::RsaSha256, &long, &settings());
        let purposes: Vec<Purpose> = records.iter().map(|r| r.purpose).collect();
        assert_eq!(purposes, [Purpose::Dkim, Purpose::Spf, Purpose::Dmarc, Purpose::ReturnPath]);
        assert_eq!(records[0].name, "mp1._domainkey.news.acme.example");
        let line = records[0].zone_line();
        assert!(
            line.starts_with("mp1._domainkey.news.acme.example. 3600 IN TXT \"v=DKIM1; k=rsa; p=AAA"),
            "{line}"
        );
        assert_eq!(line.matches('"').count(), 4, "two strings: {line}");
        assert_eq!(records[1].value, "v=spf1 include:_spf.mailpipe.test ~all");
        assert!(records[2].value.starts_with("v=DMARC1; p=none; rua=mailto:dmarc@mailpipe.test;"));
        assert_eq!(records[3].zone_line(), "bounces.news.acme.example. 3600 IN CNAME bounces.mailpipe.test.");
    }
}
