//! `codelab`: one binary for every CodeLab service and its administration.
//!
//! This crate only parses the command line and wires the service libraries together; behaviour
//! lives in the libraries.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// CodeLab: a self-hostable backend for AI coding assistants.
#[derive(Debug, Parser)]
#[command(name = "codelab", version, about)]
struct Cli {
    /// TOML configuration file (sections `[llm_proxy]`, ...); also `CODELAB_CONFIG`.
    #[arg(long, global = true, env = "CODELAB_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system in one process with embedded defaults.
    Up(commands::up::UpArgs),
    /// Run one service (for containers and Kubernetes).
    Serve(commands::serve::ServeArgs),
    /// Inspect the effective configuration.
    Config {
        #[command(subcommand)]
        command: commands::config_show::ConfigCommand,
    },
    /// Manage the auth service's users and OAuth clients (works while the server runs).
    Admin(commands::admin::AdminArgs),
    /// Check a service's health endpoint; exit code 0 when healthy (container health checks).
    Healthcheck(commands::healthcheck::HealthcheckArgs),
    /// Manage the auth service's RSA signing keys (generate a pair, rotate the active key).
    Keys {
        #[command(subcommand)]
        command: commands::keys::KeysCommand,
    },
    /// Create each service's database when missing and apply its migrations (before a rollout).
    Migrate(commands::migrate::MigrateArgs),
    /// The terminal IDE: chat with an agent that works in a workspace folder.
    Chat(commands::chat::ChatArgs),
    /// Log in to a CodeLab server and keep the tokens for `codelab chat`.
    Login(commands::chat::LoginArgs),
    /// Revoke and delete the saved login of a server.
    Logout(commands::chat::LogoutArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => commands::up::run(cli.config, args).await,
            Command::Serve(args) => commands::serve::run(cli.config, args).await,
            Command::Config { command } => commands::config_show::run(cli.config, command),
            Command::Admin(args) => commands::admin::run(cli.config, args).await,
            Command::Healthcheck(args) => commands::healthcheck::run(args).await,
            Command::Keys { command } => commands::keys::run(cli.config, command).await,
            Command::Migrate(args) => commands::migrate::run(cli.config, args).await,
            Command::Chat(args) => commands::chat::chat(args).await,
            Command::Login(args) => commands::chat::login(args).await,
            Command::Logout(args) => commands::chat::logout(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
