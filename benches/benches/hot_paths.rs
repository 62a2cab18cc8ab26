//! Per-message CPU costs of the hot paths. Run with
//! `cargo bench -p mailpipe-benches --bench hot_paths`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mailpipe_benches::{composer, keyring, ten_kb_job};
use mailpipe_core::{CampaignId, Category, JobId, SendJob, TenantId};
use mailpipe_render::{DkimAlgorithm, DkimKey};
use mailpipe_smtp::{DeliveryError, Phase, Reply, classify};
use mailpipe_token::{Action, Claims};
use time::OffsetDateTime;

fn tokens(c: &mut Criterion) {
    let ring = keyring();
    let claims = Claims {
        tenant_id: TenantId::parse("acme").unwrap_or_else(|_| unreachable!()),
        campaign_id: CampaignId::parse("spring").unwrap_or_else(|_| unreachable!()),
        job_id: JobId::parse("job-000123").unwrap_or_else(|_| unreachable!()),
        category: Category::Marketing,
        sent_at: 1_790_000_000,
        action: Action::Click { url: "https://shop.example.com/product/3?ref=spring".into() },
    };
    let token = ring.sign(&claims).unwrap_or_default();
    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign_click", |b| b.iter(|| ring.sign(black_box(&claims))));
    g.bench_function("verify_click", |b| b.iter(|| ring.verify(black_box(&token))));
    let mut bad = token.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap_or_default();
    g.bench_function("verify_tampered", |b| b.iter(|| ring.verify(black_box(&bad))));
    g.finish();
}

fn compose(c: &mut Criterion) {
    let composer = composer();
    let job = ten_kb_job(1);
    let now = OffsetDateTime::now_utc();
    let raw = serde_json::to_vec(&job.to_wire()).unwrap_or_default();
    let mut g = c.benchmark_group("message");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_job_10kb", |b| b.iter(|| SendJob::from_json(black_box(&raw))));
    g.bench_function("compose_10kb_5_links", |b| {
        b.iter(|| composer.compose(black_box(&job), None, now, None))
    });
    // The two stages of compose on their own.
    g.bench_function("render_rewrite_10kb_5_links", |b| {
        b.iter(|| composer.render(black_box(&job), None, now))
    });
    // The same with a text part of its own: what deriving one costs.
    let mut with_text = job.clone();
    if let mailpipe_core::Content::Inline { text, .. } = &mut with_text.content {
        *text =
            Some("Hello {{ first_name }}, our spring range is here: https://shop.example.com/spring".into());
    }
    g.bench_function("render_rewrite_10kb_5_links_given_text", |b| {
        b.iter(|| composer.render(black_box(&with_text), None, now))
    });
    let rendered = composer.render(&job, None, now).expect("renders");
    g.bench_function("mime_build_10kb", |b| {
        b.iter(|| composer.build(black_box(&job), black_box(&rendered), now))
    });
    g.finish();
}

fn classifier(c: &mut Criterion) {
    let results: Vec<Result<Reply, DeliveryError>> = vec![
        Ok(Reply::new(250, "2.0.0 Ok: queued as 1234")),
        Err(DeliveryError::Rejected { phase: Phase::RcptTo, reply: Reply::new(550, "5.1.1 no such user") }),
        Err(DeliveryError::Rejected { phase: Phase::MailFrom, reply: Reply::new(421, "4.7.0 slow down") }),
        Err(DeliveryError::Io { phase: Phase::Message, detail: "reset".into() }),
    ];
    c.bench_function("smtp/classify_4_replies", |b| {
        b.iter(|| {
            for r in &results {
                black_box(classify(black_box(r)));
            }
        })
    });
    c.bench_function("smtp/parse_reply", |b| {
        b.iter(|| Reply::new(550, black_box("5.1.1 <x@y>: Recipient address rejected")))
    });
}

fn dkim(c: &mut Criterion) {
    let key = |name: &str| {
        std::fs::read(format!(
            "{}/../crates/mailpipe-render/tests/fixtures/{name}",
            std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
        ))
        .unwrap_or_default()
    };
    let message = composer()
        .compose(&ten_kb_job(1), None, OffsetDateTime::now_utc(), None)
        .map(|m| m.bytes)
        .unwrap_or_default();
    let mut g = c.benchmark_group("dkim");
    g.throughput(Throughput::Elements(1));
    for (name, alg, file) in [
        ("sign_rsa2048_10kb", DkimAlgorithm::RsaSha256, "rsa2048.pem"),
        ("sign_ed25519_10kb", DkimAlgorithm::Ed25519Sha256, "ed25519.pem"),
    ] {
        let Ok(key) = DkimKey::from_pem("acme.example", "s1", alg, &key(file)) else {
            panic!("fixture key {file} did not load");
        };
        g.bench_function(name, |b| b.iter(|| key.sign(black_box(&message))));
    }
    g.finish();
}

