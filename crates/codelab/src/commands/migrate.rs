//! `codelab migrate [--service S]`: creates each service's database when missing and applies
//! its migrations, as a step of its own before a rollout (the Helm pre-install/pre-upgrade
//! hook, the Compose `migrate` service). The services would migrate on start as well; running it
//! first makes a failed migration stop the rollout with one clear message instead of
//! crash-looping every replica.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use codelab_core::clock::{SharedClock, SystemClock};
use codelab_core::db::{DbOptions, DbPool, connect_database, redact_database_url};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;

use super::services::{ListenOverrides, load_config};

/// The services that own a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrateService {
    /// `AUTH_SERVICE__DB_URL`.
    Auth,
    /// `AGENT_RUNTIME__DB_URL`.
    AgentRuntime,
}

impl MigrateService {
    const ALL: [MigrateService; 2] = [MigrateService::Auth, MigrateService::AgentRuntime];

    fn name(self) -> &'static str {
        match self {
            MigrateService::Auth => "auth",
            MigrateService::AgentRuntime => "agent-runtime",
        }
    }

    fn url_variable(self) -> &'static str {
        match self {
            MigrateService::Auth => "AUTH_SERVICE__DB_URL",
            MigrateService::AgentRuntime => "AGENT_RUNTIME__DB_URL",
        }
    }

    /// The migrations for `pool`'s engine (to name the versions applied).
    fn migrator(self, pool: &DbPool) -> &'static Migrator {
        match (self, pool) {
            (MigrateService::Auth, DbPool::Postgres(_)) => &codelab_auth::store::postgres::MIGRATOR,
            (MigrateService::Auth, DbPool::Sqlite(_)) => &codelab_auth::store::sqlite::MIGRATOR,
            (MigrateService::AgentRuntime, DbPool::Postgres(_)) => {
                &codelab_agent_runtime::store::postgres::MIGRATOR
            }
            (MigrateService::AgentRuntime, DbPool::Sqlite(_)) => {
                &codelab_agent_runtime::store::sqlite::MIGRATOR
            }
        }
    }
}

impl fmt::Display for MigrateService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Arguments of `codelab migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Only this service's database (default: every service that has one).
    #[arg(long, value_enum)]
    service: Option<MigrateService>,
}

/// Migrates the chosen databases; exit 1 when any failed (each failure on stderr).
pub async fn run(file: Option<PathBuf>, args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let services = match args.service {
        Some(service) => vec![service],
        None => MigrateService::ALL.to_vec(),
    };
    let mut failed = 0;
    for service in services {
        if let Err(error) = migrate(file.clone(), service).await {
            eprintln!("error: {service}: {error:#}");
            failed += 1;
        }
    }
    if failed > 0 {
        eprintln!("migration failed for {failed} service(s)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn migrate(file: Option<PathBuf>, service: MigrateService) -> anyhow::Result<()> {
    let overrides = ListenOverrides::default();
    let url = match service {
        MigrateService::Auth => {
            load_config::<codelab_auth::AuthService>(file, &overrides)?
                .0
                .db_url
        }
        MigrateService::AgentRuntime => {
            load_config::<codelab_agent_runtime::RuntimeService>(file, &overrides)?
                .0
                .db_url
        }
    };
    let shown = redact_database_url(&url);
    println!("{service}: database {shown} ({})", service.url_variable());

    let existed = database_exists(&url).await;
    let options = DbOptions {
        max_connections: 2,
        create_if_missing: true,
        ..DbOptions::default()
    };
    let pool = connect_database(&url, &options)
        .await
        .with_context(|| format!("cannot open the database at {shown}"))?;
    if existed == Some(false) {
        println!("{service}: created the database");
    }

    let result = apply(service, &pool).await;
    pool.close().await;
    let newly_applied = result?;
    let migrator = service.migrator(&pool);
    let total = migrator.iter().count();
    if newly_applied.is_empty() {
        println!("{service}: up to date ({total} migrations applied)");
    } else {
        for migration in migrator
            .iter()
            .filter(|m| newly_applied.contains(&m.version))
        {
            println!(
                "{service}: applied {:04} {}",
                migration.version, migration.description
            );
        }
        println!(
            "{service}: {} migration(s) applied, {total} in all",
            newly_applied.len()
        );
    }
    Ok(())
}

/// Runs the service's migrations through its store (exactly what the service does on start)
/// and returns the versions this run applied.
async fn apply(service: MigrateService, pool: &DbPool) -> anyhow::Result<BTreeSet<i64>> {
    let before = applied_versions(pool).await?;
    let clock: SharedClock = Arc::new(SystemClock);
    match service {
        MigrateService::Auth => {
            let migrated = codelab_auth::store::open_store(pool.clone(), clock).await;
            migrated.context("migrating the auth database")?;
        }
        MigrateService::AgentRuntime => {
            let migrated = codelab_agent_runtime::store::open_store(pool.clone(), clock).await;
            migrated.context("migrating the agent-runtime database")?;
        }
    }
    let after = applied_versions(pool).await?;
    Ok(after.difference(&before).copied().collect())
}

/// The versions recorded in sqlx's `_sqlx_migrations` table (none before the first run).
async fn applied_versions(pool: &DbPool) -> anyhow::Result<BTreeSet<i64>> {
    const POSTGRES_HAS_TABLE: &str = "SELECT to_regclass('_sqlx_migrations') IS NOT NULL";
    const SQLITE_HAS_TABLE: &str = "SELECT EXISTS (SELECT 1 FROM sqlite_master \
                                    WHERE type = 'table' AND name = '_sqlx_migrations')";
    const APPLIED: &str = "SELECT version FROM _sqlx_migrations WHERE success";
    let has_table: bool = match pool {
        DbPool::Postgres(pool) => {
            sqlx::query_scalar(POSTGRES_HAS_TABLE)
                .fetch_one(pool)
                .await?
        }
        DbPool::Sqlite(pool) => sqlx::query_scalar(SQLITE_HAS_TABLE).fetch_one(pool).await?,
    };
    if !has_table {
        return Ok(BTreeSet::new());
    }
    let versions: Vec<i64> = match pool {
        DbPool::Postgres(pool) => sqlx::query_scalar(APPLIED).fetch_all(pool).await?,
        DbPool::Sqlite(pool) => sqlx::query_scalar(APPLIED).fetch_all(pool).await?,
    };
    Ok(versions.into_iter().collect())
}

/// Whether a PostgreSQL database exists, asked of the server's `postgres` database (`None`
/// for SQLite or when the server cannot tell; connecting then reports the problem).
async fn database_exists(url: &str) -> Option<bool> {
    let normalized = codelab_core::db::normalize_database_url(url).ok()?;
    if !normalized.starts_with("postgres") {
        return None;
    }
    let options = PgConnectOptions::from_str(&normalized).ok()?;
    let name = options.get_database()?.to_owned();
    let maintenance = options.database("postgres");
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&maintenance).await.ok()?;
    let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .ok();
    let _ = conn.close().await;
    exists
}
