//! A bounded pool of SMTP connections to one relay, on lettre's connection
//! type but over TCP streams we open with `TCP_NODELAY`.

use std::error::Error as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::{
    BeforeContent, DeliveryError, Envelope, OpenError, Phase, Reply, SendFuture, SmtpSettings, TlsMode,
    Transport,
};

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

/// Connections to one relay: at most `max_connections`, reused while fresh,
/// dropped after any I/O or protocol error, reset after a rejection.
pub struct SmtpPool {
    cfg: SmtpSettings,
    tls: Option<TlsParameters>,
    permits: Semaphore,
    // A std mutex: it is held for a push or a pop, never across an await.
    idle: Mutex<Vec<Idle>>,
}

impl SmtpPool {
    /// Fails if the TLS settings cannot be built (an unreadable CA).
    pub fn new(cfg: SmtpSettings) -> Result<Self, OpenError> {
        let tls = match cfg.tls {
            TlsMode::None => None,
            TlsMode::Opportunistic | TlsMode::Required => {
                let unsendable = |e: lettre::transport::smtp::Error| {
                    OpenError::Tls(DeliveryError::Unsendable(format!("smtp TLS settings: {e}")))
                };
                let mut b = TlsParameters::builder(cfg.host.clone());
                if let Some(path) = &cfg.ca_file {
                    let pem = std::fs::read(path).map_err(|e| OpenError::CaFile(path.clone(), e))?;
                    b = b.add_root_certificate(Certificate::from_pem(&pem).map_err(unsendable)?);
                }
                Some(b.build_rustls().map_err(unsendable)?)
            }
        };
        Ok(Self {
            permits: Semaphore::new(cfg.max_connections.max(1)),
            idle: Mutex::new(Vec::new()),
            tls,
            cfg,
        })
    }

    pub fn config(&self) -> &SmtpSettings {
        &self.cfg
    }

    /// Opens one connection and closes it: a start-up check that the relay is there.
    pub async fn probe(&self) -> Result<(), DeliveryError> {
        let mut c = self.connect().await?;
        let _ = c.quit().await;
        Ok(())
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, DeliveryError> {
        let addr = (self.cfg.host.as_str(), self.cfg.port);
        let io = |detail: String| DeliveryError::Io { phase: Phase::Connect, detail };
        let tcp = tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io("connect timed out".into()))?
            .map_err(|e| io(format!("{}:{}: {e}", self.cfg.host, self.cfg.port)))?;
        tcp.set_nodelay(true).map_err(|e| io(e.to_string()))?;
        let hello = ClientId::Domain(self.cfg.hello_name.clone());
        let timed_out = |phase, what: &str| DeliveryError::Io { phase, detail: format!("{what} timed out") };
        let mut conn = tokio::time::timeout(
            self.cfg.command_timeout,
            AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello),
        )
        .await
        .map_err(|_| timed_out(Phase::Greeting, "greeting"))?
        .map_err(|e| map_err(Phase::Greeting, e))?;
        if let Some(tls) = &self.tls {
            if conn.can_starttls() {
                tokio::time::timeout(self.cfg.command_timeout, conn.starttls(tls.clone(), &hello))
                    .await
                    .map_err(|_| timed_out(Phase::Tls, "STARTTLS"))?
                    .map_err(|e| map_err(Phase::Tls, e))?;
            } else if self.cfg.tls == TlsMode::Required {
                let _ = conn.quit().await;
                return Err(DeliveryError::Protocol {
                    phase: Phase::Tls,
                    detail: "the relay does not offer STARTTLS and smtp.tls = \"required\"".into(),
                });
            }
        }
        if let (Some(user), Some(password)) = (&self.cfg.username, &self.cfg.password) {
            use secrecy::ExposeSecret;
            let creds = Credentials::new(user.clone(), password.expose_secret().to_owned());
            tokio::time::timeout(
                self.cfg.command_timeout,
                conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds),
            )
            .await
            .map_err(|_| timed_out(Phase::Auth, "AUTH"))?
            .map_err(|e| map_err(Phase::Auth, e))?;
        }
        Ok(conn)
    }

    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(i) = idle.pop() {
            if i.since.elapsed() < self.cfg.idle_timeout && !i.conn.has_broken() {
                return Some(i.conn);
            }
            // Stale: dropped here; the server will time it out on its side.
        }
        None
    }

    fn put_idle(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(Idle { conn, since: Instant::now() });
    }

    /// Closes idle connections that have outlived `idle_timeout`.
    pub fn reap_idle(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|i| i.since.elapsed() < self.cfg.idle_timeout);
    }

    async fn deliver(
        &self,
        env: &Envelope,
        msg: &[u8],
        before_content: BeforeContent<'_>,
    ) -> Result<Reply, DeliveryError> {
        // The permit bounds connections, idle or busy, to max_connections.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| DeliveryError::Io { phase: Phase::Connect, detail: "pool closed".into() })?;
        let mut conn = match self.take_idle() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let result = transaction(&mut conn, env, msg, &self.cfg, before_content).await;
        match &result {
            Ok(_) => self.put_idle(conn),
            Err(DeliveryError::Rejected { .. } | DeliveryError::Unsendable(_)) => {
                // The session is fine; clear the transaction and keep it.
                let reset = tokio::time::timeout(self.cfg.command_timeout, conn.command(Rset)).await;
                if matches!(reset, Ok(Ok(_))) {
                    self.put_idle(conn);
                } else {
                    conn.abort().await;
                }
            }
            // Abandoned mid-DATA: dropping the connection makes the server
            // discard the transaction.
            Err(DeliveryError::Io { .. } | DeliveryError::Protocol { .. } | DeliveryError::Abandoned(_)) => {
                conn.abort().await
            }
        }
        result
    }
}

