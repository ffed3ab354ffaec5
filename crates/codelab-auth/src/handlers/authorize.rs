//! `GET /oauth/authorize` and the login form it renders; `POST /oauth/authorize` checks the
//! form and redirects back with a code (RFC 6749 §4.1, PKCE S256 per RFC 7636).
//!
//! The client and its redirect URI are checked (exact string match) before anything else: a
//! wrong one is answered with an HTML page, never a redirect (RFC 6749 §4.1.2.1), so the
//! endpoint cannot be used as an open redirector. The form is protected by a CSRF token that
//! lives in an HttpOnly, SameSite=Lax cookie and in the form. The token is signed (HMAC) and
//! expiring, so showing the form stores nothing: a flood of `GET /oauth/authorize` cannot fill
//! the cache or push out the rate-limit counters. Only a submission stores the token's nonce,
//! to refuse a replay (docs/security.md).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use aws_lc_rs::hmac;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::TimeDelta;
use codelab_core::html::escape_html;
use sha2::{Digest, Sha256};

use super::form::{FormParams, parse_form_body, parse_pairs};
use super::{Caller, RequestContext, SignIn, SignInChannel, audit, device, grant_scope, sign_in};
use crate::AppState;
use crate::keys::KeyError;
use crate::limits::RateDecision;
use crate::model::{AuditEvent, AuthorizationCode, Client};
use crate::tokens;

/// Name of the CSRF cookie.
const CSRF_COOKIE: &str = "codelab_auth_csrf";
/// How long a rendered login form stays usable.
const CSRF_TTL: Duration = Duration::from_secs(600);
/// Purpose of the derived HMAC key that signs login-form tokens.
const CSRF_KEY_PURPOSE: &str = "login-form-csrf";
/// Random bytes that make each login-form token single-use.
const CSRF_NONCE_BYTES: usize = 16;
/// Longest login-form token looked at (a real one is 75 characters).
const MAX_CSRF_TOKEN_CHARS: usize = 128;

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0}\
main{max-width:22rem;margin:4rem auto;background:#fff;padding:2rem;border-radius:8px;\
box-shadow:0 1px 4px rgba(0,0,0,.15)}h1{font-size:1.3rem;margin-top:0}\
label{display:block;margin:.8rem 0 .2rem}input{width:100%;box-sizing:border-box;padding:.5rem}\
.error{color:#b00020}.actions{margin-top:1.2rem;display:flex;gap:.5rem}\
button{padding:.5rem 1rem}.scope{color:#555;font-size:.9rem}";

/// CSP for our pages: no scripts at all, only our one stylesheet (by hash), not framable.
static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    let digest = Sha256::digest(STYLE.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(digest);
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; frame-ancestors 'none'"
    )
});

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>\n",
        title = escape_html(title),
    )
}

/// An HTML answer with the security headers every page of ours carries.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(csp) = HeaderValue::from_str(&CONTENT_SECURITY_POLICY) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The page shown when we cannot safely redirect back to the client.
fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>Sign-in request refused</h1><p class=\"error\">{}</p>",
        escape_html(message)
    );
    html(status, page("Sign-in error", &body))
}

/// A redirect to the client with `params` appended to its redirect URI's query.
fn redirect_to(redirect_uri: &str, params: &[(&str, &str)], status: StatusCode) -> Response {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        query.append_pair(name, value);
    }
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!("{redirect_uri}{separator}{}", query.finish());
    match HeaderValue::from_str(&location) {
        Ok(location) => {
            let mut response = status.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(_) => error_page(StatusCode::BAD_REQUEST, "The redirect URI is not usable"),
    }
}

/// RFC 6749 §4.1.2.1: an error reported to the (verified) redirect URI, with `state`.
fn error_redirect(
    request: &ValidRedirect,
    error: &str,
    description: &str,
    status: StatusCode,
) -> Response {
    let mut params = vec![("error", error), ("error_description", description)];
    if let Some(state) = request.state.as_deref() {
        params.push(("state", state));
    }
    redirect_to(&request.redirect_uri, &params, status)
}

/// A request whose client and redirect URI are known to be good.
struct ValidRedirect {
    client: Client,
    redirect_uri: String,
    state: Option<String>,
}

/// The rest of a valid authorization request.
struct ValidRequest {
    scope: String,
    code_challenge: String,
}

/// [`error_page`], boxed for `Result` (a `Response` is large).
fn refuse(status: StatusCode, message: &str) -> Box<Response> {
    Box::new(error_page(status, message))
}

