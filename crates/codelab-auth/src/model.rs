//! Domain records of the auth service, as stored and as handlers use them.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// The scope that makes a token an administrator's (granted only to users created with `--admin`).
pub const ADMIN_SCOPE: &str = "api:admin";

/// A user account.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct User {
    /// UUID string (the token's `sub`).
    pub id: String,
    pub username: String,
    /// Stored lower-cased; optional.
    pub email: Option<String>,
    /// argon2id PHC string, or a bcrypt hash imported from the original database.
    #[serde(skip)]
    pub password_hash: String,
    pub is_active: bool,
    pub is_admin: bool,
    pub is_verified: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

/// What is needed to create a user (the id and timestamps are assigned by the store).
#[derive(Debug, Clone, PartialEq)]
pub struct NewUser {
    pub username: String,
    pub email: Option<String>,
    pub password_hash: String,
    pub is_admin: bool,
}

/// An OAuth client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Client {
    pub client_id: String,
    /// argon2id or bcrypt hash of the secret; `None` for public clients.
    #[serde(skip)]
    pub secret_hash: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub is_confidential: bool,
    pub allowed_scopes: Vec<String>,
    /// `password`, `refresh_token`, `authorization_code`, `client_credentials`.
    pub allowed_grant_types: Vec<String>,
    /// Exact redirect URIs for the authorization-code flow.
    pub redirect_uris: Vec<String>,
    /// Seconds.
    pub access_token_lifetime: i64,
    /// Seconds.
    pub refresh_token_lifetime: i64,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Client {
    /// Whether the client may use `grant_type`.
    pub fn allows_grant(&self, grant_type: &str) -> bool {
        self.allowed_grant_types.iter().any(|g| g == grant_type)
    }
}

/// What is needed to create a client.
#[derive(Debug, Clone, PartialEq)]
pub struct NewClient {
    pub client_id: String,
    pub secret_hash: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub is_confidential: bool,
    pub allowed_scopes: Vec<String>,
    pub allowed_grant_types: Vec<String>,
    pub redirect_uris: Vec<String>,
    pub access_token_lifetime: i64,
    pub refresh_token_lifetime: i64,
}

/// A stored refresh token: only the SHA-256 of its `jti` is kept, never the token.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshTokenRecord {
    /// sha256 hex of the token's `jti`.
    pub jti_hash: String,
    /// The rotation chain this token belongs to: the `jti_hash` of the chain's first token
    /// (the login that started it). Reuse of a rotated token revokes the whole family.
    pub family_id: String,
    pub user_id: String,
    pub client_id: String,
    pub scope: String,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
    pub revoked_at: Option<DateTime<Utc>>,
    pub parent_jti_hash: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A refresh-token rotation as a verified refresh JWT asks for it: the stored token of
/// `old_jti_hash` is replaced by its child only while the row agrees with what the JWT claims
/// (user, client, scope), so the grant can sign before it touches the database and then write
/// once (docs/auth.md, "Tokens and keys").
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    /// sha256 hex of the presented token's `jti`.
    pub old_jti_hash: String,
    /// The presented token's `sub`.
    pub user_id: String,
    /// The presented token's `client_id` (already checked against the calling client).
    pub client_id: String,
    /// The presented token's `scope`, which the child keeps (RFC 6749 §6).
    pub scope: String,
    /// sha256 hex of the child's `jti`.
    pub new_jti_hash: String,
    /// The child's `exp`.
    pub new_expires_at: DateTime<Utc>,
}

/// Result of an atomic refresh-token rotation.
#[derive(Debug, Clone, PartialEq)]
pub enum RotateOutcome {
    /// The old token was active and is now revoked; the new one is stored.
    Rotated { old: RefreshTokenRecord },
    /// No token with that hash.
    NotFound,
    /// The token was already revoked (reuse, or a concurrent rotation won); nothing changed.
    AlreadyRevoked { old: RefreshTokenRecord },
    /// The token is past `expires_at`; nothing changed.
    Expired { old: RefreshTokenRecord },
    /// The token is active but belongs to another user, client or scope than the rotation
    /// says, or its user is disabled or gone; nothing changed.
    Mismatch { old: RefreshTokenRecord },
}

/// A pending authorization code (RFC 6749 §4.1, PKCE RFC 7636): only its hash is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationCode {
    /// sha256 hex of the code.
    pub code_hash: String,
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub scope: String,
    /// S256 challenge (base64url of SHA-256 of the verifier).
    pub code_challenge: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// One audit row. Never carries a secret, password or token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    /// `login_success`, `login_failed`, `token_refresh`, `refresh_reuse_detected`,
    /// `token_revoke`, `admin_user_add`, ...
    pub event_type: String,
    pub event_data: Option<serde_json::Value>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub success: bool,
    pub error_message: Option<String>,
}

/// A stored audit row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub id: String,
    pub created_at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// An RSA signing key of the key set (shared by every replica through the database).
#[derive(Debug, Clone, PartialEq)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// PKCS#8 PEM.
    pub private_key_pem: String,
    /// SPKI PEM.
    pub public_key_pem: String,
    pub created_at: DateTime<Utc>,
    /// Set when a newer key took over signing.
    pub retired_at: Option<DateTime<Utc>>,
    /// A retired key stays in the JWKS until then (the longest lifetime of a token it signed).
    pub publish_until: Option<DateTime<Utc>>,
}
