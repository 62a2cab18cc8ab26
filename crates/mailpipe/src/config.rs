//! One typed configuration tree, layered: `config/default.toml` (built in),
//! then `--config FILE`, then `MAILPIPE__SECTION__KEY` environment variables.
//!
//! Loading reports every problem at once: each unknown key, each section
//! that fails to parse, and each invalid or missing value, by its dotted path.
//! A section that parses is checked even when another does not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use mailpipe_analytics::AnalyticsSettings;
use mailpipe_core::WarmupSettings;
use mailpipe_domains::DomainSettings;
use mailpipe_domains::ProviderSettings;
use mailpipe_feedback::{BounceSettings, ReturnPaths};
use mailpipe_queue::kafka::KafkaSettings;
use mailpipe_render::RenderSettings;
use mailpipe_smtp::{SmtpSettings, TlsMode};
use mailpipe_store::Retention;
use mailpipe_throttle::{ThrottleConfig, ThrottleSpec};
use mailpipe_tracker::TrackerSettings;
use mailpipe_webhooks::WebhookSettings;
use mailpipe_worker::BreakerSettings;
use mailpipe_worker::WorkerSettings;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::Deserialize;

/// The built-in defaults: the embedded single-machine setup.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// Every configuration error found, each naming its key.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        writeln!(f, "invalid configuration ({n} error{}):", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Deserialize)]
pub struct StoreConfig {
    /// What the services connect as. May hold a password, so it is a
    /// secret; [`StoreConfig::redacted_url`] is loggable.
    pub url: SecretString,
    /// What `mailpipe migrate` (and `erase`, to vacuum) connects as on
    /// PostgreSQL: the schema's owner. Unset: [`StoreConfig::url`].
    #[serde(default)]
    pub owner_url: Option<SecretString>,
    pub max_connections: u32,
}

impl StoreConfig {
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose_secret())
    }

    /// The owner's URL, or the services' when none is set.
    pub fn owner_url(&self) -> &SecretString {
        self.owner_url.as_ref().unwrap_or(&self.url)
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// The demo's in-process queue: not durable.
    Memory,
    /// The single-node mode's durable queue, a table in the SQLite store.
    Store,
    Kafka,
}

#[derive(Debug, Deserialize)]
pub struct QueueConfig {
    pub kind: QueueKind,
    /// The in-process queue's bound.
    pub capacity: usize,
    /// The store queue: how often an idle worker looks for new jobs.
    #[serde(rename = "poll_ms", deserialize_with = "mailpipe_core::units::millis")]
    pub poll: Duration,
    /// The store queue: the most jobs it holds; enqueue and the send API
    /// refuse a batch that would pass it.
    pub max_depth: u64,
    pub kafka: KafkaSettings,
}

#[derive(Debug, Deserialize)]
pub struct TokensConfig {
    pub active_key: u16,
    /// Development only: accept the keys published in this repository
    /// ([`PUBLISHED_KEYS`]), which anyone can read and so forge links,
    /// unsubscribes and references with. The tests and the local compose
    /// stack set it; nothing else should.
    #[serde(default)]
    pub allow_published_keys: bool,
    #[serde(default)]
    pub recipient_key: Option<SecretString>,
    /// Keys the client-address hashes of `tracker.ip = "hash"`: a key of
    /// its own, never the recipient key; the hash rotates daily under it.
    #[serde(default)]
    pub ip_key: Option<SecretString>,
    /// Key id → base64 secret.
    #[serde(default)]
    pub keys: BTreeMap<String, SecretString>,
    /// Key id → the day (`YYYY-MM-DD`, UTC) it was retired: it then
    /// verifies only unsubscribe links, for `unsubscribe_grace_days`.
    #[serde(default)]
    pub retired: BTreeMap<String, String>,
    pub unsubscribe_grace_days: u32,
    /// Days a click link works after sending; 0: for ever.
    pub click_ttl_days: u32,
    /// How often workers and trackers re-read the tenants' link generations
    /// (`mailpipe tenant revoke-links`).
    #[serde(rename = "generation_refresh_secs", deserialize_with = "mailpipe_core::units::secs")]
    pub generation_refresh: std::time::Duration,
}

/// A retirement day, `YYYY-MM-DD`, as unix seconds at its start (UTC).
fn retirement_day(id: &str, day: &str) -> Result<u64, String> {
    let bad = || format!("tokens.retired.{id}: {day:?} is not a day (YYYY-MM-DD)");
    let mut parts = day.trim().splitn(3, '-').map(str::parse::<i32>);
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d))) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let month = u8::try_from(m).ok().and_then(|m| time::Month::try_from(m).ok()).ok_or_else(bad)?;
    let date =
        time::Date::from_calendar_date(y, month, u8::try_from(d).map_err(|_| bad())?).map_err(|_| bad())?;
    u64::try_from(date.midnight().assume_utc().unix_timestamp()).map_err(|_| bad())
}

