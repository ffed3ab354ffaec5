//! Idempotent seeding at startup: the four OAuth clients and the `admin` user.
//!
//! Generated credentials (the admin password when no master key is set, the internal client's
//! secret when none is configured) are returned to the caller, which prints them once to
//! stdout. They never go through tracing.

use std::sync::Arc;

use codelab_core::config::{Environment, Secret};
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::config::Config;
use crate::model::{ADMIN_SCOPE, NewClient, NewUser};
use crate::passwords::{self, PasswordError};
use crate::store::{AuthStore, StoreError};

/// The Flutter IDE's client (public; password and refresh grants).
pub const FLUTTER_CLIENT_ID: &str = "codelab-flutter-app";
/// `codelab chat`'s client (public; password and refresh grants).
pub const CLI_CLIENT_ID: &str = "codelab-cli";
/// The website's client (public; authorization code + PKCE and refresh).
pub const WEB_CLIENT_ID: &str = "codelab-web";
/// Services acting for themselves (confidential; client credentials).
pub const INTERNAL_CLIENT_ID: &str = "codelab-internal";
/// The seeded administrator.
pub const ADMIN_USERNAME: &str = "admin";
/// The seeded administrator's email.
pub const ADMIN_EMAIL: &str = "admin@codelab.local";
/// Length of a generated admin password.
const GENERATED_PASSWORD_CHARS: usize = 20;

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing failed.
    #[error("cannot hash a seeded credential: {0}")]
    Hash(#[from] PasswordError),
    /// The new admin password breaks the password policy.
    #[error("unusable admin password: {0}")]
    Policy(PasswordError),
    /// The master key breaks the policy or is a placeholder in production.
    #[error("AUTH_SERVICE__MASTER_KEY is unusable as the admin password: {0}")]
    MasterKey(String),
    /// `set_admin_password` found no `admin` user.
    #[error("there is no user named admin")]
    NoAdmin,
}

/// Credentials generated while seeding, to be shown to the operator exactly once.
#[derive(Debug, Default, Clone)]
pub struct SeedReport {
    /// The new `admin` user's password, when it was generated or came from the master key.
    pub admin_password: Option<Secret>,
    /// Whether `admin_password` was generated (rather than taken from the master key).
    pub admin_password_generated: bool,
    /// The `codelab-internal` client's secret, when it was generated.
    pub internal_client_secret: Option<Secret>,
}

/// A random password of letters and digits (easy to copy from a terminal).
pub fn generate_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(GENERATED_PASSWORD_CHARS)
        .map(char::from)
        .collect()
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

