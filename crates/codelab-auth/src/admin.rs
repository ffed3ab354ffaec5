//! Administration of users and OAuth clients (what `codelab admin` runs), over any
//! [`AuthStore`]: input checks, hashing, and one audit row per change.
//!
//! Passwords and client secrets are hashed here and never stored, logged or audited in
//! clear; a generated client secret is returned once for the caller to show.

use chrono::Utc;
use codelab_core::config::Secret;
use serde_json::json;

use crate::model::{AuditEvent, Client, NewClient, NewUser, User};
use crate::passwords::{PasswordError, check_password_policy, hash_client_secret, hash_password};
use crate::store::{AuthStore, StoreError};

/// Longest accepted username, in characters.
pub const MAX_USERNAME_CHARS: usize = 64;
/// Longest accepted email (RFC 5321's path limit; the column holds 255).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Grant types a client may be given.
pub const GRANT_TYPES: &[&str] = &[
    "password",
    "refresh_token",
    "authorization_code",
    "client_credentials",
];
/// Scopes a client gets when none are given (those of the original's IDE client).
pub const DEFAULT_SCOPES: &[&str] = &["api:read", "api:write"];

/// Why an admin action was refused or failed; messages are one line, fit for `error: ...`.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The username has a forbidden character or length.
    #[error(
        "username must be 1 to {MAX_USERNAME_CHARS} characters from A-Z, a-z, 0-9 and \"_.@-\", got {0:?}"
    )]
    InvalidUsername(String),
    /// The email is not `local@domain`.
    #[error("email must contain one \"@\" with text on both sides and no spaces, got {0:?}")]
    InvalidEmail(String),
    /// The password breaks the policy (NIST SP 800-63B length limits).
    #[error(transparent)]
    InvalidPassword(PasswordError),
    /// A client setting is not acceptable.
    #[error("{0}")]
    InvalidClient(String),
    /// The username, email or client id is in use (the text names which).
    #[error("{0} is already taken")]
    Taken(String),
    /// No user has that username.
    #[error("no user named {0:?}")]
    UnknownUser(String),
    /// No client has that id.
    #[error("no client with id {0:?}")]
    UnknownClient(String),
    /// Hashing the password or secret failed.
    #[error("cannot hash the password: {0}")]
    Hashing(PasswordError),
    /// The change was made but its audit row could not be written.
    #[error("the change was made, but its audit row could not be written: {0}")]
    Audit(StoreError),
    /// The database failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AdminError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(what) => Self::Taken(what),
            other => Self::Store(other),
        }
    }
}

/// Who made an admin change, recorded in its audit row (docs/auth.md, "Audit log").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `admin_api` or `cli`.
    pub via: &'static str,
    /// The acting administrator's user id (admin API); `None` for `codelab admin`, which
    /// whoever can open the database runs.
    pub user_id: Option<String>,
    /// The caller's IP, resolved through the trusted proxies (admin API).
    pub ip_address: Option<String>,
    /// The caller's user agent (admin API).
    pub user_agent: Option<String>,
}

impl Actor {
    /// `codelab admin ...` on the command line.
    pub fn command_line() -> Self {
        Self {
            via: "cli",
            user_id: None,
            ip_address: None,
            user_agent: None,
        }
    }

    /// An administrator calling `/admin/*` from `ip_address`.
    pub fn admin_api(
        user_id: impl Into<String>,
        ip_address: impl Into<String>,
        user_agent: Option<String>,
    ) -> Self {
        Self {
            via: "admin_api",
            user_id: Some(user_id.into()),
            ip_address: Some(ip_address.into()),
            user_agent,
        }
    }
}

/// A user after an enable, disable or password change.
#[derive(Debug, Clone)]
pub struct UserUpdate {
    /// The user as stored now.
    pub user: User,
    /// Refresh tokens revoked by the change (disable and password change end every session).
    pub revoked_refresh_tokens: u64,
}

/// What `add_client` needs; `new` fills the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSpec {
    /// `[A-Za-z0-9_-]`, 3 to 255 characters (the original's rule).
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Confidential clients get a generated secret; public ones have none.
    pub confidential: bool,
    /// Empty means `authorization_code refresh_token` when redirect URIs are given, else
    /// `password refresh_token` (the original's clients). Entries may hold several,
    /// space-separated.
    pub grant_types: Vec<String>,
    /// Empty means [`DEFAULT_SCOPES`]. Entries may hold several, space-separated.
    pub scopes: Vec<String>,
    /// Exact redirect URIs for the authorization-code flow.
    pub redirect_uris: Vec<String>,
    /// Seconds.
    pub access_token_lifetime: i64,
    /// Seconds.
    pub refresh_token_lifetime: i64,
}

