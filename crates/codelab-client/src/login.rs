//! Getting a logged-in [`TokenManager`]: stored tokens, else `CODELAB_USERNAME` /
//! `CODELAB_PASSWORD`, else a prompt on the terminal; and logging out.

use std::io::IsTerminal;

use crate::auth::{AuthClient, AuthError, Relogin, TokenManager};
use crate::credentials::{StoredTokens, TokenStore};
use crate::input;

/// Credentials from the environment (`CODELAB_USERNAME` and `CODELAB_PASSWORD`, both set and
/// non-empty).
pub fn env_credentials() -> Option<Relogin> {
    let username = std::env::var("CODELAB_USERNAME").ok()?;
    let password = std::env::var("CODELAB_PASSWORD").ok()?;
    (!username.is_empty() && !password.is_empty()).then_some(Relogin { username, password })
}

/// Logs in with the password grant and stores the tokens.
pub async fn login(
    auth: &AuthClient,
    store: &TokenStore,
    username: &str,
    password: &str,
) -> Result<StoredTokens, AuthError> {
    let tokens = auth.login(username, password).await?;
    store.save(auth.server(), &tokens)?;
    Ok(tokens)
}

/// Asks for a username (default `admin`, the user `codelab up` creates) and a password on
/// the terminal.
pub fn prompt_credentials(server: &str) -> Result<Relogin, AuthError> {
    let io = |e: std::io::Error| {
        AuthError::Store(crate::credentials::CredentialsError::Io {
            path: "stdin".into(),
            source: e,
        })
    };
    eprintln!("Log in to {server}");
    let username = input::read_plain("Username [admin]: ").map_err(io)?;
    let username = if username.is_empty() {
        "admin".to_owned()
    } else {
        username
    };
    let password = input::read_password("Password: ").map_err(io)?;
    Ok(Relogin { username, password })
}

/// The tokens for `auth`'s server: stored ones, else a login with the environment's
/// credentials, else (on a terminal) with prompted ones.
pub async fn logged_in(auth: AuthClient, store: TokenStore) -> Result<TokenManager, AuthError> {
    let env = env_credentials();
    if let Some(tokens) = store.load(auth.server())? {
        return Ok(TokenManager::new(auth, store, tokens, env));
    }
    let credentials = match env {
        Some(credentials) => credentials,
        None if std::io::stdin().is_terminal() => prompt_credentials(auth.server())?,
        None => return Err(AuthError::NotLoggedIn(auth.server().to_owned())),
    };
    let tokens = login(&auth, &store, &credentials.username, &credentials.password).await?;
    let relogin = env_credentials();
    Ok(TokenManager::new(auth, store, tokens, relogin))
}

/// What `logout` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoutOutcome {
    /// Revoked on the server and deleted locally.
    Revoked,
    /// Deleted locally; the server could not be told (the reason).
    DeletedLocally(String),
    /// Nothing was stored for the server.
    NotLoggedIn,
}

/// Revokes the stored refresh token (ending that login on the server) and deletes the
/// tokens. They are deleted even when the server cannot be reached.
pub async fn logout(auth: &AuthClient, store: &TokenStore) -> Result<LogoutOutcome, AuthError> {
    let Some(tokens) = store.load(auth.server())? else {
        return Ok(LogoutOutcome::NotLoggedIn);
    };
    let revoked = auth.revoke(&tokens.refresh_token).await;
    store.remove(auth.server())?;
    Ok(match revoked {
        Ok(()) => LogoutOutcome::Revoked,
        Err(error) => LogoutOutcome::DeletedLocally(error.to_string()),
    })
}