/// Creates the seeded clients and the `admin` user when they are missing; changes nothing
/// that exists, except the website client's redirect URIs, which follow the configuration.
pub async fn seed(
    store: &Arc<dyn AuthStore>,
    config: &Config,
    environment: Environment,
) -> Result<SeedReport, SeedError> {
    let mut report = SeedReport::default();
    let public = |client_id: &str, name: &str, grants: &[&str], scopes: &[&str]| NewClient {
        client_id: client_id.to_owned(),
        secret_hash: None,
        name: name.to_owned(),
        description: None,
        is_confidential: false,
        allowed_scopes: strings(scopes),
        allowed_grant_types: strings(grants),
        redirect_uris: Vec::new(),
        access_token_lifetime: config.access_token_lifetime,
        refresh_token_lifetime: config.refresh_token_lifetime,
    };
    let read_write = ["api:read", "api:write"];
    let password_grants = ["password", "refresh_token"];
    ensure_client(
        store,
        public(
            FLUTTER_CLIENT_ID,
            "CodeLab Flutter Application",
            &password_grants,
            &read_write,
        ),
    )
    .await?;
    ensure_client(
        store,
        public(CLI_CLIENT_ID, "CodeLab CLI", &password_grants, &read_write),
    )
    .await?;
    let mut web = public(
        WEB_CLIENT_ID,
        "CodeLab Website",
        &["authorization_code", "refresh_token"],
        &["api:read", "api:write", ADMIN_SCOPE],
    );
    web.redirect_uris = config.web_redirect_uris.clone();
    if !ensure_client(store, web).await? {
        store
            .set_client_redirect_uris(WEB_CLIENT_ID, &config.web_redirect_uris)
            .await?;
    }

    if store.get_client(INTERNAL_CLIENT_ID).await?.is_none() {
        let (secret, generated) = if config.internal_client_secret.is_empty() {
            (Secret::generate(), true)
        } else {
            (config.internal_client_secret.clone(), false)
        };
        let client = NewClient {
            client_id: INTERNAL_CLIENT_ID.to_owned(),
            secret_hash: Some(passwords::hash_password(secret.expose()).await?),
            name: "CodeLab Internal Services".to_owned(),
            description: None,
            is_confidential: true,
            allowed_scopes: strings(&[ADMIN_SCOPE, "api:read", "api:write"]),
            allowed_grant_types: strings(&["client_credentials"]),
            redirect_uris: Vec::new(),
            access_token_lifetime: 3600,
            refresh_token_lifetime: 7_776_000,
        };
        if ensure_client(store, client).await? && generated {
            report.internal_client_secret = Some(secret);
        }
    }

    if !admin_exists(store).await? {
        let (password, generated) = if config.master_key.is_empty() {
            (Secret::new(generate_password()), true)
        } else {
            let key = config.master_key.clone();
            passwords::check_password_policy(key.expose())
                .map_err(|e| SeedError::MasterKey(e.to_string()))?;
            // Production never starts with a published placeholder as the admin password.
            if environment.is_production() && key.is_weak() {
                return Err(SeedError::MasterKey(
                    "it is a known placeholder or shorter than 16 characters".to_owned(),
                ));
            }
            (key, false)
        };
        let user = NewUser {
            username: ADMIN_USERNAME.to_owned(),
            email: Some(ADMIN_EMAIL.to_owned()),
            password_hash: passwords::hash_password(password.expose()).await?,
            is_admin: true,
        };
        match store.create_user(user).await {
            Ok(_) => {
                report.admin_password = Some(password);
                report.admin_password_generated = generated;
            }
            // Another replica seeded it first.
            Err(StoreError::Conflict(_)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(report)
}

/// Creates `client` unless its id exists; `true` when this call created it.
async fn ensure_client(store: &Arc<dyn AuthStore>, client: NewClient) -> Result<bool, SeedError> {
    if store.get_client(&client.client_id).await?.is_some() {
        return Ok(false);
    }
    match store.create_client(client).await {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

async fn admin_exists(store: &Arc<dyn AuthStore>) -> Result<bool, SeedError> {
    Ok(store
        .find_user_by_login(ADMIN_USERNAME)
        .await?
        .is_some_and(|u| u.username.eq_ignore_ascii_case(ADMIN_USERNAME)))
}

/// Sets the `admin` user's password (for `codelab up --admin-password`), enforcing the
/// password policy; the user is also re-enabled and keeps its admin flag.
pub async fn set_admin_password(
    store: &Arc<dyn AuthStore>,
    password: &str,
) -> Result<(), SeedError> {
    passwords::check_password_policy(password).map_err(SeedError::Policy)?;
    let user = store
        .find_user_by_login(ADMIN_USERNAME)
        .await?
        .filter(|u| u.username.eq_ignore_ascii_case(ADMIN_USERNAME))
        .ok_or(SeedError::NoAdmin)?;
    let hash = passwords::hash_password(password).await?;
    store.set_password_hash(&user.id, &hash).await?;
    if !user.is_active {
        store.set_user_active(&user.username, true).await?;
    }
    if !user.is_admin {
        store.set_user_admin(&user.username, true).await?;
    }
    Ok(())
}
