//! The agent runtime through its internal API, in front of the real LLM proxy (its mock model,
//! or an OpenAI-style fake behind it), on SQLite and PostgreSQL, and its process-wide metrics.
//! One test binary: each file is a module, so the suite links once. What needs the runtime
//! alone (its store, the retention job) is tested in the runtime crate
//! (`crates/codelab-agent-runtime/tests/`).
#![expect(
    clippy::unwrap_used,
    reason = "a test that cannot unwrap has failed: the panic is the report"
)]

mod common;

mod api;
mod budgets;
mod durability;
mod hitl_policy;
mod llm_client;
mod metrics;
mod plans;
mod postgres;
mod routing;
mod turns;
mod usage;
