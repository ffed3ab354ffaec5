//! `codelab admin budget set|show|clear`: per-user and default budgets in the agent runtime's
//! database (docs/usage.md, "Budgets"), users named by their username (looked up in the auth
//! database). Safe while the server runs, as `codelab admin user`: one short statement each.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use codelab_agent_runtime::RuntimeService;
use codelab_agent_runtime::model::{Budget, DEFAULT_BUDGET};
use codelab_agent_runtime::store::RuntimeStore;
use codelab_auth::store::AuthStore;
use codelab_core::clock::{Clock, SystemClock};
use codelab_core::db::DbPool;

use super::services::load_section;

/// The runtime database's file inside a data directory (as `codelab up` lays it out).
const RUNTIME_DB_FILE: &str = "agent_runtime.db";

#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Set a user's budget, or the default for everyone without one, replacing the previous
    /// one (a limit not given is no limit).
    Set(SetArgs),
    /// Show one budget, or all (the default first).
    Show(ShowArgs),
    /// Remove a budget (a user without one falls back to the default).
    Clear(SubjectArgs),
}

/// Whose budget: a user's or the default.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct SubjectArgs {
    /// The user, by username.
    #[arg(long, value_name = "USERNAME")]
    user: Option<String>,
    /// The default for every user without a budget of their own.
    #[arg(long)]
    default: bool,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    subject: SubjectArgs,
    /// Tokens per UTC calendar day.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    daily_tokens: Option<u64>,
    /// Tokens per UTC calendar month.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    monthly_tokens: Option<u64>,
    /// USD per UTC calendar day.
    #[arg(long, value_name = "USD", value_parser = usd)]
    daily_cost: Option<f64>,
    /// USD per UTC calendar month.
    #[arg(long, value_name = "USD", value_parser = usd)]
    monthly_cost: Option<f64>,
    /// LLM calls per minute.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    requests_per_minute: Option<u64>,
    /// Tokens per minute.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    tokens_per_minute: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The user, by username (default: every budget).
    #[arg(long, value_name = "USERNAME", conflicts_with = "default")]
    user: Option<String>,
    /// Only the default.
    #[arg(long)]
    default: bool,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// A USD amount: a finite number, at least 0, at most a billion.
fn usd(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if (0.0..=1e9).contains(&value) => Ok(value),
        _ => Err(format!("expected a USD amount from 0 to 1e9, got {text:?}")),
    }
}

/// Runs a budget command against the runtime's database (and the auth one to resolve
/// usernames).
pub async fn run(
    config_file: Option<PathBuf>,
    data_dir: Option<&Path>,
    auth: &dyn AuthStore,
    command: BudgetCommand,
) -> anyhow::Result<()> {
    let config = load_section::<RuntimeService>(config_file, &())?;
    let url = runtime_database_url(data_dir, &config)?;
    let pool = super::admin::open_database(&url, "agent runtime").await?;
    let result = execute(&pool, auth, command).await;
    pool.close().await;
    result
}

