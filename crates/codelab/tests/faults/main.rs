//! Faults end to end: PostgreSQL, Redis and an LLM provider failing under the services (see
//! docs/reliability.md, "Faults"). Its own test binary, so it builds and runs apart from `cli`.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a failed unwrap is the test's report; tests own their clock, ids and tasks"
)]

mod shared;
use shared::common;

mod clock_skew;
mod dependencies;
mod full_disk;
mod llm;
mod load;
mod private_postgres;
mod replica;
mod stack;
mod up_waits;
