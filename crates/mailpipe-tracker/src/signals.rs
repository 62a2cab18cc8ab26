//! Who is behind a request: the machine-or-human verdict, and the client
//! details kept after privacy reduction.

use std::net::IpAddr;

use axum::http::{HeaderMap, Method};
use hmac::{Hmac, Mac};
use mailpipe_core::{ClientInfo, Verdict, VerdictClass};
use sha2::Sha256;

/// How client IP addresses are kept (`tracker.ip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpMode {
    /// IPv4 to its /24, IPv6 to its /48: the network, not the host.
    Truncate,
    /// A keyed hash (16 hex digits): joins repeat visits, reveals nothing.
    Hash,
    /// Not kept at all.
    Drop,
}

/// The user agent reduced to a family. Order matters: proxies and scanners
/// announce themselves inside browser-like strings, so a family earlier in
/// [`Family`] wins over a later one found in the same string.
pub fn ua_family(ua: &str) -> &'static str {
    if ua.is_empty() {
        return "none";
    }
    // One case-insensitive pass over the string finds every marker; this
    // runs on every open and click.
    let found =
        UA_MARKERS.find_overlapping_iter(ua).fold(0u16, |m, hit| m | 1 << MARKERS[hit.pattern()].1 as u16);
    let has = |f: Family| found & (1 << f as u16) != 0;
    if has(Family::GmailProxy) {
        "gmail_image_proxy"
    } else if ua == "Mozilla/5.0" {
        // Apple Mail Privacy Protection fetches through Apple's proxies with
        // exactly this string, at delivery time rather than when read.
        "apple_mail_proxy"
    } else {
        use Family::*;
        [
            (Scanner, "security_scanner"),
            (Bot, "bot"),
            (HttpLibrary, "http_library"),
            (Outlook, "outlook"),
            (Thunderbird, "thunderbird"),
            (Edge, "edge"),
            (Firefox, "firefox"),
            (Chrome, "chrome"),
            (Safari, "safari"),
        ]
        .into_iter()
        .find(|(f, _)| has(*f))
        .map_or("other", |(_, name)| name)
    }
}

/// User-agent families in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    GmailProxy,
    /// Link-checking gateways that fetch every URL in a message before (or
    /// instead of) the recipient.
    Scanner,
    Bot,
    HttpLibrary,
    Outlook,
    Thunderbird,
    Edge,
    Firefox,
    Chrome,
    Safari,
}

/// Markers, matched anywhere in the user agent, ignoring ASCII case.
const MARKERS: &[(&str, Family)] = {
    use Family::*;
    &[
        ("googleimageproxy", GmailProxy),
        ("ggpht.com", GmailProxy),
        ("barracuda", Scanner),
        ("proofpoint", Scanner),
        ("mimecast", Scanner),
        ("safelinks", Scanner),
        ("symantec", Scanner),
        ("messagelabs", Scanner),
        ("trendmicro", Scanner),
        ("forcepoint", Scanner),
        ("fortiguard", Scanner),
        ("sophos", Scanner),
        ("cisco", Scanner),
        ("ironport", Scanner),
        ("zscaler", Scanner),
        ("google-safety", Scanner),
        ("microsoft url", Scanner),
        ("bitdefender", Scanner),
        ("bot", Bot),
        ("crawler", Bot),
        ("spider", Bot),
        ("preview", Bot),
        ("prefetch", Bot),
        ("curl/", HttpLibrary),
        ("wget/", HttpLibrary),
        ("python-requests", HttpLibrary),
        ("python-urllib", HttpLibrary),
        ("go-http-client", HttpLibrary),
        ("java/", HttpLibrary),
        ("okhttp", HttpLibrary),
        ("libwww", HttpLibrary),
        ("axios/", HttpLibrary),
        ("outlook", Outlook),
        ("microsoft office", Outlook),
        ("thunderbird", Thunderbird),
        ("edg/", Edge),
        ("firefox/", Firefox),
        ("chrome/", Chrome),
        ("chromium/", Chrome),
        ("crios/", Chrome),
        ("safari/", Safari),
        ("applewebkit/", Safari),
    ]
};

static UA_MARKERS: std::sync::LazyLock<aho_corasick::AhoCorasick> = std::sync::LazyLock::new(|| {
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(MARKERS.iter().map(|(m, _)| m))
        .expect("the user-agent markers are valid patterns")
});

