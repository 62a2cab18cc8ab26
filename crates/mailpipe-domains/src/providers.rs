//! Which mailbox provider a recipient domain's mail goes to, found from the
//! domain's MX hosts: a company domain hosted by Google Workspace or
//! Microsoft 365 is paced, backed off and counted with `google` or
//! `microsoft`, as `gmail.com` is, because it is the same receiving
//! infrastructure with the same limits and the same reputation.
//!
//! A domain in `[throttle.groups]` keeps the group written there (an
//! override, and what works with no DNS at all). Otherwise the domain's MX
//! hosts are looked up through the configured servers and matched against
//! `[providers.mx]` (group → host suffixes); the answer is cached for the
//! record's TTL (clamped to `min_ttl_secs..=max_ttl_secs`). A domain with
//! no MX, or none that matches, has no group; a lookup that fails is
//! retried after `failure_ttl_secs`, and meanwhile the domain stands alone,
//! so that DNS trouble slows nothing down.
//!
//! Recipient domains are the tenants' to choose, so a hostile one can name
//! domains whose DNS never answers, or floods of new ones: at most
//! `max_lookups` lookups run at once (a send that finds them all busy goes
//! on ungrouped, at once), and a full cache drops domains of no group
//! before any with one.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};
use mailpipe_core::units::secs;
use serde::Deserialize;

use crate::dns::DnsError;

/// `[providers]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderSettings {
    /// Look recipient domains' MX hosts up (else only `[throttle.groups]`).
    pub mx_lookup: bool,
    /// DNS servers to ask (`"192.0.2.53:53"`); none: the system's.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// How long one lookup may hold a send before the domain goes on alone.
    #[serde(rename = "lookup_timeout_ms", deserialize_with = "mailpipe_core::units::millis")]
    pub lookup_timeout: Duration,
    #[serde(rename = "min_ttl_secs", deserialize_with = "secs")]
    pub min_ttl: Duration,
    #[serde(rename = "max_ttl_secs", deserialize_with = "secs")]
    pub max_ttl: Duration,
    /// How long a failed lookup (a timeout, SERVFAIL) is remembered.
    #[serde(rename = "failure_ttl_secs", deserialize_with = "secs")]
    pub failure_ttl: Duration,
    /// Domains remembered at most; past it, expired ones are dropped, then
    /// those of no group; a cache full of grouped domains takes no more.
    pub max_entries: usize,
    /// Lookups in flight at most, per worker.
    pub max_lookups: usize,
    /// Group → MX host suffixes (`google = ["google.com", "googlemail.com"]`):
    /// a domain whose MX host is or ends in `.<suffix>` is in the group.
    #[serde(default)]
    pub mx: BTreeMap<String, Vec<String>>,
}

impl ProviderSettings {
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.min_ttl > self.max_ttl {
            out.push("providers.min_ttl_secs is above max_ttl_secs".into());
        }
        // A TTL of 0 would ask DNS for every message.
        if self.min_ttl.is_zero() || self.failure_ttl.is_zero() {
            out.push("providers.min_ttl_secs, failure_ttl_secs: at least 1".into());
        }
        if self.max_entries == 0 || self.max_lookups == 0 {
            out.push("providers.max_entries, max_lookups: at least 1".into());
        }
        if self.mx_lookup && self.lookup_timeout.is_zero() {
            out.push("providers.lookup_timeout_ms: at least 1".into());
        }
        for (group, suffixes) in &self.mx {
            if group.is_empty()
                || !group.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                out.push(format!("providers.mx.{group:?}: a group name is lowercase letters, digits and _"));
            }
            if suffixes.iter().any(|s| s.trim_matches('.').is_empty() || s.contains(char::is_whitespace)) {
                out.push(format!("providers.mx.{group}: a suffix is a host name such as \"google.com\""));
            }
        }
        out
    }
}

/// What is known of a domain, and until when.
#[derive(Clone)]
struct Known {
    group: Option<Arc<str>>,
    until: Instant,
}

