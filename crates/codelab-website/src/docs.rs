//! The documentation: the repository's `docs/*.md`, embedded at compile time and rendered
//! once at startup into an in-memory index of pages (HTML, title, headings) that the site
//! serves and searches. The pages on the site are the files in the repository.

use std::collections::HashMap;

use pulldown_cmark::{CodeBlockKind, CowStr, Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use rust_embed::RustEmbed;

use crate::highlight::{escape_html, highlight};

/// The repository's `docs/` folder, embedded.
#[derive(RustEmbed)]
#[folder = "../../docs"]
struct DocFiles;

/// The order of the navigation; pages not named here follow, by file name.
const NAV_ORDER: &[&str] = &[
    "deployment",
    "configuration",
    "operations",
    "auth",
    "gateway",
    "websocket-protocol",
    "agent-runtime",
    "llm-proxy",
    "usage",
    "website",
    "benchmarks",
    "reliability",
];

/// Most results a search returns.
const MAX_RESULTS: usize = 50;

/// A heading of a page, with the anchor the site gives it (GitHub's rule, so links written
/// for the repository work on the site).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heading {
    /// 1 to 6.
    pub level: u8,
    /// The heading's text.
    pub text: String,
    /// Its `id` (without `#`).
    pub anchor: String,
}

/// One rendered page.
#[derive(Debug, Clone)]
pub struct DocPage {
    /// The file name without `.md`; the page is at `/docs/<slug>`.
    pub slug: String,
    /// The first `#` heading (else the slug).
    pub title: String,
    /// The first paragraph, as plain text (for the index page).
    pub summary: String,
    /// The body as HTML.
    pub html: String,
    /// Every heading, in order.
    pub headings: Vec<Heading>,
}

/// A search hit: a page, and the heading that matched (none when the title did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchHit {
    /// The page's slug.
    pub slug: String,
    /// The page's title.
    pub title: String,
    /// The matching heading's text, if a heading matched.
    pub heading: Option<String>,
    /// `/docs/<slug>` or `/docs/<slug>#<anchor>`.
    pub url: String,
}

/// Every page, rendered.
#[derive(Debug, Clone, Default)]
pub struct DocsIndex {
    pages: Vec<DocPage>,
    by_slug: HashMap<String, usize>,
}

impl DocsIndex {
    /// Renders every embedded `docs/*.md`.
    pub fn load() -> Self {
        let mut files: Vec<(String, String)> = DocFiles::iter()
            .filter(|name| name.ends_with(".md") && !name.contains('/'))
            .filter_map(|name| {
                let file = DocFiles::get(&name)?;
                let text = String::from_utf8_lossy(&file.data).into_owned();
                Some((name.trim_end_matches(".md").to_owned(), text))
            })
            .collect();
        let rank = |slug: &str| {
            NAV_ORDER
                .iter()
                .position(|s| *s == slug)
                .unwrap_or(NAV_ORDER.len())
        };
        files.sort_by(|(a, _), (b, _)| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
        Self::from_sources(files)
    }

    /// Renders the given `(slug, markdown)` pages, in that order.
    pub fn from_sources(sources: Vec<(String, String)>) -> Self {
        let slugs: Vec<String> = sources.iter().map(|(slug, _)| slug.clone()).collect();
        let pages: Vec<DocPage> = sources
            .into_iter()
            .map(|(slug, text)| render_page(slug, &text, &slugs))
            .collect();
        let by_slug = pages
            .iter()
            .enumerate()
            .map(|(i, page)| (page.slug.clone(), i))
            .collect();
        Self { pages, by_slug }
    }

    /// Every page, in navigation order.
    pub fn pages(&self) -> &[DocPage] {
        &self.pages
    }

    /// The page at `/docs/<slug>`.
    pub fn page(&self, slug: &str) -> Option<&DocPage> {
        self.by_slug.get(slug).and_then(|&i| self.pages.get(i))
    }

    /// Pages and headings whose text holds every word of `query` (case-insensitive); title
    /// hits first, then headings, in page order.
    pub fn search(&self, query: &str) -> Vec<SearchHit> {
        let words: Vec<String> = query
            .split_whitespace()
            .map(str::to_lowercase)
            .filter(|w| !w.is_empty())
            .collect();
        if words.is_empty() {
            return Vec::new();
        }
        let matches = |text: &str| {
            let text = text.to_lowercase();
            words.iter().all(|w| text.contains(w.as_str()))
        };
        let mut titles = Vec::new();
        let mut headings = Vec::new();
        for page in &self.pages {
            if matches(&page.title) || matches(&page.slug) {
                titles.push(SearchHit {
                    slug: page.slug.clone(),
                    title: page.title.clone(),
                    heading: None,
                    url: format!("/docs/{}", page.slug),
                });
            }
            // The first heading is the title, already covered.
            for heading in page.headings.iter().filter(|h| h.level > 1) {
                if matches(&heading.text) {
                    headings.push(SearchHit {
                        slug: page.slug.clone(),
                        title: page.title.clone(),
                        heading: Some(heading.text.clone()),
                        url: format!("/docs/{}#{}", page.slug, heading.anchor),
                    });
                }
            }
        }
        titles.extend(headings);
        titles.truncate(MAX_RESULTS);
        titles
    }
}

/// GitHub's anchor rule: lower case, letters, digits, `-` and `_` kept, spaces to `-`,
/// everything else dropped.
pub fn anchor_of(text: &str) -> String {
    text.trim()
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                Some(c.to_lowercase().collect::<String>())
            } else if c == ' ' {
                Some("-".to_owned())
            } else {
                None
            }
        })
        .collect()
}

