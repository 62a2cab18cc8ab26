//! The bounce loop: sends go out with return paths that come back to the
//! platform, and `mailpipe inbound` takes what comes back over SMTP and
//! acts on it: a hard bounce suppresses the address everywhere and records
//! a `bounced` event on its send; soft bounces count; auto-replies and
//! provider enforcement never suppress; a made-up return path, a stranger's
//! recipient and an oversized message get nowhere.

use std::time::Duration;

use mailpipe_core::{Category, TenantId};
use mailpipe_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const BOUNCE_DOMAIN: &str = "bounces.mailpipe.test";

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;

/// The code of the next (possibly multi-line) reply.
async fn code(r: &mut Reader) -> u16 {
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert!(line.len() >= 4, "short reply {line:?}");
        if line.as_bytes()[3] == b' ' {
            return line[..3].parse().unwrap();
        }
    }
}

/// Sends `cmd` and returns its reply's code.
async fn say(w: &mut tokio::net::tcp::OwnedWriteHalf, r: &mut Reader, cmd: &str) -> u16 {
    w.write_all(cmd.as_bytes()).await.unwrap();
    w.write_all(b"\r\n").await.unwrap();
    code(r).await
}

/// One SMTP conversation: each reply's code, up to the message's.
async fn smtp(addr: std::net::SocketAddr, rcpts: &[&str], message: Option<&[u8]>) -> Vec<u16> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to inbound");
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut codes = vec![code(&mut r).await];
    codes.push(say(&mut w, &mut r, "EHLO mx.remote.example").await);
    codes.push(say(&mut w, &mut r, "MAIL FROM:<>").await);
    for rcpt in rcpts {
        codes.push(say(&mut w, &mut r, &format!("RCPT TO:<{rcpt}>")).await);
    }
    if let Some(m) = message {
        codes.push(say(&mut w, &mut r, "DATA").await);
        let mut body = Vec::new();
        for line in m.split_inclusive(|b| *b == b'\n') {
            if line.starts_with(b".") {
                body.push(b'.');
            }
            body.extend_from_slice(line);
        }
        if !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b".\r\n");
        w.write_all(&body).await.unwrap();
        codes.push(code(&mut r).await);
    }
    say(&mut w, &mut r, "QUIT").await;
    codes
}

