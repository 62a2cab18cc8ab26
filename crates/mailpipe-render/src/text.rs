//! The plain-text part of a message whose job gives only HTML, derived from
//! the HTML as rewritten (so its links are the tracked ones).
//!
//! A scan of its own rather than more lol_html handlers in the rewriting
//! pass: per-element handlers and text capture made deriving the text cost
//! more than rewriting the links (57 of 103 µs for 10 KB). The scan reads
//! the markup the way lol_html tokenizes it, including raw-text elements,
//! comments and quoted attribute values, and keeps lol_html's open-element
//! stack, so an end tag closes what lol_html would close. The tests hold it
//! to the lol_html rendering it replaced on generated documents.
//!
//! The rules: head, style, script and title content is dropped; block
//! elements start and end paragraphs; `<br>` breaks a line; a link to
//! http(s) is followed by its URL in brackets, unless it is the honeypot;
//! white space collapses; character references are decoded.
//!
//! Where lol_html's reading is one the scan does not follow (SVG and
//! MathML, where raw-text elements are not raw and CDATA is text; a script
//! holding `<!--`, whose escape states decide where it ends), the scan says
//! so and the lol_html handlers ([`exact`]) derive the text instead.

use crate::links::{HONEYPOT_ATTR, push_words};

/// What an open element does when its end tag comes.
enum OnEnd<'a> {
    Nothing,
    Break,
    Unhide,
    Link(&'a str),
}

struct Open<'a> {
    name: &'a str,
    on_end: OnEnd<'a>,
}

/// How the content after a start tag is read, as lol_html's tree-builder
/// simulation decides it.
enum Content {
    Markup,
    /// Text up to the element's end tag (RCDATA, RAWTEXT, script data).
    Raw,
    /// Text to the end of the document.
    Plain,
}

fn content_of(name: &str) -> Content {
    const RAW: [&str; 9] =
        ["textarea", "title", "script", "style", "iframe", "xmp", "noembed", "noframes", "noscript"];
    if name.eq_ignore_ascii_case("plaintext") {
        Content::Plain
    } else if one_of(name, &RAW) {
        Content::Raw
    } else {
        Content::Markup
    }
}

fn one_of(name: &str, set: &[&str]) -> bool {
    set.iter().any(|s| name.eq_ignore_ascii_case(s))
}

const HIDDEN: [&str; 4] = ["head", "style", "script", "title"];
const BLOCK: [&str; 14] =
    ["p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote"];
/// Elements that have no end tag, as lol_html's stack treats them.
const VOID: [&str; 17] = [
    "area", "base", "basefont", "bgsound", "br", "col", "embed", "hr", "img", "input", "keygen", "link",
    "meta", "param", "source", "track", "wbr",
];

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t' | b'\x0c')
}

/// A parsed tag: its name and, for start tags, the attributes that matter.
struct Tag<'a> {
    name: &'a str,
    href: Option<&'a str>,
    honeypot: bool,
}

/// Reads a tag's name and attributes from `at` (just after `<` or `</`).
/// Returns the tag and the index after its `>`, or `None` if the document
/// ends first.
fn read_tag(s: &str, at: usize) -> Option<(Tag<'_>, usize)> {
    let b = s.as_bytes();
    let mut i = at;
    while i < b.len() && !is_space(b[i]) && b[i] != b'/' && b[i] != b'>' {
        i += 1;
    }
    let mut tag = Tag { name: &s[at..i], href: None, honeypot: false };
    loop {
        while i < b.len() && (is_space(b[i]) || b[i] == b'/') {
            i += 1;
        }
        if *b.get(i)? == b'>' {
            return Some((tag, i + 1));
        }
        // An attribute name: a leading '=' belongs to it.
        let start = i;
        i += 1;
        while i < b.len() && !is_space(b[i]) && !matches!(b[i], b'/' | b'>' | b'=') {
            i += 1;
        }
        let name = &s[start..i];
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        let mut value = "";
        if b.get(i) == Some(&b'=') {
            i += 1;
            while i < b.len() && is_space(b[i]) {
                i += 1;
            }
            match *b.get(i)? {
                q @ (b'"' | b'\'') => {
                    let end = i + 1 + s[i + 1..].find(char::from(q))?;
                    value = &s[i + 1..end];
                    i = end + 1;
                }
                b'>' => {}
                _ => {
                    let start = i;
                    while i < b.len() && !is_space(b[i]) && b[i] != b'>' {
                        i += 1;
                    }
                    value = &s[start..i];
                }
            }
        }
        // The first of a repeated attribute counts.
        if name.eq_ignore_ascii_case("href") && tag.href.is_none() {
            tag.href = Some(value);
        } else if name.eq_ignore_ascii_case(HONEYPOT_ATTR) {
            tag.honeypot = true;
        }
    }
}

