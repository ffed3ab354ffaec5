//! Throwaway databases for tests: a uniquely named PostgreSQL database on the test server,
//! dropped when the guard goes (even when the test panics), and the test servers' addresses.

/// The PostgreSQL server tests use when `CODELAB_TEST_DATABASE_URL` is unset.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The Redis server tests use when `CODELAB_TEST_REDIS_URL` is unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The test PostgreSQL server (`CODELAB_TEST_DATABASE_URL`, else the local default).
pub fn postgres_server_url() -> String {
    std::env::var("CODELAB_TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned())
}

/// The test Redis server (`CODELAB_TEST_REDIS_URL`, else the local default).
pub fn redis_url() -> String {
    std::env::var("CODELAB_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned())
}

/// A database name nobody else uses: `codelab_<purpose>_<pid>_<random>`.
pub fn unique_database_name(purpose: &str) -> String {
    format!(
        "codelab_{purpose}_{}_{}",
        std::process::id(),
        codelab_core::random_hex(6)
    )
}

/// `url` with its database path replaced by `name` (query kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| i + authority_start);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A uniquely named database on the test server. The services create it on first connect
/// (`create_if_missing`); the guard drops it when the test ends, passed or failed.
#[derive(Debug)]
pub struct TempPostgres {
    /// Connection URL of the new database.
    pub url: String,
    server: String,
    name: String,
}

impl TempPostgres {
    /// Names a fresh database on the test server for `purpose` (nothing is created yet, so a
    /// failure anywhere after the first connect still drops it).
    pub fn new(purpose: &str) -> Self {
        let server = postgres_server_url();
        let name = unique_database_name(purpose);
        TempPostgres {
            url: with_database(&server, &name),
            server,
            name,
        }
    }

    /// A guard for the database `<this one's name>_<suffix>` on the same server, dropped
    /// likewise: for databases a program derives from this one's name (`codelab up
    /// --postgres-url` makes `<name>_auth` and `<name>_agent_runtime`).
    pub fn derived(&self, suffix: &str) -> Self {
        let name = format!("{}_{suffix}", self.name);
        TempPostgres {
            url: with_database(&self.server, &name),
            server: self.server.clone(),
            name,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The message a test gives when the server cannot be used.
    pub fn unavailable(&self, error: &dyn std::fmt::Display) -> String {
        format!(
            "the test needs PostgreSQL: cannot create and open database {} on {} ({error}); start \
             a server (scripts/test does) or set CODELAB_TEST_DATABASE_URL to one where this user \
             may CREATE DATABASE",
            self.name,
            codelab_core::db::redact_database_url(&self.server)
        )
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop may run while a panic unwinds the test's runtime: use a runtime of our own on a
        // thread of our own. FORCE ends the pools' connections that are still open.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&server).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!(
                "warning: could not drop test database {}: {error}",
                self.name
            ),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

/// An empty database for one test, on either engine: a SQLite file in a temp dir (deleted
/// with the guard) or a fresh PostgreSQL database ([`TempPostgres`], dropped with the guard).
#[derive(Debug)]
pub struct TempDatabase {
    /// Connection URL of the database.
    pub url: String,
    guard: DatabaseGuard,
}

#[derive(Debug)]
enum DatabaseGuard {
    Sqlite(
        #[expect(dead_code, reason = "held only for what dropping it deletes")] tempfile::TempDir,
    ),
    Postgres(TempPostgres),
}

impl TempDatabase {
    /// A new SQLite file `file_name` in a temp dir of its own.
    pub fn sqlite(file_name: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for the test database");
        TempDatabase {
            url: format!("sqlite:///{}", dir.path().join(file_name).display()),
            guard: DatabaseGuard::Sqlite(dir),
        }
    }

    /// A fresh database on the test PostgreSQL server, named for `purpose`.
    pub fn postgres(purpose: &str) -> Self {
        // The guard exists before the database does, so a failure after CREATE drops it.
        let database = TempPostgres::new(purpose);
        TempDatabase {
            url: database.url.clone(),
            guard: DatabaseGuard::Postgres(database),
        }
    }

    /// A pool on the database (created on first connect); panics with what the test needs
    /// when it cannot be opened.
    pub async fn connect(&self) -> codelab_core::db::DbPool {
        let options = codelab_core::db::DbOptions::default();
        match codelab_core::db::connect_database(&self.url, &options).await {
            Ok(pool) => pool,
            Err(error) => match &self.guard {
                DatabaseGuard::Postgres(database) => panic!("{}", database.unavailable(&error)),
                DatabaseGuard::Sqlite(_) => panic!(
                    "the test cannot create and open its SQLite database {} ({error})",
                    self.url
                ),
            },
        }
    }
}

/// Turns each `async fn check(store)` named into a `sqlite::check` and a `postgres::check`
/// test, each on the store of a database of its own: `$sqlite` and `$postgres` are async
/// functions (paths seen from inside those modules, e.g. `super::sqlite_db`) returning a
/// value with a `store` field.
#[macro_export]
macro_rules! store_conformance {
    (sqlite: $sqlite:path, postgres: $postgres:path; $($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let db = $sqlite().await;
                    super::$check(db.store.clone()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let db = $postgres().await;
                    super::$check(db.store.clone()).await;
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_path_is_replaced_and_the_query_kept() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
