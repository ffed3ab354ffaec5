//! One module per subcommand.

pub mod config_show;
pub mod healthcheck;
pub mod serve;
pub mod services;
pub mod up;