async fn execute(
    pool: &DbPool,
    auth: &dyn AuthStore,
    command: BudgetCommand,
) -> anyhow::Result<()> {
    let store = codelab_agent_runtime::store::open_store(pool.clone(), Arc::new(SystemClock))
        .await
        .context("cannot prepare the agent runtime database")?;
    let store: &dyn RuntimeStore = &*store;
    match command {
        BudgetCommand::Set(args) => {
            let (subject, name) = subject_of(auth, &args.subject).await?;
            let budget = Budget {
                subject,
                daily_tokens: args.daily_tokens,
                monthly_tokens: args.monthly_tokens,
                daily_cost: args.daily_cost,
                monthly_cost: args.monthly_cost,
                requests_per_minute: args.requests_per_minute,
                tokens_per_minute: args.tokens_per_minute,
                updated_at: chrono::DateTime::from(SystemClock.now()),
            };
            if limits(&budget).is_empty() {
                anyhow::bail!(
                    "give at least one limit (--daily-tokens, --monthly-tokens, --daily-cost, \
                     --monthly-cost, --requests-per-minute, --tokens-per-minute); to remove a \
                     budget: codelab admin budget clear"
                );
            }
            if let Some(refusal) = codelab_agent_runtime::budgets::refusal(&budget) {
                anyhow::bail!("{refusal}");
            }
            store.set_budget(&budget).await?;
            println!("set the budget of {name}: {}", limits(&budget).join(", "));
        }
        BudgetCommand::Show(args) => {
            // What to say when there is nothing to show.
            let (budgets, none) = if args.user.is_none() && !args.default {
                (
                    store.list_budgets().await?,
                    "no budget is set: nothing is limited".to_owned(),
                )
            } else {
                let subject = SubjectArgs {
                    user: args.user,
                    default: args.default,
                };
                let (subject, name) = subject_of(auth, &subject).await?;
                let (own, default) = store.budgets_of(&subject).await?;
                if subject == DEFAULT_BUDGET {
                    let none = "no default budget: users without their own are not limited";
                    (default.into_iter().collect(), none.to_owned())
                } else {
                    let none = format!("{name} has no budget of their own: the default applies");
                    (own.into_iter().collect(), none)
                }
            };
            let names = usernames(auth).await?;
            let name = |subject: &str| {
                if subject == DEFAULT_BUDGET {
                    "the default".to_owned()
                } else {
                    names
                        .iter()
                        .find(|(id, _)| id == subject)
                        .map_or_else(|| format!("user id {subject}"), |(_, name)| name.clone())
                }
            };
            if args.json {
                let shown: Vec<serde_json::Value> = budgets
                    .iter()
                    .map(|budget| {
                        let mut value = serde_json::to_value(budget.view()).unwrap_or_default();
                        value["name"] = serde_json::Value::String(name(&budget.subject));
                        value
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else if budgets.is_empty() {
                println!("{none}");
            } else {
                for budget in &budgets {
                    println!("{}: {}", name(&budget.subject), limits(budget).join(", "));
                }
            }
        }
        BudgetCommand::Clear(subject) => {
            let (subject, name) = subject_of(auth, &subject).await?;
            if !store.clear_budget(&subject).await? {
                anyhow::bail!("{name} has no budget");
            }
            println!("cleared the budget of {name}");
        }
    }
    Ok(())
}

/// The budget's subject (a user's id, or the default's) and how to name it.
async fn subject_of(auth: &dyn AuthStore, args: &SubjectArgs) -> anyhow::Result<(String, String)> {
    match &args.user {
        None => Ok((DEFAULT_BUDGET.to_owned(), "the default".to_owned())),
        Some(username) => {
            let user = auth
                .find_user_by_login(username)
                .await?
                .filter(|user| user.username.eq_ignore_ascii_case(username))
                .with_context(|| format!("no user {username:?}"))?;
            Ok((user.id, format!("user {:?}", user.username)))
        }
    }
}

/// Every user's id and username.
async fn usernames(auth: &dyn AuthStore) -> anyhow::Result<Vec<(String, String)>> {
    Ok(codelab_auth::admin::list_users(auth)
        .await?
        .into_iter()
        .map(|user| (user.id, user.username))
        .collect())
}

/// The limits a budget sets, as words.
fn limits(budget: &Budget) -> Vec<String> {
    let mut out = Vec::new();
    let mut count = |value: Option<u64>, what: &str| {
        if let Some(value) = value {
            out.push(format!("{value} {what}"));
        }
    };
    count(budget.daily_tokens, "tokens a day");
    count(budget.monthly_tokens, "tokens a month");
    count(budget.requests_per_minute, "calls a minute");
    count(budget.tokens_per_minute, "tokens a minute");
    for (value, what) in [
        (budget.daily_cost, "a day"),
        (budget.monthly_cost, "a month"),
    ] {
        if let Some(value) = value {
            out.push(format!("${value} {what}"));
        }
    }
    out
}

/// The runtime's database (`super::admin::database_in`).
fn runtime_database_url(
    data_dir: Option<&Path>,
    config: &codelab_agent_runtime::Config,
) -> anyhow::Result<String> {
    super::admin::database_in(
        data_dir,
        RUNTIME_DB_FILE,
        ("AGENT_RUNTIME__DB_URL", &config.db_url),
        &codelab_agent_runtime::Config::default().db_url,
    )
}
