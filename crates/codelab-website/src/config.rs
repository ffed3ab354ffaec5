//! Settings of the website (`WEBSITE__*`, TOML section `[website]`).
//!
//! Two kinds of address: the ones the website itself calls (`auth_url`, `gateway_url`, ... —
//! internal addresses, server to server) and the ones a browser is sent to (`public_url`,
//! `auth_public_url`, `gateway_public_url`), which default to the public URL because nginx
//! (and `codelab up`) serve everything from one origin.

use codelab_core::config::{Environment, Secret};
use codelab_core::service::{ConfigProblem, ServiceConfig, check_http_url};

/// The OAuth client the console signs in with (seeded by the auth service).
pub const WEB_CLIENT_ID: &str = "codelab-web";

codelab_core::service_config! {
    /// `[website]` / `WEBSITE__*`.
    pub struct Config {
        /// The address browsers use for the website (through nginx: the site's origin). The
        /// console's redirect URI is `<public_url>/console/callback`; an `https` URL makes the
        /// session cookie `Secure`.
        pub public_url: String = "http://localhost:3000".to_owned(),
        /// The auth service as the website calls it (token exchange, revocation, user admin).
        /// Unset: the console is off and only the docs are served.
        pub auth_url: Option<String> = None,
        /// The auth service as browsers reach it (the login page); defaults to `public_url`.
        pub auth_public_url: Option<String> = None,
        /// The gateway as the website calls it (REST `/api/v1`). Unset: the console is off.
        pub gateway_url: Option<String> = None,
        /// The gateway as browsers reach it (the chat's WebSocket); defaults to `public_url`.
        pub gateway_public_url: Option<String> = None,
        /// The agent runtime, for the status page only (`/health`, `/ready`, `/metrics`).
        pub agent_runtime_url: Option<String> = None,
        /// The LLM proxy, for the status page only.
        pub llm_proxy_url: Option<String> = None,
        /// Key that signs the session cookie (HMAC-SHA256) and from which the keys sealing
        /// and naming the session records derive. Empty: a random key per start (sessions end
        /// with the process); production requires a strong one, shared by replicas.
        pub session_key: Secret = Secret::default(),
        /// Seconds a console login lasts without use.
        pub session_idle_timeout: u64 = 2 * 3600,
        /// Seconds a console login lasts at most.
        pub session_max_age: u64 = 12 * 3600,
        /// Redis keeping console logins, shared by the replicas (so a restart or a rollout
        /// signs nobody out). Unset: this process's memory.
        pub redis_url: Option<String> = None,
        /// Prefix of the website's keys in Redis.
        pub redis_prefix: String = "codelab:website:".to_owned(),
        /// The OAuth client of the console.
        pub client_id: String = WEB_CLIENT_ID.to_owned(),
        /// Seconds allowed for a call to another service.
        pub request_timeout: f64 = 10.0,
        /// Seconds between two refreshes of the live status figures in the browser.
        pub status_refresh_interval: u64 = 5,
        /// Largest accepted request body.
        pub max_body_bytes: usize = 64 * 1024,
    }
}

/// `url` without a trailing slash; `None` for an empty or blank value.
pub(crate) fn base_url(url: Option<&str>) -> Option<String> {
    url.map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty())
}

impl Config {
    /// The public URL without a trailing slash.
    pub fn public_base(&self) -> String {
        self.public_url.trim().trim_end_matches('/').to_owned()
    }

    /// The console's redirect URI (must be one of `codelab-web`'s, exactly).
    pub fn redirect_uri(&self) -> String {
        format!("{}/console/callback", self.public_base())
    }

    /// Where browsers find the auth service's login page.
    pub fn auth_public_base(&self) -> String {
        base_url(self.auth_public_url.as_deref()).unwrap_or_else(|| self.public_base())
    }

    /// Where browsers open the gateway's WebSocket: `ws(s)://host[:port]`.
    pub fn gateway_ws_base(&self) -> String {
        let http =
            base_url(self.gateway_public_url.as_deref()).unwrap_or_else(|| self.public_base());
        if let Some(rest) = http.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = http.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            http
        }
    }

    /// Whether the site is served over TLS (the session cookie is then `Secure`).
    pub fn is_https(&self) -> bool {
        self.public_base().starts_with("https://")
    }

    /// Whether the console can work: it needs the auth service and the gateway.
    pub fn console_enabled(&self) -> bool {
        base_url(self.auth_url.as_deref()).is_some()
            && base_url(self.gateway_url.as_deref()).is_some()
    }
}