/// Checks `client_id` and the exact `redirect_uri`; failures are HTML pages.
async fn check_client(
    state: &AppState,
    params: &FormParams,
) -> Result<ValidRedirect, Box<Response>> {
    let Some(client_id) = params.get("client_id") else {
        return Err(refuse(StatusCode::BAD_REQUEST, "Missing client_id"));
    };
    let client = match state.store.get_client(client_id).await {
        Ok(Some(client)) if client.is_active => client,
        Ok(_) => return Err(refuse(StatusCode::BAD_REQUEST, "Unknown client")),
        Err(error) => {
            tracing::error!(%error, "cannot load client");
            return Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "An internal error occurred",
            ));
        }
    };
    let Some(redirect_uri) = params.get("redirect_uri") else {
        return Err(refuse(StatusCode::BAD_REQUEST, "Missing redirect_uri"));
    };
    // Exact string comparison (RFC 9700 §4.1.3): no prefix, wildcard or normalisation.
    if !client.redirect_uris.iter().any(|uri| uri == redirect_uri) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "The redirect_uri is not registered for this client",
        ));
    }
    Ok(ValidRedirect {
        redirect_uri: redirect_uri.to_owned(),
        state: params.get("state").map(str::to_owned),
        client,
    })
}

/// Checks the rest of the request; failures are error redirects.
fn check_request(
    target: &ValidRedirect,
    params: &FormParams,
) -> Result<ValidRequest, Box<Response>> {
    let fail = |error: &str, description: &str| {
        Box::new(error_redirect(
            target,
            error,
            description,
            StatusCode::FOUND,
        ))
    };
    match params.get("response_type") {
        Some("code") => {}
        None => return Err(fail("invalid_request", "Missing response_type")),
        Some(_) => {
            return Err(fail(
                "unsupported_response_type",
                "Only response_type=code is supported",
            ));
        }
    }
    if !target.client.allows_grant("authorization_code") {
        return Err(fail(
            "unauthorized_client",
            "Client may not use the authorization code flow",
        ));
    }
    let Some(challenge) = params.get("code_challenge") else {
        return Err(fail(
            "invalid_request",
            "code_challenge is required (PKCE, RFC 7636)",
        ));
    };
    // RFC 9700 §2.1.1: `plain` gives no protection against a leaked code; only S256.
    if params.get("code_challenge_method") != Some("S256") {
        return Err(fail(
            "invalid_request",
            "code_challenge_method must be S256",
        ));
    }
    let well_formed = (43..=128).contains(&challenge.len())
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(fail("invalid_request", "Malformed code_challenge"));
    }
    // Whether api:admin may be granted depends on who signs in; that is checked at login.
    let scope = match grant_scope(params.get("scope"), &target.client.allowed_scopes, true) {
        Ok(_) => params.get("scope").unwrap_or_default().to_owned(),
        Err(error) => return Err(fail("invalid_scope", error.description())),
    };
    Ok(ValidRequest {
        scope,
        code_challenge: challenge.to_owned(),
    })
}

/// The login form, carrying the request's parameters as hidden fields.
fn login_form(
    target: &ValidRedirect,
    request: &ValidRequest,
    csrf: &str,
    username: &str,
    error: Option<&str>,
) -> String {
    let hidden = [
        ("csrf_token", csrf),
        ("response_type", "code"),
        ("client_id", target.client.client_id.as_str()),
        ("redirect_uri", target.redirect_uri.as_str()),
        ("state", target.state.as_deref().unwrap_or_default()),
        ("scope", request.scope.as_str()),
        ("code_challenge", request.code_challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let mut fields = String::new();
    for (name, value) in hidden {
        if !value.is_empty() {
            fields.push_str(&format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                escape_html(value)
            ));
        }
    }
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape_html(e)))
        .unwrap_or_default();
    let scope = if request.scope.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"scope\">Requested access: {}</p>",
            escape_html(&request.scope)
        )
    };
    let body = format!(
        "<h1>Sign in to CodeLab</h1><p>{client} wants to access your account.</p>{scope}{error}\
<form method=\"post\" action=\"authorize\">{fields}\
<label for=\"username\">Username or email</label>\
<input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" value=\"{username}\" required autofocus>\
<label for=\"password\">Password</label>\
<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
<div class=\"actions\"><button type=\"submit\" name=\"action\" value=\"login\">Sign in</button>\
<button type=\"submit\" name=\"action\" value=\"cancel\" formnovalidate>Cancel</button></div></form>",
        client = escape_html(&target.client.name),
        username = escape_html(username),
    );
    page("Sign in to CodeLab", &body)
}

/// Cache key marking a login-form token's nonce as used.
fn csrf_key(nonce: &[u8]) -> String {
    format!("csrf_used:{}", URL_SAFE_NO_PAD.encode(nonce))
}

