//! The one place that decides what an SMTP result means for a job.

use mailpipe_core::status::{Kind, StatusCode};

use crate::{DeliveryError, Phase, Reply};

/// What the worker does with a job after a delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Accepted by the server.
    Delivered,
    /// Try again later; nothing was delivered.
    Deferred { slow_down: bool },
    /// Permanently refused for this recipient. `suppress` says whether the
    /// address itself is bad (unknown user, mailbox disabled), so that it is
    /// never mailed again.
    Bounced { suppress: bool },
    /// The job itself is at fault (a rejected sender, an unsendable address);
    /// retrying cannot help.
    DeadLetter { reason: &'static str },
    /// The content went out but the final reply was lost: the message may or
    /// may not have been delivered.
    InDoubt,
}

/// Classifies every result: no wildcard arms, so a new phase or error kind
/// fails to compile until someone decides what it means.
pub fn classify(result: &Result<Reply, DeliveryError>) -> Disposition {
    match result {
        Ok(reply) => match reply.code {
            200..=299 => Disposition::Delivered,
            // A transport never returns a non-2xx reply as Ok, but if one
            // did, treating it as a temporary failure loses nothing.
            _ => Disposition::Deferred { slow_down: false },
        },
        Err(DeliveryError::Rejected { phase, reply }) => rejected(*phase, reply),
        Err(DeliveryError::Io { phase, .. } | DeliveryError::Protocol { phase, .. }) => match phase {
            Phase::Message => Disposition::InDoubt,
            Phase::Connect
            | Phase::Greeting
            | Phase::Tls
            | Phase::Auth
            | Phase::MailFrom
            | Phase::RcptTo
            | Phase::Data => Disposition::Deferred { slow_down: false },
        },
        Err(DeliveryError::Unsendable(_)) => Disposition::DeadLetter { reason: "unsendable" },
        // Nothing went out: safe to try again.
        Err(DeliveryError::Abandoned(_)) => Disposition::Deferred { slow_down: false },
    }
}

fn rejected(phase: Phase, reply: &Reply) -> Disposition {
    let status = reply.enhanced.as_deref().and_then(StatusCode::parse);
    if reply.code < 500 {
        // 421 and 4.7.x are how providers say "too fast": slow that
        // provider. Not when a provider enforces its sender rules (4.7.23,
        // 4.7.27, ...): going slower fixes nothing there, and would delay
        // every other tenant's mail to it.
        let slow_down = !enforcement(reply)
            && (reply.code == 421 || status.is_some_and(|s| (s.class, s.subject) == (4, 7)));
        return Disposition::Deferred { slow_down };
    }
    match phase {
        // A relay that refuses us outright is our problem, not the recipient's.
        Phase::Connect | Phase::Greeting => Disposition::Deferred { slow_down: true },
        // Our relay refusing TLS or our credentials: a configuration problem
        // to fix and alert on (mailpipe_jobs_total{outcome="deferred"}); the
        // mail waits on the retry schedule meanwhile.
        Phase::Tls | Phase::Auth => Disposition::Deferred { slow_down: false },
        Phase::MailFrom => Disposition::DeadLetter { reason: "sender_rejected" },
        Phase::RcptTo | Phase::Data | Phase::Message => {
            Disposition::Bounced { suppress: bad_mailbox(reply, status, phase) }
        }
    }
}

/// Whether a permanent failure says the mailbox is bad, as the shared
/// classifier ([`mailpipe_core::status::classify`]) reads it: a hard
/// bounce, as opposed to a policy, content or authentication refusal.
/// Without an enhanced code only a reply to RCPT says that much.
fn bad_mailbox(reply: &Reply, status: Option<StatusCode>, phase: Phase) -> bool {
    let (kind, _) = mailpipe_core::status::classify(status, Some(reply.code), &reply.text);
    kind == Kind::HardBounce && (status.is_some() || phase == Phase::RcptTo)
}

