//! `codelab config show`: the effective configuration with secrets redacted.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;

use super::services::{
    ListenOverrides, agent_runtime_config, auth_config, gateway_config, llm_proxy_config,
    website_config,
};

/// `codelab config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration of every service (defaults < file < environment);
    /// secrets print as "[redacted]".
    Show,
}

#[derive(Serialize)]
struct Effective {
    environment: String,
    llm_proxy: codelab_llm_proxy::Config,
    auth_service: codelab_auth::Config,
    agent_runtime: codelab_agent_runtime::Config,
    gateway: codelab_gateway::Config,
    website: codelab_website::Config,
}

/// Prints the configuration as TOML.
pub fn run(file: Option<PathBuf>, command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Show => {
            let (llm_proxy, environment) =
                llm_proxy_config(file.clone(), &ListenOverrides::default())?;
            let (auth_service, _) = auth_config(file.clone(), &ListenOverrides::default())?;
            let (agent_runtime, _) =
                agent_runtime_config(file.clone(), &ListenOverrides::default())?;
            let (gateway, _) = gateway_config(file.clone(), &ListenOverrides::default())?;
            let (website, _) = website_config(file, &ListenOverrides::default())?;
            let effective = Effective {
                environment: environment.as_str().to_owned(),
                llm_proxy,
                auth_service,
                agent_runtime,
                gateway,
                website,
            };
            let text =
                toml::to_string_pretty(&effective).context("cannot render the configuration")?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