#[derive(Debug, Deserialize)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// The whole configuration. Each section is the settings type of the crate
/// that uses it, deserialized as it is; only the binary's own sections
/// (store, queue kind, tokens, metrics, log) are defined here.
#[derive(Debug)]
pub struct Config {
    pub store: StoreConfig,
    pub queue: QueueConfig,
    pub smtp: SmtpSettings,
    pub worker: WorkerSettings,
    pub render: RenderSettings,
    pub tracker: TrackerSettings,
    pub tokens: TokensConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub domains: DomainSettings,
    /// `[throttle]`, every rate parsed at load.
    pub throttle: ThrottleConfig,
    /// `[providers]`: recipient domains' provider groups by MX.
    pub providers: ProviderSettings,
    pub analytics: AnalyticsSettings,
    pub retention: Retention,
    /// `[bounces]`, as written.
    pub bounces: BounceSettings,
    /// `[breaker]`: the reputation circuit breaker.
    pub breaker: BreakerSettings,
    /// `[webhooks]`: signed webhooks to tenants' endpoints.
    pub webhooks: WebhookSettings,
    /// `[warmup]`: new sending domains' ramps.
    pub warmup: WarmupSettings,
    /// Where return paths point, parsed from `[bounces]` at load; `None`
    /// when no bounce domain is set.
    pub return_paths: Option<ReturnPaths>,
}

/// Decoded token secrets, ready for the keyring.
pub struct TokenSecrets {
    pub keys: Vec<(u16, SecretSlice<u8>)>,
    /// Key id → retired at, unix seconds.
    pub retired: Vec<(u16, u64)>,
    pub ageing: mailpipe_token::Ageing,
    pub recipient_key: SecretSlice<u8>,
    pub ip_key: Option<SecretSlice<u8>>,
}

fn decode_secret(path: &str, s: &SecretString) -> Result<SecretSlice<u8>, String> {
    let raw = s.expose_secret().trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw))
        .map_err(|_| format!("{path}: must be base64"))?;
    if bytes.len() < 32 {
        return Err(format!("{path}: must decode to at least 32 bytes (got {})", bytes.len()));
    }
    Ok(bytes.into())
}

