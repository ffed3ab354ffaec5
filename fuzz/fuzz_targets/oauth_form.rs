//! OAuth form bodies: what auth's token, authorize, introspect and revoke endpoints read
//! (`codelab_auth::handlers::form`). Input: the first line is an `Authorization` header value
//! (empty for none), the rest the request body.
//!
//! Invariants: no panic; a body is accepted exactly when RFC 6749 §3.2 and our bounds allow it
//! (UTF-8 only, each name at most once, at most 64 names of at most 64 bytes, values of at most
//! `MAX_FIELD_BYTES`, a password of at most `MAX_PASSWORD_CHARS` characters), and then every
//! name reads as its decoded value (empty ones as absent); re-encoding the accepted parameters
//! reads back the same; refusals are 400 `invalid_request`; client credentials from HTTP Basic
//! always name a client, and never disagree with the body.
#![no_main]

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use codelab_auth::handlers::form::{
    MAX_FIELD_BYTES, MAX_PASSWORD_CHARS, client_credentials, parse_form_body, parse_pairs,
};
use libfuzzer_sys::fuzz_target;

/// What the strict reading must decide, computed independently of it.
fn expected(body: &[u8]) -> Option<HashMap<String, String>> {
    let mut seen = HashMap::new();
    for (count, (name, value)) in form_urlencoded::parse(body).enumerate() {
        if count >= 64 || name.len() > 64 || value.len() > MAX_FIELD_BYTES {
            return None;
        }
        // Not UTF-8 (raw or percent-encoded): decoded lossily, so it holds U+FFFD.
        if name.contains(char::REPLACEMENT_CHARACTER) || value.contains(char::REPLACEMENT_CHARACTER)
        {
            return None;
        }
        if seen.insert(name.into_owned(), value.into_owned()).is_some() {
            return None;
        }
    }
    if seen
        .get("password")
        .is_some_and(|p| p.chars().count() > MAX_PASSWORD_CHARS)
    {
        return None;
    }
    Some(seen)
}

fuzz_target!(|data: &[u8]| {
    let (authorization, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&[][..], data),
    };
    let parsed = parse_pairs(body);
    match (expected(body), &parsed) {
        (None, Err(error)) => {
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
            assert_eq!(error.code(), "invalid_request");
        }
        (Some(pairs), Ok(form)) => {
            for (name, value) in &pairs {
                let want = (!value.is_empty()).then_some(value.as_str());
                assert_eq!(form.get(name), want, "parameter {name:?}");
            }
            // The accepted parameters, encoded again, read the same.
            let mut encoder = form_urlencoded::Serializer::new(String::new());
            for (name, value) in &pairs {
                encoder.append_pair(name, value);
            }
            let again = parse_pairs(encoder.finish().as_bytes()).expect("re-encoded form");
            for name in pairs.keys() {
                assert_eq!(again.get(name), form.get(name), "re-encoded {name:?}");
            }
        }
        (want, got) => panic!("accepted: expected {}, got {}", want.is_some(), got.is_ok()),
    }

    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded; charset=UTF-8"),
    );
    assert_eq!(parse_form_body(&headers, body).is_ok(), parsed.is_ok());
    let Ok(form) = parsed else {
        return;
    };
    if !authorization.is_empty() {
        let Ok(value) = HeaderValue::from_bytes(authorization) else {
            return;
        };
        headers.insert(header::AUTHORIZATION, value);
    }
    match client_credentials(&headers, &form) {
        Ok(credentials) if credentials.basic => {
            let id = credentials.client_id.expect("HTTP Basic names a client");
            assert!(!id.is_empty());
            assert!(form.get("client_secret").is_none());
            if let Some(body_id) = form.get("client_id") {
                assert_eq!(body_id, id);
            }
            assert_ne!(credentials.secret.as_deref(), Some(""));
        }
        Ok(credentials) => {
            assert!(authorization.is_empty());
            assert_eq!(credentials.client_id.as_deref(), form.get("client_id"));
            assert_eq!(credentials.secret.as_deref(), form.get("client_secret"));
        }
        Err(error) => {
            assert!(error.status().is_client_error());
            assert!(["invalid_request", "invalid_client"].contains(&error.code()));
        }
    }
});
