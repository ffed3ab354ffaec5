//! The agent runtime alone on SQLite and PostgreSQL: its store's conformance suite and the
//! retention job. One test binary: each file is a module, so the suite links once. The runtime
//! served with other services is tested in the stack crate (`crates/codelab-stack/tests/runtime/`).
#![expect(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a failed unwrap is the test's report; tests own their clock, ids and tasks"
)]

mod common;

mod pg_session_locks;
mod retention;
mod store_conformance;