impl ClientSpec {
    /// A public client with default grants, scopes and the original's lifetimes
    /// (900 s / 30 days).
    pub fn new(client_id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            name: name.into(),
            description: None,
            confidential: false,
            grant_types: Vec::new(),
            scopes: Vec::new(),
            redirect_uris: Vec::new(),
            access_token_lifetime: 900,
            refresh_token_lifetime: 2_592_000,
        }
    }
}

/// A created client, with its secret when confidential: shown once, never stored in clear.
#[derive(Debug)]
pub struct AddedClient {
    /// The client as stored.
    pub client: Client,
    /// The generated secret of a confidential client.
    pub secret: Option<Secret>,
}

/// Creates a user after checking the username, email and password policy (as `codelab
/// admin`; see [`add_user_by`]).
pub async fn add_user(
    store: &dyn AuthStore,
    username: &str,
    password: &str,
    email: Option<&str>,
    admin: bool,
) -> Result<User, AdminError> {
    add_user_by(
        store,
        &Actor::command_line(),
        username,
        password,
        email,
        admin,
    )
    .await
}

/// [`add_user`] by `actor`, who is named in the audit row.
pub async fn add_user_by(
    store: &dyn AuthStore,
    actor: &Actor,
    username: &str,
    password: &str,
    email: Option<&str>,
    admin: bool,
) -> Result<User, AdminError> {
    validate_username(username)?;
    let email = email.map(validate_email).transpose()?;
    check_password_policy(password).map_err(AdminError::InvalidPassword)?;
    let password_hash = hash_password(password).await.map_err(AdminError::Hashing)?;
    let user = store
        .create_user(NewUser {
            username: username.to_owned(),
            email,
            password_hash,
            is_admin: admin,
        })
        .await?;
    audit(
        store,
        actor,
        Some(&user.id),
        None,
        "admin_user_add",
        json!({ "username": user.username, "admin": admin }),
    )
    .await?;
    Ok(user)
}

/// Every user, by username.
pub async fn list_users(store: &dyn AuthStore) -> Result<Vec<User>, AdminError> {
    Ok(store.list_users().await?)
}

/// Enables or disables a user; disabling also revokes every refresh token the user holds, so
/// no session outlives the decision (access tokens still run out on their own).
pub async fn set_user_enabled(
    store: &dyn AuthStore,
    username: &str,
    enabled: bool,
) -> Result<UserUpdate, AdminError> {
    set_user_enabled_by(store, &Actor::command_line(), username, enabled).await
}

/// [`set_user_enabled`] by `actor`, who is named in the audit row.
pub async fn set_user_enabled_by(
    store: &dyn AuthStore,
    actor: &Actor,
    username: &str,
    enabled: bool,
) -> Result<UserUpdate, AdminError> {
    let user = store
        .set_user_active(username, enabled)
        .await
        .map_err(|e| unknown_user(e, username))?;
    let revoked_refresh_tokens = if enabled {
        0
    } else {
        store.revoke_user_tokens(&user.id, wall_time()).await?
    };
    let event_type = if enabled {
        "admin_user_enable"
    } else {
        "admin_user_disable"
    };
    audit(
        store,
        actor,
        Some(&user.id),
        None,
        event_type,
        json!({ "username": user.username, "revoked_refresh_tokens": revoked_refresh_tokens }),
    )
    .await?;
    Ok(UserUpdate {
        user,
        revoked_refresh_tokens,
    })
}

/// Sets a new password (policy-checked) and revokes the user's refresh tokens: a reset
/// usually follows a suspected compromise, so old sessions must not survive it.
pub async fn set_password(
    store: &dyn AuthStore,
    username: &str,
    password: &str,
) -> Result<UserUpdate, AdminError> {
    set_password_by(store, &Actor::command_line(), username, password).await
}

