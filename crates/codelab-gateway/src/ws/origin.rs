//! The `Origin` check of WebSocket upgrades.
//!
//! Browsers send `Origin` on every WebSocket handshake and let any page open a socket to any
//! host, so without this check a page on another site could drive a socket with whatever the
//! browser attaches (cross-site WebSocket hijacking). Allowed: no `Origin` at all (native
//! clients such as the Flutter IDE and `codelab chat` send none), the gateway's own origin
//! (`Origin`'s host equals `Host`), and the configured origins (`ws_allowed_origins` and
//! `cors_origins`). See docs/websocket-protocol.md, "Origin".

use axum::http::uri::Authority;
use axum::http::{HeaderMap, header};
use codelab_core::config::Environment;
use reqwest::Url;

use crate::Config;

/// The entry of `ws_allowed_origins` that allows every origin (development only).
const ANY_ORIGIN: &str = "*";

/// Whether the upgrade's `Origin` may open a socket (see the module docs).
pub fn allowed(headers: &HeaderMap, config: &Config) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    // `*` passed `build` only in development.
    if config
        .ws_allowed_origins
        .iter()
        .any(|o| o.trim() == ANY_ORIGIN)
    {
        return true;
    }
    let Some(origin) = origin.to_str().ok().and_then(parse_origin) else {
        // `null` (sandboxed frames, files) and garbage belong to no allowed origin.
        return false;
    };
    if headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .is_some_and(|host| same_host(&origin, host))
    {
        return true;
    }
    let serialized = origin.origin().ascii_serialization();
    config
        .ws_allowed_origins
        .iter()
        .chain(&config.cors_origins)
        .filter_map(|entry| parse_origin(entry.trim()))
        .any(|entry| entry.origin().ascii_serialization() == serialized)
}

/// Refuses entries of `ws_allowed_origins` that are not origins, and `*` outside development.
pub fn validate_allowed_origins(
    origins: &[String],
    environment: Environment,
) -> Result<(), String> {
    for entry in origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        if entry == ANY_ORIGIN {
            if environment.is_hardened() {
                return Err(
                    "ws_allowed_origins (GATEWAY__WS_ALLOWED_ORIGINS) must list origins; \"*\" \
                     is only allowed in development"
                        .to_owned(),
                );
            }
            continue;
        }
        if parse_origin(entry).is_none() {
            return Err(format!(
                "ws_allowed_origins (GATEWAY__WS_ALLOWED_ORIGINS) entries must be origins such \
                 as https://ide.example.com, got {entry:?}"
            ));
        }
    }
    Ok(())
}

/// An `http(s)` origin: scheme, host and optional port, nothing else.
fn parse_origin(text: &str) -> Option<Url> {
    let url = Url::parse(text).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    plain.then_some(url)
}

/// Whether `origin` names the host the request was sent to. A `Host` without a port matches
/// any port of that host: proxies such as our nginx forward `$host`, which drops the port.
fn same_host(origin: &Url, host: &str) -> bool {
    let Ok(authority) = host.trim().parse::<Authority>() else {
        return false;
    };
    let Some(origin_host) = origin.host_str() else {
        return false;
    };
    if !origin_host.eq_ignore_ascii_case(authority.host()) {
        return false;
    }
    match authority.port_u16() {
        None => true,
        Some(port) => origin.port_or_known_default() == Some(port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn upgrade(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn same_host_configured_and_absent_origins_pass() {
        let config = Config {
            ws_allowed_origins: vec!["https://ide.example.com".to_owned()],
            cors_origins: vec!["http://console.example.com:8080/".to_owned()],
            ..Config::default()
        };
        let ok = [
            (None, "gw.example.com"),
            (Some("https://gw.example.com"), "gw.example.com"),
            (Some("http://GW.example.com:8080"), "gw.example.com:8080"),
            // nginx's `$host` has no port.
            (Some("https://gw.example.com:8443"), "gw.example.com"),
            (Some("https://ide.example.com"), "gw.example.com"),
            (Some("https://ide.example.com:443"), "gw.example.com"),
            (Some("http://console.example.com:8080"), "gw.example.com"),
            (Some("http://[::1]:8080"), "[::1]:8080"),
        ];
        for (origin, host) in ok {
            assert!(
                allowed(&upgrade(origin, host), &config),
                "{origin:?} {host}"
            );
        }
        let refused = [
            (Some("https://evil.example"), "gw.example.com"),
            (
                Some("https://gw.example.com.evil.example"),
                "gw.example.com",
            ),
            (Some("http://gw.example.com:9999"), "gw.example.com:8080"),
            (Some("null"), "gw.example.com"),
            (Some("http://ide.example.com"), "gw.example.com"),
            (Some("file://gw.example.com"), "gw.example.com"),
        ];
        for (origin, host) in refused {
            assert!(
                !allowed(&upgrade(origin, host), &config),
                "{origin:?} {host}"
            );
        }
    }

    #[test]
    fn a_star_allows_any_origin_in_development_only() {
        let star = vec!["*".to_owned()];
        assert!(validate_allowed_origins(&star, Environment::Development).is_ok());
        assert!(validate_allowed_origins(&star, Environment::Staging).is_err());
        let bad = vec!["ide.example.com".to_owned()];
        assert!(validate_allowed_origins(&bad, Environment::Development).is_err());
        let path = vec!["https://ide.example.com/app".to_owned()];
        assert!(validate_allowed_origins(&path, Environment::Development).is_err());
        let config = Config {
            ws_allowed_origins: star,
            ..Config::default()
        };
        assert!(allowed(
            &upgrade(Some("https://anything.example"), "gw"),
            &config
        ));
    }
}
