//! Link tracking with lol_html: a streaming rewriter, so a 10 KB body costs
//! one pass and no DOM. The text part, when the job has none, is derived
//! from the rewritten HTML afterwards (`text.rs`).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};

use lol_html::html_content::{ContentType, Element, EndTag};
use std::sync::LazyLock;

use lol_html::{
    ElementContentHandlers, EndTagHandler, HandlerResult, RewriteStrSettings, Selector, doc_comments,
    rewrite_str,
};

/// The selectors of every pass, parsed once per process rather than once
/// per message (what `lol_html::element!` does).
macro_rules! selector {
    ($name:ident, $css:literal) => {
        static $name: LazyLock<Selector> = LazyLock::new(|| $css.parse().expect(concat!("selector ", $css)));
    };
}
selector!(HREF, "[href]");
// What a reader clicks in the document. Not `[href]`: a `<link>` (a
// stylesheet, a font) is fetched by the client on open, and a `<base>`
// would send every relative URL through the tracker; and an attribute
// selector without a tag name makes lol_html parse the attributes of every
// element, about a tenth of the pass.
selector!(CLICKABLE, "a[href], area[href]");
selector!(BODY, "body");

/// A handler for the elements `selector` matches.
fn on<'h>(
    selector: &'static LazyLock<Selector>,
    handler: impl FnMut(&mut Element<'_, '_>) -> HandlerResult + 'h,
) -> ElementHandler<'h> {
    (Cow::Borrowed(LazyLock::force(selector)), ElementContentHandlers::default().element(handler))
}
use mailpipe_token::TokenError;

use crate::RenderError;

pub(crate) struct RewrittenHtml {
    pub html: String,
    pub rewritten: usize,
    /// The body as plain text, when asked for (`text.rs`'s rules).
    pub text: Option<String>,
}

type Signer<'a> = &'a mut dyn FnMut(&str) -> Result<String, TokenError>;

/// Whether `href` is a link we track: http(s), not already ours.
fn trackable(href: &str, tracker_prefix: &str) -> bool {
    let h = href.trim();
    let lower = h.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    (lower.starts_with("http://") || lower.starts_with("https://")) && !h.starts_with(tracker_prefix)
}

/// The one place that decides what happens to an `href`, shared by the main
/// document and the markup inside conditional comments.
struct LinkRewriter<'a> {
    sign: RefCell<Signer<'a>>,
    prefix: &'a str,
    count: Cell<usize>,
    failure: RefCell<Option<TokenError>>,
}

impl LinkRewriter<'_> {
    /// Rewrites one element's `href`; returns whether it changed.
    fn rewrite(&self, el: &mut Element<'_, '_>) -> bool {
        if el.has_attribute("data-notrack") {
            el.remove_attribute("data-notrack");
            return false;
        }
        // lol_html gives the attribute as written; the token binds the URL a
        // browser would follow, so character references are decoded first.
        let Some(raw) = el.get_attribute("href") else { return false };
        let href = decode_entities(raw.trim());
        if !trackable(&href, self.prefix) {
            // Our own links (unsubscribe) come out of auto-escaping as
            // `https:&#x2f;&#x2f;...`; write them back plain. They are base64url
            // under our base, so there is nothing that needs escaping.
            if href.starts_with(self.prefix) && href != raw.as_str() {
                let _ = el.set_attribute("href", &href);
            }
            return false;
        }
        match (self.sign.borrow_mut())(&href) {
            Ok(url) => {
                // The URL is our base plus base64url: nothing to escape, and
                // set_attribute only fails for invalid attribute names.
                let _ = el.set_attribute("href", &url);
                self.count.set(self.count.get() + 1);
                true
            }
            Err(e) => {
                *self.failure.borrow_mut() = Some(e);
                false
            }
        }
    }

    /// Rewrites the markup of a conditional comment, or `None` if unchanged.
    fn rewrite_fragment(&self, html: &str) -> Option<String> {
        let changed = Cell::new(false);
        let out = rewrite_str(
            html,
            RewriteStrSettings {
                element_content_handlers: vec![on(&HREF, |el| {
                    if self.rewrite(el) {
                        changed.set(true);
                    }
                    Ok(())
                })],
                ..RewriteStrSettings::new()
            },
        )
        .ok()?;
        changed.get().then_some(out)
    }
}

