//! What a domain's DNS says, judged: each finding is pass, warn or fail,
//! with a one-line fix. Pure: the answers come in, the findings go out, so
//! every case is a unit test and the real DNS server only has to deliver
//! the answers (tests/tests/it/domains.rs).

use mailpipe_core::{Domain, KeyState};
use mailpipe_store::StoredKey;

use crate::DomainSettings;
use crate::dns::Answer;
use crate::records::{dkim_name, dkim_value, platform_spf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Dkim,
    Spf,
    Dmarc,
    ReturnPath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
}

/// One thing a check found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    pub check: Check,
    pub outcome: Outcome,
    /// What was found, in one line.
    pub detail: String,
    /// What to do about it, in one line; none for a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The longest detail kept: what a tenant's DNS says is echoed into the
/// store and the dashboard, and a hostile zone can say a lot.
const DETAIL_CHARS: usize = 300;

fn clip(mut s: String) -> String {
    if let Some((at, _)) = s.char_indices().nth(DETAIL_CHARS) {
        s.truncate(at);
        s.push('…');
    }
    s
}

impl Finding {
    fn pass(check: Check, detail: String) -> Self {
        Self { check, outcome: Outcome::Pass, detail: clip(detail), fix: None }
    }
    fn warn(check: Check, detail: String, fix: String) -> Self {
        Self { check, outcome: Outcome::Warn, detail: clip(detail), fix: Some(fix) }
    }
    fn fail(check: Check, detail: String, fix: String) -> Self {
        Self { check, outcome: Outcome::Fail, detail: clip(detail), fix: Some(fix) }
    }
}

/// The DNS answers a check collects.
pub struct Answers {
    /// For each key of the domain, the TXT answer at its selector's name.
    pub dkim: Vec<Answer>,
    /// TXT at the domain.
    pub spf: Answer,
    /// TXT at `_dmarc.<domain>`.
    pub dmarc: Answer,
    /// Whether the return-path name resolves, when one is configured.
    pub return_path: Option<Answer>,
}

/// The findings, and what they mean for the domain's keys.
pub struct Report {
    pub findings: Vec<Finding>,
    /// The active key's record matches: the domain is verified.
    pub active_published: bool,
    /// DNS did not answer for the active key's record.
    pub active_unanswered: bool,
    /// A key made by a rotation whose record now matches: it may sign.
    pub pending_published: Option<usize>,
}

/// Judges `answers` for `domain`, whose keys are `keys` (in the order their
/// answers are in).
pub fn evaluate(domain: &Domain, keys: &[StoredKey], answers: &Answers, settings: &DomainSettings) -> Report {
    let mut findings = Vec::new();
    let (mut active_published, mut active_unanswered, mut pending_published) = (false, false, None);
    for (i, (key, answer)) in keys.iter().zip(&answers.dkim).enumerate() {
        let (finding, matched) = dkim(domain, key, answer);
        match key.state {
            KeyState::Active => {
                active_published = matched;
                active_unanswered = matches!(answer, Answer::Failed(_));
                findings.push(finding);
            }
            KeyState::Pending => {
                if matched {
                    pending_published = Some(i);
                }
                // A rotation waiting for its record is not a fault.
                findings.push(if matched || finding.outcome == Outcome::Pass {
                    finding
                } else {
                    Finding { outcome: Outcome::Warn, ..finding }
                });
            }
            // Kept for mail already signed; nothing to judge.
            KeyState::Previous => {}
        }
    }
    findings.push(spf(domain, &answers.spf, settings));
    findings.push(dmarc(domain, &answers.dmarc, settings));
    if let (Some(answer), Some(host)) = (&answers.return_path, &settings.return_path) {
        findings.push(return_path(domain, answer, host, settings));
    }
    Report { findings, active_published, active_unanswered, pending_published }
}

fn dns_failed(check: Check, name: &str, e: &str) -> Finding {
    Finding::fail(
        check,
        format!("DNS did not answer for {name}: {e}"),
        "check that the domain's name servers answer; nothing is taken as published until they do".into(),
    )
}

