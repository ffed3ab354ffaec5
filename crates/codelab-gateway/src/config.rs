//! Settings of the gateway: the original's `GATEWAY__*` names and defaults, plus the WebSocket
//! limits and authentication modes the original documented but never read.

use axum::http::Method;
use codelab_core::config::{Environment, Secret};
use codelab_core::http::cors_layer;
use codelab_core::service::{ConfigProblem, ServiceConfig};
use serde::{Deserialize, Serialize};

/// How WebSocket connections authenticate (`GATEWAY__WS_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WsAuthMode {
    /// A Bearer token is required (header, `access_token` query parameter, or the
    /// `Sec-WebSocket-Protocol` bearer form).
    Required,
    /// Without a token a connection may attach only to an existing session (its id is an
    /// unguessable capability created by an authenticated user) and send only what the
    /// Flutter IDE sends. The Flutter IDE, which cannot send a token, works this way.
    Session,
    /// Development without auth: sessions are created on first use.
    Off,
}

impl WsAuthMode {
    /// The mode when `GATEWAY__WS_AUTH` is unset: `session` in development (the Flutter IDE
    /// connects unchanged), `required` everywhere else, because there a session id must not
    /// act as a bearer credential (docs/websocket-protocol.md, "Authentication").
    pub fn default_for(environment: Environment) -> Self {
        if environment.is_hardened() {
            Self::Required
        } else {
            Self::Session
        }
    }
}

codelab_core::service_config! {
    /// `[gateway]` / `GATEWAY__*`.
    pub struct Config {
        /// Base URL of the agent runtime.
        pub agent_url: String = "http://localhost:8001".to_owned(),
        /// Sent to the runtime as `X-Internal-Auth` (the runtime's key; never accepted here).
        pub internal_api_key: Secret = Secret::new("change-me-internal-key"),
        /// Accepted from service callers as `X-Internal-Auth` (with `X-Codelab-User-Id`); empty:
        /// no service callers at all. Its own key, so the runtime's key opens nothing here.
        pub service_api_key: Secret = Secret::default(),
        /// Base URL of the auth service (JWKS at `<url>/.well-known/jwks.json`).
        pub auth_service_url: String = "http://auth-service:8003".to_owned(),
        /// `true`: REST calls need a Bearer JWT (or the internal key); `false` (development only):
        /// calls without a token act as the development user.
        pub use_jwt_auth: bool = true,
        /// Expected `iss` of tokens.
        pub jwt_issuer: String = "https://auth.codelab.local".to_owned(),
        /// Expected `aud` of tokens.
        pub jwt_audience: String = "codelab-api".to_owned(),
        /// Seconds of clock skew accepted.
        pub jwt_leeway: u64 = 30,
        /// Seconds the JWKS is cached.
        pub jwks_cache_ttl: u64 = 3600,
        /// `None`: [`WsAuthMode::default_for`] the environment, resolved by `build`; read it
        /// through [`Config::ws_auth_mode`].
        pub ws_auth: Option<WsAuthMode> = None,
        /// Browser origins (besides the gateway's own and `cors_origins`) allowed to open a
        /// WebSocket; an upgrade without `Origin` (native clients) is always allowed.
        pub ws_allowed_origins: Vec<String> = Vec::new(),
        /// Seconds between protocol pings; a peer that misses two is closed.
        pub ws_heartbeat_interval: u64 = 30,
        /// Seconds to wait for the close handshake.
        pub ws_close_timeout: u64 = 10,
        /// Largest accepted WebSocket message (the Flutter IDE sends whole files).
        pub ws_max_frame_bytes: usize = 16 * 1024 * 1024,
        /// Messages per second one socket may send (burst of the same size).
        pub ws_max_messages_per_second: u32 = 20,
        /// Frames waiting to be written to one socket (its events and its own frames) before it
        /// counts as a slow consumer and is closed with 1013; without a bound a client that stops
        /// reading would make the gateway buffer its session's whole stream.
        pub ws_max_queued_frames: usize = 1024,
        /// Bytes waiting to be written to one socket before it is closed with 1013 (see
        /// `ws_max_queued_frames`).
        pub ws_max_queued_bytes: usize = 8 * 1024 * 1024,
        /// Open WebSockets one user may hold on this gateway process; more are refused with 429
        /// (0: no cap).
        pub ws_max_sockets_per_user: usize = 256,
        /// Seconds of silence allowed between two events of a runtime stream.
        pub agent_stream_timeout: f64 = 300.0,
        /// Seconds allowed for a REST call to the runtime.
        pub request_timeout: f64 = 30.0,
        /// Redis for fan-out of events to the replica holding a session's socket.
        pub redis_url: Option<String> = None,
        /// Prefix of the fan-out's Redis channels: deployments sharing one Redis keep apart.
        pub redis_prefix: String = "codelab:gateway:".to_owned(),
        /// Browser origins allowed by CORS.
        pub cors_origins: Vec<String> = Vec::new(),
        pub max_body_bytes: usize = 1024 * 1024,
    }
}