/// Where `</name` followed by white space, `/` or `>` starts, from `from`:
/// the end of a raw-text element.
fn raw_end(s: &str, from: usize, name: &str) -> usize {
    let b = s.as_bytes();
    let mut i = from;
    while let Some(off) = s[i..].find("</") {
        let at = i + off;
        let after = at + 2 + name.len();
        if b.len() >= after
            && b[at + 2..after].eq_ignore_ascii_case(name.as_bytes())
            && b.get(after).is_none_or(|&c| is_space(c) || c == b'/' || c == b'>')
        {
            return at;
        }
        i = at + 2;
    }
    s.len()
}

/// Where a comment or other markup declaration that starts at `at` (the
/// `<`) ends: after `-->` (or `--!>`, or at once for `<!-->` and `<!--->`),
/// after the next `>` for the rest, or at the end of the document.
fn declaration_end(s: &str, at: usize) -> usize {
    let rest = &s[at..];
    if let Some(body) = rest.strip_prefix("<!--") {
        if body.starts_with('>') {
            return at + 5;
        }
        if body.starts_with("->") {
            return at + 6;
        }
        let mut from = 0;
        while let Some(off) = body[from..].find("--") {
            let p = from + off + 2;
            if body[p..].starts_with('>') {
                return at + 4 + p + 1;
            }
            if body[p..].starts_with("!>") {
                return at + 4 + p + 2;
            }
            from = from + off + 1;
        }
        return s.len();
    }
    rest.find('>').map_or(s.len(), |e| at + e + 1)
}

fn push_break(s: &mut String) {
    let trimmed = s.trim_end_matches([' ', '\t']).len();
    s.truncate(trimmed);
    if !s.is_empty() && !s.ends_with("\n\n") {
        s.push_str(if s.ends_with('\n') { "\n" } else { "\n\n" });
    }
}

/// The body of `html` as plain text (see the module's rules): the scan, or
/// where the scan does not read markup as lol_html does, lol_html itself.
pub(crate) fn html_to_text(html: &str) -> String {
    match scan(html) {
        Scan::Text(text) => text,
        // lol_html refuses only what its strict mode finds ambiguous; the
        // rewriting pass, with the same settings, accepted this document.
        Scan::NeedsLolHtml(best) => exact::html_to_text(html).unwrap_or(best),
    }
}

/// What the scan made of a document.
enum Scan {
    Text(String),
    /// The document has markup the scan does not read as lol_html does:
    /// SVG or MathML (foreign content, where raw-text elements are not raw
    /// and CDATA is text) or a script holding `<!--` (the script-data
    /// escape states, where `</script>` may not end it). With the scan's
    /// own reading, for a document lol_html refuses.
    NeedsLolHtml(String),
}

