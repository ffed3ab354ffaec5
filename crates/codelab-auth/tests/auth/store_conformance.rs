//! One conformance suite for [`AuthStore`], run against SQLite (a temp file) and PostgreSQL (a
//! fresh database on the server at `CODELAB_TEST_DATABASE_URL`, dropped afterwards).
//!
//! Every check below is an `async fn(Arc<dyn AuthStore>)`; `codelab_testkit::store_conformance!`
//! turns each into a `sqlite::<check>` and a `postgres::<check>` test, each on its own empty
//! database.

use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use codelab_auth::model::{
    AuditEvent, AuthorizationCode, Client, NewClient, NewUser, RefreshTokenRecord, RotateOutcome,
    Rotation, SigningKeyRecord, User,
};
use codelab_auth::store::{AuthStore, StoreError, open_store};
use codelab_core::db::DbPool;
use codelab_testkit::TempDatabase;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// The real clock: the checks pass their own `now` wherever time matters.
fn system_clock() -> codelab_core::clock::SharedClock {
    Arc::new(codelab_core::clock::SystemClock)
}

/// A store on an empty database, and the database (deleted when the test ends).
struct TestDb {
    store: Arc<dyn AuthStore>,
    _database: TempDatabase,
}

async fn test_db(database: TempDatabase) -> TestDb {
    let store = open_store(database.connect().await, system_clock())
        .await
        .unwrap();
    TestDb {
        store,
        _database: database,
    }
}

async fn sqlite_db() -> TestDb {
    test_db(TempDatabase::sqlite("auth.db")).await
}

async fn postgres_db() -> TestDb {
    test_db(TempDatabase::postgres("auth_test")).await
}

codelab_testkit::store_conformance!(sqlite: super::sqlite_db, postgres: super::postgres_db;
    answers_a_ping,
    creates_a_user_and_finds_it_by_username_or_email_ignoring_case,
    refuses_a_username_taken_in_another_case,
    refuses_an_email_taken_in_another_case_but_allows_many_without_email,
    a_username_match_wins_over_an_email_match,
    disables_and_enables_a_user_by_username,
    replaces_a_password_hash,
    sets_and_clears_the_admin_flag,
    records_the_last_login,
    lists_users_by_username,
    creates_a_client_and_reads_it_back,
    refuses_a_duplicate_client_id,
    lists_clients_by_client_id,
    disables_and_enables_a_client,
    replaces_a_clients_redirect_uris,
    replaces_a_clients_secret_hash,
    stores_and_finds_a_refresh_token_by_hash,
    refuses_a_duplicate_refresh_token_or_one_for_an_unknown_user,
    rotation_revokes_the_old_token_and_stores_the_new_one,
    rotation_commits_its_audit_row_only_when_it_rotates,
    finds_a_refresh_token_with_whether_its_user_is_active,
    rotation_reports_unknown_reused_and_expired_tokens_and_changes_nothing,
    rotation_refuses_another_user_client_or_scope_and_a_disabled_user,
    of_twenty_concurrent_rotations_of_one_token_exactly_one_wins,
    revoking_a_family_leaves_other_families_alone,
    revoking_a_users_tokens_leaves_other_users_alone,
    deletes_only_expired_refresh_tokens,
    an_authorization_code_is_consumed_once,
    of_concurrent_redeemers_of_a_code_exactly_one_gets_it,
    an_expired_code_is_not_returned_and_is_cleaned_up,
    lists_audit_rows_newest_first_with_their_data,
    lists_signing_keys_oldest_first_and_refuses_a_duplicate_kid,
    retiring_keys_marks_every_other_active_key_once,
    replaces_a_private_key_only_while_it_holds_the_expected_value,
    sets_a_clients_access_token_lifetime,
);

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A fixed whole-second "now" so records compare equal after a round trip.
fn t0() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

fn new_user(username: &str, email: Option<&str>) -> NewUser {
    NewUser {
        username: username.to_owned(),
        email: email.map(str::to_owned),
        password_hash: format!("$argon2id$v=19$fake-hash-of-{username}"),
        is_admin: false,
    }
}

fn new_client(client_id: &str) -> NewClient {
    NewClient {
        client_id: client_id.to_owned(),
        secret_hash: None,
        name: format!("{client_id} app"),
        description: None,
        is_confidential: false,
        allowed_scopes: vec!["api:read".into(), "api:write".into()],
        allowed_grant_types: vec!["password".into(), "refresh_token".into()],
        redirect_uris: vec![],
        access_token_lifetime: 900,
        refresh_token_lifetime: 2_592_000,
    }
}

fn token(
    jti_hash: &str,
    family_id: &str,
    user: &User,
    client_id: &str,
    now: DateTime<Utc>,
) -> RefreshTokenRecord {
    RefreshTokenRecord {
        jti_hash: jti_hash.to_owned(),
        family_id: family_id.to_owned(),
        user_id: user.id.clone(),
        client_id: client_id.to_owned(),
        scope: "api:read api:write".to_owned(),
        expires_at: now + Duration::hours(1),
        revoked: false,
        revoked_at: None,
        parent_jti_hash: None,
        created_at: now,
    }
}