/// The DKIM record of one key: `(finding, the published key matches)`.
fn dkim(domain: &Domain, key: &StoredKey, answer: &Answer) -> (Finding, bool) {
    let name = dkim_name(&key.selector, domain);
    let publish = format!("publish TXT {name} \"{}\"", dkim_value(key.algorithm, &key.public_key));
    let records = match answer {
        Answer::Failed(e) => return (dns_failed(Check::Dkim, &name, e), false),
        Answer::Nothing => {
            return (Finding::fail(Check::Dkim, format!("no DKIM record at {name}"), publish), false);
        }
        Answer::Found(records) => records,
    };
    let parsed: Vec<Result<DkimRecord, String>> = records.iter().map(|r| parse_dkim(r)).collect();
    if let Some(rec) = parsed.iter().flatten().find(|r| r.p == key.public_key) {
        if rec.k != key.algorithm.key_type() {
            let detail =
                format!("{name} has this key with k={}, but the key is {}", rec.k, key.algorithm.key_type());
            return (Finding::fail(Check::Dkim, detail, publish), false);
        }
        return (
            Finding::pass(Check::Dkim, format!("{name} publishes this key (selector {})", key.selector)),
            true,
        );
    }
    let detail = match parsed.iter().find_map(|r| r.as_ref().err()) {
        Some(e) if parsed.iter().all(Result::is_err) => {
            format!("the record at {name} is not a DKIM key record: {e}")
        }
        _ if parsed.iter().flatten().any(|r| r.p.is_empty()) => {
            format!("{name} publishes a revoked key (empty p=)")
        }
        _ => format!("{name} publishes a different key"),
    };
    (Finding::fail(Check::Dkim, detail, format!("replace it: {publish}")), false)
}

struct DkimRecord {
    k: String,
    p: String,
}

/// The tags of a DKIM key record (RFC 6376 §3.6.1) that a check needs.
fn parse_dkim(txt: &str) -> Result<DkimRecord, String> {
    let (mut k, mut p, mut seen_p) = ("rsa".to_owned(), String::new(), false);
    for (i, tag) in txt.split(';').map(str::trim).filter(|t| !t.is_empty()).enumerate() {
        let (name, value) = tag.split_once('=').ok_or_else(|| format!("{tag:?} is not tag=value"))?;
        let value: String = value.split_whitespace().collect();
        match name.trim() {
            "v" if i == 0 && value != "DKIM1" => return Err(format!("v={value}, not DKIM1")),
            "v" if i != 0 => return Err("v= must come first".into()),
            "k" => k = value,
            "p" => {
                p = value;
                seen_p = true;
            }
            _ => {}
        }
    }
    if !seen_p {
        return Err("no p= tag".into());
    }
    Ok(DkimRecord { k, p })
}

fn spf(domain: &Domain, answer: &Answer, settings: &DomainSettings) -> Finding {
    let name = domain.as_str();
    let wanted = platform_spf(settings);
    let suggestion = if wanted.is_empty() {
        "v=spf1 ... ~all".to_owned()
    } else {
        format!("v=spf1 {} ~all", wanted.join(" "))
    };
    let records: Vec<&String> = match answer {
        Answer::Failed(e) => return dns_failed(Check::Spf, name, e),
        Answer::Nothing => Vec::new(),
        Answer::Found(r) => r.iter().filter(|t| is_spf(t)).collect(),
    };
    match records.as_slice() {
        [] => Finding::fail(
            Check::Spf,
            format!("no SPF record at {name}"),
            format!("publish TXT {name} \"{suggestion}\""),
        ),
        [record] => {
            if wanted.is_empty() {
                return Finding::warn(
                    Check::Spf,
                    format!(
                        "{name} has an SPF record; the platform's relays are not configured, so it cannot be checked"
                    ),
                    "the operator sets domains.spf_include or domains.spf_addresses".into(),
                );
            }
            let terms: Vec<String> =
                record.split_whitespace().map(|t| t.trim_start_matches('+').to_ascii_lowercase()).collect();
            let missing: Vec<&String> =
                wanted.iter().filter(|m| !terms.contains(&m.to_ascii_lowercase())).collect();
            if missing.is_empty() {
                Finding::pass(Check::Spf, format!("{name}'s SPF record authorises the platform"))
            } else {
                let missing = missing.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(" ");
                Finding::fail(
                    Check::Spf,
                    format!("{name}'s SPF record does not authorise the platform (no {missing})"),
                    format!("add {missing} before the record's all"),
                )
            }
        }
        many => Finding::fail(
            Check::Spf,
            format!("{name} has {} SPF records; receivers treat that as an error", many.len()),
            format!("merge them into one: \"{suggestion}\""),
        ),
    }
}