/// Recipient domain → provider group. Cheap to share.
pub struct Providers {
    overrides: HashMap<String, Arc<str>>,
    /// (suffix, group), longest suffix first, so the most specific wins.
    suffixes: Vec<(String, Arc<str>)>,
    resolver: Option<TokioResolver>,
    settings: ProviderSettings,
    cache: Mutex<HashMap<String, Known>>,
    lookups: tokio::sync::Semaphore,
}

impl Providers {
    /// `overrides`: `[throttle.groups]`, group → its domains.
    pub fn new(
        settings: &ProviderSettings,
        overrides: &HashMap<String, Vec<String>>,
    ) -> Result<Self, DnsError> {
        let overrides = overrides
            .iter()
            .flat_map(|(g, ds)| {
                let g: Arc<str> = Arc::from(g.as_str());
                ds.iter().map(move |d| (d.to_ascii_lowercase(), g.clone()))
            })
            .collect();
        let mut suffixes: Vec<(String, Arc<str>)> = settings
            .mx
            .iter()
            .flat_map(|(g, ss)| {
                let g: Arc<str> = Arc::from(g.as_str());
                ss.iter().map(move |s| (s.trim_matches('.').to_ascii_lowercase(), g.clone()))
            })
            .collect();
        suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        // Ours is the cache, with the TTL clamped as configured.
        let resolver = if settings.mx_lookup {
            Some(crate::dns::uncached_resolver(&settings.nameservers, settings.lookup_timeout)?)
        } else {
            None
        };
        Ok(Self {
            overrides,
            suffixes,
            resolver,
            settings: settings.clone(),
            cache: Mutex::default(),
            lookups: tokio::sync::Semaphore::new(settings.max_lookups),
        })
    }

    /// The group of `domain` if known now, without asking DNS: an
    /// override, or a cached answer.
    pub fn known(&self, domain: &str) -> Option<Arc<str>> {
        if let Some(g) = self.overrides.get(domain) {
            return Some(g.clone());
        }
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(domain).filter(|k| k.until > Instant::now()).and_then(|k| k.group.clone())
    }

