//! `codelab admin ...`: users and OAuth clients of the auth service, straight in its database.
//!
//! Safe while the server runs: SQLite is opened in WAL mode with a busy timeout and every
//! change is one short transaction. Passwords are read from stdin, never from arguments
//! (which other local users can see in the process list).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use codelab_auth::AuthService;
use codelab_auth::admin::{self, ClientSpec};
use codelab_auth::model::{Client, User};
use codelab_auth::store::{AuthStore, open_store};
use codelab_core::db::{DbOptions, DbPool, connect_database, redact_database_url};

use super::budget::{self, BudgetCommand};
use super::services::load_section;

/// The data directory of `codelab up` when none is given.
const DEFAULT_DATA_DIR: &str = "./.codelab";
/// The auth database's file inside a data directory (as `codelab up` lays it out).
const AUTH_DB_FILE: &str = "auth.db";

/// Arguments of `codelab admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Data directory holding auth.db and agent_runtime.db (as for `codelab up`). Without it:
    /// the configured AUTH_SERVICE__DB_URL / AGENT_RUNTIME__DB_URL when set, else ./.codelab.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Manage user accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage OAuth clients.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Manage token and cost budgets (docs/usage.md).
    Budget {
        #[command(subcommand)]
        command: BudgetCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from stdin.
    Add(UserAddArgs),
    /// List users.
    List(ListArgs),
    /// Disable a user and revoke their refresh tokens.
    Disable(UsernameArgs),
    /// Enable a disabled user.
    Enable(UsernameArgs),
    /// Set a user's password (read from stdin) and revoke their refresh tokens.
    Passwd(PasswdArgs),
}

#[derive(Debug, Args)]
struct UserAddArgs {
    /// 1 to 64 characters from A-Z, a-z, 0-9 and "_.@-"; unique ignoring case.
    #[arg(long)]
    username: String,
    /// Read the password as one line from stdin (required: passwords are never arguments).
    #[arg(long, required = true)]
    password_stdin: bool,
    /// Optional; unique ignoring case.
    #[arg(long)]
    email: Option<String>,
    /// Let the user be granted the api:admin scope.
    #[arg(long)]
    admin: bool,
}

#[derive(Debug, Args)]
struct UsernameArgs {
    #[arg(long)]
    username: String,
}

#[derive(Debug, Args)]
struct PasswdArgs {
    #[arg(long)]
    username: String,
    /// Read the new password as one line from stdin (required).
    #[arg(long, required = true)]
    password_stdin: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Create a client; a confidential one gets a secret, printed once.
    Add(ClientAddArgs),
    /// List clients.
    List(ListArgs),
    /// Disable a client: it gets no more tokens and cannot refresh.
    Disable(ClientIdArgs),
    /// Enable a disabled client.
    Enable(ClientIdArgs),
}

#[derive(Debug, Args)]
struct ClientAddArgs {
    /// 3 to 255 characters from A-Z, a-z, 0-9, "_" and "-".
    #[arg(long)]
    client_id: String,
    /// Display name.
    #[arg(long)]
    name: String,
    #[arg(long)]
    description: Option<String>,
    /// Give the client a secret (printed once); without it the client is public.
    #[arg(long)]
    confidential: bool,
    /// password, refresh_token, authorization_code or client_credentials; repeatable. Default:
    /// authorization_code + refresh_token with --redirect-uri, else password + refresh_token.
    #[arg(long = "grant-type", value_name = "GRANT")]
    grant_types: Vec<String>,
    /// Allowed scope; repeatable. Default: api:read api:write.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Exact redirect URI for the authorization-code flow; repeatable.
    #[arg(long = "redirect-uri", value_name = "URI")]
    redirect_uris: Vec<String>,
    /// Access-token lifetime in seconds (default: the configured access_token_lifetime).
    #[arg(long, value_name = "SECONDS")]
    access_token_lifetime: Option<i64>,
    /// Refresh-token lifetime in seconds (default: the configured refresh_token_lifetime).
    #[arg(long, value_name = "SECONDS")]
    refresh_token_lifetime: Option<i64>,
}

