//! PostgreSQL session locks beyond the conformance suite: one holder connection serves every
//! lock of a store (more sessions locked at once than its pool has connections), tasks of one
//! store exclude each other before the server does (advisory locks are re-entrant on their
//! connection), other replicas are kept out, and a lost holder connection is replaced.

use std::sync::Arc;
use std::time::Duration;

use codelab_agent_runtime::store::{RuntimeStore, SessionLock, open_store};
use codelab_core::clock::SystemClock;
use codelab_core::db::{DbOptions, DbPool, connect_database};
use codelab_testkit::TempDatabase;
use futures_util::future::join_all;
use sqlx::PgPool;
use tokio::time::timeout;

/// Long enough for a wrongly granted lock to show up, short enough to keep the suite quick.
const STILL_WAITING: Duration = Duration::from_millis(300);
/// A bound on anything that should happen promptly (on two busy cores).
const PROMPTLY: Duration = Duration::from_secs(10);

/// A store as one replica sees the database: a pool of `connections`.
async fn replica(url: &str, options: &DbOptions) -> Arc<dyn RuntimeStore> {
    let pool = connect_database(url, options).await.unwrap();
    assert!(matches!(pool, DbPool::Postgres(_)));
    open_store(pool, Arc::new(SystemClock)).await.unwrap()
}

fn pool_of(connections: u32) -> DbOptions {
    DbOptions {
        max_connections: connections,
        // Well below the default, so a lock waiting for a pool connection would fail here.
        acquire_timeout: Duration::from_secs(2),
        ..DbOptions::default()
    }
}

/// An observer connection on the same database, outside any store.
async fn observer(url: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap()
}

/// Polls `check` until it holds, up to [`PROMPTLY`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let polled = timeout(PROMPTLY, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "not within {PROMPTLY:?}: {what}");
}

