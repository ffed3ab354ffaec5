//! `codelab migrate`: creates each service's database when missing, applies its migrations once,
//! says what it did, and exits 1 with a clear message (never a password) when it cannot.

use std::path::Path;
use std::process::{Output, Stdio};

use crate::common::cli::codelab_with;
use codelab_testkit::TempPostgres;
use sqlx::Connection;

/// `codelab migrate ARGS` in `dir`, with only the given service settings (nothing inherited
/// from the test's own environment can point it elsewhere).
fn migrate(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["migrate"];
    all.extend_from_slice(args);
    let mut command = codelab_with(&all, env);
    command
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn sqlite_tables(path: &Path) -> Vec<String> {
    let url = format!("sqlite://{}?mode=ro", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let tables = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    tables
}

#[tokio::test]
async fn sqlite_databases_are_created_migrated_once_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    // The defaults (`sqlite:///data/<service>.db`) resolve against the working directory, as
    // in the image's /app.
    let first = migrate(dir.path(), &[], &[]);
    let (stdout, stderr) = text(&first);
    assert!(first.status.success(), "{stdout}\n{stderr}");
    for line in [
        "auth: database sqlite:///data/auth.db (AUTH_SERVICE__DB_URL)",
        "auth: applied 0001 original schema",
        "agent-runtime: database sqlite:///data/agent_runtime.db (AGENT_RUNTIME__DB_URL)",
        "agent-runtime: applied 0001 runtime schema",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let auth_tables = sqlite_tables(&dir.path().join("data/auth.db")).await;
    assert!(auth_tables.contains(&"users".to_owned()), "{auth_tables:?}");
    assert!(auth_tables.contains(&"_sqlx_migrations".to_owned()));
    let runtime_tables = sqlite_tables(&dir.path().join("data/agent_runtime.db")).await;
    assert!(
        runtime_tables.contains(&"_sqlx_migrations".to_owned()),
        "{runtime_tables:?}"
    );

    // A second run has nothing to do and says so.
    let again = migrate(dir.path(), &[], &[]);
    let (stdout, stderr) = text(&again);
    assert!(again.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("auth: up to date"), "{stdout}");
    assert!(stdout.contains("agent-runtime: up to date"), "{stdout}");
    assert!(!stdout.contains("applied 0"), "{stdout}");
}

#[tokio::test]
async fn one_service_is_migrated_with_service() {
    let dir = tempfile::tempdir().unwrap();
    let runtime_db = dir.path().join("runtime.db");
    let url = format!("sqlite:///{}", runtime_db.display());
    let output = migrate(
        dir.path(),
        &["--service", "agent-runtime"],
        &[("AGENT_RUNTIME__DB_URL", &url)],
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("agent-runtime: applied 0001"), "{stdout}");
    assert!(!stdout.contains("auth:"), "{stdout}");
    assert!(runtime_db.exists());
    assert!(
        !dir.path().join("data").exists(),
        "auth's database was touched"
    );
}

#[tokio::test]
async fn postgres_databases_are_created_when_missing() {
    let auth = TempPostgres::new("migrate_auth");
    let runtime = TempPostgres::new("migrate_runtime");
    let dir = tempfile::tempdir().unwrap();
    // The original's URL form works as well.
    let auth_url = auth.url.replacen("postgres://", "postgresql+asyncpg://", 1);
    let env = [
        ("AUTH_SERVICE__DB_URL", auth_url.as_str()),
        ("AGENT_RUNTIME__DB_URL", runtime.url.as_str()),
    ];
    let first = migrate(dir.path(), &[], &env);
    let (stdout, stderr) = text(&first);
    assert!(
        first.status.success(),
        "{}\n{stdout}\n{stderr}",
        auth.unavailable(&"codelab migrate failed")
    );
    assert!(stdout.contains("auth: created the database"), "{stdout}");
    assert!(
        stdout.contains("agent-runtime: created the database"),
        "{stdout}"
    );
    assert!(
        stdout.contains("auth: applied 0001 original schema"),
        "{stdout}"
    );
    assert!(
        stdout.contains("agent-runtime: applied 0001 runtime schema"),
        "{stdout}"
    );

    let mut conn = sqlx::PgConnection::connect(&runtime.url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert!(applied >= 1);

    let again = migrate(dir.path(), &[], &env);
    let (stdout, stderr) = text(&again);
    assert!(again.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("created the database"), "{stdout}");
    assert!(stdout.contains("auth: up to date"), "{stdout}");
    assert!(stdout.contains("agent-runtime: up to date"), "{stdout}");
}

#[test]
fn an_unreachable_database_fails_with_a_clear_message_and_no_password() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: connection refused at once.
    let output = migrate(
        dir.path(),
        &["--service", "auth"],
        &[(
            "AUTH_SERVICE__DB_URL",
            "postgres://codelab:hunter2-secret@127.0.0.1:1/auth_db",
        )],
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "error: auth: cannot open the database at postgres://codelab:***@127.0.0.1:1/auth_db"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("migration failed for 1 service(s)"),
        "{stderr}"
    );
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
}

#[test]
fn an_unsupported_url_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let output = migrate(
        dir.path(),
        &[],
        &[(
            "AGENT_RUNTIME__DB_URL",
            "mysql://root@localhost/agent_runtime",
        )],
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    // The other service is still migrated; the failing one is named with its URL.
    assert!(stdout.contains("auth: applied 0001"), "{stdout}");
    assert!(stderr.contains("error: agent-runtime:"), "{stderr}");
    assert!(stderr.contains("mysql"), "{stderr}");
}