impl Config {
    /// Loads the layers. `env` is the process environment (injected for tests).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut tree: toml::Table =
            DEFAULT_TOML.parse().map_err(|e| ConfigErrors(vec![format!("built-in defaults: {e}")]))?;
        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Ok(text) => match text.parse::<toml::Table>() {
                    Ok(t) => merge(&mut tree, t),
                    Err(e) => errors.push(format!("{}: {}", path.display(), e.to_string().trim())),
                },
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix("MAILPIPE__") {
                let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
                if path.iter().any(String::is_empty) {
                    errors.push(format!("environment variable {k}: empty path segment"));
                    continue;
                }
                set_path(&mut tree, &path, env_value(&v));
            }
        }
        if !errors.is_empty() {
            // Without a parsed file there is no tree worth checking further.
            return Err(ConfigErrors(errors));
        }

        const SECTIONS: [&str; 18] = [
            "store",
            "queue",
            "smtp",
            "worker",
            "render",
            "tracker",
            "tokens",
            "metrics",
            "log",
            "domains",
            "throttle",
            "providers",
            "analytics",
            "retention",
            "bounces",
            "breaker",
            "webhooks",
            "warmup",
        ];
        default_queue_kind(&mut tree);
        for key in tree.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                errors.push(format!("{key}: unknown section (known: {})", SECTIONS.join(", ")));
            }
        }
        fn section<T: serde::de::DeserializeOwned>(
            tree: &toml::Table,
            name: &str,
            errors: &mut Vec<String>,
        ) -> Option<T> {
            let value = tree.get(name).cloned().unwrap_or_else(|| toml::Value::Table(Default::default()));
            let mut unknown = Vec::new();
            let r = serde_ignored::deserialize(value, |p| unknown.push(p.to_string()));
            for u in unknown {
                errors.push(format!("{name}.{u}: unknown key"));
            }
            match r {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push(format!("{name}: {}", e.to_string().trim()));
                    None
                }
            }
        }
        let store = section::<StoreConfig>(&tree, "store", &mut errors);
        let queue = section::<QueueConfig>(&tree, "queue", &mut errors);
        let smtp = section::<SmtpSettings>(&tree, "smtp", &mut errors);
        let worker = section::<WorkerSettings>(&tree, "worker", &mut errors);
        let render = section::<RenderSettings>(&tree, "render", &mut errors);
        let tracker = section::<TrackerSettings>(&tree, "tracker", &mut errors);
        let tokens = section::<TokensConfig>(&tree, "tokens", &mut errors);
        let metrics = section::<MetricsConfig>(&tree, "metrics", &mut errors);
        let log = section::<LogConfig>(&tree, "log", &mut errors);
        let domains = section::<DomainSettings>(&tree, "domains", &mut errors);
        // Rates are parsed here, once; every bad one is named by its key.
        let throttle = section::<ThrottleSpec>(&tree, "throttle", &mut errors).and_then(|spec| {
            ThrottleConfig::try_from(spec)
                .map_err(|bad| errors.extend(bad.iter().map(|b| format!("throttle.{b}"))))
                .ok()
        });
        let providers = section::<ProviderSettings>(&tree, "providers", &mut errors);
        if let Some(p) = &providers {
            errors.extend(p.problems());
        }
        let analytics = section::<AnalyticsSettings>(&tree, "analytics", &mut errors);
        let retention = section::<Retention>(&tree, "retention", &mut errors);
        if let Some(r) = &retention {
            errors.extend(r.problems());
        }
        let bounces = section::<BounceSettings>(&tree, "bounces", &mut errors);
        let breaker = section::<BreakerSettings>(&tree, "breaker", &mut errors);
        let webhooks = section::<WebhookSettings>(&tree, "webhooks", &mut errors);
        let warmup = section::<WarmupSettings>(&tree, "warmup", &mut errors);
        if let Some(w) = &warmup {
            errors.extend(w.problems());
        }
        if let Some(w) = &webhooks {
            errors.extend(w.problems());
        }
        if let Some(b) = &breaker {
            errors.extend(b.problems());
        }
        if let Some(b) = &bounces {
            errors.extend(b.problems());
        }
        let return_paths =
            bounces.as_ref().and_then(|b| b.return_paths().map_err(|e| errors.push(e)).ok()).flatten();

        if let Some(s) = &store {
            check_store(s, &mut errors);
        }
        if let Some(s) = &queue {
            check_queue(s, &mut errors);
        }
        if let (Some(q), Some(s)) = (&queue, &store)
            && q.kind == QueueKind::Store
            && !s.url.expose_secret().starts_with("sqlite:")
        {
            errors.push(
                "queue.kind: \"store\" keeps the send queue in the SQLite store (the single-node mode); with PostgreSQL, use \"kafka\" (or \"memory\": no send queue, events to the store)".into(),
            );
        }
        if let (Some(q), Some(s)) = (&queue, &store)
            && q.kind == QueueKind::Store
            && in_memory_sqlite(s.url.expose_secret())
        {
            errors.push(
                "store.url: the store queue needs a SQLite file (an in-memory database is each connection pool's own, so queued jobs would never be read)".into(),
            );
        }
        if let Some(s) = &smtp {
            check_smtp(s, &mut errors);
        }
        if let Some(s) = &worker {
            check_worker(s, &mut errors);
        }
        if let Some(s) = &render {
            errors.extend(s.problems());
        }
        if let Some(s) = &tracker {
            check_tracker(s, &mut errors);
        }
        if let Some(s) = &tokens {
            check_tokens(s, &mut errors);
        }
        if let Some(s) = &analytics {
            check_limits("analytics", &s.limits(), &mut errors);
        }
        if let Some(s) = &domains {
            check_domains(s, &mut errors);
        }
        if let (Some(t), Some(d)) = (&tokens, &domains) {
            check_published(t, d, &mut errors);
        }
        let (
            Some(store),
            Some(queue),
            Some(smtp),
            Some(worker),
            Some(render),
            Some(tracker),
            Some(tokens),
            Some(metrics),
            Some(log),
            Some(domains),
            Some(throttle),
            Some(providers),
            Some(analytics),
            Some(retention),
            Some(bounces),
            Some(breaker),
            Some(webhooks),
            Some(warmup),
        ) = (
            store, queue, smtp, worker, render, tracker, tokens, metrics, log, domains, throttle, providers,
            analytics, retention, bounces, breaker, webhooks, warmup,
        )
        else {
            return Err(ConfigErrors(errors));
        };
        let cfg = Config {
            store,
            queue,
            smtp,
            worker,
            render,
            tracker,
            tokens,
            metrics,
            log,
            domains,
            throttle,
            providers,
            analytics,
            retention,
            bounces,
            breaker,
            webhooks,
            warmup,
            return_paths,
        };
        if errors.is_empty() { Ok(cfg) } else { Err(ConfigErrors(errors)) }
    }

    /// The key-encryption keys that seal DKIM keys, or an error saying how
    /// to set one. `worker`, `analytics` and `domain` need them; `demo`,
    /// without one, makes a throw-away key and its demo domains afresh.
    pub fn kek_secrets(&self) -> Result<Vec<(u16, SecretSlice<u8>)>, ConfigErrors> {
        if self.domains.keys.is_empty() {
            return Err(ConfigErrors(vec![
                "domains.keys: no key-encryption key is configured (set MAILPIPE__DOMAINS__KEYS__1 to a base64 secret of 32+ bytes)".into(),
            ]));
        }
        // Validated at load.
        Ok(self
            .domains
            .keys
            .iter()
            .filter_map(|(id, s)| Some((id.parse::<u16>().ok()?, decode_secret(id, s).ok()?)))
            .collect())
    }

    /// The token secrets, or an error naming each missing one. `worker` and
    /// `tracker` call this; `demo` makes throw-away secrets instead.
    pub fn token_secrets(&self) -> Result<TokenSecrets, ConfigErrors> {
        let mut errors = Vec::new();
        if self.tokens.keys.is_empty() {
            errors.push("tokens.keys: no signing key is configured (set MAILPIPE__TOKENS__KEYS__1 to a base64 secret of 32+ bytes)".into());
        }
        if self.tokens.recipient_key.is_none() {
            errors.push("tokens.recipient_key: missing (set MAILPIPE__TOKENS__RECIPIENT_KEY to a base64 secret of 32+ bytes)".into());
        }
        if self.tracker.ip == mailpipe_tracker::IpMode::Hash && self.tokens.ip_key.is_none() {
            errors.push("tokens.ip_key: tracker.ip = \"hash\" needs a key of its own (set MAILPIPE__TOKENS__IP_KEY to a base64 secret of 32+ bytes)".into());
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let mut keys = Vec::new();
        for (id, s) in &self.tokens.keys {
            // Validated at load.
            if let (Ok(id), Ok(secret)) = (id.parse::<u16>(), decode_secret(id, s)) {
                keys.push((id, secret));
            }
        }
        let recipient_key = self
            .tokens
            .recipient_key
            .as_ref()
            .map(|r| decode_secret("tokens.recipient_key", r))
            .transpose()
            .map_err(|e| ConfigErrors(vec![e]))?
            .ok_or_else(|| ConfigErrors(vec!["tokens.recipient_key: missing".into()]))?;
        let ip_key = self.tokens.ip_key.as_ref().and_then(|k| decode_secret("tokens.ip_key", k).ok());
        let retired = self
            .tokens
            .retired
            .iter()
            // Validated at load.
            .filter_map(|(id, day)| Some((id.parse::<u16>().ok()?, retirement_day(id, day).ok()?)))
            .collect();
        let ageing = mailpipe_token::Ageing {
            unsubscribe_grace_secs: u64::from(self.tokens.unsubscribe_grace_days) * 86_400,
            click_ttl_secs: (self.tokens.click_ttl_days > 0)
                .then(|| u64::from(self.tokens.click_ttl_days) * 86_400),
        };
        Ok(TokenSecrets { keys, retired, ageing, recipient_key, ip_key })
    }
}