fn scan(html: &str) -> Scan {
    let mut needs_lol_html = false;
    let b = html.as_bytes();
    let mut out = String::with_capacity(html.len() / 2);
    let mut open: Vec<Open<'_>> = Vec::with_capacity(32);
    let mut hidden = 0usize;
    let text = |out: &mut String, hidden: usize, t: &str| {
        if hidden == 0 && !t.is_empty() {
            push_words(out, t);
        }
    };
    let mut i = 0;
    while i < b.len() {
        let Some(off) = html[i..].find('<') else {
            text(&mut out, hidden, &html[i..]);
            break;
        };
        let lt = i + off;
        let next = b.get(lt + 1).copied();
        let start_tag = next.is_some_and(|c| c.is_ascii_alphabetic());
        let end_tag = next == Some(b'/') && b.get(lt + 2).is_some_and(u8::is_ascii_alphabetic);
        let declaration = matches!(next, Some(b'!' | b'?'))
            || (next == Some(b'/') && b.get(lt + 2).is_some_and(|&c| !c.is_ascii_alphabetic()));
        if !(start_tag || end_tag || declaration) {
            // A '<' that opens nothing is text; so is "</" at the very end.
            text(&mut out, hidden, &html[i..lt + 1 + usize::from(next == Some(b'/'))]);
            i = lt + 1 + usize::from(next == Some(b'/'));
            continue;
        }
        text(&mut out, hidden, &html[i..lt]);
        if declaration {
            i = declaration_end(html, lt);
            continue;
        }
        let Some((tag, after)) = read_tag(html, lt + if end_tag { 2 } else { 1 }) else {
            // A tag the document ends inside is dropped.
            break;
        };
        i = after;
        if end_tag {
            if let Some(at) = open.iter().rposition(|o| o.name.eq_ignore_ascii_case(tag.name)) {
                // Innermost first, as lol_html runs end-tag handlers.
                for o in open.drain(at..).rev() {
                    match o.on_end {
                        OnEnd::Nothing => {}
                        OnEnd::Break => push_break(&mut out),
                        OnEnd::Unhide => hidden = hidden.saturating_sub(1),
                        OnEnd::Link(href) => {
                            out.push_str(" (");
                            out.push_str(href);
                            out.push(')');
                        }
                    }
                }
            }
            continue;
        }
        let name = tag.name;
        if name.eq_ignore_ascii_case("svg") || name.eq_ignore_ascii_case("math") {
            needs_lol_html = true;
        }
        let mut on_end = OnEnd::Nothing;
        if one_of(name, &HIDDEN) {
            hidden += 1;
            on_end = OnEnd::Unhide;
        } else if name.eq_ignore_ascii_case("br") {
            out.push('\n');
        } else if one_of(name, &BLOCK) {
            push_break(&mut out);
            on_end = OnEnd::Break;
        } else if name.eq_ignore_ascii_case("a")
            && let Some(href) = tag.href
            && !tag.honeypot
            && (href.starts_with("http://") || href.starts_with("https://"))
        {
            on_end = OnEnd::Link(href);
        }
        if !one_of(name, &VOID) {
            open.push(Open { name, on_end });
        }
        match content_of(name) {
            Content::Markup => {}
            Content::Raw => {
                let end = raw_end(html, i, name);
                if name.eq_ignore_ascii_case("script") && html[i..end].contains("<!--") {
                    needs_lol_html = true;
                }
                text(&mut out, hidden, &html[i..end]);
                i = end;
            }
            Content::Plain => {
                text(&mut out, hidden, &html[i..]);
                i = b.len();
            }
        }
    }
    let trimmed = out.trim();
    let mut text = String::with_capacity(trimmed.len() + 1);
    text.push_str(trimmed);
    text.push('\n');
    if needs_lol_html { Scan::NeedsLolHtml(text) } else { Scan::Text(text) }
}

/// The text as lol_html handlers derive it: what the scan replaced in the
/// common case, still used where the scan bails out, and the reference its
/// tests compare against. About five times slower than the scan.
pub(crate) mod exact {
    use std::borrow::Cow;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use lol_html::html_content::{Element, EndTag};
    use lol_html::{
        ElementContentHandlers, EndTagHandler, HandlerResult, RewriteStrSettings, Selector, doc_text,
        rewrite_str,
    };

    use super::push_break;
    use crate::links::{HONEYPOT_ATTR, push_words};