/// The rotation of the token `old` (as stored) into a child `new_jti_hash` expiring in an hour.
fn rotation_of(old: &RefreshTokenRecord, new_jti_hash: &str, now: DateTime<Utc>) -> Rotation {
    Rotation {
        old_jti_hash: old.jti_hash.clone(),
        user_id: old.user_id.clone(),
        client_id: old.client_id.clone(),
        scope: old.scope.clone(),
        new_jti_hash: new_jti_hash.to_owned(),
        new_expires_at: now + Duration::hours(1),
    }
}

/// The audit row of a rotation by `user` on `app`.
fn refresh_event(user: &User) -> AuditEvent {
    AuditEvent {
        user_id: Some(user.id.clone()),
        client_id: Some("app".into()),
        event_type: "token_refresh".to_owned(),
        event_data: None,
        ip_address: Some("127.0.0.1".into()),
        user_agent: None,
        success: true,
        error_message: None,
    }
}

/// A user and a client to hang tokens and codes on.
async fn user_and_client(store: &dyn AuthStore) -> User {
    store.create_client(new_client("app")).await.unwrap();
    store.create_user(new_user("alice", None)).await.unwrap()
}

async fn insert_token(store: &dyn AuthStore, record: RefreshTokenRecord) {
    store.insert_refresh_token(record).await.unwrap();
}

/// The stored refresh token `jti_hash`, which must exist.
async fn stored_token(store: &dyn AuthStore, jti_hash: &str) -> RefreshTokenRecord {
    store.find_refresh_token(jti_hash).await.unwrap().unwrap()
}

/// The stored client `client_id`, which must exist.
async fn stored_client(store: &dyn AuthStore, client_id: &str) -> Client {
    store.get_client(client_id).await.unwrap().unwrap()
}

/// The stored user `id`, which must exist.
async fn stored_user(store: &dyn AuthStore, id: &str) -> User {
    store.get_user(id).await.unwrap().unwrap()
}

/// The user `login` (username or email), which must exist.
async fn found_user(store: &dyn AuthStore, login: &str) -> User {
    store.find_user_by_login(login).await.unwrap().unwrap()
}

fn code(code_hash: &str, user: &User, now: DateTime<Utc>) -> AuthorizationCode {
    AuthorizationCode {
        code_hash: code_hash.to_owned(),
        client_id: "app".to_owned(),
        user_id: user.id.clone(),
        redirect_uri: "http://127.0.0.1:8080/console/callback".to_owned(),
        scope: "api:read".to_owned(),
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_owned(),
        expires_at: now + Duration::minutes(10),
        created_at: now,
    }
}

fn key(kid: &str, created_at: DateTime<Utc>) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.to_owned(),
        private_key_pem: format!("-----BEGIN PRIVATE KEY-----\n{kid}\n-----END PRIVATE KEY-----\n"),
        public_key_pem: format!("-----BEGIN PUBLIC KEY-----\n{kid}\n-----END PUBLIC KEY-----\n"),
        created_at,
        retired_at: None,
        publish_until: None,
    }
}

fn assert_conflict(result: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    match result {
        Err(StoreError::Conflict(message)) => {
            assert!(
                message.contains(what),
                "conflict {message:?} should name {what:?}"
            )
        }
        other => panic!("expected a conflict on {what}, got {other:?}"),
    }
}

fn assert_not_found(result: Result<impl std::fmt::Debug, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::NotFound(_))),
        "expected NotFound, got {result:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

async fn answers_a_ping(store: Arc<dyn AuthStore>) {
    store.ping().await.unwrap();
}

async fn creates_a_user_and_finds_it_by_username_or_email_ignoring_case(store: Arc<dyn AuthStore>) {
    let before = Utc::now() - Duration::seconds(1);
    let alice = store
        .create_user(new_user("Alice", Some("Alice@Example.COM")))
        .await
        .unwrap();
    assert_eq!(alice.username, "Alice", "the username keeps its case");
    assert_eq!(
        alice.email.as_deref(),
        Some("alice@example.com"),
        "emails are stored lower-cased"
    );
    assert!(alice.is_active && !alice.is_admin && !alice.is_verified);
    assert_eq!(alice.last_login_at, None);
    assert!(alice.created_at >= before && alice.updated_at == alice.created_at);
    assert!(!alice.id.is_empty());

    for login in [
        "Alice",
        "alice",
        "ALICE",
        "alice@example.com",
        "ALICE@example.Com",
    ] {
        let found = store.find_user_by_login(login).await.unwrap();
        assert_eq!(found.as_ref(), Some(&alice), "login {login:?}");
    }
    assert_eq!(store.find_user_by_login("alic").await.unwrap(), None);
    assert_eq!(store.get_user(&alice.id).await.unwrap(), Some(alice));
    assert_eq!(store.get_user("no-such-id").await.unwrap(), None);
}

async fn refuses_a_username_taken_in_another_case(store: Arc<dyn AuthStore>) {
    store.create_user(new_user("bob", None)).await.unwrap();
    assert_conflict(store.create_user(new_user("BOB", None)).await, "username");
    assert_conflict(
        store.create_user(new_user("bob", Some("other@x.io"))).await,
        "username",
    );
    assert_eq!(store.list_users().await.unwrap().len(), 1);
}

