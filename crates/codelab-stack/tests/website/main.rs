//! The website against the whole system in process: the console signed in through the auth
//! service, its sessions and approvals reaching the IDE through the gateway, its hardening, and
//! the console in headless Chromium. One test binary: each file is a module, so the suite
//! links once. The website alone is tested in its own crate.
#![expect(
    clippy::unwrap_used,
    reason = "a test that cannot unwrap has failed: the panic is the report"
)]

mod common;

mod browser;
mod browser_plans;
mod console;
mod hardening;
mod plans;
mod replicas;
