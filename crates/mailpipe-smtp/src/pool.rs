//! A bounded pool of SMTP connections to one relay, on lettre's connection
//! type but over TCP streams we open with `TCP_NODELAY`.

use std::error::Error as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::{
    BeforeContent, DeliveryError, Envelope, OpenError, Phase, Reply, SendFuture, SmtpSettings, TlsMode,
    Transport,
};

/// One connection, and whether its relay offered PIPELINING.
struct Conn {
    inner: AsyncSmtpConnection,
    pipelining: bool,
}

struct Idle {
    conn: Conn,
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
    /// Until when new connections do not pipeline: set when a pipelined
    /// envelope failed mid-way (a relay that offers PIPELINING but drops
    /// what is pipelined would otherwise cost a timeout per message).
    unpipelined_until: Mutex<Option<Instant>>,
}

/// How long a relay that failed a pipelined envelope is sent to one
/// command at a time.
const PIPELINING_PAUSE: Duration = Duration::from_secs(600);

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
            unpipelined_until: Mutex::new(None),
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
        let _ = c.inner.quit().await;
        Ok(())
    }

    async fn connect(&self) -> Result<Conn, DeliveryError> {
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
        // lettre keeps only the EHLO keywords it knows, and PIPELINING is
        // not one of them: ask again (before AUTH, which a new EHLO would
        // not undo but some servers reset) and read the keywords ourselves.
        let pipelining = self.cfg.pipelining
            && !self.pipelining_paused()
            && match tokio::time::timeout(self.cfg.command_timeout, conn.command(Ehlo::new(hello.clone())))
                .await
            {
                Ok(Ok(r)) => offers_pipelining(r.message()),
                // A relay that refuses a second EHLO (sendmail: "503
                // Duplicate HELO/EHLO") is simply not pipelined to.
                Ok(Err(e)) if e.is_permanent() || e.is_transient() => false,
                Ok(Err(e)) => return Err(map_err(Phase::Greeting, e)),
                Err(_) => return Err(timed_out(Phase::Greeting, "EHLO")),
            };
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
        Ok(Conn { inner: conn, pipelining })
    }

    fn pipelining_paused(&self) -> bool {
        let until = self.unpipelined_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    /// A pipelined envelope failed mid-way (not a refusal: a timeout, a
    /// hang-up, a reply out of place): perhaps the relay cannot take
    /// pipelined commands whatever it says, so new connections do not
    /// pipeline for a while.
    fn pause_pipelining(&self) {
        *self.unpipelined_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + PIPELINING_PAUSE);
        metrics::counter!("mailpipe_smtp_pipelining_paused_total").increment(1);
        tracing::warn!(
            pause_secs = PIPELINING_PAUSE.as_secs(),
            "a pipelined envelope failed mid-way; sending one command at a time for a while"
        );
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(i) = idle.pop() {
            if i.since.elapsed() < self.cfg.idle_timeout && !i.conn.inner.has_broken() {
                return Some(i.conn);
            }
            // Stale: dropped here; the server will time it out on its side.
        }
        None
    }

    fn put_idle(&self, conn: Conn) {
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
        if conn.pipelining
            && let Err(
                DeliveryError::Io { phase: Phase::MailFrom | Phase::RcptTo | Phase::Data, .. }
                | DeliveryError::Protocol { phase: Phase::MailFrom | Phase::RcptTo | Phase::Data, .. },
            ) = &result
        {
            self.pause_pipelining();
        }
        match &result {
            Ok(_) => self.put_idle(conn),
            Err(DeliveryError::Rejected { .. } | DeliveryError::Unsendable(_)) => {
                // The session is fine; clear the transaction and keep it.
                let reset = tokio::time::timeout(self.cfg.command_timeout, conn.inner.command(Rset)).await;
                if matches!(reset, Ok(Ok(_))) {
                    self.put_idle(conn);
                } else {
                    // A QUIT the relay never answers must not hold the permit.
                    let _ = tokio::time::timeout(self.cfg.command_timeout, conn.inner.abort()).await;
                }
            }
            // Out of step, or abandoned mid-DATA: the connection is dropped,
            // which makes the server discard the transaction. No QUIT: after
            // a 354 the relay reads it as content and answers nothing, and
            // lettre would wait for that answer without a bound.
            Err(DeliveryError::Io { .. } | DeliveryError::Protocol { .. } | DeliveryError::Abandoned(_)) => {
                drop(conn)
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
    conn: &mut Conn,
    env: &Envelope,
    msg: &[u8],
    cfg: &SmtpSettings,
    before_content: BeforeContent<'_>,
) -> Result<Reply, DeliveryError> {
    let le = crate::file::lettre_envelope(env)?;
    let info = conn.inner.server_info();
    let mut params = Vec::new();
    if env.from.needs_smtputf8() || env.to.needs_smtputf8() {
        if !info.supports_feature(Extension::SmtpUtfEight) {
            return Err(DeliveryError::Unsendable("UTF-8 address but the server lacks SMTPUTF8".into()));
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if !msg.is_ascii() {
        if !info.supports_feature(Extension::EightBitMime) {
            return Err(DeliveryError::Unsendable("8-bit message but the server lacks 8BITMIME".into()));
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let t = cfg.command_timeout;
    let mail = Mail::new(le.from().cloned(), params);
    let rcpts: Vec<Rcpt> = le.to().iter().map(|to| Rcpt::new(to.clone(), vec![])).collect();
    let c = &mut conn.inner;
    if conn.pipelining {
        envelope_pipelined(c, t, &mail, &rcpts).await?;
    } else {
        strict(Phase::MailFrom, step(Phase::MailFrom, t, c.command(mail)).await)?;
        for rcpt in rcpts {
            strict(Phase::RcptTo, step(Phase::RcptTo, t, c.command(rcpt)).await)?;
        }
        strict(Phase::Data, step(Phase::Data, t, c.command(Data)).await)?;
    }
    before_content.await.map_err(DeliveryError::Abandoned)?;
    // lettre's own content writer dot-stuffs byte by byte (a tenth of the
    // worker's CPU in a profile); text goes as one write of our own.
    let r = match std::str::from_utf8(msg) {
        Ok(text) => step(Phase::Message, cfg.data_timeout, c.command(Content(text))).await?,
        Err(_) => step(Phase::Message, cfg.data_timeout, c.message(msg)).await?,
    };
    Ok(Reply::new(u16::from(r.code()), &r.message().collect::<Vec<_>>().join(" ")))
}

/// A reply to an envelope command, held to what the command may get: 2xx
/// to MAIL and RCPT, 354 to DATA. lettre takes any 2xx or 3xx as success;
/// a reply out of place means the session is out of step (a reply read for
/// the wrong command), and the content must not follow it.
fn strict(phase: Phase, r: Result<Response, DeliveryError>) -> Result<(), DeliveryError> {
    let code = u16::from(r?.code());
    let fits = match phase {
        Phase::Data => code == 354,
        _ => (200..300).contains(&code),
    };
    if fits {
        Ok(())
    } else {
        Err(DeliveryError::Protocol {
            phase,
            detail: format!("unexpected reply {code} to {}", phase.as_str()),
        })
    }
}

/// MAIL, every RCPT and DATA in one write (RFC 2920), then their replies in
/// order: every reply is read, whatever the earlier ones said, so that the
/// session stays in step, and the first refusal is the transaction's. A
/// failure that leaves the session in doubt (a timeout, a reply out of
/// place, a 421 "closing") is returned at once, and the pool drops the
/// connection.
async fn envelope_pipelined(
    c: &mut AsyncSmtpConnection,
    t: Duration,
    mail: &Mail,
    rcpts: &[Rcpt],
) -> Result<(), DeliveryError> {
    use std::fmt::Write as _;
    // lettre writes a command as its Display text; these three are one.
    let mut batch = mail.to_string();
    for r in rcpts {
        let _ = write!(batch, "{r}");
    }
    let _ = write!(batch, "{Data}");
    // Some(refusal) leaves the session usable, with the next reply on its way.
    let refusal = |r: Result<(), DeliveryError>| match r {
        Ok(()) => Ok(None),
        Err(e @ DeliveryError::Rejected { .. }) if !closing(&e) => Ok(Some(e)),
        Err(e) => Err(e),
    };
    let mut refused =
        refusal(strict(Phase::MailFrom, step(Phase::MailFrom, t, c.command(Raw(batch))).await))?;
    for _ in rcpts {
        let reply = refusal(strict(Phase::RcptTo, step(Phase::RcptTo, t, c.read_response()).await))?;
        refused = refused.or(reply);
    }
    let data = refusal(strict(Phase::Data, step(Phase::Data, t, c.read_response()).await))?;
    match (refused, data) {
        (None, None) => Ok(()),
        (None, Some(e)) | (Some(e), Some(_)) => Err(e),
        // The relay refused the sender or the recipient but still opened the
        // message: close it empty, so that the session is back at commands.
        // Only a definite reply to that says it is; anything else drops the
        // connection rather than read a late reply as the next command's.
        (Some(e), None) => match step(Phase::Data, t, c.command(Raw(".\r\n".into()))).await {
            Ok(_) | Err(DeliveryError::Rejected { .. }) => Err(e),
            Err(other) => Err(other),
        },
    }
}

/// A 421: the relay is closing the connection, whatever was pipelined.
fn closing(e: &DeliveryError) -> bool {
    matches!(e, DeliveryError::Rejected { reply, .. } if reply.code == 421)
}

/// Protocol text written as it is.
struct Raw(String);

impl std::fmt::Display for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Message content as it goes after the 354, written as lettre's
/// `message` writes it: a '.' that starts the content or follows CRLF is
/// doubled (RFC 5321 4.5.2), and CRLF "." CRLF ends it.
struct Content<'a>(&'a str);

impl std::fmt::Display for Content<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0;
        if text.starts_with('.') {
            f.write_str(".")?;
        }
        let mut from = 0;
        // "\r\n." cannot overlap itself, so every match is a line to stuff.
        for at in memchr::memmem::find_iter(text.as_bytes(), b"\r\n.") {
            f.write_str(&text[from..at + 3])?;
            f.write_str(".")?;
            from = at + 3;
        }
        f.write_str(&text[from..])?;
        f.write_str("\r\n.\r\n")
    }
}

/// Whether an EHLO reply's lines (after the first, the server's name)
/// offer PIPELINING.
fn offers_pipelining<'a>(mut lines: impl Iterator<Item = &'a str>) -> bool {
    lines.next();
    lines.any(|l| l.split_whitespace().next().is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING")))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mailpipe_core::EmailAddress;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::{SmtpPool, offers_pipelining};
    use crate::{DeliveryError, Envelope, Phase, SmtpSettings, TlsMode, Transport, TransportKind};

    /// lettre's content writer (its `ClientCodec`, private to it), as a
    /// state machine over bytes, then its terminator.
    fn lettre_content(msg: &[u8]) -> Vec<u8> {
        #[derive(Clone, Copy)]
        enum At {
            Middle,
            Cr,
            LineStart,
        }
        let (mut out, mut at) = (Vec::new(), At::LineStart);
        for &b in msg {
            out.push(b);
            at = match (b, at) {
                (b'\r', _) => At::Cr,
                (b'\n', At::Cr) => At::LineStart,
                (b'.', At::LineStart) => {
                    out.push(b'.');
                    At::Middle
                }
                (_, At::Cr | At::LineStart) => At::Middle,
                (_, At::Middle) => At::Middle,
            };
        }
        out.extend_from_slice(b"\r\n.\r\n");
        out
    }

    /// Our single-write content says byte for byte what lettre's writer
    /// says, on lines that start with dots, bare LFs, CRs before CRLF.
    #[test]
    fn content_is_dot_stuffed_as_lettre_stuffs_it() {
        const PIECES: [&str; 9] = ["a", ".", "..", "\r\n", "\n", "\r", "\u{e9}", "line", "\r\n."];
        let mut state = 0x5851_f42d_4c95_7f2d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let fixed = [".", "", ".start\r\n", "a\r\n.b\r\n..c\r\n", "a\r\r\n.b", "a\n.b", "x\r\n.\r\n"];
        let generated = (0..5000).map(|_| {
            let len = next() % 16;
            (0..len).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect::<String>()
        });
        for msg in fixed.into_iter().map(String::from).chain(generated) {
            assert_eq!(
                super::Content(&msg).to_string().into_bytes(),
                lettre_content(msg.as_bytes()),
                "{msg:?}"
            );
        }
    }

    #[test]
    fn pipelining_is_read_from_the_keywords_not_the_greeting() {
        assert!(offers_pipelining(["mx.example", "SIZE 1000", "pipelining", "8BITMIME"].into_iter()));
        assert!(!offers_pipelining(["PIPELINING welcomes you", "SIZE 1000"].into_iter()));
        assert!(!offers_pipelining(["mx.example", "XPIPELINING"].into_iter()));
    }

    /// A relay that answers by script, one connection: each step names the
    /// commands it must have read (by their first word; `.` reads a whole
    /// message) before it writes its replies. A client that waits for a
    /// reply the script holds back until later commands arrive hangs, and
    /// the test times out. Returns what each step read, and whether a step
    /// ever found more bytes waiting than it asked for.
    async fn scripted(
        offer: bool,
        script: Script,
    ) -> (u16, tokio::task::JoinHandle<(Vec<Vec<String>>, bool)>) {
        let (port, sessions) = scripted_sessions(offer, vec![script]).await;
        (port, tokio::spawn(async move { sessions.await.unwrap().remove(0) }))
    }

    /// Same, one script per connection, in the order they come.
    async fn scripted_sessions(
        offer: bool,
        scripts: Vec<Script>,
    ) -> (u16, tokio::task::JoinHandle<Vec<(Vec<Vec<String>>, bool)>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ehlo = if offer {
            "250-relay.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else {
            "250-relay.test\r\n250 8BITMIME\r\n"
        };
        let task = tokio::spawn(async move {
            let mut sessions = Vec::new();
            for script in scripts {
                let (sock, _) = listener.accept().await.unwrap();
                sessions.push(session(sock, ehlo, script).await);
            }
            sessions
        });
        (port, task)
    }

    async fn session(sock: tokio::net::TcpStream, ehlo: &str, script: Script) -> (Vec<Vec<String>>, bool) {
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 relay.test\r\n").await.unwrap();
        let (mut read, mut ahead) = (Vec::new(), false);
        let mut line = String::new();
        for (want, reply) in script {
            let mut got = Vec::new();
            for cmd in want {
                loop {
                    line.clear();
                    assert!(r.read_line(&mut line).await.unwrap() > 0, "the client hung up");
                    let l = line.trim_end().to_owned();
                    let done = cmd != "." || l == ".";
                    got.push(l);
                    if done {
                        break;
                    }
                }
                let word = got.last().unwrap().split([' ', ':']).next().unwrap().to_ascii_uppercase();
                assert_eq!(word, cmd.to_ascii_uppercase(), "read {got:?}");
            }
            ahead |= !r.buffer().is_empty();
            read.push(got);
            let reply = if reply == "EHLO" { ehlo } else { reply };
            w.write_all(reply.as_bytes()).await.unwrap();
        }
        (read, ahead)
    }

    fn pool(port: u16, pipelining: bool) -> SmtpPool {
        SmtpPool::new(SmtpSettings {
            kind: TransportKind::Smtp,
            dir: "unused".into(),
            host: "127.0.0.1".into(),
            port,
            hello_name: "client.test".into(),
            max_connections: 1,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            data_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            tls: TlsMode::None,
            pipelining,
            ca_file: None,
            username: None,
            password: None,
        })
        .unwrap()
    }

    fn envelope() -> Envelope {
        Envelope {
            from: EmailAddress::parse("news@acme.example").unwrap(),
            to: EmailAddress::parse("ann@a.example").unwrap(),
        }
    }

    async fn send(pool: &SmtpPool) -> Result<crate::Reply, DeliveryError> {
        let env = envelope();
        let msg = b"Subject: hi\r\n\r\n.dot first\r\n";
        tokio::time::timeout(Duration::from_secs(10), pool.send(&env, msg, Box::pin(async { Ok(()) })))
            .await
            .expect("the transaction hung: the client waited for a reply the relay holds back")
    }

    type Script = Vec<(Vec<&'static str>, &'static str)>;

    fn plain_transaction() -> Script {
        vec![
            (vec!["MAIL"], "250 ok\r\n"),
            (vec!["RCPT"], "250 ok\r\n"),
            (vec!["DATA"], "354 go\r\n"),
            (vec!["."], "250 2.0.0 queued\r\n"),
        ]
    }

    /// After `hello`, one transaction the relay answers command by command;
    /// the client must send each only after the previous reply.
    async fn one_at_a_time(offer: bool, mut hello: Script, pipelining: bool) {
        hello.extend(plain_transaction());
        let (port, relay) = scripted(offer, hello).await;
        assert_eq!(send(&pool(port, pipelining)).await.unwrap().text, "queued");
        let (_, ahead) = relay.await.unwrap();
        assert!(!ahead, "the client wrote a command before the previous reply");
    }

    #[tokio::test]
    async fn an_offering_relay_gets_the_envelope_in_one_write_and_refusals_keep_the_session_in_step() {
        let (port, relay) = scripted(
            true,
            vec![
                (vec!["EHLO"], "EHLO"),
                (vec!["EHLO"], "EHLO"),
                // The envelope's replies only once all three commands are in.
                (vec!["MAIL", "RCPT", "DATA"], "250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n"),
                (vec!["."], "250 2.0.0 queued\r\n"),
                // A refused recipient: DATA is refused too, and the next
                // transaction on the same connection starts clean.
                (
                    vec!["MAIL", "RCPT", "DATA"],
                    "250 2.1.0 ok\r\n550 5.1.1 unknown user\r\n554 5.5.1 no valid recipients\r\n",
                ),
                (vec!["RSET"], "250 2.0.0 ok\r\n"),
                // The relay opens the message although it refused the
                // sender: closed empty, then reset.
                (
                    vec!["MAIL", "RCPT", "DATA"],
                    "550 5.7.1 sender refused\r\n503 5.5.1 sender first\r\n354 go\r\n",
                ),
                (vec!["."], "554 5.5.1 no valid recipients\r\n"),
                (vec!["RSET"], "250 2.0.0 ok\r\n"),
                (vec!["MAIL", "RCPT", "DATA"], "250 ok\r\n250 ok\r\n354 go\r\n"),
                (vec!["."], "250 2.0.0 queued again\r\n"),
            ],
        )
        .await;
        let pool = pool(port, true);
        assert_eq!(send(&pool).await.unwrap().text, "queued");
        match send(&pool).await {
            Err(DeliveryError::Rejected { phase: Phase::RcptTo, reply }) => assert_eq!(reply.code, 550),
            other => panic!("{other:?}"),
        }
        match send(&pool).await {
            Err(DeliveryError::Rejected { phase: Phase::MailFrom, reply }) => assert_eq!(reply.code, 550),
            other => panic!("{other:?}"),
        }
        assert_eq!(send(&pool).await.unwrap().text, "queued again");
        let (read, _) = relay.await.unwrap();
        // The content went dot-stuffed, after the 354.
        assert!(read[3].iter().any(|l| l == "..dot first"), "{:?}", read[3]);
    }

    #[tokio::test]
    async fn a_relay_that_does_not_offer_it_gets_one_command_at_a_time() {
        one_at_a_time(false, vec![(vec!["EHLO"], "EHLO"), (vec!["EHLO"], "EHLO")], true).await;
    }

    #[tokio::test]
    async fn pipelining_off_in_the_settings_is_one_command_at_a_time_even_when_offered() {
        one_at_a_time(true, vec![(vec!["EHLO"], "EHLO")], false).await;
    }

    #[tokio::test]
    async fn a_relay_that_refuses_a_second_ehlo_is_used_without_pipelining() {
        let hello = vec![(vec!["EHLO"], "EHLO"), (vec!["EHLO"], "503 5.0.1 Duplicate HELO/EHLO\r\n")];
        one_at_a_time(true, hello, true).await;
    }

    #[tokio::test]
    async fn a_421_to_the_pipelined_envelope_is_the_answer_not_a_lost_connection() {
        // The relay says 421 and hangs up without answering RCPT or DATA.
        let (port, relay) = scripted(
            true,
            vec![
                (vec!["EHLO"], "EHLO"),
                (vec!["EHLO"], "EHLO"),
                (vec!["MAIL", "RCPT", "DATA"], "421 4.7.0 try again later, closing\r\n"),
            ],
        )
        .await;
        match send(&pool(port, true)).await {
            Err(DeliveryError::Rejected { phase: Phase::MailFrom, reply }) => assert_eq!(reply.code, 421),
            other => panic!("{other:?}"),
        }
        relay.await.unwrap();
    }

    /// The commit point refuses after the 354 (the ledger could not write
    /// the mark): the connection is dropped at once, no QUIT sent into the
    /// open message (which a relay reads as content and never answers).
    #[tokio::test]
    async fn an_abandoned_transaction_drops_the_connection_without_waiting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"220 relay.test\r\n").await.unwrap();
            let mut line = String::new();
            for reply in ["250 relay.test\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n"] {
                line.clear();
                r.read_line(&mut line).await.unwrap();
                w.write_all(reply.as_bytes()).await.unwrap();
            }
            // In the message now: read to the end, answering nothing.
            let mut after = Vec::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap() == 0 {
                    return after;
                }
                after.push(line.trim_end().to_owned());
            }
        });
        let pool = pool(port, false);
        let env = envelope();
        let refused = Box::pin(async { Err("the ledger is unreachable".to_owned()) });
        let r = tokio::time::timeout(Duration::from_secs(3), pool.send(&env, b"x\r\n", refused))
            .await
            .expect("the pool waited on a connection it had abandoned");
        assert!(matches!(r, Err(DeliveryError::Abandoned(_))), "{r:?}");
        let after = tokio::time::timeout(Duration::from_secs(3), relay)
            .await
            .expect("the connection stays open")
            .unwrap();
        assert!(after.is_empty(), "sent into the open message: {after:?}");
    }

    #[tokio::test]
    async fn a_reply_out_of_place_stops_the_content_before_the_commit_point() {
        // A 250 where DATA's 354 belongs: the session is out of step, so the
        // commit point must not run and no content may follow.
        let (port, relay) = scripted(
            true,
            vec![
                (vec!["EHLO"], "EHLO"),
                (vec!["EHLO"], "EHLO"),
                (vec!["MAIL", "RCPT", "DATA"], "250 ok\r\n250 ok\r\n250 stray\r\n"),
            ],
        )
        .await;
        let pool = pool(port, true);
        let committed = std::sync::atomic::AtomicBool::new(false);
        let env = envelope();
        let before = Box::pin(async {
            committed.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        let r =
            tokio::time::timeout(Duration::from_secs(10), pool.send(&env, b"x\r\n", before)).await.unwrap();
        assert!(matches!(r, Err(DeliveryError::Protocol { phase: Phase::Data, .. })), "{r:?}");
        assert!(!committed.load(std::sync::atomic::Ordering::SeqCst), "the commit point ran");
        relay.await.unwrap();
    }

    #[tokio::test]
    async fn a_relay_that_drops_pipelined_commands_is_sent_one_at_a_time_afterwards() {
        // First connection: the relay answers MAIL, ignores what came with
        // it, and hangs up. Second: no second EHLO, one command at a time.
        let first: Script =
            vec![(vec!["EHLO"], "EHLO"), (vec!["EHLO"], "EHLO"), (vec!["MAIL"], "250 ok\r\n")];
        let mut second: Script = vec![(vec!["EHLO"], "EHLO")];
        second.extend(plain_transaction());
        let (port, relay) = scripted_sessions(true, vec![first, second]).await;
        let pool = pool(port, true);
        match send(&pool).await {
            // lettre reads the hang-up as an incomplete reply.
            Err(
                DeliveryError::Io { phase: Phase::RcptTo, .. }
                | DeliveryError::Protocol { phase: Phase::RcptTo, .. },
            ) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(send(&pool).await.unwrap().text, "queued");
        let sessions = relay.await.unwrap();
        assert!(!sessions[1].1, "the second connection pipelined again");
    }
}