async fn refuses_an_email_taken_in_another_case_but_allows_many_without_email(
    store: Arc<dyn AuthStore>,
) {
    store
        .create_user(new_user("carol", Some("c@x.io")))
        .await
        .unwrap();
    assert_conflict(
        store.create_user(new_user("dave", Some("C@X.IO"))).await,
        "email",
    );
    store.create_user(new_user("erin", None)).await.unwrap();
    store.create_user(new_user("frank", None)).await.unwrap();
    assert_eq!(store.list_users().await.unwrap().len(), 3);
}

async fn a_username_match_wins_over_an_email_match(store: Arc<dyn AuthStore>) {
    let by_email = store
        .create_user(new_user("mallory", Some("eve@x.io")))
        .await
        .unwrap();
    let by_name = store.create_user(new_user("eve@x.io", None)).await.unwrap();
    assert_eq!(
        store.find_user_by_login("EVE@x.io").await.unwrap(),
        Some(by_name)
    );
    assert_eq!(
        store.find_user_by_login("mallory").await.unwrap(),
        Some(by_email)
    );
}

async fn disables_and_enables_a_user_by_username(store: Arc<dyn AuthStore>) {
    let frank = store.create_user(new_user("Frank", None)).await.unwrap();
    let disabled = store.set_user_active("frank", false).await.unwrap();
    assert_eq!(disabled.id, frank.id);
    assert!(!disabled.is_active);
    assert!(!stored_user(&*store, &frank.id).await.is_active);
    let enabled = store.set_user_active("FRANK", true).await.unwrap();
    assert!(enabled.is_active);
    assert!(stored_user(&*store, &frank.id).await.is_active);
    assert_not_found(store.set_user_active("nobody", false).await);
}

async fn replaces_a_password_hash(store: Arc<dyn AuthStore>) {
    let grace = store.create_user(new_user("grace", None)).await.unwrap();
    store
        .set_password_hash(&grace.id, "$argon2id$new")
        .await
        .unwrap();
    let after = stored_user(&*store, &grace.id).await;
    assert_eq!(after.password_hash, "$argon2id$new");
    assert!(after.updated_at >= grace.updated_at);
    assert_not_found(store.set_password_hash("no-such-id", "x").await);
}

async fn sets_and_clears_the_admin_flag(store: Arc<dyn AuthStore>) {
    let mut admin = new_user("root", None);
    admin.is_admin = true;
    assert!(store.create_user(admin).await.unwrap().is_admin);
    store.create_user(new_user("heidi", None)).await.unwrap();
    assert!(store.set_user_admin("Heidi", true).await.unwrap().is_admin);
    assert!(found_user(&*store, "heidi").await.is_admin);
    assert!(!store.set_user_admin("heidi", false).await.unwrap().is_admin);
    assert!(!found_user(&*store, "heidi").await.is_admin);
    assert_not_found(store.set_user_admin("nobody", true).await);
}

async fn records_the_last_login(store: Arc<dyn AuthStore>) {
    let ivan = store.create_user(new_user("ivan", None)).await.unwrap();
    let at = t0();
    store.record_login(&ivan.id, at).await.unwrap();
    assert_eq!(stored_user(&*store, &ivan.id).await.last_login_at, Some(at));
    assert_not_found(store.record_login("no-such-id", at).await);
}

async fn lists_users_by_username(store: Arc<dyn AuthStore>) {
    for name in ["zoe", "Mike", "adam"] {
        store.create_user(new_user(name, None)).await.unwrap();
    }
    let names: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["adam", "Mike", "zoe"]);
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

async fn creates_a_client_and_reads_it_back(store: Arc<dyn AuthStore>) {
    let spec = NewClient {
        client_id: "codelab-web".into(),
        secret_hash: Some("$argon2id$secret".into()),
        name: "CodeLab Web".into(),
        description: Some("the console".into()),
        is_confidential: true,
        allowed_scopes: vec!["api:admin".into(), "api:read".into()],
        allowed_grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        redirect_uris: vec![
            "http://127.0.0.1:8080/console/callback".into(),
            "https://codelab.example/cb?x=\"1\"".into(),
        ],
        access_token_lifetime: 3600,
        refresh_token_lifetime: 7_776_000,
    };
    let created = store.create_client(spec.clone()).await.unwrap();
    assert_eq!(created.client_id, spec.client_id);
    assert_eq!(created.secret_hash, spec.secret_hash);
    assert_eq!(created.name, spec.name);
    assert_eq!(created.description, spec.description);
    assert!(created.is_confidential && created.is_active);
    assert_eq!(created.allowed_scopes, spec.allowed_scopes);
    assert_eq!(created.allowed_grant_types, spec.allowed_grant_types);
    assert_eq!(created.redirect_uris, spec.redirect_uris);
    assert_eq!(
        (
            created.access_token_lifetime,
            created.refresh_token_lifetime
        ),
        (3600, 7_776_000)
    );
    assert!(created.allows_grant("authorization_code") && !created.allows_grant("password"));
    assert_eq!(
        store.get_client("codelab-web").await.unwrap(),
        Some(created)
    );
    assert_eq!(
        store.get_client("CODELAB-WEB").await.unwrap(),
        None,
        "client ids are exact"
    );
}

async fn refuses_a_duplicate_client_id(store: Arc<dyn AuthStore>) {
    store.create_client(new_client("app")).await.unwrap();
    assert_conflict(store.create_client(new_client("app")).await, "app");
}

