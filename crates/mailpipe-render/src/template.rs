//! minijinja rendering with the limits a multi-tenant worker needs.

use mailpipe_core::SendJob;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::RenderError;

/// Limits that stop a hostile template from hanging a render or flooding
/// its output. (Memory is bounded by rendering in a [`crate::sandbox`]
/// process: no limit inside minijinja can bound what its operators build.)
#[derive(Debug, Clone)]
pub struct TemplateLimits {
    /// minijinja fuel: roughly, instructions executed per render.
    pub fuel: u64,
    /// Nesting depth of blocks, loops, macros and includes.
    pub recursion: usize,
    /// The most each rendered part (HTML, text) may be, in bytes.
    pub max_part_bytes: usize,
}

/// The most a rendered subject may be, in bytes: a subject is a line, and
/// 2 KiB is already far past what any mailbox shows.
pub const MAX_SUBJECT_BYTES: usize = 2048;

impl Default for TemplateLimits {
    fn default() -> Self {
        Self { fuel: 200_000, recursion: 64, max_part_bytes: 2 * 1024 * 1024 }
    }
}

impl TemplateLimits {
    fn cap(&self, part: &str) -> usize {
        if part == "subject" { MAX_SUBJECT_BYTES.min(self.max_part_bytes) } else { self.max_part_bytes }
    }
}

/// An output that refuses to grow past `cap`: the render stops at the
/// first write over it, not after the whole part is built.
struct Capped {
    out: Vec<u8>,
    cap: usize,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.cap {
            self.over = true;
            return Err(std::io::Error::other("part too large"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The three sources of one message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TemplateSet {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
}

/// The rendered subject, HTML and text, before links are rewritten.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateOutput {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
}

fn environment(limits: &TemplateLimits) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(limits.fuel));
    env.set_recursion_limit(limits.recursion);
    // Only the HTML part is escaped; names decide, so give parts fixed names.
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") { minijinja::AutoEscape::Html } else { minijinja::AutoEscape::None }
    });
    env
}

/// The variables a template sees: the job's `vars`, plus `unsubscribe_url`
/// and `to_name` (built-ins win over vars of the same name). As JSON, so
/// that it can go to a sandbox process as it is.
pub(crate) fn context(job: &SendJob, unsubscribe_url: &str) -> serde_json::Value {
    let mut map = job.vars.clone();
    map.insert("unsubscribe_url".into(), unsubscribe_url.into());
    map.insert("to_name".into(), job.to.name.clone().unwrap_or_default().into());
    serde_json::Value::Object(map)
}

fn err(part: &'static str) -> impl FnOnce(minijinja::Error) -> RenderError {
    move |source| RenderError::Template { part, source }
}

/// Compiled sets whose sources share a hash.
type Bucket = Vec<(TemplateSet, Arc<CompiledTemplates>)>;

/// Inline templates, compiled once per distinct source text. Jobs of one
/// campaign carry the same templates, so after the first job a render costs
/// a hash of the sources instead of a parse. Bounded: when full it starts over.
pub(crate) struct InlineCache {
    limits: TemplateLimits,
    capacity: usize,
    // A std mutex: held for a lookup or an insert, never across a render.
    map: Mutex<HashMap<u64, Bucket>>,
}

