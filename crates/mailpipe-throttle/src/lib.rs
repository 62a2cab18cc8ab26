//! Send-rate limits: typed rate specs, provider groups, and keyed governor
//! limiters with an injected clock. Pure: no I/O, and time comes from the
//! clock the caller gives ([`Throttle::with_clock`]), so tests step it.
//!
//! A message to `domain` is limited under one key: the domain's provider
//! group if it has one (`gmail.com` and `googlemail.com` → `google`), else
//! the domain itself. The caller may pass the group it found itself (by
//! the domain's MX hosts) in the domain's place: every method taking a
//! domain takes a group name alike. Keys with a configured limit get their own limiter;
//! other domains share the default quota, each domain separately. A global
//! cap, if set, applies on top.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference as _};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A rate such as `"600/m"` or `"3000/m, burst=100"`: `count` messages per
/// `per`, spread evenly, with at most `burst` sent back to back. The burst
/// defaults to 1: a steady pace, which is what receiving providers like.
/// Parsed once, where configuration is loaded (`TryFrom<String>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct RateSpec {
    pub count: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate {input:?}: {reason} (expected like \"600/m\" or \"3000/m, burst=100\"; units s, m, h, d)")]
pub struct RateSpecError {
    input: String,
    reason: &'static str,
}

impl FromStr for RateSpec {
    type Err = RateSpecError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| RateSpecError { input: input.to_owned(), reason };
        let mut parts = input.split(',').map(str::trim);
        let rate = parts.next().unwrap_or_default();
        let (count, unit) = rate.split_once('/').ok_or(err("missing '/'"))?;
        let count: u32 = count.trim().parse().map_err(|_| err("count is not a number"))?;
        let count = NonZeroU32::new(count).ok_or(err("count must be at least 1"))?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(err("unknown unit")),
        };
        let mut burst = NonZeroU32::MIN;
        for opt in parts {
            let value = opt.strip_prefix("burst=").ok_or(err("unknown option"))?;
            let b: u32 = value.trim().parse().map_err(|_| err("burst is not a number"))?;
            burst = NonZeroU32::new(b).ok_or(err("burst must be at least 1"))?;
        }
        Ok(RateSpec { count, per, burst })
    }
}

impl TryFrom<String> for RateSpec {
    type Error = RateSpecError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl RateSpec {
    /// The gap between two messages at the steady rate.
    pub fn interval(&self) -> Duration {
        // `per / count` is at least 1 ns for any count a u32 holds.
        (self.per / self.count.get()).max(Duration::from_nanos(1))
    }

    /// As a governor quota.
    pub fn quota(&self) -> Quota {
        let every = self.interval();
        Quota::with_period(every)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(self.burst)
    }
}

/// `[throttle]` as written: rates still strings. [`ThrottleConfig`]'s
/// `TryFrom` parses every one and names each that is wrong.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ThrottleSpec {
    /// Per recipient domain, for domains without a group or limit of their own.
    #[serde(default)]
    pub default: Option<String>,
    /// Over everything one worker sends.
    #[serde(default)]
    pub global: Option<String>,
    /// Provider group → its domains.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Group or domain → its rate.
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// A rate of [`ThrottleSpec`] that does not parse, with the key it is under
/// (`default`, `global`, `limits."example.com"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {error}")]
pub struct BadRate {
    pub key: String,
    pub error: RateSpecError,
}

impl TryFrom<ThrottleSpec> for ThrottleConfig {
    /// Every bad rate, not only the first.
    type Error = Vec<BadRate>;