/// Whether `reply` is a mailbox provider enforcing its sender rules
/// (authentication, alignment, bulk-sender requirements), as
/// [`mailpipe_core::status::provider_enforcement`] lists them: for an
/// alert on the sending domain, never for slowing down.
pub fn enforcement(reply: &Reply) -> bool {
    reply
        .enhanced
        .as_deref()
        .and_then(StatusCode::parse)
        .is_some_and(mailpipe_core::status::provider_enforcement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rej(phase: Phase, code: u16, text: &str) -> Result<Reply, DeliveryError> {
        Err(DeliveryError::Rejected { phase, reply: Reply::new(code, text) })
    }

    #[test]
    fn table() {
        let io = |phase| Err(DeliveryError::Io { phase, detail: "reset".into() });
        let cases: Vec<(Result<Reply, DeliveryError>, Disposition)> = vec![
            (Ok(Reply::new(250, "2.0.0 Ok: queued")), Disposition::Delivered),
            (rej(Phase::RcptTo, 450, "4.2.0 mailbox busy"), Disposition::Deferred { slow_down: false }),
            (rej(Phase::Connect, 421, "4.3.2 shutting down"), Disposition::Deferred { slow_down: true }),
            (rej(Phase::MailFrom, 451, "4.7.1 rate limited"), Disposition::Deferred { slow_down: true }),
            (rej(Phase::RcptTo, 550, "5.1.1 no such user"), Disposition::Bounced { suppress: true }),
            (rej(Phase::RcptTo, 550, "no such user"), Disposition::Bounced { suppress: true }),
            (rej(Phase::RcptTo, 552, "5.2.2 mailbox full"), Disposition::Bounced { suppress: false }),
            (rej(Phase::Message, 554, "5.7.1 spam"), Disposition::Bounced { suppress: false }),
            (rej(Phase::Data, 500, "5.3.0 Error: command failed"), Disposition::Bounced { suppress: false }),
            (
                rej(Phase::MailFrom, 553, "5.1.8 bad sender"),
                Disposition::DeadLetter { reason: "sender_rejected" },
            ),
            (rej(Phase::Greeting, 554, "no service"), Disposition::Deferred { slow_down: true }),
            (rej(Phase::Auth, 535, "5.7.8 bad credentials"), Disposition::Deferred { slow_down: false }),
            (rej(Phase::Tls, 454, "4.7.0 TLS not available"), Disposition::Deferred { slow_down: true }),
            // Providers enforcing sender rules: not a reason to slow down,
            // and never the mailbox's fault.
            (rej(Phase::Message, 421, "4.7.27 SPF did not pass"), Disposition::Deferred { slow_down: false }),
            (rej(Phase::RcptTo, 450, "4.7.32 From not aligned"), Disposition::Deferred { slow_down: false }),
            (
                rej(Phase::Message, 550, "5.7.26 unauthenticated sender"),
                Disposition::Bounced { suppress: false },
            ),
            (
                rej(
                    Phase::RcptTo,
                    550,
                    "5.7.515 Access denied, sending domain does not meet the required authentication level",
                ),
                Disposition::Bounced { suppress: false },
            ),
            (rej(Phase::RcptTo, 550, "5.2.1 mailbox disabled"), Disposition::Bounced { suppress: true }),
            (rej(Phase::Data, 550, "no such user"), Disposition::Bounced { suppress: false }),
            (io(Phase::Tls), Disposition::Deferred { slow_down: false }),
            (io(Phase::Connect), Disposition::Deferred { slow_down: false }),
            (io(Phase::Data), Disposition::Deferred { slow_down: false }),
            (io(Phase::Message), Disposition::InDoubt),
            (
                Err(DeliveryError::Protocol { phase: Phase::Message, detail: "junk".into() }),
                Disposition::InDoubt,
            ),
            (
                Err(DeliveryError::Unsendable("no SMTPUTF8".into())),
                Disposition::DeadLetter { reason: "unsendable" },
            ),
        ];
        for (r, want) in cases {
            assert_eq!(classify(&r), want, "{r:?}");
        }
    }
}
