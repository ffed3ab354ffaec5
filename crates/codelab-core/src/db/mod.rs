//! Database connections: PostgreSQL or SQLite behind one enum, from the original's URL forms.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, PgPool, SqlitePool};

pub mod backend;
pub mod cells;
mod from_row;
mod store_error;
pub mod values;

pub use backend::{Backend, On, Query, query};
pub use store_error::{StoreError, database_unavailable, map_rows};
pub use values::{DbTime, JsonText, now_from};

use crate::http::ServiceInfo;
use crate::telemetry::register_scrape_hook;

/// How long a SQLite writer waits for the lock before failing (`busy_timeout`).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A database problem; messages never contain passwords.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is not one of the accepted forms.
    #[error("unsupported database URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with any password masked.
        url: String,
        /// What was expected.
        reason: String,
    },
    /// The SQLite file's directory could not be created.
    #[error("cannot create directory {} for the SQLite database: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to {kind} database {url}: {source}")]
    Connect {
        /// `postgres` or `sqlite`.
        kind: DbKind,
        /// The URL with any password masked.
        url: String,
        /// The driver error.
        source: sqlx::Error,
    },
    /// `CREATE DATABASE` failed.
    #[error("cannot create PostgreSQL database {name:?}: {source}")]
    CreateDatabase {
        /// The database name.
        name: String,
        /// The driver error.
        source: sqlx::Error,
    },
    /// A query (such as the ping) failed.
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Which database engine a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbKind {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

impl DbKind {
    /// `postgres` or `sqlite`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

impl std::fmt::Display for DbKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection pool to either engine; stores match on it once, handlers never do.
#[derive(Debug, Clone)]
pub enum DbPool {
    /// A PostgreSQL pool.
    Postgres(PgPool),
    /// A SQLite pool.
    Sqlite(SqlitePool),
}

impl DbPool {
    /// The engine.
    pub fn kind(&self) -> DbKind {
        match self {
            Self::Postgres(_) => DbKind::Postgres,
            Self::Sqlite(_) => DbKind::Sqlite,
        }
    }

    /// Runs `SELECT 1` (for `/ready`).
    pub async fn ping(&self) -> Result<(), DbError> {
        match self {
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
        }
        Ok(())
    }

    /// Closes every connection, waiting for checked-out ones to be returned.
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }

    /// (idle, in use, max) connection counts.
    pub fn connection_counts(&self) -> (u32, u32, u32) {
        let (size, idle, max) = match self {
            Self::Postgres(p) => (p.size(), p.num_idle(), p.options().get_max_connections()),
            Self::Sqlite(p) => (p.size(), p.num_idle(), p.options().get_max_connections()),
        };
        let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(size);
        (idle, size - idle, max)
    }
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Largest number of open connections.
    pub max_connections: u32,
    /// Create the SQLite file (and its directory) or the PostgreSQL database when missing.
    pub create_if_missing: bool,
    /// How long to wait for a free connection (and for the first connect).
    pub acquire_timeout: Duration,
    /// How long a PostgreSQL connection may stay idle in the pool before it is closed; checked
    /// every `idle_timeout`, so connections a burst opened are gone within twice this after
    /// it (docs/reliability.md, "Soak").
    pub idle_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            create_if_missing: true,
            acquire_timeout: Duration::from_secs(5),
            // sqlx's default (10 minutes, checked every 10 minutes) kept every connection of a
            // burst open long after it; a new one costs a few milliseconds.
            idle_timeout: Duration::from_secs(15),
        }
    }
}

/// Rewrites the original's URL forms into ones sqlx reads.
///
/// SQLite follows SQLAlchemy's reading, which the original deployments rely on
/// (`sqlite:///data/auth.db` lands in the working directory's `data/`, i.e. `/app/data` in
/// the images): `sqlite:///rel.db`, `sqlite:///./rel.db`, `sqlite://rel.db` and `sqlite:rel.db`
/// are relative, `sqlite:////abs/x.db` is absolute, `sqlite+aiosqlite:` is accepted, and
/// `sqlite::memory:` is an in-memory database. The result is `sqlite://<path>` in sqlx's
/// reading (`sqlite:///abs` absolute, `sqlite://rel` relative). PostgreSQL accepts
/// `postgres://`, `postgresql://` and `postgresql+asyncpg://` (asyncpg's `ssl=` becomes
/// `sslmode=`), giving `postgres://...`.
pub fn normalize_database_url(url: &str) -> Result<String, DbError> {
    let url = url.trim();
    let (scheme, rest) = url.split_once(':').ok_or_else(|| DbError::InvalidUrl {
        url: redact_database_url(url),
        reason: "expected a URL starting with sqlite: or postgres://".into(),
    })?;
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" | "sqlite+aiosqlite" => normalize_sqlite(url, rest),
        "postgres" | "postgresql" | "postgresql+asyncpg" | "postgres+asyncpg" => {
            let Some(authority_and_path) = rest.strip_prefix("//") else {
                return Err(DbError::InvalidUrl {
                    url: redact_database_url(url),
                    reason: "expected postgres://user:password@host:port/database".into(),
                });
            };
            Ok(format!("postgres://{}", asyncpg_params(authority_and_path)))
        }
        other => Err(DbError::InvalidUrl {
            url: redact_database_url(url),
            reason: format!(
                "scheme {other:?} is not supported; expected sqlite:// or postgres:// (postgresql://, postgresql+asyncpg://)"
            ),
        }),
    }
}

