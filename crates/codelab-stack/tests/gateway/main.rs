//! The gateway's integration tests, against the whole stack in process (the real auth service,
//! agent runtime and LLM proxy with its mock model): one test binary, one module per area.
#![expect(
    clippy::unwrap_used,
    reason = "a test that cannot unwrap has failed: the panic is the report"
)]

mod common;

mod auth;
mod e2e;
mod plans;
mod rest;
mod security;
mod ws;
mod ws_limits;