/// A free loopback port for `mailpipe inbound`, and its address.
fn inbound_addr() -> (u16, std::net::SocketAddr) {
    let port = loopback_port();
    (port, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A destination that refuses every recipient as unknown, as a mailbox
/// provider would after a relay accepted the message.
fn refusing_destination() -> SmtpSink {
    SmtpSink::start(&["-f", "RCPT", "-B", "550 5.1.1 Recipient address rejected: User unknown"])
}

/// A Postfix-shaped DSN about `rcpt`.
fn dsn(rcpt: &str, status: &str, action: &str, diagnostic: &str) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.remote.example (Mail Delivery System)\r\nTo: x@{BOUNCE_DOMAIN}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n.leading dot\r\n\r\n\
         --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.example\r\n\r\n\
         Final-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n\
         Diagnostic-Code: smtp; {diagnostic}\r\n\r\n--b--\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_comes_back_to_a_return_path_acts_on_its_send_and_nothing_else_does() {
    let (_, addr) = inbound_addr();
    let env = TestEnv::setup()
        .var("MAILPIPE__BOUNCES__DOMAIN", BOUNCE_DOMAIN)
        .var("MAILPIPE__BOUNCES__LISTEN", addr)
        .var("MAILPIPE__BOUNCES__MAX_MESSAGE_KIB", 64)
        .var("MAILPIPE__BOUNCES__SOFT_BOUNCE_LIMIT", 2)
        .start()
        .await;
    // Five sends, each to its own address, and two more to send 3's
    // address: each goes out with its own return path, whose tag the ledger
    // keeps.
    let mut jobs = campaign_jobs(0..5, "acme", "spring", &["example.com"]);
    for i in 5..7 {
        let mut j = job(i, "acme", "spring", "example.com");
        j["to"]["email"] = "user3@example.com".into();
        jobs.push(keyed(&j));
    }
    env.enqueue(&jobs).await;
    let worker = env.start_worker();
    eventually("seven sends", Duration::from_secs(60), || async {
        env.ledger("acme", "spring").await.get("sent") == Some(&7)
    })
    .await;
    worker.stop().await;
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT job_id, recipient, return_tag FROM send_ledger ORDER BY job_id")
            .fetch_all(&mut env.pg().await)
            .await
            .unwrap();
    let path = |i: usize| format!("b-{}@{BOUNCE_DOMAIN}", rows[i].2.as_deref().expect("a return tag"));
    let to = |i: usize| rows[i].1.clone();
    let hasher = test_keys().hasher;
    let suppressed = |i: usize| {
        let (env, hasher, to) = (&env, &hasher, to(i));
        async move {
            env.store
                .suppression(&hasher.hash(&to), &TenantId::parse("globex").unwrap(), Category::Transactional)
                .await
                .unwrap()
        }
    };

    let inbound = env.start_inbound(env.config(), addr).await;

    // A hard bounce to send 0's return path: suppressed for every tenant
    // and category, and a `bounced` event on the send.
    let codes =
        smtp(addr, &[&path(0)], Some(&dsn(&to(0), "5.1.1", "failed", "550 5.1.1 user unknown"))).await;
    assert_eq!(codes, [220, 250, 250, 250, 354, 250]);
    let s = suppressed(0).await.expect("a hard bounce suppresses platform-wide");
    assert_eq!(s.reason.as_str(), "hard_bounce");
    let (reason,): (String,) =
        sqlx::query_as("SELECT payload::json->>'reason' FROM events WHERE type = 'bounced' AND job_id = $1")
            .bind(&rows[0].0)
            .fetch_one(&mut env.pg().await)
            .await
            .unwrap();
    assert_eq!(reason, "user_unknown");

    // Provider enforcement and an out-of-office reply: taken, and nothing
    // suppressed.
    let codes =
        smtp(addr, &[&path(1)], Some(&dsn(&to(1), "5.7.26", "failed", "550 5.7.26 unauthenticated sender")))
            .await;
    assert_eq!(codes.last(), Some(&250));
    let ooo = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: Out of Office\r\nAuto-Submitted: auto-replied\r\n\r\nAway.\r\n",
        to(2),
        path(2)
    );
    assert_eq!(smtp(addr, &[&path(2)], Some(ooo.as_bytes())).await.last(), Some(&250));
    assert_eq!(suppressed(1).await, None, "the sender's authentication is not the recipient's fault");
    assert_eq!(suppressed(2).await, None, "an auto-reply is never a bounce");

    // Soft bounces about the mailbox count once per send, when the reporter
    // gave up: a delay warning does not count, the same send twice counts
    // once, a second send's suppresses (limit 2).
    let full = |action: &str| dsn("user3@example.com", "4.2.2", action, "452 4.2.2 mailbox full");
    smtp(addr, &[&path(3)], Some(&full("delayed"))).await;
    smtp(addr, &[&path(3)], Some(&full("failed"))).await;
    smtp(addr, &[&path(3)], Some(&full("failed"))).await;
    assert_eq!(suppressed(3).await, None, "one send's soft bounce, however often reported, is not enough");
    smtp(addr, &[&path(5)], Some(&full("failed"))).await;
    assert!(suppressed(3).await.is_some(), "a second send's reaches the limit");

    // A made-up return path: refused at RCPT, before any message is read
    // or kept, and nobody is suppressed.
    let forged = format!("b-aaaaaaaaaaaaaaaa@{BOUNCE_DOMAIN}");
    let codes = smtp(addr, &[&forged], None).await;
    assert_eq!(codes, [220, 250, 250, 550], "a tag the ledger does not know names no send");
    assert_eq!(suppressed(4).await, None);
    // A bounce to send 4's return path about someone else (an alias or a
    // forward expanded on the way) says nothing about send 4's recipient.
    let other = dsn("member@example.com", "5.1.1", "failed", "550 5.1.1 user unknown");
    assert_eq!(smtp(addr, &[&path(4)], Some(&other)).await.last(), Some(&250));
    assert_eq!(suppressed(4).await, None, "not the send's recipient");
    let kept: Vec<String> = sqlx::query_scalar("SELECT reason FROM rejected_reports ORDER BY id")
        .fetch_all(&mut env.pg().await)
        .await
        .unwrap();
    assert_eq!(kept, ["recipient_mismatch"]);

    // Never a relay, and never more than the limit.
    let codes =
        smtp(addr, &["someone@example.com", &format!("b-{}@other.example", "a".repeat(16))], None).await;
    assert_eq!(codes, [220, 250, 250, 550, 550]);
    let huge: Vec<u8> = b"x".repeat(99).iter().chain(b"\r\n").copied().cycle().take(100 * 1024).collect();
    let codes = smtp(addr, &[&path(4)], Some(&huge)).await;
    assert_eq!(codes.last(), Some(&552), "{codes:?}");
    assert_eq!(suppressed(4).await, None);
    inbound.stop().await;
}

/// The whole loop with a real MTA: the worker hands the message to a
/// Postfix relay, which accepts it (so the worker records it sent), then
/// meets a destination that refuses the recipient, and sends its own DSN
/// to the return path, which it routes to `mailpipe inbound`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_postfix_generates_after_accepting_comes_back_and_suppresses() {
    let (inbound_port, inbound_addr) = inbound_addr();
    let destination = refusing_destination();
    // Its DSN goes to mailpipe inbound only over TLS, as a provider's
    // would when STARTTLS is offered.
    let relay = PostfixRelay::start_with_tls(
        &[(BOUNCE_DOMAIN, inbound_port), ("example.com", destination.port)],
        &[inbound_port],
    );
    let cert = mailpipe_tests::tls::TestCert::new();
    let env = TestEnv::setup()
        .relay(relay.port)
        .var("MAILPIPE__BOUNCES__DOMAIN", BOUNCE_DOMAIN)
        .var("MAILPIPE__BOUNCES__LISTEN", inbound_addr)
        .var("MAILPIPE__BOUNCES__TLS_CERT_FILE", cert.cert.display())
        .var("MAILPIPE__BOUNCES__TLS_KEY_FILE", cert.key.display())
        .start()
        .await;
    let (reason, _) = one_send_bounces_back(&env, inbound_addr, || relay.log()).await;
    assert_eq!(reason, "user_unknown", "the DSN Postfix wrote, read per recipient");
    let log = relay.log();
    assert!(
        log.contains(&format!("TLS connection established to 127.0.0.1[127.0.0.1]:{inbound_port}")),
        "the DSN came over STARTTLS; the relay's log:\n{log}"
    );
}