fn normalize_sqlite(url: &str, rest: &str) -> Result<String, DbError> {
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest, None),
    };
    let path = if location == ":memory:" || location == "//:memory:" {
        ":memory:".to_owned()
    } else if let Some(after) = location.strip_prefix("//") {
        // `sqlite://` then SQLAlchemy's path: one more slash starts a relative path,
        // two more an absolute one.
        match after.strip_prefix('/') {
            Some(path) if path.starts_with('/') => format!("/{}", path.trim_start_matches('/')),
            Some(path) => path.to_owned(),
            None => after.to_owned(),
        }
    } else {
        location.to_owned()
    };
    let in_memory = path == ":memory:" || query.is_some_and(|q| q.contains("mode=memory"));
    if path.is_empty() && !in_memory {
        return Err(DbError::InvalidUrl {
            url: url.to_owned(),
            reason: "expected a file path, as in sqlite:///data/app.db".into(),
        });
    }
    Ok(match query {
        Some(query) => format!("sqlite://{path}?{query}"),
        None => format!("sqlite://{path}"),
    })
}

/// asyncpg spells TLS as `ssl=require|true|...`; sqlx wants `sslmode=`.
fn asyncpg_params(authority_and_path: &str) -> String {
    let Some((base, query)) = authority_and_path.split_once('?') else {
        return authority_and_path.to_owned();
    };
    let has_sslmode = query.split('&').any(|p| p.starts_with("sslmode="));
    let params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|param| match param.split_once('=') {
            Some(("ssl", value)) if !has_sslmode => {
                let mode = match value.to_ascii_lowercase().as_str() {
                    "true" | "1" => "require".to_owned(),
                    "false" | "0" => "disable".to_owned(),
                    other => other.to_owned(),
                };
                format!("sslmode={mode}")
            }
            _ => param.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// The URL with its password replaced by `***`, for logs and errors.
pub fn redact_database_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Connects to the database at `url` (any form [`normalize_database_url`] accepts).
///
/// SQLite: creates the parent directory and file, WAL journal with `synchronous=NORMAL`,
/// foreign keys on, 5 s busy timeout, sqlx's statement cache (100 prepared statements per
/// connection). PostgreSQL: when `create_if_missing` and the database does not exist, creates it
/// from the server's `postgres` maintenance database first.
pub async fn connect_database(url: &str, options: &DbOptions) -> Result<DbPool, DbError> {
    let normalized = normalize_database_url(url)?;
    if normalized.starts_with("sqlite:") {
        connect_sqlite(&normalized, options)
            .await
            .map(DbPool::Sqlite)
    } else {
        connect_postgres(&normalized, options)
            .await
            .map(DbPool::Postgres)
    }
}

async fn connect_sqlite(url: &str, options: &DbOptions) -> Result<SqlitePool, DbError> {
    let connect_error = |source| DbError::Connect {
        kind: DbKind::Sqlite,
        url: url.to_owned(),
        source,
    };
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let connect = SqliteConnectOptions::from_str(url)
        .map_err(connect_error)?
        .create_if_missing(options.create_if_missing)
        .journal_mode(SqliteJournalMode::Wal)
        // In WAL mode NORMAL syncs at checkpoints, not at every commit: a killed process
        // loses nothing committed, a power loss may lose the last commits but never corrupts
        // the file (docs/operations.md, "SQLite durability").
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    let parent = connect
        .get_filename()
        .parent()
        .filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = parent.filter(|_| options.create_if_missing && !in_memory) {
        create_dir(dir).await?;
    }
    let mut pool = SqlitePoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout)
        // A SQLite connection is a file handle of this process, not a socket that can drop
        // while idle: the ping sqlx sends before handing one out (a round trip to the
        // connection's worker thread per statement run on the pool) finds nothing to test.
        .test_before_acquire(false);
    if !in_memory {
        pool = pool.before_acquire(sqlite_connection_reusable);
    }
    if in_memory {
        // An in-memory database lives only while a connection is open: keep one forever.
        pool = pool
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    }
    pool.connect_with(connect).await.map_err(connect_error)
}

/// `before_acquire` hook of every SQLite pool on a file: whether the connection may be handed
/// out. A transaction SQLite ended by itself (it rolls back on SQLITE_FULL, e.g. a full disk)
/// leaves sqlx counting it as open: its ROLLBACK fails and every later BEGIN on that
/// connection fails ("non-zero transaction depth") until the process restarts. Such a
/// connection is closed instead (docs/reliability.md, "Faults": SQLite on a full disk). One
/// whose rollback is merely still queued may be closed too; reopening a file is cheap.
pub fn sqlite_connection_reusable(
    conn: &mut sqlx::SqliteConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, Result<bool, sqlx::Error>> {
    use sqlx::TransactionManager;
    let open = sqlx::sqlite::SqliteTransactionManager::get_transaction_depth(conn) > 0;
    Box::pin(std::future::ready(Ok(!open)))
}

async fn create_dir(dir: &Path) -> Result<(), DbError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|source| DbError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

async fn connect_postgres(url: &str, options: &DbOptions) -> Result<PgPool, DbError> {
    let redacted = redact_database_url(url);
    let connect_error = |source| DbError::Connect {
        kind: DbKind::Postgres,
        url: redacted.clone(),
        source,
    };
    let connect = PgConnectOptions::from_str(url).map_err(connect_error)?;
    let pool = || {
        PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .idle_timeout(Some(options.idle_timeout))
    };
    match pool().connect_with(connect.clone()).await {
        Ok(pool) => Ok(pool),
        Err(err) if options.create_if_missing && is_missing_database(&err) => {
            let Some(name) = connect.get_database().map(str::to_owned) else {
                return Err(connect_error(err));
            };
            create_postgres_database(&connect, &name).await?;
            pool().connect_with(connect).await.map_err(connect_error)
        }
        Err(err) => Err(connect_error(err)),
    }
}

/// SQLSTATE 3D000 `invalid_catalog_name`: the database does not exist.
fn is_missing_database(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000"))
}

async fn create_postgres_database(connect: &PgConnectOptions, name: &str) -> Result<(), DbError> {
    let create_error = |source| DbError::CreateDatabase {
        name: name.to_owned(),
        source,
    };
    let maintenance = connect.clone().database("postgres");
    let mut conn = sqlx::PgConnection::connect_with(&maintenance)
        .await
        .map_err(create_error)?;
    let result = sqlx::query(&format!("CREATE DATABASE {}", quote_identifier(name)))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    match result {
        Ok(_) => {
            tracing::info!(database = name, "created PostgreSQL database");
            Ok(())
        }
        // Another replica created it first (42P04 duplicate_database, or 23505 when both
        // raced on the catalog's unique index): that is what we wanted.
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04") | Some("23505")) =>
        {
            Ok(())
        }
        Err(err) => Err(create_error(err)),
    }
}

/// A PostgreSQL identifier in double quotes, inner quotes doubled.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Applies the migrations for the pool's engine.
pub async fn run_migrations(
    pool: &DbPool,
    postgres: &Migrator,
    sqlite: &Migrator,
) -> Result<(), DbError> {
    match pool {
        DbPool::Postgres(pool) => postgres.run(pool).await?,
        DbPool::Sqlite(pool) => sqlite.run(pool).await?,
    }
    Ok(())
}

/// Publishes `codelab_<service>_db_pool_connections{state="idle"|"in_use"}` and
/// `codelab_<service>_db_pool_max_connections` at every scrape of `service`'s `/metrics`.
pub fn register_pool_metrics(service: &ServiceInfo, pool: DbPool) {
    let connections = service.metric_name("db_pool_connections");
    let max = service.metric_name("db_pool_max_connections");
    metrics::describe_gauge!(connections.clone(), "Database pool connections by state");
    metrics::describe_gauge!(max.clone(), "Database pool size limit");
    register_scrape_hook(service, "db_pool", move || {
        let (idle, in_use, limit) = pool.connection_counts();
        metrics::gauge!(connections.clone(), "state" => "idle").set(f64::from(idle));
        metrics::gauge!(connections.clone(), "state" => "in_use").set(f64::from(in_use));
        metrics::gauge!(max.clone()).set(f64::from(limit));
    });
}

#[cfg(test)]
mod tests;