/// `queue.kind`, when no layer sets it, follows the store: the single
/// node's durable queue on a SQLite file; on PostgreSQL (or an in-memory
/// SQLite database) "memory", what it was before
/// the store queue existed (no Kafka: events go to the store), so that a
/// configuration written then loads as it did.
fn default_queue_kind(tree: &mut toml::Table) {
    let file = tree
        .get("store")
        .and_then(|s| s.get("url"))
        .and_then(toml::Value::as_str)
        .is_none_or(|u| u.starts_with("sqlite:") && !in_memory_sqlite(u));
    let queue = tree.entry("queue").or_insert_with(|| toml::Value::Table(Default::default()));
    if let toml::Value::Table(q) = queue
        && !q.contains_key("kind")
    {
        q.insert("kind".into(), toml::Value::String(if file { "store" } else { "memory" }.into()));
    }
}

/// Whether a SQLite URL names a database that lives only in one
/// connection pool's memory: each service would have its own, so a queue
/// in it would be written by one and never read by another.
fn in_memory_sqlite(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    rest.is_empty() || rest.starts_with(":memory:") || url.contains("mode=memory")
}

// The checks that span keys of one section. Each runs when its section
// parsed, so that a value that does not parse in one section never hides
// what is wrong in another.

fn check_store(store: &StoreConfig, errors: &mut Vec<String>) {
    let url = store.url.expose_secret();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:")) {
        errors.push(format!(
            "store.url: must start with postgres:// or sqlite: (got {})",
            store.redacted_url()
        ));
    }
    if store.max_connections == 0 {
        errors.push("store.max_connections: must be at least 1".into());
    }
    if let Some(owner) = &store.owner_url {
        let (o, u) = (owner.expose_secret(), url);
        if o.starts_with("sqlite:") || u.starts_with("sqlite:") {
            errors.push("store.owner_url: only for PostgreSQL (SQLite has no roles)".into());
        } else if !(o.starts_with("postgres://") || o.starts_with("postgresql://")) {
            errors.push(format!("store.owner_url: must start with postgres:// (got {})", redact_url(o)));
        }
    }
}

fn check_queue(queue: &QueueConfig, errors: &mut Vec<String>) {
    if queue.capacity == 0 {
        errors.push("queue.capacity: must be at least 1".into());
    }
    if queue.max_depth == 0 {
        errors.push("queue.max_depth: must be at least 1".into());
    }
    if queue.poll.is_zero() || queue.poll > Duration::from_secs(10) {
        errors.push("queue.poll_ms: from 1 to 10000".into());
    }
    if !(1024..=1_048_576).contains(&queue.kafka.consumer_prefetch_kib) {
        errors.push("queue.kafka.consumer_prefetch_kib: 1024 (1 MiB) to 1048576 (1 GiB)".into());
    }
    errors.extend(queue.kafka.topics.problems());
    errors.extend(queue.kafka.security.problems());
}

fn check_worker(worker: &WorkerSettings, errors: &mut Vec<String>) {
    if worker.max_in_flight == 0 {
        errors.push("worker.max_in_flight: must be at least 1".into());
    }
    if worker.suppression_poll.is_zero() {
        errors.push("worker.suppression_poll_ms: must be at least 1".into());
    }
    if worker.suppression_rebuild < Duration::from_secs(60) {
        errors.push("worker.suppression_rebuild_secs: must be at least 60".into());
    }
    if worker.retry_poll.is_zero() {
        errors.push("worker.retry_poll_ms: must be at least 1".into());
    }
    if worker.retry_lease.as_secs() < 30 {
        errors.push("worker.retry_lease_secs: must be at least 30 (longer than any SMTP transaction)".into());
    }
    if worker.max_attempts == 0 {
        errors.push("worker.max_attempts: must be at least 1".into());
    }
    if worker.ledger_write_timeout < Duration::from_millis(100) {
        errors.push(
            "worker.ledger_write_timeout_ms: must be at least 100 (PostgreSQL cancels every ledger write that runs longer)"
                .into(),
        );
    }
}

