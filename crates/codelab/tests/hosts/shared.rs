//! The end-to-end suites' helpers (crates/codelab/tests/cli/common), of which this binary uses
//! a part.
#![allow(
    dead_code,
    reason = "the helpers are shared by several test binaries, each using part of them"
)]

#[path = "../cli/common/mod.rs"]
pub mod common;