/// What the tracker knows about a request when it judges it.
pub struct Signals<'a> {
    pub method: &'a Method,
    pub ua_family: &'static str,
    /// Seconds since the message was sent (from the token), if known.
    pub since_sent: Option<i64>,
    /// The link is the hidden honeypot that no person sees.
    pub honeypot: bool,
    /// Clicks sooner than this after sending are a machine's.
    pub machine_click_secs: i64,
    pub is_click: bool,
}

/// Machine, human or unknown, with the signal that decided.
pub fn verdict(s: &Signals<'_>) -> Verdict {
    let v = |class, reason: &str| Verdict { class, reason: reason.to_owned() };
    if s.honeypot {
        return v(VerdictClass::Machine, "honeypot_link");
    }
    if s.method == Method::HEAD {
        return v(VerdictClass::Machine, "head_request");
    }
    match s.ua_family {
        "none" => return v(VerdictClass::Machine, "no_user_agent"),
        "apple_mail_proxy" => return v(VerdictClass::Machine, "apple_mail_privacy_protection"),
        "security_scanner" => return v(VerdictClass::Machine, "security_scanner"),
        "bot" => return v(VerdictClass::Machine, "bot_user_agent"),
        "http_library" => return v(VerdictClass::Machine, "http_library"),
        _ => {}
    }
    if s.is_click
        && let Some(secs) = s.since_sent
        && secs < s.machine_click_secs
    {
        return v(VerdictClass::Machine, "click_seconds_after_delivery");
    }
    match s.ua_family {
        // Gmail's proxy fetches images when the message is opened, not on
        // delivery: an open by a person whose details are hidden.
        "gmail_image_proxy" => v(VerdictClass::Human, "gmail_image_proxy"),
        "outlook" | "thunderbird" | "edge" | "firefox" | "chrome" | "safari" => {
            v(VerdictClass::Human, "mail_client_or_browser")
        }
        _ => v(VerdictClass::Unknown, "no_signal"),
    }
}

/// The client details to store, or `None` when the client opted out of
/// tracking with `Sec-GPC: 1` or `DNT: 1`.
/// `ua_family` is [`ua_family`] of the request's user agent.
pub fn client_info(
    ip: Option<IpAddr>,
    headers: &HeaderMap,
    ua_family: &'static str,
    mode: IpMode,
    ip_key: &[u8],
) -> Option<ClientInfo> {
    let flag = |name: &str| headers.get(name).is_some_and(|v| v.as_bytes().trim_ascii() == b"1");
    if flag("sec-gpc") || flag("dnt") {
        return None;
    }
    let ip = ip.and_then(|ip| match mode {
        IpMode::Drop => None,
        IpMode::Truncate => Some(truncate(ip)),
        IpMode::Hash => Some(hash_ip(ip, ip_key)),
    });
    Some(ClientInfo { ip, ua_family: ua_family.to_owned() })
}

fn truncate(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return truncate(IpAddr::V4(v4));
            }
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

/// A keyed hash of the address that rotates every UTC day: one day's
/// hashes cannot be joined to another's, even by whoever reads the store.
fn hash_ip(ip: IpAddr, key: &[u8]) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let day = (secs / 86_400) as i64;
    hash_ip_on(ip, key, day)
}

