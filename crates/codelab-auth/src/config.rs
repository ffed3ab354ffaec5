//! Settings of the auth service: the original's `AUTH_SERVICE__*` names and defaults, plus the
//! ones our fixes need (public URL, trusted proxies, CORS, redirect URIs).

use std::path::PathBuf;

use axum::http::Method;
use codelab_core::config::{Environment, Secret};
use codelab_core::http::cors_layer;
use codelab_core::service::{ConfigProblem, Listen, ServiceConfig};
use serde::{Deserialize, Serialize};

use crate::limits::TrustedProxies;

/// `kid` of a key imported from `AUTH_SERVICE__PRIVATE_KEY_PATH` (the original's constant).
pub const LEGACY_KEY_ID: &str = "2024-01-key-1";
/// Redirect URIs of the seeded `codelab-web` client in development when none are configured:
/// the console on the usual local addresses. Elsewhere the default is none (docs/auth.md).
pub const DEVELOPMENT_WEB_REDIRECT_URIS: &[&str] = &[
    "http://127.0.0.1:8080/console/callback",
    "http://localhost:8080/console/callback",
    "http://localhost/console/callback",
    "http://127.0.0.1/console/callback",
    "http://localhost:3000/console/callback",
];

/// `[auth_service]` / `AUTH_SERVICE__*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `AUTH_SERVICE__PORT`; wins over plain `PORT`.
    pub port: Option<u16>,
    pub host: String,
    /// The address clients use (e.g. through nginx): the issuer and every metadata URL derive
    /// from it.
    pub public_url: String,
    /// `iss` of issued tokens; defaults to `public_url` (RFC 8414: the issuer is the metadata
    /// base). Set it to keep the original's `https://auth.codelab.local`.
    pub jwt_issuer: Option<String>,
    pub jwt_audience: String,
    /// Default lifetimes (seconds) for clients created without their own.
    pub access_token_lifetime: i64,
    pub refresh_token_lifetime: i64,
    /// Seconds of clock skew accepted when verifying tokens.
    pub token_leeway: u64,
    /// Seconds an authorization code stays redeemable.
    pub authorization_code_lifetime: i64,
    /// `sqlite:///data/auth.db` (relative), `sqlite:////abs/auth.db`, or `postgres://...`.
    pub db_url: String,
    pub db_max_connections: u32,
    /// Redis for brute-force counters and rate limits shared by replicas; in memory when unset.
    pub redis_url: Option<String>,
    /// A PKCS#8 PEM key to import as the signing key (kid `key_id`) when the key set has none.
    pub private_key_path: Option<PathBuf>,
    /// Accepted for compatibility; the public key is always derived from the private key.
    pub public_key_path: Option<PathBuf>,
    /// `kid` given to an imported key.
    pub key_id: String,
    /// 32 random bytes (base64 or hex) encrypting the private signing keys in the database;
    /// required outside development.
    pub key_encryption_key: Secret,
    /// The key-encryption key being rotated away from: keys under it are re-encrypted under
    /// `key_encryption_key` at start.
    pub key_encryption_key_previous: Secret,
    /// Password of the seeded `admin` user when it is first created; empty means a random one,
    /// printed once.
    pub master_key: Secret,
    /// Secret of the seeded confidential client `codelab-internal`; empty means a random one
    /// (outside development written to `internal_client_secret_file`, never printed).
    pub internal_client_secret: Secret,
    /// Where a generated `codelab-internal` secret is written once (mode 0600) outside
    /// development; an existing file is read as the secret.
    pub internal_client_secret_file: Option<PathBuf>,
    /// Per-IP rate limit on the token endpoint; unset means off in development, on elsewhere.
    pub enable_rate_limiting: Option<bool>,
    /// Token requests per IP per `rate_limit_window` seconds.
    pub rate_limit_per_ip: u32,
    pub rate_limit_window: u64,
    /// Failed logins per username before lockout (per IP: twice this).
    pub brute_force_threshold: u32,
    /// Seconds a lockout lasts (the failure counters' lifetime).
    pub brute_force_lockout_duration: u64,
    /// Peers whose `X-Forwarded-For`/`X-Real-IP` are believed: IPs or CIDRs.
    pub trusted_proxies: Vec<String>,
    /// Browser origins allowed by CORS; never `*` outside development.
    pub cors_origins: Vec<String>,
    /// Redirect URIs of the seeded `codelab-web` client (exact match); empty means
    /// [`DEVELOPMENT_WEB_REDIRECT_URIS`] in development and none elsewhere.
    pub web_redirect_uris: Vec<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    pub log_level: String,
    pub version: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: None,
            host: "0.0.0.0".to_owned(),
            public_url: "http://localhost:8003".to_owned(),
            jwt_issuer: None,
            jwt_audience: "codelab-api".to_owned(),
            access_token_lifetime: 900,
            refresh_token_lifetime: 2_592_000,
            token_leeway: 30,
            authorization_code_lifetime: 600,
            db_url: "sqlite:///data/auth.db".to_owned(),
            db_max_connections: 10,
            redis_url: None,
            private_key_path: None,
            public_key_path: None,
            key_id: LEGACY_KEY_ID.to_owned(),
            key_encryption_key: Secret::default(),
            key_encryption_key_previous: Secret::default(),
            master_key: Secret::default(),
            internal_client_secret: Secret::default(),
            internal_client_secret_file: None,
            enable_rate_limiting: None,
            rate_limit_per_ip: 5,
            rate_limit_window: 60,
            brute_force_threshold: 5,
            brute_force_lockout_duration: 900,
            trusted_proxies: vec!["127.0.0.1/32".to_owned(), "::1/128".to_owned()],
            cors_origins: Vec::new(),
            web_redirect_uris: Vec::new(),
            max_body_bytes: 64 * 1024,
            log_level: "INFO".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

