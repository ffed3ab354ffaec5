//! `codelab admin` as operators run it: the real binary against a temp data directory.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use crate::common::cli::{codelab_with, run_with_stdin};
use chrono::{Duration, Utc};
use codelab_auth::model::{AuditRecord, RefreshTokenRecord};
use codelab_auth::passwords::{ClientSecretCheck, verify_client_secret, verify_password};
use codelab_auth::store::{AuthStore, open_store};
use codelab_core::db::{DbOptions, connect_database};

/// `codelab admin <args>` in `dir`, with `stdin` piped in, and no auth settings inherited.
fn codelab_admin(dir: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    let mut command = codelab_with(&all, env);
    command.current_dir(dir);
    run_with_stdin(command, stdin)
}

/// `codelab admin --data-dir <dir>/data <args>`.
fn admin(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let data = dir.join("data");
    let mut all = vec!["--data-dir", data.to_str().unwrap()];
    all.extend_from_slice(args);
    codelab_admin(dir, &all, stdin, &[])
}

/// `codelab admin user add --username <username> <extra> --password-stdin`.
fn user_add(dir: &Path, username: &str, extra: &[&str], password: Option<&str>) -> Output {
    let mut args = vec!["user", "add", "--username", username];
    args.extend_from_slice(extra);
    args.push("--password-stdin");
    admin(dir, &args, password)
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[track_caller]
fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
}

/// Exit code 1 and exactly one line on stderr: `error: <expected...>`.
#[track_caller]
fn assert_refused(output: &Output, expected: &str) {
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(output));
    let err = stderr(output);
    assert_eq!(err.lines().count(), 1, "one line expected, got {err:?}");
    assert!(
        err.starts_with("error: ") && err.contains(expected),
        "{err:?} lacks {expected:?}"
    );
}

fn users_json(dir: &Path) -> Vec<serde_json::Value> {
    let output = admin(dir, &["user", "list", "--json"], None);
    assert_ok(&output);
    serde_json::from_str(&stdout(&output)).unwrap()
}

/// The event types of an audit log listed newest first, oldest first.
fn event_types(audit: &[AuditRecord]) -> Vec<&str> {
    audit
        .iter()
        .rev()
        .map(|r| r.event.event_type.as_str())
        .collect()
}

async fn store_at(db_file: &Path) -> Arc<dyn AuthStore> {
    let url = format!("sqlite:///{}", db_file.display());
    let options = DbOptions {
        create_if_missing: false,
        ..DbOptions::default()
    };
    open_store(
        connect_database(&url, &options).await.unwrap(),
        Arc::new(codelab_core::clock::SystemClock),
    )
    .await
    .unwrap()
}

#[test]
fn user_add_reads_the_password_from_stdin_creates_the_database_and_list_shows_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let added = user_add(
        dir.path(),
        "alice",
        &["--email", "Alice@Example.com"],
        Some("correct horse battery\n"),
    );
    assert_ok(&added);
    assert!(
        stdout(&added).contains(r#"created user "alice""#),
        "{}",
        stdout(&added)
    );
    assert!(
        dir.path().join("data/auth.db").is_file(),
        "the SQLite file is created"
    );

    let table = admin(dir.path(), &["user", "list"], None);
    assert_ok(&table);
    let table = stdout(&table);
    assert!(table.starts_with("USERNAME"), "{table}");
    assert!(
        table.contains("alice") && table.contains("alice@example.com"),
        "{table}"
    );

    let users = users_json(dir.path());
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["username"], "alice");
    assert_eq!(users[0]["email"], "alice@example.com");
    assert_eq!(users[0]["is_active"], true);
    assert_eq!(users[0]["is_admin"], false);
    assert!(
        users[0].get("password_hash").is_none(),
        "hashes are never printed"
    );
}

#[test]
fn admin_flag_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let added = user_add(
        dir.path(),
        "root",
        &["--admin"],
        Some("a long enough password\r\n"),
    );
    assert_ok(&added);
    assert!(stdout(&added).contains("(admin)"));
    assert_eq!(users_json(dir.path())[0]["is_admin"], true);
}

#[test]
fn a_username_taken_in_another_case_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_ok(&user_add(dir.path(), "bob", &[], Some("password-one\n")));
    let again = user_add(dir.path(), "BOB", &[], Some("password-two\n"));
    assert_refused(&again, r#"username "BOB" is already taken"#);
    assert_eq!(users_json(dir.path()).len(), 1);
}

