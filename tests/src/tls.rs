//! A certificate authority and a server certificate for `127.0.0.1`
//! ([`crate::test_certificates`]) in a directory of their own: what a TLS
//! listener of mailpipe serves, and a client that trusts that CA only.

use std::path::PathBuf;

/// The files of a test CA and a server certificate it signed.
pub struct TestCert {
    pub dir: PathBuf,
    /// The CA certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(crate::unique("tls"));
        std::fs::create_dir_all(&dir).expect("tls dir");
        let (ca, cert, key) = crate::test_certificates(&dir);
        Self { dir, ca, cert, key }
    }

    /// A TLS client configuration that trusts this CA only.
    pub fn client(&self) -> tokio_rustls::TlsConnector {
        use tokio_rustls::rustls::pki_types::CertificateDer;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).expect("CA file") {
            roots.add(c.expect("CA certificate")).expect("a trust anchor");
        }
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    }
}

impl Default for TestCert {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