/// The whole text of the next (possibly multi-line) reply.
async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line)).await.unwrap().unwrap();
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] == b' ' {
            return all;
        }
    }
}

/// STARTTLS on `mailpipe inbound`: offered only before TLS, with a
/// certificate a client checks against its CA; what a client pipelines
/// after the STARTTLS command is thrown away, not run inside the encrypted
/// session; and a DSN sent over TLS is taken as over plain SMTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_offers_starttls_and_drops_what_was_sent_before_the_handshake() {
    let cert = mailpipe_tests::tls::TestCert::new();
    let (_, inbound_addr) = inbound_addr();
    let env = TestEnv::setup()
        .var("MAILPIPE__BOUNCES__DOMAIN", BOUNCE_DOMAIN)
        .var("MAILPIPE__BOUNCES__LISTEN", inbound_addr)
        .var("MAILPIPE__BOUNCES__TLS_CERT_FILE", cert.cert.display())
        .var("MAILPIPE__BOUNCES__TLS_KEY_FILE", cert.key.display())
        .start()
        .await;
    let inbound = env.start_inbound(env.config(), inbound_addr).await;

    let mut plain = BufReader::new(tokio::net::TcpStream::connect(inbound_addr).await.unwrap());
    let lines = |text: String| text.lines().map(str::to_owned).collect::<Vec<_>>();
    assert!(read_reply(&mut plain).await.starts_with("220 "));
    plain.get_mut().write_all(b"EHLO mx.remote.example\r\n").await.unwrap();
    assert!(lines(read_reply(&mut plain).await).contains(&"250-STARTTLS".to_owned()), "offered in plain");
    // STARTTLS and, in the same write, a command a man in the middle
    // slipped in: it must not run once TLS is up.
    plain.get_mut().write_all(b"STARTTLS\r\nMAIL FROM:<>\r\n").await.unwrap();
    assert!(read_reply(&mut plain).await.starts_with("220 2.0.0"));
    assert!(plain.buffer().is_empty());
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = cert.client().connect(name, plain.into_inner()).await.expect("a certificate the CA signed");
    let (r, mut w) = tokio::io::split(tls);
    let mut r = BufReader::new(r);
    w.write_all(b"EHLO mx.remote.example\r\n").await.unwrap();
    let ehlo = read_reply(&mut r).await;
    assert!(ehlo.starts_with("250-"), "the first reply in TLS is EHLO's, not the injected MAIL's: {ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "not offered twice: {ehlo}");
    w.write_all(b"RCPT TO:<b-x@bounces.mailpipe.test>\r\n").await.unwrap();
    assert!(read_reply(&mut r).await.starts_with("503"), "no MAIL was given inside TLS");
    w.write_all(b"STARTTLS\r\n").await.unwrap();
    assert!(read_reply(&mut r).await.starts_with("503 5.5.1 TLS already active"));
    w.write_all(b"MAIL FROM:<>\r\n").await.unwrap();
    assert!(read_reply(&mut r).await.starts_with("250"));
    // The feedback address is not set here, and a made-up return path is
    // refused at RCPT, as in plain SMTP.
    w.write_all(b"RCPT TO:<b-made-up@bounces.mailpipe.test>\r\n").await.unwrap();
    assert!(read_reply(&mut r).await.starts_with("550"));
    w.write_all(b"QUIT\r\n").await.unwrap();
    assert!(read_reply(&mut r).await.starts_with("221"));

    // A client that does not trust the certificate's CA gives up.
    let other = mailpipe_tests::tls::TestCert::new();
    let mut plain = BufReader::new(tokio::net::TcpStream::connect(inbound_addr).await.unwrap());
    read_reply(&mut plain).await;
    plain.get_mut().write_all(b"EHLO x\r\n").await.unwrap();
    read_reply(&mut plain).await;
    plain.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    read_reply(&mut plain).await;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    assert!(other.client().connect(name, plain.into_inner()).await.is_err(), "an unknown CA is refused");
    inbound.stop().await;
}