#[test]
fn a_short_password_a_bad_username_or_no_password_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        &user_add(dir.path(), "carol", &[], Some("short\n")),
        "at least 8 characters",
    );
    // Characters are counted, not bytes: seven two-byte letters are still too short.
    assert_refused(
        &user_add(dir.path(), "carol", &[], Some("ééééééé\n")),
        "at least 8 characters",
    );
    assert_refused(
        &user_add(dir.path(), "carol smith", &[], Some("long enough\n")),
        "username must be",
    );
    assert_refused(&user_add(dir.path(), "carol", &[], None), "password");
    let bad_email = user_add(
        dir.path(),
        "carol",
        &["--email", "carol.example.com"],
        Some("long enough\n"),
    );
    assert_refused(&bad_email, "email must contain one \"@\"");
    assert!(users_json(dir.path()).is_empty());
    assert_ok(&user_add(dir.path(), "carol", &[], Some("éééééééé\n")));
}

#[test]
fn a_password_is_never_taken_as_an_argument() {
    let dir = tempfile::tempdir().unwrap();
    let output = admin(
        dir.path(),
        &[
            "user",
            "add",
            "--username",
            "dave",
            "--password",
            "hunter22",
        ],
        None,
    );
    assert!(!output.status.success());
    let output = admin(
        dir.path(),
        &["user", "add", "--username", "dave"],
        Some("hunter2222\n"),
    );
    assert!(!output.status.success(), "--password-stdin is required");
}