async fn lists_clients_by_client_id(store: Arc<dyn AuthStore>) {
    for id in ["web", "flutter", "internal"] {
        store.create_client(new_client(id)).await.unwrap();
    }
    let ids: Vec<String> = store
        .list_clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(ids, ["flutter", "internal", "web"]);
}

async fn disables_and_enables_a_client(store: Arc<dyn AuthStore>) {
    store.create_client(new_client("app")).await.unwrap();
    assert!(
        !store
            .set_client_active("app", false)
            .await
            .unwrap()
            .is_active
    );
    assert!(!stored_client(&*store, "app").await.is_active);
    assert!(
        store
            .set_client_active("app", true)
            .await
            .unwrap()
            .is_active
    );
    assert!(stored_client(&*store, "app").await.is_active);
    assert_not_found(store.set_client_active("nope", false).await);
}

async fn replaces_a_clients_secret_hash(store: Arc<dyn AuthStore>) {
    store.create_client(new_client("svc")).await.unwrap();
    let fast = format!("$sha256${}", "ab".repeat(32));
    store.set_client_secret_hash("svc", &fast).await.unwrap();
    let client = stored_client(&*store, "svc").await;
    assert_eq!(client.secret_hash.as_deref(), Some(fast.as_str()));
    assert_not_found(store.set_client_secret_hash("nope", &fast).await);
}

async fn replaces_a_clients_redirect_uris(store: Arc<dyn AuthStore>) {
    store.create_client(new_client("app")).await.unwrap();
    let uris = vec![
        "http://localhost:3000/cb".to_owned(),
        "http://localhost/cb".to_owned(),
    ];
    store.set_client_redirect_uris("app", &uris).await.unwrap();
    assert_eq!(stored_client(&*store, "app").await.redirect_uris, uris);
    store.set_client_redirect_uris("app", &[]).await.unwrap();
    assert!(stored_client(&*store, "app").await.redirect_uris.is_empty());
    assert_not_found(store.set_client_redirect_uris("nope", &uris).await);
}

// ---------------------------------------------------------------------------------------------
// Refresh tokens
// ---------------------------------------------------------------------------------------------

async fn stores_and_finds_a_refresh_token_by_hash(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let mut record = token("a".repeat(64).as_str(), "fam", &alice, "app", t0());
    record.parent_jti_hash = Some("p".repeat(64));
    insert_token(&*store, record.clone()).await;
    assert_eq!(
        store.find_refresh_token(&record.jti_hash).await.unwrap(),
        Some(record)
    );
    assert_eq!(
        store.find_refresh_token(&"b".repeat(64)).await.unwrap(),
        None
    );
}

async fn refuses_a_duplicate_refresh_token_or_one_for_an_unknown_user(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let record = token("h1", "f1", &alice, "app", t0());
    insert_token(&*store, record.clone()).await;
    assert_conflict(
        store.insert_refresh_token(record.clone()).await,
        "refresh token",
    );
    let mut orphan = token("h2", "f2", &alice, "app", t0());
    orphan.user_id = "no-such-user".into();
    assert_not_found(store.insert_refresh_token(orphan).await);
    assert_not_found(
        store
            .insert_refresh_token(token("h3", "f3", &alice, "no-such-client", t0()))
            .await,
    );
}

async fn rotation_commits_its_audit_row_only_when_it_rotates(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let now = t0();
    let r1 = token("r1", "fam", &alice, "app", now);
    insert_token(&*store, r1.clone()).await;
    let event = |kind: &str| AuditEvent {
        user_id: Some(alice.id.clone()),
        client_id: Some("app".into()),
        event_type: kind.to_owned(),
        event_data: None,
        ip_address: Some("127.0.0.1".into()),
        user_agent: None,
        success: true,
        error_message: None,
    };
    let outcome = store
        .rotate_refresh_token(&rotation_of(&r1, "r2", now), &event("token_refresh"), now)
        .await
        .unwrap();
    assert!(matches!(outcome, RotateOutcome::Rotated { .. }));
    // A reused token rotates nothing, so its audit row is not written either.
    let again = store
        .rotate_refresh_token(
            &rotation_of(&r1, "r3", now),
            &event("must_not_be_written"),
            now,
        )
        .await
        .unwrap();
    assert!(matches!(again, RotateOutcome::AlreadyRevoked { .. }));
    let rows = store.list_audit(10).await.unwrap();
    let types: Vec<&str> = rows.iter().map(|r| r.event.event_type.as_str()).collect();
    assert_eq!(types, ["token_refresh"]);
    assert_eq!(rows[0].event, event("token_refresh"));
    // An audit row that cannot be written (unknown user) rolls the rotation back.
    let mut orphan = event("token_refresh");
    orphan.user_id = Some("no-such-user".into());
    let failed = store
        .rotate_refresh_token(
            &rotation_of(&token("r2", "fam", &alice, "app", now), "r4", now),
            &orphan,
            now,
        )
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(!stored_token(&*store, "r2").await.revoked);
    assert_eq!(store.find_refresh_token("r4").await.unwrap(), None);
}

