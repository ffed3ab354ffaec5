//! Row mapping and value encoding for both engines (cells are read through
//! `codelab_core::db::cells`).
//!
//! Stored forms (the original's where it had the column): `allowed_scopes` space-separated,
//! `allowed_grant_types` and `redirect_uris` JSON array text, `event_data` JSON. Timestamps
//! are `codelab_core::db::DbTime`.

use codelab_core::db::cells::Cells;
use codelab_core::from_row;

use super::StoreError;
use crate::model::{
    AuditEvent, AuditRecord, AuthorizationCode, Client, RefreshTokenRecord, SigningKeyRecord, User,
};

/// A token lifetime for the original's INTEGER columns (int4 on PostgreSQL, read back as
/// `i32` on both); beyond 68 years is clamped rather than refused, as it means "practically
/// forever" either way.
pub(super) fn lifetime_i32(seconds: i64) -> i32 {
    i32::try_from(seconds).unwrap_or(if seconds < 0 { i32::MIN } else { i32::MAX })
}

/// Scopes as the original stores them: space-separated.
pub(super) fn scopes_text(scopes: &[String]) -> String {
    scopes.join(" ")
}

/// A list as JSON array text (grant types, redirect URIs).
pub(super) fn json_list(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

fn parse_json_list(column: &str, text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::Corrupt(format!(
            "{column}: expected a JSON array of strings, got {text:?}: {e}"
        ))
    })
}

/// A user row (columns of `sql::user_columns!`).
pub(super) fn user(row: &impl Cells) -> Result<User, StoreError> {
    Ok(from_row!(row => User {
        id: text, username: text, email: opt_text, password_hash: text, is_active: flag,
        is_admin: flag, is_verified: flag, created_at: time, updated_at: time,
        last_login_at: opt_time,
    }))
}

/// A client row (columns of `sql::client_columns!`).
pub(super) fn client(row: &impl Cells) -> Result<Client, StoreError> {
    Ok(from_row!(row => Client {
        client_id: text, secret_hash = row.opt_text("client_secret_hash")?, name: text,
        description: opt_text, is_confidential: flag,
        allowed_scopes =
            row.text("allowed_scopes")?.split_whitespace().map(str::to_owned).collect(),
        allowed_grant_types =
            parse_json_list("allowed_grant_types", &row.text("allowed_grant_types")?)?,
        redirect_uris = parse_json_list("redirect_uris", &row.text("redirect_uris")?)?,
        // The original's lifetime columns are INTEGER (int4 on PostgreSQL).
        access_token_lifetime = i64::from(row.int32("access_token_lifetime")?),
        refresh_token_lifetime = i64::from(row.int32("refresh_token_lifetime")?),
        is_active: flag, created_at: time, updated_at: time,
    }))
}

/// A refresh-token row (columns of `sql::refresh_columns!`).
pub(super) fn refresh_token(row: &impl Cells) -> Result<RefreshTokenRecord, StoreError> {
    Ok(from_row!(row => RefreshTokenRecord {
        jti_hash: text, family_id: text, user_id: text, client_id: text, scope: text,
        expires_at: time, revoked: flag, revoked_at: opt_time, parent_jti_hash: opt_text,
        created_at: time,
    }))
}

/// A refresh-token row and its `owner_active` flag (`sql::FIND_REFRESH_WITH_OWNER`).
pub(super) fn refresh_token_with_owner(
    row: &impl Cells,
) -> Result<(RefreshTokenRecord, bool), StoreError> {
    Ok((refresh_token(row)?, row.flag("owner_active")?))
}

/// An authorization-code row (columns of `sql::code_columns!`).
pub(super) fn authorization_code(row: &impl Cells) -> Result<AuthorizationCode, StoreError> {
    Ok(from_row!(row => AuthorizationCode {
        code_hash: text, client_id: text, user_id: text, redirect_uri: text, scope: text,
        code_challenge: text, expires_at: time, created_at: time,
    }))
}

/// An audit row (columns of `sql::LIST_AUDIT`).
pub(super) fn audit_record(row: &impl Cells) -> Result<AuditRecord, StoreError> {
    let event_data = row
        .opt_text("event_data")?
        .map(|text| {
            serde_json::from_str(&text).map_err(|e| {
                StoreError::Corrupt(format!("event_data: expected JSON, got {text:?}: {e}"))
            })
        })
        .transpose()?;
    Ok(from_row!(row => AuditRecord {
        id: text, created_at: time,
        event = from_row!(row => AuditEvent {
            user_id: opt_text, client_id: opt_text, event_type: text, event_data = event_data,
            ip_address: opt_text, user_agent: opt_text, success: flag, error_message: opt_text,
        }),
    }))
}

/// A signing-key row (columns of `sql::key_columns!`).
pub(super) fn signing_key(row: &impl Cells) -> Result<SigningKeyRecord, StoreError> {
    Ok(from_row!(row => SigningKeyRecord {
        kid: text, private_key_pem: text, public_key_pem: text, created_at: time,
        retired_at: opt_time, publish_until: opt_time,
    }))
}

/// The `Conflict` text for a new user: which of username and email is taken.
pub(super) fn user_conflict(hint: &str, username: &str, email: Option<&str>) -> String {
    match email {
        Some(email) if hint.contains("email") => format!("email {email:?}"),
        _ => format!("username {username:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_lifetimes_clamp() {
        let list = vec!["a\"b".to_owned(), "c".to_owned()];
        assert_eq!(parse_json_list("x", &json_list(&list)).ok(), Some(list));
        assert_eq!(lifetime_i32(900), 900);
        assert_eq!(lifetime_i32(i64::MAX), i32::MAX);
    }
}