/// Marks the hidden honeypot link, which the text part leaves out.
pub(crate) const HONEYPOT_ATTR: &str = "data-mailpipe-honeypot";

/// Rewrites every trackable `href` in `html`, including those in conditional
/// comments (`<!--[if mso]>...<![endif]-->`), and appends the open pixel
/// before `</body>` (or at the end when there is no body element), followed
/// by `honeypot_url` (already tracked) as a link no person can see or reach:
/// only a machine that fetches every link follows it. With `derive_text`,
/// the body as plain text is derived from the result (`text.rs`),
/// its links as rewritten (the honeypot and pixel have no text).
pub(crate) fn rewrite_html(
    html: &str,
    tracker_prefix: &str,
    open_url: &str,
    honeypot_url: Option<&str>,
    derive_text: bool,
    sign: Signer<'_>,
) -> Result<RewrittenHtml, RenderError> {
    let links = LinkRewriter {
        sign: RefCell::new(sign),
        prefix: tracker_prefix,
        count: Cell::new(0),
        failure: RefCell::new(None),
    };
    let saw_body = Cell::new(false);
    let mut pixel = format!(
        r#"<img src="{open_url}" width="1" height="1" alt="" style="display:none;width:1px;height:1px;border:0">"#
    );
    if let Some(hp) = honeypot_url {
        pixel.push_str(&format!(
            r#"<a href="{hp}" {HONEYPOT_ATTR} aria-hidden="true" tabindex="-1" style="display:none;font-size:0;color:transparent"></a>"#
        ));
    }
    let elements = vec![
        on(&CLICKABLE, |el| {
            links.rewrite(el);
            Ok(())
        }),
        on(&BODY, |el| {
            saw_body.set(true);
            let pixel = pixel.clone();
            if let Some(handlers) = el.end_tag_handlers() {
                let h: EndTagHandler<'static> = Box::new(move |end: &mut EndTag<'_>| {
                    end.before(&pixel, ContentType::Html);
                    Ok(())
                });
                handlers.push(h);
            }
            Ok(())
        }),
    ];
    let documents = vec![doc_comments!(|c| {
        // Only conditional comments carry markup that clients render.
        if c.text().trim_start().starts_with("[if")
            && let Some(new) = links.rewrite_fragment(&c.text())
        {
            // Refused only if the text contains "-->"; ours cannot.
            let _ = c.set_text(&new);
        }
        Ok(())
    })];
    let mut out = rewrite_str(
        html,
        RewriteStrSettings {
            element_content_handlers: elements,
            document_content_handlers: documents,
            ..RewriteStrSettings::new()
        },
    )
    .map_err(|e| RenderError::Html(e.to_string()))?;
    if let Some(e) = links.failure.into_inner() {
        return Err(e.into());
    }
    // The pixel and the honeypot, added below, have no text.
    let text = derive_text.then(|| crate::text::html_to_text(&out));
    if !saw_body.get() {
        out.push_str(&pixel);
    }
    Ok(RewrittenHtml { html: out, rewritten: links.count.get(), text })
}

/// Rewrites bare http(s) URLs in a text part. Returns the text and the count.
pub(crate) fn rewrite_text(
    text: &str,
    tracker_prefix: &str,
    sign: Signer<'_>,
) -> Result<(String, usize), RenderError> {
    let mut out = String::with_capacity(text.len() + 256);
    let mut n = 0;
    let mut rest = text;
    while let Some(start) = find_url_start(rest) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | ')'))
            .unwrap_or(tail.len());
        // Trailing punctuation belongs to the sentence, not the URL.
        let url = tail[..end].trim_end_matches(['.', ',', ';', ':', '!', '?']);
        if trackable(url, tracker_prefix) && url.len() > "https://".len() {
            out.push_str(&sign(url)?);
            n += 1;
        } else {
            out.push_str(url);
        }
        rest = &tail[url.len()..];
    }
    out.push_str(rest);
    Ok((out, n))
}