impl InlineCache {
    pub(crate) fn new(limits: TemplateLimits, capacity: usize) -> Self {
        Self { limits, capacity, map: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn get(
        &self,
        subject: &str,
        html: Option<&str>,
        text: Option<&str>,
    ) -> Result<Arc<CompiledTemplates>, RenderError> {
        let mut h = std::hash::DefaultHasher::new();
        (subject, html, text).hash(&mut h);
        let key = h.finish();
        let same =
            |t: &TemplateSet| t.subject == subject && t.html.as_deref() == html && t.text.as_deref() == text;
        {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(hit) = map.get(&key).and_then(|b| b.iter().find(|(t, _)| same(t))) {
                return Ok(hit.1.clone());
            }
        }
        let set = TemplateSet {
            subject: subject.to_owned(),
            html: html.map(str::to_owned),
            text: text.map(str::to_owned),
        };
        let compiled = Arc::new(CompiledTemplates::compile(&set, &self.limits)?);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity {
            map.clear();
        }
        map.entry(key).or_default().push((set, compiled.clone()));
        Ok(compiled)
    }
}

/// A registered template set, parsed once and reused for every job of its
/// campaign.
pub struct CompiledTemplates {
    env: Environment<'static>,
    set: TemplateSet,
    limits: TemplateLimits,
}

impl CompiledTemplates {
    /// Parses all parts, so syntax errors surface at registration, not per job.
    pub fn compile(set: &TemplateSet, limits: &TemplateLimits) -> Result<Self, RenderError> {
        let mut env = environment(limits);
        env.add_template_owned("subject.txt", set.subject.clone()).map_err(err("subject"))?;
        if let Some(h) = &set.html {
            env.add_template_owned("body.html", h.clone()).map_err(err("html"))?;
        }
        if let Some(t) = &set.text {
            env.add_template_owned("body.txt", t.clone()).map_err(err("text"))?;
        }
        Ok(Self { env, set: set.clone(), limits: limits.clone() })
    }

    /// The sources it was compiled from.
    pub fn set(&self) -> &TemplateSet {
        &self.set
    }

    /// Renders every part in this process, each stopped at its size limit.
    pub fn render(&self, ctx: &Value) -> Result<TemplateOutput, RenderError> {
        let one = |name: &str, part: &'static str| -> Result<String, RenderError> {
            let template = self.env.get_template(name).map_err(err(part))?;
            let limit = self.limits.cap(part);
            let mut out = Capped { out: Vec::new(), cap: limit, over: false };
            match template.render_captured_to(ctx, &mut out) {
                Ok(_) => {
                    String::from_utf8(out.out).map_err(|_| RenderError::Html(format!("{part}: not UTF-8")))
                }
                Err(_) if out.over => Err(RenderError::TooLarge { what: part, limit }),
                Err(e) => Err(err(part)(e)),
            }
        };
        Ok(TemplateOutput {
            subject: one("subject.txt", "subject")?,
            html: self.set.html.is_some().then(|| one("body.html", "html")).transpose()?,
            text: self.set.text.is_some().then(|| one("body.txt", "text")).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    fn limits() -> TemplateLimits {
        TemplateLimits::default()
    }

    fn render_inline(
        limits: &TemplateLimits,
        subject: &str,
        html: Option<&str>,
        text: Option<&str>,
        ctx: &Value,
    ) -> Result<TemplateOutput, RenderError> {
        InlineCache::new(limits.clone(), 4).get(subject, html, text)?.render(ctx)
    }

    #[test]
    fn the_inline_cache_reuses_and_distinguishes_sources() {
        let cache = InlineCache::new(limits(), 2);
        let a = cache.get("s", Some("<p>{{ x }}</p>"), None).unwrap();
        let b = cache.get("s", Some("<p>{{ x }}</p>"), None).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "same sources, same compiled templates");
        let c = cache.get("s", None, Some("<p>{{ x }}</p>")).unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "html and text differ");
        let _ = cache.get("t", None, Some("x")).unwrap(); // over capacity: starts over
        let d = cache.get("s", Some("<p>{{ x }}</p>"), None).unwrap();
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(d.render(&context! { x => "1" }).unwrap().html.unwrap(), "<p>1</p>");
    }

    #[test]
    fn html_is_escaped_and_subject_is_not() {
        let ctx = context! { name => "<b>Tom & Jerry</b>" };
        let r = render_inline(&limits(), "Hi {{ name }}", Some("<p>{{ name }}</p>"), None, &ctx).unwrap();
        assert_eq!(r.subject, "Hi <b>Tom & Jerry</b>");
        assert_eq!(r.html.unwrap(), "<p>&lt;b&gt;Tom &amp; Jerry&lt;&#x2f;b&gt;</p>");
    }

    #[test]
    fn undefined_variables_are_errors() {
        let e = render_inline(&limits(), "Hi {{ nobody }}", None, Some("x"), &context! {}).err().unwrap();
        assert_eq!(e.reason(), "template_error");
        assert!(e.to_string().contains("subject"), "{e}");
    }

    #[test]
    fn fuel_stops_runaway_loops() {
        let src = "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}";
        let e = render_inline(&limits(), "s", None, Some(src), &context! {}).err().unwrap();
        assert!(e.to_string().to_lowercase().contains("fuel"), "{e}");
    }

    #[test]
    fn recursion_is_bounded() {
        let src = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        let e = render_inline(&limits(), "s", None, Some(src), &context! {}).err().unwrap();
        assert_eq!(e.reason(), "template_error");
    }

    #[test]
    fn each_part_stops_at_its_size_limit() {
        let small = TemplateLimits { max_part_bytes: 1000, ..limits() };
        let e = render_inline(&small, "s", None, Some("{{ 'x' * 5000 }}"), &context! {}).err().unwrap();
        assert_eq!((e.reason(), e.to_string().contains("text")), ("too_large", true), "{e}");
        // A loop that writes a little at a time stops at the limit too.
        let e =
            render_inline(&small, "s", Some("{% for i in range(900) %}ab{% endfor %}"), None, &context! {})
                .err()
                .unwrap();
        assert_eq!(e.reason(), "too_large", "{e}");
        let e = render_inline(&limits(), "{{ 'x' * 3000 }}", None, Some("x"), &context! {}).err().unwrap();
        assert!(e.to_string().contains("subject"), "{e}");
        let ok = render_inline(&small, "s", None, Some("{{ 'x' * 1000 }}"), &context! {}).unwrap();
        assert_eq!(ok.text.unwrap().len(), 1000);
    }

    #[test]
    fn compiled_templates_render_repeatedly() {
        let set = TemplateSet {
            subject: "Hello {{ name }}".into(),
            html: Some("<p>{{ name }}</p>".into()),
            text: None,
        };
        let c = CompiledTemplates::compile(&set, &limits()).unwrap();
        for name in ["a", "b"] {
            let r = c.render(&context! { name }).unwrap();
            assert_eq!(r.subject, format!("Hello {name}"));
            assert!(r.text.is_none());
        }
        let bad = TemplateSet { subject: "{% if %}".into(), html: None, text: Some("x".into()) };
        assert!(CompiledTemplates::compile(&bad, &limits()).is_err());
    }
}
