//! A whole CodeLab system in one process: the LLM proxy, the agent runtime, the auth service,
//! the gateway and the website, each on its own 127.0.0.1 listener, wired to each other, and
//! optionally a front door that routes like our nginx.
//!
//! `codelab up` runs on it, and so does every integration test and benchmark that needs more
//! than one service: the service crates never depend on each other (docs/architecture.md).
//!
//! ```no_run
//! # async fn example() -> Result<(), codelab_stack::StackError> {
//! let stack = codelab_stack::Stack::builder()
//!     .gateway_config(|config| config.ws_max_frame_bytes = 64 * 1024)
//!     .start()
//!     .await?;
//! if let Some(gateway) = &stack.gateway {
//!     println!("gateway at {}", gateway.url);
//! }
//! # Ok(()) }
//! ```

mod builder;
mod database;
mod front_door;
mod running;

pub use builder::{
    Database, DatabaseWait, GatewayAuth, InternalCalls, InternalKeys, Llm, Ports, ServiceId,
    StackBuilder,
};
pub use database::postgres_database_url;
pub use front_door::{front_door_router, strip_internal_headers};
pub use running::{Running, ServiceStopped, Stack};

/// Why a stack could not start.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A service's settings (file, `<PREFIX>__*` variables) are invalid.
    #[error("invalid {service} configuration")]
    Config {
        service: &'static str,
        #[source]
        source: codelab_core::config::ConfigError,
    },
    /// A service failed to build (its own error, unchanged).
    #[error(transparent)]
    Build(Box<dyn std::error::Error + Send + Sync>),
    /// `--postgres-url` (or [`Database::Postgres`]) is not a usable PostgreSQL URL.
    #[error("{0}")]
    PostgresUrl(String),
    /// A file of the stack (data dir, model table, key) could not be read or written.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A replica of a service the stack did not start ([`StackBuilder::only`]).
    #[error("the stack runs no {0} to replicate")]
    NotStarted(&'static str),
    /// The shutdown token fired while a service waited for its database
    /// ([`StackBuilder::wait_for_database`]): nothing was started.
    #[error("stopped while waiting for the database")]
    Stopped,
    /// The admin password (`--admin-password`) could not be set.
    #[error("cannot set the admin password")]
    AdminPassword(#[source] codelab_auth::seed::SeedError),
}

impl StackError {
    fn build(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        StackError::Build(Box::new(error))
    }

    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        StackError::Io {
            what: what.into(),
            source,
        }
    }
}