/// A new login-form token, `base64url(expiry ‖ nonce) "." base64url(HMAC-SHA-256)`, valid for
/// [`CSRF_TTL`]. Nothing is stored for it.
fn issue_csrf_token(state: &AppState) -> Result<String, KeyError> {
    let expires = state
        .now()
        .timestamp()
        .saturating_add(CSRF_TTL.as_secs().cast_signed());
    let mut payload = expires.to_be_bytes().to_vec();
    let mut nonce = [0u8; CSRF_NONCE_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
    payload.extend_from_slice(&nonce);
    let key = state.keys.derived_key(CSRF_KEY_PURPOSE)?;
    let tag = hmac::sign(&key, &payload);
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    ))
}

/// The nonce of `token` and the time it has left, when we signed it and it has not expired.
fn verify_csrf_token(state: &AppState, token: &str) -> Option<(Vec<u8>, Duration)> {
    if token.len() > MAX_CSRF_TOKEN_CHARS {
        return None;
    }
    let (payload, tag) = token.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    let key = match state.keys.derived_key(CSRF_KEY_PURPOSE) {
        Ok(key) => key,
        Err(error) => {
            tracing::error!(%error, "cannot derive the login-form key");
            return None;
        }
    };
    // Constant-time comparison of the tag (aws-lc's verify).
    hmac::verify(&key, &payload, &tag).ok()?;
    let (expires, nonce) = payload.split_first_chunk::<8>()?;
    let left = i64::from_be_bytes(*expires).checked_sub(state.now().timestamp())?;
    let left = u64::try_from(left).ok().filter(|left| *left > 0)?;
    (nonce.len() == CSRF_NONCE_BYTES).then(|| (nonce.to_vec(), Duration::from_secs(left)))
}

/// Renders the login form with a fresh CSRF token (cookie + hidden field; nothing stored).
async fn render_login(
    state: &AppState,
    target: &ValidRedirect,
    request: &ValidRequest,
    username: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let csrf = match issue_csrf_token(state) {
        Ok(csrf) => csrf,
        Err(error) => {
            tracing::error!(%error, "cannot sign a login-form token");
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "An internal error occurred",
            );
        }
    };
    let mut response = html(status, login_form(target, request, &csrf, username, error));
    let secure = if state.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{CSRF_COOKIE}={csrf}; Path=/oauth; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        CSRF_TTL.as_secs()
    );
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Whether the form's CSRF token matches the cookie, carries our signature, has not expired
/// and was not used before; marks it used. Only here is anything stored, and only for a token
/// we signed, until it would have expired anyway.
async fn check_csrf(state: &AppState, headers: &HeaderMap, form: &FormParams) -> bool {
    let (Some(cookie), Some(field)) = (
        codelab_core::http::cookie_value(headers, CSRF_COOKIE),
        form.get("csrf_token"),
    ) else {
        return false;
    };
    if cookie.len() != field.len()
        || !bool::from(subtle::ConstantTimeEq::ct_eq(
            cookie.as_bytes(),
            field.as_bytes(),
        ))
    {
        return false;
    }
    let Some((nonce, left)) = verify_csrf_token(state, field) else {
        return false;
    };
    match state
        .limits
        .cache()
        .set_nx_ex(&csrf_key(&nonce), "1", left)
        .await
    {
        Ok(first_use) => first_use,
        Err(error) => {
            // The signature, expiry and cookie still protect the form; only single use is lost.
            tracing::warn!(%error, "cannot record the login-form token as used; signature check only");
            true
        }
    }
}

/// `GET /oauth/authorize`: validates the request and shows the login form.
pub async fn show_login(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    let params = match parse_pairs(query.unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(error) => return error_page(StatusCode::BAD_REQUEST, error.description()),
    };
    let target = match check_client(&state, &params).await {
        Ok(target) => target,
        Err(page) => return *page,
    };
    let request = match check_request(&target, &params) {
        Ok(request) => request,
        Err(redirect) => return *redirect,
    };
    render_login(&state, &target, &request, "", None, StatusCode::OK).await
}