impl Config {
    /// The `iss` of issued tokens.
    pub fn issuer(&self) -> String {
        self.jwt_issuer
            .clone()
            .unwrap_or_else(|| self.public_url.trim_end_matches('/').to_owned())
    }

    /// The `codelab-web` client's redirect URIs: the configured ones, else the local console
    /// addresses in development only (a loopback callback elsewhere would let whoever runs a
    /// server on a user's machine receive that user's codes).
    pub fn effective_web_redirect_uris(&self, environment: Environment) -> Vec<String> {
        let configured: Vec<String> = self
            .web_redirect_uris
            .iter()
            .map(|uri| uri.trim())
            .filter(|uri| !uri.is_empty())
            .map(str::to_owned)
            .collect();
        if !configured.is_empty() || environment.is_hardened() {
            return configured;
        }
        DEVELOPMENT_WEB_REDIRECT_URIS
            .iter()
            .map(|uri| (*uri).to_owned())
            .collect()
    }

    /// Whether the per-IP limit applies: the setting, else off only in development (as the
    /// original's Compose file has it).
    pub fn rate_limiting_enabled(&self, environment: Environment) -> bool {
        self.enable_rate_limiting
            .unwrap_or(environment != Environment::Development)
    }
}

/// Methods browsers may use across origins (`cors_origins`).
pub const CORS_METHODS: &[Method] = &[Method::GET, Method::POST];

impl ServiceConfig for Config {
    const SECTION: &'static str = "auth_service";
    const ENV_PREFIX: &'static str = "AUTH_SERVICE";
    const DEFAULT_PORT: u16 = 8003;

    /// Refuses a public URL, CORS origins or trusted proxies that cannot work, so a bad
    /// setting stops startup rather than the first request.
    fn validate(&self, environment: Environment) -> Result<(), ConfigProblem> {
        check_public_url(&self.public_url)?;
        cors_layer(&self.cors_origins, CORS_METHODS, environment)?;
        TrustedProxies::parse(&self.trusted_proxies).map_err(|e| ConfigProblem(e.to_string()))?;
        Ok(())
    }

    fn listen(&self) -> Listen<'_> {
        Listen::new(&self.host, self.port, &self.log_level)
    }
}

/// Checks that `public_url` is an absolute http(s) URL without query or fragment (RFC 8414
/// §2: the issuer has none).
fn check_public_url(url: &str) -> Result<(), ConfigProblem> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && !url.contains(['?', '#'])
        && url.len() > "https://".len();
    if ok {
        Ok(())
    } else {
        Err(ConfigProblem(format!(
            "public_url must be an absolute http(s) URL without query or fragment, got {url:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_web_redirect_uris_are_local_in_development_only() {
        let config = Config::default();
        let development = config.effective_web_redirect_uris(Environment::Development);
        assert!(development.iter().any(|uri| uri.contains("localhost")));
        for environment in [Environment::Staging, Environment::Production] {
            assert_eq!(
                config.effective_web_redirect_uris(environment),
                Vec::<String>::new(),
                "{environment}"
            );
        }
        let configured = Config {
            web_redirect_uris: vec!["https://codelab.example.com/console/callback".into()],
            ..Config::default()
        };
        for environment in [Environment::Development, Environment::Production] {
            assert_eq!(
                configured.effective_web_redirect_uris(environment),
                ["https://codelab.example.com/console/callback"]
            );
        }
    }
}
