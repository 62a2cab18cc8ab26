//! What a delivery status means: the one classifier shared by the SMTP
//! client (a reply to our own attempt) and the bounce parser (a status
//! reported later, in a DSN or a non-standard bounce).
//!
//! Input: an RFC 3463 enhanced status code and/or a reply code, and the
//! human-readable text. Output: a [`Kind`] (what to do about the
//! recipient) and a [`BounceReason`] from a documented vocabulary
//! (docs/bounces.md). Codes are read first; the text decides only what
//! codes leave open, and a provider's enforcement reply (Gmail, Yahoo,
//! Microsoft refusing unauthenticated or non-compliant bulk mail) is always
//! [`BounceReason::AuthenticationFailure`] or [`BounceReason::Policy`],
//! never "too fast".

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl StatusCode {
    /// `2.0.0`, `4.7.1`, `5.1.1` (class 2, 4 or 5; subject and detail up to
    /// three digits each).
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.trim().splitn(3, '.');
        let class = it.next()?;
        let subject = it.next()?;
        let detail = it.next()?;
        let num = |p: &str, max: usize| -> Option<u16> {
            (!p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())?
        };
        let class = num(class, 1)? as u8;
        if !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(Self { class, subject: num(subject, 3)?, detail: num(detail, 3)? })
    }

    /// The first enhanced status code in `text` (as a word of its own).
    pub fn find(text: &str) -> Option<Self> {
        text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .map(|w| w.trim_matches('.'))
            .filter(|w| w.matches('.').count() == 2)
            .find_map(Self::parse)
    }

    fn is(&self, class: u8, subject: u16, detail: u16) -> bool {
        (self.class, self.subject, self.detail) == (class, subject, detail)
    }
}

impl std::fmt::Display for StatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// What a status says about the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Permanent: the address will not take mail.
    HardBounce,
    /// Temporary, or a permanent refusal of this message (its content, our
    /// authentication) rather than of the address.
    SoftBounce,
    /// The recipient reported the message as spam.
    Complaint,
    /// An out-of-office or vacation reply (RFC 3834): never a bounce.
    AutoReply,
    /// A delivery report saying the message arrived (or was relayed).
    Delivered,
    /// Not something these rules recognise.
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::HardBounce => "hard_bounce",
            Kind::SoftBounce => "soft_bounce",
            Kind::Complaint => "complaint",
            Kind::AutoReply => "auto_reply",
            Kind::Delivered => "delivered",
            Kind::Unknown => "unknown",
        }
    }
}

/// Why, in a vocabulary small enough to count and alert on
/// (docs/bounces.md lists each with the codes and words that give it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceReason {
    UserUnknown,
    MailboxDisabled,
    MailboxFull,
    HostUnknown,
    /// Refused by the receiver's policy: a block list, reputation, a
    /// sender the recipient does not accept.
    Policy,
    SpamContent,
    /// SPF, DKIM or DMARC failed or is missing, or the sender does not meet
    /// a provider's bulk-sender rules.
    AuthenticationFailure,
    /// The receiver asks us to slow down.
    RateLimited,
    MessageTooLarge,
    /// The message could not be delivered in the time it had.
    Expired,
    /// The receiver or the network failed; nothing about the recipient.
    Transient,
    Complaint,
    AutoReply,
    Delivered,
    Other,
}

impl BounceReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BounceReason::UserUnknown => "user_unknown",
            BounceReason::MailboxDisabled => "mailbox_disabled",
            BounceReason::MailboxFull => "mailbox_full",
            BounceReason::HostUnknown => "host_unknown",
            BounceReason::Policy => "policy",
            BounceReason::SpamContent => "spam_content",
            BounceReason::AuthenticationFailure => "authentication_failure",
            BounceReason::RateLimited => "rate_limited",
            BounceReason::MessageTooLarge => "message_too_large",
            BounceReason::Expired => "expired",
            BounceReason::Transient => "transient",
            BounceReason::Complaint => "complaint",
            BounceReason::AutoReply => "auto_reply",
            BounceReason::Delivered => "delivered",
            BounceReason::Other => "other",
        }
    }
}

