//! What a webhook may point at. A tenant names the URL, so a webhook must
//! not become a way into the platform's own network: a URL is parsed once
//! ([`WebhookUrl::parse`]), its host resolved at registration and again at
//! every delivery, and a delivery connects only to an address that was
//! vetted ([`is_public`]), so a name that later resolves to a private
//! address (DNS rebinding) is refused too. The operator may allow some
//! private networks (`webhooks.allowed_networks`, for receivers on its own
//! network; link-local addresses, where cloud metadata services live, never)
//! and plain HTTP (`webhooks.allow_http`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mailpipe_core::Cidr;

/// Longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("url: not an absolute http(s) URL")]
    NotHttp,
    #[error("url: must be https (the operator has not allowed plain http)")]
    NotHttps,
    #[error("url: longer than {MAX_URL_BYTES} bytes")]
    TooLong,
    #[error("url: credentials in the URL are not accepted (the signature authenticates us)")]
    UserInfo,
    #[error("url: no host")]
    NoHost,
    #[error("url: bad port")]
    BadPort,
    #[error("url: a fragment is never sent; remove it")]
    Fragment,
    #[error("url: the path or query holds characters a request cannot carry (percent-encode them)")]
    BadTarget,
    #[error("url: {host} resolves to {addr}, a loopback, private, link-local or reserved address")]
    NotPublic { host: String, addr: IpAddr },
    #[error("url: {host} does not resolve: {detail}")]
    Unresolved { host: String, detail: String },
}

/// What the guard allows.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow_http: bool,
    /// Non-public networks allowed all the same (link-local never is).
    pub allowed: Vec<Cidr>,
}

impl Policy {
    /// Whether a delivery may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if is_link_local(ip) {
            return false;
        }
        is_public(ip) || self.allowed.iter().any(|n| n.contains(ip))
    }
}

/// An IPv4-mapped IPv6 address as its IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// A webhook URL, parsed: scheme, host, port and the request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub https: bool,
    /// A name, or an IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub target: String,
    raw: String,
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

impl WebhookUrl {
    pub fn parse(s: &str, policy: &Policy) -> Result<Self, UrlError> {
        let s = s.trim();
        if s.len() > MAX_URL_BYTES {
            return Err(UrlError::TooLong);
        }
        if s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(UrlError::NotHttp);
        }
        let (https, rest) = if let Some(r) = strip_prefix_ci(s, "https://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(s, "http://") {
            (false, r)
        } else {
            return Err(UrlError::NotHttp);
        };
        if !https && !policy.allow_http {
            return Err(UrlError::NotHttps);
        }
        if rest.contains('#') {
            return Err(UrlError::Fragment);
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(end);
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            // Only an IPv6 literal in brackets, then nothing or a port.
            let (h, after) = v6.split_once(']').ok_or(UrlError::NoHost)?;
            h.parse::<Ipv6Addr>().map_err(|_| UrlError::NoHost)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(UrlError::BadPort)?),
            };
            (h.to_owned(), port)
        } else {
            let (h, p) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if !h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
                return Err(UrlError::NoHost);
            }
            (h.to_owned(), p)
        };
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return Err(UrlError::NoHost);
        }
        let port = match port {
            None => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or(UrlError::BadPort)?,
        };
        let target = match target {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        // What the request line will carry: refused now, not at every
        // delivery for a day.
        if target.parse::<hyper::http::uri::PathAndQuery>().is_err() {
            return Err(UrlError::BadTarget);
        }
        Ok(Self { https, host, port, target, raw: s.to_owned() })
    }

    /// The `Host` header's value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match (self.https, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }

    /// The host's addresses, every one vetted: one that is not public
    /// refuses the URL (unless `policy` allows private addresses), as a
    /// name that mixes public and private answers is not trusted either.
    pub async fn resolve(&self, policy: &Policy) -> Result<Vec<SocketAddr>, UrlError> {
        let addrs: Vec<SocketAddr> = match self.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, self.port)],
            Err(_) => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| UrlError::Unresolved { host: self.host.clone(), detail: e.to_string() })?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(UrlError::Unresolved { host: self.host.clone(), detail: "no address".into() });
        }
        if let Some(bad) = addrs.iter().find(|a| !policy.allows(a.ip())) {
            return Err(UrlError::NotPublic { host: self.host.clone(), addr: bad.ip() });
        }
        Ok(addrs)
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &s[prefix.len()..])
}