async fn finds_a_refresh_token_with_whether_its_user_is_active(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let now = t0();
    let record = token("w1", "fam", &alice, "app", now);
    insert_token(&*store, record.clone()).await;
    assert_eq!(
        store.find_refresh_token_with_owner("w1").await.unwrap(),
        Some((record.clone(), true))
    );
    store.set_user_active("alice", false).await.unwrap();
    assert_eq!(
        store.find_refresh_token_with_owner("w1").await.unwrap(),
        Some((record, false))
    );
    assert_eq!(
        store
            .find_refresh_token_with_owner("unknown")
            .await
            .unwrap(),
        None
    );
}

async fn rotation_revokes_the_old_token_and_stores_the_new_one(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let now = t0();
    let old = token("old", "fam", &alice, "app", now - Duration::minutes(5));
    insert_token(&*store, old.clone()).await;
    let mut new = token("new", "fam", &alice, "app", now);
    new.parent_jti_hash = Some("old".into());

    let outcome = store
        .rotate_refresh_token(&rotation_of(&old, "new", now), &refresh_event(&alice), now)
        .await
        .unwrap();
    let revoked_old = RefreshTokenRecord {
        revoked: true,
        revoked_at: Some(now),
        ..old
    };
    assert_eq!(
        outcome,
        RotateOutcome::Rotated {
            old: revoked_old.clone()
        }
    );
    assert_eq!(
        store.find_refresh_token("old").await.unwrap(),
        Some(revoked_old)
    );
    assert_eq!(store.find_refresh_token("new").await.unwrap(), Some(new));
}

async fn rotation_reports_unknown_reused_and_expired_tokens_and_changes_nothing(
    store: Arc<dyn AuthStore>,
) {
    let alice = user_and_client(&*store).await;
    let now = t0();
    assert_eq!(
        store
            .rotate_refresh_token(
                &rotation_of(&token("unknown", "f", &alice, "app", now), "n0", now),
                &refresh_event(&alice),
                now
            )
            .await
            .unwrap(),
        RotateOutcome::NotFound
    );
    assert_eq!(store.find_refresh_token("n0").await.unwrap(), None);

    let t1 = token("t1", "f", &alice, "app", now);
    insert_token(&*store, t1.clone()).await;
    let first = store
        .rotate_refresh_token(&rotation_of(&t1, "t2", now), &refresh_event(&alice), now)
        .await
        .unwrap();
    assert!(matches!(first, RotateOutcome::Rotated { .. }));
    let again = store
        .rotate_refresh_token(
            &rotation_of(&t1, "t3", now),
            &refresh_event(&alice),
            now + Duration::seconds(1),
        )
        .await
        .unwrap();
    match again {
        RotateOutcome::AlreadyRevoked { old } => {
            assert_eq!(old.jti_hash, "t1");
            assert_eq!(
                old.revoked_at,
                Some(now),
                "the first revocation time is kept"
            );
        }
        other => panic!("expected AlreadyRevoked, got {other:?}"),
    }
    assert_eq!(
        store.find_refresh_token("t3").await.unwrap(),
        None,
        "no token for a reuse"
    );

    let mut expiring = token("e1", "g", &alice, "app", now - Duration::hours(2));
    expiring.expires_at = now;
    insert_token(&*store, expiring.clone()).await;
    // `expires_at` itself is already too late.
    let outcome = store
        .rotate_refresh_token(
            &rotation_of(&expiring, "e2", now),
            &refresh_event(&alice),
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RotateOutcome::Expired {
            old: expiring.clone()
        }
    );
    assert_eq!(
        store.find_refresh_token("e1").await.unwrap(),
        Some(expiring),
        "left unrevoked"
    );
    assert_eq!(store.find_refresh_token("e2").await.unwrap(), None);
}

async fn rotation_refuses_another_user_client_or_scope_and_a_disabled_user(
    store: Arc<dyn AuthStore>,
) {
    let alice = user_and_client(&*store).await;
    let bob = store.create_user(new_user("bob", None)).await.unwrap();
    store.create_client(new_client("other")).await.unwrap();
    let now = t0();
    let held = token("held", "fam", &alice, "app", now);
    insert_token(&*store, held.clone()).await;
    let exact = rotation_of(&held, "child", now);
    let mismatched = [
        Rotation {
            user_id: bob.id.clone(),
            ..exact.clone()
        },
        Rotation {
            client_id: "other".into(),
            ..exact.clone()
        },
        Rotation {
            scope: "api:read".into(),
            ..exact.clone()
        },
    ];
    let refused = RotateOutcome::Mismatch { old: held.clone() };
    for rotation in mismatched {
        let outcome = store
            .rotate_refresh_token(&rotation, &refresh_event(&alice), now)
            .await
            .unwrap();
        assert_eq!(outcome, refused, "{rotation:?}");
    }
    store.set_user_active("alice", false).await.unwrap();
    let outcome = store
        .rotate_refresh_token(&exact, &refresh_event(&alice), now)
        .await
        .unwrap();
    assert_eq!(outcome, refused, "a disabled user's token");
    // Nothing was written: no child, no audit row, the token still active.
    assert_eq!(store.find_refresh_token("child").await.unwrap(), None);
    assert!(store.list_audit(10).await.unwrap().is_empty());
    assert_eq!(stored_token(&*store, "held").await, held);
    store.set_user_active("alice", true).await.unwrap();
    let outcome = store
        .rotate_refresh_token(&exact, &refresh_event(&alice), now)
        .await
        .unwrap();
    assert!(
        matches!(outcome, RotateOutcome::Rotated { .. }),
        "{outcome:?}"
    );
}