/// [`set_password`] by `actor`, who is named in the audit row.
pub async fn set_password_by(
    store: &dyn AuthStore,
    actor: &Actor,
    username: &str,
    password: &str,
) -> Result<UserUpdate, AdminError> {
    check_password_policy(password).map_err(AdminError::InvalidPassword)?;
    let user = find_by_username(store, username).await?;
    let hash = hash_password(password).await.map_err(AdminError::Hashing)?;
    store
        .set_password_hash(&user.id, &hash)
        .await
        .map_err(|e| unknown_user(e, username))?;
    let revoked_refresh_tokens = store.revoke_user_tokens(&user.id, wall_time()).await?;
    audit(
        store,
        actor,
        Some(&user.id),
        None,
        "admin_password_change",
        json!({ "username": user.username, "revoked_refresh_tokens": revoked_refresh_tokens }),
    )
    .await?;
    let user = store
        .get_user(&user.id)
        .await?
        .ok_or_else(|| AdminError::UnknownUser(username.to_owned()))?;
    Ok(UserUpdate {
        user,
        revoked_refresh_tokens,
    })
}

/// Creates a client; a confidential one gets a generated secret, returned once.
pub async fn add_client(
    store: &dyn AuthStore,
    spec: ClientSpec,
) -> Result<AddedClient, AdminError> {
    let new = validate_client(spec)?;
    let secret = new.is_confidential.then(Secret::generate);
    // Generated random secrets use the fast hash (docs/auth.md, "Protection").
    let secret_hash = secret
        .as_ref()
        .map(|secret| hash_client_secret(secret.expose()));
    let client = store
        .create_client(NewClient { secret_hash, ..new })
        .await?;
    audit(
        store,
        &Actor::command_line(),
        None,
        Some(&client.client_id),
        "admin_client_add",
        json!({
            "name": client.name,
            "confidential": client.is_confidential,
            "grant_types": client.allowed_grant_types,
            "scopes": client.allowed_scopes,
            "redirect_uris": client.redirect_uris,
        }),
    )
    .await?;
    Ok(AddedClient { client, secret })
}

/// Every client, by client id.
pub async fn list_clients(store: &dyn AuthStore) -> Result<Vec<Client>, AdminError> {
    Ok(store.list_clients().await?)
}

/// Enables or disables a client (a disabled client gets no tokens and cannot refresh).
pub async fn set_client_enabled(
    store: &dyn AuthStore,
    client_id: &str,
    enabled: bool,
) -> Result<Client, AdminError> {
    let client = store
        .set_client_active(client_id, enabled)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => AdminError::UnknownClient(client_id.to_owned()),
            other => other.into(),
        })?;
    let event_type = if enabled {
        "admin_client_enable"
    } else {
        "admin_client_disable"
    };
    audit(
        store,
        &Actor::command_line(),
        None,
        Some(&client.client_id),
        event_type,
        json!({}),
    )
    .await?;
    Ok(client)
}

/// Checks a username: 1 to [`MAX_USERNAME_CHARS`] of `[A-Za-z0-9_.@-]`.
pub fn validate_username(username: &str) -> Result<(), AdminError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-');
    let len = username.chars().count();
    if (1..=MAX_USERNAME_CHARS).contains(&len) && username.chars().all(allowed) {
        Ok(())
    } else {
        Err(AdminError::InvalidUsername(username.to_owned()))
    }
}

/// Checks an email (one `@`, text on both sides, no whitespace) and lower-cases it.
pub fn validate_email(email: &str) -> Result<String, AdminError> {
    let invalid = || AdminError::InvalidEmail(email.to_owned());
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    if local.is_empty()
        || domain.is_empty()
        || domain.contains('@')
        || email.chars().any(|c| c.is_whitespace() || c.is_control())
        || email.chars().count() > MAX_EMAIL_CHARS
    {
        return Err(invalid());
    }
    Ok(email.to_lowercase())
}