fn find_url_start(s: &str) -> Option<usize> {
    let a = s.find("http://");
    let b = s.find("https://");
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

type ElementHandler<'h> = (Cow<'static, Selector>, ElementContentHandlers<'h>);

/// Appends the words of a text chunk to `b`, whitespace collapsed to one
/// space (none after a line break), character references decoded.
pub(crate) fn push_words(b: &mut String, chunk: &str) {
    if chunk.is_ascii() && !chunk.contains('&') {
        // Most chunks are words and single spaces: copied as they are.
        let bytes = chunk.as_bytes();
        let no_controls = bytes.iter().fold(0u8, |m, &c| m | u8::from(c < b' ')) == 0;
        let ends_in_words = |c: Option<&u8>| c.is_some_and(|&c| c != b' ');
        if no_controls && ends_in_words(bytes.first()) && ends_in_words(bytes.last()) && !chunk.contains("  ")
        {
            b.push_str(chunk);
            return;
        }
        return push_plain_words(b, chunk);
    }
    let needs_space = |b: &String| !matches!(b.as_bytes().last(), None | Some(b' ' | b'\n'));
    let mut first = true;
    let mut word = |b: &mut String, w: &str| {
        if (!first || chunk.starts_with(char::is_whitespace)) && needs_space(b) {
            b.push(' ');
        }
        b.push_str(&decode_entities(w));
        first = false;
    };
    if chunk.is_ascii() {
        // Bytes, not chars: ASCII's whitespace is all there is to split on
        // (char::is_whitespace's ASCII set, vertical tab included).
        let ws = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c');
        let bytes = chunk.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            while i < bytes.len() && ws(bytes[i]) {
                i += 1;
            }
            let start = i;
            while i < bytes.len() && !ws(bytes[i]) {
                i += 1;
            }
            if start < i {
                word(b, &chunk[start..i]);
            }
        }
    } else {
        for w in chunk.split_whitespace() {
            word(b, w);
        }
    }
    if chunk.ends_with(char::is_whitespace) && needs_space(b) {
        b.push(' ');
    }
}

/// [`push_words`] for ASCII without character references, the common
/// case: runs of words separated by single spaces are copied whole, so the
/// cost is one scan of the chunk rather than a call per word.
fn push_plain_words(b: &mut String, chunk: &str) {
    let ws = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c');
    let needs_space = |b: &String| !matches!(b.as_bytes().last(), None | Some(b' ' | b'\n'));
    let bytes = chunk.as_bytes();
    let n = bytes.len();
    let mut i = bytes.iter().take_while(|&&c| ws(c)).count();
    if i > 0 && needs_space(b) {
        b.push(' ');
    }
    // `start..` is the stretch not yet copied; it begins with a word.
    let mut start = i;
    while i < n {
        while i < n && !ws(bytes[i]) {
            i += 1;
        }
        let word_end = i;
        while i < n && ws(bytes[i]) {
            i += 1;
        }
        if i == n {
            b.push_str(&chunk[start..word_end]);
            if word_end < n {
                b.push(' ');
            }
            return;
        }
        // One plain space between two words stays in the stretch; any other
        // run of whitespace becomes one space.
        if !(i - word_end == 1 && bytes[word_end] == b' ') {
            b.push_str(&chunk[start..word_end]);
            b.push(' ');
            start = i;
        }
    }
    b.push_str(&chunk[start..]);
}