fn check_smtp(smtp: &SmtpSettings, errors: &mut Vec<String>) {
    if smtp.username.is_some() != smtp.password.is_some() {
        errors.push("smtp.username, smtp.password: set both or neither".into());
    }
    if smtp.password.is_some() && smtp.tls != TlsMode::Required {
        errors.push(
                "smtp.tls: must be \"required\" when smtp.password is set, so credentials never cross in plain text"
                    .into(),
            );
    }
    if let Some(ca) = &smtp.ca_file
        && !ca.is_file()
    {
        errors.push(format!("smtp.ca_file: {} is not a readable file", ca.display()));
    }
    if smtp.max_connections == 0 {
        errors.push("smtp.max_connections: must be at least 1".into());
    }
}

fn check_tracker(tracker: &TrackerSettings, errors: &mut Vec<String>) {
    if tracker.max_path_bytes < 64 || tracker.max_header_bytes < 512 {
        errors.push("tracker.max_path_bytes, tracker.max_header_bytes: at least 64 and 512".into());
    }
    let p = &tracker.public_url;
    if !(p.starts_with("http://") || p.starts_with("https://")) {
        errors.push(format!("tracker.public_url: must be an http(s) URL (got {p:?})"));
    }
    check_limits("tracker", &tracker.limits(), errors);
}

/// A public listener's limits: a zero would refuse every client, and a
/// huge timeout overflows the server's clock arithmetic.
fn check_limits(section: &str, l: &mailpipe_http::ServeLimits, errors: &mut Vec<String>) {
    let day = std::time::Duration::from_secs(86_400);
    for (key, d) in
        [("header_read_timeout_secs", l.header_read_timeout), ("request_timeout_secs", l.request_timeout)]
    {
        if d.is_zero() || d > day {
            errors.push(format!("{section}.{key}: from 1 second to 1 day"));
        }
    }
    if l.max_connections == 0 {
        errors.push(format!("{section}.max_connections: must be at least 1"));
    }
}

/// Secrets that appear in this repository, and where: refused as keys
/// unless `tokens.allow_published_keys` is set. Compared decoded, so another
/// encoding of the same bytes is refused too.
pub const PUBLISHED_KEYS: &[(&str, &str)] = &[
    ("ZGV2LW9ubHktdG9rZW4tc2lnbmluZy1rZXktbnVtYmVyLW9uZSE=", "docker/docker-compose.yml"),
    ("ZGV2LW9ubHktcmVjaXBpZW50LWhhc2gta2V5LTMyYnl0ZXMhIQ==", "docker/docker-compose.yml"),
    ("ZGV2LW9ubHkta2V5LWVuY3J5cHRpb24ta2V5LWZvci1ka2ltIQ==", "docker/docker-compose.yml"),
    ("dGVzdC10b2tlbi1rZXktdGhhdC1pcy1hdC1sZWFzdC0zMi1ieXRlcw==", "the tests"),
    ("dGVzdC1yZWNpcGllbnQta2V5LXRoYXQtaXMtMzItYnl0ZXMtbG9uZw==", "the tests"),
    ("dGVzdC1rZXktZW5jcnlwdGlvbi1rZXktb2YtMzItYnl0ZXMh", "the tests"),
    ("c2Vjb25kLWtleS1lbmNyeXB0aW9uLWtleS1vZi0zMi1ieXRlcyE=", "the tests"),
];

/// Where `secret` is published, if it is one of [`PUBLISHED_KEYS`].
fn published(secret: &SecretString) -> Option<&'static str> {
    let bytes = decode_secret("", secret).ok()?;
    PUBLISHED_KEYS.iter().find_map(|(k, place)| {
        let known = decode_secret("", &SecretString::from(k.to_string())).ok()?;
        (known.expose_secret() == bytes.expose_secret()).then_some(*place)
    })
}

/// Every key setting that holds a published key.
fn check_published(tokens: &TokensConfig, domains: &DomainSettings, errors: &mut Vec<String>) {
    if tokens.allow_published_keys {
        return;
    }
    let settings = tokens
        .keys
        .iter()
        .map(|(id, s)| (format!("tokens.keys.{id}"), s))
        .chain(tokens.recipient_key.iter().map(|s| ("tokens.recipient_key".to_owned(), s)))
        .chain(tokens.ip_key.iter().map(|s| ("tokens.ip_key".to_owned(), s)))
        .chain(domains.keys.iter().map(|(id, s)| (format!("domains.keys.{id}"), s)));
    for (path, secret) in settings {
        if let Some(place) = published(secret) {
            errors.push(format!(
                "{path}: this key is published in the mailpipe repository ({place}), so anyone can forge with it; make your own: head -c 32 /dev/urandom | base64 (tokens.allow_published_keys = true accepts it, for development only)"
            ));
        }
    }
}