#[tokio::test]
async fn disable_revokes_sessions_enable_restores_and_passwd_replaces_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_ok(&user_add(d, "erin", &[], Some("first password\n")));

    // A session to end: a refresh token as the token endpoint would store it.
    let store = store_at(&d.join("data/auth.db")).await;
    let erin = store.find_user_by_login("erin").await.unwrap().unwrap();
    store
        .create_client(codelab_auth::model::NewClient {
            client_id: "app".into(),
            secret_hash: None,
            name: "App".into(),
            description: None,
            is_confidential: false,
            allowed_scopes: vec!["api:read".into()],
            allowed_grant_types: vec!["password".into(), "refresh_token".into()],
            redirect_uris: vec![],
            access_token_lifetime: 900,
            refresh_token_lifetime: 3600,
        })
        .await
        .unwrap();
    let session = |jti: &str| RefreshTokenRecord {
        jti_hash: jti.to_owned(),
        family_id: jti.to_owned(),
        user_id: erin.id.clone(),
        client_id: "app".into(),
        scope: "api:read".into(),
        expires_at: Utc::now() + Duration::hours(1),
        revoked: false,
        revoked_at: None,
        parent_jti_hash: None,
        created_at: Utc::now(),
    };
    store
        .insert_refresh_token(session("before-disable"))
        .await
        .unwrap();

    let disabled = admin(d, &["user", "disable", "--username", "ERIN"], None);
    assert_ok(&disabled);
    assert!(
        stdout(&disabled).contains(r#"disabled user "erin" (revoked 1 refresh tokens)"#),
        "{}",
        stdout(&disabled)
    );
    assert_eq!(users_json(d)[0]["is_active"], false);
    assert!(
        store
            .find_refresh_token("before-disable")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert_ok(&admin(d, &["user", "enable", "--username", "erin"], None));
    assert_eq!(users_json(d)[0]["is_active"], true);
    assert_refused(
        &admin(d, &["user", "disable", "--username", "ghost"], None),
        r#"no user named "ghost""#,
    );

    assert_refused(
        &admin(
            d,
            &["user", "passwd", "--username", "erin", "--password-stdin"],
            Some("tiny\n"),
        ),
        "at least 8 characters",
    );
    store
        .insert_refresh_token(session("before-passwd"))
        .await
        .unwrap();
    assert_ok(&admin(
        d,
        &["user", "passwd", "--username", "erin", "--password-stdin"],
        Some("second password\n"),
    ));
    assert!(
        store
            .find_refresh_token("before-passwd")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert_refused(
        &admin(
            d,
            &["user", "passwd", "--username", "ghost", "--password-stdin"],
            Some("second password\n"),
        ),
        r#"no user named "ghost""#,
    );

    let erin = store.find_user_by_login("erin").await.unwrap().unwrap();
    assert!(
        verify_password("second password", &erin.password_hash)
            .await
            .unwrap()
            .is_valid()
    );
    assert!(
        !verify_password("first password", &erin.password_hash)
            .await
            .unwrap()
            .is_valid()
    );

    let audit = store.list_audit(20).await.unwrap();
    assert_eq!(
        event_types(&audit),
        [
            "admin_user_add",
            "admin_user_disable",
            "admin_user_enable",
            "admin_password_change"
        ]
    );
    let rows = serde_json::to_string(&audit).unwrap();
    assert!(!rows.contains("first password") && !rows.contains("second password"));
    assert!(
        audit
            .iter()
            .all(|r| r.event.user_id.as_deref() == Some(erin.id.as_str()))
    );
}

#[tokio::test]
async fn client_add_prints_a_confidential_clients_secret_once_and_list_and_disable_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let added = admin(
        d,
        &[
            "client",
            "add",
            "--client-id",
            "ci-bot",
            "--name",
            "CI bot",
            "--confidential",
            "--grant-type",
            "client_credentials",
            "--scope",
            "api:read",
        ],
        None,
    );
    assert_ok(&added);
    let out = stdout(&added);
    assert!(
        out.contains(r#"created confidential client "ci-bot""#),
        "{out}"
    );
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .unwrap_or_else(|| panic!("no secret in {out:?}"))
        .to_owned();
    assert_eq!(secret.len(), 64);

    let public = admin(
        d,
        &[
            "client",
            "add",
            "--client-id",
            "web-console",
            "--name",
            "Console",
            "--redirect-uri",
            "http://localhost:3000/cb",
            "--scope",
            "api:read api:write",
        ],
        None,
    );
    assert_ok(&public);
    assert!(
        !stdout(&public).contains("client_secret"),
        "public clients have no secret"
    );
    assert_refused(
        &admin(
            d,
            &["client", "add", "--client-id", "ci-bot", "--name", "again"],
            None,
        ),
        r#"client id "ci-bot" is already taken"#,
    );
    assert_refused(
        &admin(
            d,
            &[
                "client",
                "add",
                "--client-id",
                "x1y",
                "--name",
                "n",
                "--grant-type",
                "implicit",
            ],
            None,
        ),
        "grant type must be one of",
    );

    let listed = admin(d, &["client", "list", "--json"], None);
    assert_ok(&listed);
    assert!(
        !stdout(&listed).contains(&secret),
        "the secret is shown only once"
    );
    let clients: Vec<serde_json::Value> = serde_json::from_str(&stdout(&listed)).unwrap();
    assert_eq!(clients.len(), 2);
    assert_eq!(clients[0]["client_id"], "ci-bot");
    assert_eq!(clients[0]["is_confidential"], true);
    assert_eq!(
        clients[0]["allowed_grant_types"],
        serde_json::json!(["client_credentials"])
    );
    assert_eq!(
        clients[1]["allowed_grant_types"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(
        clients[1]["allowed_scopes"],
        serde_json::json!(["api:read", "api:write"])
    );
    assert_eq!(
        clients[1]["redirect_uris"],
        serde_json::json!(["http://localhost:3000/cb"])
    );
    let table = admin(d, &["client", "list"], None);
    assert!(stdout(&table).contains("web-console") && stdout(&table).contains("public"));

    assert_ok(&admin(
        d,
        &["client", "disable", "--client-id", "web-console"],
        None,
    ));
    assert_refused(
        &admin(d, &["client", "disable", "--client-id", "nope"], None),
        r#"no client with id "nope""#,
    );

    let store = store_at(&d.join("data/auth.db")).await;
    let bot = store.get_client("ci-bot").await.unwrap().unwrap();
    let hash = bot.secret_hash.unwrap();
    assert!(
        verify_client_secret(&secret, &hash).await.unwrap()
            == ClientSecretCheck::Valid {
                needs_rehash: false
            },
        "the stored hash matches, in the fast form"
    );
    assert!(
        !store
            .get_client("web-console")
            .await
            .unwrap()
            .unwrap()
            .is_active
    );
    let audit = store.list_audit(20).await.unwrap();
    assert_eq!(
        event_types(&audit),
        [
            "admin_client_add",
            "admin_client_add",
            "admin_client_disable"
        ]
    );
    assert!(!serde_json::to_string(&audit).unwrap().contains(&secret));
}

#[test]
fn without_data_dir_the_configured_database_url_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("elsewhere/auth-other.db");
    let url = format!("sqlite:///{}", db.display());
    let env = [("AUTH_SERVICE__DB_URL", url.as_str())];
    let add = ["user", "add", "--username", "frank", "--password-stdin"];
    assert_ok(&codelab_admin(
        dir.path(),
        &add,
        Some("frank's password\n"),
        &env,
    ));
    assert!(db.is_file(), "the configured database is used");
    assert!(
        !dir.path().join(".codelab").exists(),
        "the default data dir is untouched"
    );

    // Without either, `./.codelab/auth.db` (where `codelab up` keeps it).
    let listed = codelab_admin(dir.path(), &["user", "list"], None, &[]);
    assert_ok(&listed);
    assert!(!stdout(&listed).contains("frank"));
    assert!(dir.path().join(".codelab/auth.db").is_file());
}

/// docs/usage.md, "Budgets": set, show and clear per user and for everyone, in the runtime's
/// database next to the auth one.
#[test]
fn budgets_are_set_shown_and_cleared_per_user_and_by_default() {
    let dir = tempfile::tempdir().unwrap();
    assert_ok(&user_add(
        dir.path(),
        "alice",
        &[],
        Some("correct horse battery"),
    ));
    let set = admin(
        dir.path(),
        &[
            "budget",
            "set",
            "--user",
            "ALICE",
            "--daily-tokens",
            "1000",
            "--daily-cost",
            "2.5",
        ],
        None,
    );
    assert_ok(&set);
    assert_eq!(
        stdout(&set).trim(),
        "set the budget of user \"alice\": 1000 tokens a day, $2.5 a day"
    );
    assert!(dir.path().join("data/agent_runtime.db").exists());
    assert_ok(&admin(
        dir.path(),
        &[
            "budget",
            "set",
            "--default",
            "--monthly-cost",
            "40",
            "--requests-per-minute",
            "30",
        ],
        None,
    ));
    let shown = admin(dir.path(), &["budget", "show", "--json"], None);
    assert_ok(&shown);
    let budgets: Vec<serde_json::Value> = serde_json::from_str(&stdout(&shown)).unwrap();
    assert_eq!(budgets.len(), 2, "{budgets:?}");
    assert_eq!(budgets[0]["subject"], "*");
    assert_eq!(budgets[0]["name"], "the default");
    assert_eq!(budgets[0]["monthly_cost"], 40.0);
    assert_eq!(budgets[0]["requests_per_minute"], 30);
    assert_eq!(budgets[1]["name"], "alice");
    assert_eq!(budgets[1]["daily_tokens"], 1000);
    assert_eq!(budgets[1]["monthly_tokens"], serde_json::Value::Null);
    let one = admin(dir.path(), &["budget", "show", "--user", "alice"], None);
    assert_eq!(stdout(&one).trim(), "alice: 1000 tokens a day, $2.5 a day");

    // Refusals: an unknown user, no limit, a bad amount, both subjects.
    assert_refused(
        &admin(
            dir.path(),
            &["budget", "set", "--user", "nobody", "--daily-tokens", "1"],
            None,
        ),
        "no user \"nobody\"",
    );
    assert_refused(
        &admin(dir.path(), &["budget", "set", "--user", "alice"], None),
        "give at least one limit",
    );
    for bad in [
        vec!["budget", "set", "--default", "--daily-cost", "-1"],
        vec!["budget", "set", "--default", "--daily-tokens", "0"],
        vec![
            "budget",
            "set",
            "--default",
            "--user",
            "alice",
            "--daily-tokens",
            "5",
        ],
        vec!["budget", "clear"],
    ] {
        let refused = admin(dir.path(), &bad, None);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{bad:?}: {}",
            stderr(&refused)
        );
    }

    assert_ok(&admin(
        dir.path(),
        &["budget", "clear", "--user", "alice"],
        None,
    ));
    assert_refused(
        &admin(dir.path(), &["budget", "clear", "--user", "alice"], None),
        "user \"alice\" has no budget",
    );
    let left = admin(dir.path(), &["budget", "show"], None);
    assert_eq!(
        stdout(&left).trim(),
        "the default: 30 calls a minute, $40 a month"
    );
    let own = admin(dir.path(), &["budget", "show", "--user", "alice"], None);
    assert_eq!(
        stdout(&own).trim(),
        "user \"alice\" has no budget of their own: the default applies"
    );
    assert_ok(&admin(dir.path(), &["budget", "clear", "--default"], None));
    let none = admin(dir.path(), &["budget", "show"], None);
    assert_eq!(stdout(&none).trim(), "no budget is set: nothing is limited");
}
