//! Row mapping and value encoding shared by both backends, so a record reads the same way from
//! PostgreSQL and SQLite: each backend only says how to read one cell ([`Cells`]).
//!
//! Stored forms (the original's where it had the column): `allowed_scopes` space-separated,
//! `allowed_grant_types` and `redirect_uris` JSON array text, `event_data` JSON. Timestamps
//! are `TIMESTAMPTZ` on PostgreSQL and fixed-width RFC 3339 UTC text on SQLite
//! (`2024-01-02T03:04:05.123456Z`), so that text order is time order in SQL comparisons.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, SubsecRound, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::StoreError;
use crate::model::{
    AuditEvent, AuditRecord, AuthorizationCode, Client, RefreshTokenRecord, SigningKeyRecord, User,
};

/// Reads one cell of a row as one of the few types the auth tables use.
pub(super) trait Cells {
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn flag(&self, column: &str) -> Result<bool, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, StoreError>;

    fn time(&self, column: &str) -> Result<DateTime<Utc>, StoreError> {
        self.opt_time(column)?
            .ok_or_else(|| StoreError::Corrupt(format!("{column} is NULL")))
    }
}

impl Cells for PgRow {
    fn text(&self, column: &str) -> Result<String, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn flag(&self, column: &str) -> Result<bool, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        // The original's lifetime columns are INTEGER (int4); sqlx will not widen implicitly.
        Ok(self.try_get::<i32, _>(column).map(i64::from)?)
    }
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.try_get(column)?)
    }
}

impl Cells for SqliteRow {
    fn text(&self, column: &str) -> Result<String, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn flag(&self, column: &str) -> Result<bool, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.try_get::<Option<String>, _>(column)?
            .map(|text| parse_sqlite_time(&text))
            .transpose()
    }
}

/// The current time at the precision both databases keep (microseconds), so a record read
/// back equals the one written.
pub(super) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A timestamp as SQLite stores it: RFC 3339 UTC, always six fractional digits.
pub(super) fn sqlite_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Optional [`sqlite_time`].
pub(super) fn sqlite_opt_time(at: Option<DateTime<Utc>>) -> Option<String> {
    at.map(sqlite_time)
}

/// Reads our RFC 3339 text, or the original's naive UTC text (`2024-01-02 03:04:05.123456`)
/// in case a row escaped the migration's rewrite.
pub(super) fn parse_sqlite_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|naive| naive.and_utc())
        .ok_or_else(|| StoreError::Corrupt(format!("expected an RFC 3339 timestamp, got {text:?}")))
}

/// A token lifetime for the original's INTEGER columns; beyond 68 years is clamped rather
/// than refused, as it means "practically forever" either way.
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

/// `event_data` as stored (JSON text).
pub(super) fn json_text(value: Option<&serde_json::Value>) -> Option<String> {
    value.map(serde_json::Value::to_string)
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
        access_token_lifetime: row.int("access_token_lifetime")?,
        refresh_token_lifetime: row.int("refresh_token_lifetime")?,
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

/// Maps every row with `map`.
pub(super) fn all<R, T>(
    rows: &[R],
    map: impl Fn(&R) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(map).collect()
}

/// Turns a unique violation into `Conflict(what(hint))`, where `hint` names the violated
/// index (PostgreSQL) or the failing columns (SQLite's message); a foreign-key violation into
/// `NotFound(missing)`; anything else stays a database error.
pub(super) fn classify(
    err: sqlx::Error,
    what: impl FnOnce(&str) -> String,
    missing: &str,
) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        if db.is_unique_violation() {
            let hint = db.constraint().unwrap_or_else(|| db.message());
            return StoreError::Conflict(what(hint));
        }
        if db.is_foreign_key_violation() {
            return StoreError::NotFound(missing.to_owned());
        }
    }
    StoreError::Database(err)
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
    use chrono::TimeZone;

    #[test]
    fn sqlite_times_are_fixed_width_and_read_back() {
        let whole = Utc
            .with_ymd_and_hms(2024, 1, 2, 3, 4, 5)
            .single()
            .expect("valid date");
        assert_eq!(sqlite_time(whole), "2024-01-02T03:04:05.000000Z");
        assert_eq!(
            parse_sqlite_time("2024-01-02T03:04:05.000000Z").ok(),
            Some(whole)
        );
        // The original's naive text is UTC.
        assert_eq!(parse_sqlite_time("2024-01-02 03:04:05").ok(), Some(whole));
        assert!(parse_sqlite_time("yesterday").is_err());
    }

    #[test]
    fn lists_round_trip_and_lifetimes_clamp() {
        let list = vec!["a\"b".to_owned(), "c".to_owned()];
        assert_eq!(parse_json_list("x", &json_list(&list)).ok(), Some(list));
        assert_eq!(lifetime_i32(900), 900);
        assert_eq!(lifetime_i32(i64::MAX), i32::MAX);
    }
}
