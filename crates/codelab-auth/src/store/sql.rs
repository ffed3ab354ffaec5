//! The auth store's SQL, one text for both engines: PostgreSQL and SQLite (≥ 3.35, for
//! `RETURNING`) agree on every statement here, and sqlx binds `$n` placeholders on both.
//! Timestamps bind as `codelab_core::db::DbTime` and JSON as `JsonText`, which take each
//! engine's column form.

macro_rules! user_columns {
    () => {
        "id, username, email, password_hash, is_active, is_admin, is_verified, created_at, \
         updated_at, last_login_at"
    };
}

macro_rules! client_columns {
    () => {
        "client_id, client_secret_hash, name, description, is_confidential, allowed_scopes, \
         allowed_grant_types, redirect_uris, access_token_lifetime, refresh_token_lifetime, \
         is_active, created_at, updated_at"
    };
}

macro_rules! refresh_columns {
    () => {
        "jti_hash, family_id, user_id, client_id, scope, expires_at, revoked, revoked_at, \
         parent_jti_hash, created_at"
    };
}

macro_rules! code_columns {
    () => {
        "code_hash, client_id, user_id, redirect_uri, scope, code_challenge, expires_at, created_at"
    };
}

macro_rules! key_columns {
    () => {
        "kid, private_key_pem, public_key_pem, created_at, retired_at, publish_until"
    };
}

pub(super) const PING: &str = "SELECT 1";

// ---- users ----

/// $1 id, $2 username, $3 email (lower-cased), $4 password hash, $5 is_admin, $6 now.
pub(super) const INSERT_USER: &str = concat!(
    "INSERT INTO users (id, username, email, password_hash, is_active, is_admin, is_verified, \
     created_at, updated_at, last_login_at) \
     VALUES ($1, $2, $3, $4, true, $5, false, $6, $6, NULL) RETURNING ",
    user_columns!()
);

/// $1 login, $2 login lower-cased in Rust (emails are stored that way; SQLite's `lower` only
/// folds ASCII). A username match wins over an email match (the original's order).
pub(super) const FIND_USER_BY_LOGIN: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE lower(username) = lower($1) OR lower(email) = $2 \
     ORDER BY CASE WHEN lower(username) = lower($1) THEN 0 ELSE 1 END LIMIT 1"
);

pub(super) const GET_USER: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");

pub(super) const LIST_USERS: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users ORDER BY lower(username)"
);

/// $1 active, $2 now, $3 username.
pub(super) const SET_USER_ACTIVE: &str = concat!(
    "UPDATE users SET is_active = $1, updated_at = $2 WHERE lower(username) = lower($3) RETURNING ",
    user_columns!()
);

/// $1 admin, $2 now, $3 username.
pub(super) const SET_USER_ADMIN: &str = concat!(
    "UPDATE users SET is_admin = $1, updated_at = $2 WHERE lower(username) = lower($3) RETURNING ",
    user_columns!()
);

/// $1 hash, $2 now, $3 user id.
pub(super) const SET_PASSWORD_HASH: &str =
    "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3";

/// $1 at, $2 user id.
pub(super) const RECORD_LOGIN: &str = "UPDATE users SET last_login_at = $1 WHERE id = $2";

// ---- clients ----

/// $1 row id, $2 client_id, $3 secret hash, $4 name, $5 description, $6 confidential,
/// $7 scopes (space-separated), $8 grant types (JSON), $9 redirect URIs (JSON),
/// $10 access lifetime, $11 refresh lifetime, $12 now.
pub(super) const INSERT_CLIENT: &str = concat!(
    "INSERT INTO oauth_clients (id, client_id, client_secret_hash, name, description, \
     is_confidential, allowed_scopes, allowed_grant_types, redirect_uris, access_token_lifetime, \
     refresh_token_lifetime, is_active, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, true, $12, $12) RETURNING ",
    client_columns!()
);

pub(super) const GET_CLIENT: &str = concat!(
    "SELECT ",
    client_columns!(),
    " FROM oauth_clients WHERE client_id = $1"
);

pub(super) const LIST_CLIENTS: &str = concat!(
    "SELECT ",
    client_columns!(),
    " FROM oauth_clients ORDER BY client_id"
);

