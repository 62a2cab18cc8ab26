//! Bounces without a `message/delivery-status` part (qmail's "failure
//! notice", Exim's "Mail delivery failed", old Sendmail, Exchange and
//! providers' own formats): recognised by sender and subject, and read from
//! the human-readable text. Each address the text names (other than the
//! bounce's own) gets the codes and words that follow it, up to the next.

use mail_parser::Message;

use crate::{Finding, Source, first_address};
use mailpipe_core::status::StatusCode;

/// Who sends bounces.
const SENDERS: [&str; 4] = ["mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"];

/// What bounces are called (lower case, anywhere in the subject).
const SUBJECTS: [&str; 12] = [
    "undeliver",
    "undelivered mail",
    "delivery status notification",
    "mail delivery failed",
    "failure notice",
    "returned mail",
    "delivery failure",
    "could not be delivered",
    "delivery has failed",
    "non-delivery",
    "nondeliverable",
    "message not delivered",
];

/// Where a bounce starts quoting the message it returns (lower case).
const RETURNED: [&str; 6] = [
    "this is a copy of the message",
    "below this line is a copy of the message",
    "original message follows",
    "----- original message -----",
    "------ original message",
    "unsent message below",
];

/// Addresses looked at in a text at most (its own and duplicates
/// included), so that a hostile text costs little to read.
const MAX_ADDRESSES: usize = 1000;

pub(crate) fn looks_like_bounce(msg: &Message<'_>) -> bool {
    let from = first_address(msg.from()).unwrap_or_default();
    let local = from.split('@').next().unwrap_or_default();
    let name =
        msg.from().and_then(|a| a.first()).and_then(|a| a.name()).unwrap_or_default().to_ascii_lowercase();
    let subject = msg.subject().unwrap_or_default().to_lowercase();
    SENDERS.contains(&local) || name.contains("mail delivery") || SUBJECTS.iter().any(|s| subject.contains(s))
}

pub(crate) fn read(msg: &Message<'_>) -> Vec<Finding> {
    let mut text = msg.body_text(0).map(|t| t.into_owned()).unwrap_or_default();
    // The returned message, if the bounce quotes it inline, names other
    // addresses (its sender's): read only what comes before it.
    let lower = text.to_ascii_lowercase();
    if let Some(cut) = RETURNED.iter().filter_map(|m| lower.find(m)).min() {
        text.truncate(cut);
    }
    let own: Vec<String> =
        [first_address(msg.from()), first_address(msg.to())].into_iter().flatten().collect();
    let found = addresses(&text);
    let mut seen: Vec<&str> = Vec::new();
    let mut spans: Vec<(usize, &str)> = Vec::new();
    for &(at, ref a) in &found {
        let local = a.split('@').next().unwrap_or_default();
        if own.iter().any(|o| o == a) || SENDERS.contains(&local) || seen.contains(&a.as_str()) {
            continue;
        }
        seen.push(a);
        spans.push((at, a));
        if spans.len() == crate::MAX_FINDINGS {
            break;
        }
    }
    if spans.is_empty() {
        let (status, reply) = codes(&text);
        return vec![Finding::classified(Source::Text, status, reply, &text)];
    }
    let mut out = Vec::new();
    for (i, &(at, a)) in spans.iter().enumerate() {
        // What follows the address, up to the next one (or 600 bytes).
        let end = spans.get(i + 1).map_or(text.len(), |n| n.0).min(at + 600);
        let end = (end..=text.len()).find(|e| text.is_char_boundary(*e)).unwrap_or(text.len());
        let window = &text[at..end];
        let (status, reply) = codes(window);
        let mut f = Finding::classified(Source::Text, status, reply, window);
        f.recipient = Some(a.to_owned());
        out.push(f);
    }
    out
}

/// The first enhanced status code and the first 4xx/5xx reply code of
/// `text`.
fn codes(text: &str) -> (Option<StatusCode>, Option<u16>) {
    let status = StatusCode::find(text);
    let reply = text
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '.')
        .find(|w| {
            w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()) && matches!(w.as_bytes()[0], b'4' | b'5')
        })
        .and_then(|w| w.parse().ok());
    (status, reply)
}

/// Every address in `text` with its byte offset, lower-cased: a run of
/// address characters around one `@`, with a dotted domain.
fn addresses(text: &str) -> Vec<(usize, String)> {
    let is_local = |c: char| c.is_ascii_alphanumeric() || "._+-=!#$%&'*/?^`{|}~".contains(c);
    let is_domain = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-';
    let mut out = Vec::new();
    for (i, _) in text.match_indices('@').take(MAX_ADDRESSES) {
        let start =
            text[..i].char_indices().rev().take_while(|(_, c)| is_local(*c)).last().map_or(i, |(s, _)| s);
        let end = text[i + 1..]
            .char_indices()
            .take_while(|(_, c)| is_domain(*c))
            .last()
            .map_or(i + 1, |(e, c)| i + 1 + e + c.len_utf8());
        let local = text[start..i].trim_matches('.');
        let domain = text[i + 1..end].trim_end_matches(['.', '-']);
        if local.is_empty() || !domain.contains('.') {
            continue;
        }
        out.push((start, format!("{local}@{domain}").to_ascii_lowercase()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_found_with_their_offsets() {
        let t = "<bob@example.com>: 550 no; see also x@y and alice.b+tag@mx.example.org.";
        let found: Vec<String> = addresses(t).into_iter().map(|(_, a)| a).collect();
        assert_eq!(found, ["bob@example.com", "alice.b+tag@mx.example.org"]);
    }

    #[test]
    fn codes_are_read_from_the_words() {
        assert_eq!(
            codes("Remote host said: 550-5.1.1 The email account"),
            (StatusCode::parse("5.1.1"), Some(550))
        );
        assert_eq!(codes("host 192.0.2.1 said 421 try later"), (None, Some(421)));
        assert_eq!(codes("nothing here 1234"), (None, None));
    }
}
