//! Real-world shapes of what comes back, one file each, read as
//! `tests/corpus/expected.txt` says: Postfix, Exim, qmail, Sendmail,
//! Exchange Online, Gmail, Outlook.com, Yahoo and Amazon SES bounces,
//! provider enforcement, delays and expiry, out-of-office replies, an ARF
//! complaint, a delivery report and a human reply.

use std::path::Path;

#[test]
fn every_file_of_the_corpus_reads_as_expected() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
    let mut checked = 0;
    for line in expected.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        let [file, recipient, kind, reason, status, reply, reference] = f[..] else {
            panic!("bad line {line:?}")
        };
        let raw = std::fs::read(dir.join(file)).unwrap();
        let found = mailpipe_feedback::read(&raw).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(found.len(), 1, "{file}: {found:#?}");
        let got = &found[0];
        let opt = |s: &str| (s != "-").then(|| s.to_owned());
        assert_eq!(got.recipient, opt(recipient), "{file}: recipient");
        assert_eq!((got.kind.as_str(), got.reason.as_str()), (kind, reason), "{file}: {got:#?}");
        assert_eq!(got.status, opt(status), "{file}: status");
        assert_eq!(got.reply_code.map(|r| r.to_string()), opt(reply), "{file}: reply code");
        assert_eq!(got.reference, opt(reference), "{file}: reference");
        checked += 1;
    }
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "eml"))
        .count();
    assert_eq!(checked, files, "every .eml in the corpus has an expected line");
}

#[test]
fn a_dsn_with_several_recipients_gives_one_finding_each() {
    let raw = b"From: MAILER-DAEMON@mx.example\r\nTo: b-x@bounces.example\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; one@a.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\nFinal-Recipient: rfc822; two@b.example\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\nFinal-Recipient: rfc822; three@c.example\r\nAction: delivered\r\nStatus: 2.0.0\r\n\r\n--b--\r\n";
    let found = mailpipe_feedback::read(raw).unwrap();
    let got: Vec<(Option<&str>, &str)> =
        found.iter().map(|f| (f.recipient.as_deref(), f.kind.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some("one@a.example"), "hard_bounce"),
            (Some("two@b.example"), "soft_bounce"),
            (Some("three@c.example"), "delivered")
        ]
    );
}

#[test]
fn hostile_input_is_bounded_and_never_panics() {
    assert!(mailpipe_feedback::read(b"").is_err());
    // Bytes that are no message are refused or read as nothing known.
    if let Ok(found) = mailpipe_feedback::read(b"\xff\xfe garbage") {
        assert!(found.iter().all(|f| f.kind == mailpipe_feedback::Kind::Unknown), "{found:?}");
    }
    // A "bounce" naming ten thousand addresses yields at most 100 findings.
    let mut raw = b"From: MAILER-DAEMON@mx.example\r\nSubject: failure notice\r\n\r\n".to_vec();
    for i in 0..10_000 {
        raw.extend_from_slice(format!("<u{i}@x.example>: 550 5.1.1 no\r\n").as_bytes());
    }
    let found = mailpipe_feedback::read(&raw).unwrap();
    assert_eq!(found.len(), 100);
    // A report that only says it is one, from free text, names no send.
    let forged = b"From: MAILER-DAEMON@mx.example\r\nSubject: failure notice\r\nX-Mailpipe-Ref: acme/job-1/AAAA\r\n\r\n<a@b.example>: 550 5.1.1 no\r\nX-Mailpipe-Ref: acme/job-2/AAAA\r\n";
    let found = mailpipe_feedback::read(forged).unwrap();
    assert_eq!(found[0].reference, None, "a reference only counts inside an embedded original");
}
