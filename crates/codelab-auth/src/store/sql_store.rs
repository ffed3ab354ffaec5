//! [`AuthStore`] written once for PostgreSQL and SQLite ([`Backend`]): the SQL is in `sql.rs`,
//! row mapping in `rows.rs`, and the engine files keep only their migrations.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use codelab_core::clock::SharedClock;
use codelab_core::db::{Backend, DbKind, DbTime, JsonText, On, Query, map_rows, query};
use sqlx::Pool;
use sqlx::migrate::Migrator;

use super::{AuthStore, StoreError, not_rotated, rows, sql};
use crate::model::{
    AuditEvent, AuditRecord, AuthorizationCode, Client, NewClient, NewUser, RefreshTokenRecord,
    RotateOutcome, Rotation, SigningKeyRecord, User,
};

/// The auth store on a pool of either engine; `updated_at`, `created_at` of new rows and the
/// like come from `clock`.
pub struct SqlStore<B: Backend> {
    pool: Pool<B>,
    clock: SharedClock,
}

impl<B: Backend> SqlStore<B> {
    /// Runs `migrator` (the engine's, adopting an original database as it is) and wraps the
    /// pool.
    pub async fn open(
        pool: Pool<B>,
        migrator: &Migrator,
        clock: SharedClock,
    ) -> Result<Self, StoreError> {
        B::run_migrations(migrator, &pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(Self { pool, clock })
    }

    fn now(&self) -> DbTime {
        DbTime::now(&*self.clock)
    }

    /// Runs a statement that must change a row; `NotFound(what)` when it changed none.
    async fn change_one(&self, change: Query<'_, B>, what: String) -> Result<(), StoreError> {
        if change.execute(&self.pool).await? == 0 {
            return Err(StoreError::NotFound(what));
        }
        Ok(())
    }

    /// `change` with its last two parameters bound: now (`updated_at`) and the row's key.
    fn stamped<'q>(&self, change: Query<'q, B>, key: &'q str) -> Query<'q, B> {
        change.bind(self.now()).bind(key)
    }

    /// Sets a user's flag (`sql`: $1 flag, $2 now, $3 username) and returns the user.
    async fn set_user_flag(
        &self,
        sql: &str,
        flag: bool,
        username: &str,
    ) -> Result<User, StoreError> {
        let change = self.stamped(query(sql).bind(flag), username);
        self.change_returning(change, rows::user, format!("user {username:?}"))
            .await
    }

    /// Runs a statement and counts the rows it changed.
    async fn count(&self, change: Query<'_, B>) -> Result<u64, StoreError> {
        Ok(change.execute(&self.pool).await?)
    }

    /// The row `select` finds, if any, mapped by `map`.
    async fn fetch_maybe<T>(
        &self,
        select: Query<'_, B>,
        map: fn(&B::Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        select
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(map)
            .transpose()
    }

    /// Every row `select` finds, mapped by `map`.
    async fn fetch_list<T>(
        &self,
        select: Query<'_, B>,
        map: fn(&B::Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let found = select.fetch_all(&self.pool).await?;
        map_rows(&found, map)
    }

    /// Runs an `UPDATE .. RETURNING` that must match a row; `NotFound(what)` when none.
    async fn change_returning<T>(
        &self,
        change: Query<'_, B>,
        map: fn(&B::Row) -> Result<T, StoreError>,
        what: String,
    ) -> Result<T, StoreError> {
        self.fetch_maybe(change, map)
            .await?
            .ok_or(StoreError::NotFound(what))
    }
}

#[async_trait]
impl<B: Backend> AuthStore for SqlStore<B> {
    async fn ping(&self) -> Result<(), StoreError> {
        query(sql::PING).execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let email = user.email.as_deref().map(str::to_lowercase);
        let row = query(sql::INSERT_USER)
            .bind(codelab_core::new_id().to_string())
            .bind(&user.username)
            .bind(&email)
            .bind(&user.password_hash)
            .bind(user.is_admin)
            .bind(self.now())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| {
                StoreError::of_write(
                    e,
                    |hint| rows::user_conflict(hint, &user.username, email.as_deref()),
                    "user",
                )
            })?;
        rows::user(&row)
    }

    async fn find_user_by_login(&self, login: &str) -> Result<Option<User>, StoreError> {
        let select = query(sql::FIND_USER_BY_LOGIN)
            .bind(login)
            .bind(login.to_lowercase());
        self.fetch_maybe(select, rows::user).await
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        self.fetch_maybe(query(sql::GET_USER).bind(user_id), rows::user)
            .await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.fetch_list(query(sql::LIST_USERS), rows::user).await
    }

    async fn set_user_active(&self, username: &str, active: bool) -> Result<User, StoreError> {
        self.set_user_flag(sql::SET_USER_ACTIVE, active, username)
            .await
    }

    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), StoreError> {
        let change = self.stamped(query(sql::SET_PASSWORD_HASH).bind(hash), user_id);
        self.change_one(change, format!("user id {user_id:?}"))
            .await
    }

    async fn set_user_admin(&self, username: &str, admin: bool) -> Result<User, StoreError> {
        self.set_user_flag(sql::SET_USER_ADMIN, admin, username)
            .await
    }

    async fn record_login(&self, user_id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let change = query(sql::RECORD_LOGIN).bind(DbTime(at)).bind(user_id);
        self.change_one(change, format!("user id {user_id:?}"))
            .await
    }

    async fn create_client(&self, client: NewClient) -> Result<Client, StoreError> {
        let row = query(sql::INSERT_CLIENT)
            .bind(codelab_core::new_id().to_string())
            .bind(&client.client_id)
            .bind(&client.secret_hash)
            .bind(&client.name)
            .bind(&client.description)
            .bind(client.is_confidential)
            .bind(rows::scopes_text(&client.allowed_scopes))
            .bind(rows::json_list(&client.allowed_grant_types))
            .bind(rows::json_list(&client.redirect_uris))
            .bind(rows::lifetime_i32(client.access_token_lifetime))
            .bind(rows::lifetime_i32(client.refresh_token_lifetime))
            .bind(self.now())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| {
                StoreError::of_write(e, |_| format!("client id {:?}", client.client_id), "client")
            })?;
        rows::client(&row)
    }

