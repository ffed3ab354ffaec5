//! Idempotent seeding at startup: the four OAuth clients and the `admin` user.
//!
//! Generated credentials (the admin password when no master key is set, the internal client's
//! secret when none is configured) are returned to the caller, which prints them once to
//! stdout. They never go through tracing. Outside development a generated internal secret is
//! never printed: it is written to `AUTH_SERVICE__INTERNAL_CLIENT_SECRET_FILE` (mode 0600) and
//! only the path is reported, or the secret must be configured.

use std::path::{Path, PathBuf};
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
/// Longest life of the website client's access tokens (it gives them to browser JavaScript).
pub const WEB_ACCESS_TOKEN_MAX_SECONDS: i64 = 300;
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
    /// Outside development a generated internal secret would have to be printed.
    #[error(
        "the codelab-internal client must be created but has no secret: set \
         AUTH_SERVICE__INTERNAL_CLIENT_SECRET, or AUTH_SERVICE__INTERNAL_CLIENT_SECRET_FILE for \
         a generated one written to that file (outside development a secret is never printed)"
    )]
    InternalSecretRequired,
    /// Outside development a configured internal secret must not be guessable.
    #[error(
        "AUTH_SERVICE__INTERNAL_CLIENT_SECRET is a known placeholder or shorter than 16 \
         characters: use a random value such as `openssl rand -hex 32`"
    )]
    WeakInternalSecret,
    /// The internal secret file could not be read or written.
    #[error("cannot use the internal client secret file {}: {source}", path.display())]
    InternalSecretFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Where the internal client's secret came from, so it is shown (or not) accordingly.
enum SecretOrigin {
    /// `AUTH_SERVICE__INTERNAL_CLIENT_SECRET`, or a file that existed: the operator has it.
    Configured,
    /// Generated in development without a file: printed once.
    GeneratedToShow,
    /// Generated and written to this file (mode 0600): only the path is shown.
    File(PathBuf),
}

/// The `codelab-internal` secret to create the client with: configured, read from
/// `internal_client_secret_file`, or generated (into that file when it is set; outside
/// development a file is required, so the secret never reaches stdout or logs).
async fn internal_client_secret(
    config: &Config,
    environment: Environment,
) -> Result<(Secret, SecretOrigin), SeedError> {
    if !config.internal_client_secret.is_empty() {
        return Ok((
            config.internal_client_secret.clone(),
            SecretOrigin::Configured,
        ));
    }
    let Some(path) = &config.internal_client_secret_file else {
        if environment.is_hardened() {
            return Err(SeedError::InternalSecretRequired);
        }
        return Ok((Secret::generate(), SecretOrigin::GeneratedToShow));
    };
    let file_error = |source| SeedError::InternalSecretFile {
        path: path.clone(),
        source,
    };
    match tokio::fs::read_to_string(path).await {
        Ok(text) if !text.trim().is_empty() => {
            return Ok((Secret::new(text.trim()), SecretOrigin::Configured));
        }
        Ok(_) => {
            return Err(file_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file is empty",
            )));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(file_error(error)),
    }
    let secret = Secret::generate();
    write_secret_file(path, secret.expose()).map_err(file_error)?;
    Ok((secret, SecretOrigin::File(path.clone())))
}

/// Creates `path` with mode 0600 from the start (never readable by others, even briefly) and
/// writes `secret`; an existing file is never overwritten.
fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Whether a redirect URI points at the local machine.
fn is_loopback_uri(uri: &str) -> bool {
    let Some((_, rest)) = uri.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    codelab_core::http::is_loopback_host(host)
}

