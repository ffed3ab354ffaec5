//! `codelab-core` owns the plumbing every CodeLab service shares: configuration loading
//! (defaults < TOML < environment < flags), secrets, tracing and Prometheus metrics, the HTTP
//! basics (error envelope, request ids, `/health` `/ready` `/metrics`, `X-Internal-Auth`,
//! body limits, graceful shutdown), database and cache connections, and injected clocks and
//! ids. It must never contain service logic or know any service's routes, tables or keys,
//! never log or serialize a secret's value, and never panic on outside input.

#![warn(missing_docs)]

pub mod cache;
pub mod clock;
pub mod config;
pub mod db;
pub mod html;
pub mod http;
pub mod ids;
pub mod memory;
pub mod service;
pub mod starting;
pub mod tasks;
pub mod telemetry;

pub use cache::{Cache, CacheError, connect_cache};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use config::{ConfigError, ConfigLoader, Environment, Secret};
pub use db::{DbError, DbOptions, DbPool, connect_database};
pub use http::{ApiError, Readiness, ServiceInfo};
pub use ids::{new_id, random_hex};
pub use service::{
    BackgroundTask, ConfigProblem, EnvVars, Listen, Service, ServiceConfig, SharedDeps,
    drain_tasks, fmt_state,
};