    async fn get_client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        self.fetch_maybe(query(sql::GET_CLIENT).bind(client_id), rows::client)
            .await
    }

    async fn list_clients(&self) -> Result<Vec<Client>, StoreError> {
        self.fetch_list(query(sql::LIST_CLIENTS), rows::client)
            .await
    }

    async fn set_client_active(&self, client_id: &str, active: bool) -> Result<Client, StoreError> {
        let change = self.stamped(query(sql::SET_CLIENT_ACTIVE).bind(active), client_id);
        self.change_returning(change, rows::client, format!("client {client_id:?}"))
            .await
    }

    async fn set_client_redirect_uris(
        &self,
        client_id: &str,
        uris: &[String],
    ) -> Result<(), StoreError> {
        let change = self.stamped(
            query(sql::SET_CLIENT_REDIRECT_URIS).bind(rows::json_list(uris)),
            client_id,
        );
        self.change_one(change, format!("client {client_id:?}"))
            .await
    }

    async fn set_client_secret_hash(&self, client_id: &str, hash: &str) -> Result<(), StoreError> {
        let change = self.stamped(query(sql::SET_CLIENT_SECRET_HASH).bind(hash), client_id);
        self.change_one(change, format!("client {client_id:?}"))
            .await
    }

    async fn insert_refresh_token(&self, token: RefreshTokenRecord) -> Result<(), StoreError> {
        insert_refresh((&self.pool).into(), &token).await
    }

    async fn find_refresh_token(
        &self,
        jti_hash: &str,
    ) -> Result<Option<RefreshTokenRecord>, StoreError> {
        self.fetch_maybe(query(sql::FIND_REFRESH).bind(jti_hash), rows::refresh_token)
            .await
    }

    async fn find_refresh_token_with_owner(
        &self,
        jti_hash: &str,
    ) -> Result<Option<(RefreshTokenRecord, bool)>, StoreError> {
        let select = query(sql::FIND_REFRESH_WITH_OWNER).bind(jti_hash);
        self.fetch_maybe(select, rows::refresh_token_with_owner)
            .await
    }

    async fn rotate_refresh_token(
        &self,
        rotation: &Rotation,
        audit: &AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<RotateOutcome, StoreError> {
        // The whole rotation is one call to the database: one statement on PostgreSQL, one
        // script inside a write transaction on SQLite (see `sql::ROTATE_*`). Only a refusal
        // reads the row again, to say why.
        let rotate = |sql| {
            query(sql)
                .bind(&rotation.old_jti_hash)
                .bind(DbTime(now))
                .bind(&rotation.user_id)
                .bind(&rotation.client_id)
                .bind(&rotation.scope)
                .bind(codelab_core::new_id().to_string())
                .bind(&rotation.new_jti_hash)
                .bind(DbTime(rotation.new_expires_at))
                .bind(codelab_core::new_id().to_string())
                .bind(&audit.user_id)
                .bind(&audit.client_id)
                .bind(&audit.event_type)
                .bind(audit.event_data.as_ref().map(JsonText::of))
                .bind(&audit.ip_address)
                .bind(&audit.user_agent)
                .bind(audit.success)
                .bind(&audit.error_message)
                .bind(self.now())
        };
        let write_error =
            |e| StoreError::of_write(e, |_| "refresh token".to_owned(), "user or client");
        let revoked = match B::KIND {
            DbKind::Postgres => rotate(sql::ROTATE_POSTGRES)
                .fetch_optional(&self.pool)
                .await
                .map_err(write_error)?,
            DbKind::Sqlite => {
                let mut tx = B::begin_write(&self.pool).await?;
                let mut rows = rotate(sql::ROTATE_SQLITE)
                    .fetch_all(&mut tx)
                    .await
                    .map_err(write_error)?;
                let revoked = rows.pop();
                if revoked.is_some() {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
                revoked
            }
        };
        match revoked {
            Some(row) => Ok(RotateOutcome::Rotated {
                old: rows::refresh_token(&row)?,
            }),
            None => {
                let current = self.find_refresh_token(&rotation.old_jti_hash).await?;
                Ok(not_rotated(current, now))
            }
        }
    }

    async fn revoke_family(&self, family_id: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.count(query(sql::REVOKE_FAMILY).bind(family_id).bind(DbTime(now)))
            .await
    }

    async fn revoke_user_tokens(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.count(query(sql::REVOKE_USER).bind(user_id).bind(DbTime(now)))
            .await
    }

    async fn delete_expired_refresh_tokens(
        &self,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.count(query(sql::DELETE_EXPIRED_REFRESH).bind(DbTime(before)))
            .await
    }

    async fn insert_authorization_code(&self, code: AuthorizationCode) -> Result<(), StoreError> {
        query(sql::INSERT_CODE)
            .bind(&code.code_hash)
            .bind(&code.client_id)
            .bind(&code.user_id)
            .bind(&code.redirect_uri)
            .bind(&code.scope)
            .bind(&code.code_challenge)
            .bind(DbTime(code.expires_at))
            .bind(DbTime(code.created_at))
            .execute(&self.pool)
            .await
            .map_err(|e| {
                StoreError::of_write(e, |_| "authorization code".to_owned(), "user or client")
            })?;
        Ok(())
    }

    async fn consume_authorization_code(
        &self,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AuthorizationCode>, StoreError> {
        let consume = query(sql::CONSUME_CODE).bind(code_hash).bind(DbTime(now));
        self.fetch_maybe(consume, rows::authorization_code).await
    }

    async fn delete_expired_authorization_codes(
        &self,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.count(query(sql::DELETE_EXPIRED_CODES).bind(DbTime(before)))
            .await
    }

    async fn insert_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        insert_audit((&self.pool).into(), &event, self.now()).await
    }

    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let select = query(sql::LIST_AUDIT).bind(i64::from(limit));
        self.fetch_list(select, rows::audit_record).await
    }

    async fn insert_signing_key(&self, key: SigningKeyRecord) -> Result<(), StoreError> {
        query(sql::INSERT_KEY)
            .bind(&key.kid)
            .bind(&key.private_key_pem)
            .bind(&key.public_key_pem)
            .bind(DbTime(key.created_at))
            .bind(key.retired_at.map(DbTime))
            .bind(key.publish_until.map(DbTime))
            .execute(&self.pool)
            .await
            .map_err(|e| {
                StoreError::of_write(e, |_| format!("signing key {:?}", key.kid), "key")
            })?;
        Ok(())
    }

    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.fetch_list(query(sql::LIST_KEYS), rows::signing_key)
            .await
    }

    async fn retire_signing_keys_except(
        &self,
        active_kid: &str,
        now: DateTime<Utc>,
        publish_until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        query(sql::RETIRE_KEYS_EXCEPT)
            .bind(active_kid)
            .bind(DbTime(now))
            .bind(DbTime(publish_until))
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
        let changed = query(sql::REPLACE_KEY_PRIVATE)
            .bind(kid)
            .bind(expected)
            .bind(private_key)
            .execute(&self.pool)
            .await?;
        Ok(changed == 1)
    }

    async fn set_client_access_token_lifetime(
        &self,
        client_id: &str,
        seconds: i64,
    ) -> Result<(), StoreError> {
        let change = self.stamped(
            query(sql::SET_CLIENT_ACCESS_LIFETIME).bind(rows::lifetime_i32(seconds)),
            client_id,
        );
        self.change_one(change, format!("client {client_id:?}"))
            .await
    }
}

