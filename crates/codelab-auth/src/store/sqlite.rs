//! [`AuthStore`] on SQLite. Timestamps are bound as fixed-width RFC 3339 UTC text
//! ([`rows::sqlite_time`]) so SQL comparisons on them compare instants.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::SqlitePool;
use sqlx::migrate::Migrator;

use super::{AuthStore, StoreError, rows, sql};
use crate::model::{
    AuditEvent, AuditRecord, AuthorizationCode, Client, NewClient, NewUser, RefreshTokenRecord,
    RotateOutcome, SigningKeyRecord, User,
};

/// The SQLite migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// `event_data` is stored as JSON text (SQLite has no JSON type to cast to).
const INSERT_AUDIT: &str = "INSERT INTO audit_logs (id, user_id, client_id, event_type, \
     event_data, ip_address, user_agent, success, error_message, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// The auth store on a SQLite pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Runs the migrations (adopting an original `auth.db` as it is) and wraps the pool.
    pub async fn open(pool: SqlitePool) -> Result<Self, StoreError> {
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl AuthStore for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query(sql::PING).execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let email = user.email.as_deref().map(str::to_lowercase);
        let row = sqlx::query(sql::INSERT_USER)
            .bind(codelab_core::new_id().to_string())
            .bind(&user.username)
            .bind(&email)
            .bind(&user.password_hash)
            .bind(user.is_admin)
            .bind(rows::sqlite_time(rows::now()))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| {
                rows::classify(
                    e,
                    |hint| rows::user_conflict(hint, &user.username, email.as_deref()),
                    "user",
                )
            })?;
        rows::user(&row)
    }

    async fn find_user_by_login(&self, login: &str) -> Result<Option<User>, StoreError> {
        sqlx::query(sql::FIND_USER_BY_LOGIN)
            .bind(login)
            .bind(login.to_lowercase())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::user)
            .transpose()
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        sqlx::query(sql::GET_USER)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::user)
            .transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let found = sqlx::query(sql::LIST_USERS).fetch_all(&self.pool).await?;
        rows::all(&found, rows::user)
    }

    async fn set_user_active(&self, username: &str, active: bool) -> Result<User, StoreError> {
        sqlx::query(sql::SET_USER_ACTIVE)
            .bind(active)
            .bind(rows::sqlite_time(rows::now()))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::user)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("user {username:?}")))
    }

    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), StoreError> {
        let done = sqlx::query(sql::SET_PASSWORD_HASH)
            .bind(hash)
            .bind(rows::sqlite_time(rows::now()))
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user id {user_id:?}")));
        }
        Ok(())
    }

    async fn set_user_admin(&self, username: &str, admin: bool) -> Result<User, StoreError> {
        sqlx::query(sql::SET_USER_ADMIN)
            .bind(admin)
            .bind(rows::sqlite_time(rows::now()))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::user)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("user {username:?}")))
    }

    async fn record_login(&self, user_id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let done = sqlx::query(sql::RECORD_LOGIN)
            .bind(rows::sqlite_time(at))
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user id {user_id:?}")));
        }
        Ok(())
    }

    async fn create_client(&self, client: NewClient) -> Result<Client, StoreError> {
        let row = sqlx::query(sql::INSERT_CLIENT)
            .bind(codelab_core::new_id().to_string())
            .bind(&client.client_id)
            .bind(&client.secret_hash)
            .bind(&client.name)
            .bind(&client.description)
            .bind(client.is_confidential)
            .bind(rows::scopes_text(&client.allowed_scopes))
            .bind(rows::json_list(&client.allowed_grant_types))
            .bind(rows::json_list(&client.redirect_uris))
            .bind(client.access_token_lifetime)
            .bind(client.refresh_token_lifetime)
            .bind(rows::sqlite_time(rows::now()))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| {
                rows::classify(e, |_| format!("client id {:?}", client.client_id), "client")
            })?;
        rows::client(&row)
    }

    async fn get_client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        sqlx::query(sql::GET_CLIENT)
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::client)
            .transpose()
    }

    async fn list_clients(&self) -> Result<Vec<Client>, StoreError> {
        let found = sqlx::query(sql::LIST_CLIENTS).fetch_all(&self.pool).await?;
        rows::all(&found, rows::client)
    }

    async fn set_client_active(&self, client_id: &str, active: bool) -> Result<Client, StoreError> {
        sqlx::query(sql::SET_CLIENT_ACTIVE)
            .bind(active)
            .bind(rows::sqlite_time(rows::now()))
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::client)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("client {client_id:?}")))
    }

    async fn set_client_redirect_uris(
        &self,
        client_id: &str,
        uris: &[String],
    ) -> Result<(), StoreError> {
        let done = sqlx::query(sql::SET_CLIENT_REDIRECT_URIS)
            .bind(rows::json_list(uris))
            .bind(rows::sqlite_time(rows::now()))
            .bind(client_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("client {client_id:?}")));
        }
        Ok(())
    }

    async fn set_client_secret_hash(&self, client_id: &str, hash: &str) -> Result<(), StoreError> {
        let done = sqlx::query(sql::SET_CLIENT_SECRET_HASH)
            .bind(hash)
            .bind(rows::sqlite_time(rows::now()))
            .bind(client_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("client {client_id:?}")));
        }
        Ok(())
    }

    async fn insert_refresh_token(&self, token: RefreshTokenRecord) -> Result<(), StoreError> {
        insert_refresh(&self.pool, &token).await
    }

    async fn find_refresh_token(
        &self,
        jti_hash: &str,
    ) -> Result<Option<RefreshTokenRecord>, StoreError> {
        sqlx::query(sql::FIND_REFRESH)
            .bind(jti_hash)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::refresh_token)
            .transpose()
    }

    async fn rotate_refresh_token(
        &self,
        old_jti_hash: &str,
        new_token: RefreshTokenRecord,
        now: DateTime<Utc>,
    ) -> Result<RotateOutcome, StoreError> {
        // IMMEDIATE takes the write lock up front, so a concurrent rotation waits (busy
        // timeout) instead of failing to upgrade a read lock; the UPDATE is atomic anyway.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let revoked = sqlx::query(sql::REVOKE_IF_ACTIVE)
            .bind(old_jti_hash)
            .bind(rows::sqlite_time(now))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(revoked) = revoked else {
            let current = sqlx::query(sql::FIND_REFRESH)
                .bind(old_jti_hash)
                .fetch_optional(&mut *tx)
                .await?
                .as_ref()
                .map(rows::refresh_token)
                .transpose()?;
            tx.rollback().await?;
            return Ok(super::not_rotated(current));
        };
        let old = rows::refresh_token(&revoked)?;
        insert_refresh(&mut *tx, &new_token).await?;
        tx.commit().await?;
        Ok(RotateOutcome::Rotated { old })
    }

    async fn revoke_family(&self, family_id: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query(sql::REVOKE_FAMILY)
            .bind(family_id)
            .bind(rows::sqlite_time(now))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn revoke_user_tokens(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(sql::REVOKE_USER)
            .bind(user_id)
            .bind(rows::sqlite_time(now))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn delete_expired_refresh_tokens(
        &self,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(sql::DELETE_EXPIRED_REFRESH)
            .bind(rows::sqlite_time(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn insert_authorization_code(&self, code: AuthorizationCode) -> Result<(), StoreError> {
        sqlx::query(sql::INSERT_CODE)
            .bind(&code.code_hash)
            .bind(&code.client_id)
            .bind(&code.user_id)
            .bind(&code.redirect_uri)
            .bind(&code.scope)
            .bind(&code.code_challenge)
            .bind(rows::sqlite_time(code.expires_at))
            .bind(rows::sqlite_time(code.created_at))
            .execute(&self.pool)
            .await
            .map_err(|e| {
                rows::classify(e, |_| "authorization code".to_owned(), "user or client")
            })?;
        Ok(())
    }

    async fn consume_authorization_code(
        &self,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AuthorizationCode>, StoreError> {
        sqlx::query(sql::CONSUME_CODE)
            .bind(code_hash)
            .bind(rows::sqlite_time(now))
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::authorization_code)
            .transpose()
    }

    async fn delete_expired_authorization_codes(
        &self,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(sql::DELETE_EXPIRED_CODES)
            .bind(rows::sqlite_time(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn insert_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        sqlx::query(INSERT_AUDIT)
            .bind(codelab_core::new_id().to_string())
            .bind(&event.user_id)
            .bind(&event.client_id)
            .bind(&event.event_type)
            .bind(rows::json_text(event.event_data.as_ref()))
            .bind(&event.ip_address)
            .bind(&event.user_agent)
            .bind(event.success)
            .bind(&event.error_message)
            .bind(rows::sqlite_time(rows::now()))
            .execute(&self.pool)
            .await
            .map_err(|e| rows::classify(e, |_| "audit row".to_owned(), "user"))?;
        Ok(())
    }

    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let found = sqlx::query(sql::LIST_AUDIT)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows::all(&found, rows::audit_record)
    }

    async fn insert_signing_key(&self, key: SigningKeyRecord) -> Result<(), StoreError> {
        sqlx::query(sql::INSERT_KEY)
            .bind(&key.kid)
            .bind(&key.private_key_pem)
            .bind(&key.public_key_pem)
            .bind(rows::sqlite_time(key.created_at))
            .bind(rows::sqlite_opt_time(key.retired_at))
            .bind(rows::sqlite_opt_time(key.publish_until))
            .execute(&self.pool)
            .await
            .map_err(|e| rows::classify(e, |_| format!("signing key {:?}", key.kid), "key"))?;
        Ok(())
    }

    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let found = sqlx::query(sql::LIST_KEYS).fetch_all(&self.pool).await?;
        rows::all(&found, rows::signing_key)
    }

    async fn retire_signing_keys_except(
        &self,
        active_kid: &str,
        now: DateTime<Utc>,
        publish_until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(sql::RETIRE_KEYS_EXCEPT)
            .bind(active_kid)
            .bind(rows::sqlite_time(now))
            .bind(rows::sqlite_time(publish_until))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
    async fn replace_signing_key_private(
        &self,
        kid: &str,
        expected: &str,
        private_key: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::REPLACE_KEY_PRIVATE)
            .bind(kid)
            .bind(expected)
            .bind(private_key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_client_access_token_lifetime(
        &self,
        client_id: &str,
        seconds: i64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(sql::SET_CLIENT_ACCESS_LIFETIME)
            .bind(seconds)
            .bind(rows::sqlite_time(rows::now()))
            .bind(client_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("client {client_id:?}")));
        }
        Ok(())
    }
}

async fn insert_refresh<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
    token: &RefreshTokenRecord,
) -> Result<(), StoreError> {
    sqlx::query(sql::INSERT_REFRESH)
        .bind(codelab_core::new_id().to_string())
        .bind(&token.jti_hash)
        .bind(&token.family_id)
        .bind(&token.user_id)
        .bind(&token.client_id)
        .bind(&token.scope)
        .bind(rows::sqlite_time(token.expires_at))
        .bind(token.revoked)
        .bind(rows::sqlite_opt_time(token.revoked_at))
        .bind(&token.parent_jti_hash)
        .bind(rows::sqlite_time(token.created_at))
        .execute(executor)
        .await
        .map_err(|e| rows::classify(e, |_| "refresh token".to_owned(), "user or client"))?;
    Ok(())
}
