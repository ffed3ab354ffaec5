//! Wire types of CodeLab: what crosses a process boundary, as serde types.
//!
//! This crate owns shapes only. It never performs I/O and never depends on a service crate, so
//! servers, the terminal client and tests all speak through the same definitions.

pub mod ide;
pub mod internal;
pub mod openai;
pub mod plans;
pub mod runtime;
pub mod sse;
pub mod usage;
