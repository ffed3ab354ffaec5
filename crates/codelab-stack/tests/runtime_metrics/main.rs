//! The runtime's process-wide metrics, in a test binary of their own: the metrics recorder is
//! global to the process, so another runtime in the same process (a parallel test under
//! `cargo test`) would set the same gauge from its own database.
#![expect(
    clippy::unwrap_used,
    reason = "a test that cannot unwrap has failed: the panic is the report"
)]

// The runtime suite's setup, shared rather than copied; this one test uses a small part.
#[path = "../runtime/common/mod.rs"]
#[expect(
    dead_code,
    reason = "the runtime suite's helpers this test does not need"
)]
mod common;

mod pending_approvals_metric;