/// `POST /oauth/authorize`: the login form's submission.
pub async fn submit_login(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match parse_form_body(&headers, &body) {
        Ok(form) => form,
        Err(error) => return error_page(StatusCode::BAD_REQUEST, error.description()),
    };
    let target = match check_client(&state, &form).await {
        Ok(target) => target,
        Err(page) => return *page,
    };
    let ctx = RequestContext::new(&state, caller, &headers);
    // Before the CSRF check: an accepted form token stores its nonce once (single use), so the
    // per-address limit also bounds how many such entries one address can create.
    if let RateDecision::Limited { retry_after, .. } = state.limits.check_rate(&ctx.ip).await {
        let mut page = error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests. Please try again later.",
        );
        page.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return page;
    }
    if !check_csrf(&state, &headers, &form).await {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The sign-in form has expired or was not submitted from this site. Go back and try again.",
        );
    }
    let request = match check_request(&target, &form) {
        Ok(request) => request,
        Err(redirect) => return *redirect,
    };
    if form.get("action") == Some("cancel") {
        return error_redirect(
            &target,
            "access_denied",
            "The user cancelled the sign-in",
            StatusCode::SEE_OTHER,
        );
    }
    let username = form.get("username").unwrap_or_default();
    let retry = |message: &str, status: StatusCode| {
        let state = Arc::clone(&state);
        let message = message.to_owned();
        let username = username.to_owned();
        let target = &target;
        let request = &request;
        async move { render_login(&state, target, request, &username, Some(&message), status).await }
    };
    let Some(password) = form.get("password").filter(|_| !username.is_empty()) else {
        return retry("Enter your username and password.", StatusCode::BAD_REQUEST).await;
    };
    // The device cookie: a browser that signed in to this account before is counted on its
    // own, so strangers' failures do not lock it out (docs/auth.md, "Protection").
    let channel = SignInChannel::Browser {
        device: device::verify(&state, &headers).map(|d| (d.account, d.id)),
    };
    let user = match sign_in(&state, &ctx.ip, username, password, &channel).await {
        Ok(SignIn::Success(user)) => user,
        Ok(SignIn::Locked(lockout)) => {
            return retry(&lockout.message, StatusCode::TOO_MANY_REQUESTS).await;
        }
        Ok(SignIn::Failure) => {
            let event = AuditEvent {
                client_id: Some(target.client.client_id.clone()),
                event_data: Some(crate::audit::failed_login_data(&state, username).await),
                error_message: Some("Invalid credentials".to_owned()),
                ..ctx.event("login_failed", false)
            };
            audit(&state, event).await;
            return retry("Invalid username or password", StatusCode::OK).await;
        }
        // The password-hashing cap is full: the form again, with the 503's Retry-After.
        Err(error) if error.status() == StatusCode::SERVICE_UNAVAILABLE => {
            let mut page = retry(error.description(), StatusCode::SERVICE_UNAVAILABLE).await;
            page.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::passwords::HASHING_RETRY_AFTER.as_secs()),
            );
            return page;
        }
        Err(error) => return error.into_response(),
    };
    let requested = Some(request.scope.as_str()).filter(|s| !s.is_empty());
    let scope = match grant_scope(requested, &target.client.allowed_scopes, user.is_admin) {
        Ok(scope) => scope,
        Err(error) => {
            return error_redirect(
                &target,
                "invalid_scope",
                error.description(),
                StatusCode::SEE_OTHER,
            );
        }
    };
    let code = tokens::random_token(32);
    let now = state.now();
    let record = AuthorizationCode {
        code_hash: tokens::sha256_hex(code.as_bytes()),
        client_id: target.client.client_id.clone(),
        user_id: user.id.clone(),
        redirect_uri: target.redirect_uri.clone(),
        scope: scope.clone(),
        code_challenge: request.code_challenge.clone(),
        expires_at: now + TimeDelta::seconds(state.config.authorization_code_lifetime),
        created_at: now,
    };
    if let Err(error) = state.store.insert_authorization_code(record).await {
        tracing::error!(%error, "cannot store the authorization code");
        return error_redirect(
            &target,
            "server_error",
            "An internal error occurred",
            StatusCode::SEE_OTHER,
        );
    }
    let event = AuditEvent {
        user_id: Some(user.id.clone()),
        client_id: Some(target.client.client_id.clone()),
        event_data: Some(serde_json::json!({ "scope": scope, "flow": "authorization_code" })),
        ..ctx.event("login_success", true)
    };
    audit(&state, event).await;
    let mut params = vec![("code", code.as_str())];
    if let Some(client_state) = target.state.as_deref() {
        params.push(("state", client_state));
    }
    let mut response = redirect_to(&target.redirect_uri, &params, StatusCode::SEE_OTHER);
    if let Some(cookie) = device::set_cookie_header(&state, &user.id) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_attribute_breakouts() {
        assert_eq!(
            escape_html("\"><script>alert('x')</script>&"),
            "&quot;&gt;&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;"
        );
    }

    #[test]
    fn csp_pins_the_stylesheet_and_forbids_scripts_and_framing() {
        let csp = CONTENT_SECURITY_POLICY.as_str();
        assert!(csp.contains("default-src 'none'"));
        assert!(csp.contains("style-src 'sha256-"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("script-src"));
    }

    #[test]
    fn redirects_append_to_an_existing_query() {
        let response = redirect_to("https://app/cb?x=1", &[("code", "a b")], StatusCode::FOUND);
        let location = response.headers()[header::LOCATION]
            .to_str()
            .expect("ascii");
        assert_eq!(location, "https://app/cb?x=1&code=a+b");
    }
}
