//! Return paths that come back to the platform: the envelope sender of a
//! send is `b-<tag>@<bounce domain>` ([`ReturnTag`]: a MAC over tenant and
//! job, stored with the job), so that every asynchronous bounce and
//! auto-reply reaches `mailpipe inbound` instead of the tenant's mailbox,
//! and maps back to its send. The `[bounces]` section.

use mailpipe_core::{Domain, EmailAddress};
use mailpipe_token::ReturnTag;

/// `[bounces]`: where return paths point, and how `mailpipe inbound`
/// listens for what comes back to them.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BounceSettings {
    /// The platform's bounce domain (its MX points at `mailpipe inbound`).
    /// Empty: no return paths; the envelope sender is the From address, and
    /// bounces after the relay accepted a message reach the tenant only.
    #[serde(default)]
    pub domain: String,
    /// A label under each sending domain instead (`<label>.<from domain>`,
    /// which the domain's owner points at the platform), so that the
    /// envelope sender aligns with From for SPF and DMARC. Empty: off.
    #[serde(default)]
    pub per_domain_label: String,
    /// Where `mailpipe inbound` listens (the bounce domain's MX, or a relay
    /// in front of it).
    pub listen: std::net::SocketAddr,
    /// The name it greets with.
    pub hostname: String,
    /// Also accepted: the feedback-loop address complaint reports come to
    /// (ARF). Empty: none.
    #[serde(default)]
    pub feedback_address: String,
    /// Larger messages are refused (552).
    pub max_message_kib: usize,
    /// Open SMTP sessions at most; more wait to be accepted.
    pub max_connections: usize,
    /// How long a client may take to send a command, and a whole message.
    pub command_timeout_secs: u64,
    pub data_timeout_secs: u64,
    /// STARTTLS: the certificate chain and its private key (PEM files).
    /// Both empty: not offered.
    #[serde(default)]
    pub tls_cert_file: String,
    #[serde(default)]
    pub tls_key_file: String,
    /// Soft bounces of one address that suppress it, within the window.
    pub soft_bounce_limit: u32,
    pub soft_bounce_window_days: u32,
}

impl BounceSettings {
    /// What is wrong with the receiver's limits, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, ok) in [
            ("max_message_kib", (1..=(crate::MAX_MESSAGE_BYTES >> 10)).contains(&self.max_message_kib)),
            ("max_connections", (1..=10_000).contains(&self.max_connections)),
            ("command_timeout_secs", (1..=3600).contains(&self.command_timeout_secs)),
            ("data_timeout_secs", (1..=3600).contains(&self.data_timeout_secs)),
            ("soft_bounce_limit", (1..=1000).contains(&self.soft_bounce_limit)),
            ("soft_bounce_window_days", (1..=365).contains(&self.soft_bounce_window_days)),
            ("hostname", !self.hostname.trim().is_empty()),
        ] {
            if !ok {
                out.push(format!("bounces.{key}: out of range"));
            }
        }
        if self.tls_cert_file.trim().is_empty() != self.tls_key_file.trim().is_empty() {
            out.push("bounces.tls_cert_file, tls_key_file: set both for STARTTLS, or neither".into());
        }
        let fbl = self.feedback_address.trim();
        if !fbl.is_empty() && EmailAddress::parse(fbl).is_err() {
            out.push(format!("bounces.feedback_address: {fbl:?} is not an address"));
        }
        out
    }

    /// The feedback-loop address, if one is set (checked at load).
    pub fn feedback_address(&self) -> Option<EmailAddress> {
        EmailAddress::parse(self.feedback_address.trim()).ok()
    }

    /// The settings, parsed; each error names its key.
    pub fn return_paths(&self) -> Result<Option<ReturnPaths>, String> {
        let domain = match self.domain.trim() {
            "" => None,
            d => Some(Domain::parse(d).map_err(|e| format!("bounces.domain: {e}"))?),
        };
        let label = match self.per_domain_label.trim() {
            "" => None,
            l if l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-') =>
            {
                Some(l.to_owned())
            }
            l => return Err(format!("bounces.per_domain_label: {l:?} is not one DNS label (a-z, 0-9, -)")),
        };
        match (domain, label) {
            (None, None) => Ok(None),
            (None, Some(_)) => {
                Err("bounces.per_domain_label: needs bounces.domain too (for mail without a sending domain's own)".into())
            }
            (Some(domain), label) => Ok(Some(ReturnPaths { domain, label })),
        }
    }
}

