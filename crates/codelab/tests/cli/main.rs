//! The shipped `codelab` binary as users and operators run it, one module per area; one test
//! binary, so CI links it once.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a failed unwrap is the test's report; tests own their clock, ids and tasks"
)]

mod common;

mod admin_cli;
mod auth_cli;
mod auth_flood_up;
mod chat_cli;
mod config_reference;
mod deploy_compose;
mod deploy_metrics;
mod deploy_nginx;
mod deploy_security;
mod deploy_validation;
mod e2e_nginx;
mod gateway_cli;
mod migrate_cli;
mod runtime_durability;
mod serve_cli;
mod staging_refusals;
mod up_runtime_key;
mod website_cli;