/// Turns a spec into the record to store (without the secret hash), checking every field.
fn validate_client(spec: ClientSpec) -> Result<NewClient, AdminError> {
    let invalid = |message: String| Err(AdminError::InvalidClient(message));
    let id_len = spec.client_id.chars().count();
    let id_ok = spec
        .client_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if !(3..=255).contains(&id_len) || !id_ok {
        return invalid(format!(
            "client id must be 3 to 255 characters from A-Z, a-z, 0-9, \"_\" and \"-\", got {:?}",
            spec.client_id
        ));
    }
    let name = spec.name.trim();
    if name.is_empty() || name.chars().count() > 255 {
        return invalid(format!(
            "client name must be 1 to 255 characters, got {:?}",
            spec.name
        ));
    }
    let mut grant_types = split_unique(&spec.grant_types);
    if grant_types.is_empty() {
        let first = if spec.redirect_uris.is_empty() {
            "password"
        } else {
            "authorization_code"
        };
        grant_types = vec![first.to_owned(), "refresh_token".to_owned()];
    }
    if let Some(unknown) = grant_types
        .iter()
        .find(|g| !GRANT_TYPES.contains(&g.as_str()))
    {
        return invalid(format!(
            "grant type must be one of {}, got {unknown:?}",
            GRANT_TYPES.join(", ")
        ));
    }
    let mut scopes = split_unique(&spec.scopes);
    if scopes.is_empty() {
        scopes = DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    }
    if let Some(bad) = scopes.iter().find(|s| !valid_scope(s)) {
        return invalid(format!(
            "scope must be 1 to 100 characters from A-Z, a-z, 0-9 and \"_:.-\", got {bad:?}"
        ));
    }
    let redirect_uris = unique(spec.redirect_uris);
    if let Some(bad) = redirect_uris.iter().find(|u| !valid_redirect_uri(u)) {
        // RFC 6749 §3.1.2: absolute, without a fragment.
        return invalid(format!(
            "redirect URI must be an absolute URI without a fragment (http://host/path, or app.scheme:/path), got {bad:?}"
        ));
    }
    let has = |grant: &str| grant_types.iter().any(|g| g == grant);
    if has("authorization_code") && redirect_uris.is_empty() {
        return invalid("grant type authorization_code needs at least one --redirect-uri".into());
    }
    if has("client_credentials") && !spec.confidential {
        return invalid("grant type client_credentials needs a confidential client".into());
    }
    for (what, seconds) in [
        ("access token lifetime", spec.access_token_lifetime),
        ("refresh token lifetime", spec.refresh_token_lifetime),
    ] {
        if seconds <= 0 || seconds > i64::from(i32::MAX) {
            return invalid(format!(
                "{what} must be between 1 and {} seconds, got {seconds}",
                i32::MAX
            ));
        }
    }
    Ok(NewClient {
        client_id: spec.client_id,
        secret_hash: None,
        name: name.to_owned(),
        description: spec.description.filter(|d| !d.trim().is_empty()),
        is_confidential: spec.confidential,
        allowed_scopes: scopes,
        allowed_grant_types: grant_types,
        redirect_uris,
        access_token_lifetime: spec.access_token_lifetime,
        refresh_token_lifetime: spec.refresh_token_lifetime,
    })
}

/// The original's scope-token rule: `^[a-zA-Z0-9_:.-]+$`, at most 100 characters.
fn valid_scope(scope: &str) -> bool {
    (1..=100).contains(&scope.len())
        && scope
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-'))
}

/// An absolute URI (RFC 3986 scheme, then something) with no fragment or whitespace; http(s)
/// ones need a host. Private-use schemes are allowed for native apps (RFC 8252 §7.1).
fn valid_redirect_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let clean = !uri.contains('#') && !uri.chars().any(|c| c.is_whitespace() || c.is_control());
    let host_ok = match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => rest
            .strip_prefix("//")
            .is_some_and(|r| !r.is_empty() && !r.starts_with('/')),
        _ => !rest.is_empty(),
    };
    scheme_ok && clean && host_ok
}

/// Splits space-separated entries and drops repeats, keeping the first order.
fn split_unique(entries: &[String]) -> Vec<String> {
    unique(
        entries
            .iter()
            .flat_map(|e| e.split_whitespace())
            .map(str::to_owned)
            .collect(),
    )
}