async fn of_twenty_concurrent_rotations_of_one_token_exactly_one_wins(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let now = t0();
    let contested = token("contested", "fam", &alice, "app", now);
    insert_token(&*store, contested.clone()).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let store = store.clone();
        let barrier = barrier.clone();
        let rotation = rotation_of(&contested, &format!("child-{i}"), now);
        let event = refresh_event(&alice);
        tasks.spawn(async move {
            barrier.wait().await;
            (
                i,
                store
                    .rotate_refresh_token(&rotation, &event, now)
                    .await
                    .unwrap(),
            )
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, outcome) = joined.unwrap();
        match outcome {
            RotateOutcome::Rotated { .. } => winners.push(i),
            RotateOutcome::AlreadyRevoked { .. } => {}
            other => panic!("rotation {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    for i in 0..20 {
        let stored = store
            .find_refresh_token(&format!("child-{i}"))
            .await
            .unwrap();
        assert_eq!(
            stored.is_some(),
            winners.contains(&i),
            "child-{i} stored only for the winner"
        );
    }
}

async fn revoking_a_family_leaves_other_families_alone(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let now = t0();
    for (jti, family) in [("a1", "A"), ("a2", "A"), ("b1", "B")] {
        insert_token(&*store, token(jti, family, &alice, "app", now)).await;
    }
    // An already revoked member is not counted again.
    store
        .rotate_refresh_token(
            &rotation_of(&token("a1", "A", &alice, "app", now), "a3", now),
            &refresh_event(&alice),
            now,
        )
        .await
        .unwrap();
    let later = now + Duration::seconds(10);
    assert_eq!(store.revoke_family("A", later).await.unwrap(), 2);
    for jti in ["a2", "a3"] {
        let row = stored_token(&*store, jti).await;
        assert!(row.revoked && row.revoked_at == Some(later), "{jti}");
    }
    assert_eq!(stored_token(&*store, "a1").await.revoked_at, Some(now));
    assert!(!stored_token(&*store, "b1").await.revoked);
    assert_eq!(store.revoke_family("A", later).await.unwrap(), 0);
}

async fn revoking_a_users_tokens_leaves_other_users_alone(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let bob = store.create_user(new_user("bob", None)).await.unwrap();
    let now = t0();
    insert_token(&*store, token("x1", "X", &alice, "app", now)).await;
    insert_token(&*store, token("x2", "Y", &alice, "app", now)).await;
    insert_token(&*store, token("y1", "Z", &bob, "app", now)).await;
    assert_eq!(store.revoke_user_tokens(&alice.id, now).await.unwrap(), 2);
    assert!(stored_token(&*store, "x1").await.revoked);
    assert!(stored_token(&*store, "x2").await.revoked);
    assert!(!stored_token(&*store, "y1").await.revoked);
}

async fn deletes_only_expired_refresh_tokens(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let now = t0();
    let mut gone = token("gone", "F", &alice, "app", now - Duration::days(9));
    gone.expires_at = now - Duration::days(8);
    let mut kept = token("kept", "G", &alice, "app", now - Duration::days(9));
    kept.expires_at = now - Duration::days(6);
    insert_token(&*store, gone).await;
    insert_token(&*store, kept).await;
    insert_token(&*store, token("live", "H", &alice, "app", now)).await;
    assert_eq!(
        store
            .delete_expired_refresh_tokens(now - Duration::days(7))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.find_refresh_token("gone").await.unwrap(), None);
    assert!(store.find_refresh_token("kept").await.unwrap().is_some());
    assert!(store.find_refresh_token("live").await.unwrap().is_some());
}

// ---------------------------------------------------------------------------------------------
// Authorization codes
// ---------------------------------------------------------------------------------------------

async fn an_authorization_code_is_consumed_once(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let now = t0();
    let stored = code("c1", &alice, now);
    store
        .insert_authorization_code(stored.clone())
        .await
        .unwrap();
    assert_conflict(
        store.insert_authorization_code(stored.clone()).await,
        "authorization code",
    );
    assert_eq!(
        store.consume_authorization_code("c1", now).await.unwrap(),
        Some(stored)
    );
    assert_eq!(
        store.consume_authorization_code("c1", now).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .consume_authorization_code("unknown", now)
            .await
            .unwrap(),
        None
    );
}

async fn of_concurrent_redeemers_of_a_code_exactly_one_gets_it(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let now = t0();
    store
        .insert_authorization_code(code("contested", &alice, now))
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let store = store.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            store
                .consume_authorization_code("contested", now)
                .await
                .unwrap()
        });
    }
    let mut got = 0;
    while let Some(joined) = tasks.join_next().await {
        got += usize::from(joined.unwrap().is_some());
    }
    assert_eq!(got, 1);
}

