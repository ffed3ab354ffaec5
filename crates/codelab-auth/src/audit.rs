//! What audit rows may say about a failed login. People type passwords into the username
//! field, so text that names no account is never stored as typed: only a keyed hash of it
//! (HMAC-SHA-256 under a key derived from the key-encryption key), which still shows
//! repeated attempts with the same text without revealing it (docs/auth.md, "Audit log").

use aws_lc_rs::hmac;
use serde_json::{Value, json};

use crate::AppState;

/// Purpose of the derived key hashing unknown login names.
const UNKNOWN_LOGIN_KEY_PURPOSE: &str = "unknown-login-audit";
/// Hex characters kept of the hash (128 bits: enough to tell attempts apart).
const UNKNOWN_LOGIN_HASH_CHARS: usize = 32;

/// The `event_data` of a `login_failed` row for the typed login `typed`: the account's
/// username when it names one (by username or email), else `login_hmac`, the keyed hash of
/// the text.
pub async fn failed_login_data(state: &AppState, typed: &str) -> Value {
    match state.store.find_user_by_login(typed).await {
        Ok(Some(user)) => json!({ "username": user.username }),
        Ok(None) => json!({ "login_hmac": unknown_login_hash(state, typed) }),
        Err(error) => {
            tracing::warn!(%error, "cannot look up the login for the audit row");
            json!({ "login_hmac": unknown_login_hash(state, typed) })
        }
    }
}

/// The keyed hash of a login that names no account (`None` if the key cannot be derived:
/// then nothing about the text is stored).
pub fn unknown_login_hash(state: &AppState, typed: &str) -> Option<String> {
    let key = match state.keys.derived_key(UNKNOWN_LOGIN_KEY_PURPOSE) {
        Ok(key) => key,
        Err(error) => {
            tracing::error!(%error, "cannot derive the unknown-login key");
            return None;
        }
    };
    let tag = hmac::sign(&key, typed.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Some(hex[..UNKNOWN_LOGIN_HASH_CHARS].to_owned())
}
