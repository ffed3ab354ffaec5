//! Bad input against the shipped binary as users run it (issue 17, "Bad input"; figures in
//! docs/reliability.md): schemathesis against every OpenAPI description, and oversized, deeply
//! nested and invalid-UTF-8 bodies on every route. Its own test binary, apart from `cli`, so
//! either builds while the other is being edited.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a failed unwrap is the test's report; tests own their clock, ids and tasks"
)]

#[path = "../cli/common/mod.rs"]
#[expect(
    dead_code,
    reason = "shared with the cli test binary, which uses the rest of it"
)]
mod common;

mod hostile_bodies;
mod schemathesis;
mod system;
