//! The SMTP side of `mailpipe inbound` (RFC 5321, the subset a bounce
//! needs): EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT. Every client is a
//! stranger: a recipient is accepted only if [`Accept`] says it is ours
//! (never a relay), lines and messages are bounded, each command and the
//! whole message have a timeout, and a message is acknowledged (250) only
//! once [`Deliver`] took it; a failure there is a 451, so that the sending
//! MTA keeps it and tries again: nothing is lost. With a certificate,
//! STARTTLS (RFC 3207) is offered; whatever a client sends after the
//! STARTTLS command and before the handshake is discarded, never read as a
//! command of the encrypted session.

use std::sync::Arc;
use std::time::Duration;

use mailpipe_core::EmailAddress;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Whether this receiver takes mail for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    Ours,
    NotOurs,
    /// Cannot tell now (the store is down): 451, the sender tries later.
    TryLater,
}

/// Which recipients this receiver takes mail for.
pub trait Accept: Send + Sync {
    fn accepts(&self, rcpt: &EmailAddress) -> impl std::future::Future<Output = Recipient> + Send;
}

/// Where a received message goes; `Err` answers 451 (try again later).
/// `sender` is the envelope sender, empty for the null path `<>` that
/// bounces use.
pub trait Deliver: Send + Sync {
    fn deliver(
        &self,
        sender: String,
        rcpts: Vec<EmailAddress>,
        message: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// The limits of one receiver, and its TLS.
#[derive(Clone)]
pub struct Limits {
    pub hostname: String,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// STARTTLS is offered with this; `None`: not offered.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Recipients per message at most (RFC 5321 asks servers to take 100).
const MAX_RCPTS: usize = 100;
/// Commands a session may send, refused ones, and how long it may last:
/// a client that idles politely or probes forever is shown the door (421).
const MAX_COMMANDS: usize = 1000;
const MAX_ERRORS: usize = 10;
const MAX_SESSION: Duration = Duration::from_secs(3600);
/// Command lines and message lines, with CRLF (RFC 5321: 512 and 1000; we
/// are lenient with the latter).
const MAX_COMMAND_LINE: usize = 512;
const MAX_TEXT_LINE: usize = 16 * 1024;

/// Serves `listener` until `shutdown`, at most `max_connections` sessions
/// at once (further clients wait to be accepted). On shutdown a session
/// finishes the message it is taking, then gets 421 at its next command.
pub async fn serve<A, D>(
    listener: TcpListener,
    limits: Limits,
    accept: Arc<A>,
    deliver: Arc<D>,
    shutdown: CancellationToken,
) where
    A: Accept + 'static,
    D: Deliver + 'static,
{
    let acceptor = mailpipe_http::CappedAcceptor::new(listener, limits.max_connections);
    let limits = Arc::new(limits);
    while let Some((stream, peer, permit)) = acceptor.next(&shutdown).await {
        let (limits, accept, deliver, shutdown) =
            (limits.clone(), accept.clone(), deliver.clone(), shutdown.clone());
        tokio::spawn(async move {
            metrics::gauge!("mailpipe_inbound_sessions").increment(1.0);
            if let Err(e) = session(stream, &limits, accept.as_ref(), deliver.as_ref(), &shutdown).await {
                debug!(%peer, error = %e, "inbound: session ended");
            }
            metrics::gauge!("mailpipe_inbound_sessions").decrement(1.0);
            drop(permit);
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("closed")]
    Closed,
}

/// One line (with its CRLF), at most `max` bytes; longer ones are read to
/// their end and reported as `None`.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, SessionError> {
    let mut line = Vec::new();
    let mut too_long = false;
    let read = async {
        loop {
            let buf = r.fill_buf().await?;
            if buf.is_empty() {
                return Err(SessionError::Closed);
            }
            let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..=i], true),
                None => (buf, false),
            };
            let n = chunk.len();
            if line.len() + n <= max {
                line.extend_from_slice(chunk);
            } else {
                too_long = true;
            }
            r.consume(n);
            if done {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| SessionError::Timeout)??;
    Ok((!too_long).then_some(line))
}

async fn reply<W: AsyncWriteExt + Unpin>(w: &mut W, text: &str) -> Result<(), SessionError> {
    w.write_all(text.as_bytes()).await?;
    w.write_all(b"\r\n").await?;
    w.flush().await?;
    Ok(())
}

/// The address of `MAIL FROM:<...>` or `RCPT TO:<...>` (any case), without
/// parameters; `Some("")` for the null path.
fn path_of<'a>(arg: &'a str, keyword: &str) -> Option<&'a str> {
    let rest = arg
        .get(..keyword.len())
        .filter(|k| k.eq_ignore_ascii_case(keyword))
        .map(|_| &arg[keyword.len()..])?;
    let rest = rest.trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(&inner[..end])
}

/// How much of a session is spent, across its plain and encrypted parts.
struct Budget {
    commands: usize,
    errors: usize,
    started: std::time::Instant,
}

/// How a dialogue ended.
enum End {
    Closed,
    /// The client asked for TLS and was told to go ahead.
    StartTls,
}

async fn session<A: Accept, D: Deliver>(
    stream: TcpStream,
    limits: &Limits,
    accept: &A,
    deliver: &D,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let mut plain = BufReader::new(stream);
    reply(&mut plain, &format!("220 {} mailpipe inbound ESMTP", limits.hostname)).await?;
    let mut budget = Budget { commands: 0, errors: 0, started: std::time::Instant::now() };
    let End::StartTls = dialogue(&mut plain, limits, accept, deliver, shutdown, &mut budget, false).await?
    else {
        return Ok(());
    };
    let Some(tls) = &limits.tls else { return Ok(()) };
    // The buffer goes with the plain reader: what the client pipelined
    // after STARTTLS is never read as a command (CVE-2011-0411's class).
    let tcp = plain.into_inner();
    let stream = match tokio::time::timeout(limits.command_timeout, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics::counter!("mailpipe_inbound_refused_total", "why" => "tls_handshake").increment(1);
            return Err(e.into());
        }
        Err(_) => return Err(SessionError::Timeout),
    };
    metrics::counter!("mailpipe_inbound_tls_sessions_total").increment(1);
    let mut secure = BufReader::new(stream);
    dialogue(&mut secure, limits, accept, deliver, shutdown, &mut budget, true).await.map(|_| ())
}