fn check_tokens(tokens: &TokensConfig, errors: &mut Vec<String>) {
    for (id, secret) in &tokens.keys {
        if id.parse::<u16>().is_err() {
            errors.push(format!("tokens.keys.{id}: key ids are numbers from 0 to 65535"));
        }
        if let Err(e) = decode_secret(&format!("tokens.keys.{id}"), secret) {
            errors.push(e);
        }
    }
    if !tokens.keys.is_empty() && !tokens.keys.contains_key(&tokens.active_key.to_string()) {
        errors.push(format!("tokens.active_key: key {} is not in tokens.keys", tokens.active_key));
    }
    for (id, day) in &tokens.retired {
        if let Err(e) = retirement_day(id, day) {
            errors.push(e);
        }
        if *id == tokens.active_key.to_string() {
            errors.push(format!(
                "tokens.retired.{id}: the active key cannot be retired; make another key active first"
            ));
        } else if !tokens.keys.contains_key(id) {
            errors.push(format!(
                "tokens.retired.{id}: no such key in tokens.keys (keep a retired key's secret for its grace)"
            ));
        }
    }
    if let Some(r) = &tokens.recipient_key
        && let Err(e) = decode_secret("tokens.recipient_key", r)
    {
        errors.push(e);
    }
    if let Some(r) = &tokens.ip_key
        && let Err(e) = decode_secret("tokens.ip_key", r)
    {
        errors.push(e);
    }
}