fn unique(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// A user by username (case-insensitive), never by email.
/// Now, for revocations: the admin functions run from the command line and the admin API,
/// which give them no clock, so the real one (the store's own in production).
fn wall_time() -> chrono::DateTime<Utc> {
    codelab_core::db::now_from(&codelab_core::SystemClock)
}

async fn find_by_username(store: &dyn AuthStore, username: &str) -> Result<User, AdminError> {
    match store.find_user_by_login(username).await? {
        // The lookup falls back to emails; an admin command names accounts by username only.
        Some(user) if user.username.to_lowercase() == username.to_lowercase() => Ok(user),
        _ => Err(AdminError::UnknownUser(username.to_owned())),
    }
}

fn unknown_user(error: StoreError, username: &str) -> AdminError {
    match error {
        StoreError::NotFound(_) => AdminError::UnknownUser(username.to_owned()),
        other => other.into(),
    }
}

/// One audit row for a change to `user_id` / `client_id`; `data` gains the acting
/// administrator (`actor`), and the row the caller's IP and user agent.
async fn audit(
    store: &dyn AuthStore,
    actor: &Actor,
    user_id: Option<&str>,
    client_id: Option<&str>,
    event_type: &str,
    mut data: serde_json::Value,
) -> Result<(), AdminError> {
    if let Some(fields) = data.as_object_mut() {
        fields.insert(
            "actor".to_owned(),
            json!({ "user_id": actor.user_id, "via": actor.via }),
        );
    }
    store
        .insert_audit(AuditEvent {
            user_id: user_id.map(str::to_owned),
            client_id: client_id.map(str::to_owned),
            event_type: event_type.to_owned(),
            event_data: Some(data),
            ip_address: actor.ip_address.clone(),
            user_agent: actor.user_agent.clone(),
            success: true,
            error_message: None,
        })
        .await
        .map_err(AdminError::Audit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_allow_letters_digits_and_four_marks_only() {
        for ok in ["a", "bob", "Bob_1", "eve@x.io", "a-b.c", &"x".repeat(64)] {
            assert!(validate_username(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "bob smith", "bøb", "a/b", &"x".repeat(65)] {
            assert!(validate_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails_need_one_at_with_text_around_it_and_are_lower_cased() {
        assert_eq!(
            validate_email("Bob@Example.COM").ok().as_deref(),
            Some("bob@example.com")
        );
        for bad in ["bob", "@x", "bob@", "a@b@c", "a b@c", ""] {
            assert!(validate_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn client_defaults_follow_the_redirect_uris() {
        let public = validate_client(ClientSpec::new("ide-app", "IDE")).ok();
        let public = public
            .as_ref()
            .map(|c| (&c.allowed_grant_types, &c.allowed_scopes));
        assert_eq!(
            public,
            Some((
                &vec!["password".to_owned(), "refresh_token".to_owned()],
                &vec!["api:read".to_owned(), "api:write".to_owned()]
            ))
        );
        let mut web = ClientSpec::new("web", "Web");
        web.redirect_uris = vec!["http://localhost:3000/cb".into()];
        web.scopes = vec!["api:read api:read".into(), "openid".into()];
        let web = validate_client(web).ok();
        assert_eq!(
            web.as_ref()
                .map(|c| (c.allowed_grant_types.clone(), c.allowed_scopes.clone())),
            Some((
                vec!["authorization_code".to_owned(), "refresh_token".to_owned()],
                vec!["api:read".to_owned(), "openid".to_owned()]
            ))
        );
    }

    #[test]
    fn client_specs_that_cannot_work_are_refused() {
        let refused = |edit: fn(&mut ClientSpec)| {
            let mut spec = ClientSpec::new("some-app", "Some app");
            edit(&mut spec);
            validate_client(spec).is_err()
        };
        assert!(refused(|s| s.client_id = "ab".into()));
        assert!(refused(|s| s.client_id = "has space".into()));
        assert!(refused(|s| s.name = "  ".into()));
        assert!(refused(|s| s.grant_types = vec!["implicit".into()]));
        assert!(refused(
            |s| s.grant_types = vec!["authorization_code".into()]
        ));
        assert!(refused(
            |s| s.grant_types = vec!["client_credentials".into()]
        ));
        assert!(refused(|s| s.scopes = vec!["api/read".into()]));
        assert!(refused(|s| s.redirect_uris = vec!["/relative".into()]));
        assert!(refused(
            |s| s.redirect_uris = vec!["http://x/cb#frag".into()]
        ));
        assert!(refused(|s| s.redirect_uris = vec!["http:///nohost".into()]));
        assert!(refused(|s| s.access_token_lifetime = 0));
        assert!(!refused(
            |s| s.redirect_uris = vec!["com.example.app:/oauth".into()]
        ));
        assert!(!refused(|s| {
            s.confidential = true;
            s.grant_types = vec!["client_credentials".into()];
        }));
    }
}
