//! Logging in to the auth service (`POST {server}/oauth/token`, password grant with the public
//! client `codelab-cli`), refreshing, revoking, and the [`TokenManager`] that hands out a valid
//! access token: refreshed shortly before it expires and after the gateway rejected it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::credentials::{CredentialsError, StoredTokens, TokenStore};

/// The OAuth client this terminal client logs in as (seeded by the auth service).
pub const CLI_CLIENT_ID: &str = "codelab-cli";

/// Why logging in or refreshing failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No TCP connection, DNS failure, timeout.
    #[error("cannot reach the server at {server}: {reason}")]
    Unreachable {
        /// The server URL.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// Wrong username or password.
    #[error("login failed: {0}")]
    InvalidCredentials(String),
    /// Too many failed attempts (or too many requests): the server refuses for a while.
    #[error("login refused: {0}")]
    Locked(String),
    /// The stored refresh token was refused (expired, revoked, reused).
    #[error(
        "the saved login for {server} is no longer valid ({reason}); log in again with `codelab login`"
    )]
    SessionExpired {
        /// The server URL.
        server: String,
        /// The auth service's description.
        reason: String,
    },
    /// No stored tokens and no way to ask for credentials.
    #[error(
        "not logged in to {0}: run `codelab login --server {0}`, or set CODELAB_USERNAME and CODELAB_PASSWORD"
    )]
    NotLoggedIn(String),
    /// An answer this client does not understand.
    #[error("the auth service answered HTTP {status}: {body}")]
    Unexpected {
        /// HTTP status.
        status: u16,
        /// The body (truncated).
        body: String,
    },
    /// The token store failed.
    #[error(transparent)]
    Store(#[from] CredentialsError),
}

impl AuthError {
    /// Whether this is a failure to log in (exit code 2) rather than an error of the
    /// transport or the local store.
    pub fn is_login_failure(&self) -> bool {
        matches!(
            self,
            AuthError::InvalidCredentials(_)
                | AuthError::Locked(_)
                | AuthError::SessionExpired { .. }
                | AuthError::NotLoggedIn(_)
        )
    }
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct OAuthErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// A client of the auth service's token endpoints.
#[derive(Debug, Clone)]
pub struct AuthClient {
    http: reqwest::Client,
    server: String,
}

/// The HTTP client every part of this crate uses: bounded connects and requests.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("codelab-chat/", env!("CARGO_PKG_VERSION")))
        .build()
        // Only a TLS backend that cannot initialise fails here; the default one is built in.
        .unwrap_or_default()
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        serializer.append_pair(k, v);
    }
    serializer.finish()
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

impl AuthClient {
    /// A client of the auth service behind `server` (`{server}/oauth/...`).
    pub fn new(http: reqwest::Client, server: &str) -> AuthClient {
        AuthClient {
            http,
            server: crate::credentials::server_key(server),
        }
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    async fn post_form(&self, path: &str, body: String) -> Result<reqwest::Response, AuthError> {
        self.http
            .post(format!("{}{path}", self.server))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| AuthError::Unreachable {
                server: self.server.clone(),
                reason: crate::describe_reqwest(&e),
            })
    }

    async fn tokens(
        &self,
        username: &str,
        response: reqwest::Response,
        refresh_token_sent: Option<&str>,
    ) -> Result<StoredTokens, AuthError> {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            let answer: TokenAnswer =
                serde_json::from_str(&text).map_err(|_| AuthError::Unexpected {
                    status: status.as_u16(),
                    body: truncate(&text),
                })?;
            let expires_in = answer.expires_in.unwrap_or(900).max(1);
            let refresh_token = answer
                .refresh_token
                .or_else(|| refresh_token_sent.map(str::to_owned))
                .unwrap_or_default();
            return Ok(StoredTokens {
                username: username.to_owned(),
                access_token: answer.access_token,
                refresh_token,
                expires_at: crate::now() + chrono::Duration::seconds(expires_in),
                expires_in,
            });
        }
        let body: OAuthErrorBody = serde_json::from_str(&text).unwrap_or_default();
        let description = body
            .error_description
            .clone()
            .unwrap_or_else(|| body.error.clone());
        match (status.as_u16(), body.error.as_str()) {
            (429, _) => Err(AuthError::Locked(if description.is_empty() {
                "too many attempts; try again later".to_owned()
            } else {
                description
            })),
            (400 | 401, "invalid_grant") if refresh_token_sent.is_some() => {
                Err(AuthError::SessionExpired {
                    server: self.server.clone(),
                    reason: description,
                })
            }
            (400 | 401, "invalid_grant") => Err(AuthError::InvalidCredentials(description)),
            (status, _) => Err(AuthError::Unexpected {
                status,
                body: truncate(&text),
            }),
        }
    }

    /// The password grant.
    pub async fn login(&self, username: &str, password: &str) -> Result<StoredTokens, AuthError> {
        let body = form(&[
            ("grant_type", "password"),
            ("client_id", CLI_CLIENT_ID),
            ("username", username),
            ("password", password),
        ]);
        let response = self.post_form("/oauth/token", body).await?;
        self.tokens(username, response, None).await
    }

    /// The refresh grant (the refresh token rotates: the answer holds the new one).
    pub async fn refresh(&self, current: &StoredTokens) -> Result<StoredTokens, AuthError> {
        let body = form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLI_CLIENT_ID),
            ("refresh_token", &current.refresh_token),
        ]);
        let response = self.post_form("/oauth/token", body).await?;
        self.tokens(&current.username, response, Some(&current.refresh_token))
            .await
    }

    /// RFC 7009 revocation of a refresh token (which ends its whole login family).
    pub async fn revoke(&self, refresh_token: &str) -> Result<(), AuthError> {
        let body = form(&[
            ("token", refresh_token),
            ("token_type_hint", "refresh_token"),
            ("client_id", CLI_CLIENT_ID),
        ]);
        let response = self.post_form("/oauth/revoke", body).await?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let text = response.text().await.unwrap_or_default();
            Err(AuthError::Unexpected {
                status: status.as_u16(),
                body: truncate(&text),
            })
        }
    }
}