fn hash_ip_on(ip: IpAddr, key: &[u8], day: i64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return String::new() };
    mac.update(b"mailpipe/ip/v2/");
    mac.update(&day.to_be_bytes());
    mac.update(b"/");
    mac.update(ip.to_string().as_bytes());
    mac.finalize().into_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, header};

    #[test]
    fn ip_hashes_rotate_daily_and_depend_on_their_key() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(hash_ip_on(ip, b"k", 20_000), hash_ip_on(ip, b"k", 20_000));
        assert_ne!(hash_ip_on(ip, b"k", 20_000), hash_ip_on(ip, b"k", 20_001), "a new key every day");
        assert_ne!(hash_ip_on(ip, b"k", 20_000), hash_ip_on(ip, b"j", 20_000));
    }

    fn judge(method: Method, ua: &str, since_sent: Option<i64>, is_click: bool) -> (VerdictClass, String) {
        let v = verdict(&Signals {
            method: &method,
            ua_family: ua_family(ua),
            since_sent,
            honeypot: false,
            machine_click_secs: 10,
            is_click,
        });
        (v.class, v.reason)
    }

    const CHROME: &str =
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

    #[test]
    fn each_signal_decides_as_documented() {
        use VerdictClass::*;
        let cases = [
            (judge(Method::HEAD, CHROME, None, false), Machine, "head_request"),
            (judge(Method::GET, "", None, false), Machine, "no_user_agent"),
            (judge(Method::GET, "Mozilla/5.0", None, false), Machine, "apple_mail_privacy_protection"),
            (
                judge(Method::GET, "Mozilla/5.0 (compatible; Barracuda Sentinel)", None, true),
                Machine,
                "security_scanner",
            ),
            (judge(Method::GET, "python-requests/2.31", None, true), Machine, "http_library"),
            (judge(Method::GET, "Slackbot-LinkExpanding 1.0", None, true), Machine, "bot_user_agent"),
            (judge(Method::GET, CHROME, Some(3), true), Machine, "click_seconds_after_delivery"),
            (judge(Method::GET, CHROME, Some(3), false), Human, "mail_client_or_browser"),
            (judge(Method::GET, CHROME, Some(600), true), Human, "mail_client_or_browser"),
            (
                judge(
                    Method::GET,
                    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
                    None,
                    false,
                ),
                Human,
                "gmail_image_proxy",
            ),
            (judge(Method::GET, "SomethingElse/1.0", None, false), Unknown, "no_signal"),
        ];
        for ((class, reason), want_class, want_reason) in cases {
            assert_eq!((class, reason.as_str()), (want_class, want_reason));
        }
        let honeypot = verdict(&Signals {
            method: &Method::GET,
            ua_family: ua_family(CHROME),
            since_sent: Some(9999),
            honeypot: true,
            machine_click_secs: 10,
            is_click: true,
        });
        assert_eq!((honeypot.class, honeypot.reason.as_str()), (Machine, "honeypot_link"));
    }

    #[test]
    fn user_agents_reduce_to_their_family() {
        let cases = [
            ("", "none"),
            ("Mozilla/5.0", "apple_mail_proxy"),
            (
                "Mozilla/5.0 (Windows NT 5.1) Firefox/11.0 (via ggpht.com GoogleImageProxy)",
                "gmail_image_proxy",
            ),
            ("Mozilla/5.0 AppleWebKit/537.36 Chrome/126.0 Safari/537.36 Proofpoint", "security_scanner"),
            ("Mozilla/5.0 (compatible; BARRACUDA Sentinel)", "security_scanner"),
            ("Slackbot-LinkExpanding 1.0", "bot"),
            ("Mozilla/5.0 Chrome/126.0 (link PREVIEW)", "bot"),
            ("python-requests/2.31", "http_library"),
            ("curl/8.5.0", "http_library"),
            ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0)", "outlook"),
            ("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0", "thunderbird"),
            ("Mozilla/5.0 AppleWebKit/537.36 Chrome/126.0 Safari/537.36 Edg/126.0", "edge"),
            ("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", "firefox"),
            (CHROME, "chrome"),
            ("Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 CriOS/126.0 Mobile Safari/604.1", "chrome"),
            (
                "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
                "safari",
            ),
            ("SomethingElse/1.0", "other"),
        ];
        for (ua, want) in cases {
            assert_eq!(ua_family(ua), want, "{ua}");
        }
    }

    #[test]
    fn client_details_are_reduced_and_dropped_on_request() {
        let mut h = HeaderMap::new();
        h.insert(header::USER_AGENT, HeaderValue::from_static(CHROME));
        let v4: IpAddr = "203.0.113.77".parse().unwrap();
        let v6: IpAddr = "2001:db8:abcd:12::1".parse().unwrap();
        let c = client_info(Some(v4), &h, ua_family(CHROME), IpMode::Truncate, b"k").unwrap();
        assert_eq!((c.ip.as_deref(), c.ua_family.as_str()), (Some("203.0.113.0/24"), "chrome"));
        let c6 = client_info(Some(v6), &h, ua_family(CHROME), IpMode::Truncate, b"k").unwrap();
        assert_eq!(c6.ip.as_deref(), Some("2001:db8:abcd::/48"));
        let hashed = client_info(Some(v4), &h, ua_family(CHROME), IpMode::Hash, b"k").unwrap().ip.unwrap();
        assert_eq!(hashed.len(), 16);
        assert!(!hashed.contains("203"));
        assert_eq!(client_info(Some(v4), &h, ua_family(CHROME), IpMode::Drop, b"k").unwrap().ip, None);
        for opt_out in ["sec-gpc", "dnt"] {
            let mut h2 = h.clone();
            h2.insert(opt_out, HeaderValue::from_static("1"));
            assert_eq!(
                client_info(Some(v4), &h2, ua_family(CHROME), IpMode::Truncate, b"k"),
                None,
                "{opt_out}"
            );
        }
    }
}