/// Whether `status` is a mailbox provider enforcing its rules for senders
/// (authentication, alignment, bulk-sender requirements): an alert for the
/// sending domain, and never a reason to slow the provider down.
///
/// - Gmail: 4.7.23 and 5.7.25 (no PTR), 4.7.27 and 5.7.27 (SPF), 4.7.30 and
///   5.7.30 (DKIM), 4.7.26 and 5.7.26 (unauthenticated, DMARC), 4.7.29 and
///   5.7.29 (TLS / ARC), 4.7.31 and 5.7.28 (bulk sender without the
///   requirements), 4.7.32 (From not aligned).
/// - Microsoft: 5.7.515 (authentication level), 5.7.509 (DMARC reject).
/// - Yahoo: 5.7.9 with an authentication or policy text (codes alone
///   overlap with other meanings; see [`classify`]).
pub fn provider_enforcement(status: StatusCode) -> bool {
    matches!(
        (status.class, status.subject, status.detail),
        (4, 7, 23 | 26 | 27 | 29 | 30 | 31 | 32) | (5, 7, 25..=30) | (5, 7, 509 | 515)
    )
}

/// Words that, in a refusal, say the sender's authentication is at fault.
const AUTH_WORDS: [&str; 9] = [
    "spf",
    "dkim",
    "dmarc",
    "unauthenticated",
    "authentication",
    "not authenticated",
    "ptr record",
    "reverse dns",
    "sender requirements",
];

/// Words that say the address does not exist.
const UNKNOWN_WORDS: [&str; 14] = [
    "user doesn't have",
    "user unknown",
    "unknown user",
    "no such user",
    "no such mailbox",
    "does not exist",
    "doesn't exist",
    "recipient not found",
    "invalid recipient",
    "mailbox unavailable",
    "unknown recipient",
    "no mailbox",
    "recipient address rejected: user unknown",
    "not a valid mailbox",
];

/// Words that say the receiver refused our envelope sender, not the
/// recipient: never a reason to suppress the recipient.
const SENDER_WORDS: [&str; 3] = ["sender address", "sender domain", "return path"];

/// Words that say the sender (its address, its IP, its reputation) is
/// refused, whatever the message says.
const BLOCK_WORDS: [&str; 8] =
    ["blocked", "blacklist", "blocklist", "block list", "listed at", "spamhaus", "reputation", "rbl"];

/// Words that say the recipient's domain does not exist or takes no mail.
const HOST_WORDS: [&str; 5] =
    ["host not found", "domain not found", "domain name not found", "name service error", "no mx"];

fn has(text: &str, words: &[&str]) -> bool {
    words.iter().any(|w| text.contains(w))
}

/// The one classifier: what `status` (an enhanced code), `reply` (an SMTP
/// reply code) and `text` (the diagnostic, any case) say about the
/// recipient. Either code may be missing; with neither, the text decides.
pub fn classify(status: Option<StatusCode>, reply: Option<u16>, text: &str) -> (Kind, BounceReason) {
    let t = text.to_ascii_lowercase();
    // The class: the enhanced code's, else the reply's, else the words'.
    let class = status.map(|s| s.class).or_else(|| reply.map(|r| (r / 100) as u8));
    if let Some(s) = status.filter(|s| provider_enforcement(*s)) {
        let reason = if s.is(5, 7, 28) || s.is(4, 7, 31) {
            BounceReason::Policy
        } else {
            BounceReason::AuthenticationFailure
        };
        return (Kind::SoftBounce, reason);
    }
    match class {
        Some(2) => return (Kind::Delivered, BounceReason::Delivered),
        Some(4) => return (Kind::SoftBounce, temporary(status, &t)),
        Some(5) => return permanent(status, reply, &t),
        _ => {}
    }
    // No code: the words alone, what blames the sender first.
    if has(&t, &SENDER_WORDS) || has(&t, &BLOCK_WORDS) {
        (Kind::SoftBounce, BounceReason::Policy)
    } else if has(&t, &AUTH_WORDS) {
        (Kind::SoftBounce, BounceReason::AuthenticationFailure)
    } else if has(&t, &UNKNOWN_WORDS) {
        (Kind::HardBounce, BounceReason::UserUnknown)
    } else if has(&t, &HOST_WORDS) {
        (Kind::HardBounce, BounceReason::HostUnknown)
    } else if t.contains("quota") || t.contains("mailbox full") || t.contains("mailbox is full") {
        (Kind::SoftBounce, BounceReason::MailboxFull)
    } else if t.contains("expired") || t.contains("could not be delivered within") || t.contains("retry time")
    {
        (Kind::SoftBounce, BounceReason::Expired)
    } else if t.contains("spam") {
        (Kind::SoftBounce, BounceReason::SpamContent)
    } else {
        (Kind::Unknown, BounceReason::Other)
    }
}

