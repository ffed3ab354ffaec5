//! Storage of the auth service: one trait, implemented once for PostgreSQL and SQLite
//! ([`SqlStore`], generic over `codelab_core::db::Backend`), each engine with its own
//! migrations, and one conformance suite run against both (`tests/auth/store_conformance.rs`).
//!
//! Handlers never branch on the database type; everything that must be atomic (refresh-token
//! rotation, code redemption) is one call here.

pub mod postgres;
mod rows;
mod sql;
mod sql_store;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use codelab_core::clock::SharedClock;
use codelab_core::db::DbPool;

pub use codelab_core::db::StoreError;
pub use sql_store::SqlStore;

use crate::model::{
    AuditEvent, AuditRecord, AuthorizationCode, Client, NewClient, NewUser, RefreshTokenRecord,
    RotateOutcome, Rotation, SigningKeyRecord, User,
};

/// Everything the auth service stores.
#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    /// Checks the database answers (for `/ready`).
    async fn ping(&self) -> Result<(), StoreError>;

    // ---- users ----
    /// Creates a user; `Conflict` when the username or email is taken (case-insensitively).
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError>;
    /// Finds an account by username (case-insensitive) or, failing that, by email
    /// (case-insensitive).
    async fn find_user_by_login(&self, login: &str) -> Result<Option<User>, StoreError>;
    async fn get_user(&self, user_id: &str) -> Result<Option<User>, StoreError>;
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Enables or disables a user by username; `NotFound` when there is none.
    async fn set_user_active(&self, username: &str, active: bool) -> Result<User, StoreError>;
    /// Replaces a user's password hash (password change, or rehash to argon2id on login).
    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), StoreError>;
    /// Sets or clears the admin flag by username.
    async fn set_user_admin(&self, username: &str, admin: bool) -> Result<User, StoreError>;
    async fn record_login(&self, user_id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;

    // ---- clients ----
    /// Creates a client; `Conflict` when the client id exists.
    async fn create_client(&self, client: NewClient) -> Result<Client, StoreError>;
    async fn get_client(&self, client_id: &str) -> Result<Option<Client>, StoreError>;
    async fn list_clients(&self) -> Result<Vec<Client>, StoreError>;
    async fn set_client_active(&self, client_id: &str, active: bool) -> Result<Client, StoreError>;
    /// Replaces a client's redirect URIs (used to keep seeded clients in step with config).
    async fn set_client_redirect_uris(
        &self,
        client_id: &str,
        uris: &[String],
    ) -> Result<(), StoreError>;
    /// Replaces a client's secret hash (a legacy argon2/bcrypt hash rewritten to the fast form
    /// after the secret was verified); `NotFound` when the client does not exist.
    async fn set_client_secret_hash(&self, client_id: &str, hash: &str) -> Result<(), StoreError>;

    // ---- refresh tokens ----
    async fn insert_refresh_token(&self, token: RefreshTokenRecord) -> Result<(), StoreError>;
    async fn find_refresh_token(
        &self,
        jti_hash: &str,
    ) -> Result<Option<RefreshTokenRecord>, StoreError>;
    /// [`Self::find_refresh_token`] and whether the token's user exists and is active, in one
    /// statement (what the refresh grant reads when it cannot rotate at once).
    async fn find_refresh_token_with_owner(
        &self,
        jti_hash: &str,
    ) -> Result<Option<(RefreshTokenRecord, bool)>, StoreError>;
    /// In one atomic step: revoke the token `rotation.old_jti_hash` only if it is active,
    /// unexpired at `now`, held by `rotation.user_id` through `rotation.client_id` with
    /// `rotation.scope`, and its user is active (an atomic check-and-revoke, so two concurrent
    /// rotations cannot both succeed); and if it was, store its child (same family, user,
    /// client and scope, the old token as parent) and the `audit` row. One round trip and one
    /// commit; a refusal reads the row once more to say why.
    async fn rotate_refresh_token(
        &self,
        rotation: &Rotation,
        audit: &AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<RotateOutcome, StoreError>;
    /// Revokes every active token of a rotation family; returns how many were revoked.
    async fn revoke_family(&self, family_id: &str, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Revokes every active token of a user (on disable).
    async fn revoke_user_tokens(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
    /// Deletes tokens that expired before `before`; returns how many.
    async fn delete_expired_refresh_tokens(&self, before: DateTime<Utc>)
    -> Result<u64, StoreError>;

    // ---- authorization codes ----
    async fn insert_authorization_code(&self, code: AuthorizationCode) -> Result<(), StoreError>;
    /// Atomically takes a code: returns it and deletes it if it exists and is unexpired at
    /// `now`; a second call for the same code returns `None`.
    async fn consume_authorization_code(
        &self,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AuthorizationCode>, StoreError>;
    /// Deletes codes that expired before `before` and were never redeemed; returns how many.
    async fn delete_expired_authorization_codes(
        &self,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    // ---- audit ----
    async fn insert_audit(&self, event: AuditEvent) -> Result<(), StoreError>;
    /// The newest `limit` rows, newest first.
    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;

    // ---- signing keys ----
    /// Adds a key; `Conflict` when the kid exists.
    async fn insert_signing_key(&self, key: SigningKeyRecord) -> Result<(), StoreError>;
    /// Every key, oldest first.
    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;
    /// Marks every key except `active_kid` that is not yet retired as retired at `now`, published
    /// until `publish_until`.
    async fn retire_signing_keys_except(
        &self,
        active_kid: &str,
        now: DateTime<Utc>,
        publish_until: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Replaces the stored private key of `kid` only while it still holds `expected` (the key
    /// re-encrypted under another key-encryption key); `false` when another replica changed it
    /// first or the key does not exist.
    async fn replace_signing_key_private(
        &self,
        kid: &str,
        expected: &str,
        private_key: &str,
    ) -> Result<bool, StoreError>;
    /// Sets a client's access-token lifetime in seconds (keeps the seeded website client's
    /// short); `NotFound` when the client does not exist.
    async fn set_client_access_token_lifetime(
        &self,
        client_id: &str,
        seconds: i64,
    ) -> Result<(), StoreError>;
}

/// Opens the store for a connected pool and runs its migrations; the times it stamps on rows
/// (`created_at`, `updated_at`) come from `clock`.
pub async fn open_store(
    pool: DbPool,
    clock: SharedClock,
) -> Result<Arc<dyn AuthStore>, StoreError> {
    Ok(match pool {
        DbPool::Postgres(pool) => Arc::new(SqlStore::open(pool, &postgres::MIGRATOR, clock).await?),
        DbPool::Sqlite(pool) => Arc::new(SqlStore::open(pool, &sqlite::MIGRATOR, clock).await?),
    })
}

/// Why a rotation revoked nothing, from the row as it is now, in the order the refresh grant
/// answers: unknown, revoked, expired, then whatever else the guard checks.
fn not_rotated(current: Option<RefreshTokenRecord>, now: DateTime<Utc>) -> RotateOutcome {
    match current {
        None => RotateOutcome::NotFound,
        Some(old) if old.revoked => RotateOutcome::AlreadyRevoked { old },
        Some(old) if old.expires_at <= now => RotateOutcome::Expired { old },
        // Active and unexpired, so the guard refused its user, client or scope, or its user
        // is disabled.
        Some(old) => RotateOutcome::Mismatch { old },
    }
}