fn check_domains(domains: &DomainSettings, errors: &mut Vec<String>) {
    for (id, secret) in &domains.keys {
        if id.parse::<u16>().is_err() {
            errors.push(format!("domains.keys.{id}: key ids are numbers from 0 to 65535"));
        }
        if let Err(e) = decode_secret(&format!("domains.keys.{id}"), secret) {
            errors.push(e);
        }
    }
    if !domains.keys.is_empty() && !domains.keys.contains_key(&domains.active_key.to_string()) {
        errors.push(format!("domains.active_key: key {} is not in domains.keys", domains.active_key));
    }
    if mailpipe_core::Selector::parse(&domains.return_path_label).is_err() {
        errors
            .push(format!("domains.return_path_label: {:?} is not one DNS label", domains.return_path_label));
    }
    if let Some(host) = &domains.return_path
        && mailpipe_core::Domain::parse(host).is_err()
    {
        errors.push(format!("domains.return_path: {host:?} is not a host name"));
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn set_path(tree: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut t = tree;
    for p in parents {
        let entry = t.entry(p.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
        if !entry.is_table() {
            *entry = toml::Value::Table(Default::default());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(last.clone(), value);
}

/// Environment values are typed like TOML scalars when they parse as one
/// (`64`, `true`, `1.5`), arrays when written as a TOML array
/// (`["192.0.2.53:53"]`), and are strings otherwise.
fn env_value(v: &str) -> toml::Value {
    if v.starts_with('[')
        && let Ok(t) = format!("v = {v}").parse::<toml::Table>()
        && let Some(a @ toml::Value::Array(_)) = t.get("v")
    {
        return a.clone();
    }
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = v.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(f) = v.parse::<f64>()
        && v.contains('.')
    {
        return toml::Value::Float(f);
    }
    toml::Value::String(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_environment_sets_arrays_and_the_providers_are_checked() {
        let cfg =
            Config::load(None, env(&[("MAILPIPE__PROVIDERS__NAMESERVERS", "[\"127.0.0.1:5353\"]")])).unwrap();
        assert_eq!(cfg.providers.nameservers, ["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(cfg.providers.mx["google"], ["google.com", "googlemail.com"], "the built-in groups");
        let bad = |k: &str, v: &str| Config::load(None, env(&[(k, v)])).err().unwrap().to_string();
        assert!(
            bad("MAILPIPE__PROVIDERS__NAMESERVERS", "[1, 2").contains("providers"),
            "not an array: a string"
        );
        assert!(bad("MAILPIPE__PROVIDERS__MIN_TTL_SECS", "999999").contains("min_ttl_secs"));
        assert!(bad("MAILPIPE__PROVIDERS__MX__BIG_CORP", "[\"\"]").contains("providers.mx.big_corp"));
    }

    #[test]
    fn hashing_client_addresses_needs_a_key_of_its_own() {
        let key = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0=";
        let mut vars = vec![
            ("MAILPIPE__TOKENS__KEYS__1", key),
            ("MAILPIPE__TOKENS__RECIPIENT_KEY", key),
            ("MAILPIPE__TRACKER__IP", "hash"),
        ];
        let e = Config::load(None, env(&vars)).unwrap().token_secrets().err().unwrap().to_string();
        assert!(e.contains("tokens.ip_key"), "{e}");
        vars.push(("MAILPIPE__TOKENS__IP_KEY", "aXAta2V5LWlwLWtleS1pcC1rZXktaXAta2V5LWlwLWtleQ=="));
        let s = Config::load(None, env(&vars)).unwrap().token_secrets().unwrap();
        assert!(s.ip_key.is_some_and(|k| k.expose_secret() != s.recipient_key.expose_secret()));
    }

    #[test]
    fn retired_keys_name_a_day_and_a_key_that_is_not_the_active_one() {
        let key = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0=";
        let other = "b3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXI=";
        let base = [
            ("MAILPIPE__TOKENS__KEYS__1", key),
            ("MAILPIPE__TOKENS__KEYS__2", other),
            ("MAILPIPE__TOKENS__ACTIVE_KEY", "2"),
            ("MAILPIPE__TOKENS__RECIPIENT_KEY", key),
            ("MAILPIPE__TOKENS__CLICK_TTL_DAYS", "30"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            Config::load(None, env(&v))
        };
        let s = with(&[("MAILPIPE__TOKENS__RETIRED__1", "2026-11-30")]).unwrap().token_secrets().unwrap();
        assert_eq!(s.retired, [(1, 1_795_996_800)], "midnight UTC of the day");
        assert_eq!(s.ageing.unsubscribe_grace_secs, 60 * 86_400, "the default grace");
        assert_eq!(s.ageing.click_ttl_secs, Some(30 * 86_400));
        for (id, day, want) in [
            ("MAILPIPE__TOKENS__RETIRED__1", "30/11/2026", "tokens.retired.1: \"30/11/2026\" is not a day"),
            ("MAILPIPE__TOKENS__RETIRED__1", "2026-02-30", "is not a day"),
            (
                "MAILPIPE__TOKENS__RETIRED__2",
                "2026-11-30",
                "tokens.retired.2: the active key cannot be retired",
            ),
            ("MAILPIPE__TOKENS__RETIRED__7", "2026-11-30", "tokens.retired.7: no such key"),
        ] {
            let e = with(&[(id, day)]).err().unwrap().to_string();
            assert!(e.contains(want), "{day}: {e}");
        }
    }

    #[test]
    fn a_published_key_is_refused_in_any_encoding_unless_allowed() {
        use base64::Engine as _;
        let published = base64::engine::general_purpose::STANDARD.decode(PUBLISHED_KEYS[0].0).unwrap();
        let other_encoding = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(published);
        let vars = |allow: &str| {
            env(&[
                ("MAILPIPE__TOKENS__KEYS__1", other_encoding.as_str()),
                ("MAILPIPE__TOKENS__ALLOW_PUBLISHED_KEYS", allow),
            ])
        };
        let e = Config::load(None, vars("false")).unwrap_err().to_string();
        assert!(e.contains("tokens.keys.1: this key is published"), "{e}");
        assert!(Config::load(None, vars("true")).is_ok());
    }

    #[test]
    fn defaults_load_with_nothing_set() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.queue.kind, QueueKind::Store);
        assert_eq!(c.smtp.kind, mailpipe_smtp::TransportKind::File);
        assert!(c.store.url.expose_secret().starts_with("sqlite:"));
        assert!(c.token_secrets().is_err(), "no secrets in the defaults");
    }

    #[test]
    fn the_store_queue_is_for_a_sqlite_file_and_the_default_follows_the_store() {
        let pg = ("MAILPIPE__STORE__URL", "postgres://u:p@h/db");
        let e = Config::load(None, env(&[pg, ("MAILPIPE__QUEUE__KIND", "store")])).unwrap_err();
        assert!(
            e.to_string().contains("queue.kind: \"store\" keeps the send queue in the SQLite store"),
            "{e}"
        );
        // Unset, it is what it was before the store queue with PostgreSQL.
        assert_eq!(Config::load(None, env(&[pg])).unwrap().queue.kind, QueueKind::Memory);
        let kafka = env(&[pg, ("MAILPIPE__QUEUE__KIND", "kafka")]);
        assert_eq!(Config::load(None, kafka).unwrap().queue.kind, QueueKind::Kafka);
        for memory in ["sqlite::memory:", "sqlite:", "sqlite://x.db?mode=memory"] {
            let url = ("MAILPIPE__STORE__URL", memory);
            assert_eq!(Config::load(None, env(&[url])).unwrap().queue.kind, QueueKind::Memory, "{memory}");
            let e = Config::load(None, env(&[url, ("MAILPIPE__QUEUE__KIND", "store")])).unwrap_err();
            assert!(e.to_string().contains("the store queue needs a SQLite file"), "{memory}: {e}");
        }
        let file = env(&[("MAILPIPE__STORE__URL", "sqlite:/var/lib/mailpipe/m.db")]);
        assert_eq!(Config::load(None, file).unwrap().queue.kind, QueueKind::Store);
    }

    #[test]
    fn environment_overrides_nested_keys_with_types() {
        let c = Config::load(
            None,
            env(&[
                ("MAILPIPE__QUEUE__KIND", "kafka"),
                ("MAILPIPE__QUEUE__KAFKA__BROKERS", "b1:9092,b2:9092"),
                ("MAILPIPE__WORKER__MAX_IN_FLIGHT", "7"),
                ("MAILPIPE__TOKENS__KEYS__3", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
                ("MAILPIPE__TOKENS__ACTIVE_KEY", "3"),
                ("MAILPIPE__TOKENS__RECIPIENT_KEY", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.queue.kind, QueueKind::Kafka);
        assert_eq!(c.queue.kafka.brokers, "b1:9092,b2:9092");
        assert_eq!(c.worker.max_in_flight, 7);
        let s = c.token_secrets().unwrap();
        assert_eq!(s.keys.len(), 1);
        assert_eq!(s.keys[0].0, 3);
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let dir = std::env::temp_dir().join(format!("mailpipe-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.toml");
        std::fs::write(
            &f,
            r#"
            [store]
            url = "mysql://x"
            colour = "blue"
            [worker]
            max_in_flight = "many"
            [smtp]
            max_connections = 0
            [tokens]
            active_key = 9
            [tokens.keys]
            1 = "short"
            [nonsense]
            x = 1
            "#,
        )
        .unwrap();
        let err = Config::load(Some(&f), env(&[("MAILPIPE__LOG__VERBOSITY", "3")])).unwrap_err();
        let all = err.to_string();
        for want in [
            "store.colour: unknown key",
            "log.verbosity: unknown key",
            "nonsense: unknown section",
            "worker:",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        // Sections that parsed are still validated... once all sections parse.
        let f2 = dir.join("bad2.toml");
        std::fs::write(&f2, "[store]\nurl = \"mysql://x\"\n[smtp]\nmax_connections = 0\n[tokens]\nactive_key = 9\n[tokens.keys]\n1 = \"short\"\n").unwrap();
        let all = Config::load(Some(&f2), env(&[])).unwrap_err().to_string();
        for want in
            ["store.url", "smtp.max_connections", "tokens.keys.1: must be base64", "tokens.active_key"]
        {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn bad_rates_are_named_by_key() {
        let dir = std::env::temp_dir().join(format!("mailpipe-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("rates.toml");
        std::fs::write(&f, "[throttle]\ndefault = \"fast\"\n[throttle.limits]\n\"a.example\" = \"5/week\"\ngoogle = \"100/m, burst=10\"\n[tracker]\nper_ip_rate = \"lots\"\n").unwrap();
        let e = Config::load(Some(&f), env(&[])).unwrap_err().to_string();
        assert!(e.contains("throttle.default") && e.contains("throttle.limits.\"a.example\""), "{e}");
        assert!(e.contains("tracker") && e.contains("per_ip_rate") && e.contains("\"lots\""), "{e}");
        assert!(!e.contains("google"), "{e}");
        std::fs::write(&f, "[throttle]\nglobal = \"1000/s\"\n[throttle.groups]\ngoogle = [\"gmail.com\"]\n[throttle.limits]\ngoogle = \"100/m\"\n").unwrap();
        let t = Config::load(Some(&f), env(&[])).unwrap().throttle;
        assert_eq!(t.limits["google"].count.get(), 100);
        assert_eq!(t.groups["google"], vec!["gmail.com".to_string()]);
        assert!(t.global.is_some() && t.default.is_none());
    }

    #[test]
    fn the_sections_hold_typed_values_in_the_units_their_keys_name() {
        let c = Config::load(
            None,
            env(&[
                ("MAILPIPE__WORKER__RETRY_BASE_MS", "1500"),
                ("MAILPIPE__TRACKER__SHUTDOWN_GRACE_SECS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(c.worker.retry_base, std::time::Duration::from_millis(1500));
        assert_eq!(c.tracker.shutdown_grace, std::time::Duration::from_secs(3));
        assert_eq!(c.worker.in_doubt, mailpipe_worker::InDoubtPolicy::AssumeDelivered);
        assert_eq!(c.queue.kafka.connect_timeout, std::time::Duration::from_secs(10));
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("mailpipe-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("broken.toml");
        std::fs::write(&f, "[store\nurl=").unwrap();
        let err = Config::load(Some(&f), env(&[])).unwrap_err().to_string();
        assert!(err.contains("broken.toml"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = Config::load(
            None,
            env(&[
                ("MAILPIPE__STORE__URL", "postgres://u:hunter2hunter2@h/db"),
                ("MAILPIPE__TOKENS__RECIPIENT_KEY", "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0="),
            ]),
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("c2VjcmV0"), "{dbg}");
        assert_eq!(c.store.redacted_url(), "postgres://u:***@h/db");
    }

    #[test]
    fn key_encryption_keys_are_checked_like_the_token_keys() {
        let c = Config::load(None, env(&[])).unwrap();
        let e = c.kek_secrets().unwrap_err().to_string();
        assert!(e.contains("MAILPIPE__DOMAINS__KEYS__1"), "{e}");
        let e = Config::load(
            None,
            env(&[("MAILPIPE__DOMAINS__KEYS__1", "c2hvcnQ="), ("MAILPIPE__DOMAINS__ACTIVE_KEY", "2")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("domains.keys.1: must decode to at least 32 bytes")
                && e.contains("domains.active_key"),
            "{e}"
        );
        let c = Config::load(
            None,
            env(&[("MAILPIPE__DOMAINS__KEYS__1", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")]),
        )
        .unwrap();
        assert_eq!(c.kek_secrets().unwrap().len(), 1);
        assert_eq!(c.domains.default_algorithm, mailpipe_core::DkimAlgorithm::RsaSha256);
    }
}