impl ServiceConfig for Config {
    const SECTION: &'static str = "website";
    const ENV_PREFIX: &'static str = "WEBSITE";
    const DEFAULT_PORT: u16 = 3000;

    /// Refuses settings that cannot work, and those production must never run with.
    fn validate(&self, environment: Environment) -> Result<(), ConfigProblem> {
        check_url("public_url (WEBSITE__PUBLIC_URL)", &self.public_base())?;
        for (name, url) in [
            ("auth_url (WEBSITE__AUTH_URL)", &self.auth_url),
            (
                "auth_public_url (WEBSITE__AUTH_PUBLIC_URL)",
                &self.auth_public_url,
            ),
            ("gateway_url (WEBSITE__GATEWAY_URL)", &self.gateway_url),
            (
                "gateway_public_url (WEBSITE__GATEWAY_PUBLIC_URL)",
                &self.gateway_public_url,
            ),
            (
                "agent_runtime_url (WEBSITE__AGENT_RUNTIME_URL)",
                &self.agent_runtime_url,
            ),
            (
                "llm_proxy_url (WEBSITE__LLM_PROXY_URL)",
                &self.llm_proxy_url,
            ),
        ] {
            if let Some(url) = base_url(url.as_deref()) {
                check_url(name, &url)?;
            }
        }
        if self.client_id.trim().is_empty() {
            return Err(ConfigProblem(
                "client_id (WEBSITE__CLIENT_ID) must not be empty".to_owned(),
            ));
        }
        if self.session_idle_timeout == 0 || self.session_max_age == 0 {
            return Err(ConfigProblem(
                "session_idle_timeout and session_max_age must be at least 1 second".to_owned(),
            ));
        }
        if !codelab_core::http::is_valid_timeout(self.request_timeout) {
            return Err(ConfigProblem(format!(
                "request_timeout must be a number of seconds above 0 and at most {}, got {}",
                codelab_core::http::MAX_TIMEOUT_SECS,
                self.request_timeout
            )));
        }
        if environment.is_hardened() && self.console_enabled() {
            if self.session_key.is_weak() {
                return Err(ConfigProblem(
                    "session_key (WEBSITE__SESSION_KEY) is missing, shorter than 16 characters or a \
                     published placeholder; production needs a strong key to sign console cookies"
                        .to_owned(),
                ));
            }
            if base_url(self.redis_url.as_deref()).is_none() {
                tracing::warn!(
                    "no WEBSITE__REDIS_URL: console logins are kept in this process, so a \
                     restart signs everyone out and replicas do not share them"
                );
            }
            if !self.is_https() {
                tracing::warn!(
                    public_url = %self.public_url,
                    "the website is not served over https: the session cookie is not Secure"
                );
            }
        }
        Ok(())
    }
}

fn check_url(name: &str, url: &str) -> Result<(), ConfigProblem> {
    check_http_url(name, url, &['?', '#', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 17's fuzzing): a huge timeout would make `Duration::from_secs_f64`
    /// panic at start; it is refused with the setting's name instead.
    #[test]
    fn a_request_timeout_beyond_a_day_is_refused() {
        for value in [1e300, 86_401.0, 0.0, f64::NAN] {
            let config = Config {
                request_timeout: value,
                ..Config::default()
            };
            let refused = config.validate(Environment::Development).unwrap_err();
            assert!(
                refused.0.contains("request_timeout"),
                "{value}: {}",
                refused.0
            );
        }
    }

    #[test]
    fn browser_addresses_default_to_the_public_url() {
        let config = Config {
            public_url: "https://codelab.example.com/".to_owned(),
            ..Config::default()
        };
        assert_eq!(
            config.redirect_uri(),
            "https://codelab.example.com/console/callback"
        );
        assert_eq!(config.auth_public_base(), "https://codelab.example.com");
        assert_eq!(config.gateway_ws_base(), "wss://codelab.example.com");
        assert!(config.is_https());
        assert!(!config.console_enabled());
    }

    #[test]
    fn a_separate_gateway_address_is_used_for_the_socket() {
        let config = Config {
            gateway_public_url: Some("http://127.0.0.1:8000".to_owned()),
            auth_url: Some("http://auth:8003".to_owned()),
            gateway_url: Some(" ".to_owned()),
            ..Config::default()
        };
        assert_eq!(config.gateway_ws_base(), "ws://127.0.0.1:8000");
        assert!(!config.console_enabled());
    }
}
