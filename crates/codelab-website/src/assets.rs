//! Static files (stylesheet, scripts, icon), embedded at compile time: the site needs no
//! Node build step and no files beside the binary.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

/// The crate's `assets/` folder.
#[derive(RustEmbed)]
#[folder = "assets"]
struct AssetFiles;

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// `GET /assets/{*path}`: an embedded file with its type and an `ETag` (its SHA-256), so
/// browsers revalidate cheaply (`304`) instead of keeping a stale copy after an upgrade.
pub async fn serve_asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let Some(file) = AssetFiles::get(&path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let cache = [
        (
            header::CACHE_CONTROL,
            "public, max-age=300, must-revalidate",
        ),
        (header::CONTENT_TYPE, content_type(&path)),
    ];
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let etag = HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    if matches {
        return (StatusCode::NOT_MODIFIED, cache, [(header::ETAG, etag)]).into_response();
    }
    (cache, [(header::ETAG, etag)], file.data.into_owned()).into_response()
}

/// Whether an asset exists (for tests).
pub fn exists(path: &str) -> bool {
    AssetFiles::get(path).is_some()
}
