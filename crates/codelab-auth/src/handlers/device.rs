//! The device cookie of the browser login (docs/auth.md, "Protection"): a successful sign-in on the authorize form sets a signed cookie
//! naming the account and a random device id; later failures from a browser presenting a
//! valid one for that account are counted per device, so a stranger's failures, counted
//! against the account's untrusted clients, do not lock that browser out.
//!
//! The cookie is a compact JWS signed RS256 with the service's active signing key, so every
//! replica verifies it (the keys are shared through the database) and none needs a secret of
//! its own. Its claims (`use: "device"`, no `aud`, `type`, `client_id` or `scope`) can never
//! pass as an access or refresh token, and a token can never pass as a device cookie.

use std::time::Duration;

use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::tokens;

/// The cookie's name.
pub const DEVICE_COOKIE: &str = "codelab_device";
/// How long a browser stays a known device after signing in.
pub const DEVICE_COOKIE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// The JOSE `typ` of a device cookie.
const DEVICE_TYP: &str = "codelab-device+jwt";
/// Longest cookie value looked at (an RS256 JWS of these claims is well under 1 KiB).
const MAX_COOKIE_BYTES: usize = 2048;

#[derive(Debug, Serialize, Deserialize)]
struct DeviceClaims {
    iss: String,
    sub: String,
    jti: String,
    iat: i64,
    exp: i64,
    #[serde(rename = "use")]
    usage: String,
}

#[derive(Serialize)]
struct DeviceHeader<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
}

/// A verified device cookie: the account it was issued for and the device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The account's user id.
    pub account: String,
    /// The random id of this browser's cookie (the per-device counter's key).
    pub id: String,
}

fn now_secs(state: &AppState) -> i64 {
    state.now().timestamp()
}

/// Signs a device cookie value for `user_id`; `None` when signing fails (logged: the login
/// still succeeds, the browser just stays untrusted).
fn issue(state: &AppState, user_id: &str) -> Option<String> {
    let now = now_secs(state);
    let lifetime = i64::try_from(DEVICE_COOKIE_LIFETIME.as_secs()).unwrap_or(i64::MAX);
    let claims = DeviceClaims {
        iss: state.tokens.issuer().to_owned(),
        sub: user_id.to_owned(),
        jti: tokens::random_token(16),
        iat: now,
        exp: now.saturating_add(lifetime),
        usage: "device".to_owned(),
    };
    let keys = state.tokens.keys().current();
    let active = keys.active();
    let header = DeviceHeader {
        alg: "RS256",
        kid: &active.kid,
        typ: DEVICE_TYP,
    };
    let (Ok(header), Ok(payload)) = (serde_json::to_vec(&header), serde_json::to_vec(&claims))
    else {
        tracing::warn!("cannot encode the device cookie");
        return None;
    };
    let mut value = URL_SAFE_NO_PAD.encode(header);
    value.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut value);
    let mut signature = vec![0u8; active.key_pair.public_modulus_len()];
    if let Err(error) = active.key_pair.sign(
        &RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        value.as_bytes(),
        &mut signature,
    ) {
        tracing::warn!(%error, "cannot sign the device cookie");
        return None;
    }
    value.push('.');
    URL_SAFE_NO_PAD.encode_string(&signature, &mut value);
    Some(value)
}

/// The `Set-Cookie` value giving this browser a device cookie for `user_id`: HttpOnly,
/// SameSite=Strict (only the authorize form, on our own origin, reads it), Secure when the
/// public URL is https.
pub fn set_cookie_header(state: &AppState, user_id: &str) -> Option<HeaderValue> {
    let value = issue(state, user_id)?;
    let secure = if state.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{DEVICE_COOKIE}={value}; Path=/oauth; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        DEVICE_COOKIE_LIFETIME.as_secs()
    );
    HeaderValue::from_str(&cookie).ok()
}

/// The device cookie of a request, when it is present and valid: signed by a key of our set,
/// issued by us, unexpired by the injected clock. Anything else is no device (untrusted).
pub fn verify(state: &AppState, headers: &HeaderMap) -> Option<Device> {
    let value = codelab_core::http::cookie_value(headers, DEVICE_COOKIE)?;
    if value.len() > MAX_COOKIE_BYTES {
        return None;
    }
    let header = jsonwebtoken::decode_header(value).ok()?;
    if header.alg != Algorithm::RS256 || header.typ.as_deref() != Some(DEVICE_TYP) {
        return None;
    }
    let kid = header.kid?;
    let keys = state.tokens.keys().current();
    let key = keys.decoding_key(&kid)?;
    let mut validation = Validation::new(Algorithm::RS256);
    // Times are checked against the injected clock below.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<DeviceClaims>(value, key, &validation)
        .ok()?
        .claims;
    let valid = claims.usage == "device"
        && claims.iss == state.tokens.issuer()
        && claims.exp > now_secs(state)
        && !claims.jti.is_empty();
    valid.then_some(Device {
        account: claims.sub,
        id: claims.jti,
    })
}