/// Where the return paths of sends point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnPaths {
    domain: Domain,
    label: Option<String>,
}

impl ReturnPaths {
    /// The envelope sender of a send whose From domain is `from_domain`.
    pub fn envelope_from(&self, tag: &ReturnTag, from_domain: &str) -> Option<EmailAddress> {
        let domain = match &self.label {
            Some(l) => format!("{l}.{from_domain}"),
            None => self.domain.as_str().to_owned(),
        };
        EmailAddress::parse(&format!("{}@{domain}", tag.local_part())).ok()
    }

    /// The platform's bounce domain.
    pub fn domain(&self) -> &str {
        self.domain.as_str()
    }

    /// Whether mail to `domain` comes back to the platform: the bounce
    /// domain, or (with a label) `<label>.<d>` for a `d` that
    /// `is_sending_domain` says the platform sends as.
    pub fn takes(&self, domain: &str, is_sending_domain: impl Fn(&str) -> bool) -> bool {
        let domain = domain.to_ascii_lowercase();
        if domain == self.domain.as_str() {
            return true;
        }
        match &self.label {
            Some(l) => domain
                .strip_prefix(l.as_str())
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(is_sending_domain),
            None => false,
        }
    }

    /// The tag a return-path address carries, if it is one of ours in shape.
    pub fn tag_of(&self, rcpt: &EmailAddress, is_sending_domain: impl Fn(&str) -> bool) -> Option<ReturnTag> {
        if !self.takes(rcpt.domain(), is_sending_domain) {
            return None;
        }
        ReturnTag::from_local_part(rcpt.local_part())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(domain: &str, label: &str) -> BounceSettings {
        BounceSettings {
            domain: domain.into(),
            per_domain_label: label.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            hostname: "mx.test".into(),
            feedback_address: String::new(),
            max_message_kib: 1024,
            max_connections: 10,
            command_timeout_secs: 60,
            data_timeout_secs: 300,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            soft_bounce_limit: 3,
            soft_bounce_window_days: 7,
        }
    }

    #[test]
    fn settings_parse_and_name_their_keys() {
        let half_tls = BounceSettings { tls_cert_file: "cert.pem".into(), ..settings("", "") };
        assert!(half_tls.problems().iter().any(|p| p.contains("tls_key_file")), "{:?}", half_tls.problems());
        assert_eq!(settings("", "").return_paths(), Ok(None));
        assert!(settings("bounces.example", "").return_paths().unwrap().is_some());
        assert!(settings("not a domain", "").return_paths().unwrap_err().starts_with("bounces.domain"));
        assert!(
            settings("b.example", "Bad_Label")
                .return_paths()
                .unwrap_err()
                .starts_with("bounces.per_domain_label")
        );
        assert!(settings("", "rp").return_paths().unwrap_err().contains("needs bounces.domain"));
    }

    #[test]
    fn return_paths_point_at_the_platform_and_come_back_to_it() {
        let tag = ReturnTag::from_local_part("b-abcdefghijklmnop").unwrap();
        let shared = settings("bounces.platform.example", "").return_paths().unwrap().unwrap();
        let from = shared.envelope_from(&tag, "acme.example").unwrap();
        assert_eq!(from.as_str(), "b-abcdefghijklmnop@bounces.platform.example");
        assert_eq!(shared.tag_of(&from, |_| false), Some(tag.clone()));
        let elsewhere = EmailAddress::parse("b-abcdefghijklmnop@other.example").unwrap();
        assert_eq!(shared.tag_of(&elsewhere, |_| true), None, "not our domain");

        let aligned = settings("bounces.platform.example", "rp").return_paths().unwrap().unwrap();
        let from = aligned.envelope_from(&tag, "acme.example").unwrap();
        assert_eq!(from.as_str(), "b-abcdefghijklmnop@rp.acme.example");
        assert_eq!(aligned.tag_of(&from, |d| d == "acme.example"), Some(tag));
        assert_eq!(aligned.tag_of(&from, |_| false), None, "only under a domain the platform sends as");
        let not_a_tag = EmailAddress::parse("postmaster@bounces.platform.example").unwrap();
        assert_eq!(aligned.tag_of(&not_a_tag, |_| true), None);
    }
}