impl Config {
    /// The effective WebSocket authentication mode. `build` fills in the environment's
    /// default; a config that skipped `build` gets the strict mode.
    pub fn ws_auth_mode(&self) -> WsAuthMode {
        self.ws_auth.unwrap_or(WsAuthMode::Required)
    }
}

/// Methods browsers may use across origins (`cors_origins`).
pub const CORS_METHODS: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

impl ServiceConfig for Config {
    const SECTION: &'static str = "gateway";
    const ENV_PREFIX: &'static str = "GATEWAY";
    const DEFAULT_PORT: u16 = 8000;

    /// Refuses settings that cannot work, and those staging and production must never run with.
    fn validate(&self, environment: Environment) -> Result<(), ConfigProblem> {
        let problem = |text: &str| Err(ConfigProblem::new(text));
        let ws_auth = self
            .ws_auth
            .unwrap_or_else(|| WsAuthMode::default_for(environment));
        if environment.is_hardened() {
            if !self.use_jwt_auth {
                return problem(
                    "use_jwt_auth = false (GATEWAY__USE_JWT_AUTH) lets anyone act as the development \
                     user; it is refused outside ENVIRONMENT=development",
                );
            }
            if ws_auth == WsAuthMode::Off {
                return problem(
                    "ws_auth = off (GATEWAY__WS_AUTH) accepts unauthenticated sockets; it is refused \
                     outside ENVIRONMENT=development (use required, or session for the Flutter IDE)",
                );
            }
            if self.internal_api_key.is_weak() {
                return problem(
                    "internal_api_key (GATEWAY__INTERNAL_API_KEY) is missing, shorter than 16 \
                     characters or a published placeholder; staging and production need a strong key",
                );
            }
            if !self.service_api_key.is_empty() && self.service_api_key.is_weak() {
                return problem(
                    "service_api_key (GATEWAY__SERVICE_API_KEY) is shorter than 16 characters or a \
                     published placeholder; set a strong key (openssl rand -hex 32) or leave it empty \
                     to accept no service callers",
                );
            }
        }
        if self.internal_api_key.is_empty() {
            return problem("internal_api_key (GATEWAY__INTERNAL_API_KEY) must not be empty");
        }
        // A leaked runtime key must not also let its holder act as any user here (issue 14,
        // finding 6; docs/gateway.md "Service callers").
        if !self.service_api_key.is_empty()
            && self
                .service_api_key
                .matches(self.internal_api_key.expose().as_bytes())
        {
            return problem(
                "service_api_key (GATEWAY__SERVICE_API_KEY) must differ from internal_api_key \
                 (GATEWAY__INTERNAL_API_KEY), the key the gateway sends to the runtime",
            );
        }
        crate::ws::origin::validate_allowed_origins(&self.ws_allowed_origins, environment)
            .map_err(ConfigProblem)?;
        let auth_url = self.auth_service_url.trim();
        if !(auth_url.starts_with("http://") || auth_url.starts_with("https://")) {
            return Err(ConfigProblem(format!(
                "auth_service_url must be an http(s) URL, got {auth_url:?}"
            )));
        }
        if self.jwt_issuer.trim().is_empty() || self.jwt_audience.trim().is_empty() {
            return problem("jwt_issuer and jwt_audience must not be empty");
        }
        if self.jwt_leeway > crate::MAX_JWT_LEEWAY {
            return Err(ConfigProblem(format!(
                "jwt_leeway must be at most {} seconds, got {}",
                crate::MAX_JWT_LEEWAY,
                self.jwt_leeway
            )));
        }
        // Checked here so a bad origin stops startup rather than the first request.
        cors_layer(&self.cors_origins, CORS_METHODS, environment)?;
        Ok(())
    }
}