/// The same with a real Exim as the relay: its bounce (Exim's own wording,
/// `Status: 5.0.0` with the remote's `550 5.1.1` in the diagnostic) comes
/// back to the return path, suppresses the recipient and records an
/// asynchronous bounce on the job, read as an unknown user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_exim_generates_after_accepting_comes_back_and_suppresses() {
    let (inbound_port, inbound_addr) = inbound_addr();
    let destination = refusing_destination();
    let relay = EximRelay::start(&[(BOUNCE_DOMAIN, inbound_port), ("example.com", destination.port)]);
    let env = TestEnv::setup()
        .relay(relay.port)
        .var("MAILPIPE__BOUNCES__DOMAIN", BOUNCE_DOMAIN)
        .var("MAILPIPE__BOUNCES__LISTEN", inbound_addr)
        .start()
        .await;
    let (reason, sender_domain) = one_send_bounces_back(&env, inbound_addr, || relay.log()).await;
    assert_eq!(reason, "user_unknown", "Exim's DSN, read per recipient");
    assert_eq!(
        sender_domain.as_deref(),
        Some(TEST_SENDER_DOMAIN),
        "counted against the domain it was sent as"
    );
    assert!(relay.log().contains("** user0@example.com"), "Exim itself failed the address:\n{}", relay.log());
}

/// Sends one job to `example.com` through the env's relay and waits until
/// the relay's own bounce came back to `mailpipe inbound` at `inbound_addr`
/// and suppressed the recipient for every tenant and category. Returns the
/// asynchronous bounce's reason and the domain it counts against.
async fn one_send_bounces_back(
    env: &TestEnv,
    inbound_addr: std::net::SocketAddr,
    relay_log: impl Fn() -> String,
) -> (String, Option<String>) {
    let inbound = env.start_inbound(env.config(), inbound_addr).await;
    env.enqueue(&campaign_jobs(0..1, "acme", "spring", &["example.com"])).await;
    let worker = env.start_worker();
    eventually("the relay accepted it", Duration::from_secs(60), || async {
        env.ledger("acme", "spring").await.get("sent") == Some(&1)
    })
    .await;
    let (job, to): (String, String) = sqlx::query_as("SELECT job_id, recipient FROM send_ledger")
        .fetch_one(&mut env.pg().await)
        .await
        .unwrap();
    let (recipient, globex) = (test_keys().hasher.hash(&to), TenantId::parse("globex").unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = env.store.suppression(&recipient, &globex, Category::Transactional).await.unwrap() {
            assert_eq!(s.reason.as_str(), "hard_bounce");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no bounce came back within 60 s; the relay's log:\n{}",
            relay_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The suppression is written first, then the event (complaint::apply):
    // seen the one, wait for the other.
    let mut bounce = None;
    while bounce.is_none() {
        bounce = sqlx::query_as(
            "SELECT payload::json->>'reason', sender_domain FROM events WHERE type = 'bounced' AND job_id = $1",
        )
        .bind(&job)
        .fetch_optional(&mut env.pg().await)
        .await
        .unwrap();
        assert!(
            std::time::Instant::now() < deadline + Duration::from_secs(10),
            "suppressed, but no bounced event"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bounce = bounce.expect("the bounced event");
    worker.stop().await;
    inbound.stop().await;
    bounce
}