async fn an_expired_code_is_not_returned_and_is_cleaned_up(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let now = t0();
    let old = code("old", &alice, now - Duration::minutes(20));
    store.insert_authorization_code(old.clone()).await.unwrap();
    store
        .insert_authorization_code(code("fresh", &alice, now))
        .await
        .unwrap();
    assert_eq!(
        store.consume_authorization_code("old", now).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .consume_authorization_code("old", old.expires_at)
            .await
            .unwrap(),
        None,
        "expires_at itself is too late"
    );
    assert_eq!(
        store.delete_expired_authorization_codes(now).await.unwrap(),
        1
    );
    assert!(
        store
            .consume_authorization_code("fresh", now)
            .await
            .unwrap()
            .is_some()
    );
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

async fn lists_audit_rows_newest_first_with_their_data(store: Arc<dyn AuthStore>) {
    let alice = user_and_client(&*store).await;
    let before = Utc::now() - Duration::seconds(1);
    let events: Vec<AuditEvent> = (0..3)
        .map(|i| AuditEvent {
            user_id: (i != 1).then(|| alice.id.clone()),
            client_id: Some("app".into()),
            event_type: format!("event_{i}"),
            event_data: (i == 0).then(|| json!({"scope": "api:read", "n": [1, 2], "é": null})),
            ip_address: Some("2001:db8::1".into()),
            user_agent: (i == 2).then(|| "CodeLab IDE/1.0".to_owned()),
            success: i != 1,
            error_message: (i == 1).then(|| "Invalid credentials".to_owned()),
        })
        .collect();
    for event in &events {
        store.insert_audit(event.clone()).await.unwrap();
    }
    let all = store.list_audit(10).await.unwrap();
    let types: Vec<&str> = all.iter().map(|r| r.event.event_type.as_str()).collect();
    assert_eq!(types, ["event_2", "event_1", "event_0"]);
    for (record, event) in all.iter().rev().zip(&events) {
        assert_eq!(&record.event, event);
        assert!(record.created_at >= before);
    }
    let ids: std::collections::HashSet<&str> = all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    let newest: Vec<String> = store
        .list_audit(2)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event.event_type)
        .collect();
    assert_eq!(newest, ["event_2", "event_1"]);
}

// ---------------------------------------------------------------------------------------------
// Signing keys
// ---------------------------------------------------------------------------------------------

async fn lists_signing_keys_oldest_first_and_refuses_a_duplicate_kid(store: Arc<dyn AuthStore>) {
    let now = t0();
    let newer = key("2025-key", now);
    let older = SigningKeyRecord {
        retired_at: Some(now - Duration::days(1)),
        publish_until: Some(now + Duration::days(89)),
        ..key("2024-01-key-1", now - Duration::days(30))
    };
    store.insert_signing_key(newer.clone()).await.unwrap();
    store.insert_signing_key(older.clone()).await.unwrap();
    assert_conflict(
        store.insert_signing_key(key("2025-key", now)).await,
        "2025-key",
    );
    assert_eq!(store.list_signing_keys().await.unwrap(), [older, newer]);
}

