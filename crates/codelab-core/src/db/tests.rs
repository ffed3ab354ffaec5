use super::*;

/// PostgreSQL server used by the tests; the CI script starts it.
fn postgres_base_url() -> String {
    std::env::var("CODELAB_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `base` with its database name replaced by `name`.
fn with_database(base: &str, name: &str) -> String {
    let (without_query, query) = match base.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (base, None),
    };
    let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
    let server = match without_query[scheme_end..].find('/') {
        Some(slash) => &without_query[..scheme_end + slash],
        None => without_query,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

async fn maintenance_connection() -> sqlx::PgConnection {
    let base = postgres_base_url();
    let options = PgConnectOptions::from_str(&normalize_database_url(&base).unwrap())
        .unwrap()
        .database("postgres");
    sqlx::PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "PostgreSQL is required for this test but {} is unreachable ({err}); \
             start PostgreSQL or set CODELAB_TEST_DATABASE_URL",
                redact_database_url(&base)
            )
        })
}

fn write_migrations(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("0001_notes.sql"),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    )
    .unwrap();
}

/// The SQLite pool inside `pool`, which must be one.
fn sqlite_pool(pool: &DbPool) -> &sqlx::SqlitePool {
    let DbPool::Sqlite(sqlite) = pool else {
        unreachable!("a SQLite URL opens a SQLite pool")
    };
    sqlite
}

/// The one value `sql` selects.
async fn select_one<'e, DB, T>(on: impl sqlx::Executor<'e, Database = DB>, sql: &'e str) -> T
where
    DB: sqlx::Database,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    T: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB> + Send + Unpin,
    (T,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    sqlx::query_scalar(sql).fetch_one(on).await.unwrap()
}

/// Runs one statement on `sqlite`.
async fn execute(sqlite: &sqlx::SqlitePool, sql: &str) {
    sqlx::query(sql).execute(sqlite).await.unwrap();
}

/// The error of connecting to `url` with `create_if_missing` off.
async fn connect_without_creating(url: &str) -> DbError {
    let options = DbOptions {
        create_if_missing: false,
        ..DbOptions::default()
    };
    connect_database(url, &options).await.unwrap_err()
}

#[test]
fn sqlite_urls_follow_sqlalchemy() {
    let cases = [
        ("sqlite:///data/auth.db", "sqlite://data/auth.db"),
        (
            "sqlite+aiosqlite:///data/agent_runtime.db",
            "sqlite://data/agent_runtime.db",
        ),
        ("sqlite:///./rel.db", "sqlite://./rel.db"),
        (
            "sqlite:////var/lib/codelab/auth.db",
            "sqlite:///var/lib/codelab/auth.db",
        ),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite:///abs/x.db"),
        ("sqlite://rel.db", "sqlite://rel.db"),
        ("sqlite:rel.db", "sqlite://rel.db"),
        ("sqlite:/abs.db", "sqlite:///abs.db"),
        ("sqlite::memory:", "sqlite://:memory:"),
        (
            "sqlite:///data/x.db?mode=rwc",
            "sqlite://data/x.db?mode=rwc",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(normalize_database_url(input).unwrap(), expected, "{input}");
    }
    assert!(normalize_database_url("sqlite://").is_err());
}

#[test]
fn postgres_urls_drop_the_driver_suffix() {
    let cases = [
        (
            "postgresql+asyncpg://codelab:codelab_password@postgres:5432/auth_db",
            "postgres://codelab:codelab_password@postgres:5432/auth_db",
        ),
        ("postgresql://u@h/db", "postgres://u@h/db"),
        ("postgres://u@h:5433/db", "postgres://u@h:5433/db"),
        (
            "postgresql+asyncpg://u:p@h/db?ssl=require",
            "postgres://u:p@h/db?sslmode=require",
        ),
        (
            "postgresql://u:p@h/db?ssl=true&application_name=x",
            "postgres://u:p@h/db?sslmode=require&application_name=x",
        ),
        (
            "postgresql://u:p@h/db?sslmode=verify-full",
            "postgres://u:p@h/db?sslmode=verify-full",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(normalize_database_url(input).unwrap(), expected, "{input}");
    }
}

#[test]
fn other_schemes_are_clear_errors_without_passwords() {
    let err = normalize_database_url("mysql://root:hunter2@db/app").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("\"mysql\" is not supported"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("root:***@db"), "{text}");
    assert!(normalize_database_url("no-scheme-at-all").is_err());
    assert!(normalize_database_url("postgresql:db").is_err());
}

#[test]
fn passwords_are_redacted_and_identifiers_quoted() {
    assert_eq!(
        redact_database_url("postgres://u:secret@h:5432/db"),
        "postgres://u:***@h:5432/db"
    );
    assert_eq!(
        redact_database_url("postgres://u@h/db"),
        "postgres://u@h/db"
    );
    assert_eq!(
        redact_database_url("sqlite://data/x.db"),
        "sqlite://data/x.db"
    );
    assert_eq!(quote_identifier("auth_db"), "\"auth_db\"");
    assert_eq!(quote_identifier("we\"ird"), "\"we\"\"ird\"");
}

#[tokio::test]
async fn sqlite_database_is_created_with_wal_normal_sync_and_foreign_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nested/deeper/app.db");
    let url = format!("sqlite:///{}", file.display()); // four slashes: absolute
    let pool = connect_database(&url, &DbOptions::default()).await.unwrap();
    assert_eq!(pool.kind(), DbKind::Sqlite);
    pool.ping().await.unwrap();
    assert!(file.exists());

    let sqlite = sqlite_pool(&pool);
    let mode: String = select_one(sqlite, "PRAGMA journal_mode").await;
    assert_eq!(mode, "wal");
    // 1 = NORMAL (sqlx's default is 2 = FULL, an fsync per commit), on every connection:
    // the second one held at once is a new one.
    let mut first = sqlite.acquire().await.unwrap();
    let mut second = sqlite.acquire().await.unwrap();
    let synchronous: i64 = select_one(&mut *first, "PRAGMA synchronous").await;
    assert_eq!(synchronous, 1);
    let synchronous: i64 = select_one(&mut *second, "PRAGMA synchronous").await;
    assert_eq!(synchronous, 1);
    drop((first, second));
    let fk: i64 = select_one(sqlite, "PRAGMA foreign_keys").await;
    assert_eq!(fk, 1);
    let busy: i64 = select_one(sqlite, "PRAGMA busy_timeout").await;
    assert_eq!(busy, 5000);

    let (idle, in_use, max) = pool.connection_counts();
    assert_eq!(max, 10);
    assert!(idle + in_use >= 1);
    pool.close().await;
}

#[tokio::test]
async fn sqlite_without_create_if_missing_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:///{}", dir.path().join("absent.db").display());
    let err = connect_without_creating(&url).await;
    assert!(
        err.to_string()
            .starts_with("cannot connect to sqlite database"),
        "{err}"
    );
}

