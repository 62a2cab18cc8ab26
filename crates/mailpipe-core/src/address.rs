//! Email addresses and domains, parsed once at the edge.
//!
//! Domains are stored in their ASCII (punycode) form, lower-cased, so that
//! `bücher.example` and `xn--bcher-kva.example` are the same key for rate
//! limits and suppression. A local part may be UTF-8; such an address needs
//! SMTPUTF8 from the server, which [`EmailAddress::needs_smtputf8`] reports.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is longer than 254 octets")]
    TooLong,
    #[error("address contains a control character (CR, LF, NUL, ...)")]
    ControlChar,
    #[error("address has no '@'")]
    NoAt,
    #[error("local part is empty or longer than 64 octets")]
    BadLocalLength,
    #[error("local part contains {0:?}")]
    BadLocalChar(char),
    #[error("local part has an empty dot-separated atom")]
    EmptyAtom,
    #[error("domain is invalid: {0}")]
    BadDomain(String),
}

/// A DNS domain in lower-case ASCII (IDNs as punycode).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

impl Domain {
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        if input.chars().any(char::is_control) {
            return Err(AddressError::ControlChar);
        }
        let ascii = idna::domain_to_ascii_strict(input.trim_end_matches('.'))
            .map_err(|e| AddressError::BadDomain(format!("{input:?}: {e}")))?;
        if ascii.is_empty() || ascii.len() > 253 {
            return Err(AddressError::BadDomain(format!("{input:?}: bad length")));
        }
        let labels: Vec<&str> = ascii.split('.').collect();
        if labels.len() < 2 {
            return Err(AddressError::BadDomain(format!("{input:?}: needs a dot")));
        }
        for l in &labels {
            let ok = !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return Err(AddressError::BadDomain(format!("{input:?}: bad label {l:?}")));
            }
        }
        Ok(Self(ascii))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The organisational domain (RFC 7489 §3.2: the public suffix plus one
    /// label, by the Public Suffix List): `news.acme.co.uk` → `acme.co.uk`.
    /// Mailbox providers judge bulk senders by it. A name that is itself a
    /// public suffix, or under none known, is its own.
    pub fn organizational(&self) -> &str {
        organizational(&self.0)
    }
}

/// [`Domain::organizational`] of an already-normalised (lowercase ASCII)
/// domain name.
pub fn organizational(domain: &str) -> &str {
    match psl::domain_str(domain) {
        Some(org) => org,
        None => domain,
    }
}

impl TryFrom<String> for Domain {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<Domain> for String {
    fn from(d: Domain) -> String {
        d.0
    }
}
impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain({})", self.0)
    }
}

/// A mailbox address, `local@domain`, with the domain normalised.
///
/// `Debug` and [`EmailAddress::redacted`] hide the local part, so an address
/// that slips into a log line at info level does not identify a person.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress {
    full: String,
    at: usize,
}

const LOCAL_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

impl EmailAddress {
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.chars().any(char::is_control) {
            return Err(AddressError::ControlChar);
        }
        let at = s.rfind('@').ok_or(AddressError::NoAt)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.is_empty() || local.len() > 64 {
            return Err(AddressError::BadLocalLength);
        }
        // Dot-atom only (RFC 5321 4.1.2), extended to UTF-8 by RFC 6531.
        // Quoted local parts are legal but so rare in bulk mail that we refuse
        // them rather than risk header injection through quoting bugs.
        for atom in local.split('.') {
            if atom.is_empty() {
                return Err(AddressError::EmptyAtom);
            }
            if let Some(c) = atom
                .chars()
                .find(|&c| !(c.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(c) || !c.is_ascii()))
            {
                return Err(AddressError::BadLocalChar(c));
            }
        }
        let domain = Domain::parse(domain)?;
        let full = format!("{local}@{}", domain.as_str());
        if full.len() > 254 {
            return Err(AddressError::TooLong);
        }
        Ok(Self { full, at: local.len() })
    }

    /// The address as sent in the SMTP envelope: local part as given, domain in ASCII.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn local_part(&self) -> &str {
        &self.full[..self.at]
    }

    /// The domain part, already in ASCII form.
    pub fn domain(&self) -> &str {
        &self.full[self.at + 1..]
    }

    /// Whether delivery needs the SMTPUTF8 extension (a non-ASCII local part).
    pub fn needs_smtputf8(&self) -> bool {
        !self.local_part().is_ascii()
    }

    /// The canonical form used for suppression keys: the whole address in
    /// lower case. (Local parts are case-sensitive in theory, never in practice.)
    pub fn canonical(&self) -> String {
        self.full.to_lowercase()
    }

    /// The lower-cased forms the address takes in stored text: canonical
    /// (the domain in ASCII), and with the domain in Unicode when it is an
    /// IDN. What an erasure searches for.
    pub fn search_forms(&self) -> Vec<String> {
        let mut forms = vec![self.canonical()];
        if let (unicode, Ok(())) = idna::domain_to_unicode(self.domain()) {
            let other = format!("{}@{}", self.local_part(), unicode).to_lowercase();
            if !forms.contains(&other) {
                forms.push(other);
            }
        }
        forms
    }

    /// A form safe for info-level logs: `j***@example.com`.
    pub fn redacted(&self) -> String {
        let first = self.local_part().chars().next().unwrap_or('?');
        format!("{first}***@{}", self.domain())
    }
}