    fn selector(css: &str) -> Cow<'static, Selector> {
        Cow::Owned(css.parse().expect("selector"))
    }

    /// `None` where lol_html refuses the document (its strict mode).
    pub(crate) fn html_to_text(html: &str) -> Option<String> {
        let buf = Rc::new(RefCell::new(String::new()));
        let skip = Rc::new(Cell::new(0usize));
        let (b1, b2, b3, b4, s1, s2) =
            (buf.clone(), buf.clone(), buf.clone(), buf.clone(), skip.clone(), skip.clone());
        let elements = vec![
            (
                selector("head, style, script, title"),
                ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| -> HandlerResult {
                    s1.set(s1.get() + 1);
                    let skip = Rc::clone(&s1);
                    if let Some(h) = el.end_tag_handlers() {
                        let hd: EndTagHandler<'static> = Box::new(move |_: &mut EndTag<'_>| {
                            skip.set(skip.get().saturating_sub(1));
                            Ok(())
                        });
                        h.push(hd);
                    }
                    Ok(())
                }),
            ),
            (
                selector("br"),
                ElementContentHandlers::default().element(move |_: &mut Element<'_, '_>| -> HandlerResult {
                    b1.borrow_mut().push('\n');
                    Ok(())
                }),
            ),
            (
                selector("p, div, tr, li, h1, h2, h3, h4, h5, h6, table, ul, ol, blockquote"),
                ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| -> HandlerResult {
                    push_break(&mut b2.borrow_mut());
                    let buf = Rc::clone(&b2);
                    if let Some(h) = el.end_tag_handlers() {
                        let hd: EndTagHandler<'static> = Box::new(move |_: &mut EndTag<'_>| {
                            push_break(&mut buf.borrow_mut());
                            Ok(())
                        });
                        h.push(hd);
                    }
                    Ok(())
                }),
            ),
            (
                selector("a[href]"),
                ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| -> HandlerResult {
                    let href = el.get_attribute("href").unwrap_or_default();
                    let hidden = el.has_attribute(HONEYPOT_ATTR);
                    if !hidden && (href.starts_with("http://") || href.starts_with("https://")) {
                        let buf = Rc::clone(&b3);
                        if let Some(h) = el.end_tag_handlers() {
                            let hd: EndTagHandler<'static> = Box::new(move |_: &mut EndTag<'_>| {
                                let mut b = buf.borrow_mut();
                                b.push_str(" (");
                                b.push_str(&href);
                                b.push(')');
                                Ok(())
                            });
                            h.push(hd);
                        }
                    }
                    Ok(())
                }),
            ),
        ];
        let document = doc_text!(move |t| {
            if s2.get() == 0 {
                push_words(&mut b4.borrow_mut(), t.as_str());
            }
            Ok(())
        });
        let settings = RewriteStrSettings {
            element_content_handlers: elements,
            document_content_handlers: vec![document],
            ..RewriteStrSettings::new()
        };
        rewrite_str(html, settings).ok()?;
        let text = buf.borrow();
        Some(format!("{}\n", text.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::{Scan, exact as oracle, html_to_text, scan};

    #[test]
    fn keeps_words_breaks_and_links() {
        let html = r#"<html><head><title>T</title><style>p{color:red}</style></head><body>
            <h1>Hello&nbsp;Jane</h1><p>Our <b>spring</b> sale &amp; more.</p>
            <p><a href="https://t.example/c/x">Shop now</a></p><script>alert(1)</script></body></html>"#;
        assert_eq!(
            html_to_text(html),
            "Hello Jane\n\nOur spring sale & more.\n\nShop now (https://t.example/c/x)\n"
        );
    }

    /// Markup that tokenizers get wrong, each read as lol_html reads it.
    #[test]
    fn reads_markup_as_lol_html_does() {
        for html in [
            "",
            "plain",
            "a < b and c <3 d </ e",
            "x</",
            "x<!",
            "<p>one<p>two</p></p>three",
            "<div><a href=\"https://s.example/1\"><p>in</div>after</a>",
            "<a href='https://s.example/q'>single</a> <a href=https://s.example/u>unquoted</a>",
            "<a title=\"a > b\" href=\"https://s.example/gt\">quoted gt</a>",
            "<A HREF=\"https://s.example/upper\">UPPER</A><BR>line<P>para</P>",
            "<a href=\"https://s.example/1\" href=\"https://s.example/2\">first wins</a>",
            "<a href=\"mailto:x@y.example\">mail</a> <a href=\"\">empty</a> <a>none</a>",
            "<a href=\"https://t.example/c/hp\" data-mailpipe-honeypot></a>visible",
            "<!-- <p>hidden</p> --> after <!--> empty <!---> also <!-- a --!> bang",
            "<!DOCTYPE html><?xml version=\"1.0\"?><![CDATA[x]]>text</>more</ p>end",
            "<style>p { content: '</p>' }</style>after <script>if (a<b) x()</script>shown",
            "<title>Ti<b>tle</b></title>body <textarea><p>raw &amp;</p></textarea> done",
            "<xmp><b>shown raw</b></xmp> <noscript><p>raw</p></noscript> <iframe>i</iframe>",
            "<head><meta charset=utf-8>no end of head <p>still hidden",
            "<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>",
            "<ul><li>one<li>two</ul><blockquote>q</blockquote><h2>h</h2>",
            "tail <p unterminated",
            "<p>a</p   ><p>b</p/><br/><img src=x alt=y>c",
            "<plaintext><p>all text</p></plaintext>",
            "words\tand\r\nlines&#10;&#x41;&amp;&bogus; &lt;tag&gt;",
            "caf\u{e9} <a href=\"https://s.example/\u{e9}\">na\u{ef}ve</a>",
            // Read by lol_html itself (the scan bails out): escaped script
            // data, and SVG and MathML, where raw-text elements are not raw.
            "<script><!--<script>x</script>LEAK</script>after",
            "<script>document.write('<script src=x></script>'); //--></script>shown",
            "<body><svg><textarea>hi</body>",
            "<svg><style><x a=\"</style>\">secret</style></svg>after",
            "<svg><![CDATA[a>b<title>c]]></svg>rest",
            "<svg><a href=\"https://x.example/\"/></svg>after",
            "<math><mi>x</mi><style>s</style></math><p>p</p>",
        ] {
            assert_eq!(Some(html_to_text(html)), oracle::html_to_text(html), "{html:?}");
        }
    }

    /// Where the scan would read markup otherwise than lol_html, it says
    /// so, and lol_html reads the document: no script or pixel markup in
    /// the text.
    #[test]
    fn bails_out_to_lol_html_where_its_reading_differs() {
        for html in [
            "<script><!--<script>x</script>LEAK</script>after",
            "<p><svg><textarea>hi</textarea></svg></p>",
            "<MATH><mi>x</mi></MATH>",
        ] {
            assert!(matches!(scan(html), Scan::NeedsLolHtml(_)), "{html:?}");
        }
        assert!(matches!(scan("<script>a < b</script><p>svg math</p>"), Scan::Text(_)));
        let text = html_to_text("<script><!--<script>x</script>LEAK</script>after");
        assert_eq!(text, "after\n");
        let text = html_to_text(r#"<body><svg><textarea>hi</body><img src="https://t.example/o/x">"#);
        assert!(!text.contains("<img"), "{text:?}");
    }

    /// Documents put together from pieces of markup, from a fixed seed:
    /// the scan and lol_html agree on every one.
    #[test]
    fn agrees_with_lol_html_on_generated_documents() {
        const PIECES: [&str; 56] = [
            "<p>",
            "</p>",
            "<div>",
            "</div>",
            "<br>",
            "<br/>",
            "<b>",
            "</b>",
            "<span class=\"x\">",
            "</span>",
            "<a href=\"https://s.example/a\">",
            "<a href='http://s.example/b'>",
            "<a href=mailto:m@x>",
            "</a>",
            "<a data-mailpipe-honeypot href=\"https://s.example/hp\">",
            "<table>",
            "<tr>",
            "<td>",
            "</td>",
            "</tr>",
            "</table>",
            "<li>",
            "</li>",
            "<style>x{}</style>",
            "<head>",
            "</head>",
            "<title>t</title>",
            "<!-- c -->",
            "<!--[if mso]><p>o</p><![endif]-->",
            "word",
            "two words",
            " ",
            "\n",
            "  \t",
            "&amp;",
            "&nbsp;",
            "&#233;",
            "<",
            ">",
            "caf\u{e9}",
            "<a title='x>y' href=https://s.example/c>",
            "<P CLASS=a>",
            "</DIV >",
            "</",
            "<!",
            "<!-",
            "-->",
            "\"",
            "'",
            "=",
            "<textarea>",
            "</textarea>",
            "<script>",
            "</script>",
            "<img src=x>",
            "<p/>",
        ];
        for html in crate::generated(&PIECES, 0x243f_6a88_85a3_08d3, 20000, 24) {
            assert_eq!(Some(html_to_text(&html)), oracle::html_to_text(&html), "{html:?}");
        }
    }

    /// The fuzzer's corpus of link-rewriting inputs (fuzz/corpus/links):
    /// the scan and lol_html agree on every document lol_html accepts.
    #[test]
    fn agrees_with_lol_html_on_the_fuzz_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/links");
        let (mut compared, mut refused) = (0, 0);
        for entry in std::fs::read_dir(dir).expect("fuzz/corpus/links is in the repository") {
            let bytes = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
            let html = String::from_utf8_lossy(&bytes);
            let ours = html_to_text(&html);
            match oracle::html_to_text(&html) {
                Some(theirs) => {
                    assert_eq!(ours, theirs, "{html:?}");
                    compared += 1;
                }
                None => refused += 1,
            }
        }
        assert!(compared > 1000 && refused < compared / 10, "{compared} compared, {refused} refused");
    }
}
