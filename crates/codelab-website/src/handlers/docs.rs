//! `/` and `/docs`: the home page, the documentation pages and their search.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};

use crate::AppState;
use crate::docs::{DocPage, Heading, SearchHit};
use crate::web::{Layout, PageError, render};

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage<'a> {
    layout: Layout,
    pages: &'a [DocPage],
}

#[derive(Template)]
#[template(path = "docs_index.html")]
struct DocsIndexPage<'a> {
    layout: Layout,
    pages: &'a [DocPage],
    current: &'a str,
    query: &'a str,
}

#[derive(Template)]
#[template(path = "docs_page.html")]
struct DocsPage<'a> {
    layout: Layout,
    pages: &'a [DocPage],
    current: &'a str,
    query: &'a str,
    html: &'a str,
    toc: Vec<&'a Heading>,
}

#[derive(Template)]
#[template(path = "docs_search.html")]
struct SearchPage<'a> {
    layout: Layout,
    pages: &'a [DocPage],
    current: &'a str,
    query: &'a str,
    hits: Vec<SearchHit>,
}

/// `GET /`.
pub async fn show_home(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let session = state.sessions.lookup(&headers).await;
    render(&HomePage {
        layout: Layout::new(&state, "Home", "home", session.as_deref()),
        pages: state.docs.pages(),
    })
}

/// `GET /docs`.
pub async fn show_docs_index(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let session = state.sessions.lookup(&headers).await;
    render(&DocsIndexPage {
        layout: Layout::new(&state, "Documentation", "docs", session.as_deref()),
        pages: state.docs.pages(),
        current: "",
        query: "",
    })
}

/// `GET /docs/{slug}` (and `/docs/{slug}.md`, as links inside the repository are written).
pub async fn show_doc(
    State(state): State<Arc<AppState>>,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> Response {
    let session = state.sessions.lookup(&headers).await;
    if let Some(plain) = slug.strip_suffix(".md")
        && state.docs.page(plain).is_some()
    {
        return Redirect::permanent(&format!("/docs/{plain}")).into_response();
    }
    let Some(page) = state.docs.page(&slug) else {
        return PageError::NotFound.into_page(&state, session.as_deref());
    };
    render(&DocsPage {
        layout: Layout::new(&state, page.title.clone(), "docs", session.as_deref()),
        pages: state.docs.pages(),
        current: &page.slug,
        query: "",
        html: &page.html,
        toc: page
            .headings
            .iter()
            .filter(|h| (2..=3).contains(&h.level))
            .collect(),
    })
}

/// `GET /docs/search?q=`: titles and headings holding every word.
pub async fn search_docs(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let session = state.sessions.lookup(&headers).await;
    let query: String = params
        .get("q")
        .map(|q| q.trim().chars().take(200).collect())
        .unwrap_or_default();
    render(&SearchPage {
        layout: Layout::new(&state, "Search", "docs", session.as_deref()),
        pages: state.docs.pages(),
        current: "",
        hits: state.docs.search(&query),
        query: &query,
    })
}