    /// The group of `domain`: an override, a cached answer, or its MX hosts
    /// looked up now (within `lookup_timeout`).
    pub async fn group(&self, domain: &str) -> Option<Arc<str>> {
        if let Some(g) = self.overrides.get(domain) {
            return Some(g.clone());
        }
        let Some(resolver) = &self.resolver else { return None };
        if let Some(k) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(domain)
            && k.until > Instant::now()
        {
            return k.group.clone();
        }
        // Every lookup slot busy (slow or hostile DNS): ungrouped, now.
        let Ok(_slot) = self.lookups.try_acquire() else {
            metrics::counter!("mailpipe_provider_lookups_total", "outcome" => "skipped").increment(1);
            return None;
        };
        let started = Instant::now();
        let lookup = tokio::time::timeout(
            self.settings.lookup_timeout,
            resolver.lookup(format!("{}.", domain.trim_end_matches('.')), RecordType::MX),
        )
        .await;
        let (group, ttl, outcome) = match lookup {
            Ok(Ok(l)) => {
                let ttl = l.answers().iter().map(|r| r.ttl).min().unwrap_or(0);
                let hosts: Vec<String> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some(mx.exchange.to_string()),
                        _ => None,
                    })
                    .collect();
                let group = self.group_of_hosts(&hosts);
                let ttl = Duration::from_secs(ttl.into()).clamp(self.settings.min_ttl, self.settings.max_ttl);
                (group, ttl, "found")
            }
            // No MX (or no such domain): no group, for as long as the
            // longest a group is kept.
            Ok(Err(e)) if e.is_no_records_found() => (None, self.settings.max_ttl, "none"),
            Ok(Err(_)) => (None, self.settings.failure_ttl, "failed"),
            Err(_) => (None, self.settings.failure_ttl, "timeout"),
        };
        metrics::counter!("mailpipe_provider_lookups_total", "outcome" => outcome).increment(1);
        metrics::histogram!("mailpipe_provider_lookup_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(
            outcome,
            group = group.as_deref().unwrap_or("-"),
            ttl_secs = ttl.as_secs(),
            "provider by MX"
        );
        self.remember(domain, Known { group: group.clone(), until: Instant::now() + ttl });
        group
    }

    /// The group the MX hosts say, by the most specific suffix any of them
    /// matches.
    fn group_of_hosts(&self, hosts: &[String]) -> Option<Arc<str>> {
        let hosts: Vec<String> = hosts.iter().map(|h| h.trim_end_matches('.').to_ascii_lowercase()).collect();
        self.suffixes
            .iter()
            .find(|(suffix, _)| {
                hosts.iter().any(|h| {
                    h == suffix
                        || (h.ends_with(suffix.as_str()) && h.as_bytes()[h.len() - suffix.len() - 1] == b'.')
                })
            })
            .map(|(_, g)| g.clone())
    }

    fn remember(&self, domain: &str, known: Known) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.settings.max_entries {
            let now = Instant::now();
            cache.retain(|_, k| k.until > now);
        }
        // A flood of made-up domains (no MX, no group) must not push out
        // the domains whose group is known.
        if cache.len() >= self.settings.max_entries {
            cache.retain(|_, k| k.group.is_some());
        }
        if cache.len() >= self.settings.max_entries {
            return;
        }
        cache.insert(domain.to_owned(), known);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ProviderSettings {
        ProviderSettings {
            mx_lookup: false,
            nameservers: Vec::new(),
            lookup_timeout: Duration::from_secs(1),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(86_400),
            failure_ttl: Duration::from_secs(300),
            max_entries: 2,
            max_lookups: 4,
            mx: BTreeMap::from([
                ("google".into(), vec!["google.com".into(), "googlemail.com".into()]),
                ("microsoft".into(), vec!["outlook.com".into()]),
                ("microsoft_eu".into(), vec!["eur.protection.outlook.com".into()]),
            ]),
        }
    }

    #[test]
    fn mx_hosts_map_to_the_most_specific_group_and_overrides_win() {
        let overrides = HashMap::from([("microsoft".to_owned(), vec!["Corp.Example".to_owned()])]);
        let p = Providers::new(&settings(), &overrides).unwrap();
        let g = |hosts: &[&str]| {
            p.group_of_hosts(&hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).map(|g| g.to_string())
        };
        assert_eq!(g(&["aspmx.l.google.com."]).as_deref(), Some("google"));
        assert_eq!(g(&["mx1.example.net.", "alt1.aspmx.l.google.com."]).as_deref(), Some("google"));
        assert_eq!(g(&["acme-com.mail.protection.outlook.com."]).as_deref(), Some("microsoft"));
        assert_eq!(g(&["acme-com.mail.eur.protection.outlook.com."]).as_deref(), Some("microsoft_eu"));
        assert_eq!(g(&["notgoogle.com.", "google.com.evil.example."]), None, "whole labels only");
        assert_eq!(g(&[]), None);
        assert_eq!(p.known("corp.example").as_deref(), Some("microsoft"), "an override, lowercased");
        assert_eq!(p.known("gmail.com"), None, "nothing looked up yet");
    }

    #[test]
    fn the_cache_stays_bounded_and_junk_does_not_push_out_groups() {
        let p = Providers::new(&settings(), &HashMap::new()).unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        let google = || Some(Arc::from("google"));
        p.remember("a.example", Known { group: google(), until: later });
        p.remember("junk1.example", Known { group: None, until: later });
        p.remember("b.example", Known { group: google(), until: later });
        assert_eq!(p.known("b.example").as_deref(), Some("google"), "the ungrouped one made room");
        p.remember("junk2.example", Known { group: None, until: later });
        assert!(p.cache.lock().unwrap().len() <= 2);
        assert_eq!(
            (p.known("a.example").as_deref(), p.known("b.example").as_deref()),
            (Some("google"), Some("google")),
            "a flood of made-up domains leaves the grouped ones"
        );
        let zero = ProviderSettings { min_ttl: Duration::ZERO, ..settings() };
        assert_eq!(zero.problems().len(), 1, "{:?}", zero.problems());
        let bad = ProviderSettings {
            min_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(5),
            ..settings()
        };
        assert_eq!(bad.problems().len(), 1, "{:?}", bad.problems());
        let mut bad = settings();
        bad.mx.insert("Google Inc".into(), vec![" ".into()]);
        assert_eq!(bad.problems().len(), 2, "{:?}", bad.problems());
    }
}
