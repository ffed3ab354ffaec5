//! Strict reading of OAuth request bodies and client credentials.
//!
//! RFC 6749 §3.2: token requests are `application/x-www-form-urlencoded`, and no parameter may
//! appear twice. Empty values count as absent (the original's behaviour). Fields are bounded so
//! a huge value is a clear 400 rather than work for the password hasher.

use std::collections::HashMap;

use axum::http::{HeaderMap, header};
use base64::Engine;

use super::error::OAuthError;

/// Longest accepted parameter value (bytes).
pub const MAX_FIELD_BYTES: usize = 4096;
/// Longest accepted password (characters): argon2 cost grows with input, and nobody types more.
pub const MAX_PASSWORD_CHARS: usize = 1024;
/// Most parameters one request may carry.
const MAX_FIELDS: usize = 64;

/// The parameters of one request, each present at most once and never empty.
#[derive(Debug, Default, Clone)]
pub struct FormParams {
    values: HashMap<String, String>,
}

impl FormParams {
    /// The value of `name`, if present and non-empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of `name` or a 400 `invalid_request` naming it.
    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name).ok_or_else(|| {
            OAuthError::invalid_request(format!("Missing required parameter: {name}"))
        })
    }
}

/// Whether the request says its body is form-encoded (parameters such as `charset` allowed).
fn is_form_encoded(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Parses a form body; anything but `application/x-www-form-urlencoded` is a 400.
pub fn parse_form_body(headers: &HeaderMap, body: &[u8]) -> Result<FormParams, OAuthError> {
    if !is_form_encoded(headers) {
        let got = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no content type");
        return Err(OAuthError::invalid_request(format!(
            "The request body must be form-encoded (Content-Type: application/x-www-form-urlencoded), got {got}"
        )));
    }
    parse_pairs(body)
}

/// Parses `a=1&b=2` (a body or a query string) strictly.
pub fn parse_pairs(raw: &[u8]) -> Result<FormParams, OAuthError> {
    let mut values = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (count, (name, value)) in form_urlencoded::parse(raw).enumerate() {
        if count >= MAX_FIELDS {
            return Err(OAuthError::invalid_request("Too many parameters"));
        }
        if name.len() > 64 {
            return Err(OAuthError::invalid_request("Parameter name is too long"));
        }
        // The form is UTF-8 (RFC 6749 Appendix B); the parser replaces what is not with
        // U+FFFD, which would turn two different broken names into one "repeated" name and a
        // broken password into a costly hash of something nobody typed.
        if name.contains(char::REPLACEMENT_CHARACTER) || value.contains(char::REPLACEMENT_CHARACTER)
        {
            return Err(OAuthError::invalid_request(
                "Parameters must be UTF-8 (raw or percent-encoded)",
            ));
        }
        if value.len() > MAX_FIELD_BYTES {
            return Err(OAuthError::invalid_request(format!(
                "Parameter {name} is too long (at most {MAX_FIELD_BYTES} bytes)"
            )));
        }
        // RFC 6749 §3.1/§3.2: parameters MUST NOT be included more than once.
        if !seen.insert(name.to_string()) {
            return Err(OAuthError::invalid_request(format!(
                "Parameter {name} is repeated"
            )));
        }
        if !value.is_empty() {
            values.insert(name.into_owned(), value.into_owned());
        }
    }
    if values
        .get("password")
        .is_some_and(|p| p.chars().count() > MAX_PASSWORD_CHARS)
    {
        return Err(OAuthError::invalid_request(format!(
            "Parameter password is too long (at most {MAX_PASSWORD_CHARS} characters)"
        )));
    }
    Ok(FormParams { values })
}

/// How the client presented itself (RFC 6749 §2.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The client id, from the Basic header or the body.
    pub client_id: Option<String>,
    /// The secret, if one was sent.
    pub secret: Option<String>,
    /// Whether HTTP Basic was used (a failure then answers with `WWW-Authenticate`).
    pub basic: bool,
}