    fn try_from(spec: ThrottleSpec) -> Result<Self, Vec<BadRate>> {
        let mut errors = Vec::new();
        let mut parse = |key: String, v: &str| -> Option<RateSpec> {
            v.parse().map_err(|error| errors.push(BadRate { key, error })).ok()
        };
        let default = spec.default.as_deref().and_then(|v| parse("default".into(), v));
        let global = spec.global.as_deref().and_then(|v| parse("global".into(), v));
        let limits = spec
            .limits
            .iter()
            .filter_map(|(k, v)| parse(format!("limits.{k:?}"), v).map(|r| (k.clone(), r)))
            .collect();
        let groups = spec.groups.into_iter().collect();
        if errors.is_empty() { Ok(ThrottleConfig { groups, limits, default, global }) } else { Err(errors) }
    }
}

/// Limits as configured, every rate parsed.
#[derive(Debug, Clone, Default)]
pub struct ThrottleConfig {
    /// Group name → its domains.
    pub groups: HashMap<String, Vec<String>>,
    /// Group name or domain → its limit.
    pub limits: HashMap<String, RateSpec>,
    /// Per domain, for domains without a group or limit of their own.
    pub default: Option<RateSpec>,
    /// Over everything this worker sends.
    pub global: Option<RateSpec>,
}

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Keyed<C> = RateLimiter<String, HashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// How long a provider is paused after its first "slow down" (421, 4.7.x);
/// each further one doubles it, up to [`MAX_BACKOFF_FACTOR`] times.
pub const SLOW_DOWN_BASE: Duration = Duration::from_secs(30);
pub const MAX_BACKOFF_FACTOR: u32 = 32;

/// A key that told us to slow down: paused for `hold` from `since`.
struct SlowDown<I> {
    factor: u32,
    since: I,
    hold: Duration,
}

pub struct Throttle<C: Clock = DefaultClock> {
    group_of: HashMap<String, String>,
    /// The steady-state gap between messages per named key, the default and
    /// the global cap: what a backlog of parked jobs is spaced by.
    intervals: HashMap<String, Duration>,
    default_interval: Option<Duration>,
    global_interval: Option<Duration>,
    // A std mutex: held for a lookup or an update, never across an await.
    slowed: std::sync::Mutex<HashMap<String, SlowDown<C::Instant>>>,
    named: HashMap<String, Direct<C>>,
    default: Option<Keyed<C>>,
    global: Option<Direct<C>>,
    clock: C,
}

impl Throttle<DefaultClock> {
    pub fn new(cfg: &ThrottleConfig) -> Self {
        Self::with_clock(cfg, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Throttle<C> {
    pub fn with_clock(cfg: &ThrottleConfig, clock: C) -> Self {
        let group_of = cfg
            .groups
            .iter()
            .flat_map(|(g, ds)| ds.iter().map(move |d| (d.to_ascii_lowercase(), g.clone())))
            .collect();
        let named = cfg
            .limits
            .iter()
            .map(|(k, spec)| {
                (k.to_ascii_lowercase(), RateLimiter::direct_with_clock(spec.quota(), clock.clone()))
            })
            .collect();
        let intervals =
            cfg.limits.iter().map(|(k, spec)| (k.to_ascii_lowercase(), spec.interval())).collect();
        Self {
            group_of,
            intervals,
            default_interval: cfg.default.map(|s| s.interval()),
            global_interval: cfg.global.map(|s| s.interval()),
            slowed: std::sync::Mutex::new(HashMap::new()),
            named,
            default: cfg.default.map(|s| RateLimiter::hashmap_with_clock(s.quota(), clock.clone())),
            global: cfg.global.map(|s| RateLimiter::direct_with_clock(s.quota(), clock.clone())),
            clock,
        }
    }

    /// The provider group of `domain`, if it is in one.
    pub fn group(&self, domain: &str) -> Option<&str> {
        self.group_of.get(domain).map(String::as_str)
    }

    /// The key `domain` is limited under: its provider group, else itself.
    pub fn key<'a>(&'a self, domain: &'a str) -> &'a str {
        self.group_of.get(domain).map(String::as_str).unwrap_or(domain)
    }

    /// The key a message to `domain`, whose provider group was found to be
    /// `found` (by its MX hosts), is limited under: the domain's own
    /// limit if it has one (the operator's word for that domain wins),
    /// else `[throttle.groups]`'s group, else the found group if
    /// `[throttle.limits]` gives that group a rate, else the domain. A
    /// group without a rate of its own is no pacing key: its domains keep
    /// the default rate each, and one customer's "slow down" at a shared
    /// gateway does not pause the others.
    pub fn key_for<'a>(&'a self, domain: &'a str, found: Option<&'a str>) -> &'a str {
        if self.named.contains_key(domain) {
            return domain;
        }
        if let Some(g) = self.group_of.get(domain) {
            return g;
        }
        match found {
            Some(g) if self.named.contains_key(g) => g,
            _ => domain,
        }
    }

    /// The steady-state gap between two messages to `domain` under its
    /// limits (the slower of its own key's and the global cap), if limited.
    pub fn interval(&self, domain: &str) -> Option<Duration> {
        let key = self.key(domain);
        let own = self.intervals.get(key).copied().or(if self.named.contains_key(key) {
            None
        } else {
            self.default_interval
        });
        match (own, self.global_interval) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// `Ok` if a message to `domain` may go now (and counts it), else how
    /// long to wait before asking again.
    pub fn check(&self, domain: &str) -> Result<(), Duration> {
        let key = self.key(domain);
        let now = self.clock.now();
        if let Some(b) = self.slowed.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            let elapsed: Duration = now.duration_since(b.since).into();
            if elapsed < b.hold {
                return Err(b.hold - elapsed);
            }
        }
        let keyed = match self.named.get(key) {
            Some(l) => l.check(),
            None => match &self.default {
                Some(l) => l.check_key(&key.to_owned()),
                None => Ok(()),
            },
        };
        keyed.map_err(|nu| nu.wait_time_from(now))?;
        if let Some(g) = &self.global {
            g.check().map_err(|nu| nu.wait_time_from(now))?;
        }
        Ok(())
    }

    /// The provider of `domain` said "slow down" (421 or 4.7.x): pause its key
    /// for [`SLOW_DOWN_BASE`], doubling with each further report.
    pub fn slow_down(&self, domain: &str) {
        let key = self.key(domain).to_owned();
        let now = self.clock.now();
        let mut map = self.slowed.lock().unwrap_or_else(|p| p.into_inner());
        let factor = map.get(&key).map_or(1, |b| (b.factor * 2).min(MAX_BACKOFF_FACTOR));
        map.insert(key, SlowDown { factor, since: now, hold: SLOW_DOWN_BASE * factor });
    }

    /// A message to `domain` was accepted: halve its back-off, so a provider
    /// that slowed us down recovers step by step rather than at once.
    pub fn recovered(&self, domain: &str) {
        let key = self.key(domain);
        let mut map = self.slowed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get_mut(key) {
            if b.factor <= 1 {
                map.remove(key);
            } else {
                b.factor /= 2;
            }
        }
    }

    /// Forgets per-domain state of domains idle long enough to be full again.
    pub fn evict_idle(&self) {
        if let Some(d) = &self.default {
            d.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn spec(s: &str) -> RateSpec {
        s.parse().unwrap()
    }

    #[test]
    fn a_found_group_paces_only_with_a_rate_of_its_own_and_a_domain_limit_wins() {
        let spec = ThrottleSpec {
            default: Some("600/m".into()),
            limits: [("google".into(), "3000/m".into()), ("bigcorp.example".into(), "60/m".into())].into(),
            groups: [("google".into(), vec!["gmail.com".into()])].into(),
            ..Default::default()
        };
        let t = Throttle::new(&ThrottleConfig::try_from(spec).unwrap());
        assert_eq!(t.key_for("acme.example", Some("google")), "google", "a group with a rate");
        assert_eq!(
            t.key_for("bigcorp.example", Some("google")),
            "bigcorp.example",
            "the domain's own limit wins"
        );
        assert_eq!(t.key_for("shop.example", Some("mimecast")), "shop.example", "a group without a rate");
        assert_eq!(t.key_for("gmail.com", None), "google", "[throttle.groups]");
        assert_eq!(t.key_for("plain.example", None), "plain.example");
    }

    #[test]
    fn parses_specs_and_names_what_is_wrong() {
        assert_eq!(
            spec("600/m"),
            RateSpec { count: 600.try_into().unwrap(), per: Duration::from_secs(60), burst: NonZeroU32::MIN }
        );
        assert_eq!(spec(" 10 / s , burst=5 ").burst.get(), 5);
        assert_eq!(spec("100/h").per, Duration::from_secs(3600));
        for bad in ["600", "0/m", "x/m", "5/week", "5/m, burst=0", "5/m, speed=3", ""] {
            let e = bad.parse::<RateSpec>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    /// Counts how many sends `check` allows in `window`, stepping a fake clock.
    fn allowed(
        t: &Throttle<FakeRelativeClock>,
        clock: &FakeRelativeClock,
        domain: &str,
        window: Duration,
    ) -> u32 {
        let step = Duration::from_millis(10);
        let mut n = 0;
        let mut elapsed = Duration::ZERO;
        while elapsed < window {
            while t.check(domain).is_ok() {
                n += 1;
            }
            clock.advance(step);
            elapsed += step;
        }
        n
    }

    #[test]
    fn a_limit_holds_over_a_minute_and_groups_share_it() {
        let clock = FakeRelativeClock::default();
        let cfg = ThrottleConfig {
            groups: HashMap::from([("google".into(), vec!["gmail.com".into(), "googlemail.com".into()])]),
            limits: HashMap::from([("google".into(), spec("120/m")), ("slow.example".into(), spec("6/m"))]),
            default: Some(spec("60/m, burst=10")),
            global: None,
        };
        let t = Throttle::with_clock(&cfg, clock.clone());
        assert_eq!(t.key("googlemail.com"), "google");
        assert_eq!(t.key("other.example"), "other.example");
        assert_eq!((t.group("gmail.com"), t.group("other.example")), (Some("google"), None));
        // gmail.com and googlemail.com draw on one budget of 120 a minute.
        let a = allowed(&t, &clock, "gmail.com", Duration::from_secs(30));
        let b = allowed(&t, &clock, "googlemail.com", Duration::from_secs(30));
        assert!((119..=121).contains(&(a + b)), "google got {a} + {b} in a minute");
        assert!((6..=7).contains(&allowed(&t, &clock, "slow.example", Duration::from_secs(60))));
        // Unknown domains each get the default, burst first.
        let c = allowed(&t, &clock, "x.example", Duration::from_secs(60));
        assert!((69..=71).contains(&c), "default 60/m plus a burst of 10: {c}");
    }

    #[test]
    fn a_throttled_domain_does_not_hold_up_another() {
        let clock = FakeRelativeClock::default();
        let cfg = ThrottleConfig { default: Some(spec("1/m")), ..Default::default() };
        let t = Throttle::with_clock(&cfg, clock.clone());
        assert!(t.check("a.example").is_ok());
        let wait = t.check("a.example").unwrap_err();
        assert!(wait > Duration::from_secs(59) && wait <= Duration::from_secs(60), "{wait:?}");
        assert!(t.check("b.example").is_ok(), "b has its own budget");
    }

    #[test]
    fn the_global_cap_applies_on_top() {
        let clock = FakeRelativeClock::default();
        let cfg = ThrottleConfig { global: Some(spec("3/s, burst=3")), ..Default::default() };
        let t = Throttle::with_clock(&cfg, clock.clone());
        let sent = ["a.example", "b.example", "c.example", "d.example"]
            .iter()
            .filter(|d| t.check(d).is_ok())
            .count();
        assert_eq!(sent, 3);
        clock.advance(Duration::from_millis(334));
        assert!(t.check("d.example").is_ok());
    }

    #[test]
    fn slow_down_pauses_the_provider_doubles_and_recovers_gradually() {
        let clock = FakeRelativeClock::default();
        let cfg = ThrottleConfig {
            groups: HashMap::from([("google".into(), vec!["gmail.com".into(), "googlemail.com".into()])]),
            ..Default::default()
        };
        let t = Throttle::with_clock(&cfg, clock.clone());
        t.slow_down("gmail.com");
        let wait = t.check("googlemail.com").unwrap_err();
        assert_eq!(wait, SLOW_DOWN_BASE, "the whole group pauses");
        assert!(t.check("other.example").is_ok(), "other providers do not");
        clock.advance(SLOW_DOWN_BASE);
        assert!(t.check("gmail.com").is_ok());
        // A second report doubles the pause; a third doubles it again.
        t.slow_down("gmail.com");
        assert_eq!(t.check("gmail.com").unwrap_err(), SLOW_DOWN_BASE * 2);
        t.slow_down("gmail.com");
        assert_eq!(t.check("gmail.com").unwrap_err(), SLOW_DOWN_BASE * 4);
        clock.advance(SLOW_DOWN_BASE * 4);
        // Successes halve the factor step by step: 4 → 2 → 1 → gone.
        t.recovered("gmail.com");
        t.slow_down("gmail.com");
        assert_eq!(t.check("gmail.com").unwrap_err(), SLOW_DOWN_BASE * 4, "factor 2 doubled again");
        clock.advance(SLOW_DOWN_BASE * 4);
        for _ in 0..3 {
            t.recovered("gmail.com");
        }
        t.slow_down("gmail.com");
        assert_eq!(
            t.check("gmail.com").unwrap_err(),
            SLOW_DOWN_BASE,
            "fully recovered: back to the base pause"
        );
        // It never grows past the cap.
        for _ in 0..20 {
            t.slow_down("gmail.com");
        }
        assert_eq!(t.check("gmail.com").unwrap_err(), SLOW_DOWN_BASE * MAX_BACKOFF_FACTOR);
    }

    #[test]
    fn a_spec_parses_whole_or_names_every_bad_rate() {
        let spec: ThrottleSpec = toml::from_str(
            "default = \"fast\"\n[groups]\ngoogle = [\"gmail.com\"]\n[limits]\n\"a.example\" = \"5/week\"\ngoogle = \"100/m, burst=10\"\n",
        )
        .unwrap();
        let keys: Vec<String> =
            ThrottleConfig::try_from(spec).unwrap_err().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["default", "limits.\"a.example\""]);
        let spec: ThrottleSpec = toml::from_str(
            "global = \"1000/s\"\n[groups]\ngoogle = [\"gmail.com\"]\n[limits]\ngoogle = \"100/m\"\n",
        )
        .unwrap();
        let t = ThrottleConfig::try_from(spec).unwrap();
        assert_eq!(t.limits["google"].count.get(), 100);
        assert_eq!(t.groups["google"], vec!["gmail.com".to_string()]);
        assert!(t.global.is_some() && t.default.is_none());
    }

    #[test]
    fn no_limits_means_no_waiting() {
        let t = Throttle::new(&ThrottleConfig::default());
        assert!((0..10_000).all(|_| t.check("any.example").is_ok()));
    }
}
