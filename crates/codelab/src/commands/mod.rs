//! One module per subcommand.

pub mod admin;
pub mod budget;
pub mod chat;
pub mod config_show;
pub mod healthcheck;
pub mod keys;
pub mod migrate;
pub mod serve;
pub mod services;
pub mod up;