#[tokio::test]
async fn in_memory_sqlite_keeps_its_data_across_connections() {
    let pool = connect_database("sqlite::memory:", &DbOptions::default())
        .await
        .unwrap();
    let sqlite = sqlite_pool(&pool);
    execute(sqlite, "CREATE TABLE t (x INTEGER)").await;
    execute(sqlite, "INSERT INTO t VALUES (1)").await;
    let mut a = sqlite.acquire().await.unwrap();
    let mut b = sqlite.acquire().await.unwrap();
    let n: i64 = select_one(&mut *a, "SELECT COUNT(*) FROM t").await;
    let m: i64 = select_one(&mut *b, "SELECT COUNT(*) FROM t").await;
    assert_eq!((n, m), (1, 1));
}

#[tokio::test]
async fn migrations_run_on_sqlite_and_pool_metrics_are_published() {
    let dir = tempfile::tempdir().unwrap();
    write_migrations(&dir.path().join("sqlite"));
    write_migrations(&dir.path().join("postgres"));
    let sqlite_migrator = Migrator::new(dir.path().join("sqlite")).await.unwrap();
    let postgres_migrator = Migrator::new(dir.path().join("postgres")).await.unwrap();

    let url = format!("sqlite:///{}", dir.path().join("m.db").display());
    let pool = connect_database(&url, &DbOptions::default()).await.unwrap();
    run_migrations(&pool, &postgres_migrator, &sqlite_migrator)
        .await
        .unwrap();
    run_migrations(&pool, &postgres_migrator, &sqlite_migrator)
        .await
        .unwrap();
    let sqlite = sqlite_pool(&pool);
    execute(sqlite, "INSERT INTO notes (id, body) VALUES (1, 'x')").await;

    let info = ServiceInfo::new("db-metrics-test", "1");
    register_pool_metrics(&info, pool.clone());
    let text = crate::telemetry::render_metrics(&info);
    assert!(
        text.contains("codelab_db_metrics_test_db_pool_connections{state=\"idle\"}"),
        "{text}"
    );
    assert!(
        text.contains("codelab_db_metrics_test_db_pool_connections{state=\"in_use\"}"),
        "{text}"
    );
    assert!(
        text.contains("codelab_db_metrics_test_db_pool_max_connections 10"),
        "{text}"
    );
    pool.close().await;
}