/// Whether `ip` is a public unicast address: not loopback, private
/// (RFC 1918, unique-local), link-local (cloud metadata lives there),
/// shared (CGNAT), unspecified, broadcast, multicast, documentation,
/// benchmarking or otherwise reserved; IPv4-mapped IPv6 judged as its IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64, which can reach IPv4 private space
        || s[0] == 0x2002 // 6to4, likewise
        || (s[0] == 0x2001 && s[1] == 0) // Teredo, likewise
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0) // benchmarking
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard-only
        || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0xffff) // IPv4-translated
        || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0)) // IPv4-compatible
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: &Policy = &Policy { allow_http: false, allowed: Vec::new() };

    #[test]
    fn urls_are_parsed_once_with_their_defaults() {
        let u = WebhookUrl::parse("https://Hooks.Example.com/mailpipe?x=1", STRICT).unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.target.as_str()),
            (true, "hooks.example.com", 443, "/mailpipe?x=1")
        );
        assert_eq!(u.authority(), "hooks.example.com");
        let u = WebhookUrl::parse("https://[2606:4700::1]:8443", STRICT).unwrap();
        assert_eq!((u.host.as_str(), u.port, u.target.as_str()), ("2606:4700::1", 8443, "/"));
        assert_eq!(u.authority(), "[2606:4700::1]:8443");
        for (bad, want) in [
            ("ftp://x.example/", UrlError::NotHttp),
            ("http://x.example/", UrlError::NotHttps),
            ("https://user:pw@x.example/", UrlError::UserInfo),
            ("https://x.example:0/", UrlError::BadPort),
            ("https://x.example:99999/", UrlError::BadPort),
            ("https:///path", UrlError::NoHost),
            ("https://x.example/#frag", UrlError::Fragment),
            ("https://x.exa mple/", UrlError::NotHttp),
            ("https://x.example/\r\nHost: y", UrlError::NotHttp),
        ] {
            assert_eq!(WebhookUrl::parse(bad, STRICT), Err(want), "{bad}");
        }
        assert!(
            WebhookUrl::parse("http://x.example/", &Policy { allow_http: true, allowed: Vec::new() }).is_ok()
        );
        for bad in ["https://[::1]junk/", "https://[x.example]/", "https://x.example:1:2/", "https://:100/"] {
            assert!(WebhookUrl::parse(bad, STRICT).is_err(), "{bad}");
        }
        assert_eq!(WebhookUrl::parse("https://x.example/a<b>", STRICT), Err(UrlError::BadTarget));
        assert_eq!(
            WebhookUrl::parse(&format!("https://x.example/{}", "a".repeat(2100)), STRICT),
            Err(UrlError::TooLong)
        );
    }

    #[test]
    fn only_public_unicast_addresses_pass() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "::127.0.0.1",
            "2001::1",
            "2001:2::1",
            "100::1",
            "::ffff:0:a00:1",
            "192.88.99.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must be refused");
        }
        for ip in ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn a_private_address_is_refused_unless_allowed() {
        let u = WebhookUrl::parse("https://127.0.0.1:8443/hook", STRICT).unwrap();
        assert!(matches!(u.resolve(STRICT).await, Err(UrlError::NotPublic { .. })));
        let open = Policy { allow_http: true, allowed: vec!["127.0.0.0/8".parse().unwrap()] };
        assert_eq!(u.resolve(&open).await.unwrap(), vec!["127.0.0.1:8443".parse().unwrap()]);
        // Allowing networks never allows link-local (cloud metadata).
        let all =
            Policy { allow_http: true, allowed: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()] };
        assert!(!all.allows("169.254.169.254".parse().unwrap()));
        assert!(!all.allows("fe80::1".parse().unwrap()));
        assert!(!all.allows("::ffff:169.254.169.254".parse().unwrap()));
        assert!(all.allows("10.0.0.1".parse().unwrap()));
        assert!(!open.allows("10.0.0.1".parse().unwrap()), "only the blocks listed");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        let u = WebhookUrl::parse("https://localhost/hook", STRICT).unwrap();
        assert!(
            matches!(u.resolve(STRICT).await, Err(UrlError::NotPublic { .. })),
            "a name for loopback too"
        );
    }
}