/// $1 active, $2 now, $3 client_id.
pub(super) const SET_CLIENT_ACTIVE: &str = concat!(
    "UPDATE oauth_clients SET is_active = $1, updated_at = $2 WHERE client_id = $3 RETURNING ",
    client_columns!()
);

/// $1 redirect URIs (JSON), $2 now, $3 client_id.
pub(super) const SET_CLIENT_REDIRECT_URIS: &str =
    "UPDATE oauth_clients SET redirect_uris = $1, updated_at = $2 WHERE client_id = $3";

pub(super) const SET_CLIENT_SECRET_HASH: &str =
    "UPDATE oauth_clients SET client_secret_hash = $1, updated_at = $2 WHERE client_id = $3";

// ---- refresh tokens ----

/// $1 row id, $2 jti_hash, $3 family_id, $4 user_id, $5 client_id, $6 scope, $7 expires_at,
/// $8 revoked, $9 revoked_at, $10 parent_jti_hash, $11 created_at.
pub(super) const INSERT_REFRESH: &str = "INSERT INTO refresh_tokens (id, jti_hash, family_id, \
     user_id, client_id, scope, expires_at, revoked, revoked_at, parent_jti_hash, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

pub(super) const FIND_REFRESH: &str = concat!(
    "SELECT ",
    refresh_columns!(),
    " FROM refresh_tokens WHERE jti_hash = $1"
);

/// $1 jti_hash: the token and whether its user exists and is active (`owner_active`).
pub(super) const FIND_REFRESH_WITH_OWNER: &str = concat!(
    "SELECT ",
    refresh_columns!(),
    ", EXISTS (SELECT 1 FROM users WHERE users.id = refresh_tokens.user_id \
     AND users.is_active = true) AS owner_active FROM refresh_tokens WHERE jti_hash = $1"
);

/// The guarded revocation of a rotation: $1 old jti_hash, $2 now, $3 user_id, $4 client_id,
/// $5 scope. The check and the revocation are one statement, so of two concurrent rotations
/// only one can see `revoked = false`.
macro_rules! revoke_for_rotation {
    () => {
        concat!(
            "UPDATE refresh_tokens SET revoked = true, revoked_at = $2 \
             WHERE jti_hash = $1 AND revoked = false AND expires_at > $2 \
             AND user_id = $3 AND client_id = $4 AND scope = $5 \
             AND EXISTS (SELECT 1 FROM users WHERE users.id = refresh_tokens.user_id \
             AND users.is_active = true) RETURNING ",
            refresh_columns!()
        )
    };
}

/// The child of a rotation, its family, user, client and scope copied from the parent:
/// $6 row id, $7 jti_hash, $8 expires_at (and $2 now as `created_at`).
macro_rules! insert_child_columns {
    () => {
        "INSERT INTO refresh_tokens (id, jti_hash, family_id, user_id, client_id, scope, \
         expires_at, revoked, revoked_at, parent_jti_hash, created_at) \
         SELECT $6, $7, family_id, user_id, client_id, scope, $8, false, NULL, jti_hash, $2"
    };
}

/// The rotation's audit row: $9 id, $10 user_id, $11 client_id, $12 event_type, $13 event_data,
/// $14 ip, $15 user agent, $16 success, $17 error, $18 now.
macro_rules! insert_rotation_audit_columns {
    () => {
        "INSERT INTO audit_logs (id, user_id, client_id, event_type, event_data, ip_address, \
         user_agent, success, error_message, created_at) \
         SELECT $9, $10, $11, $12, $13, $14, $15, $16, $17, $18"
    };
}

/// A whole rotation in one PostgreSQL statement (one round trip, atomic without `BEGIN`):
/// the guarded revocation, then, only for the row it returned, the child and the audit row.
/// Data-modifying `WITH` parts run to completion whether or not the final `SELECT` reads them
/// (PostgreSQL manual, "WITH Queries", "Data-Modifying Statements in WITH").
pub(super) const ROTATE_POSTGRES: &str = concat!(
    "WITH old AS (",
    revoke_for_rotation!(),
    "), child AS (",
    insert_child_columns!(),
    " FROM old), audit AS (",
    insert_rotation_audit_columns!(),
    " FROM old) SELECT ",
    refresh_columns!(),
    " FROM old"
);

