//! Turns a send job into the bytes of a MIME message.
//!
//! The pipeline, all pure and synchronous:
//! 1. [`template`]: minijinja renders subject, HTML and text with strict
//!    undefined variables, HTML auto-escaping, and fuel and recursion limits.
//! 2. [`links`]: lol_html rewrites every http(s) link to a signed click URL
//!    (including links inside Outlook conditional comments) and appends the
//!    open pixel and honeypot; `text` derives a text part from the result
//!    when the job has none.
//! 3. [`mime`]: mail-builder writes the message with Message-ID, Date, the
//!    correlation headers and, for marketing mail, RFC 8058 List-Unsubscribe.
#![forbid(unsafe_code)]

pub mod dkim;
pub mod links;
pub mod mime;
/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    /// Link rewriting (with the pixel and honeypot), text-part link
    /// rewriting and the HTML-to-text derivation over arbitrary input.
    pub fn rewrite_everything(html: &str) {
        let mut sign = |url: &str| -> Result<String, mailpipe_token::TokenError> {
            Ok(format!("https://t.example/c/{}", url.len()))
        };
        let _ = crate::links::rewrite_html(
            html,
            "https://t.example/",
            "https://t.example/o/x",
            Some("https://t.example/c/hp"),
            true,
            &mut sign,
        );
        let _ = crate::links::rewrite_text(html, "https://t.example/", &mut sign);
        let _ = crate::text::html_to_text(html);
    }
}

mod qp;
pub mod sandbox;
pub mod settings;
mod sign_pool;
pub mod template;
mod text;

/// Inputs the tests generate: strings of up to `max_pieces` pieces drawn
/// from `pieces`, `count` of them, from a fixed seed (xorshift64), so that
/// a failure names an input that fails again.
#[cfg(test)]
pub(crate) fn generated(
    pieces: &'static [&'static str],
    seed: u64,
    count: usize,
    max_pieces: u64,
) -> impl Iterator<Item = String> {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count).map(move |_| {
        let len = next() % max_pieces;
        (0..len).map(|_| pieces[(next() % pieces.len() as u64) as usize]).collect()
    })
}

use std::sync::Arc;

use mailpipe_core::{Category, Content, SendJob};
use mailpipe_token::{Action, Claims, Keyring, RecipientHasher, References, TokenError};
use time::OffsetDateTime;
use tracing::Instrument;

pub use dkim::{DkimAlgorithm, DkimError, DkimKey};
pub use sandbox::{Sandbox, SandboxError, SandboxSettings};
pub use settings::{Isolation, RenderSettings};
pub use template::{CompiledTemplates, MAX_SUBJECT_BYTES, TemplateLimits, TemplateOutput, TemplateSet};

