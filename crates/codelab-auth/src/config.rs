//! Settings of the auth service: the original's `AUTH_SERVICE__*` names and defaults, plus the
//! ones our fixes need (public URL, trusted proxies, CORS, redirect URIs).

use std::path::PathBuf;

use axum::http::Method;
use codelab_core::config::{Environment, Secret};
use codelab_core::http::cors_layer;
use codelab_core::service::{ConfigProblem, ServiceConfig, check_http_url};

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

/// The longest clock skew `AUTH_SERVICE__TOKEN_LEEWAY` may accept, in seconds.
pub const MAX_TOKEN_LEEWAY: u64 = 60;

codelab_core::service_config! {
    /// `[auth_service]` / `AUTH_SERVICE__*`.
    pub struct Config {
        /// The address clients use (e.g. through nginx): the issuer and every metadata URL derive
        /// from it.
        pub public_url: String = "http://localhost:8003".to_owned(),
        /// `iss` of issued tokens; defaults to `public_url` (RFC 8414: the issuer is the metadata
        /// base). Set it to keep the original's `https://auth.codelab.local`.
        pub jwt_issuer: Option<String> = None,
        pub jwt_audience: String = "codelab-api".to_owned(),
        /// Default lifetimes (seconds) for clients created without their own.
        pub access_token_lifetime: i64 = 900,
        pub refresh_token_lifetime: i64 = 2_592_000,
        /// Seconds of clock skew accepted when verifying tokens.
        pub token_leeway: u64 = 30,
        /// Seconds an authorization code stays redeemable.
        pub authorization_code_lifetime: i64 = 600,
        /// `sqlite:///data/auth.db` (relative), `sqlite:////abs/auth.db`, or `postgres://...`.
        pub db_url: String = "sqlite:///data/auth.db".to_owned(),
        pub db_max_connections: u32 = 10,
        /// Redis for brute-force counters and rate limits shared by replicas; in memory when unset.
        pub redis_url: Option<String> = None,
        /// A PKCS#8 PEM key to import as the signing key (kid `key_id`) when the key set has none.
        pub private_key_path: Option<PathBuf> = None,
        /// Accepted for compatibility; the public key is always derived from the private key.
        pub public_key_path: Option<PathBuf> = None,
        /// `kid` given to an imported key.
        pub key_id: String = LEGACY_KEY_ID.to_owned(),
        /// 32 random bytes (base64 or hex) encrypting the private signing keys in the database;
        /// required outside development.
        pub key_encryption_key: Secret = Secret::default(),
        /// The key-encryption key being rotated away from: keys under it are re-encrypted under
        /// `key_encryption_key` at start.
        pub key_encryption_key_previous: Secret = Secret::default(),
        /// Password of the seeded `admin` user when it is first created; empty means a random one,
        /// printed once.
        pub master_key: Secret = Secret::default(),
        /// Secret of the seeded confidential client `codelab-internal`; empty means a random one
        /// (outside development written to `internal_client_secret_file`, never printed).
        pub internal_client_secret: Secret = Secret::default(),
        /// Where a generated `codelab-internal` secret is written once (mode 0600) outside
        /// development; an existing file is read as the secret.
        pub internal_client_secret_file: Option<PathBuf> = None,
        /// Per-IP rate limit on the token endpoint; unset means off in development, on elsewhere.
        pub enable_rate_limiting: Option<bool> = None,
        /// Token requests per IP per `rate_limit_window` seconds.
        pub rate_limit_per_ip: u32 = 5,
        pub rate_limit_window: u64 = 60,
        /// Failed logins per username before lockout (per IP: twice this).
        pub brute_force_threshold: u32 = 5,
        /// Seconds a lockout lasts (the failure counters' lifetime).
        pub brute_force_lockout_duration: u64 = 900,
        /// Peers whose `X-Forwarded-For`/`X-Real-IP` are believed: IPs or CIDRs.
        pub trusted_proxies: Vec<String> = vec!["127.0.0.1/32".to_owned(), "::1/128".to_owned()],
        /// Browser origins allowed by CORS; never `*` outside development.
        pub cors_origins: Vec<String> = Vec::new(),
        /// Redirect URIs of the seeded `codelab-web` client (exact match); empty means
        /// [`DEVELOPMENT_WEB_REDIRECT_URIS`] in development and none elsewhere.
        pub web_redirect_uris: Vec<String> = Vec::new(),
        /// Largest accepted request body.
        pub max_body_bytes: usize = 64 * 1024,
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
        // RFC 8414 §2: the issuer, derived from it, has no query or fragment.
        check_http_url("public_url", &self.public_url, &['?', '#'])?;
        cors_layer(&self.cors_origins, CORS_METHODS, environment)?;
        TrustedProxies::parse(&self.trusted_proxies).map_err(|e| ConfigProblem(e.to_string()))?;
        // A long leeway would keep expired (and revoked-by-expiry) tokens alive: bounded as
        // the gateway's `GATEWAY__JWT_LEEWAY` is.
        if self.token_leeway > MAX_TOKEN_LEEWAY {
            return Err(ConfigProblem(format!(
                "AUTH_SERVICE__TOKEN_LEEWAY must be at most {MAX_TOKEN_LEEWAY} seconds, got {}",
                self.token_leeway
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_leeway_past_a_minute_is_refused() {
        let within = Config {
            token_leeway: MAX_TOKEN_LEEWAY,
            ..Config::default()
        };
        assert!(within.validate(Environment::Development).is_ok());
        let beyond = Config {
            token_leeway: MAX_TOKEN_LEEWAY + 1,
            ..Config::default()
        };
        let problem = beyond.validate(Environment::Development).unwrap_err().0;
        assert!(problem.contains("AUTH_SERVICE__TOKEN_LEEWAY"), "{problem}");
    }

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
