//! Row mapping and value encoding for both engines (cells are read through
//! `codelab_core::db::cells`).
//!
//! Stored forms (the original's where it had the column): `allowed_scopes` space-separated,
//! `allowed_grant_types` and `redirect_uris` JSON array text, `event_data` JSON. Timestamps
//! are `codelab_core::db::DbTime`.

use codelab_core::db::cells::Cells;

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
    Ok(User {
        id: row.text("id")?,
        username: row.text("username")?,
        email: row.opt_text("email")?,
        password_hash: row.text("password_hash")?,
        is_active: row.flag("is_active")?,
        is_admin: row.flag("is_admin")?,
        is_verified: row.flag("is_verified")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        last_login_at: row.opt_time("last_login_at")?,
    })
}

/// A client row (columns of `sql::client_columns!`).
pub(super) fn client(row: &impl Cells) -> Result<Client, StoreError> {
    Ok(Client {
        client_id: row.text("client_id")?,
        secret_hash: row.opt_text("client_secret_hash")?,
        name: row.text("name")?,
        description: row.opt_text("description")?,
        is_confidential: row.flag("is_confidential")?,
        allowed_scopes: row
            .text("allowed_scopes")?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        allowed_grant_types: parse_json_list(
            "allowed_grant_types",
            &row.text("allowed_grant_types")?,
        )?,
        redirect_uris: parse_json_list("redirect_uris", &row.text("redirect_uris")?)?,
        // The original's lifetime columns are INTEGER (int4 on PostgreSQL).
        access_token_lifetime: i64::from(row.int32("access_token_lifetime")?),
        refresh_token_lifetime: i64::from(row.int32("refresh_token_lifetime")?),
        is_active: row.flag("is_active")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

/// A refresh-token row (columns of `sql::refresh_columns!`).
pub(super) fn refresh_token(row: &impl Cells) -> Result<RefreshTokenRecord, StoreError> {
    Ok(RefreshTokenRecord {
        jti_hash: row.text("jti_hash")?,
        family_id: row.text("family_id")?,
        user_id: row.text("user_id")?,
        client_id: row.text("client_id")?,
        scope: row.text("scope")?,
        expires_at: row.time("expires_at")?,
        revoked: row.flag("revoked")?,
        revoked_at: row.opt_time("revoked_at")?,
        parent_jti_hash: row.opt_text("parent_jti_hash")?,
        created_at: row.time("created_at")?,
    })
}

/// An authorization-code row (columns of `sql::code_columns!`).
pub(super) fn authorization_code(row: &impl Cells) -> Result<AuthorizationCode, StoreError> {
    Ok(AuthorizationCode {
        code_hash: row.text("code_hash")?,
        client_id: row.text("client_id")?,
        user_id: row.text("user_id")?,
        redirect_uri: row.text("redirect_uri")?,
        scope: row.text("scope")?,
        code_challenge: row.text("code_challenge")?,
        expires_at: row.time("expires_at")?,
        created_at: row.time("created_at")?,
    })
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
    Ok(AuditRecord {
        id: row.text("id")?,
        created_at: row.time("created_at")?,
        event: AuditEvent {
            user_id: row.opt_text("user_id")?,
            client_id: row.opt_text("client_id")?,
            event_type: row.text("event_type")?,
            event_data,
            ip_address: row.opt_text("ip_address")?,
            user_agent: row.opt_text("user_agent")?,
            success: row.flag("success")?,
            error_message: row.opt_text("error_message")?,
        },
    })
}

/// A signing-key row (columns of `sql::key_columns!`).
pub(super) fn signing_key(row: &impl Cells) -> Result<SigningKeyRecord, StoreError> {
    Ok(SigningKeyRecord {
        kid: row.text("kid")?,
        private_key_pem: row.text("private_key_pem")?,
        public_key_pem: row.text("public_key_pem")?,
        created_at: row.time("created_at")?,
        retired_at: row.opt_time("retired_at")?,
        publish_until: row.opt_time("publish_until")?,
    })
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