/// A link as written in a doc, rewritten for the site: `auth.md#x` → `/docs/auth#x` when
/// `auth` is one of the pages; anything else is left alone.
fn rewrite_link(dest: &str, slugs: &[String]) -> Option<String> {
    if dest.contains("://") || dest.starts_with('#') || dest.starts_with('/') {
        return None;
    }
    let (path, fragment) = match dest.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment)),
        None => (dest, None),
    };
    let file = path.trim_start_matches("./");
    let slug = file.strip_suffix(".md")?;
    if !slugs.iter().any(|s| s == slug) {
        return None;
    }
    Some(match fragment {
        Some(fragment) => format!("/docs/{slug}#{fragment}"),
        None => format!("/docs/{slug}"),
    })
}

fn heading_number(level: HeadingLevel) -> u8 {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

/// What is being collected between a start and an end event.
enum Pending<'a> {
    Heading {
        level: u8,
        events: Vec<Event<'a>>,
        text: String,
    },
    Code {
        language: String,
        text: String,
    },
}

fn render_page(slug: String, markdown: &str, slugs: &[String]) -> DocPage {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES;
    let mut headings = Vec::new();
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut summary = String::new();
    let mut in_first_paragraph = false;
    let mut pending: Option<Pending> = None;
    let mut events: Vec<Event> = Vec::new();

    for event in Parser::new_ext(markdown, options) {
        match (&mut pending, event) {
            (None, Event::Start(Tag::Heading { level, .. })) => {
                pending = Some(Pending::Heading {
                    level: heading_number(level),
                    events: Vec::new(),
                    text: String::new(),
                });
            }
            (Some(Pending::Heading { .. }), Event::End(TagEnd::Heading(_))) => {
                let Some(Pending::Heading {
                    level,
                    events: inner,
                    text,
                }) = pending.take()
                else {
                    continue;
                };
                let base = anchor_of(&text);
                let count = used.entry(base.clone()).or_insert(0);
                let anchor = if *count == 0 {
                    base.clone()
                } else {
                    format!("{base}-{count}")
                };
                *count += 1;
                let mut inner_html = String::new();
                pulldown_cmark::html::push_html(&mut inner_html, inner.into_iter());
                events.push(Event::Html(CowStr::from(format!(
                    "<h{level} id=\"{id}\">{inner_html}<a class=\"anchor\" href=\"#{id}\" \
                     aria-label=\"Link to this section\">#</a></h{level}>\n",
                    id = escape_html(&anchor)
                ))));
                headings.push(Heading {
                    level,
                    text: text.trim().to_owned(),
                    anchor,
                });
            }
            (
                Some(Pending::Heading {
                    events: inner,
                    text,
                    ..
                }),
                event,
            ) => {
                if let Event::Text(t) | Event::Code(t) = &event {
                    text.push_str(t);
                }
                inner.push(rewrite_event(event, slugs));
            }
            (None, Event::Start(Tag::CodeBlock(kind))) => {
                let language = match kind {
                    CodeBlockKind::Fenced(info) => {
                        info.split([' ', ',']).next().unwrap_or_default().to_owned()
                    }
                    CodeBlockKind::Indented => String::new(),
                };
                pending = Some(Pending::Code {
                    language,
                    text: String::new(),
                });
            }
            (Some(Pending::Code { text, .. }), Event::Text(t)) => text.push_str(&t),
            (Some(Pending::Code { .. }), Event::End(TagEnd::CodeBlock)) => {
                let Some(Pending::Code { language, text }) = pending.take() else {
                    continue;
                };
                let class = if language.is_empty() {
                    String::new()
                } else {
                    format!(" class=\"language-{}\"", escape_html(&language))
                };
                events.push(Event::Html(CowStr::from(format!(
                    "<pre><code{class}>{}</code></pre>\n",
                    highlight(&language, &text)
                ))));
            }
            (Some(Pending::Code { .. }), _) => {}
            (None, event) => {
                match &event {
                    Event::Start(Tag::Paragraph) if summary.is_empty() => {
                        in_first_paragraph = true;
                    }
                    Event::End(TagEnd::Paragraph) => in_first_paragraph = false,
                    Event::Text(t) | Event::Code(t) if in_first_paragraph => summary.push_str(t),
                    Event::SoftBreak if in_first_paragraph => summary.push(' '),
                    _ => {}
                }
                events.push(rewrite_event(event, slugs));
            }
        }
    }
    let mut html = String::with_capacity(markdown.len() * 2);
    pulldown_cmark::html::push_html(&mut html, events.into_iter());
    let title = headings
        .iter()
        .find(|h| h.level == 1)
        .map_or_else(|| slug.clone(), |h| h.text.clone());
    DocPage {
        slug,
        title,
        summary: summary.trim().to_owned(),
        html,
        headings,
    }
}