/// Polls `try_lock_session` until granted, up to [`PROMPTLY`] (a release is queued to the
/// holder connection, so it lands a moment after the guard is dropped).
async fn try_lock_until_granted(
    store: &Arc<dyn RuntimeStore>,
    session_id: &str,
) -> Box<dyn SessionLock> {
    let polled = timeout(PROMPTLY, async {
        loop {
            if let Some(lock) = store.try_lock_session(session_id).await.unwrap() {
                return lock;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    polled.unwrap_or_else(|_| panic!("{session_id} not granted within {PROMPTLY:?}"))
}

/// Regression (the soak, docs/reliability.md): each lock held a pool connection, so turns
/// beyond the pool's size waited its acquire timeout and failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_sessions_than_pool_connections_are_locked_at_once() {
    let database = TempDatabase::postgres("runtime_locks");
    let store = replica(&database.url, &pool_of(2)).await;
    let other = replica(&database.url, &pool_of(2)).await;
    let sessions: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();

    let held = timeout(
        PROMPTLY,
        join_all(sessions.iter().map(|id| store.lock_session(id))),
    )
    .await
    .expect("50 locks are granted promptly on a pool of 2");
    let held: Vec<_> = held.into_iter().map(Result::unwrap).collect();

    // Held on the server: the other replica is kept out of every one.
    for id in &sessions {
        assert!(other.try_lock_session(id).await.unwrap().is_none(), "{id}");
    }
    // The store's own queries still get connections.
    store.ping().await.unwrap();

    drop(held);
    for id in &sessions {
        let lock = timeout(PROMPTLY, other.lock_session(id))
            .await
            .expect("released locks are granted to the other replica")
            .unwrap();
        drop(lock);
    }
}

/// Advisory locks are re-entrant on one connection: without this process's own exclusion two
/// tasks would both be granted the session, and unbalanced unlocks would leave it locked to
/// the other replicas for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_of_one_store_exclude_each_other_and_leave_the_session_free() {
    let database = TempDatabase::postgres("runtime_locks");
    let store = replica(&database.url, &DbOptions::default()).await;
    let other = replica(&database.url, &DbOptions::default()).await;

    for round in 0..10 {
        let first = store.lock_session("s1").await.unwrap();
        assert!(store.try_lock_session("s1").await.unwrap().is_none());
        let mut second = tokio::spawn({
            let store = store.clone();
            async move { store.lock_session("s1").await.unwrap() }
        });
        assert!(
            timeout(STILL_WAITING / 3, &mut second).await.is_err(),
            "round {round}: a second task of the store must wait"
        );
        drop(first);
        let second = timeout(PROMPTLY, second)
            .await
            .expect("the waiting task gets the lock once it is dropped")
            .unwrap();
        assert!(other.try_lock_session("s1").await.unwrap().is_none());
        drop(second);
    }

    // Every grant was matched by one unlock: the other replica gets the session.
    let granted = try_lock_until_granted(&other, "s1").await;
    // And keeps it from the first store.
    assert!(store.try_lock_session("s1").await.unwrap().is_none());
    drop(granted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_replica_is_refused_then_waits_and_a_cancelled_wait_leaves_nothing() {
    let database = TempDatabase::postgres("runtime_locks");
    let store = replica(&database.url, &DbOptions::default()).await;
    let other = replica(&database.url, &DbOptions::default()).await;

    let held = store.lock_session("s1").await.unwrap();
    assert!(other.try_lock_session("s1").await.unwrap().is_none());
    // A wait given up on (while retrying against the server) leaves nothing behind.
    assert!(
        timeout(STILL_WAITING, other.lock_session("s1"))
            .await
            .is_err()
    );
    let mut waiting = tokio::spawn({
        let other = other.clone();
        async move { other.lock_session("s1").await.unwrap() }
    });
    assert!(timeout(STILL_WAITING, &mut waiting).await.is_err());
    drop(held);
    let granted = timeout(PROMPTLY, waiting)
        .await
        .expect("the waiting replica gets the lock after the release")
        .unwrap();
    assert!(store.try_lock_session("s1").await.unwrap().is_none());
    drop(granted);
    let back = timeout(PROMPTLY, store.lock_session("s1"))
        .await
        .expect("the first replica gets it back")
        .unwrap();
    drop(back);
}

/// PostgreSQL restarted or the network cut: the holder connection's locks are gone on the
/// server (as a lock's own connection breaking released it before), and the next lock opens a
/// new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_lock_connection_releases_its_locks_and_is_replaced() {
    let database = TempDatabase::postgres("runtime_locks");
    let store = replica(&database.url, &DbOptions::default()).await;
    let other = replica(&database.url, &DbOptions::default()).await;
    let observer = observer(&database.url).await;

    let held = store.lock_session("s1").await.unwrap();
    let holders: Vec<i32> = sqlx::query_scalar(
        "SELECT DISTINCT pid FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND database = \
         (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&observer)
    .await
    .unwrap();
    assert_eq!(holders.len(), 1, "one connection holds the store's locks");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(holders[0])
        .fetch_one(&observer)
        .await
        .unwrap();
    assert!(terminated);

    // The lost connection's lock is free for another replica.
    let taken = try_lock_until_granted(&other, "s1").await;
    // The store locks again on a new connection (the broken one is found out on first use).
    let s2 = timeout(PROMPTLY, store.lock_session("s2"))
        .await
        .expect("a lock after the connection was lost")
        .unwrap();
    assert!(other.try_lock_session("s2").await.unwrap().is_none());
    // The old guard's release neither fails nor touches the new connection's locks.
    drop(held);
    drop(taken);
    assert!(other.try_lock_session("s2").await.unwrap().is_none());
    drop(s2);
}

/// Regression (the soak): the lock connection closes once no lock has been held for the
/// pool's idle timeout, like the store's own connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lock_connection_closes_when_idle() {
    let database = TempDatabase::postgres("runtime_locks");
    let options = DbOptions {
        idle_timeout: Duration::from_secs(1),
        ..DbOptions::default()
    };
    let store = replica(&database.url, &options).await;
    let observer = observer(&database.url).await;
    let open_elsewhere = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&observer)
        .await
        .unwrap()
    };

    let held = store.lock_session("s1").await.unwrap();
    // Held locks keep the connection, whatever the idle timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(open_elsewhere().await >= 1);
    assert!(store.try_lock_session("s1").await.unwrap().is_none());
    drop(held);
    eventually("every connection of the store closes when idle", || async {
        open_elsewhere().await == 0
    })
    .await;
    // And the next lock opens it again.
    let again = timeout(PROMPTLY, store.lock_session("s1"))
        .await
        .expect("a lock after the idle close")
        .unwrap();
    drop(again);
}