/// Commands until the client quits or asks for TLS. `secure`: TLS is on
/// already. A new dialogue starts afresh: the client greets again.
async fn dialogue<S, A, D>(
    s: &mut BufReader<S>,
    limits: &Limits,
    accept: &A,
    deliver: &D,
    shutdown: &CancellationToken,
    budget: &mut Budget,
    secure: bool,
) -> Result<End, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    A: Accept,
    D: Deliver,
{
    let offer_tls = limits.tls.is_some() && !secure;
    let mut greeted = false;
    let mut from: Option<String> = None;
    let mut rcpts: Vec<EmailAddress> = Vec::new();
    loop {
        if budget.commands >= MAX_COMMANDS
            || budget.errors >= MAX_ERRORS
            || budget.started.elapsed() > MAX_SESSION
        {
            metrics::counter!("mailpipe_inbound_refused_total", "why" => "session_budget").increment(1);
            reply(s, "421 4.7.0 Too many commands or errors; closing").await?;
            return Ok(End::Closed);
        }
        budget.commands += 1;
        let line = tokio::select! {
            _ = shutdown.cancelled() => {
                reply(s, "421 4.3.2 Shutting down; try again later").await?;
                return Ok(End::Closed);
            }
            l = read_line(s, MAX_COMMAND_LINE, limits.command_timeout) => l?,
        };
        let Some(line) = line else {
            budget.errors += 1;
            reply(s, "500 5.5.2 Line too long").await?;
            continue;
        };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                greeted = true;
                (from, rcpts) = (None, Vec::new());
                let tls = if offer_tls { "250-STARTTLS\r\n" } else { "" };
                let text = format!(
                    "250-{}\r\n250-SIZE {}\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n{tls}250 SMTPUTF8",
                    limits.hostname, limits.max_message_bytes
                );
                reply(s, &text).await?;
            }
            "HELO" => {
                greeted = true;
                (from, rcpts) = (None, Vec::new());
                reply(s, &format!("250 {}", limits.hostname)).await?;
            }
            "STARTTLS" if !offer_tls => {
                budget.errors += 1;
                let text = if secure { "503 5.5.1 TLS already active" } else { "502 5.5.1 Not implemented" };
                reply(s, text).await?
            }
            "STARTTLS" if !arg.trim().is_empty() => {
                budget.errors += 1;
                reply(s, "501 5.5.4 Syntax: STARTTLS").await?
            }
            "STARTTLS" => {
                reply(s, "220 2.0.0 Ready to start TLS").await?;
                return Ok(End::StartTls);
            }
            "MAIL" if !greeted => {
                budget.errors += 1;
                reply(s, "503 5.5.1 EHLO first").await?
            }
            "MAIL" if from.is_some() => {
                budget.errors += 1;
                reply(s, "503 5.5.1 Nested MAIL command").await?
            }
            "MAIL" => match path_of(arg, "FROM:") {
                Some(path) => {
                    let size = arg
                        .split_whitespace()
                        .find_map(|p| p.strip_prefix("SIZE=").or_else(|| p.strip_prefix("size=")))
                        .and_then(|n| n.parse::<usize>().ok());
                    if size.is_some_and(|n| n > limits.max_message_bytes) {
                        reply(s, "552 5.3.4 Message too big").await?;
                    } else {
                        from = Some(path.to_owned());
                        reply(s, "250 2.1.0 Ok").await?;
                    }
                }
                None => reply(s, "501 5.5.4 Syntax: MAIL FROM:<address>").await?,
            },
            "RCPT" if from.is_none() => {
                budget.errors += 1;
                reply(s, "503 5.5.1 MAIL first").await?
            }
            "RCPT" => match path_of(arg, "TO:").map(EmailAddress::parse) {
                Some(Ok(rcpt)) if rcpts.len() >= MAX_RCPTS => {
                    drop(rcpt);
                    reply(s, "452 4.5.3 Too many recipients").await?
                }
                Some(Ok(rcpt)) => match accept.accepts(&rcpt).await {
                    Recipient::Ours => {
                        rcpts.push(rcpt);
                        reply(s, "250 2.1.5 Ok").await?
                    }
                    // Not ours: no relaying, and nothing said about why.
                    Recipient::NotOurs => {
                        budget.errors += 1;
                        metrics::counter!("mailpipe_inbound_refused_total", "why" => "recipient")
                            .increment(1);
                        reply(s, "550 5.1.1 No such recipient here").await?
                    }
                    Recipient::TryLater => reply(s, "451 4.3.0 Try again later").await?,
                },
                _ => reply(s, "501 5.1.3 Bad recipient address syntax").await?,
            },
            "DATA" if rcpts.is_empty() => {
                budget.errors += 1;
                reply(s, "503 5.5.1 RCPT first").await?
            }
            "DATA" => {
                reply(s, "354 End data with <CR><LF>.<CR><LF>").await?;
                let body = tokio::time::timeout(limits.data_timeout, read_data(s, limits.max_message_bytes))
                    .await
                    .map_err(|_| SessionError::Timeout)??;
                let taken = std::mem::take(&mut rcpts);
                let from_path = from.take().unwrap_or_default();
                match body {
                    None => {
                        metrics::counter!("mailpipe_inbound_refused_total", "why" => "size").increment(1);
                        reply(s, "552 5.3.4 Message too big").await?
                    }
                    Some(message) => match deliver.deliver(from_path, taken, message).await {
                        Ok(()) => reply(s, "250 2.0.0 Ok: taken").await?,
                        Err(e) => {
                            warn!(error = %e, "inbound: could not take a message; the sender will retry");
                            reply(s, "451 4.3.0 Try again later").await?
                        }
                    },
                }
            }
            "RSET" => {
                (from, rcpts) = (None, Vec::new());
                reply(s, "250 2.0.0 Ok").await?
            }
            "NOOP" => reply(s, "250 2.0.0 Ok").await?,
            "QUIT" => {
                reply(s, "221 2.0.0 Bye").await?;
                return Ok(End::Closed);
            }
            "AUTH" | "VRFY" | "EXPN" | "ETRN" | "TURN" => reply(s, "502 5.5.1 Not implemented").await?,
            _ => {
                budget.errors += 1;
                reply(s, "500 5.5.2 Command unrecognized").await?
            }
        }
    }
}