/// Why a job could not be rendered. None of these gets better on retry:
/// each is a dead letter.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{part} template: {source}")]
    Template {
        part: &'static str,
        #[source]
        source: minijinja::Error,
    },
    #[error("rendered subject contains CR, LF or another control character")]
    SubjectInjection,
    #[error("html rewriting failed: {0}")]
    Html(String),
    #[error("token: {0}")]
    Token(#[from] TokenError),
    #[error("job names template {0:?} but none was supplied")]
    MissingTemplate(String),
    #[error("mime: {0}")]
    Mime(#[from] std::io::Error),
    #[error("dkim: {0}")]
    Dkim(#[from] DkimError),
    #[error("{what} is over its {limit}-byte limit")]
    TooLarge { what: &'static str, limit: usize },
    /// What a render sandbox reported, or what became of it.
    #[error("{message}")]
    Sandboxed { reason: &'static str, message: String },
}

impl RenderError {
    /// Where a template went wrong: its part (`subject`, `html`, `text`)
    /// and, when the template engine knows it, the line in that part.
    pub fn template_location(&self) -> Option<(&'static str, Option<usize>)> {
        match self {
            RenderError::Template { part, source } => Some((part, source.line())),
            _ => None,
        }
    }

    /// A stable reason code for dead letters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RenderError::Template { .. } => "template_error",
            RenderError::SubjectInjection => "header_injection",
            RenderError::Html(_) => "html_error",
            RenderError::Token(_) => "token_error",
            RenderError::MissingTemplate(_) => "unknown_template",
            RenderError::Mime(_) => "mime_error",
            RenderError::Dkim(_) => "dkim_error",
            RenderError::TooLarge { .. } => "too_large",
            RenderError::Sandboxed { reason, .. } => reason,
        }
    }
}

/// Where tracked links point, and the optional mailto for List-Unsubscribe.
#[derive(Debug, Clone)]
pub struct TrackingLinks {
    /// Public base URL of the tracker, without a trailing slash,
    /// e.g. `https://t.mail.example.com`.
    pub base_url: String,
    /// An address for `List-Unsubscribe: <mailto:...>`, if the platform runs one.
    pub unsubscribe_mailto: Option<String>,
}

impl TrackingLinks {
    /// The URL bound in honeypot click tokens; the tracker recognises it.
    pub fn honeypot_target(&self) -> String {
        format!("{}/hp", self.base_url)
    }
}

/// A job rendered and its links rewritten, before MIME: what
/// [`Composer::render`] returns and [`Composer::build`] takes.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub message_id: String,
    pub subject: String,
    pub html: Option<String>,
    pub text: String,
    /// The RFC 8058 header value, for marketing mail.
    pub list_unsubscribe: Option<String>,
    pub tracked_links: usize,
}

/// A message ready for signing and sending.
#[derive(Debug, Clone)]
pub struct Composed {
    /// Without angle brackets.
    pub message_id: String,
    pub bytes: Vec<u8>,
    /// How many links were rewritten to tracked ones.
    pub tracked_links: usize,
}

/// Why [`Composer::compose_job`] made no message: the job's fault (a dead
/// letter), or the render sandbox's (retried).
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error(transparent)]
    Job(#[from] RenderError),
    #[error(transparent)]
    Unavailable(#[from] SandboxError),
}

/// A job's tokens and template variables, made before its templates run.
pub struct Prepared {
    sent_at: u32,
    unsubscribe_url: String,
    open_url: String,
    /// What the templates see ([`template::context`]).
    pub context: serde_json::Value,
}

/// The most links one message may have signed (HTML and text parts
/// together, the honeypot included); more: `too_large`.
pub const MAX_SIGNED_LINKS: usize = 1000;

/// The most a whole message may be, by default, in bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// Composes messages. Cheap to share behind an `Arc`.
pub struct Composer {
    keyring: Arc<Keyring>,
    recipients: RecipientHasher,
    references: References,
    links: TrackingLinks,
    limits: TemplateLimits,
    max_message_bytes: usize,
    inline: template::InlineCache,
    sandbox: Option<Arc<Sandbox>>,
    /// Made at the first signed [`Composer::compose_job`]: a composer that
    /// never signs that way starts no threads.
    signers: std::sync::OnceLock<std::io::Result<sign_pool::SignPool>>,
}

impl Composer {
    pub fn new(
        keyring: Arc<Keyring>,
        recipients: RecipientHasher,
        mut links: TrackingLinks,
        limits: TemplateLimits,
    ) -> Self {
        while links.base_url.ends_with('/') {
            links.base_url.pop();
        }
        let inline = template::InlineCache::new(limits.clone(), 512);
        Self {
            keyring,
            references: recipients.references(),
            recipients,
            links,
            limits,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            inline,
            sandbox: None,
            signers: std::sync::OnceLock::new(),
        }
    }

    /// Refuses messages over `bytes`, signature included.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Renders templates in `sandbox` ([`Composer::compose_job`]).
    pub fn with_sandbox(mut self, sandbox: Arc<Sandbox>) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    pub fn recipients(&self) -> &RecipientHasher {
        &self.recipients
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn limits(&self) -> &TemplateLimits {
        &self.limits
    }

    /// The Message-ID of a job. Deterministic, so a redelivered job carries
    /// the same id and a duplicate is recognisable on the receiving side.
    pub fn message_id(job: &SendJob) -> String {
        let digest = mailpipe_core::stable_digest(&[job.tenant_id.as_str(), job.job_id.as_str()]);
        format!("{digest}@{}", job.from.email.domain())
    }

    /// Renders and builds the message for `job`, rendering its templates in
    /// this process: [`Composer::render`], then [`Composer::build`], then,
    /// with `dkim`, the signature. `registered` must be given when the job
    /// names a template; inline jobs ignore it. The caller chooses the key:
    /// it must be one the job's tenant may sign with, for the job's From
    /// domain.
    pub fn compose(
        &self,
        job: &SendJob,
        registered: Option<&CompiledTemplates>,
        now: OffsetDateTime,
        dkim: Option<&DkimKey>,
    ) -> Result<Composed, RenderError> {
        let prepared = self.prepare(job, now)?;
        let output = self.render_here(job, registered, &prepared)?;
        self.finish(job, prepared, output, now, dkim)
    }

    /// The same as [`Composer::compose`], with the templates rendered in the
    /// composer's sandbox if it has one: how the worker composes, since a
    /// tenant's template must not be able to exhaust the worker's memory.
    pub async fn compose_job(
        &self,
        job: &SendJob,
        registered: Option<&CompiledTemplates>,
        now: OffsetDateTime,
        dkim: Option<&Arc<DkimKey>>,
    ) -> Result<Composed, ComposeError> {
        let prepared = self.prepare(job, now)?;
        let output = match &self.sandbox {
            Some(sandbox) => sandbox.render(sources(job, registered)?, &prepared.context).await??,
            None => self.render_here(job, registered, &prepared)?,
        };
        let (rendered, bytes) = self.build_unsigned(job, prepared, output, now)?;
        let (bytes, header) = match dkim {
            None => (bytes, None),
            // On the signing threads, one per core, not this runtime's.
            Some(key) => {
                let started = std::time::Instant::now();
                let (bytes, header) = match self.signers.get_or_init(sign_pool::SignPool::per_core) {
                    Ok(pool) => {
                        pool.sign(Arc::clone(key), bytes).instrument(tracing::debug_span!("sign")).await
                    }
                    // No threads to be had (the process is at its limit):
                    // signed here, as before the pool, rather than not at all.
                    Err(_) => {
                        let header = tracing::debug_span!("sign").in_scope(|| key.sign(&bytes));
                        (bytes, header)
                    }
                };
                // The job's time signing, a wait for a free thread included.
                metrics::histogram!("mailpipe_step_seconds", "step" => "sign")
                    .record(started.elapsed().as_secs_f64());
                (bytes, Some(header.map_err(RenderError::from)?))
            }
        };
        Ok(self.seal(rendered, bytes, header)?)
    }

    /// The job's tokens and the variables its templates see.
    pub fn prepare(&self, job: &SendJob, now: OffsetDateTime) -> Result<Prepared, RenderError> {
        let sent_at = u32::try_from(now.unix_timestamp()).unwrap_or(u32::MAX);
        let recipient = self.recipients.hash(&job.to.email.canonical());
        let unsub_token = self.keyring.sign(&claims(job, sent_at, Action::Unsubscribe { recipient }))?;
        let unsubscribe_url = format!("{}/u/{unsub_token}", self.links.base_url);
        let open_url =
            format!("{}/o/{}", self.links.base_url, self.keyring.sign(&claims(job, sent_at, Action::Open))?);
        let context = template::context(job, &unsubscribe_url);
        Ok(Prepared { sent_at, unsubscribe_url, open_url, context })
    }

    fn render_here(
        &self,
        job: &SendJob,
        registered: Option<&CompiledTemplates>,
        prepared: &Prepared,
    ) -> Result<TemplateOutput, RenderError> {
        let ctx = minijinja::Value::from_serialize(&prepared.context);
        match (&job.content, registered) {
            (Content::Inline { subject, html, text }, _) => {
                self.inline.get(subject, html.as_deref(), text.as_deref())?.render(&ctx)
            }
            (Content::Registered { .. }, Some(t)) => t.render(&ctx),
            (Content::Registered { id, .. }, None) => Err(RenderError::MissingTemplate(id.to_string())),
        }
    }

    /// The rest, from the rendered templates: links rewritten, MIME built,
    /// signed, and the whole held to its size limit.
    pub fn finish(
        &self,
        job: &SendJob,
        prepared: Prepared,
        output: TemplateOutput,
        now: OffsetDateTime,
        dkim: Option<&DkimKey>,
    ) -> Result<Composed, RenderError> {
        let (rendered, bytes) = self.build_unsigned(job, prepared, output, now)?;
        // Its own span and step time: the one CPU-heavy step of a send.
        let signing = tracing::debug_span!("sign").entered();
        let started = std::time::Instant::now();
        let header = dkim.map(|k| k.sign(&bytes)).transpose();
        if dkim.is_some() {
            metrics::histogram!("mailpipe_step_seconds", "step" => "sign")
                .record(started.elapsed().as_secs_f64());
        }
        drop(signing);
        self.seal(rendered, bytes, header?)
    }

    /// Links rewritten and the MIME message built, not yet signed.
    fn build_unsigned(
        &self,
        job: &SendJob,
        prepared: Prepared,
        output: TemplateOutput,
        now: OffsetDateTime,
    ) -> Result<(Rendered, Vec<u8>), RenderError> {
        let rendered = self.rewrite(job, &prepared, output)?;
        let bytes = self.build(job, &rendered, now)?;
        Ok((rendered, bytes))
    }

    /// The signature on top, and the whole held to its size limit.
    fn seal(
        &self,
        rendered: Rendered,
        mut bytes: Vec<u8>,
        header: Option<String>,
    ) -> Result<Composed, RenderError> {
        if let Some(header) = header {
            let mut signed = Vec::with_capacity(header.len() + bytes.len());
            signed.extend_from_slice(header.as_bytes());
            signed.extend_from_slice(&bytes);
            bytes = signed;
        }
        if bytes.len() > self.max_message_bytes {
            return Err(RenderError::TooLarge { what: "the message", limit: self.max_message_bytes });
        }
        Ok(Composed { message_id: rendered.message_id, bytes, tracked_links: rendered.tracked_links })
    }

    /// Stages 1 and 2 in this process: the templates rendered, every link
    /// rewritten to a signed click URL, the pixel and honeypot added, the
    /// text part derived.
    pub fn render(
        &self,
        job: &SendJob,
        registered: Option<&CompiledTemplates>,
        now: OffsetDateTime,
    ) -> Result<Rendered, RenderError> {
        let prepared = self.prepare(job, now)?;
        let output = self.render_here(job, registered, &prepared)?;
        self.rewrite(job, &prepared, output)
    }

    /// Stage 2: links, pixel, honeypot and text part, from rendered templates.
    fn rewrite(
        &self,
        job: &SendJob,
        prepared: &Prepared,
        rendered: TemplateOutput,
    ) -> Result<Rendered, RenderError> {
        if rendered.subject.chars().any(char::is_control) {
            return Err(RenderError::SubjectInjection);
        }
        let (sent_at, unsubscribe_url, open_url) =
            (prepared.sent_at, &prepared.unsubscribe_url, &prepared.open_url);
        let claims = |action| claims(job, sent_at, action);

        // Each link costs a MAC and a URL a few hundred bytes long, in the
        // HTML and again in the text: a part of nothing but links must not
        // cost the worker what it does not cost the template.
        let signed = std::cell::Cell::new(0usize);
        let mut sign_click = |url: &str| -> Result<String, TokenError> {
            signed.set(signed.get() + 1);
            if signed.get() > MAX_SIGNED_LINKS {
                return Err(TokenError::TooLong);
            }
            let t = self.keyring.sign(&claims(Action::Click { url: url.to_owned() }))?;
            Ok(format!("{}/c/{t}", self.links.base_url))
        };
        let too_many = || RenderError::TooLarge { what: "the number of links", limit: MAX_SIGNED_LINKS };
        let tracker_prefix = format!("{}/", self.links.base_url);
        let rewritten = (|| -> Result<(Option<String>, String, usize), RenderError> {
            Ok(match rendered.html {
                Some(html) => {
                    // The honeypot is a click token for the tracker's own /hp,
                    // which no person is shown: whoever follows it is a machine.
                    let honeypot = sign_click(&self.links.honeypot_target())?;
                    // One pass over the HTML: links, pixel, honeypot, and the
                    // text part when the job has none.
                    let out = links::rewrite_html(
                        &html,
                        &tracker_prefix,
                        open_url,
                        Some(&honeypot),
                        rendered.text.is_none(),
                        &mut sign_click,
                    )?;
                    let text = match (rendered.text, out.text) {
                        (Some(t), _) => links::rewrite_text(&t, &tracker_prefix, &mut sign_click)?.0,
                        (None, Some(derived)) => derived,
                        (None, None) => String::new(),
                    };
                    (Some(out.html), text, out.rewritten)
                }
                None => {
                    let (text, n) = links::rewrite_text(
                        rendered.text.as_deref().unwrap_or_default(),
                        &tracker_prefix,
                        &mut sign_click,
                    )?;
                    (None, text, n)
                }
            })
        })();
        let (html, text, tracked_links) =
            rewritten.map_err(|e| if signed.get() > MAX_SIGNED_LINKS { too_many() } else { e })?;

        let message_id = Self::message_id(job);
        let list_unsubscribe = (job.category == Category::Marketing).then(|| {
            let mut v = format!("<{unsubscribe_url}>");
            if let Some(m) = &self.links.unsubscribe_mailto {
                v.push_str(&format!(", <mailto:{m}?subject=unsubscribe>"));
            }
            v
        });
        Ok(Rendered { message_id, subject: rendered.subject, html, text, list_unsubscribe, tracked_links })
    }

    /// Stage 3: the MIME message (unsigned) from a rendered job.
    pub fn build(&self, job: &SendJob, r: &Rendered, now: OffsetDateTime) -> Result<Vec<u8>, RenderError> {
        let reference = self.references.sign(&job.tenant_id, &job.job_id);
        Ok(mime::build(mime::Parts {
            job,
            message_id: &r.message_id,
            date: now,
            subject: &r.subject,
            html: r.html.as_deref(),
            text: &r.text,
            list_unsubscribe: r.list_unsubscribe.as_deref(),
            reference: &reference,
        })?)
    }
}

/// The claims of one of a job's tokens.
fn claims(job: &SendJob, sent_at: u32, action: Action) -> Claims {
    Claims {
        tenant_id: job.tenant_id.clone(),
        campaign_id: job.campaign_id.clone(),
        job_id: job.job_id.clone(),
        category: job.category,
        sent_at,
        action,
    }
}

/// A job's template sources: its own, or its registered template's.
fn sources<'a>(
    job: &'a SendJob,
    registered: Option<&'a CompiledTemplates>,
) -> Result<sandbox::Sources<'a>, RenderError> {
    match (&job.content, registered) {
        (Content::Inline { subject, html, text }, _) => {
            Ok(sandbox::Sources { subject, html: html.as_deref(), text: text.as_deref() })
        }
        (Content::Registered { .. }, Some(t)) => {
            let set = t.set();
            Ok(sandbox::Sources {
                subject: &set.subject,
                html: set.html.as_deref(),
                text: set.text.as_deref(),
            })
        }
        (Content::Registered { id, .. }, None) => Err(RenderError::MissingTemplate(id.to_string())),
    }
}