/// Reads client credentials from `Authorization: Basic` or the body (`client_id`,
/// `client_secret`). Using both methods at once is refused (RFC 6749 §2.3).
pub fn client_credentials(
    headers: &HeaderMap,
    form: &FormParams,
) -> Result<ClientCredentials, OAuthError> {
    let body_id = form.get("client_id").map(str::to_owned);
    let body_secret = form.get("client_secret").map(str::to_owned);
    let Some(authorization) = headers.get(header::AUTHORIZATION) else {
        return Ok(ClientCredentials {
            client_id: body_id,
            secret: body_secret,
            basic: false,
        });
    };
    let bad_basic = || OAuthError::invalid_client("Malformed HTTP Basic credentials", true);
    let value = authorization.to_str().map_err(|_| bad_basic())?;
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return Err(bad_basic());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(
            "Unsupported client authentication scheme; use HTTP Basic",
            true,
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad_basic())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad_basic())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad_basic)?;
    // RFC 6749 §2.3.1: both parts are form-urlencoded before being joined.
    let id = decode_component(id);
    let secret = decode_component(secret);
    if id.is_empty() {
        return Err(bad_basic());
    }
    if body_secret.is_some() {
        return Err(OAuthError::invalid_request(
            "Use only one client authentication method (HTTP Basic or client_secret)",
        ));
    }
    if body_id.as_deref().is_some_and(|b| b != id) {
        return Err(OAuthError::invalid_request(
            "client_id in the body differs from the HTTP Basic client",
        ));
    }
    Ok(ClientCredentials {
        client_id: Some(id),
        secret: Some(secret).filter(|s| !s.is_empty()),
        basic: true,
    })
}

fn decode_component(raw: &str) -> String {
    // Reuse the form decoder: "x" as the value of a one-pair form.
    let pair = format!("v={raw}");
    form_urlencoded::parse(pair.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn form_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=UTF-8"),
        );
        h
    }

    #[test]
    fn empty_values_are_absent_and_repeats_refused() {
        let form = parse_form_body(
            &form_headers(),
            b"grant_type=password&scope=&username=a%20b",
        )
        .expect("valid form");
        assert_eq!(form.get("grant_type"), Some("password"));
        assert_eq!(form.get("scope"), None);
        assert_eq!(form.get("username"), Some("a b"));
        let err = parse_pairs(b"a=1&a=2").expect_err("repeated");
        assert_eq!(err.code(), "invalid_request");
    }

    #[test]
    fn json_and_missing_content_types_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let err = parse_form_body(&h, b"{}").expect_err("json");
        assert!(err.description().contains("form-encoded"));
        assert!(parse_form_body(&HeaderMap::new(), b"a=1").is_err());
    }

    /// Found by crates/codelab/tests/schema (hostile bodies): invalid UTF-8 was decoded
    /// lossily and a login with it went on to a password hash.
    #[test]
    fn invalid_utf8_is_refused_raw_or_percent_encoded() {
        for body in [
            &b"grant_type=password&username=\xff\xfe&password=x"[..],
            b"grant_type=password&username=admin&password=%C3%28",
            b"%FF=1",
        ] {
            let err = parse_pairs(body).expect_err("invalid UTF-8");
            assert_eq!(err.code(), "invalid_request");
            assert!(err.description().contains("UTF-8"));
        }
        assert!(parse_pairs("username=j%C3%B6rg&password=\u{e9}".as_bytes()).is_ok());
    }

    #[test]
    fn oversized_fields_are_refused() {
        let long = format!("username={}", "a".repeat(MAX_FIELD_BYTES + 1));
        assert!(parse_pairs(long.as_bytes()).is_err());
        let long = format!("password={}", "a".repeat(MAX_PASSWORD_CHARS + 1));
        assert!(parse_pairs(long.as_bytes()).is_err());
    }

    #[test]
    fn basic_credentials_are_decoded() {
        let mut h = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("my%20client:s%3Acret");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("header"),
        );
        let creds = client_credentials(&h, &FormParams::default()).expect("valid");
        assert_eq!(creds.client_id.as_deref(), Some("my client"));
        assert_eq!(creds.secret.as_deref(), Some("s:cret"));
        assert!(creds.basic);
        let both = parse_pairs(b"client_secret=x").expect("form");
        assert_eq!(
            client_credentials(&h, &both)
                .expect_err("two methods")
                .code(),
            "invalid_request"
        );
    }
}
