//! The auth service over real HTTP and its stores on SQLite and PostgreSQL. One test binary:
//! each file is a module, so the suite links once. Tests that count or set something
//! process-wide (metrics, the password-hashing cap) run alone in a process of their own
//! ([`support::alone_in_process`]).
#![expect(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a failed unwrap is the test's report; tests own their clock, ids and tasks"
)]

mod support;

mod admin_api;
mod brute_force;
mod credential_attacks;
mod hashing_cap;
mod oauth_browser;
mod oauth_resources;
mod oauth_token;
mod storage_attacks;
mod store_conformance;