/// Whether an access token should be refreshed before use: within a fifth of its lifetime
/// (at most a minute) of expiring, so it does not expire on its way to the gateway.
pub fn needs_refresh(tokens: &StoredTokens, now: DateTime<Utc>) -> bool {
    let margin = (tokens.expires_in / 5).clamp(0, 60);
    now + chrono::Duration::seconds(margin) >= tokens.expires_at
}

/// Username and password to log in again when the refresh token is no longer accepted
/// (`CODELAB_USERNAME` / `CODELAB_PASSWORD`).
#[derive(Clone)]
pub struct Relogin {
    /// The username.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Relogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relogin")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The tokens of one server, kept valid and written back to the store whenever they change.
#[derive(Debug)]
pub struct TokenManager {
    auth: AuthClient,
    store: TokenStore,
    tokens: Mutex<StoredTokens>,
    relogin: Option<Relogin>,
}

impl TokenManager {
    /// Manages `tokens` (already in `store`) for the auth client's server.
    pub fn new(
        auth: AuthClient,
        store: TokenStore,
        tokens: StoredTokens,
        relogin: Option<Relogin>,
    ) -> TokenManager {
        TokenManager {
            auth,
            store,
            tokens: Mutex::new(tokens),
            relogin,
        }
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        self.auth.server()
    }

    /// Who is logged in.
    pub async fn username(&self) -> String {
        self.tokens.lock().await.username.clone()
    }

    /// A current access token, refreshed first when it is about to expire.
    pub async fn access_token(&self) -> Result<String, AuthError> {
        let mut tokens = self.tokens.lock().await;
        if needs_refresh(&tokens, crate::now()) {
            self.renew(&mut tokens).await?;
        }
        Ok(tokens.access_token.clone())
    }

    /// After the gateway refused `rejected`: a fresh token (unless another caller already
    /// replaced it meanwhile).
    pub async fn refresh_after_rejection(&self, rejected: &str) -> Result<String, AuthError> {
        let mut tokens = self.tokens.lock().await;
        if tokens.access_token == rejected {
            self.renew(&mut tokens).await?;
        }
        Ok(tokens.access_token.clone())
    }

    async fn renew(&self, tokens: &mut StoredTokens) -> Result<(), AuthError> {
        // Another `codelab` process may have rotated the refresh token already; using the old
        // one would look like token theft and revoke the whole login.
        if let Ok(Some(stored)) = self.store.load(self.auth.server())
            && stored.refresh_token != tokens.refresh_token
            && stored.username == tokens.username
        {
            *tokens = stored;
            if !needs_refresh(tokens, crate::now()) {
                return Ok(());
            }
        }
        let renewed = match self.auth.refresh(tokens).await {
            Ok(renewed) => renewed,
            Err(AuthError::SessionExpired { .. }) if self.relogin.is_some() => {
                let relogin = self.relogin.as_ref().map(|r| (&r.username, &r.password));
                let Some((username, password)) = relogin else {
                    return Err(AuthError::NotLoggedIn(self.auth.server().to_owned()));
                };
                self.auth.login(username, password).await?
            }
            Err(error) => return Err(error),
        };
        self.store.save(self.auth.server(), &renewed)?;
        *tokens = renewed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_shortly_before_they_expire() {
        let now = crate::now();
        let tokens = |lifetime: i64, left: i64| StoredTokens {
            username: "u".into(),
            access_token: "a".into(),
            refresh_token: "r".into(),
            expires_at: now + chrono::Duration::seconds(left),
            expires_in: lifetime,
        };
        assert!(!needs_refresh(&tokens(900, 600), now));
        assert!(needs_refresh(&tokens(900, 59), now));
        assert!(!needs_refresh(&tokens(900, 61), now));
        assert!(!needs_refresh(&tokens(10, 3), now));
        assert!(needs_refresh(&tokens(10, 1), now));
        assert!(needs_refresh(&tokens(2, 0), now));
        assert!(needs_refresh(&tokens(900, -5), now));
    }

    #[test]
    fn login_failures_map_to_exit_code_two() {
        assert!(AuthError::InvalidCredentials("x".into()).is_login_failure());
        assert!(AuthError::Locked("x".into()).is_login_failure());
        assert!(
            !AuthError::Unreachable {
                server: "s".into(),
                reason: "r".into()
            }
            .is_login_failure()
        );
    }
}