#[tokio::test]
async fn postgres_database_is_created_when_missing_then_dropped() {
    let name = format!("codelab-core-Test-{}", crate::ids::random_hex(4));
    let url = with_database(&postgres_base_url(), &name);
    let mut admin = maintenance_connection().await;

    let (url_in_task, name_in_task) = (url.clone(), name.clone());
    let outcome = async move {
        let (url, name) = (url_in_task, name_in_task);
        let pool = connect_database(
            &url,
            &DbOptions {
                max_connections: 2,
                ..DbOptions::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(pool.kind(), DbKind::Postgres);
        pool.ping().await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        write_migrations(&dir.path().join("pg"));
        let migrator = Migrator::new(dir.path().join("pg")).await.unwrap();
        run_migrations(&pool, &migrator, &migrator).await.unwrap();
        let DbPool::Postgres(pg) = &pool else {
            unreachable!()
        };
        let db: String = select_one(pg, "SELECT current_database()").await;
        assert_eq!(db, name);
        pool.close().await;

        // A second connect finds the database and does not try to create it again.
        let again = connect_database(&url, &DbOptions::default()).await.unwrap();
        again.ping().await.unwrap();
        again.close().await;
    };
    let result = crate::tasks::spawn("postgres-create-test", outcome).await;

    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_identifier(&name)
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}

#[tokio::test]
async fn postgres_without_create_if_missing_reports_the_missing_database() {
    let name = format!("codelab_core_absent_{}", crate::ids::random_hex(4));
    let base = postgres_base_url();
    let _reachable = maintenance_connection().await;
    let url = with_database(&base, &name);
    let err = connect_without_creating(&url).await;
    assert!(
        err.to_string()
            .starts_with("cannot connect to postgres database"),
        "{err}"
    );
}

/// Regression (the soak, docs/reliability.md): connections a burst opened are closed once
/// idle past `idle_timeout`, so PostgreSQL's connection count comes back after the load.
#[tokio::test]
async fn postgres_pool_closes_connections_left_idle_after_a_burst() {
    let name = format!("codelab_core_idle_{}", crate::ids::random_hex(4));
    let url = with_database(&postgres_base_url(), &name);
    let mut admin = maintenance_connection().await;

    let url_in_task = url.clone();
    let outcome = async move {
        let options = DbOptions {
            max_connections: 4,
            idle_timeout: Duration::from_millis(300),
            ..DbOptions::default()
        };
        let pool = connect_database(&url_in_task, &options).await.unwrap();
        let DbPool::Postgres(pg) = &pool else {
            unreachable!()
        };
        let burst = futures_util::future::try_join_all((0..4).map(|_| pg.acquire()))
            .await
            .unwrap();
        assert_eq!(pg.size(), 4);
        drop(burst);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while pg.size() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} connections still open",
                pg.size()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pool.close().await;
    };
    let result = crate::tasks::spawn("postgres-idle-test", outcome).await;

    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_identifier(&name)
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}

/// Regression (issue 17, SQLite on a full disk): SQLite rolls a transaction back by itself on
/// SQLITE_FULL, sqlx's own ROLLBACK then fails and the connection kept counting a transaction,
/// so every later write on the pool failed ("non-zero transaction depth") until a restart.
/// Such a connection is closed now; the next write works.
#[tokio::test]
async fn a_sqlite_connection_left_in_a_transaction_by_sqlite_full_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:///{}", dir.path().join("full.db").display());
    let options = DbOptions {
        max_connections: 1,
        ..DbOptions::default()
    };
    let pool = connect_database(&url, &options).await.unwrap();
    let sqlite = sqlite_pool(&pool);
    sqlx::query("CREATE TABLE t (v BLOB)")
        .execute(sqlite)
        .await
        .unwrap();
    let mut failures = 0;
    for _ in 0..3 {
        let mut tx = sqlite.begin_with("BEGIN IMMEDIATE").await.unwrap();
        // The only connection may not grow the file: the insert fails as on a full disk.
        sqlx::query("PRAGMA max_page_count = 2")
            .execute(&mut *tx)
            .await
            .unwrap();
        let error = sqlx::query("INSERT INTO t VALUES (zeroblob(1000000))")
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(StoreError::Database(error).is_disk_full());
        failures += 1;
        drop(tx);
    }
    assert_eq!(failures, 3);
    // A fresh connection (no page limit) takes the write.
    let mut tx = sqlite.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("INSERT INTO t VALUES (zeroblob(1000000))")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}
