//! Link tracking with lol_html: a streaming rewriter, so a 10 KB body costs
//! one pass and no DOM.

use std::cell::{Cell, RefCell};

use std::rc::Rc;

use lol_html::html_content::{ContentType, Element, EndTag};
use lol_html::{EndTagHandler, RewriteStrSettings, doc_comments, doc_text, element, rewrite_str};
use mailpipe_token::TokenError;

use crate::RenderError;

pub(crate) struct RewrittenHtml {
    pub html: String,
    pub rewritten: usize,
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
                element_content_handlers: vec![element!("[href]", |el| {
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
/// only a machine that fetches every link follows it.
pub(crate) fn rewrite_html(
    html: &str,
    tracker_prefix: &str,
    open_url: &str,
    honeypot_url: Option<&str>,
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
    let mut out = rewrite_str(
        html,
        RewriteStrSettings {
            element_content_handlers: vec![
                element!("[href]", |el| {
                    links.rewrite(el);
                    Ok(())
                }),
                element!("body", |el| {
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
            ],
            document_content_handlers: vec![doc_comments!(|c| {
                // Only conditional comments carry markup that clients render.
                if c.text().trim_start().starts_with("[if")
                    && let Some(new) = links.rewrite_fragment(&c.text())
                {
                    // Refused only if the text contains "-->"; ours cannot.
                    let _ = c.set_text(&new);
                }
                Ok(())
            })],
            ..RewriteStrSettings::new()
        },
    )
    .map_err(|e| RenderError::Html(e.to_string()))?;
    if let Some(e) = links.failure.into_inner() {
        return Err(e.into());
    }
    if !saw_body.get() {
        out.push_str(&pixel);
    }
    Ok(RewrittenHtml { html: out, rewritten: links.count.get() })
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

/// A plain-text rendering of an HTML body, for messages without a text part:
/// block elements become line breaks, links keep their (tracked) URL, and
/// head, style and script content is dropped.
pub(crate) fn html_to_text(html: &str) -> Result<String, RenderError> {
    // End-tag handlers must be 'static, hence Rc rather than borrows.
    let buf = Rc::new(RefCell::new(String::with_capacity(html.len() / 2)));
    let skip = Rc::new(Cell::new(0usize));
    fn push_break(s: &mut String) {
        let trimmed = s.trim_end_matches([' ', '\t']).len();
        s.truncate(trimmed);
        if !s.is_empty() && !s.ends_with("\n\n") {
            s.push_str(if s.ends_with('\n') { "\n" } else { "\n\n" });
        }
    }
    rewrite_str(
        html,
        RewriteStrSettings {
            element_content_handlers: vec![
                element!("head, style, script, title", |el| {
                    skip.set(skip.get() + 1);
                    let skip = Rc::clone(&skip);
                    if let Some(h) = el.end_tag_handlers() {
                        let hd: EndTagHandler<'static> = Box::new(move |_: &mut EndTag<'_>| {
                            skip.set(skip.get().saturating_sub(1));
                            Ok(())
                        });
                        h.push(hd);
                    }
                    Ok(())
                }),
                element!("br", |_| {
                    buf.borrow_mut().push('\n');
                    Ok(())
                }),
                element!("p, div, tr, li, h1, h2, h3, h4, h5, h6, table, ul, ol, blockquote", |el| {
                    push_break(&mut buf.borrow_mut());
                    let buf = Rc::clone(&buf);
                    if let Some(h) = el.end_tag_handlers() {
                        let hd: EndTagHandler<'static> = Box::new(move |_: &mut EndTag<'_>| {
                            push_break(&mut buf.borrow_mut());
                            Ok(())
                        });
                        h.push(hd);
                    }
                    Ok(())
                }),
                element!("a[href]", |el| {
                    let href = el.get_attribute("href").unwrap_or_default();
                    let hidden = el.has_attribute(HONEYPOT_ATTR);
                    if !hidden && (href.starts_with("http://") || href.starts_with("https://")) {
                        let buf = Rc::clone(&buf);
                        if let Some(h) = el.end_tag_handlers() {
                            let hd: EndTagHandler<'static> = Box::new(move |_: &mut EndTag<'_>| {
                                buf.borrow_mut().push_str(&format!(" ({href})"));
                                Ok(())
                            });
                            h.push(hd);
                        }
                    }
                    Ok(())
                }),
            ],
            document_content_handlers: vec![doc_text!(|t| {
                if skip.get() > 0 {
                    return Ok(());
                }
                let chunk = t.as_str();
                let mut b = buf.borrow_mut();
                let mut first = true;
                for word in chunk.split_whitespace() {
                    let space_before = !first || chunk.starts_with(char::is_whitespace);
                    if space_before && !b.is_empty() && !b.ends_with([' ', '\n']) {
                        b.push(' ');
                    }
                    b.push_str(&decode_entities(word));
                    first = false;
                }
                if chunk.ends_with(char::is_whitespace) && !b.is_empty() && !b.ends_with([' ', '\n']) {
                    b.push(' ');
                }
                Ok(())
            })],
            ..RewriteStrSettings::new()
        },
    )
    .map_err(|e| RenderError::Html(e.to_string()))?;
    let text = buf.borrow();
    Ok(format!("{}\n", text.trim()))
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
        let out = rewrite_html(html, PREFIX, "https://t.example/o/P", None, &mut fake_sign).unwrap();
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

    #[test]
    fn rewrites_links_inside_outlook_conditional_comments() {
        let html = r#"<body><!--[if mso]><v:roundrect href="https://shop.example/vml" style="x"><w:anchorlock/></v:roundrect><![endif]--><!-- plain https://not.a.link/ --></body>"#;
        let out = rewrite_html(html, PREFIX, "https://t.example/o/P", None, &mut fake_sign).unwrap();
        assert_eq!(out.rewritten, 1, "{}", out.html);
        assert!(out.html.contains("c/[https://shop.example/vml]"), "{}", out.html);
        assert!(out.html.contains("<!-- plain https://not.a.link/ -->"));
    }

    #[test]
    fn appends_the_pixel_without_a_body() {
        let out = rewrite_html("<p>hi</p>", PREFIX, "https://t.example/o/P", None, &mut fake_sign).unwrap();
        assert!(out.html.starts_with("<p>hi</p><img src=\"https://t.example/o/P\""));
    }

    #[test]
    fn token_errors_propagate() {
        let mut failing = |_: &str| -> Result<String, TokenError> { Err(TokenError::UrlTooLong) };
        let r = rewrite_html(r#"<a href="https://x.example/">x</a>"#, PREFIX, "o", None, &mut failing);
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

    #[test]
    fn html_to_text_keeps_words_breaks_and_links() {
        let html = r#"<html><head><title>T</title><style>p{color:red}</style></head><body>
            <h1>Hello&nbsp;Jane</h1><p>Our <b>spring</b> sale &amp; more.</p>
            <p><a href="https://t.example/c/x">Shop now</a></p><script>alert(1)</script></body></html>"#;
        let t = html_to_text(html).unwrap();
        assert_eq!(t, "Hello Jane\n\nOur spring sale & more.\n\nShop now (https://t.example/c/x)\n");
    }
}