/// Credentials generated while seeding, to be shown to the operator exactly once.
#[derive(Debug, Default, Clone)]
pub struct SeedReport {
    /// The new `admin` user's password, when it was generated or came from the master key.
    pub admin_password: Option<Secret>,
    /// Whether `admin_password` was generated (rather than taken from the master key).
    pub admin_password_generated: bool,
    /// The `codelab-internal` client's secret, when it was generated in development without
    /// `internal_client_secret_file` (never set outside development).
    pub internal_client_secret: Option<Secret>,
    /// The file a generated `codelab-internal` secret was written to (mode 0600).
    pub internal_client_secret_file: Option<PathBuf>,
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

/// The `admin` user to create because it is missing: its password (generated, or the master
/// key) and that password's argon2id hash, computed before anything is written.
pub struct PendingAdmin {
    password: Secret,
    generated: bool,
    password_hash: String,
}

impl std::fmt::Debug for PendingAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAdmin")
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

/// When the `admin` user is missing, chooses its password (the master key, checked against the
/// policy, or a generated one) and hashes it; `None` when it exists. Writes nothing: the
/// service runs this, the slow part of seeding, beside loading (or generating) its signing
/// key, and [`seed_with`] writes only once the key set is usable.
pub async fn prepare_admin(
    store: &Arc<dyn AuthStore>,
    config: &Config,
    environment: Environment,
) -> Result<Option<PendingAdmin>, SeedError> {
    if admin_exists(store).await? {
        return Ok(None);
    }
    let (password, generated) = if config.master_key.is_empty() {
        (Secret::new(generate_password()), true)
    } else {
        let key = config.master_key.clone();
        passwords::check_password_policy(key.expose())
            .map_err(|e| SeedError::MasterKey(e.to_string()))?;
        // Production never starts with a published placeholder as the admin password.
        if environment.is_hardened() && key.is_weak() {
            return Err(SeedError::MasterKey(
                "it is a known placeholder or shorter than 16 characters".to_owned(),
            ));
        }
        (key, false)
    };
    let password_hash = passwords::hash_password(password.expose()).await?;
    Ok(Some(PendingAdmin {
        password,
        generated,
        password_hash,
    }))
}

/// Creates the seeded clients and the `admin` user when they are missing; changes nothing
/// that exists, except the website client's redirect URIs, which follow the configuration.
pub async fn seed(
    store: &Arc<dyn AuthStore>,
    config: &Config,
    environment: Environment,
) -> Result<SeedReport, SeedError> {
    let admin = prepare_admin(store, config, environment).await?;
    seed_with(store, config, environment, admin).await
}

/// [`seed`] with the admin prepared by [`prepare_admin`].
pub async fn seed_with(
    store: &Arc<dyn AuthStore>,
    config: &Config,
    environment: Environment,
    admin: Option<PendingAdmin>,
) -> Result<SeedReport, SeedError> {
    let configured_internal = &config.internal_client_secret;
    if environment.is_hardened() && !configured_internal.is_empty() && configured_internal.is_weak()
    {
        return Err(SeedError::WeakInternalSecret);
    }
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
    let redirect_uris = config.effective_web_redirect_uris(environment);
    if environment.is_hardened() && redirect_uris.iter().any(|uri| is_loopback_uri(uri)) {
        tracing::warn!(
            "AUTH_SERVICE__WEB_REDIRECT_URIS lists a localhost address outside development: \
             whoever runs a server on that port of a user's machine can receive their codes"
        );
    }
    web.redirect_uris = redirect_uris.clone();
    // The website hands its access tokens to the browser's chat page: keep them short.
    let web_lifetime = config
        .access_token_lifetime
        .clamp(1, WEB_ACCESS_TOKEN_MAX_SECONDS);
    web.access_token_lifetime = web_lifetime;
    if !ensure_client(store, web).await? {
        store
            .set_client_redirect_uris(WEB_CLIENT_ID, &redirect_uris)
            .await?;
        store
            .set_client_access_token_lifetime(WEB_CLIENT_ID, web_lifetime)
            .await?;
    }

    if store.get_client(INTERNAL_CLIENT_ID).await?.is_none() {
        let (secret, origin) = internal_client_secret(config, environment).await?;
        let client = NewClient {
            client_id: INTERNAL_CLIENT_ID.to_owned(),
            // Client secrets use the fast hash (docs/auth.md, "Protection").
            secret_hash: Some(passwords::hash_client_secret(secret.expose())),
            name: "CodeLab Internal Services".to_owned(),
            description: None,
            is_confidential: true,
            allowed_scopes: strings(&[ADMIN_SCOPE, "api:read", "api:write"]),
            allowed_grant_types: strings(&["client_credentials"]),
            redirect_uris: Vec::new(),
            access_token_lifetime: 3600,
            refresh_token_lifetime: 7_776_000,
        };
        if ensure_client(store, client).await? {
            match origin {
                SecretOrigin::Configured => {}
                SecretOrigin::GeneratedToShow => report.internal_client_secret = Some(secret),
                SecretOrigin::File(path) => report.internal_client_secret_file = Some(path),
            }
        }
    }

    if let Some(admin) = admin {
        let user = NewUser {
            username: ADMIN_USERNAME.to_owned(),
            email: Some(ADMIN_EMAIL.to_owned()),
            password_hash: admin.password_hash,
            is_admin: true,
        };
        match store.create_user(user).await {
            Ok(_) => {
                report.admin_password = Some(admin.password);
                report.admin_password_generated = admin.generated;
            }
            // Another replica (or an earlier start) seeded it first.
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
