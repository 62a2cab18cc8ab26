//! The preflight against real DNS, and the status it leads to.
//!
//! A domain becomes `verified` when its active key's DKIM record matches.
//! One that stops matching turns `failing` (it still sends), and `disabled`
//! only once it has been failing for `failing_grace`, so a DNS blip stops
//! no campaign. A rotation's new key signs from the check that first sees
//! its record. An attested domain (the operator's word) keeps its status;
//! its findings are still recorded.

use std::time::Duration;

use mailpipe_core::{DomainStatus, KeyState};
use mailpipe_store::{CheckRecord, SendingDomain, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::dns::{Answer, Dns};
use crate::preflight::{Answers, Finding, evaluate};
use crate::records::dkim_name;
use crate::{DomainError, DomainSettings};

/// What a check found and decided.
#[derive(Debug, Clone)]
pub struct Checked {
    pub status: DomainStatus,
    pub findings: Vec<Finding>,
    /// A rotation completed: the selector that signs from now on.
    pub promoted: Option<mailpipe_core::Selector>,
}

/// What a check learnt of the signing key's DKIM record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimVerdict {
    /// Published, matching the key.
    Published,
    /// Absent, or a different key.
    Missing,
    /// DNS did not answer: nothing learnt either way.
    Unanswered,
}

/// The status after a check: from `current`, given what the DKIM record
/// showed, when the domain turned failing, and the grace period. DNS that
/// does not answer proves nothing: it never verifies a domain, and a
/// verified one turns failing (it still sends through the grace), so a
/// domain cannot keep sending for ever behind name servers that stopped
/// answering, and a blip of the checker's resolver stops nothing.
pub fn transition(
    current: DomainStatus,
    attested: bool,
    dkim: DkimVerdict,
    failing_since: Option<i64>,
    now_ms: i64,
    grace: Duration,
) -> (DomainStatus, Option<i64>) {
    if attested {
        return (current, failing_since);
    }
    match (dkim, current) {
        (DkimVerdict::Published, _) => (DomainStatus::Verified, None),
        (_, DomainStatus::Pending) => (DomainStatus::Pending, None),
        (DkimVerdict::Missing | DkimVerdict::Unanswered, DomainStatus::Verified) => {
            (DomainStatus::Failing, Some(now_ms))
        }
        (_, DomainStatus::Failing) => {
            let since = failing_since.unwrap_or(now_ms);
            let over = now_ms.saturating_sub(since) >= grace.as_millis() as i64;
            (if over { DomainStatus::Disabled } else { DomainStatus::Failing }, Some(since))
        }
        (_, DomainStatus::Disabled) => (DomainStatus::Disabled, failing_since),
    }
}

/// Checks one domain now and records the outcome.
pub async fn check(
    store: &Store,
    dns: &Dns,
    settings: &DomainSettings,
    domain: &SendingDomain,
) -> Result<Checked, DomainError> {
    let name = domain.domain.as_str();
    let mut dkim = Vec::with_capacity(domain.keys.len());
    for k in &domain.keys {
        dkim.push(match k.state {
            KeyState::Previous => Answer::Nothing,
            KeyState::Active | KeyState::Pending => dns.txt(&dkim_name(&k.selector, &domain.domain)).await,
        });
    }
    let answers = Answers {
        dkim,
        spf: dns.txt(name).await,
        dmarc: dns.txt(&format!("_dmarc.{name}")).await,
        return_path: match &settings.return_path {
            Some(_) => Some(dns.resolves(&format!("{}.{name}", settings.return_path_label)).await),
            None => None,
        },
    };
    let report = evaluate(&domain.domain, &domain.keys, &answers, settings);
    let mut promoted = None;
    if let Some(i) = report.pending_published {
        let next = domain.keys[i].selector.clone();
        // Only if it is still pending: a check that read the domain before
        // another one promoted it (or before a later rotation) changes
        // nothing.
        if store.promote_dkim_key(&domain.domain, &next).await? {
            info!(domain = name, selector = %next, "rotation complete: the new key signs from now on");
            promoted = Some(next);
        }
    }
    let dkim = if report.active_published || promoted.is_some() {
        DkimVerdict::Published
    } else if report.active_unanswered {
        DkimVerdict::Unanswered
    } else {
        DkimVerdict::Missing
    };
    let now = mailpipe_core::now_ms();
    let (status, failing_since) =
        transition(domain.status, domain.attested, dkim, domain.failing_since, now, settings.failing_grace);
    let findings_json = serde_json::to_string(&report.findings).unwrap_or_default();
    let record = CheckRecord {
        owner: &domain.owner,
        created_at: domain.created_at,
        status,
        findings: &findings_json,
        checked_at: now,
        failing_since,
    };
    // Recorded only on the claim that was checked: one removed or taken
    // over meanwhile is another's, and what DNS said of it proves nothing
    // for the new claim's key.
    if !store.record_domain_check(&domain.domain, &record).await? {
        return Err(DomainError::Changed(domain.domain.clone()));
    }
    metrics::counter!("mailpipe_domain_checks_total", "status" => status.as_str()).increment(1);
    if status != domain.status {
        match status {
            DomainStatus::Failing | DomainStatus::Disabled => {
                warn!(domain = name, from = %domain.status, to = %status, "sending domain no longer verifies")
            }
            DomainStatus::Verified | DomainStatus::Pending => {
                info!(domain = name, from = %domain.status, to = %status, "sending domain status changed")
            }
        }
    }
    Ok(Checked { status, findings: report.findings, promoted })
}

