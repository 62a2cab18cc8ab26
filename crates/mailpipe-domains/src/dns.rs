//! DNS for the preflight, through hickory-resolver, asking the configured
//! servers (or the system's). Every answer is one of three things: records,
//! none (the name or the type does not exist), or a failure (a timeout, a
//! SERVFAIL, a REFUSED), which a check never takes for a pass.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

/// What DNS said about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The records' data: for TXT, each record's strings joined.
    Found(Vec<String>),
    /// No such name, or no record of the type.
    Nothing,
    /// No answer to go by.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
#[error("DNS resolver: {0}")]
pub struct DnsError(String);

/// A resolver asking `nameservers` (or the system's), one attempt within
/// `timeout`, caching nothing: the preflight must see what is published
/// now, and the provider lookups keep a cache of their own.
pub(crate) fn uncached_resolver(
    nameservers: &[SocketAddr],
    timeout: Duration,
) -> Result<TokioResolver, DnsError> {
    let err = |e: &dyn std::fmt::Display| DnsError(e.to_string());
    let mut builder = if nameservers.is_empty() {
        Resolver::builder_tokio().map_err(|e| err(&e))?
    } else {
        let servers = nameservers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = 1;
    opts.cache_size = 0;
    builder.build().map_err(|e| err(&e))
}

/// A resolver that caches nothing, so a check always sees what is published
/// now.
pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// Asks `nameservers`, or the system's when there are none.
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<Self, DnsError> {
        Ok(Self { resolver: uncached_resolver(nameservers, timeout)? })
    }

    /// The TXT records at `name`.
    pub async fn txt(&self, name: &str) -> Answer {
        match self.resolver.txt_lookup(fqdn(name)).await {
            Ok(l) => Answer::Found(
                l.answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(t) => {
                            Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>())
                        }
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) if e.is_no_records_found() => Answer::Nothing,
            Err(e) => Answer::Failed(e.to_string()),
        }
    }

    /// Whether `name` resolves: its CNAME target, or its addresses.
    pub async fn resolves(&self, name: &str) -> Answer {
        match self.resolver.lookup(fqdn(name), RecordType::CNAME).await {
            Ok(l) => {
                let targets: Vec<String> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::CNAME(c) => Some(c.0.to_string().trim_end_matches('.').to_owned()),
                        _ => None,
                    })
                    .collect();
                if !targets.is_empty() {
                    return Answer::Found(targets);
                }
            }
            Err(e) if e.is_no_records_found() => {}
            Err(e) => return Answer::Failed(e.to_string()),
        }
        match self.resolver.lookup_ip(fqdn(name)).await {
            Ok(ips) => Answer::Found(ips.iter().map(|ip| ip.to_string()).collect()),
            Err(e) if e.is_no_records_found() => Answer::Nothing,
            Err(e) => Answer::Failed(e.to_string()),
        }
    }
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}