fn is_spf(txt: &str) -> bool {
    let t = txt.trim_start().to_ascii_lowercase();
    t == "v=spf1" || t.starts_with("v=spf1 ")
}

fn dmarc(domain: &Domain, answer: &Answer, settings: &DomainSettings) -> Finding {
    let name = format!("_dmarc.{}", domain.as_str());
    let rua = settings.dmarc_rua.as_deref().map(|r| format!(" rua=mailto:{r};")).unwrap_or_default();
    let start = format!("publish TXT {name} \"v=DMARC1; p=none;{rua} adkim=r; aspf=r\"");
    let records: Vec<&String> = match answer {
        Answer::Failed(e) => return dns_failed(Check::Dmarc, &name, e),
        Answer::Nothing => Vec::new(),
        // Anything that names DMARC1 is meant as the record, so that one with
        // its tags out of order is reported rather than passed over.
        Answer::Found(r) => r.iter().filter(|t| t.to_ascii_uppercase().contains("V=DMARC1")).collect(),
    };
    let record = match records.as_slice() {
        [] => {
            return Finding::warn(
                Check::Dmarc,
                format!("no DMARC record at {name}; Gmail, Yahoo and Microsoft require one of bulk senders"),
                start,
            );
        }
        [one] => one,
        many => {
            return Finding::fail(
                Check::Dmarc,
                format!("{name} has {} DMARC records; receivers ignore them all", many.len()),
                "keep one".into(),
            );
        }
    };
    let policy = match parse_dmarc(record) {
        Ok(p) => p,
        Err(e) => {
            return Finding::fail(
                Check::Dmarc,
                format!("{name}: {e}"),
                format!("fix the record, e.g. {start}"),
            );
        }
    };
    let alignment = format!(
        "alignment: DKIM {}, SPF {}",
        if policy.adkim_strict { "strict" } else { "relaxed" },
        if policy.aspf_strict { "strict" } else { "relaxed" }
    );
    match policy.p.as_str() {
        "none" => Finding::warn(
            Check::Dmarc,
            format!("{name}: p=none, reports only; {alignment}"),
            "once the reports show your mail aligned, move to p=quarantine, then p=reject".into(),
        ),
        p => Finding::pass(Check::Dmarc, format!("{name}: p={p}; {alignment}")),
    }
}

struct DmarcPolicy {
    p: String,
    adkim_strict: bool,
    aspf_strict: bool,
}