fn temporary(status: Option<StatusCode>, t: &str) -> BounceReason {
    match status.map(|s| (s.subject, s.detail)) {
        Some((2, 2)) => BounceReason::MailboxFull,
        Some((4, 7)) => BounceReason::Expired,
        Some((7, _)) if has(t, &AUTH_WORDS) => BounceReason::AuthenticationFailure,
        Some((7, _)) if t.contains("rate") || t.contains("too many") || t.contains("try again later") => {
            BounceReason::RateLimited
        }
        Some((7, _)) => BounceReason::Policy,
        _ if t.contains("quota") || t.contains("mailbox full") || t.contains("mailbox is full") => {
            BounceReason::MailboxFull
        }
        _ if t.contains("rate") || t.contains("too many") => BounceReason::RateLimited,
        _ => BounceReason::Transient,
    }
}

fn permanent(status: Option<StatusCode>, reply: Option<u16>, t: &str) -> (Kind, BounceReason) {
    let hard = |r| (Kind::HardBounce, r);
    let soft = |r| (Kind::SoftBounce, r);
    // Our envelope sender refused (x.1.7, x.1.8, or said so): the
    // recipient is not at fault, whatever else the text says.
    if matches!(status.map(|s| (s.subject, s.detail)), Some((1, 7 | 8))) || has(t, &SENDER_WORDS) {
        return soft(BounceReason::Policy);
    }
    match status.map(|s| (s.subject, s.detail)) {
        // x.1.x: addressing. 1.1 bad mailbox, 1.2 bad domain, 1.6 moved,
        // 1.10 null MX (RFC 7505).
        // 5.1.10 is RFC 7505's null MX, and Microsoft's "recipient not found".
        Some((1, 10)) if has(t, &UNKNOWN_WORDS) => hard(BounceReason::UserUnknown),
        Some((1, 2 | 10)) => hard(BounceReason::HostUnknown),
        Some((1, 1 | 3 | 6)) => hard(BounceReason::UserUnknown),
        // x.2.x: the mailbox. 2.1 disabled, 2.2 full, 2.3 message too big.
        Some((2, 1)) => hard(BounceReason::MailboxDisabled),
        Some((2, 2)) => soft(BounceReason::MailboxFull),
        Some((2, 3)) | Some((3, 4)) => soft(BounceReason::MessageTooLarge),
        // x.4.7: delivery time expired; x.4.4 no route (often a dead domain).
        Some((4, 7)) => soft(BounceReason::Expired),
        Some((4, 4)) => hard(BounceReason::HostUnknown),
        // x.7.x: security and policy. Content, authentication, or blocked.
        Some((7, _)) if has(t, &AUTH_WORDS) => soft(BounceReason::AuthenticationFailure),
        Some((7, _)) if has(t, &BLOCK_WORDS) => soft(BounceReason::Policy),
        Some((7, 1)) if has(t, &UNKNOWN_WORDS) => hard(BounceReason::UserUnknown),
        Some((7, _)) if t.contains("spam") || t.contains("content") || t.contains("virus") => {
            soft(BounceReason::SpamContent)
        }
        Some((7, _)) => soft(BounceReason::Policy),
        // 5.0.0 and other unspecific codes: the words (what blames the
        // sender first), then the reply code.
        _ if has(t, &AUTH_WORDS) => soft(BounceReason::AuthenticationFailure),
        _ if has(t, &BLOCK_WORDS) => soft(BounceReason::Policy),
        _ if has(t, &UNKNOWN_WORDS) => hard(BounceReason::UserUnknown),
        _ if t.contains("quota") || t.contains("mailbox full") || t.contains("mailbox is full") => {
            soft(BounceReason::MailboxFull)
        }
        _ if t.contains("spam") => soft(BounceReason::SpamContent),
        _ if has(t, &HOST_WORDS) => hard(BounceReason::HostUnknown),
        _ if t.contains("too large") || t.contains("size") => soft(BounceReason::MessageTooLarge),
        // Without an enhanced code, 550/551/553 to a recipient mean "no such
        // user" in practice; 552 is storage; 554 is anything.
        _ if status.is_none() && matches!(reply, Some(550 | 551 | 553)) => hard(BounceReason::UserUnknown),
        _ if status.is_none() && reply == Some(552) => soft(BounceReason::MailboxFull),
        _ => soft(BounceReason::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(code: &str) -> Option<StatusCode> {
        Some(StatusCode::parse(code).unwrap())
    }

    #[test]
    fn status_codes_parse_and_are_found_in_text() {
        assert_eq!(s("5.1.1").unwrap().to_string(), "5.1.1");
        assert_eq!(s("4.7.515").unwrap().detail, 515);
        for bad in ["", "5.1", "6.1.1", "5..1", "5.1.1.1", "a.b.c", "5.1234.1"] {
            assert_eq!(StatusCode::parse(bad), None, "{bad:?}");
        }
        assert_eq!(StatusCode::find("smtp; 550 5.1.1 <a@b.example>: user unknown"), s("5.1.1"));
        assert_eq!(StatusCode::find("host 192.0.2.1 said: 550 no"), None, "an IP is not a status");
        assert_eq!(StatusCode::find("see 5.7.26."), s("5.7.26"));
    }

    #[test]
    fn the_table() {
        use BounceReason::*;
        use Kind::*;
        type Case<'a> = (Option<StatusCode>, Option<u16>, &'a str, Kind, BounceReason);
        let cases: &[Case<'_>] = &[
            (s("5.1.1"), Some(550), "user unknown", HardBounce, UserUnknown),
            (s("5.1.10"), Some(550), "null MX", HardBounce, HostUnknown),
            (s("5.2.1"), Some(550), "account disabled", HardBounce, MailboxDisabled),
            (s("5.2.2"), Some(552), "mailbox full", SoftBounce, MailboxFull),
            (s("4.2.2"), Some(452), "over quota", SoftBounce, MailboxFull),
            (s("5.3.4"), Some(552), "message too big", SoftBounce, MessageTooLarge),
            (s("4.4.7"), None, "delivery time expired", SoftBounce, Expired),
            (s("5.4.4"), None, "no route to host", HardBounce, HostUnknown),
            (s("5.7.1"), Some(554), "message rejected as spam", SoftBounce, SpamContent),
            (s("5.7.1"), Some(550), "blocked using zen.spamhaus.org", SoftBounce, Policy),
            (s("5.7.1"), Some(550), "access denied", SoftBounce, Policy),
            (s("5.7.1"), Some(550), "recipient address rejected: user unknown", HardBounce, UserUnknown),
            (s("4.7.0"), Some(421), "too many connections, try again later", SoftBounce, RateLimited),
            (s("4.3.0"), Some(451), "temporary local problem", SoftBounce, Transient),
            (s("2.0.0"), Some(250), "ok", Kind::Delivered, BounceReason::Delivered),
            (None, Some(550), "mailbox unavailable", HardBounce, UserUnknown),
            (None, Some(550), "requested action not taken", HardBounce, UserUnknown),
            (None, Some(554), "transaction failed", SoftBounce, Other),
            (None, None, "The email account that you tried to reach does not exist", HardBounce, UserUnknown),
            (None, None, "Host or domain name not found", HardBounce, HostUnknown),
            (None, None, "hello there", Unknown, Other),
            // Our return path refused: never the recipient's fault.
            (
                s("5.1.8"),
                Some(550),
                "<b-x@rp.acme.example>: Sender address rejected: Domain not found",
                SoftBounce,
                Policy,
            ),
            (s("5.1.7"), Some(553), "bad sender mailbox syntax", SoftBounce, Policy),
            (None, Some(550), "Sender address rejected: undeliverable address", SoftBounce, Policy),
            (s("5.0.0"), Some(550), "mailbox unavailable: blocked by reputation", SoftBounce, Policy),
            (s("5.7.1"), Some(550), "mailbox unavailable: blocked", SoftBounce, Policy),
            (None, None, "550 mailbox unavailable, listed at zen.spamhaus.org", SoftBounce, Policy),
        ];
        for (status, reply, text, kind, reason) in cases {
            assert_eq!(classify(*status, *reply, text), (*kind, *reason), "{status:?} {reply:?} {text}");
        }
    }

    #[test]
    fn provider_enforcement_is_authentication_or_policy_never_throttling() {
        for code in [
            "4.7.23", "4.7.27", "4.7.29", "4.7.30", "4.7.32", "5.7.25", "5.7.26", "5.7.27", "5.7.29",
            "5.7.30", "5.7.515",
        ] {
            let st = s(code).unwrap();
            assert!(provider_enforcement(st), "{code}");
            assert_eq!(
                classify(Some(st), None, "please try again later"),
                (Kind::SoftBounce, BounceReason::AuthenticationFailure),
                "{code}"
            );
        }
        assert_eq!(
            classify(s("5.7.28"), Some(550), "unusual rate"),
            (Kind::SoftBounce, BounceReason::Policy)
        );
        assert_eq!(classify(s("4.7.31"), Some(421), ""), (Kind::SoftBounce, BounceReason::Policy));
        assert!(!provider_enforcement(s("4.7.0").unwrap()));
        assert!(!provider_enforcement(s("5.7.1").unwrap()));
        // Yahoo says it in words.
        assert_eq!(
            classify(
                s("5.7.9"),
                Some(550),
                "This mail has been blocked because the sender is unauthenticated"
            ),
            (Kind::SoftBounce, BounceReason::AuthenticationFailure)
        );
    }
}