/// One RSA-2048 PKCS#1 v1.5 SHA-256 signature over about what a DKIM
/// signature covers (the signed headers and the body hash), by each
/// backend on this machine, the key from the DKIM fixture. mail-auth signs
/// with aws-lc-rs; scripts/bench/signing.sh sets these against
/// `openssl speed rsa2048` in the same run.
fn rsa_backends(c: &mut Criterion) {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::Signer;
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/mailpipe-render/tests/fixtures/rsa2048.pem"
    ))
    .expect("the RSA fixture key");
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).expect("a PKCS#8 RSA key");
    let pkcs1 = key.to_pkcs1_der().expect("encodes");
    let headers = vec![b'h'; 600];
    let mut g = c.benchmark_group("rsa2048_backends");
    g.throughput(Throughput::Elements(1));
    let ring_key = ring::signature::RsaKeyPair::from_der(pkcs1.as_bytes()).expect("ring takes the key");
    let ring_rng = ring::rand::SystemRandom::new();
    let mut sig = vec![0; ring_key.public().modulus_len()];
    g.bench_function("ring", |b| {
        b.iter(|| ring_key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring_rng, black_box(&headers), &mut sig))
    });
    let aws_key =
        aws_lc_rs::signature::RsaKeyPair::from_der(pkcs1.as_bytes()).expect("aws-lc-rs takes the key");
    let aws_rng = aws_lc_rs::rand::SystemRandom::new();
    g.bench_function("aws_lc_rs", |b| {
        b.iter(|| {
            aws_key.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &aws_rng, black_box(&headers), &mut sig)
        })
    });
    let rustcrypto = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
    g.bench_function("rustcrypto_rsa", |b| b.iter(|| rustcrypto.sign(black_box(&headers))));
    g.finish();
}

/// The suppression check with 10 million suppressed addresses: the in-memory
/// filter answers misses (the common case) without a database round trip.
fn suppression(c: &mut Criterion) {
    const N: u64 = 10_000_000;
    let hasher = mailpipe_token::RecipientHasher::new(&vec![7u8; 32].into()).expect("32-byte key");
    let key = |i: u64| hasher.hash(&format!("user{i}@example.com")).0;
    let bloom = mailpipe_store::Bloom::with_capacity(N);
    let started = std::time::Instant::now();
    for i in 0..N {
        bloom.insert(&key(i));
    }
    eprintln!(
        "suppression filter: {N} entries inserted in {:.1} s, {} MB",
        started.elapsed().as_secs_f64(),
        bloom.size_bytes() / (1 << 20)
    );
    let misses = (0..100_000u64).filter(|i| bloom.may_contain(&key(N + i))).count();
    eprintln!("suppression filter: false-positive rate {:.2}%", misses as f64 / 1_000.0);
    let (hit, miss) = (key(N / 2), key(N + 7));
    let mut g = c.benchmark_group("suppression_10m");
    g.throughput(Throughput::Elements(1));
    g.bench_function("filter_hit", |b| b.iter(|| bloom.may_contain(std::hint::black_box(&hit))));
    g.bench_function("filter_miss", |b| b.iter(|| bloom.may_contain(std::hint::black_box(&miss))));
    g.bench_function("hash_and_check", |b| {
        b.iter(|| bloom.may_contain(&hasher.hash(std::hint::black_box("someone@example.org")).0))
    });
    g.finish();
}

/// What the tracker does per open or click besides HTTP and the spool:
/// classify the user agent, build the event, encode it.
fn tracker(c: &mut Criterion) {
    let mut g = c.benchmark_group("tracker");
    g.throughput(Throughput::Elements(1));
    let chrome =
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
    g.bench_function("ua_family_chrome", |b| {
        b.iter(|| mailpipe_tracker::signals::ua_family(black_box(chrome)))
    });
    let outlook = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)";
    g.bench_function("ua_family_outlook", |b| {
        b.iter(|| mailpipe_tracker::signals::ua_family(black_box(outlook)))
    });
    let (tenant, campaign, job) = (
        TenantId::parse("acme").unwrap_or_else(|_| unreachable!()),
        CampaignId::parse("spring").unwrap_or_else(|_| unreachable!()),
        JobId::parse("job-000123").unwrap_or_else(|_| unreachable!()),
    );
    g.bench_function("open_event_encode", |b| {
        b.iter(|| {
            let e = mailpipe_core::Event::for_job(
                mailpipe_core::EventType::Open,
                black_box(&tenant),
                &campaign,
                &job,
                "0123456789abcdef",
            );
            e.to_json()
        })
    });
    g.finish();
}

criterion_group!(benches, tokens, compose, classifier, dkim, rsa_backends, suppression, tracker);
criterion_main!(benches);