/// Rewrites links between docs to the site's addresses.
fn rewrite_event<'a>(mut event: Event<'a>, slugs: &[String]) -> Event<'a> {
    if let Event::Start(Tag::Link { dest_url, .. }) = &mut event
        && let Some(rewritten) = rewrite_link(dest_url, slugs)
    {
        *dest_url = CowStr::from(rewritten);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(pages: &[(&str, &str)]) -> DocsIndex {
        DocsIndex::from_sources(
            pages
                .iter()
                .map(|(s, t)| ((*s).to_owned(), (*t).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn anchors_follow_githubs_rule() {
        assert_eq!(anchor_of("Health and metrics"), "health-and-metrics");
        assert_eq!(
            anchor_of("Server frames, protocol 2"),
            "server-frames-protocol-2"
        );
        assert_eq!(anchor_of("`codelab up` (laptop)"), "codelab-up-laptop");
    }

    #[test]
    fn pages_get_titles_anchors_links_and_highlighted_code() {
        let docs = index(&[
            (
                "gateway",
                "# Gateway\n\nThe IDE's front door.\nSee [auth](auth.md#tokens) and [x](https://e.com).\n\n## Errors\n\n## Errors\n\n```json\n{\"a\": 1}\n```\n",
            ),
            ("auth", "# Auth service\n\n## Tokens\n"),
        ]);
        let page = docs.page("gateway").unwrap();
        assert_eq!(page.title, "Gateway");
        assert_eq!(page.summary, "The IDE's front door. See auth and x.");
        assert!(
            page.html.contains("href=\"/docs/auth#tokens\""),
            "{}",
            page.html
        );
        assert!(page.html.contains("href=\"https://e.com\""));
        assert!(page.html.contains("<h2 id=\"errors\">"));
        assert!(page.html.contains("<h2 id=\"errors-1\">"));
        assert!(
            page.html
                .contains("<span class=\"hl-key\">&quot;a&quot;</span>")
        );
        assert_eq!(page.headings.len(), 3);
    }

    #[test]
    fn search_finds_titles_then_headings() {
        let docs = index(&[
            ("auth", "# Auth service\n\n## Tokens and keys\n\n## Users\n"),
            (
                "gateway",
                "# Gateway\n\n## Authentication\n\n## Signing keys\n",
            ),
        ]);
        let hits = docs.search("KEYS");
        assert_eq!(
            hits.iter().map(|h| h.url.as_str()).collect::<Vec<_>>(),
            vec!["/docs/auth#tokens-and-keys", "/docs/gateway#signing-keys"]
        );
        let hits = docs.search("auth");
        assert_eq!(hits[0].url, "/docs/auth");
        assert_eq!(hits[1].url, "/docs/gateway#authentication");
        assert!(docs.search("   ").is_empty());
    }

    #[test]
    fn every_repository_doc_is_a_page_and_its_doc_links_resolve() {
        let docs = DocsIndex::load();
        assert!(docs.page("auth").is_some());
        assert!(docs.page("websocket-protocol").is_some());
        for page in docs.pages() {
            for (start, _) in page.html.match_indices("href=\"/docs/") {
                let rest = &page.html[start + "href=\"/docs/".len()..];
                let target = &rest[..rest.find('"').unwrap()];
                let (slug, anchor) = target.split_once('#').unwrap_or((target, ""));
                let linked = docs
                    .page(slug)
                    .unwrap_or_else(|| panic!("{}: link to missing page {target}", page.slug));
                assert!(
                    anchor.is_empty() || linked.headings.iter().any(|h| h.anchor == anchor),
                    "{}: link to missing section {target}",
                    page.slug
                );
            }
        }
    }
}