/// Checks every domain whose last check is older than
/// `settings.check_interval`, looking every minute (or every interval, if
/// shorter), until `shutdown`. A failure is logged and tried at the next
/// round.
pub async fn run_checks(store: Store, settings: DomainSettings, shutdown: CancellationToken) {
    let every = settings.check_interval.min(Duration::from_secs(60));
    loop {
        if let Err(e) = check_due(&store, &settings).await {
            warn!(error = %e, "sending domain checks failed; trying again at the next round");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// How many domains a round checks at once.
const CHECKS_AT_ONCE: usize = 8;

/// One check's limit, however its name servers behave: every lookup it
/// makes, at their timeout.
fn check_deadline(settings: &DomainSettings) -> Duration {
    settings.dns_timeout * 8
}

async fn check_due(store: &Store, settings: &DomainSettings) -> Result<(), DomainError> {
    use futures::StreamExt;
    let dns = Dns::new(&settings.nameservers, settings.dns_timeout)?;
    let now = mailpipe_core::now_ms();
    let due = settings.check_interval.as_millis() as i64;
    let expired = now - settings.claim_expiry.as_millis() as i64;
    let mut by_status = [0u32; 4];
    let (to_check, rest): (Vec<_>, Vec<_>) = store.sending_domains(None).await?.into_iter().partition(|d| {
        d.checked_at.is_none_or(|at| now - at >= due)
            && !(d.status == DomainStatus::Pending && d.created_at < expired)
    });
    for d in &rest {
        by_status[DomainStatus::ALL.iter().position(|s| *s == d.status).unwrap_or(0)] += 1;
    }
    // Several at once, each within its deadline: one tenant's slow name
    // servers hold up nobody else's checks for long.
    let checked: Vec<DomainStatus> = futures::stream::iter(to_check)
        .map(|d| {
            let dns = &dns;
            async move {
                match tokio::time::timeout(check_deadline(settings), check(store, dns, settings, &d)).await {
                    Ok(Ok(c)) => c.status,
                    Ok(Err(e)) => {
                        warn!(domain = d.domain.as_str(), error = %e, "sending domain check failed");
                        d.status
                    }
                    Err(_) => {
                        warn!(
                            domain = d.domain.as_str(),
                            "sending domain check took too long; tried again next round"
                        );
                        d.status
                    }
                }
            }
        })
        .buffer_unordered(CHECKS_AT_ONCE)
        .collect()
        .await;
    for status in checked {
        by_status[DomainStatus::ALL.iter().position(|s| *s == status).unwrap_or(0)] += 1;
    }
    for (status, n) in DomainStatus::ALL.iter().zip(by_status) {
        metrics::gauge!("mailpipe_sending_domains", "status" => status.as_str()).set(f64::from(n));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_domain_verifies_fails_within_its_grace_then_is_disabled() {
        use DkimVerdict::*;
        use DomainStatus::*;
        assert_eq!(transition(Pending, false, Missing, None, 0, HOUR), (Pending, None));
        assert_eq!(transition(Pending, false, Published, None, 0, HOUR), (Verified, None));
        assert_eq!(transition(Verified, false, Missing, None, 1000, HOUR), (Failing, Some(1000)));
        assert_eq!(
            transition(Failing, false, Missing, Some(1000), 1000 + 3_599_999, HOUR),
            (Failing, Some(1000))
        );
        assert_eq!(
            transition(Failing, false, Missing, Some(1000), 1000 + 3_600_000, HOUR),
            (Disabled, Some(1000))
        );
        assert_eq!(transition(Failing, false, Published, Some(1000), 5000, HOUR), (Verified, None));
        assert_eq!(transition(Disabled, false, Missing, Some(1), 5000, HOUR), (Disabled, Some(1)));
        assert_eq!(transition(Disabled, false, Published, Some(1), 5000, HOUR), (Verified, None));
        assert_eq!(transition(Verified, true, Missing, None, 5000, HOUR), (Verified, None), "attested");
    }

    #[test]
    fn dns_that_does_not_answer_verifies_nothing_and_cannot_stop_a_grace_running_out() {
        use DkimVerdict::*;
        use DomainStatus::*;
        assert_eq!(transition(Verified, false, Unanswered, None, 1000, HOUR), (Failing, Some(1000)));
        assert_eq!(transition(Pending, false, Unanswered, None, 1000, HOUR), (Pending, None));
        assert_eq!(transition(Failing, false, Unanswered, Some(1000), 2000, HOUR), (Failing, Some(1000)));
        assert_eq!(
            transition(Failing, false, Unanswered, Some(1000), 1000 + 3_600_000, HOUR),
            (Disabled, Some(1000))
        );
    }
}