async fn insert_refresh<'e, B: Backend>(
    on: On<'e, B>,
    token: &'e RefreshTokenRecord,
) -> Result<(), StoreError> {
    query(sql::INSERT_REFRESH)
        .bind(codelab_core::new_id().to_string())
        .bind(&token.jti_hash)
        .bind(&token.family_id)
        .bind(&token.user_id)
        .bind(&token.client_id)
        .bind(&token.scope)
        .bind(DbTime(token.expires_at))
        .bind(token.revoked)
        .bind(token.revoked_at.map(DbTime))
        .bind(&token.parent_jti_hash)
        .bind(DbTime(token.created_at))
        .execute(on)
        .await
        .map_err(|e| StoreError::of_write(e, |_| "refresh token".to_owned(), "user or client"))?;
    Ok(())
}

async fn insert_audit<'e, B: Backend>(
    on: On<'e, B>,
    event: &'e AuditEvent,
    now: DbTime,
) -> Result<(), StoreError> {
    query(sql::INSERT_AUDIT)
        .bind(codelab_core::new_id().to_string())
        .bind(&event.user_id)
        .bind(&event.client_id)
        .bind(&event.event_type)
        .bind(event.event_data.as_ref().map(JsonText::of))
        .bind(&event.ip_address)
        .bind(&event.user_agent)
        .bind(event.success)
        .bind(&event.error_message)
        .bind(now)
        .execute(on)
        .await
        .map_err(|e| StoreError::of_write(e, |_| "audit row".to_owned(), "user"))?;
    Ok(())
}