async fn retiring_keys_marks_every_other_active_key_once(store: Arc<dyn AuthStore>) {
    let now = t0();
    let earlier_retirement = now - Duration::days(2);
    store
        .insert_signing_key(SigningKeyRecord {
            retired_at: Some(earlier_retirement),
            publish_until: Some(now + Duration::days(1)),
            ..key("k0", now - Duration::days(3))
        })
        .await
        .unwrap();
    store
        .insert_signing_key(key("k1", now - Duration::days(2)))
        .await
        .unwrap();
    store
        .insert_signing_key(key("k2", now - Duration::days(1)))
        .await
        .unwrap();
    let until = now + Duration::days(90);
    store
        .retire_signing_keys_except("k2", now, until)
        .await
        .unwrap();
    let keys = store.list_signing_keys().await.unwrap();
    let state: Vec<_> = keys
        .iter()
        .map(|k| (k.kid.as_str(), k.retired_at, k.publish_until))
        .collect();
    assert_eq!(
        state,
        [
            (
                "k0",
                Some(earlier_retirement),
                Some(now + Duration::days(1))
            ),
            ("k1", Some(now), Some(until)),
            ("k2", None, None),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Adopting the original service's databases
// ---------------------------------------------------------------------------------------------

/// Rows as the original Python service wrote them; `{tz}` is "" on SQLite (naive UTC text)
/// and "+00" on PostgreSQL (timestamptz, whatever the session's time zone).
const ORIGINAL_ROWS: &str = "
INSERT INTO users VALUES ('u1', 'Admin', 'Admin@CodeLab.local', '$2b$12$hash', true, true,
    '2024-01-02 03:04:05.123456{tz}', '2024-01-02 03:04:05.123456{tz}', NULL);
INSERT INTO oauth_clients VALUES ('c1', 'codelab-flutter-app', NULL, 'CodeLab Flutter Application',
    NULL, false, 'api:read api:write', '[\"password\", \"refresh_token\"]', 900, 2592000, true,
    '2024-01-02 03:04:05.123456{tz}', '2024-01-02 03:04:05{tz}');
INSERT INTO refresh_tokens VALUES
    ('r1', 'root', 'u1', 'codelab-flutter-app', 'api:read', '2099-01-01 00:00:00.000000{tz}', true,
     '2024-01-03 00:00:00.000000{tz}', NULL, '2024-01-02 00:00:00.000000{tz}'),
    ('r2', 'child', 'u1', 'codelab-flutter-app', 'api:read', '2099-01-01 00:00:00.000000{tz}', false,
     NULL, 'root', '2024-01-03 00:00:00.000000{tz}');
INSERT INTO audit_logs VALUES ('a1', 'u1', 'codelab-flutter-app', 'login_success',
    '{\"scope\": \"api:read\"}', '10.0.0.1', NULL, true, NULL, '2024-01-02 03:04:05.123456{tz}');
";

async fn replaces_a_private_key_only_while_it_holds_the_expected_value(store: Arc<dyn AuthStore>) {
    let record = key("k1", t0());
    store.insert_signing_key(record.clone()).await.unwrap();
    let sealed = "codelab-sealed:v1:00:AAAA";
    assert!(
        store
            .replace_signing_key_private("k1", &record.private_key_pem, sealed)
            .await
            .unwrap()
    );
    // A second writer that read the old value loses: the first one's value stays.
    assert!(
        !store
            .replace_signing_key_private("k1", &record.private_key_pem, "other")
            .await
            .unwrap()
    );
    assert!(
        !store
            .replace_signing_key_private("nope", sealed, "other")
            .await
            .unwrap()
    );
    let stored = store.list_signing_keys().await.unwrap();
    assert_eq!(stored[0].private_key_pem, sealed);
    assert_eq!(stored[0].public_key_pem, record.public_key_pem);
}

async fn sets_a_clients_access_token_lifetime(store: Arc<dyn AuthStore>) {
    store.create_client(new_client("web")).await.unwrap();
    store
        .set_client_access_token_lifetime("web", 300)
        .await
        .unwrap();
    let client = stored_client(&*store, "web").await;
    assert_eq!(client.access_token_lifetime, 300);
    assert_not_found(store.set_client_access_token_lifetime("nope", 300).await);
}

async fn check_adopted(store: Arc<dyn AuthStore>) {
    let admin = found_user(&*store, "admin@codelab.local").await;
    assert_eq!(admin.username, "Admin");
    assert_eq!(
        admin.email.as_deref(),
        Some("admin@codelab.local"),
        "emails are lower-cased"
    );
    assert!(!admin.is_admin && admin.is_active);
    assert_eq!(
        admin.created_at.to_rfc3339(),
        "2024-01-02T03:04:05.123456+00:00"
    );
    assert_conflict(store.create_user(new_user("admin", None)).await, "username");
    let client = stored_client(&*store, "codelab-flutter-app").await;
    assert_eq!(client.allowed_grant_types, ["password", "refresh_token"]);
    assert_eq!(client.updated_at.to_rfc3339(), "2024-01-02T03:04:05+00:00");
    assert!(client.redirect_uris.is_empty());
    let child = stored_token(&*store, "child").await;
    assert_eq!(
        child.family_id, "root",
        "families follow the original's parent links"
    );
    let audit = store.list_audit(5).await.unwrap();
    assert_eq!(
        audit[0].event.event_data,
        Some(json!({"scope": "api:read"}))
    );
    // An adopted token still rotates (the original's own SQLite mode could not refresh at all).
    let now = Utc::now();
    let event = AuditEvent {
        user_id: Some(admin.id.clone()),
        client_id: Some("codelab-flutter-app".into()),
        ..refresh_event(&admin)
    };
    assert!(matches!(
        store
            .rotate_refresh_token(&rotation_of(&child, "grandchild", now), &event, now)
            .await
            .unwrap(),
        RotateOutcome::Rotated { .. }
    ));
    let grandchild = stored_token(&*store, "grandchild").await;
    assert_eq!(
        (
            grandchild.family_id.as_str(),
            grandchild.parent_jti_hash.as_deref()
        ),
        ("root", Some("child"))
    );
}

/// Loads the original service's schema and rows (`tz`: the timestamps' zone suffix) into a
/// new database, then opens it as a store twice.
async fn adopts_and_reopens(database: TempDatabase, original_schema: &str, tz: &str) {
    let pool = database.connect().await;
    let rows = ORIGINAL_ROWS.replace("{tz}", tz);
    for script in [original_schema, rows.as_str()] {
        match &pool {
            DbPool::Sqlite(sqlite) => sqlx::raw_sql(script).execute(sqlite).await.map(drop),
            DbPool::Postgres(pg) => sqlx::raw_sql(script).execute(pg).await.map(drop),
        }
        .unwrap();
    }
    check_adopted(open_store(pool.clone(), system_clock()).await.unwrap()).await;
    // Opening again finds every migration applied.
    let again = open_store(pool, system_clock()).await.unwrap();
    assert!(again.find_user_by_login("admin").await.unwrap().is_some());
}

#[tokio::test]
async fn sqlite_adopts_an_original_database_and_reopens_it_unchanged() {
    adopts_and_reopens(
        TempDatabase::sqlite("auth.db"),
        include_str!("../../migrations/sqlite/0001_original_schema.sql"),
        "",
    )
    .await;
}

#[tokio::test]
async fn postgres_adopts_an_original_database_and_reopens_it_unchanged() {
    adopts_and_reopens(
        TempDatabase::postgres("auth_test"),
        include_str!("../../migrations/postgres/0001_original_schema.sql"),
        "+00",
    )
    .await;
}