async fn step<T>(
    phase: Phase,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, DeliveryError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| map_err(phase, e)),
        Err(_) => Err(DeliveryError::Io { phase, detail: "timed out".into() }),
    }
}

async fn transaction(
    conn: &mut AsyncSmtpConnection,
    env: &Envelope,
    msg: &[u8],
    cfg: &SmtpSettings,
    before_content: BeforeContent<'_>,
) -> Result<Reply, DeliveryError> {
    let le = crate::file::lettre_envelope(env)?;
    let mut params = Vec::new();
    if env.from.needs_smtputf8() || env.to.needs_smtputf8() {
        if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            return Err(DeliveryError::Unsendable("UTF-8 address but the server lacks SMTPUTF8".into()));
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if !msg.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return Err(DeliveryError::Unsendable("8-bit message but the server lacks 8BITMIME".into()));
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let t = cfg.command_timeout;
    step(Phase::MailFrom, t, conn.command(Mail::new(le.from().cloned(), params))).await?;
    for to in le.to() {
        step(Phase::RcptTo, t, conn.command(Rcpt::new(to.clone(), vec![]))).await?;
    }
    step(Phase::Data, t, conn.command(Data)).await?;
    before_content.await.map_err(DeliveryError::Abandoned)?;
    let r = step(Phase::Message, cfg.data_timeout, conn.message(msg)).await?;
    Ok(Reply::new(u16::from(r.code()), &r.message().collect::<Vec<_>>().join(" ")))
}

fn map_err(phase: Phase, e: lettre::transport::smtp::Error) -> DeliveryError {
    let text = e.source().map(|s| s.to_string()).unwrap_or_default();
    match e.status() {
        Some(code) if e.is_transient() || e.is_permanent() => {
            DeliveryError::Rejected { phase, reply: Reply::new(u16::from(code), &text) }
        }
        _ if e.is_response() => DeliveryError::Protocol { phase, detail: format!("{e}: {text}") },
        _ if e.is_client() => DeliveryError::Unsendable(format!("{e}: {text}")),
        _ => DeliveryError::Io { phase, detail: format!("{e}: {text}") },
    }
}

impl Transport for SmtpPool {
    fn send<'a>(
        &'a self,
        envelope: &'a Envelope,
        message: &'a [u8],
        before_content: BeforeContent<'a>,
    ) -> SendFuture<'a> {
        Box::pin(self.deliver(envelope, message, before_content))
    }

    fn name(&self) -> &'static str {
        "smtp"
    }
}