#[derive(Debug, Args)]
struct ClientIdArgs {
    #[arg(long)]
    client_id: String,
}

/// Runs a `codelab admin` subcommand.
pub async fn run(config_file: Option<PathBuf>, args: AdminArgs) -> anyhow::Result<ExitCode> {
    let config = load_section::<AuthService>(config_file.clone(), &())?;
    // Read the password before touching the database, so a missing one changes nothing.
    let password = match &args.command {
        AdminCommand::User {
            command: UserCommand::Add(_) | UserCommand::Passwd(_),
        } => Some(read_password()?),
        _ => None,
    };
    let db_url = database_url(args.data_dir.as_deref(), &config)?;
    let pool = open_database(&db_url, "auth").await?;
    let result = execute(
        &pool,
        args.command,
        password,
        &config,
        (config_file, args.data_dir.as_deref()),
    )
    .await;
    pool.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

async fn execute(
    pool: &DbPool,
    command: AdminCommand,
    password: Option<String>,
    config: &codelab_auth::Config,
    (config_file, data_dir): (Option<PathBuf>, Option<&Path>),
) -> anyhow::Result<()> {
    let store = open_store(
        pool.clone(),
        std::sync::Arc::new(codelab_core::clock::SystemClock),
    )
    .await
    .context("cannot prepare the auth database")?;
    let store: &dyn AuthStore = &*store;
    let password = password.unwrap_or_default();
    match command {
        AdminCommand::User { command } => match command {
            UserCommand::Add(args) => {
                let user = admin::add_user(
                    store,
                    &args.username,
                    &password,
                    args.email.as_deref(),
                    args.admin,
                )
                .await?;
                let role = if user.is_admin { " (admin)" } else { "" };
                println!("created user {:?}{role}", user.username);
            }
            UserCommand::List(args) => print_users(&admin::list_users(store).await?, args.json)?,
            UserCommand::Disable(args) => {
                let update = admin::set_user_enabled(store, &args.username, false).await?;
                println!(
                    "disabled user {:?} (revoked {} refresh tokens)",
                    update.user.username, update.revoked_refresh_tokens
                );
            }
            UserCommand::Enable(args) => {
                let update = admin::set_user_enabled(store, &args.username, true).await?;
                println!("enabled user {:?}", update.user.username);
            }
            UserCommand::Passwd(args) => {
                let update = admin::set_password(store, &args.username, &password).await?;
                println!(
                    "changed the password of {:?} (revoked {} refresh tokens)",
                    update.user.username, update.revoked_refresh_tokens
                );
            }
        },
        AdminCommand::Client { command } => match command {
            ClientCommand::Add(args) => {
                let spec = ClientSpec {
                    description: args.description,
                    confidential: args.confidential,
                    grant_types: args.grant_types,
                    scopes: args.scopes,
                    redirect_uris: args.redirect_uris,
                    access_token_lifetime: args
                        .access_token_lifetime
                        .unwrap_or(config.access_token_lifetime),
                    refresh_token_lifetime: args
                        .refresh_token_lifetime
                        .unwrap_or(config.refresh_token_lifetime),
                    ..ClientSpec::new(args.client_id, args.name)
                };
                let added = admin::add_client(store, spec).await?;
                let kind = if added.client.is_confidential {
                    "confidential"
                } else {
                    "public"
                };
                println!("created {kind} client {:?}", added.client.client_id);
                if let Some(secret) = added.secret {
                    println!("client_secret: {}", secret.expose());
                    eprintln!("the secret is shown only this once; only its hash is stored");
                }
            }
            ClientCommand::List(args) => {
                print_clients(&admin::list_clients(store).await?, args.json)?;
            }
            ClientCommand::Disable(args) => {
                let client = admin::set_client_enabled(store, &args.client_id, false).await?;
                println!("disabled client {:?}", client.client_id);
            }
            ClientCommand::Enable(args) => {
                let client = admin::set_client_enabled(store, &args.client_id, true).await?;
                println!("enabled client {:?}", client.client_id);
            }
        },
        AdminCommand::Budget { command } => {
            budget::run(config_file, data_dir, store, command).await?;
        }
    }
    Ok(())
}

/// A small pool on the `service`'s database at `url`: one command at a time, leaving the
/// server its connections.
pub async fn open_database(url: &str, service: &str) -> anyhow::Result<DbPool> {
    let options = DbOptions {
        max_connections: 2,
        ..DbOptions::default()
    };
    connect_database(url, &options).await.with_context(|| {
        format!(
            "cannot open the {service} database {}",
            redact_database_url(url)
        )
    })
}

/// The auth database ([`database_in`]).
fn database_url(data_dir: Option<&Path>, config: &codelab_auth::Config) -> anyhow::Result<String> {
    database_in(
        data_dir,
        AUTH_DB_FILE,
        ("AUTH_SERVICE__DB_URL", &config.db_url),
        &codelab_auth::Config::default().db_url,
    )
}

/// `DIR/<file>` for `--data-dir`; else the configured URL (`configured`: the variable and the
/// value read) when the environment or the config file set one (it is not `default`); else
/// `./.codelab/<file>` (where `codelab up` keeps it).
pub fn database_in(
    data_dir: Option<&Path>,
    file: &str,
    (variable, configured): (&str, &str),
    default: &str,
) -> anyhow::Result<String> {
    let set = std::env::var(variable).is_ok_and(|v| !v.trim().is_empty()) || configured != default;
    let dir = match data_dir {
        Some(dir) => dir,
        None if set => return Ok(configured.to_owned()),
        None => Path::new(DEFAULT_DATA_DIR),
    };
    let path = std::path::absolute(dir.join(file))
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let path = path
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", path.display()))?;
    // `sqlite:///` + an absolute path is SQLAlchemy's absolute form (`sqlite:////abs`).
    Ok(format!("sqlite:///{path}"))
}

/// One line from stdin without its line ending.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    if read == 0 {
        anyhow::bail!("expected the password as a line on stdin, got nothing");
    }
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    Ok(password.to_owned())
}

