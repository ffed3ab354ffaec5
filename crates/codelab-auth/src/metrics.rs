//! Metric names of the auth service (`codelab_auth_*`). Labels are bounded sets: grant type,
//! outcome (an OAuth error code or `success`), lockout kind. Never a username, IP or client id.

/// Token endpoint requests by `grant_type` and `outcome`.
pub const TOKEN_REQUESTS: &str = "codelab_auth_token_requests_total";
/// Token endpoint latency by `grant_type`.
pub const TOKEN_REQUEST_DURATION: &str = "codelab_auth_token_request_duration_seconds";
/// Failed logins (password grant and login page).
pub const FAILED_LOGINS: &str = "codelab_auth_failed_logins_total";
/// Lockouts started, by `kind` (`account`, `known_address`, `device` or `ip`).
pub const LOCKOUTS: &str = "codelab_auth_lockouts_total";
/// Successful refresh-token rotations.
pub const REFRESH_ROTATIONS: &str = "codelab_auth_refresh_rotations_total";
/// Reuse of a rotated or revoked refresh token (the family is revoked).
pub const REFRESH_REUSE: &str = "codelab_auth_refresh_reuse_total";
/// Requests refused by the per-IP rate limit.
pub const RATE_LIMITED: &str = "codelab_auth_rate_limited_total";
/// Cache errors Redis returned (not an outage: those are served from memory); the limit that
/// met one is skipped for that request.
pub const CACHE_ERRORS: &str = "codelab_auth_cache_errors_total";
/// Cache operations served from process memory because Redis was unavailable, by `operation`.
pub const CACHE_FALLBACKS: &str = "codelab_auth_cache_fallbacks_total";
/// 1 while Redis is unavailable and the limits are counted per replica in memory, else 0.
pub const CACHE_DEGRADED: &str = "codelab_auth_cache_degraded";
/// Failed client authentications (wrong or missing client secret, unknown client), by
/// `endpoint`; counted apart from user logins and never locking anyone out.
pub const CLIENT_AUTH_FAILURES: &str = "codelab_auth_client_auth_failures_total";
/// Introspection and revocation requests refused by their own per-IP rate limit.
pub const CLIENT_RATE_LIMITED: &str = "codelab_auth_client_rate_limited_total";
/// argon2/bcrypt verifications run, by `kind` (`user_password`, `legacy_client_secret`).
pub const PASSWORD_VERIFICATIONS: &str = "codelab_auth_password_verifications_total";
/// Requests refused with 503 because every password-hashing slot and the wait queue were
/// taken.
pub const PASSWORD_HASHING_REFUSED: &str = "codelab_auth_password_hashing_refused_total";
/// Expired refresh tokens deleted by the hourly cleanup.
pub const EXPIRED_TOKENS_DELETED: &str = "codelab_auth_expired_refresh_tokens_deleted_total";

/// Registers help texts (once per process; repeated calls are harmless).
pub fn describe() {
    metrics::describe_counter!(
        TOKEN_REQUESTS,
        "Token endpoint requests by grant type and outcome"
    );
    metrics::describe_histogram!(
        TOKEN_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Token endpoint latency by grant type"
    );
    metrics::describe_counter!(FAILED_LOGINS, "Failed password logins");
    metrics::describe_counter!(LOCKOUTS, "Brute-force lockouts started, by kind");
    metrics::describe_counter!(REFRESH_ROTATIONS, "Refresh tokens rotated");
    metrics::describe_counter!(REFRESH_REUSE, "Reused refresh tokens (family revoked)");
    metrics::describe_counter!(RATE_LIMITED, "Requests refused by the per-IP rate limit");
    metrics::describe_counter!(CACHE_ERRORS, "Cache errors Redis returned (limit skipped)");
    metrics::describe_counter!(
        CACHE_FALLBACKS,
        "Cache operations served from memory while Redis was unavailable"
    );
    metrics::describe_gauge!(
        CACHE_DEGRADED,
        "1 while Redis is unavailable and limits are kept in process memory"
    );
    metrics::describe_counter!(EXPIRED_TOKENS_DELETED, "Expired refresh tokens deleted");
    metrics::describe_counter!(
        CLIENT_AUTH_FAILURES,
        "Failed client authentications by endpoint (never counted as failed logins)"
    );
    metrics::describe_counter!(
        CLIENT_RATE_LIMITED,
        "Introspection and revocation requests refused by their per-IP rate limit"
    );
    metrics::describe_counter!(
        PASSWORD_VERIFICATIONS,
        "Password hash verifications run (argon2id or bcrypt), by kind"
    );
    metrics::describe_counter!(
        PASSWORD_HASHING_REFUSED,
        "Requests refused because the password-hashing cap and its queue were full"
    );
}

/// A bounded label for a `grant_type` value.
pub fn grant_label(grant_type: Option<&str>) -> &'static str {
    match grant_type {
        None => "none",
        Some("password") => "password",
        Some("refresh_token") => "refresh_token",
        Some("authorization_code") => "authorization_code",
        Some("client_credentials") => "client_credentials",
        Some(_) => "other",
    }
}

pub(crate) fn counter_cache_error(operation: &'static str) {
    metrics::counter!(CACHE_ERRORS, "operation" => operation).increment(1);
}

pub(crate) fn counter_cache_fallback(operation: &'static str) {
    metrics::counter!(CACHE_FALLBACKS, "operation" => operation).increment(1);
}

pub(crate) fn gauge_cache_degraded(degraded: bool) {
    metrics::gauge!(CACHE_DEGRADED).set(if degraded { 1.0 } else { 0.0 });
}

pub(crate) fn counter_rate_limited() {
    metrics::counter!(RATE_LIMITED).increment(1);
}

pub(crate) fn counter_failed_login() {
    metrics::counter!(FAILED_LOGINS).increment(1);
}

pub(crate) fn counter_lockout(kind: &'static str) {
    metrics::counter!(LOCKOUTS, "kind" => kind).increment(1);
}

pub(crate) fn counter_token_request(grant_type: &'static str, outcome: &'static str) {
    metrics::counter!(TOKEN_REQUESTS, "grant_type" => grant_type, "outcome" => outcome)
        .increment(1);
}

pub(crate) fn histogram_token_duration(grant_type: &'static str, seconds: f64) {
    metrics::histogram!(TOKEN_REQUEST_DURATION, "grant_type" => grant_type).record(seconds);
}

pub(crate) fn counter_refresh_rotation() {
    metrics::counter!(REFRESH_ROTATIONS).increment(1);
}

pub(crate) fn counter_refresh_reuse() {
    metrics::counter!(REFRESH_REUSE).increment(1);
}

pub(crate) fn counter_expired_deleted(count: u64) {
    metrics::counter!(EXPIRED_TOKENS_DELETED).increment(count);
}

pub(crate) fn counter_client_auth_failure(endpoint: &'static str) {
    metrics::counter!(CLIENT_AUTH_FAILURES, "endpoint" => endpoint).increment(1);
}

pub(crate) fn counter_client_rate_limited() {
    metrics::counter!(CLIENT_RATE_LIMITED).increment(1);
}

pub(crate) fn counter_password_verification(kind: &'static str) {
    metrics::counter!(PASSWORD_VERIFICATIONS, "kind" => kind).increment(1);
}

pub(crate) fn counter_hashing_refused() {
    metrics::counter!(PASSWORD_HASHING_REFUSED).increment(1);
}