/// Decodes the character references that appear in attribute values and
/// text: the five XML ones, `&nbsp;`, and numeric `&#NN;` / `&#xHH;`.
/// Anything else is left as written.
fn decode_entities(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('&') {
        return s.into();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).map(|e| e + 1);
        let decoded = match end {
            Some(e) if tail[e..].starts_with(';') => {
                let name = &tail[1..e];
                let ch = match name {
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    "nbsp" => Some(' '),
                    n if n.starts_with("#x") || n.starts_with("#X") => {
                        u32::from_str_radix(&n[2..], 16).ok().and_then(char::from_u32)
                    }
                    n if n.starts_with('#') => n[1..].parse().ok().and_then(char::from_u32),
                    _ => None,
                };
                ch.map(|c| (c, e + 1))
            }
            _ => None,
        };
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &tail[len..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "https://t.example/";

    fn fake_sign(url: &str) -> Result<String, TokenError> {
        Ok(format!("https://t.example/c/[{url}]"))
    }

    #[test]
    fn rewrites_http_links_and_skips_the_rest() {
        let html = r##"<html><body>
            <a href="https://shop.example/a?x=1&amp;y=2">A</a>
            <a href=" HTTP://shop.example/b ">B</a>
            <a href="mailto:x@y.example">mail</a>
            <a href="tel:+123">tel</a>
            <a href="#top">anchor</a>
            <a href="https://shop.example/private" data-notrack>private</a>
            <a href="https://t.example/u/abc">unsubscribe</a>
        </body></html>"##;
        let out = rewrite_html(html, PREFIX, "https://t.example/o/P", None, false, &mut fake_sign).unwrap();
        assert_eq!(out.rewritten, 2);
        assert!(
            out.html.contains(r#"href="https://t.example/c/[https://shop.example/a?x=1&y=2]""#),
            "{}",
            out.html
        );
        assert!(out.html.contains("c/[HTTP://shop.example/b]"));
        assert!(out.html.contains(r#"href="mailto:x@y.example""#));
        assert!(out.html.contains(r##"href="#top""##));
        assert!(
            out.html.contains(r#"<a href="https://shop.example/private">"#),
            "data-notrack removed, link kept"
        );
        assert!(out.html.contains(r#"href="https://t.example/u/abc""#));
        let pixel_at = out.html.find("https://t.example/o/P").unwrap();
        assert!(pixel_at < out.html.find("</body>").unwrap());
    }

    /// What the client fetches on its own is not a click: stylesheets and
    /// a base URL keep their href; image maps' areas are links.
    #[test]
    fn tracks_what_a_reader_clicks_and_nothing_the_client_fetches() {
        let html = r##"<html><head><base href="https://shop.example/"><link rel="stylesheet" href="https://fonts.example/css"></head><body>
            <img src="https://shop.example/map.png" usemap="#m"><map name="m"><area shape="rect" coords="0,0,9,9" href="https://shop.example/area"></map>
            <a href="https://shop.example/a">A</a></body></html>"##;
        let out = rewrite_html(html, PREFIX, "https://t.example/o/P", None, false, &mut fake_sign).unwrap();
        assert_eq!(out.rewritten, 2, "{}", out.html);
        assert!(out.html.contains(r#"<base href="https://shop.example/">"#), "{}", out.html);
        assert!(out.html.contains(r#"href="https://fonts.example/css""#), "{}", out.html);
        assert!(out.html.contains("c/[https://shop.example/area]"), "{}", out.html);
        assert!(out.html.contains("c/[https://shop.example/a]"), "{}", out.html);
    }

    #[test]
    fn rewrites_links_inside_outlook_conditional_comments() {
        let html = r#"<body><!--[if mso]><v:roundrect href="https://shop.example/vml" style="x"><w:anchorlock/></v:roundrect><![endif]--><!-- plain https://not.a.link/ --></body>"#;
        let out = rewrite_html(html, PREFIX, "https://t.example/o/P", None, false, &mut fake_sign).unwrap();
        assert_eq!(out.rewritten, 1, "{}", out.html);
        assert!(out.html.contains("c/[https://shop.example/vml]"), "{}", out.html);
        assert!(out.html.contains("<!-- plain https://not.a.link/ -->"));
    }

    #[test]
    fn appends_the_pixel_without_a_body() {
        let out =
            rewrite_html("<p>hi</p>", PREFIX, "https://t.example/o/P", None, false, &mut fake_sign).unwrap();
        assert!(out.html.starts_with("<p>hi</p><img src=\"https://t.example/o/P\""));
    }

    #[test]
    fn token_errors_propagate() {
        let mut failing = |_: &str| -> Result<String, TokenError> { Err(TokenError::UrlTooLong) };
        let r = rewrite_html(r#"<a href="https://x.example/">x</a>"#, PREFIX, "o", None, false, &mut failing);
        assert!(matches!(r, Err(RenderError::Token(TokenError::UrlTooLong))));
    }

    #[test]
    fn decodes_character_references() {
        assert_eq!(decode_entities("a&amp;b&#38;c&#x26;d&lt;&unknown;&"), "a&b&c&d<&unknown;&");
        assert_eq!(decode_entities("plain"), "plain");
    }

    #[test]
    fn rewrites_urls_in_text() {
        let (t, n) =
            rewrite_text("See https://shop.example/a. Or http://x.example/b, bye", PREFIX, &mut fake_sign)
                .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            t,
            "See https://t.example/c/[https://shop.example/a]. Or https://t.example/c/[http://x.example/b], bye"
        );
    }

    /// The derived text is what lol_html's handlers made of the rewritten
    /// HTML: tracked URLs, no honeypot or pixel, nothing from conditional
    /// comments, head or scripts.
    #[test]
    fn derived_text_matches_the_text_of_the_rewritten_html() {
        let html = r#"<html><head><title>T</title><style>p{color:red}</style></head><body>
            <h1>Spring&nbsp;sale</h1><p>Dear Jane, <b>new</b> arrivals &amp; more.</p>
            <!--[if mso]><a href="https://shop.example/outlook">Outlook</a><![endif]-->
            <table><tr><td><a href="https://shop.example/a?x=1&amp;y=2">Item A</a></td>
            <td><a href="mailto:help@shop.example">Help</a></td></tr></table>
            <ul><li>one</li><li><a href="https://shop.example/b" data-notrack>untracked</a></li></ul>
            line<br>break <a href="https://t.example/u/ours">unsubscribe</a><script>alert(1)</script></body></html>"#;
        for body in [html, "<p>no body element <a href='https://x.example/'>x</a></p>", ""] {
            let one = rewrite_html(
                body,
                PREFIX,
                "https://t.example/o/P",
                Some("https://t.example/c/hp"),
                true,
                &mut fake_sign,
            )
            .unwrap();
            let two = crate::text::exact::html_to_text(&one.html).unwrap();
            assert_eq!(one.text.as_deref(), Some(two.as_str()), "{body}");
        }
        let one = rewrite_html(html, PREFIX, "o", None, true, &mut fake_sign).unwrap();
        let text = one.text.unwrap();
        assert!(text.contains("Item A (https://t.example/c/"), "{text}");
        assert!(!text.contains("Outlook") && !text.contains("alert") && !text.contains("color"), "{text}");
    }

    /// The byte-wise word splitting of ASCII text says what
    /// `split_whitespace` says.
    #[test]
    fn words_split_as_unicode_whitespace_does() {
        let reference = |chunk: &str| {
            let mut b = String::from("x");
            let mut first = true;
            for w in chunk.split_whitespace() {
                if (!first || chunk.starts_with(char::is_whitespace)) && !b.ends_with([' ', '\n']) {
                    b.push(' ');
                }
                b.push_str(&decode_entities(w));
                first = false;
            }
            if chunk.ends_with(char::is_whitespace) && !b.ends_with([' ', '\n']) {
                b.push(' ');
            }
            b
        };
        for chunk in [
            "",
            " ",
            "a",
            " a b  c ",
            "tab\tsep\r\nline\x0bvt\x0cff",
            "a&amp;b &lt;c&gt;",
            "caf\u{e9} na\u{ef}ve",
            "nbsp\u{a0}inside\u{2003}em",
            "\n\nlead",
            "trail\n",
            "  Spring is here, Jane, and  our\trange.  ",
            "one two three",
        ]
        .into_iter()
        .map(String::from)
        .chain(generated_chunks())
        {
            let chunk = chunk.as_str();
            let mut b = String::from("x");
            push_words(&mut b, chunk);
            assert_eq!(b, reference(chunk), "{chunk:?}");
        }
    }

    /// Chunks over an alphabet of words, whitespace of every kind,
    /// references and non-ASCII, from a fixed seed.
    fn generated_chunks() -> impl Iterator<Item = String> {
        const PIECES: [&str; 10] = ["a", "bc", " ", "  ", "\t", "\n", "\r\n", "&amp;", "&#10;", "\u{e9}"];
        crate::generated(&PIECES, 0x2545_f491_4f6c_dd1d, 2000, 12)
    }
}