fn print_users(users: &[User], json: bool) -> anyhow::Result<()> {
    print_list(
        users,
        json,
        |u| {
            vec![
                u.username.clone(),
                u.email.clone().unwrap_or_else(|| "-".into()),
                yes_no(u.is_active),
                yes_no(u.is_admin),
                u.created_at.format("%Y-%m-%d %H:%M").to_string(),
                u.last_login_at.map_or_else(
                    || "never".into(),
                    |t| t.format("%Y-%m-%d %H:%M").to_string(),
                ),
            ]
        },
        &[
            "USERNAME",
            "EMAIL",
            "ACTIVE",
            "ADMIN",
            "CREATED (UTC)",
            "LAST LOGIN (UTC)",
        ],
    )
}

fn print_clients(clients: &[Client], json: bool) -> anyhow::Result<()> {
    print_list(
        clients,
        json,
        |c| {
            vec![
                c.client_id.clone(),
                c.name.clone(),
                if c.is_confidential {
                    "confidential"
                } else {
                    "public"
                }
                .to_owned(),
                yes_no(c.is_active),
                c.allowed_grant_types.join(","),
                c.allowed_scopes.join(" "),
                if c.redirect_uris.is_empty() {
                    "-".to_owned()
                } else {
                    c.redirect_uris.join(" ")
                },
            ]
        },
        &[
            "CLIENT ID",
            "NAME",
            "TYPE",
            "ACTIVE",
            "GRANTS",
            "SCOPES",
            "REDIRECT URIS",
        ],
    )
}

/// `items` as pretty JSON, or as a table with one `row` each under `header`.
fn print_list<T: serde::Serialize>(
    items: &[T],
    json: bool,
    row: impl Fn(&T) -> Vec<String>,
    header: &[&str],
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(items)?);
    } else {
        print_table(header, items.iter().map(row));
    }
    Ok(())
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn print_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| (*h).to_owned()).collect())
        .chain(rows)
        .collect();
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let last = row.len().saturating_sub(1);
        let line: Vec<String> = row
            .into_iter()
            .enumerate()
            .map(|(i, cell)| {
                if i == last {
                    cell
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        println!("{}", line.join("  "));
    }
}