/// The tags of a DMARC record (RFC 7489 §6.3) that a check needs, with the
/// syntax errors a receiver would reject it for.
fn parse_dmarc(txt: &str) -> Result<DmarcPolicy, String> {
    let mut tags = Vec::new();
    for tag in txt.split(';').map(str::trim).filter(|t| !t.is_empty()) {
        let (k, v) = tag.split_once('=').ok_or_else(|| format!("{tag:?} is not tag=value"))?;
        tags.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    if tags.first().map(|(k, v)| (k.as_str(), v.as_str())) != Some(("v", "DMARC1")) {
        return Err("v=DMARC1 must come first".into());
    }
    let tag = |name: &str| tags.iter().find(|(k, _)| k == name).map(|(_, v)| v.to_ascii_lowercase());
    if tags.get(1).map(|(k, _)| k.as_str()) != Some("p") {
        return Err("p= must follow v=DMARC1".into());
    }
    let p = tag("p").unwrap_or_default();
    if !["none", "quarantine", "reject"].contains(&p.as_str()) {
        return Err(format!("p={p} is not none, quarantine or reject"));
    }
    let strict = |name: &str| -> Result<bool, String> {
        match tag(name).as_deref() {
            None | Some("r") => Ok(false),
            Some("s") => Ok(true),
            Some(other) => Err(format!("{name}={other} is not r or s")),
        }
    };
    if let Some(pct) = tag("pct")
        && pct.parse::<u8>().map_or(true, |n| n > 100)
    {
        return Err(format!("pct={pct} is not 0 to 100"));
    }
    Ok(DmarcPolicy { p, adkim_strict: strict("adkim")?, aspf_strict: strict("aspf")? })
}

fn return_path(domain: &Domain, answer: &Answer, host: &str, settings: &DomainSettings) -> Finding {
    let name = format!("{}.{}", settings.return_path_label, domain.as_str());
    let publish = format!("publish CNAME {name} {}.", host.trim_end_matches('.'));
    match answer {
        Answer::Failed(e) => dns_failed(Check::ReturnPath, &name, e),
        Answer::Nothing => Finding::fail(Check::ReturnPath, format!("{name} does not resolve"), publish),
        Answer::Found(targets) => {
            Finding::pass(Check::ReturnPath, format!("{name} resolves ({})", targets.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_zone_says_is_clipped_before_it_is_kept() {
        let long = "x".repeat(10_000);
        let f = Finding::fail(Check::Spf, format!("é{long}"), "fix".into());
        assert_eq!(f.detail.chars().count(), DETAIL_CHARS + 1);
        assert!(f.detail.starts_with('é') && f.detail.ends_with('…'));
        assert_eq!(Finding::pass(Check::Spf, "short".into()).detail, "short");
    }
    use crate::tests::settings;
    use mailpipe_core::DkimAlgorithm;

    fn key(state: KeyState, public: &str, algorithm: DkimAlgorithm) -> StoredKey {
        StoredKey {
            selector: mailpipe_core::Selector::parse(if state == KeyState::Pending { "next" } else { "s1" })
                .unwrap(),
            algorithm,
            state,
            public_key: public.into(),
            sealed_key: Vec::new(),
            created_at: 0,
        }
    }

    fn found(t: &str) -> Answer {
        Answer::Found(vec![t.to_owned()])
    }

    fn run(keys: &[StoredKey], dkim: Vec<Answer>, spf: Answer, dmarc: Answer) -> Report {
        let d = Domain::parse("acme.example").unwrap();
        evaluate(&d, keys, &Answers { dkim, spf, dmarc, return_path: Some(Answer::Nothing) }, &settings())
    }

    fn outcome(r: &Report, check: Check) -> (Outcome, String) {
        let f = r.findings.iter().find(|f| f.check == check).unwrap();
        (f.outcome, f.detail.clone())
    }

    const SPF_OK: &str = "v=spf1 mx include:_spf.mailpipe.test ~all";

    #[test]
    fn dkim_matches_only_the_published_key_of_the_right_kind() {
        let k = [key(KeyState::Active, "PUB", DkimAlgorithm::Ed25519Sha256)];
        let ok = run(&k, vec![found("v=DKIM1; k=ed25519; p=PUB")], found(SPF_OK), Answer::Nothing);
        assert!(ok.active_published);
        assert_eq!(outcome(&ok, Check::Dkim).0, Outcome::Pass);
        for (answer, says) in [
            (Answer::Nothing, "no DKIM record"),
            (found("v=DKIM1; k=ed25519; p=OTHER"), "different key"),
            (found("v=DKIM1; k=ed25519; p="), "revoked"),
            (found("v=DKIM1; k=rsa; p=PUB"), "k=rsa"),
            (found("hello world"), "not a DKIM key record"),
            (Answer::Failed("timed out".into()), "DNS did not answer"),
        ] {
            let r = run(&k, vec![answer], found(SPF_OK), Answer::Nothing);
            assert!(!r.active_published, "{says}");
            let (o, detail) = outcome(&r, Check::Dkim);
            assert_eq!(o, Outcome::Fail, "{detail}");
            assert!(detail.contains(says), "{detail}");
        }
        // A record split into strings arrives joined; whitespace inside p= is folded.
        let r = run(&k, vec![found("v=DKIM1; k=ed25519; p=P U\tB")], found(SPF_OK), Answer::Nothing);
        assert!(r.active_published);
    }

    #[test]
    fn a_rotation_waits_for_its_record_without_failing_the_domain() {
        let keys = [
            key(KeyState::Active, "OLD", DkimAlgorithm::RsaSha256),
            key(KeyState::Pending, "NEW", DkimAlgorithm::RsaSha256),
        ];
        let waiting =
            run(&keys, vec![found("v=DKIM1; p=OLD"), Answer::Nothing], found(SPF_OK), Answer::Nothing);
        assert!(waiting.active_published && waiting.pending_published.is_none());
        assert!(
            waiting.findings.iter().filter(|f| f.check == Check::Dkim).all(|f| f.outcome != Outcome::Fail)
        );
        let ready = run(
            &keys,
            vec![found("v=DKIM1; p=OLD"), found("v=DKIM1; p=NEW")],
            found(SPF_OK),
            Answer::Nothing,
        );
        assert_eq!(ready.pending_published, Some(1));
    }

    #[test]
    fn spf_must_exist_once_and_authorise_the_platform() {
        let k = [key(KeyState::Active, "P", DkimAlgorithm::RsaSha256)];
        let spf = |a: Answer| outcome(&run(&k, vec![found("p=P")], a, Answer::Nothing), Check::Spf);
        assert_eq!(spf(found(SPF_OK)).0, Outcome::Pass);
        assert_eq!(spf(found("v=spf1 +include:_SPF.mailpipe.test -all")).0, Outcome::Pass);
        let (o, d) = spf(found("v=spf1 include:_spf.google.com ~all"));
        assert_eq!(o, Outcome::Fail);
        assert!(d.contains("does not authorise the platform"), "{d}");
        assert!(spf(Answer::Nothing).1.contains("no SPF record"));
        assert!(spf(found("google-site-verification=x")).1.contains("no SPF record"));
        assert!(spf(Answer::Found(vec![SPF_OK.into(), "v=spf1 -all".into()])).1.contains("2 SPF records"));
    }

    #[test]
    fn dmarc_none_warns_reject_passes_missing_warns_and_bad_syntax_fails() {
        let k = [key(KeyState::Active, "P", DkimAlgorithm::RsaSha256)];
        let dmarc = |a: Answer| outcome(&run(&k, vec![found("p=P")], found(SPF_OK), a), Check::Dmarc);
        assert_eq!(dmarc(found("v=DMARC1; p=none; rua=mailto:d@acme.example")).0, Outcome::Warn);
        let (o, d) = dmarc(found("v=DMARC1; p=reject; adkim=s"));
        assert_eq!(o, Outcome::Pass);
        assert!(d.contains("DKIM strict"), "{d}");
        assert_eq!(dmarc(found("v=DMARC1; p=quarantine; pct=50")).0, Outcome::Pass);
        let (o, d) = dmarc(Answer::Nothing);
        assert_eq!(o, Outcome::Warn);
        assert!(d.contains("no DMARC record"), "{d}");
        for bad in [
            "v=DMARC1; p=maybe",
            "p=reject; v=DMARC1",
            "v=DMARC1; rua=mailto:x; p=none",
            "v=DMARC1; p=none; adkim=x",
            "v=DMARC1; p=none; pct=150",
            "v=DMARC1 p=none",
        ] {
            let (o, d) = dmarc(found(bad));
            assert_eq!(o, Outcome::Fail, "{bad}: {d}");
        }
    }

    #[test]
    fn the_return_path_must_resolve_when_one_is_configured() {
        let k = [key(KeyState::Active, "P", DkimAlgorithm::RsaSha256)];
        let d = Domain::parse("acme.example").unwrap();
        let with = |rp: Answer| {
            let a = Answers {
                dkim: vec![found("p=P")],
                spf: found(SPF_OK),
                dmarc: Answer::Nothing,
                return_path: Some(rp),
            };
            let r = evaluate(&d, &k, &a, &settings());
            outcome(&r, Check::ReturnPath)
        };
        assert_eq!(with(Answer::Found(vec!["bounces.mailpipe.test".into()])).0, Outcome::Pass);
        assert!(with(Answer::Nothing).1.contains("bounces.acme.example does not resolve"));
    }
}