/// SQLite has no data-modifying `WITH`: the same three steps as one script, run inside a
/// `BEGIN IMMEDIATE` transaction in one call to the driver's worker thread (sqlx binds `$n` by
/// number in every statement of a script). `changes()` is the row count of the previous
/// statement (SQLite manual, "Built-In Scalar SQL Functions"), so the child is inserted only
/// when the revocation matched and the audit row only when the child was inserted.
pub(super) const ROTATE_SQLITE: &str = concat!(
    revoke_for_rotation!(),
    "; ",
    insert_child_columns!(),
    " FROM refresh_tokens WHERE jti_hash = $1 AND changes() = 1; ",
    insert_rotation_audit_columns!(),
    " WHERE changes() = 1"
);

/// $1 family_id, $2 now.
pub(super) const REVOKE_FAMILY: &str = "UPDATE refresh_tokens SET revoked = true, revoked_at = $2 \
     WHERE family_id = $1 AND revoked = false";

/// $1 user_id, $2 now.
pub(super) const REVOKE_USER: &str = "UPDATE refresh_tokens SET revoked = true, revoked_at = $2 \
     WHERE user_id = $1 AND revoked = false";

/// $1 before.
pub(super) const DELETE_EXPIRED_REFRESH: &str = "DELETE FROM refresh_tokens WHERE expires_at < $1";

// ---- authorization codes ----

/// $1 code_hash, $2 client_id, $3 user_id, $4 redirect_uri, $5 scope, $6 code_challenge,
/// $7 expires_at, $8 created_at.
pub(super) const INSERT_CODE: &str = "INSERT INTO authorization_codes (code_hash, client_id, \
     user_id, redirect_uri, scope, code_challenge, expires_at, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// $1 code_hash, $2 now. One statement: of concurrent redeemers only one gets the row.
pub(super) const CONSUME_CODE: &str = concat!(
    "DELETE FROM authorization_codes WHERE code_hash = $1 AND expires_at > $2 RETURNING ",
    code_columns!()
);

/// $1 before.
pub(super) const DELETE_EXPIRED_CODES: &str =
    "DELETE FROM authorization_codes WHERE expires_at < $1";

// ---- audit ----

/// $1 id, $2 user_id, $3 client_id, $4 event_type, $5 event_data (`JsonText`: the original's
/// `JSON` column on PostgreSQL), $6 ip, $7 user agent, $8 success, $9 error, $10 now.
pub(super) const INSERT_AUDIT: &str = "INSERT INTO audit_logs (id, user_id, client_id, \
     event_type, event_data, ip_address, user_agent, success, error_message, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// $1 limit. Ties on the timestamp fall back to the id (UUID v7, time-ordered).
pub(super) const LIST_AUDIT: &str = "SELECT id, created_at, user_id, client_id, event_type, \
     CAST(event_data AS TEXT) AS event_data, ip_address, user_agent, success, error_message \
     FROM audit_logs ORDER BY created_at DESC, id DESC LIMIT $1";

// ---- signing keys ----

/// $1 kid, $2 private PEM, $3 public PEM, $4 created_at, $5 retired_at, $6 publish_until.
pub(super) const INSERT_KEY: &str = "INSERT INTO signing_keys (kid, private_key_pem, \
     public_key_pem, created_at, retired_at, publish_until) VALUES ($1, $2, $3, $4, $5, $6)";

pub(super) const LIST_KEYS: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM signing_keys ORDER BY created_at, kid"
);

/// $1 active kid, $2 now, $3 publish_until.
pub(super) const RETIRE_KEYS_EXCEPT: &str = "UPDATE signing_keys \
     SET retired_at = $2, publish_until = $3 WHERE kid <> $1 AND retired_at IS NULL";

/// $1 kid, $2 the value expected now, $3 the new value.
pub(super) const REPLACE_KEY_PRIVATE: &str = "UPDATE signing_keys \
     SET private_key_pem = $3 WHERE kid = $1 AND private_key_pem = $2";

/// $1 seconds, $2 updated_at, $3 client id.
pub(super) const SET_CLIENT_ACCESS_LIFETIME: &str = "UPDATE oauth_clients \
     SET access_token_lifetime = $1, updated_at = $2 WHERE client_id = $3";
