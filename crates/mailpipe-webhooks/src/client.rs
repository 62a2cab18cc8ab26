//! One webhook request: connect to a vetted address, TLS when https (the
//! system's roots, SNI and name checks by rustls), one HTTP/1.1 POST, the
//! status back. No redirects (a redirect could lead anywhere), no pooling,
//! and the whole exchange under one deadline, so a receiver that never
//! answers costs one slot for `timeout` and no more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::guard::WebhookUrl;

/// The most of a receiver's answer that is read (and then dropped).
const MAX_ANSWER_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
}

/// Makes webhook requests. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
    user_agent: String,
}

impl Client {
    pub fn new() -> Result<Self, SendError> {
        use rustls_platform_verifier::BuilderVerifierExt as _;
        let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| SendError::Tls(e.to_string()))?
            .with_platform_verifier()
            .map_err(|e| SendError::Tls(e.to_string()))?
            .with_no_client_auth();
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            user_agent: format!("mailpipe-webhooks/{}", env!("CARGO_PKG_VERSION")),
        })
    }

    /// POSTs `body` to `url` at one of `addrs` (already vetted) with
    /// `headers`, and returns the answer's status.
    pub async fn post(
        &self,
        url: &WebhookUrl,
        addrs: &[SocketAddr],
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<u16, SendError> {
        tokio::time::timeout(timeout, self.exchange(url, addrs, headers, body))
            .await
            .map_err(|_| SendError::Timeout(timeout))?
    }

    async fn exchange(
        &self,
        url: &WebhookUrl,
        addrs: &[SocketAddr],
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<u16, SendError> {
        let mut last = None;
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = stream
            .ok_or_else(|| SendError::Connect(last.unwrap_or_else(|| std::io::Error::other("no address"))))?;
        let _ = stream.set_nodelay(true);
        let mut request = hyper::Request::post(url.target.as_str())
            .header(hyper::header::HOST, url.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, self.user_agent.as_str());
        for (k, v) in headers {
            request = request.header(*k, v.as_str());
        }
        let request = request.body(Full::new(body)).map_err(|e| SendError::Http(e.to_string()))?;
        if url.https {
            let name = ServerName::try_from(url.host.clone()).map_err(|e| SendError::Tls(e.to_string()))?;
            let tls = self.tls.connect(name, stream).await.map_err(|e| SendError::Tls(e.to_string()))?;
            send(TokioIo::new(tls), request).await
        } else {
            send(TokioIo::new(stream), request).await
        }
    }
}

async fn send<T>(io: T, request: hyper::Request<Full<Bytes>>) -> Result<u16, SendError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| SendError::Http(e.to_string()))?;
    // The connection's task ends with this function, however it ends (the
    // caller's deadline included).
    let _driver = AbortOnDrop(tokio::spawn(conn));
    let answer = sender.send_request(request).await.map_err(|e| SendError::Http(e.to_string()))?;
    let status = answer.status().as_u16();
    // The status decides. A little of the body is read, briefly, so that
    // the receiver sees its answer taken; the rest goes with the connection.
    let mut body = answer.into_body();
    let _ = tokio::time::timeout(BODY_GRACE, async {
        let mut read = 0;
        while read < MAX_ANSWER_BYTES {
            match body.frame().await {
                Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    })
    .await;
    Ok(status)
}

/// How long the answer's body is read after its status.
const BODY_GRACE: Duration = Duration::from_millis(500);

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