/// Replaces every address-like token in free text (an SMTP reply, an error
/// message) by its redacted form, `j***@example.com`, so that the text can
/// leave the worker: servers echo the recipient (`550 5.1.1 <Jane@x>: User
/// unknown`) in any case and in forms that no exact match would catch. A
/// token is a run of non-space, non-delimiter characters around an `@` with
/// something on both sides.
pub fn redact_addresses(text: &str) -> std::borrow::Cow<'_, str> {
    // `'` and `=` are legal in a local part, so they belong to the token:
    // better more redacted than a piece of the address left in the text.
    fn part(c: char) -> bool {
        !c.is_whitespace()
            && !c.is_control()
            && !matches!(c, '<' | '>' | '(' | ')' | '[' | ']' | '"' | ',' | ';' | ':' | '@')
    }
    if !text.contains('@') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut done = 0; // bytes of `text` already in `out`
    for (at, _) in text.match_indices('@') {
        if at < done {
            continue;
        }
        let start =
            text[done..at].char_indices().rev().take_while(|&(_, c)| part(c)).last().map(|(i, _)| done + i);
        let end = at
            + 1
            + text[at + 1..].char_indices().find(|&(_, c)| !part(c)).map_or(text.len() - at - 1, |(i, _)| i);
        let (Some(start), true) = (start, end > at + 1) else { continue };
        let first = text[start..].chars().next().unwrap_or('?');
        out.push_str(&text[done..start]);
        out.push(first);
        out.push_str("***@");
        out.push_str(&text[at + 1..end]);
        done = end;
    }
    if done == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[done..]);
    std::borrow::Cow::Owned(out)
}

impl TryFrom<String> for EmailAddress {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<EmailAddress> for String {
    fn from(a: EmailAddress) -> String {
        a.full
    }
}
impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}
impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn organizational_domains_follow_the_public_suffix_list() {
        let org = |d: &str| Domain::parse(d).unwrap().organizational().to_owned();
        assert_eq!(org("news.acme.example"), "acme.example");
        assert_eq!(org("mail.news.acme.co.uk"), "acme.co.uk");
        assert_eq!(org("acme.com"), "acme.com");
        assert_eq!(org("shop.acme.github.io"), "acme.github.io", "a private suffix counts");
        assert_eq!(organizational("co.uk"), "co.uk", "a suffix is its own");
    }
    use super::*;

    #[test]
    fn addresses_in_free_text_are_redacted_in_any_case_and_form() {
        let cases = [
            (
                "550 5.1.1 <Jane.Doe@Example.COM>: Recipient address rejected",
                "550 5.1.1 <J***@Example.COM>: Recipient address rejected",
            ),
            (
                "user jane+x@a.example unknown, try bob@b.example",
                "user j***@a.example unknown, try b***@b.example",
            ),
            ("to=<émile@bücher.example>", "to=<é***@bücher.example>"),
            ("550 <o'brien=x@a.example> no", "550 <o***@a.example> no"),
            ("user=jane@a.example", "u***@a.example"),
            ("250 2.0.0 Ok: queued as 4ABC", "250 2.0.0 Ok: queued as 4ABC"),
            ("weird @ sign and trailing a@", "weird @ sign and trailing a@"),
            ("@lead x@@y a@b", "@lead x@@y a***@b"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_addresses(input), want, "{input}");
        }
        for input in ["550 <MiXeD@x.example>", "MiXeD@x.example said no"] {
            assert!(!redact_addresses(input).to_lowercase().contains("mixed@x.example"), "{input}");
        }
    }

    #[test]
    fn parses_plain_addresses_and_lowercases_the_domain() {
        let a = EmailAddress::parse(" Jane.Doe+news@Example.COM ").unwrap();
        assert_eq!(a.as_str(), "Jane.Doe+news@example.com");
        assert_eq!(a.domain(), "example.com");
        assert_eq!(a.canonical(), "jane.doe+news@example.com");
        assert!(!a.needs_smtputf8());
    }

    #[test]
    fn idn_domains_become_punycode() {
        let a = EmailAddress::parse("info@bücher.example").unwrap();
        assert_eq!(a.domain(), "xn--bcher-kva.example");
        let b = EmailAddress::parse("info@xn--bcher-kva.example").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn utf8_local_parts_need_smtputf8() {
        let a = EmailAddress::parse("josé@example.com").unwrap();
        assert!(a.needs_smtputf8());
    }

    #[test]
    fn rejects_injection_and_garbage() {
        assert_eq!(EmailAddress::parse("a@b.com\r\nBcc: x@y.com"), Err(AddressError::ControlChar));
        assert_eq!(EmailAddress::parse("nobody"), Err(AddressError::NoAt));
        assert_eq!(EmailAddress::parse("a..b@x.com"), Err(AddressError::EmptyAtom));
        assert_eq!(EmailAddress::parse("a b@x.com"), Err(AddressError::BadLocalChar(' ')));
        assert_eq!(EmailAddress::parse("<a@x.com>"), Err(AddressError::BadLocalChar('<')));
        assert!(matches!(EmailAddress::parse("a@localhost"), Err(AddressError::BadDomain(_))));
        assert!(matches!(EmailAddress::parse("a@-x.com"), Err(AddressError::BadDomain(_))));
        assert!(EmailAddress::parse(&format!("{}@x.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn debug_and_redacted_hide_the_local_part() {
        let a = EmailAddress::parse("secret.person@example.com").unwrap();
        assert_eq!(a.redacted(), "s***@example.com");
        assert!(!format!("{a:?}").contains("secret"));
    }
}
