//! HTTP plumbing shared by every service: the error envelope, `/health` `/ready` `/metrics`,
//! `X-Internal-Auth`, request ids, tracing and metrics layers, body limits and serving with
//! listener limits (header and body read timeouts, a connection cap).

mod auth;
mod cookies;
mod cors;
mod envelope;
mod error;
mod health;
mod in_process;
mod layers;
mod limits;
pub mod openapi;
mod serve;

use std::time::Instant;

pub use auth::{
    INTERNAL_AUTH_HEADER, InternalAuth, InternalAuthLayer, internal_auth_layer,
    require_internal_auth,
};
pub use cookies::cookie_value;
pub use cors::{cors_layer, with_cors};
pub use envelope::{ErrorEnvelope, ErrorShape, ServiceErrorShape, log_error};
pub use error::{ApiError, ApiJson, json_rejection_to_api_error};
pub use health::{READY_CHECK_TIMEOUT, Readiness, ReadinessReport, common_routes};
pub use in_process::{LocalRoute, LocalRoutes, ServiceClient};
pub use layers::{REQUEST_ID_HEADER, with_standard_layers};
pub use limits::{
    LISTENER_LIMITS_ENV_PREFIX, LISTENER_LIMITS_SECTION, ListenerLimits, MAX_TIMEOUT_SECS,
    is_valid_timeout,
};
pub use serve::{serve, serve_with_limits, shutdown_on_signals};

/// Whether `host` (a URL's host: a name, an IPv4 address, or an IPv6 address with or without
/// brackets) is this machine's loopback: `localhost`, `127.0.0.0/8` or `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Who is answering: the service's name (as in `codelab serve <name>`), version and start time.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// Service name, e.g. `llm-proxy`.
    pub name: &'static str,
    /// Version reported by `/health` and `codelab_build_info`.
    pub version: String,
    /// When the service started (for the uptime gauge).
    pub started_at: Instant,
    /// The wire shape of the service's errors, used by the shared layers' 413 and 408.
    pub error_shape: ErrorShape,
}

impl ServiceInfo {
    /// Describes service `name` at `version`, started now.
    pub fn new(name: &'static str, version: impl Into<String>) -> Self {
        Self {
            name,
            version: version.into(),
            started_at: Instant::now(),
            error_shape: ErrorShape::default(),
        }
    }

    /// Answers the shared layers' errors (413, 408) in `shape`.
    #[must_use]
    pub fn with_error_shape(mut self, shape: ErrorShape) -> Self {
        self.error_shape = shape;
        self
    }

    /// The metric name prefix, `codelab_<name>` with dashes as underscores (`codelab_llm_proxy`).
    pub fn metric_prefix(&self) -> String {
        format!("codelab_{}", self.name.replace('-', "_"))
    }

    /// A full metric name for this service: `codelab_<name>_<suffix>`.
    pub fn metric_name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.metric_prefix())
    }
}

#[cfg(test)]
mod tests;
