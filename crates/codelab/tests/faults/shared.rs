//! The helpers of crates/codelab/tests/cli/common, shared by several test binaries.
#![allow(dead_code, reason = "each test binary uses part of the shared helpers")]

#[path = "../cli/common/mod.rs"]
pub mod common;
