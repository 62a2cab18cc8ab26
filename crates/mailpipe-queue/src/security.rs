//! How Kafka clients prove who they are and protect what they send: the
//! `[queue.kafka.security]` section. Every client (worker, tracker,
//! analytics, `enqueue`, `topics`) takes it from the same settings, so a
//! broker with TLS, SASL/SCRAM and ACLs sees each service as its own
//! principal (one set of credentials per service's configuration).

use std::path::PathBuf;

use rdkafka::config::ClientConfig;
use secrecy::{ExposeSecret, SecretString};

/// `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// No TLS, no authentication: a loopback or otherwise private broker.
    Plaintext,
    /// TLS; the broker is checked against `ca_file` (or the system's CAs).
    Ssl,
    /// TLS and SASL/SCRAM: what a shared broker should ask for.
    SaslSsl,
    /// SASL/SCRAM without TLS: the password never crosses the wire, but
    /// the records do, in clear.
    SaslPlaintext,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslSsl => "sasl_ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslSsl | Protocol::SaslPlaintext)
    }

    fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }
}

/// The SASL mechanisms offered: SCRAM only, so that no password is ever
/// sent, even inside TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// `[queue.kafka.security]`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct KafkaSecurity {
    pub protocol: Protocol,
    pub sasl_mechanism: SaslMechanism,
    /// The SCRAM principal (a service's own).
    #[serde(default)]
    pub username: String,
    /// From the environment (`MAILPIPE__QUEUE__KAFKA__SECURITY__PASSWORD`),
    /// not a file. Never logged.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// PEM certificates the broker's chain must end in; unset: the
    /// system's trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl Default for KafkaSecurity {
    fn default() -> Self {
        Self {
            protocol: Protocol::Plaintext,
            sasl_mechanism: SaslMechanism::ScramSha512,
            username: String::new(),
            password: None,
            ca_file: None,
        }
    }
}

impl KafkaSecurity {
    /// What is wrong with these settings, each naming its key: a setting
    /// that would be silently ignored is as wrong as a missing one.
    pub fn problems(&self) -> Vec<String> {
        let key = |k: &str| format!("queue.kafka.security.{k}");
        let mut out = Vec::new();
        let has_password = self.password.as_ref().is_some_and(|p| !p.expose_secret().is_empty());
        if self.protocol.sasl() {
            if self.username.is_empty() {
                out.push(format!("{}: required with protocol {}", key("username"), self.protocol.as_str()));
            }
            if !has_password {
                out.push(format!(
                    "{}: required with protocol {} (set MAILPIPE__QUEUE__KAFKA__SECURITY__PASSWORD)",
                    key("password"),
                    self.protocol.as_str()
                ));
            }
        } else if !self.username.is_empty() || has_password {
            out.push(format!(
                "{}: a username or password is set but protocol {} does not use it (sasl_ssl does)",
                key("protocol"),
                self.protocol.as_str()
            ));
        }
        match (&self.ca_file, self.protocol.tls()) {
            (Some(_), false) => out.push(format!(
                "{}: set but protocol {} has no TLS (ssl or sasl_ssl do)",
                key("ca_file"),
                self.protocol.as_str()
            )),
            (Some(f), true) if !f.is_file() => {
                out.push(format!("{}: {} is not a readable file", key("ca_file"), f.display()))
            }
            _ => {}
        }
        out
    }

    /// The librdkafka properties of these settings.
    pub(crate) fn apply(&self, c: &mut ClientConfig) {
        c.set("security.protocol", self.protocol.as_str());
        if self.protocol.sasl() {
            c.set("sasl.mechanisms", self.sasl_mechanism.as_str());
            c.set("sasl.username", &self.username);
            if let Some(p) = &self.password {
                c.set("sasl.password", p.expose_secret());
            }
        }
        if self.protocol.tls() {
            // Check the broker's name against its certificate.
            c.set("ssl.endpoint.identification.algorithm", "https");
            if let Some(f) = &self.ca_file {
                c.set("ssl.ca.location", f.display().to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(protocol: Protocol, user: &str, password: Option<&str>, ca: Option<&str>) -> KafkaSecurity {
        KafkaSecurity {
            protocol,
            username: user.into(),
            password: password.map(|p| SecretString::from(p.to_owned())),
            ca_file: ca.map(PathBuf::from),
            ..KafkaSecurity::default()
        }
    }

    #[test]
    fn settings_that_would_be_ignored_or_missing_are_named() {
        assert!(KafkaSecurity::default().problems().is_empty());
        let p = with(Protocol::SaslSsl, "", None, None).problems();
        assert!(
            p[0].contains("security.username: required") && p[1].contains("security.password: required"),
            "{p:?}"
        );
        let p = with(Protocol::Plaintext, "worker", Some("pw"), None).problems();
        assert!(p[0].contains("does not use it"), "{p:?}");
        let p = with(Protocol::SaslPlaintext, "w", Some("pw"), Some("/etc/hostname")).problems();
        assert!(p[0].contains("has no TLS"), "{p:?}");
        let p = with(Protocol::Ssl, "", None, Some("/no/such/ca.pem")).problems();
        assert!(p[0].contains("not a readable file"), "{p:?}");
        assert!(with(Protocol::SaslSsl, "w", Some("pw"), None).problems().is_empty());
    }

    #[test]
    fn the_client_gets_scram_over_tls_and_checks_the_brokers_name() {
        let mut c = ClientConfig::new();
        with(Protocol::SaslSsl, "worker", Some("pw"), Some("/ca.pem")).apply(&mut c);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.username"), Some("worker"));
        assert_eq!(c.get("sasl.password"), Some("pw"));
        assert_eq!(c.get("ssl.ca.location"), Some("/ca.pem"));
        assert_eq!(c.get("ssl.endpoint.identification.algorithm"), Some("https"));
        let mut plain = ClientConfig::new();
        KafkaSecurity::default().apply(&mut plain);
        assert_eq!((plain.get("security.protocol"), plain.get("sasl.username")), (Some("plaintext"), None));
    }
}
