//! RFC 3464 `message/delivery-status` bodies (and the RFC 5965 report
//! fields, which share their syntax): header-like blocks, separated by blank
//! lines, the first about the message, each later one about a recipient.

use mailpipe_core::status::{Kind, StatusCode};

use crate::{Finding, Source};

/// A block's fields, names lower-cased, folded lines joined.
pub(crate) type Fields = Vec<(String, String)>;

/// The blocks of `body`, in order.
pub(crate) fn blocks(body: &str) -> Vec<Fields> {
    let mut out = Vec::new();
    let mut block: Fields = Vec::new();
    for line in body.lines() {
        if line.trim().is_empty() {
            if !block.is_empty() {
                out.push(std::mem::take(&mut block));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = block.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            block.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if !block.is_empty() {
        out.push(block);
    }
    out
}

/// Every field of `body`, in one list.
pub(crate) fn fields(body: &str) -> Fields {
    blocks(body).into_iter().flatten().collect()
}

pub(crate) fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The address of an `rfc822; a@b.example` value (or a bare or bracketed
/// one), lower-cased.
pub(crate) fn address(value: &str) -> Option<String> {
    let v = value
        .rsplit_once(';')
        .map_or(value, |(kind, a)| if kind.trim().eq_ignore_ascii_case("rfc822") { a } else { "" });
    let a = v.trim().trim_start_matches('<').trim_end_matches('>').trim().to_ascii_lowercase();
    (a.contains('@') && !a.contains(char::is_whitespace)).then_some(a)
}

/// The block's status: its `Status` field, unless that says only the
/// class (`5.0.0`, as Exim always writes) and the remote server's own code
/// in the diagnostic says more in the same class (`550 5.1.1 ...`); the
/// diagnostic's when there is no field.
fn most_specific(field: Option<StatusCode>, diagnostic: &str) -> Option<StatusCode> {
    let remote = StatusCode::find(diagnostic);
    match (field, remote) {
        (Some(f), Some(r)) if f.subject == 0 && f.detail == 0 && r.class == f.class => Some(r),
        (Some(f), _) => Some(f),
        (None, r) => r,
    }
}

/// The reply code a diagnostic starts with (`smtp; 550 5.1.1 ...`).
pub(crate) fn reply_code(diagnostic: &str) -> Option<u16> {
    let d = diagnostic.trim_start();
    let code: String = d.chars().take_while(char::is_ascii_digit).collect();
    let next = d[code.len()..].chars().next();
    (code.len() == 3
        && matches!(next, None | Some(' ' | '-'))
        && matches!(code.as_bytes()[0], b'2' | b'4' | b'5'))
    .then(|| code.parse().ok())?
}

/// One finding per recipient block of a delivery-status body.
pub(crate) fn read(body: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    for block in blocks(body) {
        if out.len() == crate::MAX_FINDINGS {
            break;
        }
        let recipient = field(&block, "final-recipient")
            .or_else(|| field(&block, "original-recipient"))
            .and_then(address);
        let Some(recipient) = recipient else { continue };
        let action = field(&block, "action").unwrap_or_default().to_ascii_lowercase();
        // `smtp; 550 5.1.1 <a@b>: ...`: the type, then the text.
        let diagnostic = field(&block, "diagnostic-code")
            .map(|d| d.split_once(';').map_or(d, |(_, t)| t).trim().to_owned())
            .unwrap_or_default();
        let status = most_specific(field(&block, "status").and_then(StatusCode::parse), &diagnostic);
        let mut f = Finding::classified(Source::Dsn, status, reply_code(&diagnostic), &diagnostic);
        f.recipient = Some(recipient);
        match action.as_str() {
            "delivered" | "relayed" | "expanded" => {
                f.kind = Kind::Delivered;
                f.reason = mailpipe_core::status::BounceReason::Delivered;
            }
            // Still trying: never a hard bounce, whatever the code says.
            "delayed" => {
                f.delayed = true;
                if f.kind == Kind::HardBounce {
                    f.kind = Kind::SoftBounce;
                }
            }
            // A failure reported with a success status is not one we can read.
            "failed" if f.kind == Kind::Delivered => {
                f.kind = Kind::Unknown;
                f.reason = mailpipe_core::status::BounceReason::Other;
            }
            _ => {}
        }
        out.push(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_unfold_and_addresses_read() {
        let body = "Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; A@B.example\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1\r\n  user unknown\r\n";
        let b = blocks(body);
        assert_eq!(b.len(), 2);
        assert_eq!(field(&b[1], "diagnostic-code"), Some("smtp; 550 5.1.1 user unknown"));
        assert_eq!(address("rfc822; <A@B.example>").as_deref(), Some("a@b.example"));
        assert_eq!(address("x400; whatever"), None);
        assert_eq!(reply_code("550-5.1.1 no"), Some(550));
        assert_eq!(reply_code("5501 no"), None);
        assert_eq!(reply_code("hello"), None);
    }
}
