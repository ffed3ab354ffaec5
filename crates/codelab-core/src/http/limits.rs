//! Limits of every HTTP listener against slow and too many clients (slowloris), common to all
//! services: the `[http]` TOML section and `HTTP__*` environment variables.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ConfigLoader};

/// TOML section of the listener limits (one for every service of the process).
pub const LISTENER_LIMITS_SECTION: &str = "http";
/// Environment prefix of the listener limits (`HTTP__HEADER_READ_TIMEOUT`, ...).
pub const LISTENER_LIMITS_ENV_PREFIX: &str = "HTTP";

/// Longest accepted timeout: a day is far beyond any honest client and keeps `Duration`
/// arithmetic far from overflow.
pub const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// Whether `secs` is a usable timeout setting: finite, above 0 and at most
/// [`MAX_TIMEOUT_SECS`] (`Duration::from_secs_f64` panics on a huge one).
pub fn is_valid_timeout(secs: f64) -> bool {
    secs.is_finite() && secs > 0.0 && secs <= MAX_TIMEOUT_SECS
}

/// How long a client may take to send a request, and how many connections are served at once.
///
/// Response streams (SSE, WebSocket) are not bounded here but by their own idle limits, so a
/// long answer is never cut by these timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenerLimits {
    /// Seconds to receive a request's headers, counted from the connection's start or the end
    /// of the previous response (so it also closes idle keep-alive connections).
    pub header_read_timeout: f64,
    /// Seconds to receive a request's whole body once its headers have arrived.
    pub body_read_timeout: f64,
    /// Connections served at once by one listener; further ones wait in the kernel's accept
    /// backlog (they are not refused) until one closes.
    pub max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: 10.0,
            body_read_timeout: 60.0,
            max_connections: 10_000,
        }
    }
}

impl ListenerLimits {
    /// Loads the `[http]` section and `HTTP__*` variables through `loader`, then validates them.
    pub fn load(loader: &ConfigLoader) -> Result<Self, ConfigError> {
        let limits: Self = loader.load(LISTENER_LIMITS_SECTION, LISTENER_LIMITS_ENV_PREFIX, &())?;
        limits.validate()?;
        Ok(limits)
    }

    /// Refuses limits a listener cannot work with: non-positive or huge timeouts, no connections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("HTTP__HEADER_READ_TIMEOUT", self.header_read_timeout),
            ("HTTP__BODY_READ_TIMEOUT", self.body_read_timeout),
        ] {
            if !is_valid_timeout(value) {
                return Err(ConfigError::InvalidValue {
                    key: key.to_owned(),
                    origin: "configuration".to_owned(),
                    message: format!(
                        "expected a number of seconds above 0 and at most {MAX_TIMEOUT_SECS}, found {value}"
                    ),
                });
            }
        }
        if self.max_connections == 0 {
            return Err(ConfigError::InvalidValue {
                key: "HTTP__MAX_CONNECTIONS".to_owned(),
                origin: "configuration".to_owned(),
                message: "expected at least 1, found 0".to_owned(),
            });
        }
        Ok(())
    }

    /// The header-read timeout as a duration (the default when the value is unusable).
    pub fn header_read_timeout(&self) -> Duration {
        seconds_or(
            self.header_read_timeout,
            Self::default().header_read_timeout,
        )
    }

    /// The body-read timeout as a duration (the default when the value is unusable).
    pub fn body_read_timeout(&self) -> Duration {
        seconds_or(self.body_read_timeout, Self::default().body_read_timeout)
    }

    /// The connection cap, at least 1.
    pub fn max_connections(&self) -> usize {
        self.max_connections.max(1)
    }
}

/// `secs` as a duration when it is a valid timeout, else `fallback` seconds.
fn seconds_or(secs: f64, fallback: f64) -> Duration {
    if is_valid_timeout(secs) {
        Duration::from_secs_f64(secs)
    } else {
        Duration::from_secs_f64(fallback)
    }
}