/// The message up to `CRLF.CRLF`, dot-unstuffed; `None` if it was larger
/// than `max` (read to its end all the same, so the session can go on).
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, SessionError> {
    let mut out = Vec::new();
    let mut too_big = false;
    // Only CRLF.CRLF ends the message: a bare LF before or after the dot
    // does not (the ambiguity SMTP smuggling exploits).
    let mut after_crlf = true;
    loop {
        // The whole-message timeout is the caller's; a line gets an hour.
        let line = read_line(r, MAX_TEXT_LINE, Duration::from_secs(3600)).await?;
        let Some(line) = line else {
            too_big = true;
            after_crlf = false;
            continue;
        };
        if after_crlf && line == b".\r\n" {
            return Ok((!too_big).then_some(out));
        }
        after_crlf = line.ends_with(b"\r\n");
        let line = line.strip_prefix(b".").unwrap_or(&line);
        if out.len() + line.len() > max {
            too_big = true;
        }
        if !too_big {
            out.extend_from_slice(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_in_any_case_without_parameters() {
        assert_eq!(path_of("FROM:<a@b.example> SIZE=10", "FROM:"), Some("a@b.example"));
        assert_eq!(path_of("from: <>", "FROM:"), Some(""));
        assert_eq!(path_of("TO:<b-x@bounces.example>", "TO:"), Some("b-x@bounces.example"));
        assert_eq!(path_of("TO:b@x", "TO:"), None);
        assert_eq!(path_of("FR", "FROM:"), None);
    }
}
